//! Run: `cargo build --release && target/release/service-framework -s echo_replyer -a examples/echo/replyer_addresses.json`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::echo::replyer())
}
