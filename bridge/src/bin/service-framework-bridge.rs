//! `service-framework-bridge`: the HTTP bridge with its built-in plugins. Usually started as
//! `service-framework -s bridge --port 8080 --load-builtin-plugins echo`.

use std::process::ExitCode;

fn main() -> ExitCode {
    sf_bridge::cli::main(Vec::new())
}
