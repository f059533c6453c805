//! Three `echo_replyer` processes behind one requester (brokerless replicas): the load is
//! spread (counted by each replica's control `stats`), a replica killed with SIGKILL under
//! load costs no request when retries are on and only prompt errors when they are off, a
//! stopped (SIGSTOP) replica is taken out within the heartbeat timeout and put back after
//! SIGCONT. Then the same across hosts: network namespaces made here (a bridge, a veth per
//! host), replicas run in them with `ip netns exec`, one host's link cut under load.
//!
//! The namespace test runs its client in a child process (this test binary again, in the
//! client's namespace, its part chosen by `SF_REPLICAS_ROLE`), which reports on stdout in
//! lines starting with `@@ `.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_framework::connections::requester::Heartbeat;
use service_framework::connections::{
    Address, Counter, Error, Requester, RequesterOptions, WorkflowId,
};
use support::netns::hosts_for_test;
use support::*;
use tokio::runtime::Runtime;

/// The heartbeat of the tests' requesters: a silent replica is dropped after 1 s.
const HEARTBEAT: Heartbeat = Heartbeat {
    interval: Duration::from_millis(200),
    timeout: Duration::from_secs(1),
    ttl: Duration::from_secs(1),
};
/// Each attempt's timeout.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Selects the child process's part.
const ROLE: &str = "SF_REPLICAS_ROLE";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A replica process: its pid, its reply endpoint and its control endpoint.
struct Replica {
    proc: Proc,
    endpoint: String,
    control: String,
}

fn start_replica(prefix: &[&str], addresses: &std::path::Path) -> Replica {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(ECHO_REPLYER);
            c
        }
        None => Command::new(ECHO_REPLYER),
    };
    cmd.arg("-a").arg(addresses);
    let mut proc = Proc::spawn(cmd);
    let endpoint = proc.wait_serving(Duration::from_secs(20));
    let control = proc.wait_for_stderr("control: ", START);
    let control = control[control.find("control: ").unwrap() + 9..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    Replica {
        proc,
        endpoint,
        control,
    }
}

fn requester(endpoints: &[&str], retries: u32) -> Requester {
    Requester::connect(
        &Address::Replicas(endpoints.iter().map(|e| Address::from(*e)).collect()),
        RequesterOptions {
            timeout: TIMEOUT,
            retries,
            heartbeat: Some(HEARTBEAT),
            ..Default::default()
        },
    )
    .expect("the requester")
}

async fn wait_up(r: &Requester, what: &str, cond: impl Fn(usize) -> bool) -> Duration {
    let t = Instant::now();
    let mut w = r.replicas_up();
    tokio::time::timeout(Duration::from_secs(10), w.wait_for(|&n| cond(n)))
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s: {:?}", r.replicas()))
        .expect("the requester is alive");
    t.elapsed()
}

async fn echo(r: &Requester, text: &str) -> Result<String, Error> {
    let v: Value = r
        .request(&json!({ "to_echo": text }), WorkflowId::None)
        .await?;
    Ok(v["echoed"].as_str().unwrap_or_default().to_owned())
}

/// What a replica's control endpoint says it served on `reply`.
async fn served(control: &str) -> u64 {
    let r = Requester::connect(
        &Address::from(control),
        RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap();
    let stats: Value = r
        .request(&json!({"verb": "stats"}), WorkflowId::None)
        .await
        .expect("control stats");
    stats["connections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "reply"))
        .and_then(|c| c["requests"].as_u64())
        .unwrap_or_else(|| panic!("no `reply` requests in {stats}"))
}

/// Load: `callers` tasks sending distinct texts until `stop`; every result is checked (the
/// echo of what was sent, or an error within its timeout) and counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, Duration)>>>,
}

fn load(rt: &Runtime, req: &Requester, callers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let tasks = (0..callers)
        .map(|c| {
            let (req, stop, ok) = (req.clone(), stop.clone(), ok.clone());
            rt.spawn(async move {
                let mut errors = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("{c}-{i}");
                    let t = Instant::now();
                    match echo(&req, &text).await {
                        Ok(back) => {
                            assert_eq!(back, text, "a reply to another request");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push((e.to_string(), t.elapsed())),
                    }
                    i += 1;
                }
                errors
            })
        })
        .collect();
    Load { stop, ok, tasks }
}

impl Load {
    /// Waits until `n` more requests were answered.
    fn answered(&self, n: u64, within: Duration) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let t = Instant::now();
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(t.elapsed() < within, "{n} more answers within {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the callers; every one ends (none hangs); returns (answered, errors).
    fn finish(self, rt: &Runtime) -> (u64, Vec<(String, Duration)>) {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        let errors = rt.block_on(async move {
            let mut all = Vec::new();
            for t in tasks {
                let e = tokio::time::timeout(TIMEOUT * 4, t)
                    .await
                    .expect("a caller hangs")
                    .expect("a caller panicked");
                all.extend(e);
            }
            all
        });
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -s {signal} {pid}");
}

#[test]
fn three_echo_replicas_share_the_load_and_a_sigkill_loses_nothing_with_retries() {
    let dir = Scratch::new("replicas");
    let addresses = dir.write("replyer.json", REPLYER_ADDRESSES);
    let reps: Vec<Replica> = (0..3).map(|_| start_replica(&[], &addresses)).collect();
    let eps: Vec<&str> = reps.iter().map(|r| r.endpoint.as_str()).collect();
    let rt = runtime();
    let _guard = rt.enter();

    // The load is spread: each replica serves a share, by its own count.
    let req = requester(&eps, 2);
    rt.block_on(wait_up(&req, "3 replicas up", |n| n == 3));
    let run = load(&rt, &req, 24);
    run.answered(1500, Duration::from_secs(20));
    let (ok, errors) = run.finish(&rt);
    assert!(errors.is_empty(), "{errors:?}");
    let counts: Vec<u64> = rt.block_on(async {
        let mut v = Vec::new();
        for r in &reps {
            v.push(served(&r.control).await);
        }
        v
    });
    assert_eq!(counts.iter().sum::<u64>(), ok, "{counts:?}");
    for c in &counts {
        assert!(*c >= ok / 6, "each replica serves a share: {counts:?}");
    }
    println!("{ok} requests over 3 echo_replyer processes: {counts:?} (their control stats)");

    // SIGKILL under load, retries on: every request answered, exactly once, none lost.
    let run = load(&rt, &req, 24);
    run.answered(500, Duration::from_secs(20));
    let retries_before = req.stats().get(Counter::Retries);
    kill(reps[0].proc.pid(), "KILL");
    let killed = Instant::now();
    rt.block_on(wait_up(&req, "the killed replica out", |n| n == 2));
    let out_after = killed.elapsed();
    run.answered(1000, Duration::from_secs(20));
    let (ok, errors) = run.finish(&rt);
    assert!(
        errors.is_empty(),
        "retries on: no request may fail: {errors:?}"
    );
    let retried = req.stats().get(Counter::Retries) - retries_before;
    println!(
        "SIGKILL under load (24 callers, 2 retries): {ok} answered, 0 lost, {retried} retried; \
         the replica was out {out_after:?} after the kill"
    );
    assert!(out_after < Duration::from_secs(1), "{out_after:?}");

    // Retries off: another replica killed under load; its requests fail, each at once (well
    // within the timeout), none hangs, and the rest are answered.
    let survivors = [eps[1], eps[2]];
    let req = requester(&survivors, 0);
    rt.block_on(wait_up(&req, "2 replicas up", |n| n == 2));
    let run = load(&rt, &req, 24);
    run.answered(500, Duration::from_secs(20));
    kill(reps[1].proc.pid(), "KILL");
    rt.block_on(wait_up(&req, "the killed replica out", |n| n == 1));
    run.answered(500, Duration::from_secs(20));
    let (ok, errors) = run.finish(&rt);
    for (e, took) in &errors {
        assert!(
            e.contains("went away") || e.contains("timed out"),
            "an unexpected error: {e}"
        );
        assert!(
            *took <= TIMEOUT + Duration::from_millis(500),
            "{e} after {took:?}"
        );
    }
    let slowest = errors.iter().map(|e| e.1).max().unwrap_or_default();
    println!(
        "SIGKILL under load, retries off: {ok} answered, {} failed (slowest failure {slowest:?}, timeout {TIMEOUT:?})",
        errors.len()
    );
    // The survivor alone serves on.
    let back = rt
        .block_on(echo(&req, "still here"))
        .expect("the survivor answers");
    assert_eq!(back, "still here");
    drop(reps);
}

#[test]
fn a_stopped_replica_is_out_within_the_heartbeat_timeout_and_back_after_sigcont() {
    let dir = Scratch::new("replicas-stop");
    let addresses = dir.write("replyer.json", REPLYER_ADDRESSES);
    let reps: Vec<Replica> = (0..3).map(|_| start_replica(&[], &addresses)).collect();
    let eps: Vec<&str> = reps.iter().map(|r| r.endpoint.as_str()).collect();
    let rt = runtime();
    let _guard = rt.enter();
    let req = requester(&eps, 2);
    rt.block_on(wait_up(&req, "3 replicas up", |n| n == 3));
    let run = load(&rt, &req, 8);
    run.answered(300, Duration::from_secs(20));

    kill(reps[2].proc.pid(), "STOP");
    let stopped = Instant::now();
    let detected = rt.block_on(wait_up(&req, "the stopped replica out", |n| n == 2));
    // Silent for the heartbeat timeout, seen at the next check (a quarter of an interval).
    let bound = HEARTBEAT.timeout + HEARTBEAT.interval + Duration::from_millis(300);
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    assert!(!req.replicas()[2].up);
    // Requests go on, on the other two.
    run.answered(300, Duration::from_secs(20));
    let sent_while_out = req.replicas()[2].sent;

    kill(reps[2].proc.pid(), "CONT");
    let resumed = Instant::now();
    rt.block_on(wait_up(&req, "the resumed replica back", |n| n == 3));
    let back_after = resumed.elapsed();
    run.answered(600, Duration::from_secs(20));
    let (ok, errors) = run.finish(&rt);
    assert!(errors.is_empty(), "retries on: nothing lost: {errors:?}");
    let after = req.replicas()[2].sent;
    assert!(
        after > sent_while_out,
        "the resumed replica is given requests again"
    );
    println!(
        "SIGSTOP: out {:?} after the stop (heartbeat {:?}/{:?}); back {back_after:?} after \
         SIGCONT; {ok} answered, 0 lost; it served {} more after",
        detected,
        HEARTBEAT.interval,
        HEARTBEAT.timeout,
        after - sent_while_out
    );
    let _ = stopped;
}

/// A service whose addresses.json gives its requester a list: `echo_requester` in main mode
/// spreads its 60 requests over two `echo_replyer` processes.
#[test]
fn a_service_given_a_list_of_replicas_in_addresses_json_spreads_its_requests() {
    let dir = Scratch::new("replicas-file");
    let addresses = dir.write("replyer.json", REPLYER_ADDRESSES);
    let reps: Vec<Replica> = (0..2).map(|_| start_replica(&[], &addresses)).collect();
    let file = dir.write(
        "requester.json",
        &format!(
            r#"{{"connections": {{"out": {{"request": {{"requester": ["{}", "{}"]}}}}}}}}"#,
            reps[0].endpoint, reps[1].endpoint
        ),
    );
    let mut cmd = Command::new(ECHO_REQUESTER);
    cmd.arg("-a")
        .arg(&file)
        .args(["-m", "--num_req_to_send", "60"]);
    let (status, p) = run(cmd, Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", p.stderr_text());
    assert_eq!(
        p.stdout
            .iter()
            .filter(|l| l.contains("Got Response"))
            .count(),
        60
    );
    let rt = runtime();
    let counts: Vec<u64> = rt.block_on(async {
        let mut v = Vec::new();
        for r in &reps {
            v.push(served(&r.control).await);
        }
        v
    });
    assert_eq!(counts.iter().sum::<u64>(), 60, "{counts:?}");
    assert!(counts.iter().all(|c| *c >= 20), "{counts:?}");
    println!("echo_requester with a list of 2 replicas: {counts:?}");
}

/// The control endpoint's `stats` shows a requester's replicas: which are up, and how many
/// requests each was sent.
#[test]
fn control_stats_show_each_replica_of_a_requester() {
    let dir = Scratch::new("replicas-control");
    let addresses = dir.write("replyer.json", REPLYER_ADDRESSES);
    let rep = start_replica(&[], &addresses);
    let absent = format!("127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let file = service_framework::AddressesFile::parse(
        &format!(
            r#"{{"connections": {{"out": {{"request": {{"requester": ["{}", "{absent}"]}}}}}}}}"#,
            rep.endpoint
        ),
        "test",
    )
    .unwrap();
    let def = service_framework::ServiceDef::new("caller").requester(sf_examples::echo::REQUEST);
    let handle = service_framework::Service::new(def)
        .addresses(file)
        .run_in_background();
    let control = handle
        .wait_ready(Duration::from_secs(10))
        .unwrap()
        .control()
        .expect("a control endpoint")
        .to_owned();
    let rt = runtime();
    let stats: Value = rt.block_on(async {
        let r = Requester::connect(
            &Address::from(control.as_str()),
            RequesterOptions::default(),
        )
        .unwrap();
        // Waits (bounded) for the live replica to be seen up.
        let t = Instant::now();
        loop {
            let v: Value = r
                .request(&json!({"verb": "stats"}), WorkflowId::None)
                .await
                .unwrap();
            if v["connections"][0]["replicas"][0]["up"] == true {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let replicas = &stats["connections"][0]["replicas"];
    assert_eq!(replicas.as_array().map(Vec::len), Some(2), "{stats}");
    assert_eq!(replicas[0]["endpoint"], rep.endpoint.as_str());
    assert_eq!(replicas[1]["up"], false, "{stats}");
    assert_eq!(replicas[0]["in_flight"], 0);
    handle.stop().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Across hosts: network namespaces.

/// The client's part, in its own namespace: load on the three replicas; it reports each
/// change of the replicas (`@@ out i`, `@@ back i`), progress on request (when a replica has
/// been out or back for 300 answers) and at the end `@@ done ok=N errors=M`.
fn client_part(endpoints: &str, retries: u32) {
    let rt = runtime();
    let _guard = rt.enter();
    let eps: Vec<&str> = endpoints.split(',').collect();
    let req = requester(&eps, retries);
    rt.block_on(wait_up(&req, "3 replicas up", |n| n == 3));
    println!("@@ ready");
    let run = load(&rt, &req, 16);
    // Each replica serves a share.
    let t = Instant::now();
    while req.replicas().iter().any(|r| r.sent < 200) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?}",
            req.replicas()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let spread: Vec<u64> = req.replicas().iter().map(|r| r.sent).collect();
    println!("@@ spread {spread:?}");
    // Two events come: host 1 cut (then healed), replica 2 killed.
    let mut was: Vec<bool> = vec![true; 3];
    let mut outs = 0;
    let mut backs = 0;
    let t = Instant::now();
    while outs < 2 || backs < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "{:?}",
            req.replicas()
        );
        let now: Vec<bool> = req.replicas().iter().map(|r| r.up).collect();
        for i in 0..3 {
            if was[i] && !now[i] {
                outs += 1;
                println!("@@ out {i}");
                let before: Vec<u64> = req.replicas().iter().map(|r| r.sent).collect();
                run.answered(300, Duration::from_secs(20));
                let after: Vec<u64> = req.replicas().iter().map(|r| r.sent).collect();
                println!(
                    "@@ continued {i} {:?}",
                    after
                        .iter()
                        .zip(&before)
                        .map(|(a, b)| a - b)
                        .collect::<Vec<_>>()
                );
            }
            if !was[i] && now[i] {
                backs += 1;
                let before = req.replicas()[i].sent;
                run.answered(300, Duration::from_secs(20));
                println!("@@ back {i} {}", req.replicas()[i].sent - before);
            }
        }
        was = now;
        std::thread::sleep(Duration::from_millis(5));
    }
    let (ok, errors) = run.finish(&rt);
    // Without retries, a request on the cut or killed replica fails: with an error, within
    // its timeout.
    for (e, took) in &errors {
        assert!(retries == 0, "retries on: nothing may fail: {e}");
        assert!(
            e.contains("went away") || e.contains("timed out"),
            "an unexpected error: {e}"
        );
        assert!(
            *took <= TIMEOUT + Duration::from_millis(500),
            "{e} after {took:?}"
        );
    }
    let slowest = errors.iter().map(|e| e.1).max().unwrap_or_default();
    println!(
        "@@ done ok={ok} errors={} slowest_error={slowest:?}",
        errors.len()
    );
}

#[test]
fn replicas_on_three_namespace_hosts_survive_a_cut_link_and_a_sigkill() {
    const TEST: &str = "replicas_on_three_namespace_hosts_survive_a_cut_link_and_a_sigkill";
    if std::env::var(ROLE).as_deref() == Ok("client") {
        let retries =
            std::env::var("SF_REPLICAS_RETRIES").map_or(2, |r| r.parse().expect("retries"));
        return client_part(
            &std::env::var("SF_REPLICAS_ENDPOINTS").expect("endpoints"),
            retries,
        );
    }
    let Some(hosts) = hosts_for_test(4) else {
        return;
    };
    let dir = Scratch::new("replicas-netns");
    let mut reps = Vec::new();
    for i in 0..3 {
        let file = dir.write(
            &format!("h{i}.json"),
            &format!(
                r#"{{"connections": {{"in": {{"reply": {{"replyer": "{}:7000"}}}}, "out": {{}}}}, "states": {{"in": {{}}, "out": {{}}}}}}"#,
                hosts.addr(i)
            ),
        );
        let ns = hosts.ns(&format!("h{i}"));
        reps.push(start_replica(&["ip", "netns", "exec", &ns], &file));
    }
    let endpoints: Vec<String> = reps.iter().map(|r| r.endpoint.clone()).collect();
    // Two clients on host 3 see the same faults: one with 2 retries, one with none.
    let exe = std::env::current_exe().expect("the test binary");
    let client = |retries: &str| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &hosts.ns("h3")])
            .arg(&exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env(ROLE, "client")
            .env("SF_REPLICAS_RETRIES", retries)
            .env("SF_REPLICAS_ENDPOINTS", endpoints.join(","));
        Proc::spawn(cmd)
    };
    let mut clients = [client("2"), client("0")];
    let wait = Duration::from_secs(30);
    let mut spread = String::new();
    for c in &mut clients {
        c.wait_for_stdout("@@ ready", wait);
        spread = c.wait_for_stdout("@@ spread", wait);
    }

    // Host 1's link cut under load: out within the heartbeat timeout, the others serve on.
    hosts.link(1, false);
    let cut = Instant::now();
    clients[0].wait_for_stdout("@@ out 1", wait);
    let detected = cut.elapsed();
    let bound = HEARTBEAT.timeout + HEARTBEAT.interval + Duration::from_millis(500);
    assert!(
        detected <= bound,
        "link cut seen after {detected:?}, bound {bound:?}"
    );
    let mut continued = String::new();
    for c in &mut clients {
        continued = c.wait_for_stdout("@@ continued 1", wait);
    }
    hosts.link(1, true);
    let healed = Instant::now();
    let mut back = String::new();
    for c in &mut clients {
        back = c.wait_for_stdout("@@ back 1", wait);
    }
    let back_after = healed.elapsed();

    // Replica 2 killed under load.
    kill(reps[2].proc.pid(), "KILL");
    let mut continued2 = String::new();
    for c in &mut clients {
        c.wait_for_stdout("@@ out 2", wait);
        continued2 = c.wait_for_stdout("@@ continued 2", wait);
    }
    let mut done = Vec::new();
    for c in &mut clients {
        done.push(c.wait_for_stdout("@@ done", wait));
        let status = c.finish(Duration::from_secs(10));
        assert!(
            status.success(),
            "a client part failed:\n{}",
            c.stderr_text()
        );
    }
    assert!(
        done[0].contains("errors=0 "),
        "retries on: nothing lost: {}",
        done[0]
    );
    println!(
        "namespace hosts: {spread}; host 1 cut: out after {detected:?}, then {continued}; \
         healed: {back} (all back within {back_after:?}); replica 2 SIGKILLed: {continued2}; \
         retries 2: {}; retries 0: {}",
        done[0], done[1]
    );
    drop(clients);
    drop(reps);
    drop(hosts);
}
