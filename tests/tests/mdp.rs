//! MDP 0.2 conformance of the built-in broker (`service-framework -s broker`), as a real
//! process, against an MDP client and worker written in Python from the spec alone
//! (`tests/python/mdp_peer.py`, plain pyzmq: they share no code with the broker).
//!
//! What is proven:
//! 1. request/reply through the broker, with PARTIAL replies before the FINAL; malformed
//!    messages are dropped and the broker goes on serving;
//! 2. heartbeats both ways: the broker heartbeats its worker, and keeps a worker that
//!    heartbeats registered well past the expiry time;
//! 3. worker expiry: a worker that hangs on a request (stops heartbeating) is dropped and its
//!    request goes to the next worker;
//! 4. LRU: requests spread over two idle workers in turn;
//! 5. `mmi.service` answers 200 and 404, other `mmi.` services 501; a worker's DISCONNECT
//!    takes it off (404 afterwards);
//! 6. a worker the broker does not know (as after a broker restart) is told DISCONNECT, and
//!    registers again on a new socket;
//! 7. the queue is bounded: past `max_queued_per_service` a request is refused with `503`,
//!    the queued ones are served once a worker comes.
//!
//! The broker runs with a 200 ms heartbeat and a liveness of 4 (800 ms expiry). Every wait is
//! for a line from a process, bounded. Run with
//! `SF_PYTHON=$(scripts/python-env) cargo test -p sf-tests --test mdp`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use sf_tests::PyProcess;
use support::{BrokerProc, INTERVAL_MS, LIVENESS};

const WAIT: Duration = Duration::from_secs(5);

fn worker(broker: &str, service: &str, name: &str, extra: &[&str]) -> PyProcess {
    let mut args = vec![
        "worker".to_owned(),
        broker.to_owned(),
        service.to_owned(),
        name.to_owned(),
        INTERVAL_MS.to_string(),
        LIVENESS.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    PyProcess::spawn("mdp_peer", &args)
}

async fn client(broker: &str) -> PyProcess {
    let mut c = PyProcess::spawn("mdp_peer", &["client", broker]);
    c.ready().await;
    c
}

/// Sends one request and returns the client's answer line.
async fn call(c: &mut PyProcess, service: &str, body: &[&str], timeout_ms: u64) -> Value {
    c.send_line(&json!({"service": service, "body": body, "timeout_ms": timeout_ms}).to_string())
        .await;
    c.expect_json(Duration::from_millis(timeout_ms) + WAIT)
        .await
}

/// Waits for the worker event `event`, skipping others (heartbeats); returns it.
async fn event(w: &mut PyProcess, event: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "no {event:?} event within {WAIT:?}");
        let v = w.expect_json(left).await;
        if v["event"] == event {
            return v;
        }
    }
}

async fn mmi(c: &mut PyProcess, service: &str) -> String {
    let r = call(c, "mmi.service", &[service], 2000).await;
    r["final"][0].as_str().unwrap_or_default().to_owned()
}

/// Asks `mmi.service` until it answers `want` (the broker learns of a worker's arrival or
/// departure on another connection than the client's: no order between them).
async fn mmi_until(c: &mut PyProcess, service: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = mmi(c, service).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mmi.service {service}: {got}, not {want}, within {WAIT:?}"
        );
    }
}

#[tokio::test]
async fn request_and_partial_replies_through_the_broker_and_malformed_input_is_survived() {
    let broker = BrokerProc::start(&[]).await;
    let ep = broker.endpoint();
    let mut w = worker(&ep, "echo", "w1", &["--partials", "2"]);
    w.ready().await;
    let mut c = client(&ep).await;
    mmi_until(&mut c, "echo", "200").await;
    // Garbage of every kind first: dropped, logged, and the broker goes on.
    for raw in [
        vec!["00".to_owned()],
        vec![hex(b"MDPC02")],
        vec![hex(b"MDPC02"), "09".into(), hex(b"echo"), hex(b"x")],
        vec![hex(b"MDPC01"), "01".into(), hex(b"echo"), hex(b"x")],
        vec![
            hex(b"MDPW02"),
            "04".into(),
            hex(b"nobody"),
            "".into(),
            hex(b"x"),
        ],
    ] {
        c.send_line(&json!({ "raw": raw }).to_string()).await;
        assert_eq!(c.expect_json(WAIT).await, json!({"sent": true}));
    }
    // The last was a worker's FINAL from a peer that never said READY: DISCONNECT.
    c.send_line(&json!({"recv_ms": 5000}).to_string()).await;
    let r = c.expect_json(WAIT).await;
    assert_eq!(r["frames"], json!(["MDPW02", "\u{6}"]), "{r}");
    let r = call(&mut c, "echo", &["hello", "world"], 3000).await;
    assert_eq!(r["final"], json!(["w1:hello,world"]), "{r}");
    assert_eq!(
        r["partials"],
        json!([["partial:w1:0"], ["partial:w1:1"]]),
        "{r}"
    );
    assert_eq!(r["service"], "echo");
    let got = event(&mut w, "request").await;
    assert_eq!(got["body"], json!(["hello", "world"]));
    broker.log_line(|l| l.contains("malformed"), WAIT).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn heartbeats_flow_both_ways_and_keep_a_live_worker_registered() {
    let broker = BrokerProc::start(&[]).await;
    let ep = broker.endpoint();
    let mut w = worker(&ep, "hb", "w1", &[]);
    w.ready().await;
    // The broker heartbeats an idle worker every interval: eight of them span 1.6 s, well
    // past the 800 ms the broker allows a silent worker.
    for _ in 0..8 {
        event(&mut w, "heartbeat").await;
    }
    let mut c = client(&ep).await;
    assert_eq!(
        mmi(&mut c, "hb").await,
        "200",
        "the heartbeating worker is kept"
    );
    let r = call(&mut c, "hb", &["x"], 3000).await;
    assert_eq!(r["final"], json!(["w1:x"]));
    assert!(
        !broker.has_line(|l| l.contains("missed its heartbeats")),
        "no worker expired:\n{}",
        broker.dump()
    );
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_is_dropped_and_its_request_goes_to_the_next() {
    let broker = BrokerProc::start(&[]).await;
    let ep = broker.endpoint();
    let mut frozen = worker(&ep, "job", "frozen", &["--freeze"]);
    frozen.ready().await;
    let mut c = client(&ep).await;
    mmi_until(&mut c, "job", "200").await;
    c.send_line(&json!({"service": "job", "body": ["work"], "timeout_ms": 5000}).to_string())
        .await;
    // The frozen worker takes the request and then says nothing more.
    event(&mut frozen, "request").await;
    let mut next = worker(&ep, "job", "next", &[]);
    next.ready().await;
    let started = tokio::time::Instant::now();
    let r = c.expect_json(Duration::from_secs(10)).await;
    assert_eq!(r["final"], json!(["next:work"]), "{r}");
    event(&mut next, "request").await;
    broker
        .log_line(|l| l.contains("missed its heartbeats"), WAIT)
        .await;
    // Detected within the expiry (800 ms) plus a tick and the transport's margins.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn requests_go_to_the_least_recently_used_of_two_workers() {
    let broker = BrokerProc::start(&[]).await;
    let ep = broker.endpoint();
    let mut w1 = worker(&ep, "lru", "w1", &[]);
    w1.ready().await;
    let mut w2 = worker(&ep, "lru", "w2", &[]);
    w2.ready().await;
    // A broker heartbeat reaches only a registered worker: both are registered.
    event(&mut w1, "heartbeat").await;
    event(&mut w2, "heartbeat").await;
    let mut c = client(&ep).await;
    let mut served = Vec::new();
    for i in 0..6 {
        let r = call(&mut c, "lru", &[&i.to_string()], 3000).await;
        let who = r["final"][0]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        served.push(who);
    }
    let w1_count = served.iter().filter(|w| *w == "w1").count();
    assert_eq!(w1_count, 3, "{served:?}");
    assert!(
        served.windows(2).all(|p| p[0] != p[1]),
        "each request goes to the worker idle longest: {served:?}"
    );
}

#[tokio::test]
async fn mmi_service_and_disconnect() {
    let broker = BrokerProc::start(&[]).await;
    let ep = broker.endpoint();
    let mut w = worker(&ep, "svc", "w1", &[]);
    w.ready().await;
    let mut c = client(&ep).await;
    mmi_until(&mut c, "svc", "200").await;
    assert_eq!(mmi(&mut c, "nope").await, "404");
    let r = call(&mut c, "mmi.unknown", &["svc"], 2000).await;
    assert_eq!(r["final"], json!(["501"]), "{r}");
    assert_eq!(r["service"], "mmi.unknown");
    w.send_line("disconnect").await;
    event(&mut w, "bye").await;
    mmi_until(&mut c, "svc", "404").await;
}

#[tokio::test]
async fn an_unknown_worker_is_told_to_disconnect_and_registers_again() {
    let broker = BrokerProc::start(&[]).await;
    let ep = broker.endpoint();
    // Starts with a HEARTBEAT, as a worker does whose broker restarted.
    let mut w = worker(&ep, "again", "w1", &["--no-ready"]);
    w.ready().await;
    event(&mut w, "disconnect").await;
    event(&mut w, "registered").await;
    let mut c = client(&ep).await;
    let r = call(&mut c, "again", &["x"], 3000).await;
    assert_eq!(r["final"], json!(["w1:x"]), "{r}");
}

#[tokio::test]
async fn a_full_queue_refuses_with_503_and_keeps_the_rest() {
    let broker = BrokerProc::start(&["--max_queued_per_service", "2"]).await;
    let ep = broker.endpoint();
    let mut c = client(&ep).await;
    // Two requests sent raw (the client does not wait for them), then a third on the same
    // connection, so in that order: no worker yet, so two wait and the third is refused.
    for body in ["q1", "q2"] {
        let req = vec![
            hex(b"MDPC02"),
            "01".into(),
            hex(b"later"),
            hex(body.as_bytes()),
        ];
        c.send_line(&json!({ "raw": req }).to_string()).await;
        assert_eq!(c.expect_json(WAIT).await, json!({"sent": true}));
    }
    let r = call(&mut c, "later", &["over"], 3000).await;
    assert_eq!(r["final"][0], "503", "{r}");
    assert!(r["final"][1].as_str().unwrap().contains("limit"), "{r}");
    let mut w = worker(&ep, "later", "w1", &[]);
    w.ready().await;
    let mut got = Vec::new();
    for _ in 0..2 {
        c.send_line(&json!({"recv_ms": 5000}).to_string()).await;
        let r = c.expect_json(Duration::from_secs(10)).await;
        let frames = r["frames"].as_array().cloned().unwrap_or_default();
        assert_eq!(frames.len(), 4, "{r}");
        assert_eq!(frames[1], "\u{3}", "a FINAL: {r}");
        got.push(frames[3].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["w1:q1", "w1:q2"], "queued requests served in order");
}
