//! `sf-bench`: the framework against the raw `zeromq` crate, every pattern, one run.
//!
//! ```text
//! cargo build --release -p sf-bench -p sf-examples
//! cargo run --release -p sf-bench                      # full mode, by hand
//! cargo run -p sf-bench -- --short                     # CI: small counts, < 60 s
//! sf-bench [--short] [--json PATH] [--only PATTERN]
//! ```
//! Targets are reported beside the figures, never asserted: the exit code is 0 whenever the
//! harness ran (2 for a bad command line, 1 if the JSON could not be written).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: sf-bench [--short] [--json PATH] [--only PATTERN]

  --short         small counts (proves the harness works; < 60 s)
  --json PATH     where to write every figure as JSON (default bench-results.json)
  --only PATTERN  run one pattern: reqrep, broker, replicas (one requester over 1, 2 and
                  3 brokerless replicas), broker_replicas (1, 2 and 3 replicas behind the
                  broker), pubsub, pipeline, delta, resources, bridge,
                  transport (sf-zmtp vs zeromq; vs libzmq too when built with
                  --features libzmq), fleet (the pipeline example under
                  `service-framework up`: start to ready, items/s end to end)
  -h, --help      this text

Full mode (the default) is meant for release builds:
  cargo build --release -p sf-bench -p sf-examples && cargo run --release -p sf-bench
(the fleet pattern also needs -p service-framework -p sf-fleet, the bridge -p sf-bridge)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config = sf_bench::Config::default();
    let mut json = PathBuf::from("bench-results.json");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--short" => config.short = true,
            "--full" => config.short = false,
            "--json" => match args.next() {
                Some(p) => json = p.into(),
                None => return usage("--json needs a path"),
            },
            "--only" => match args.next() {
                Some(p) => config.only = Some(p),
                None => return usage("--only needs a pattern name"),
            },
            "--raw-echo-server" => return sf_bench::procs::raw_echo_server(),
            "--raw-http-server" => return sf_bench::bridge::raw_http_server(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    config.self_exe = std::env::current_exe().ok();
    let report = match sf_bench::run(&config) {
        Ok(r) => r,
        Err(e) => return usage(&format!("{e:#}")),
    };
    println!("{}", report.render());
    let text = match serde_json::to_string_pretty(&report) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sf-bench: cannot encode the figures: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&json, text) {
        eprintln!("sf-bench: cannot write {}: {e}", json.display());
        return ExitCode::FAILURE;
    }
    println!("figures written to {}", json.display());
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("sf-bench: {why}\n\n{USAGE}");
    ExitCode::from(2)
}
