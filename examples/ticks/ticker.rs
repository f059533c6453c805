//! Run: `target/release/service-framework -s ticker -a examples/ticks/ticker_addresses.json -m --count 10`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::ticks::ticker())
}
