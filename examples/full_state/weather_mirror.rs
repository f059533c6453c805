//! Run: `target/release/service-framework -s weather_mirror -a examples/full_state/mirror_addresses.json`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::full_state::mirror())
}
