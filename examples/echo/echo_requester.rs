//! Run (with echo_replyer up): `target/release/service-framework -s echo_requester -a examples/echo/requester_addresses.json -m --num_req_to_send 10`

fn main() -> std::process::ExitCode {
    service_framework::cli::main(sf_examples::echo::requester())
}
