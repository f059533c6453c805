//! Run: `target/release/service-framework -s state_mirror -a examples/state_mirror/mirror_addresses.json`,
//! then `target/release/service-framework call 127.0.0.1:18912 '{}'`.

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::state_mirror::mirror())
}
