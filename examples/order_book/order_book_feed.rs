//! Run: `target/release/service-framework -s order_book_feed -a examples/order_book/feed_addresses.json -c examples/order_book/feed_config.json -m`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::order_book::feed())
}
