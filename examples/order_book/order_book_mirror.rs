//! Run: `target/release/service-framework -s order_book_mirror -a examples/order_book/mirror_addresses.json`,
//! then `target/release/service-framework call 127.0.0.1:18946 '{}'`.

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::order_book::mirror())
}
