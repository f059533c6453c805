//! `service-framework-metrics`: bus services' stats for Prometheus, without a bridge.
//! Usually started as `service-framework metrics --listen 127.0.0.1:9464 --up`.

use std::process::ExitCode;

fn main() -> ExitCode {
    sf_bridge::exporter::main(std::env::args_os().skip(1).collect())
}
