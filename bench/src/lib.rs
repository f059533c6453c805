//! Benchmark harness: each messaging pattern through the framework and through the raw
//! `zeromq` crate, with the same message sizes, in one process run (issue 6).
//!
//! Run by hand in release: `cargo run --release -p sf-bench` (full mode; build
//! `-p sf-examples` too, for the resources row). CI runs `--short` to prove it works.
//!
//! # The exception to "only `connections` imports `zeromq`"
//! DESIGN.md keeps the `zeromq` crate inside `sf-connections`: nothing else in the framework
//! touches sockets. This crate is not part of the framework, and it imports `zeromq`
//! directly by necessity: the raw socket library *is* the baseline every framework figure
//! is divided by, so the baseline must not go through the code it is judging. The
//! [`transport`] pattern likewise drives `sf-zmtp` (and libzmq, through the `zmq` crate)
//! directly: there the socket library itself is what is measured.
//!
//! # Patterns
//! - [`reqrep`]: round trips/s and p50/p99, 1 and 16 callers, multi- and current-thread
//!   runtimes, and a service on its own thread as embedded services run.
//! - [`broker`]: request/reply through the Majordomo broker against direct, same run.
//! - [`replicas`]: one requester over 1, 2 and 3 brokerless replicas, against 1, same run;
//!   `broker_replicas`: 1, 2 and 3 replicas behind the broker, against 1, same run.
//! - [`pubsub`]: 100-byte messages at full speed, with and without the credit window.
//! - [`pipeline`]: three-stage PUSH -> PULL/PUSH -> PULL.
//! - [`delta`]: delta-state updates/s, and the time to resync (late joiner, gap).
//! - [`resources`]: idle RSS and start-to-ready of the real `echo_replyer` binary.
//! - [`bridge`]: HTTP requests/s through the bridge, against a raw axum server.
//! - [`fleet`]: the pipeline example under `service-framework up`: start to every service
//!   ready, and items/s end to end, acked against plain push/pull.
//! - [`transport`]: the project's own ZMTP transport (`sf-zmtp`) as raw sockets, against the
//!   `zeromq` crate and, with the `libzmq` feature, libzmq itself.
//!
//! Every wait is bounded, sockets use 127.0.0.1 with port 0, and a pattern that fails
//! reports its error in the table instead of stopping the run.

pub mod bridge;
pub mod broker;
pub mod delta;
pub mod fleet;
pub mod pipeline;
pub mod procs;
pub mod pubsub;
pub mod replicas;
pub mod report;
pub mod reqrep;
pub mod resources;
pub mod transport;
pub mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use report::{Machine, PatternReport, Report, Row, Target, Verdict};

/// The patterns, in run order (the names `--only` takes).
pub const PATTERNS: &[&str] = &[
    "reqrep",
    "broker",
    "replicas",
    "broker_replicas",
    "pubsub",
    "pipeline",
    "delta",
    "resources",
    "bridge",
    "transport",
    "fleet",
];

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Small counts: proves the harness works, not how fast anything is.
    pub short: bool,
    /// Run only this pattern.
    pub only: Option<String>,
    /// Where the built binaries are (`echo_replyer`, `service-framework-bridge`): by default
    /// the folder of the running executable (and its parent, for test executables in deps/).
    pub bin_dir: Option<PathBuf>,
    /// The `sf-bench` binary, re-run as the raw baseline server of the resources pattern
    /// (default: the running executable when it is `sf-bench`).
    pub self_exe: Option<PathBuf>,
    /// Print progress on stderr.
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            short: false,
            only: None,
            bin_dir: None,
            self_exe: None,
            progress: true,
        }
    }
}

/// Message counts and bounds for a mode.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Round trips measured with one caller.
    pub rr_one: usize,
    /// Round trips measured with 16 callers (in total).
    pub rr_many: usize,
    /// Round trips before measuring.
    pub rr_warmup: usize,
    /// Messages published.
    pub pubsub: u64,
    /// Messages through the pipeline.
    pub pipeline: u64,
    /// Delta updates.
    pub delta: u64,
    /// Gap resyncs measured.
    pub delta_gaps: usize,
    /// Keys of the state a late joiner resyncs.
    pub late_join_keys: usize,
    /// Process starts measured.
    pub starts: usize,
    /// Items through the pipeline example under `up`.
    pub fleet_items: u64,
    /// HTTP requests per load run.
    pub http_requests: usize,
    /// Concurrent HTTP connections.
    pub http_connections: usize,
    /// A stream is over after this long without a message.
    pub quiet: Duration,
}

impl Counts {
    /// The counts of a mode.
    pub fn for_mode(short: bool) -> Counts {
        if short {
            Counts {
                rr_one: 300,
                rr_many: 1_600,
                rr_warmup: 50,
                pubsub: 20_000,
                pipeline: 5_000,
                delta: 2_000,
                delta_gaps: 2,
                late_join_keys: 100,
                starts: 1,
                fleet_items: 20_000,
                http_requests: 1_000,
                http_connections: 8,
                quiet: Duration::from_secs(2),
            }
        } else {
            Counts {
                rr_one: 20_000,
                rr_many: 160_000,
                rr_warmup: 2_000,
                pubsub: 1_000_000,
                pipeline: 500_000,
                delta: 200_000,
                delta_gaps: 20,
                late_join_keys: 10_000,
                starts: 5,
                fleet_items: 200_000,
                http_requests: 100_000,
                http_connections: 32,
                quiet: Duration::from_secs(2),
            }
        }
    }
}

impl Config {
    /// The counts for this config's mode.
    pub fn counts(&self) -> Counts {
        Counts::for_mode(self.short)
    }

    /// Folders searched for sibling binaries.
    pub fn bin_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = &self.bin_dir {
            dirs.push(d.clone());
        }
        if let Some(exe) = &self.self_exe {
            if let Some(d) = exe.parent() {
                dirs.push(d.to_owned());
            }
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(d) = exe.parent() {
                dirs.push(d.to_owned());
                // Test executables live in target/<profile>/deps.
                if d.file_name().is_some_and(|n| n == "deps") {
                    if let Some(p) = d.parent() {
                        dirs.push(p.to_owned());
                    }
                }
            }
        }
        dirs
    }

    /// A built binary named `name` beside this one, if there is one.
    pub fn find_bin(&self, name: &str) -> Option<PathBuf> {
        let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
        self.bin_dirs()
            .into_iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
    }

    fn progress(&self, msg: &str) {
        if self.progress {
            eprintln!("[sf-bench] {msg}");
        }
    }
}

/// Runs the patterns the config selects and returns every figure.
pub fn run(config: &Config) -> anyhow::Result<Report> {
    if let Some(only) = &config.only {
        if !PATTERNS.contains(&only.as_str()) {
            anyhow::bail!(
                "unknown pattern {only:?}: use one of {}",
                PATTERNS.join(", ")
            );
        }
    }
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let machine = Machine::detect();
    let mut report = Report {
        mode: if config.short { "short" } else { "full" }.into(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        machine,
        started_unix,
        elapsed_s: 0.0,
        patterns: Vec::new(),
    };
    for &name in PATTERNS {
        if config.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        config.progress(&format!("running {name}..."));
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match name {
            "reqrep" => reqrep::run(config),
            "broker" => broker::run(config),
            "replicas" => replicas::run(config),
            "broker_replicas" => replicas::run_brokered(config),
            "pubsub" => pubsub::run(config),
            "pipeline" => pipeline::run(config),
            "delta" => delta::run(config),
            "resources" => resources::run(config),
            "bridge" => bridge::run(config),
            "transport" => transport::run(config),
            "fleet" => fleet::run(config),
            _ => unreachable!("checked against PATTERNS"),
        }));
        let mut p = match outcome {
            Ok(p) => p,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".into());
                let mut p = PatternReport::new(name, "failed");
                p.note(format!("the pattern panicked: {why}"));
                p
            }
        };
        p.elapsed_s = t.elapsed().as_secs_f64();
        config.progress(&format!(
            "{name}: {} rows in {:.1} s",
            p.rows.len(),
            p.elapsed_s
        ));
        report.patterns.push(p);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}
