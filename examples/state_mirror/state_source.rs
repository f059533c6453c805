//! Run: `target/release/service-framework -s state_source -a examples/state_mirror/source_addresses.json -c examples/state_mirror/source_config.json -m`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::state_mirror::source())
}
