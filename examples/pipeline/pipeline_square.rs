//! Run as part of the pipeline: `target/release/service-framework up examples/pipeline/pipeline.toml`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::pipeline::square())
}
