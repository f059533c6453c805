//! Run: `cargo build --release && target/release/service-framework -s dynamic_echo -a examples/echo/replyer_addresses.json`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::dynamic::replyer())
}
