//! Run: `target/release/service-framework -s exchange_sim -a examples/order_book/exchange_addresses.json -c examples/order_book/exchange_config.json`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::order_book::exchange())
}
