//! Run: `target/release/service-framework -s tick_listener -a examples/ticks/listener_addresses.json`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::ticks::listener())
}
