//! Run: `target/release/service-framework -s slow_replyer -a examples/echo/replyer_addresses.json`
//! then `target/release/service-framework call 127.0.0.1:18899 '{"to_echo": "hi", "delay_ms": 2000}'`
//! and press Ctrl-C while it waits: the reply still arrives.

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::slow::replyer())
}
