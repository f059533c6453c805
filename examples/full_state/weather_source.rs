//! Run: `target/release/service-framework -s weather_source -a examples/full_state/source_addresses.json -c examples/full_state/source_config.json -m`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::full_state::source())
}
