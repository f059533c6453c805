//! Three `echo_replyer` processes on three network-namespace hosts, each registered as MDP
//! workers with one Majordomo broker (`service-framework -s broker`) on a fourth host; four
//! requesters on a fifth host call the service through the broker: two at its front-end (a
//! plain requester address), two speaking MDP to the broker itself. Shown under load: the
//! requests are spread over the three replicas (each one's own control `stats`), one host's
//! link cut and one replica killed with SIGKILL lose no request even with no client retries
//! (the broker gives a lost worker's request to another), each loss seen by the broker
//! within its heartbeat timeout; the broker killed with SIGKILL and started again on the
//! same address: the workers register again, the requesters recover, within a bound
//! measured here, and those with retries, by either path, lose nothing.
//!
//! The requesters run in child processes (this test binary again, in the client host's
//! namespace, chosen by `SF_BROKER_HOSTS_ROLE`): by each path, one with 2 retries and one
//! with none. They report on stdout in lines starting with `@@ `:
//! a progress line every 50 ms (answers, errors, and what each replica's control endpoint
//! says it served), each error at once, and `@@ done` at the end; they stop when the test
//! creates the stop file.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_framework::connections::requester::Heartbeat;
use service_framework::connections::{Address, Error, Requester, RequesterOptions, WorkflowId};
use support::netns::{hosts_for_test, Hosts};
use support::*;
use tokio::runtime::Runtime;

/// The broker's heartbeat, which its workers use too: a worker silent for 3 × 200 ms is
/// dropped (and a silent broker left by its workers as soon).
const BROKER_HEARTBEAT_MS: u64 = 200;
const LIVENESS: u64 = 3;
/// The broker's worker timeout, and how often its clock ticks (a quarter of an interval).
const WORKER_TIMEOUT: Duration = Duration::from_millis(BROKER_HEARTBEAT_MS * LIVENESS);
const TICK: Duration = Duration::from_millis(BROKER_HEARTBEAT_MS / 4);
/// MDP workers per replica (its replyer's `max_concurrency`).
const WORKERS: usize = 4;
/// The requesters' transport heartbeat to the front-end.
const HEARTBEAT: Heartbeat = Heartbeat {
    interval: Duration::from_millis(200),
    timeout: Duration::from_secs(1),
    ttl: Duration::from_secs(1),
};
/// Each attempt's timeout.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Callers per requester process.
const CALLERS: usize = 16;
/// The broker back and every requester answered again within this of its SIGKILL.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// A loss is seen by the broker within its worker timeout, at its next tick, plus this.
const MARGIN: Duration = Duration::from_millis(400);
/// Bound for each step the test waits for.
const STEP: Duration = Duration::from_secs(20);

const ROLE: &str = "SF_BROKER_HOSTS_ROLE";
/// The MDP service the replicas register as (`<service>.<connection>`).
const SERVICE: &str = "echo_replyer.reply";
const TEST: &str =
    "three_hosts_behind_the_broker_share_the_load_and_survive_a_cut_a_sigkill_and_a_broker_restart";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"))
}

async fn echo(r: &Requester, text: &str) -> Result<String, Error> {
    let v: Value = r
        .request(&json!({ "to_echo": text }), WorkflowId::None)
        .await?;
    Ok(v["echoed"].as_str().unwrap_or_default().to_owned())
}

/// What a replica's control endpoint says it served on `reply`; `None` when it does not
/// answer (its host cut off, or it is dead).
async fn served(control: &Requester) -> Option<u64> {
    let stats: Value = control
        .request(&json!({"verb": "stats"}), WorkflowId::None)
        .await
        .ok()?;
    stats["connections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "reply"))
        .and_then(|c| c["requests"].as_u64())
}

// ---------------------------------------------------------------------------------------------
// The requester's part, in the client host's namespace.

fn client_part() {
    // Where it calls: a front-end (a plain requester address), or MDP to the broker itself.
    let target = env("SF_BROKER_HOSTS_TARGET");
    let controls = env("SF_BROKER_HOSTS_CONTROLS");
    let retries: u32 = env("SF_BROKER_HOSTS_RETRIES").parse().expect("retries");
    let stop_file = PathBuf::from(env("SF_BROKER_HOSTS_STOP"));
    let rt = runtime();
    let _guard = rt.enter();
    let options = RequesterOptions {
        timeout: TIMEOUT,
        retries,
        heartbeat: Some(HEARTBEAT),
        ..Default::default()
    };
    let req = match target.strip_prefix("mdp:") {
        Some(router) => Requester::through_broker(&Address::from(router), SERVICE, options),
        None => Requester::connect(&Address::from(target.as_str()), options),
    }
    .expect("the requester");
    // The workers registered before this process started: the first call is answered.
    let first = rt.block_on(echo(&req, "hello"));
    assert_eq!(first.expect("the first call"), "hello");
    println!("@@ ready");

    // Each replica's served count, looked at every 200 ms (a silent one within 300 ms).
    let counts: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let watchers: Vec<Requester> = controls
        .split(',')
        .map(|c| {
            Requester::connect(
                &Address::from(c),
                RequesterOptions {
                    timeout: Duration::from_millis(300),
                    ..Default::default()
                },
            )
            .expect("a control requester")
        })
        .collect();
    {
        let counts = counts.clone();
        rt.spawn(async move {
            loop {
                let mut now = Vec::new();
                for w in &watchers {
                    now.push(served(w).await);
                }
                *counts.lock().unwrap() = now;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    // The load: distinct texts, every answer checked; an error is reported at once.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (req, stop, ok, errors) = (req.clone(), stop.clone(), ok.clone(), errors.clone());
            rt.spawn(async move {
                let mut slowest_error = Duration::ZERO;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("{c}-{i}");
                    let t = Instant::now();
                    match echo(&req, &text).await {
                        Ok(back) => {
                            assert_eq!(back, text, "a reply to another request");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let took = t.elapsed();
                            errors.fetch_add(1, Ordering::Relaxed);
                            println!(
                                "@@ error at={}ms took={}ms {e}",
                                t0.elapsed().as_millis(),
                                took.as_millis()
                            );
                            let e = e.to_string();
                            assert!(
                                e.contains("went away")
                                    || e.contains("timed out")
                                    || e.contains("unavailable"),
                                "an unexpected error: {e}"
                            );
                            assert!(
                                took <= TIMEOUT + Duration::from_millis(500),
                                "{e} after {took:?}"
                            );
                            slowest_error = slowest_error.max(took);
                        }
                    }
                    i += 1;
                }
                slowest_error
            })
        })
        .collect();

    // Progress until the test says stop (bounded: the test takes well under a minute).
    while !stop_file.exists() {
        let served: Vec<String> = counts
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.map_or("-".to_owned(), |n| n.to_string()))
            .collect();
        println!(
            "@@ progress ok={} errors={} served={}",
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            served.join(",")
        );
        assert!(t0.elapsed() < Duration::from_secs(90), "never told to stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    // Every caller ends: none hangs.
    let slowest = rt.block_on(async move {
        let mut slowest = Duration::ZERO;
        for t in tasks {
            let s = tokio::time::timeout(TIMEOUT * 4, t)
                .await
                .expect("a caller hangs")
                .expect("a caller panicked");
            slowest = slowest.max(s);
        }
        slowest
    });
    println!(
        "@@ done ok={} errors={} slowest_error={slowest:?}",
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------------
// The test: hosts, processes, faults.

/// A client's latest progress: (answered, errors, served by each replica).
struct Progress {
    ok: u64,
    errors: u64,
    served: Vec<Option<u64>>,
}

fn progress(lines: &[String]) -> Option<Progress> {
    let line = lines.iter().rev().find(|l| l.starts_with("@@ progress"))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    Some(Progress {
        ok: field("ok=").parse().expect("ok="),
        errors: field("errors=").parse().expect("errors="),
        served: field("served=")
            .split(',')
            .map(|s| s.parse().ok())
            .collect(),
    })
}

/// Waits for a progress line that satisfies `cond`.
fn wait_progress(c: &mut Proc, what: &str, cond: impl Fn(&Progress) -> bool) -> Progress {
    c.wait_until(false, what, STEP, |lines| {
        progress(lines).filter(|p| cond(p))
    })
}

/// The latest progress line seen.
fn latest(c: &mut Proc) -> Progress {
    c.drain();
    wait_progress(c, "a progress line", |_| true)
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Waits until `needle` occurs `n` times on stderr; the time it took.
fn wait_count(p: &mut Proc, needle: &str, n: usize) -> Duration {
    let t = Instant::now();
    p.wait_until(true, &format!("{n} lines with {needle:?}"), STEP, |lines| {
        (count(lines, needle) >= n).then_some(())
    });
    t.elapsed()
}

/// Why the broker dropped its latest dropped worker, as it logged it.
fn drop_reason(broker: &Proc) -> String {
    broker
        .stderr
        .iter()
        .rev()
        .find_map(|l| l.split_once("worker dropped: "))
        .map(|(_, why)| {
            why.split(" service=")
                .next()
                .unwrap_or(why)
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn kill(p: &Proc) {
    let pid = p.pid().to_string();
    let ok = Command::new("kill")
        .args(["-s", "KILL", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -s KILL {pid}");
}

fn in_host(hosts: &Hosts, host: usize, exe: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &hosts.ns(&format!("h{host}"))])
        .arg(exe);
    cmd
}

/// The broker on host 3, with the tests' heartbeat; returns once it is ready.
fn start_broker(hosts: &Hosts, addresses: &Path) -> Proc {
    let mut cmd = in_host(hosts, 3, service_framework());
    cmd.args(["-s", "broker", "-a"]).arg(addresses).args([
        "--heartbeat_interval_s",
        &(BROKER_HEARTBEAT_MS as f64 / 1000.0).to_string(),
        "--heartbeat_liveness",
        &LIVENESS.to_string(),
    ]);
    let mut p = Proc::spawn(cmd);
    p.wait_until(true, "the broker ready", START, |lines| {
        lines
            .iter()
            .any(|l| l.contains("service=\"broker\"") && l.contains("ready"))
            .then_some(())
    });
    p
}

#[test]
fn three_hosts_behind_the_broker_share_the_load_and_survive_a_cut_a_sigkill_and_a_broker_restart() {
    if std::env::var(ROLE).as_deref() == Ok("client") {
        return client_part();
    }
    // Hosts 0-2: the replicas; 3: the broker; 4: the requesters. Declared first, so it is
    // dropped (the namespaces removed) after every process, also when the test fails.
    let Some(hosts) = hosts_for_test(5) else {
        return;
    };
    let started = Instant::now();
    let dir = Scratch::new("broker-hosts");
    let router = format!("{}:7000", hosts.addr(3));
    let front = format!("{}:7001", hosts.addr(3));
    let broker_file = dir.write(
        "broker.json",
        &json!({"connections": {"in": {
            "broker": {"router": router},
            SERVICE: {"replyer": front},
        }}})
        .to_string(),
    );
    let mut broker = start_broker(&hosts, &broker_file);

    // Three replicas, each WORKERS MDP workers of `echo_replyer.reply`, their control
    // endpoints on their host's address (the requesters' host reads them).
    let mut reps = Vec::new();
    let mut controls = Vec::new();
    for i in 0..3 {
        let control = format!("{}:7100", hosts.addr(i));
        let file = dir.write(
            &format!("h{i}.json"),
            &json!({
                "connections": {"in": {"reply": {"broker": router}}, "out": {}},
                "options": {"connections": {"in": {"reply": {
                    "heartbeat_interval_s": BROKER_HEARTBEAT_MS as f64 / 1000.0,
                    "heartbeat_liveness": LIVENESS,
                    "max_concurrency": WORKERS,
                }}}},
                "control": control,
            })
            .to_string(),
        );
        let mut cmd = in_host(&hosts, i, Path::new(ECHO_REPLYER));
        cmd.arg("-a").arg(&file);
        let mut p = Proc::spawn(cmd);
        wait_count(&mut p, "registered with the broker", WORKERS);
        reps.push(p);
        controls.push(control);
    }
    wait_count(&mut broker, "worker registered", 3 * WORKERS);

    // Four requesters on host 4: at the front-end one with 2 retries and one with none, and
    // two speaking MDP to the broker itself (an addresses entry `{"broker": .., "service":
    // ..}`), one with 2 retries and one with none.
    let stop_file = dir.path().join("stop");
    let exe = std::env::current_exe().expect("the test binary");
    let client = |target: &str, retries: &str| {
        let mut cmd = in_host(&hosts, 4, &exe);
        cmd.args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env(ROLE, "client")
            .env("SF_BROKER_HOSTS_TARGET", target)
            .env("SF_BROKER_HOSTS_CONTROLS", controls.join(","))
            .env("SF_BROKER_HOSTS_RETRIES", retries)
            .env("SF_BROKER_HOSTS_STOP", &stop_file);
        Proc::spawn(cmd)
    };
    let mdp = format!("mdp:{router}");
    let mut clients = [
        client(&front, "2"),
        client(&front, "0"),
        client(&mdp, "0"),
        client(&mdp, "2"),
    ];
    for c in &mut clients {
        c.wait_for_stdout("@@ ready", STEP);
    }

    // 1. The load is spread: each replica serves a share, by its own count.
    let spread = wait_progress(&mut clients[0], "1,500 answered, 3 replicas counted", |p| {
        p.ok >= 1500 && p.served.iter().all(Option::is_some)
    });
    let counts: Vec<u64> = spread.served.iter().map(|c| c.unwrap()).collect();
    let total: u64 = counts.iter().sum();
    for c in &counts {
        assert!(*c >= total / 6, "each replica serves a share: {counts:?}");
    }

    // 2. Host 1's link cut under load: the broker drops its workers within its heartbeat
    // timeout, their requests go to the others, and no request fails.
    let dropped = |b: &Proc| count(&b.stderr, "worker dropped");
    broker.drain();
    let before = dropped(&broker);
    let ok_before: Vec<u64> = clients.iter_mut().map(|c| latest(c).ok).collect();
    hosts.link(1, false);
    let cut_seen = wait_count(&mut broker, "worker dropped", before + WORKERS);
    let bound = WORKER_TIMEOUT + TICK + MARGIN;
    let cut_reason = drop_reason(&broker);
    assert!(
        cut_seen <= bound,
        "host 1's workers dropped {cut_seen:?} after the cut, bound {bound:?}"
    );
    for (c, before) in clients.iter_mut().zip(&ok_before) {
        wait_progress(c, "300 more answered without host 1", |p| {
            p.ok >= before + 300
        });
    }
    // Healed: its workers register again (on new connections) and serve again: its count,
    // unreadable while cut off, read again after the heal and then grown by 100.
    hosts.link(1, true);
    let healed = Instant::now();
    clients[0].drain();
    let from = clients[0].stdout.len();
    wait_count(&mut reps[1], "registered with the broker", 2 * WORKERS);
    let registered_again = healed.elapsed();
    let first_read = clients[0].wait_until(false, "host 1's count read again", STEP, |lines| {
        progress(&lines[from..]).and_then(|p| p.served[1])
    });
    let back = wait_progress(&mut clients[0], "host 1 serving again", |p| {
        p.served[1].is_some_and(|n| n >= first_read + 100)
    });
    let back_after = healed.elapsed();

    // 3. Replica 2 killed with SIGKILL under load: dropped within the heartbeat timeout, its
    // requests given to the others, no request fails.
    broker.drain();
    let before = dropped(&broker);
    let ok_before: Vec<u64> = clients.iter_mut().map(|c| latest(c).ok).collect();
    kill(&reps[2]);
    let kill_seen = wait_count(&mut broker, "worker dropped", before + WORKERS);
    let kill_reason = drop_reason(&broker);
    assert!(
        kill_seen <= bound,
        "replica 2's workers dropped {kill_seen:?} after its SIGKILL, bound {bound:?}"
    );
    for (c, before) in clients.iter_mut().zip(&ok_before) {
        wait_progress(c, "300 more answered without replica 2", |p| {
            p.ok >= before + 300
        });
    }
    // Nothing lost so far, retries or not, by either path: the broker gave the lost
    // workers' requests to others.
    let cut_and_kill: Vec<u64> = clients.iter_mut().map(|c| latest(c).ok).collect();
    for c in &mut clients {
        c.drain();
        let p = latest(c);
        assert_eq!(
            p.errors,
            0,
            "a request failed through the cut or the kill:\n{}",
            c.stdout_text()
        );
    }

    // 4. The broker killed with SIGKILL under load and started again on the same address:
    // the workers register again and the requesters recover.
    kill(&broker);
    let broker_killed = Instant::now();
    broker.finish(SHORT);
    let mut broker = start_broker(&hosts, &broker_file);
    let broker_up = broker_killed.elapsed();
    let ok_at_up: Vec<u64> = clients.iter_mut().map(|c| latest(c).ok).collect();
    wait_count(&mut broker, "worker registered", 2 * WORKERS);
    let workers_back = broker_killed.elapsed();
    for (c, at_up) in clients.iter_mut().zip(&ok_at_up) {
        wait_progress(c, "answered again after the broker restart", |p| {
            p.ok >= at_up + 100
        });
    }
    let recovered = broker_killed.elapsed();
    assert!(
        recovered <= RECOVERY_BOUND,
        "recovered {recovered:?} after the broker's SIGKILL, bound {RECOVERY_BOUND:?}"
    );
    for (c, at_up) in clients.iter_mut().zip(&ok_at_up) {
        wait_progress(c, "300 more answered after the restart", |p| {
            p.ok >= at_up + 300
        });
    }

    // Stop; every caller ends (each within its timeouts), the errors are counted.
    std::fs::write(&stop_file, "stop").expect("the stop file");
    let mut done = Vec::new();
    for c in &mut clients {
        done.push(c.wait_for_stdout("@@ done", STEP));
        let status = c.finish(SHORT);
        assert!(
            status.success(),
            "a requester process failed:\n{}\n{}",
            c.stdout_text(),
            c.stderr_text()
        );
    }
    for i in [0, 3] {
        assert!(
            done[i].contains("errors=0 "),
            "2 retries (front-end, MDP): the broker restart costs no request: {}",
            done[i]
        );
    }
    let first_error = |c: &Proc| {
        c.stdout
            .iter()
            .find(|l| l.starts_with("@@ error"))
            .cloned()
            .unwrap_or_default()
    };
    println!(
        "broker hosts: spread {counts:?} (replica control stats, {total} served); host 1 cut: \
         its workers dropped {cut_seen:?} after (bound {bound:?}: {cut_reason}), registered \
         again {registered_again:?} after the heal, serving again {back_after:?} after \
         (served {:?}); replica 2 SIGKILL: dropped {kill_seen:?} after ({kill_reason}); \
         answered through the cut and the kill {cut_and_kill:?}, 0 errors; broker SIGKILL: \
         restarted {broker_up:?}, 2x{WORKERS} workers back {workers_back:?}, every requester \
         answered again {recovered:?} after; front-end, 2 retries: {}; front-end, none: {} \
         ({}); MDP, none: {} ({}); MDP, 2 retries: {}; total {:?}",
        back.served,
        done[0],
        done[1],
        first_error(&clients[1]),
        done[2],
        first_error(&clients[2]),
        done[3],
        started.elapsed()
    );
    drop(clients);
    drop(broker);
    drop(reps);
    drop(hosts);
}
