//! The pipeline example across hosts: the source and the sink on one host, workers on three
//! others (network namespaces made by the test, `support::netns`), all real processes run
//! with `ip netns exec`. Mid-stream one worker is SIGKILLed (it leaves holding items), a
//! new one joins on a host that had none, and another leaves gracefully (SIGTERM); the
//! source still ends with every item acknowledged and the sink holds exactly one result per
//! item, the right sum, nothing lost.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::netns::{hosts_for_test, Hosts};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const COUNT: u64 = 6_000;

const SOURCE: &str = env!("CARGO_BIN_EXE_pipeline_source");
const SQUARE: &str = env!("CARGO_BIN_EXE_pipeline_square");
const SINK: &str = env!("CARGO_BIN_EXE_pipeline_sink");

/// Ports on the source/sink host (each namespace has its own ports).
const ITEMS: u16 = 7101;
const SQUARES: u16 = 7102;
const RESULTS: u16 = 7103;
const STREAM: u16 = 7104;

/// `binary args...` inside namespace `ns`.
fn in_ns(ns: &str, binary: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, binary]).args(args);
    Proc::spawn(cmd)
}

/// The sink's running totals, asked from inside its host with `service-framework call`.
fn totals(hosts: &Hosts, host0: &str) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &hosts.ns("h0")])
        .arg(service_framework())
        .args([
            "call",
            &format!("{host0}:{RESULTS}"),
            "{}",
            "--timeout",
            "5",
        ])
        .output()
        .expect("service-framework call runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the totals as JSON")
}

/// Polls the totals until `cond` holds (bounded).
fn wait_totals(hosts: &Hosts, host0: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = totals(hosts, host0);
        if cond(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: never; last {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_on_other_hosts_join_and_leave_mid_stream_and_nothing_is_lost() {
    let Some(hosts) = hosts_for_test(4) else {
        return;
    };
    let host0 = hosts.addr(0);
    let scratch = Scratch::new("pipeline-hosts");
    let sink_addresses = scratch.write(
        "sink.json",
        &json!({"connections": {"in": {
            "squares": {"puller": format!("{host0}:{SQUARES}")},
            "results": {"replyer": format!("{host0}:{RESULTS}")},
        }}})
        .to_string(),
    );
    let source_addresses = scratch.write(
        "source.json",
        &json!({"connections": {"out": {
            "items": {"pusher": format!("{host0}:{ITEMS}")},
            "stream": {"publisher": format!("{host0}:{STREAM}")},
        }}})
        .to_string(),
    );
    let worker_addresses = scratch.write(
        "square.json",
        &json!({"connections": {
            "in": {"items": {"puller": format!("{host0}:{ITEMS}")}},
            "out": {"squares": {"pusher": format!("{host0}:{SQUARES}")}},
        }})
        .to_string(),
    );
    let source_config = scratch.write(
        "source_config.json",
        &json!({"count": COUNT, "in_flight": 128}).to_string(),
    );
    let worker_config = scratch.write("square_config.json", &json!({"work_ms": 20}).to_string());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    let mut sink = in_ns(
        &hosts.ns("h0"),
        SINK,
        &["-a", &path(&sink_addresses), "-cl", "INFO"],
    );
    sink.wait_serving(WAIT);
    let worker = |host: usize| {
        let mut w = in_ns(
            &hosts.ns(&format!("h{host}")),
            SQUARE,
            &[
                "-a",
                &path(&worker_addresses),
                "-c",
                &path(&worker_config),
                "-cl",
                "INFO",
            ],
        );
        w.wait_for_stderr("ready", WAIT);
        w
    };
    let w1 = worker(1);
    let mut w2 = worker(2);
    let mut source = in_ns(
        &hosts.ns("h0"),
        SOURCE,
        &[
            "-a",
            &path(&source_addresses),
            "-c",
            &path(&source_config),
            "-m",
            "-cl",
            "INFO",
        ],
    );

    // Mid-stream: one worker dies holding items; a new one joins on a fresh host.
    let at_kill = wait_totals(&hosts, &host0, "a first share of results", |t| {
        t["count"].as_u64().unwrap_or(0) >= 600
    });
    assert!(at_kill["count"].as_u64().unwrap() < COUNT, "{at_kill}");
    w1.signal("KILL");
    let mut w3 = worker(3);
    // Later, another one leaves gracefully: it drains what it holds first.
    wait_totals(&hosts, &host0, "more results after the kill", |t| {
        t["count"].as_u64().unwrap_or(0) >= at_kill["count"].as_u64().unwrap() + 1_500
    });
    w2.signal("TERM");
    assert!(w2.finish(WAIT).success(), "{}", w2.stderr_text());

    let done = source.wait_for_stdout("every one acknowledged", WAIT);
    assert!(done.contains(&format!("Sent {COUNT} items")), "{done}");
    assert!(source.finish(WAIT).success(), "{}", source.stderr_text());
    let t = totals(&hosts, &host0);
    let expected: i64 = (0..COUNT as i64).map(|i| i * i).sum();
    assert_eq!(t["count"], COUNT, "one result per item: {t}");
    assert_eq!(t["sum"], expected, "{t}");
    assert_eq!(t["max_id"], COUNT - 1, "{t}");
    eprintln!(
        "pipeline across hosts: {COUNT} items, {} delivered again after the kill (deduplicated)",
        t["duplicates"]
    );
    w3.signal("TERM");
    assert!(w3.finish(WAIT).success(), "{}", w3.stderr_text());
    sink.signal("TERM");
    assert!(sink.finish(WAIT).success(), "{}", sink.stderr_text());
}
