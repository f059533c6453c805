//! The stock bridge with this crate's plugins linked in:
//! `framex-pair-bridge --load-plugins inventory --load-plugins orders`
//! (or `service-framework -s framex-pair-bridge ...` when it is beside or on PATH).

use sf_example_bridge_plugins as _;

fn main() -> std::process::ExitCode {
    sf_bridge::cli::main(Vec::new())
}
