//! Resources: resident memory of an idle service and the time from process start to ready.
//!
//! Framework: the real `echo_replyer` binary (built by `cargo build -p sf-examples`, found
//! beside this executable). Ready is measured two ways: the "replyer serving" log line on
//! stderr, and the first request answered. Resident memory is `VmRSS` from
//! `/proc/<pid>/status` half a second after ready, with nothing calling. Raw: this binary
//! re-run as `sf-bench --raw-echo-server`, a bare `zeromq` ROUTER echo on a current-thread
//! runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sf_connections::wire::WorkflowId;
use sf_connections::{Address, Requester, RequesterOptions};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::procs::{endpoint_in, Proc, RAW_SERVING};
use crate::report::{PatternReport, Row, Target};
use crate::util::{rss_mib, runtime, Flavor, Latency};
use crate::Config;

const START_LIMIT: Duration = Duration::from_secs(10);
const IDLE_SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
struct ToEcho<'a> {
    to_echo: &'a str,
}

#[derive(Debug, Deserialize)]
struct Echoed {
    #[allow(dead_code)]
    echoed: String,
}

/// One process's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Started {
    /// Spawn to the "serving" line, ms (median of the starts).
    pub ready_log_ms: f64,
    /// Spawn to the first reply, ms (median of the starts).
    pub ready_call_ms: f64,
    /// Idle resident memory, MiB (the last start).
    pub rss_mib: f64,
}

/// How to reach a server once it is up.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Framework,
    Raw,
}

async fn first_reply(endpoint: &str, caller: Caller) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_LIMIT;
    match caller {
        Caller::Framework => {
            let req = Requester::connect(
                &Address::from(endpoint),
                RequesterOptions {
                    timeout: Duration::from_secs(1),
                    ..Default::default()
                },
            )?;
            loop {
                let r: sf_connections::Result<Echoed> = req
                    .request(&ToEcho { to_echo: "hi" }, WorkflowId::None)
                    .await;
                match r {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(e).context("no reply from the service")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        Caller::Raw => {
            let mut dealer = DealerSocket::new();
            tokio::time::timeout(START_LIMIT, dealer.connect(endpoint))
                .await
                .context("raw connect timed out")??;
            dealer
                .send(
                    ZmqMessage::try_from(vec![Bytes::new(), Bytes::from_static(b"hi")])
                        .map_err(|_| anyhow::anyhow!("empty message"))?,
                )
                .await?;
            tokio::time::timeout(START_LIMIT, dealer.recv())
                .await
                .context("no raw reply")??;
            Ok(())
        }
    }
}

fn measure(
    program: &Path,
    args: &[&str],
    needle: &str,
    caller: Caller,
    starts: usize,
) -> anyhow::Result<Started> {
    let rt = runtime(Flavor::Current);
    let mut log = Vec::with_capacity(starts);
    let mut call = Vec::with_capacity(starts);
    let mut rss = 0.0;
    for i in 0..starts {
        let mut proc = Proc::spawn(program, args, None)?;
        let (line, at) = proc.wait_line(needle, START_LIMIT)?;
        log.push(at - proc.started);
        let ep = endpoint_in(&line).with_context(|| format!("no endpoint in {line:?}"))?;
        rt.block_on(first_reply(&ep, caller))?;
        call.push(proc.started.elapsed());
        if i + 1 == starts {
            std::thread::sleep(IDLE_SETTLE);
            anyhow::ensure!(proc.running(), "the process exited while idle");
            rss = rss_mib(proc.pid()).context("cannot read VmRSS")?;
        }
    }
    Ok(Started {
        ready_log_ms: Latency::of(&mut log).p50_us / 1000.0,
        ready_call_ms: Latency::of(&mut call).p50_us / 1000.0,
        rss_mib: rss,
    })
}

/// The `sf-bench` binary to re-run as the raw server.
pub(crate) fn self_exe(config: &Config) -> Option<PathBuf> {
    if let Some(p) = &config.self_exe {
        return Some(p.clone());
    }
    let exe = std::env::current_exe().ok()?;
    if exe
        .file_stem()
        .is_some_and(|n| n.to_string_lossy() == "sf-bench")
    {
        return Some(exe);
    }
    config.find_bin("sf-bench")
}

/// Scratch folder for files handed to children.
pub fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sf-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the resources pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let mut p = PatternReport::new(
        "resources",
        "idle service resident memory and start-to-ready (real binaries)",
    );
    let fw: anyhow::Result<Started> = match config.find_bin("echo_replyer") {
        None => Err(anyhow::anyhow!(
            "not measured: echo_replyer not found beside this executable; run `cargo build{} -p sf-examples` first",
            if cfg!(debug_assertions) { "" } else { " --release" }
        )),
        Some(bin) => (|| {
            let dir = scratch("resources")?;
            let addresses = dir.join("replyer_addresses.json");
            std::fs::write(
                &addresses,
                r#"{"connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}, "out": {}}, "states": {"in": {}, "out": {}}}"#,
            )?;
            let path = addresses.to_string_lossy().into_owned();
            let r = measure(&bin, &["-a", &path], "replyer serving", Caller::Framework, c.starts);
            let _ = std::fs::remove_dir_all(&dir);
            r
        })(),
    };
    let raw: anyhow::Result<Started> = match self_exe(config) {
        None => Err(anyhow::anyhow!(
            "not measured: the sf-bench binary was not found (run it with `cargo run -p sf-bench`)"
        )),
        Some(exe) => measure(
            &exe,
            &["--raw-echo-server"],
            RAW_SERVING,
            Caller::Raw,
            c.starts,
        ),
    };
    let f = fw.as_ref().ok();
    let r = raw.as_ref().ok();
    let mut errs = Vec::new();
    if let Err(e) = &fw {
        errs.push(format!("framework: {e:#}"));
    }
    if let Err(e) = &raw {
        errs.push(format!("raw: {e:#}"));
    }
    let mut rss = Row::new("idle echo_replyer", "resident memory", "MiB")
        .fw(f.map(|s| s.rss_mib))
        .raw(r.map(|s| s.rss_mib))
        .target(Target::AtMost(10.0));
    rss = if errs.is_empty() {
        rss.note(format!(
            "VmRSS {} after ready; raw = sf-bench --raw-echo-server (bare ROUTER echo)",
            humantime(IDLE_SETTLE)
        ))
    } else {
        rss.note(errs.join("; "))
    };
    p.push(rss);
    p.push(
        Row::new("echo_replyer start", "to \"serving\" log line", "ms")
            .fw(f.map(|s| s.ready_log_ms))
            .raw(r.map(|s| s.ready_log_ms))
            .target(Target::AtMost(50.0)),
    );
    p.push(
        Row::new("echo_replyer start", "to first reply", "ms")
            .fw(f.map(|s| s.ready_call_ms))
            .raw(r.map(|s| s.ready_call_ms))
            .target(Target::AtMost(50.0)),
    );
    p.note(format!(
        "median of {} starts each; the binaries' build profile is that of this harness",
        c.starts
    ));
    p
}

fn humantime(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
