//! Fleet: the pipeline example run by `service-framework up`, end to end (issue 14).
//!
//! The topology is `examples/pipeline/pipeline.toml` (compiled in, so the harness follows the
//! example), written to a scratch folder with the HTTP bridge left out (its section, its
//! edges and the `notes`), the source set to `count = N` at full speed (no `rate`) with
//! `in_flight = 256`. Two rows:
//!
//! - `up` start to all ready: from spawning `service-framework up FILE` to its line
//!   `[up] every service started` (it checks the file, asking every binary what it
//!   declares, then starts the services level by level, consumers first).
//! - items/s end to end: from `[up] source: ready` to the sink's `results` replyer answering
//!   `count == N`, polled every 10 ms over the bus. The source pushes acked (a push returns
//!   once a worker handled the item, and a worker acks only after the sink acked its push),
//!   so its own figure ("Sent N items in X s (Y items/s), every one acknowledged") is end to
//!   end too; the note gives it. Baseline: the same topology with `acked = false` on every
//!   pusher and puller (set through each service's `options`, which override the code's
//!   creation options), so acked/plain is what at-least-once costs.
//!
//! `up` is stopped with SIGTERM after each run (and its exit waited for, bounded); if it does
//! not exit, it and the services it started are killed. Without the binaries (`cargo build
//! --release -p service-framework -p sf-examples -p sf-fleet`), the rows say "not measured".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sf_connections::wire::WorkflowId;
use sf_connections::{Address, Requester, RequesterOptions};
use sf_examples::pipeline::{NoArgs, Totals};

use crate::procs::Proc;
use crate::report::{PatternReport, Row};
use crate::util::{rate, runtime, Flavor};
use crate::Config;

/// The example the topology is derived from.
pub const EXAMPLE: &str = include_str!("../../examples/pipeline/pipeline.toml");
/// The binaries a run needs, beside this one.
pub const BINARIES: &[&str] = &[
    "service-framework",
    "service-framework-up",
    "pipeline_source",
    "pipeline_square",
    "pipeline_sink",
];
/// The source's window of unacknowledged items.
pub const IN_FLIGHT: u64 = 256;

/// `up` prints this once every service is ready.
const ALL_STARTED: &str = "[up] every service started";
const SOURCE_READY: &str = "[up] source: ready";
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// The sink's count not moving for this long ends the wait.
const STALL: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// The quoted text of a TOML line (`"a.b -> c.d",  # ...` gives `a.b -> c.d`).
fn quoted(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('"')?;
    rest.split_once('"').map(|(q, _)| q)
}

/// One end of an edge: service and connection.
type End<'a> = (&'a str, &'a str);

/// `a.b -> c.d` as `((a, b), (c, d))`.
fn edge(text: &str) -> Option<(End<'_>, End<'_>)> {
    let (from, to) = text.split_once("->")?;
    Some((from.trim().split_once('.')?, to.trim().split_once('.')?))
}

/// `[services.NAME]` gives `NAME`.
fn section_name(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("[services.")?
        .strip_suffix(']')
        .map(|n| n.trim_matches('"'))
}

/// The value of `key = ...` on a line (comment cut off), if the line sets `key`.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (k, v) = line.split_once('=')?;
    (k.trim() == key).then(|| v.split(" #").next().unwrap_or(v).trim())
}

/// The pipeline example without its bridge, the source sending `count` items at full speed;
/// with `acked == false`, every pusher and puller on an edge set to plain push/pull through
/// its service's `options`.
pub fn topology(example: &str, count: u64, acked: bool) -> anyhow::Result<String> {
    // Sections: the preamble (index 0), then one per `[...]` header.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in example.lines() {
        if line.trim_start().starts_with('[') {
            sections.push(Vec::new());
        }
        sections.last_mut().expect("never empty").push(line);
    }
    let is_bridge = |s: &Vec<&str>| {
        s.iter()
            .any(|l| value_of(l, "service") == Some("\"bridge\""))
    };
    let bridges: Vec<&str> = sections[1..]
        .iter()
        .filter(|s| is_bridge(s))
        .filter_map(|s| section_name(s[0]))
        .collect();

    // The preamble: no notes, no edges to or from a bridge, no comments.
    let mut out = vec![
        "# Written by sf-bench (the fleet pattern) from examples/pipeline/pipeline.toml:"
            .to_owned(),
        format!(
            "# no bridge, {count} items at full speed, {}.",
            if acked {
                "acked push/pull"
            } else {
                "plain push/pull (acked = false)"
            }
        ),
    ];
    let mut edges = Vec::new();
    let mut in_notes = false;
    for line in &sections[0] {
        let t = line.trim();
        if in_notes {
            in_notes = !t.starts_with(']');
            continue;
        }
        if value_of(line, "notes").is_some() {
            in_notes = !t.ends_with(']');
            continue;
        }
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(e) = quoted(line).and_then(edge) {
            let ((from, _), (to, _)) = e;
            if bridges.contains(&from) || bridges.contains(&to) {
                continue;
            }
            edges.push(e);
        }
        out.push((*line).to_owned());
    }
    anyhow::ensure!(!edges.is_empty(), "no edges in the pipeline example");

    let mut source_set = false;
    for s in sections[1..].iter().filter(|s| !is_bridge(s)) {
        let name = section_name(s[0]);
        out.push(String::new());
        for line in s {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if name == Some("source") && value_of(line, "config").is_some() {
                out.push(format!(
                    "config = {{ count = {count}, in_flight = {IN_FLIGHT} }}"
                ));
                source_set = true;
                continue;
            }
            out.push((*line).to_owned());
            if let (false, Some(name), Some(_)) = (acked, name, value_of(line, "service")) {
                let side = |inbound: bool| {
                    let names: Vec<String> = edges
                        .iter()
                        .filter_map(|&(from, to)| {
                            let (svc, conn) = if inbound { to } else { from };
                            (svc == name).then(|| format!("{conn} = {{ acked = false }}"))
                        })
                        .collect();
                    (!names.is_empty()).then(|| {
                        format!(
                            "{} = {{ {} }}",
                            if inbound { "in" } else { "out" },
                            names.join(", ")
                        )
                    })
                };
                let sides: Vec<String> = [side(true), side(false)].into_iter().flatten().collect();
                if !sides.is_empty() {
                    out.push(format!(
                        "options = {{ connections = {{ {} }} }}",
                        sides.join(", ")
                    ));
                }
            }
        }
    }
    anyhow::ensure!(
        source_set,
        "no `config` line in the example's [services.source]"
    );
    out.push(String::new());
    Ok(out.join("\n"))
}

/// `[up] sink in.results.replyer: 127.0.0.1:PORT (no edge)` gives `127.0.0.1:PORT`.
fn results_addr(line: &str) -> Option<&str> {
    line.strip_prefix("[up] sink in.results.")?
        .split_once(": ")?
        .1
        .split_whitespace()
        .next()
}

/// `... (12345 items/s) ...` gives 12345.
fn items_per_s(line: &str) -> Option<f64> {
    let before = line.split(" items/s").next()?;
    before.rsplit('(').next()?.trim().parse().ok()
}

/// `up` under way: stopped with SIGTERM (bounded) when dropped, then killed with what it
/// started if it does not exit.
struct Up {
    proc: Proc,
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

impl Up {
    /// SIGTERM, then waits for the exit; true if `up` exited within the limit.
    fn stop(&mut self) -> bool {
        if !self.proc.running() {
            return true;
        }
        kill(self.proc.pid(), "-TERM");
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if !self.proc.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still up: kill the services it started (each runs in its own process group, so
        // they would outlive it), then `Proc`'s drop kills `up`.
        let pids: Vec<u32> = self
            .proc
            .lines()
            .iter()
            .filter(|l| l.starts_with("[up] "))
            .filter_map(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok())
            .collect();
        for pid in pids {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pipeline"));
            if ours {
                kill(pid, "-KILL");
            }
        }
        false
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Spawn to `[up] every service started`, ms.
    start_ms: f64,
    /// `[up] X: ready` lines before it.
    instances: usize,
    /// Source ready to the sink holding every item, items/s (`None`: not all arrived).
    per_s: Option<f64>,
    /// The source's own figure.
    source_per_s: Option<f64>,
    /// What the sink answered last.
    totals: Totals,
    /// `up` exited on SIGTERM within the limit.
    clean_stop: bool,
}

/// Polls the sink until it holds `n` items; returns when it did (`None`: it stalled).
async fn wait_for_sink(
    proc: &mut Proc,
    results: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<(Totals, Option<Instant>)> {
    let req = Requester::connect(
        &Address::from(format!("tcp://{results}").as_str()),
        RequesterOptions {
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )?;
    let deadline = Instant::now() + limit;
    let mut last = Totals::default();
    let mut moved = Instant::now();
    loop {
        anyhow::ensure!(proc.running(), "up exited while the items went through");
        let t: Totals = req
            .request(&NoArgs {}, WorkflowId::None)
            .await
            .context("the sink's `results` did not answer")?;
        if t.count >= n {
            return Ok((t, Some(Instant::now())));
        }
        if t.count != last.count {
            moved = Instant::now();
        }
        last = t;
        if moved.elapsed() >= STALL || Instant::now() >= deadline {
            return Ok((last, None));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn run_once(config: &Config, bin: &Path, n: u64, acked: bool) -> anyhow::Result<Run> {
    let dir = crate::resources::scratch(if acked { "fleet-acked" } else { "fleet-plain" })?;
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, topology(EXAMPLE, n, acked)?)?;
    let path = file.to_string_lossy().into_owned();
    let mut up = Up {
        proc: Proc::spawn(bin, &["up", &path], Some(&dir))?,
    };
    let (_, source_ready) = up.proc.wait_line(SOURCE_READY, START_LIMIT)?;
    let (_, all) = up.proc.wait_line(ALL_STARTED, START_LIMIT)?;
    let mut run = Run {
        start_ms: (all - up.proc.started).as_secs_f64() * 1000.0,
        ..Run::default()
    };
    let lines = up.proc.lines().to_vec();
    run.instances = lines
        .iter()
        .filter(|l| l.starts_with("[up] ") && l.contains(": ready (pid "))
        .count();
    let results = lines
        .iter()
        .find_map(|l| results_addr(l))
        .context("up printed no address for the sink's `results` replyer")?
        .to_owned();
    let limit = Duration::from_secs(if config.short { 60 } else { 300 });
    let (totals, done) =
        runtime(Flavor::Current).block_on(wait_for_sink(&mut up.proc, &results, n, limit))?;
    run.per_s = done.map(|at| rate(n, at - source_ready));
    run.totals = totals;
    // The source prints its figure once its last push returned.
    if let Ok((line, _)) = up.proc.wait_line("items/s)", Duration::from_secs(10)) {
        run.source_per_s = items_per_s(&line);
    }
    run.clean_stop = up.stop();
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The binary to run, or why there is none.
fn up_bin(config: &Config) -> anyhow::Result<PathBuf> {
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| config.find_bin(b).is_none())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "not measured: {} not built (cargo build{} -p service-framework -p sf-examples -p sf-fleet)",
        missing.join(", "),
        if cfg!(debug_assertions) { "" } else { " --release" }
    );
    config
        .find_bin(BINARIES[0])
        .context("not measured: service-framework not found")
}

/// Runs the fleet pattern.
pub fn run(config: &Config) -> PatternReport {
    let n = config.counts().fleet_items;
    let mut p = PatternReport::new(
        "fleet",
        "the pipeline example under `service-framework up`: start, and items/s end to end",
    )
    .columns("acked", "plain", "acked/plain");
    let runs = if config.short { 1 } else { 3 };
    let services = topology(EXAMPLE, n, true)
        .map(|t| t.lines().filter(|l| section_name(l).is_some()).count())
        .unwrap_or(0);
    let (mut acked, mut plain) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    match up_bin(config) {
        Err(e) => errors.push(format!("{e:#}")),
        Ok(bin) => {
            // Alternating, so both see the same machine.
            for _ in 0..runs {
                for (is_acked, into) in [(true, &mut acked), (false, &mut plain)] {
                    match run_once(config, &bin, n, is_acked) {
                        Ok(r) => into.push(r),
                        Err(e) => errors.push(format!(
                            "{} run failed: {e:#}",
                            if is_acked { "acked" } else { "plain" }
                        )),
                    }
                }
            }
        }
    }
    let all: Vec<&Run> = acked.iter().chain(&plain).collect();
    let unclean = all.iter().filter(|r| !r.clean_stop).count();

    let mut start = Row::new(
        "`up` pipeline, no bridge",
        "start to every service ready",
        "ms",
    )
    .fw(median(all.iter().map(|r| r.start_ms).collect()));
    start = if all.is_empty() {
        start.note(errors.join("; "))
    } else {
        let instances = all.iter().map(|r| r.instances).max().unwrap_or(0);
        start.note(format!(
            "spawn of `service-framework up FILE` to `{ALL_STARTED}`: {services} services, {instances} instances (source, square x2, sink), each binary asked what it declares, then started level by level, consumers first; median of {} starts",
            all.len()
        ))
    };
    p.push(start);

    let fig = |rs: &[Run]| median(rs.iter().filter_map(|r| r.per_s).collect());
    let mut items = Row::new(
        "pipeline source -> 2 squares -> sink",
        "items/s end to end",
        "items/s",
    )
    .fw(fig(&acked))
    .raw(fig(&plain));
    let mut notes = vec![format!(
        "{n} items, in_flight {IN_FLIGHT}; measured here: `{SOURCE_READY}` to the sink's `results` answering count == {n} (polled every {} ms)",
        POLL.as_millis()
    )];
    if let Some(s) = median(acked.iter().filter_map(|r| r.source_per_s).collect()) {
        notes.push(format!(
            "the source's own acked figure (main start to last ack): {}",
            crate::util::count(s as u64)
        ));
    }
    notes.push(
        "plain = the same topology with acked = false on every pusher and puller (service options)"
            .into(),
    );
    if runs > 1 {
        let each = |rs: &[Run]| {
            rs.iter()
                .map(|r| r.per_s.map_or("-".into(), |v| crate::util::count(v as u64)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        notes.push(format!(
            "runs: acked {}, plain {}",
            each(&acked),
            each(&plain)
        ));
    }
    for (label, rs) in [("acked", &acked), ("plain", &plain)] {
        for r in rs
            .iter()
            .filter(|r| r.totals.count != n || r.totals.duplicates > 0)
        {
            notes.push(format!(
                "{label}: the sink holds {} of {n} items ({} duplicates){}",
                r.totals.count,
                r.totals.duplicates,
                if r.per_s.is_none() {
                    format!(", stalled {} s: not measured", STALL.as_secs())
                } else {
                    String::new()
                }
            ));
        }
    }
    if unclean > 0 {
        notes.push(format!(
            "{unclean} run(s) where up did not exit within {} s of SIGTERM (killed)",
            STOP_LIMIT.as_secs()
        ));
    }
    notes.extend(errors);
    items = items.note(notes.join("; "));
    p.push(items);
    p.note(format!(
        "{runs} run(s) each, acked and plain alternating; the topology is examples/pipeline/pipeline.toml without the bridge; the binaries' build profile is that of this harness"
    ));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_without_its_bridge() {
        let t = topology(EXAMPLE, 20_000, true).unwrap();
        assert!(t.contains("\"source.items -> square.items\""), "{t}");
        assert!(t.contains("\"square.squares -> sink.squares\""), "{t}");
        assert!(!t.contains("web"), "{t}");
        assert!(!t.contains("bridge\""), "{t}");
        assert!(!t.contains("notes"), "{t}");
        assert!(!t.contains("rate"), "{t}");
        assert!(!t.contains("options"), "{t}");
        assert!(
            t.contains("config = { count = 20000, in_flight = 256 }"),
            "{t}"
        );
        assert!(t.contains("[services.sink]"), "{t}");
        assert_eq!(t.matches("[services.").count(), 3, "{t}");
    }

    #[test]
    fn plain_sets_acked_false_on_each_edge_end() {
        let t = topology(EXAMPLE, 5, false).unwrap();
        let after = |s: &str| {
            let at = t.find(s).unwrap_or_else(|| panic!("no {s} in {t}"));
            t[at..]
                .lines()
                .find(|l| l.starts_with("options"))
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            after("[services.source]"),
            "options = { connections = { out = { items = { acked = false } } } }"
        );
        assert_eq!(
            after("[services.square]"),
            "options = { connections = { in = { items = { acked = false } }, out = { squares = { acked = false } } } }"
        );
        assert_eq!(
            after("[services.sink]"),
            "options = { connections = { in = { squares = { acked = false } } } }"
        );
    }

    #[test]
    fn lines_up_prints() {
        assert_eq!(
            results_addr("[up] sink in.results.replyer: 127.0.0.1:4321 (no edge)"),
            Some("127.0.0.1:4321")
        );
        assert_eq!(
            results_addr("[up] sink in.squares.puller: 127.0.0.1:1"),
            None
        );
        assert_eq!(
            items_per_s(
                "source | Sent 200000 items in 4.10s (48780 items/s), every one acknowledged"
            ),
            Some(48780.0)
        );
    }
}
