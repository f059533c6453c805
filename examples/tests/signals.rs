//! SIGTERM and SIGINT on real service processes: the user's signal handler runs, a request
//! in flight still gets its reply, and the process exits 0 within the drain deadline (the
//! original crashed with exit 1 in main mode).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// The drain deadline (5 s) plus the reply linger, with room for a slow machine.
const DRAIN_BOUND: Duration = Duration::from_secs(7);

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line containing {needle:?} in:\n{}", lines.join("\n")))
}

fn drains_on(signal: &str, handler_line: &str) {
    let dir = Scratch::new("drain");
    let addresses = dir.write("addresses.json", REPLYER_ADDRESSES);
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "slow_replyer", "-a"]).arg(&addresses);
    let mut replyer = Proc::spawn(cmd);
    let endpoint = replyer.wait_serving(START);

    // The slow request comes from another process, `service-framework call`.
    let mut call = Command::new(service_framework());
    call.args([
        "call",
        &endpoint,
        r#"{"to_echo": "in flight", "delay_ms": 1200}"#,
    ]);
    let mut call = Proc::spawn(call);
    replyer.wait_for_stderr("slow request received", START);

    let signalled = Instant::now();
    replyer.signal(signal);
    let status = replyer.finish(DRAIN_BOUND);
    assert_eq!(status.code(), Some(0), "{}", replyer.stderr_text());
    assert!(signalled.elapsed() < DRAIN_BOUND);

    let call_status = call.finish(SHORT);
    assert!(call_status.success(), "{}", call.stderr_text());
    assert_eq!(call.stdout_text(), r#"{"echoed":"in flight"}"#);

    // The user's handler ran first, then the in-flight request finished, then the stop.
    let log = &replyer.stderr;
    let received = position(log, "slow request received");
    let handler = position(log, handler_line);
    let answered = position(log, "slow request answered");
    let stopped = position(log, "stopped");
    assert!(
        received < handler && handler < answered && answered < stopped,
        "order: {}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains("ERROR")),
        "{}",
        log.join("\n")
    );
}

#[test]
fn sigterm_runs_the_handler_drains_the_in_flight_request_and_exits_0() {
    drains_on("TERM", "slow_replyer: sigterm_handler ran");
}

#[test]
fn sigint_runs_the_handler_drains_the_in_flight_request_and_exits_0() {
    drains_on("INT", "slow_replyer: sigint_handler ran");
}

#[test]
fn an_idle_replyer_stops_at_once_on_sigterm() {
    let dir = Scratch::new("idle");
    let addresses = dir.write("addresses.json", REPLYER_ADDRESSES);
    let mut cmd = Command::new(ECHO_REPLYER);
    cmd.arg("-a").arg(&addresses);
    let mut replyer = Proc::spawn(cmd);
    replyer.wait_serving(START);
    let t = Instant::now();
    replyer.signal("TERM");
    assert_eq!(replyer.finish(DRAIN_BOUND).code(), Some(0));
    // Well under the 5 s drain deadline: nothing was in flight.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        replyer.stderr_text().contains("reason=Sigterm"),
        "{}",
        replyer.stderr_text()
    );
}

#[test]
fn sigterm_in_main_mode_stops_main_and_exits_0() {
    let dir = Scratch::new("main-sigterm");
    let addresses = dir.write("replyer.json", REPLYER_ADDRESSES);
    let mut cmd = Command::new(ECHO_REPLYER);
    cmd.arg("-a").arg(&addresses);
    let mut replyer = Proc::spawn(cmd);
    let endpoint = replyer.wait_serving(START);

    let addresses = dir.write("requester.json", &requester_addresses(&endpoint));
    let mut cmd = Command::new(service_framework());
    cmd.args(["-s", "echo_requester", "-m", "-a"])
        .arg(&addresses)
        .args(["--num_req_to_send", "100000000"]);
    let mut requester = Proc::spawn(cmd);
    requester.wait_for_stdout("Got Response: ", START);
    requester.signal("TERM");
    let status = requester.finish(DRAIN_BOUND);
    assert_eq!(status.code(), Some(0), "{}", requester.stderr_text());
    let got = requester
        .stdout
        .iter()
        .filter(|l| l.starts_with("Got Response: "))
        .count();
    assert!((1..100_000_000).contains(&got), "{got}");
}
