//! A Python `service_framework` 0.0.18 requester (a plain REQ, no MDP) calls a framework
//! replyer served through the Majordomo broker, at a broker front-end bound for that one
//! service (issue 17 item 3): the real `service-framework -s broker` with
//! `connections.in.echo_replyer.reply = {"replyer": "127.0.0.1:PORT"}`, the real
//! `echo_replyer` registered with it as an MDP worker, and `tests/python/py_requester.py`.
//!
//! What is proven:
//! 1. through the front-end the requester gets what a direct replyer gives it: echoes, every
//!    workflow id form back, `invalid_args` and `malformed` error replies, and serving goes on;
//! 2. a front-end whose service has no worker answers every request with a framework
//!    `timeout` error reply (its workflow id kept) within the broker's request timeout, not a
//!    hang.
//!
//! Run with `SF_PYTHON=$(scripts/python-env) cargo test -p sf-tests --test mdp_frontend`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sf_tests::PyProcess;
use support::{bin, brokered_echo_replyer, BrokerProc, Proc, TempDir};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);
const SERVICE: &str = "echo_replyer.reply";
const NOBODY: &str = "nobody.reply";
const FIXED_UUID: &str = "0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c";
/// The broker's request timeout in this test: a request no worker takes is answered then.
const REQUEST_TIMEOUT_S: f64 = 0.5;

/// Runs py_requester's seven requests against `addr`; its replies by scenario name.
async fn python_scenario(addr: &str, tag: &str) -> BTreeMap<String, Value> {
    let mut p = PyProcess::spawn("py_requester", &[addr, tag]);
    p.ready().await;
    let mut replies = BTreeMap::new();
    for _ in 0..7 {
        let line = p.expect_json(WAIT).await;
        assert_eq!(line["event"], "reply", "python requester at {addr}: {line}");
        replies.insert(
            line["name"].as_str().unwrap().to_owned(),
            line["reply"].clone(),
        );
    }
    p.wait_success(WAIT).await;
    replies
}

fn error_of<'a>(replies: &'a BTreeMap<String, Value>, name: &str, workflow_id: Value) -> &'a Value {
    let r = &replies[name];
    assert_eq!(r["return_args"], Value::Null, "{name}: {r}");
    assert_eq!(r["workflow_id"], workflow_id, "{name}: {r}");
    &r["error"]
}

#[tokio::test]
async fn a_python_requester_calls_a_brokered_replyer_through_a_frontend() {
    let broker = BrokerProc::start_with_frontends(
        &[SERVICE, NOBODY],
        &["--request_timeout_s", &REQUEST_TIMEOUT_S.to_string()],
    )
    .await;
    let front = |service: &str| {
        let (_, port) = broker
            .frontends
            .iter()
            .find(|(s, _)| s == service)
            .expect("a front-end");
        format!("127.0.0.1:{port}")
    };
    let dir = TempDir::new("frontend");
    let _replyer = brokered_echo_replyer(&dir, broker.port);
    broker
        .log_line(
            |l| l.contains("worker registered") && l.contains(SERVICE),
            WAIT,
        )
        .await;

    // 1. As from a direct replyer (compare tests/tests/python_interop.rs).
    let replies = python_scenario(&front(SERVICE), "one").await;
    assert_eq!(
        replies["uuid_id"],
        json!({"return_args": {"echoed": "one hello"}, "workflow_id": {"$uuid": FIXED_UUID}})
    );
    assert_eq!(
        replies["str_id"],
        json!({"return_args": {"echoed": "one world"}, "workflow_id": "abc_1"})
    );
    assert_eq!(
        replies["still_serving"],
        json!({"return_args": {"echoed": "one again"}, "workflow_id": null})
    );
    let e = error_of(&replies, "wrong_type", json!("bad_type"));
    assert_eq!(e["code"], "invalid_args", "{e}");
    let e = error_of(&replies, "missing_arg", json!("missing"));
    assert_eq!(e["code"], "invalid_args", "{e}");
    assert!(e["message"].as_str().unwrap().contains("to_echo"), "{e}");
    assert_eq!(
        error_of(&replies, "no_args_key", json!("no_args"))["code"],
        "malformed"
    );
    assert_eq!(
        error_of(&replies, "not_msgpack", Value::Null)["code"],
        "malformed"
    );

    // 2. No worker: each request is answered with a timeout error within the broker's
    // request timeout (plus a tick), never left hanging.
    let started = Instant::now();
    let replies = python_scenario(&front(NOBODY), "two").await;
    let took = started.elapsed();
    for (name, wf) in [
        ("uuid_id", json!({"$uuid": FIXED_UUID})),
        ("str_id", json!("abc_1")),
        ("wrong_type", json!("bad_type")),
        ("no_args_key", json!("no_args")),
        ("not_msgpack", Value::Null),
        ("still_serving", Value::Null),
    ] {
        let e = error_of(&replies, name, wf);
        assert_eq!(e["code"], "timeout", "{name}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(NOBODY),
            "{name}: {e}"
        );
    }
    // Seven requests, one after another, each answered at the request timeout.
    assert!(
        took < Duration::from_secs_f64(7.0 * REQUEST_TIMEOUT_S) + WAIT,
        "took {took:?}"
    );
    assert!(
        broker.has_line(|l| l.contains("front-end bound") && l.contains(NOBODY)),
        "{}",
        broker.dump()
    );
}

/// A front-end entry's mistakes stop the broker at start, named, with exit 2.
#[tokio::test]
async fn frontend_mistakes_are_named_at_start() {
    let dir = TempDir::new("frontend-mistakes");
    let cases = [
        (
            json!({"broker": {"router": "127.0.0.1:0"}, "x.reply": {"replyr": "127.0.0.1:0"}}),
            "a broker front-end takes",
        ),
        (
            json!({"broker": {"router": "127.0.0.1:0"}, "x.reply": {"service": "y"}}),
            "a broker front-end needs",
        ),
        (
            json!({"broker": {"router": "127.0.0.1:0"}, "mmi.service": {"replyer": "127.0.0.1:0"}}),
            "mmi.*",
        ),
    ];
    for (i, (inbound, says)) in cases.into_iter().enumerate() {
        let path = dir.0.join(format!("a{i}.json"));
        std::fs::write(&path, json!({"connections": {"in": inbound}}).to_string()).unwrap();
        let mut cmd = Command::new(bin("service-framework"));
        cmd.args(["-s", "broker", "-a"]).arg(&path);
        let mut p = Proc::spawn("broker", cmd);
        let status = p.exit(WAIT).await;
        assert_eq!(status.code(), Some(2), "{inbound}\n{}", p.dump());
        assert!(
            p.has_line(|l| l.contains(says)),
            "{inbound}: no {says:?}\n{}",
            p.dump()
        );
    }
}
