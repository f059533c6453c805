//! A framework replyer served through the Majordomo broker: the real `echo_replyer` process,
//! whose addresses entry names a broker (`{"broker": "127.0.0.1:PORT"}`), registers as MDP
//! worker `echo_replyer.reply`; a Python MDP client written from the spec
//! (`tests/python/mdp_peer.py`) calls it through the real `service-framework -s broker`.
//!
//! What is proven:
//! 1. the payloads are the framework's own envelopes: the reply echoes, keeps the workflow id
//!    and continues the caller's trace; a wrongly typed argument is answered with an
//!    `invalid_args` error reply, and the replyer goes on serving;
//! 2. the broker killed (SIGKILL) and restarted on the same port: the worker registers again
//!    by itself, and calls work again.
//!
//! Run with `SF_PYTHON=$(scripts/python-env) cargo test -p sf-tests --test mdp_replyer`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use sf_connections::wire::{self, Reply, Request, TraceParent, WorkflowId};
use sf_tests::PyProcess;
use support::{bin, brokered_echo_replyer, BrokerProc, Proc, TempDir};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);
const SERVICE: &str = "echo_replyer.reply";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

async fn client(broker: &str) -> PyProcess {
    let mut c = PyProcess::spawn("mdp_peer", &["client", broker]);
    c.ready().await;
    c
}

/// One framework request through the broker; the decoded framework reply.
async fn call(c: &mut PyProcess, args: Value, workflow: &str, trace: TraceParent) -> Reply<Value> {
    let envelope = wire::encode(&Request {
        args,
        workflow_id: WorkflowId::Str(workflow.to_owned()),
        traceparent: Some(trace),
    })
    .unwrap();
    c.send_line(
        &json!({"service": SERVICE, "body_hex": [hex(&envelope)], "timeout_ms": 3000}).to_string(),
    )
    .await;
    let r = c.expect_json(WAIT).await;
    let frames = r["final_hex"]
        .as_array()
        .unwrap_or_else(|| panic!("no FINAL: {r}"));
    assert_eq!(frames.len(), 1, "one reply frame: {r}");
    wire::decode(&unhex(frames[0].as_str().unwrap())).expect("a framework reply envelope")
}

/// Asks `mmi.service` until the replyer's service is there.
async fn until_registered(c: &mut PyProcess) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.send_line(
            &json!({"service": "mmi.service", "body": [SERVICE], "timeout_ms": 2000}).to_string(),
        )
        .await;
        let r = c.expect_json(WAIT).await;
        if r["final"] == json!(["200"]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{SERVICE} not registered within {WAIT:?}: {r}"
        );
    }
}

#[tokio::test]
async fn a_framework_replyer_serves_through_the_broker_and_survives_its_restart() {
    let broker = BrokerProc::start(&[]).await;
    let dir = TempDir::new("replyer");
    let replyer = brokered_echo_replyer(&dir, broker.port);
    replyer
        .log_line(|l| l.contains("registered with the broker"), WAIT)
        .await;
    let mut c = client(&broker.endpoint()).await;
    until_registered(&mut c).await;

    // 1. The framework's envelopes, unchanged: echo, workflow id, trace.
    let trace = TraceParent::new_root();
    let reply = call(&mut c, json!({"to_echo": "hi"}), "wf-broker-1", trace).await;
    assert_eq!(reply.error, None);
    assert_eq!(reply.return_args, Some(json!({"echoed": "hi"})));
    assert_eq!(reply.workflow_id, WorkflowId::Str("wf-broker-1".into()));
    let served = reply.traceparent.expect("the serving span comes back");
    assert_eq!(
        served.trace_id(),
        trace.trace_id(),
        "the caller's trace goes on"
    );
    assert_ne!(served.span_id(), trace.span_id());
    // Validation: a wrongly typed argument is an error reply, and serving goes on.
    let reply = call(
        &mut c,
        json!({"to_echo": 5}),
        "wf-broker-2",
        TraceParent::new_root(),
    )
    .await;
    let err = reply.error.expect("an error reply");
    assert_eq!(err.code, sf_connections::ErrorCode::InvalidArgs, "{err:?}");
    assert!(err.message.contains("to_echo"), "{err:?}");
    assert_eq!(reply.workflow_id, WorkflowId::Str("wf-broker-2".into()));
    let reply = call(
        &mut c,
        json!({"to_echo": "again"}),
        "wf-broker-3",
        TraceParent::new_root(),
    )
    .await;
    assert_eq!(reply.return_args, Some(json!({"echoed": "again"})));

    // 2. The broker killed and restarted on the same port: the worker registers again.
    let registrations = |p: &Proc| p.count_lines(|l| l.contains("registered with the broker"));
    assert_eq!(registrations(&replyer), 1);
    let broker = broker.restart().await;
    replyer
        .wait_count(|l| l.contains("registered with the broker"), 2, WAIT)
        .await;
    // A new client, as the spec recommends after a broker failure.
    let mut c = client(&broker.endpoint()).await;
    until_registered(&mut c).await;
    let reply = call(
        &mut c,
        json!({"to_echo": "after restart"}),
        "wf-broker-4",
        TraceParent::new_root(),
    )
    .await;
    assert_eq!(reply.return_args, Some(json!({"echoed": "after restart"})));
    assert!(
        broker.has_line(|l| l.contains("worker registered") && l.contains(SERVICE)),
        "{}",
        broker.dump()
    );
}

/// A framework requester calls the brokered replyer through the broker itself: the real
/// `echo_requester` (main mode) whose out entry is `{"broker": .., "service": ..}` sends its
/// requests as an MDP client and prints every reply; a wrong service name is answered by the
/// broker (no worker within its request timeout) as a framework `timeout` error, and the
/// requester exits non-zero within its own bound instead of hanging.
#[tokio::test]
async fn a_framework_requester_calls_a_brokered_replyer_through_the_broker() {
    let broker = BrokerProc::start(&["--request_timeout_s", "0.5"]).await;
    let dir = TempDir::new("requester");
    let replyer = brokered_echo_replyer(&dir, broker.port);
    replyer
        .log_line(|l| l.contains("registered with the broker"), WAIT)
        .await;
    let requester = |service: &str| {
        let path = dir.0.join(format!("requester_{service}.json"));
        let addresses = json!({
            "connections": {"out": {"request": {
                "broker": format!("127.0.0.1:{}", broker.port),
                "service": service,
            }}},
            "control": false,
        });
        std::fs::write(&path, addresses.to_string()).unwrap();
        let mut cmd = Command::new(bin("service-framework"));
        cmd.args(["-s", "echo_requester", "-m", "--num_req_to_send", "5", "-a"])
            .arg(&path);
        Proc::spawn("echo_requester", cmd)
    };
    let mut good = requester(SERVICE);
    let status = good.exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", good.dump());
    for i in 0..5 {
        let line = format!("Got Response: {{\"echoed\":\"Hello World {i}\"}}");
        assert!(good.has_line(|l| l == line), "no {line:?}\n{}", good.dump());
    }
    let mut wrong = requester("nobody.serves.this");
    let status = wrong.exit(WAIT).await;
    assert!(!status.success(), "{}", wrong.dump());
    assert!(
        wrong.has_line(|l| l.contains("timeout") && l.contains("broker")),
        "the broker's timeout is named\n{}",
        wrong.dump()
    );
}

/// Mistakes in the addresses or the broker's tuning stop the start with exit 2, named.
#[tokio::test]
async fn mistakes_are_named_at_start() {
    let dir = TempDir::new("mistakes");
    let write = |name: &str, v: Value| {
        let p = dir.0.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let both = write(
        "both.json",
        json!({"connections": {"in": {"reply": {"replyer": "127.0.0.1:0", "broker": "127.0.0.1:1"}}}, "control": false}),
    );
    let typo = write(
        "typo.json",
        json!({"connections": {"in": {"reply": {"broker": "127.0.0.1:1", "servce": "x"}}}, "control": false}),
    );
    let no_service = write(
        "no_service.json",
        json!({"connections": {"out": {"request": {"broker": "127.0.0.1:1"}}}, "control": false}),
    );
    let no_router = write(
        "no_router.json",
        json!({"connections": {"in": {"broker": {"routr": "127.0.0.1:0"}}}}),
    );
    let router = write(
        "router.json",
        json!({"connections": {"in": {"broker": {"router": "127.0.0.1:0"}}}}),
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "-s".into(),
                "echo_replyer".into(),
                "-a".into(),
                both.display().to_string(),
            ],
            "serve either directly or through the broker",
        ),
        (
            vec![
                "-s".into(),
                "echo_replyer".into(),
                "-a".into(),
                typo.display().to_string(),
            ],
            "\"servce\"",
        ),
        (
            vec![
                "-s".into(),
                "echo_requester".into(),
                "-m".into(),
                "--num_req_to_send".into(),
                "1".into(),
                "-a".into(),
                no_service.display().to_string(),
            ],
            "a requester calling through a broker needs \"service\"",
        ),
        (
            vec!["-s".into(), "broker".into()],
            "connections.in.broker.router",
        ),
        (
            vec![
                "-s".into(),
                "broker".into(),
                "-a".into(),
                no_router.display().to_string(),
            ],
            "{\"router\": \"host:port\"}",
        ),
        (
            vec![
                "-s".into(),
                "broker".into(),
                "-a".into(),
                router.display().to_string(),
                "--heartbeat_liveness".into(),
                "2.5".into(),
            ],
            "heartbeat_liveness must be a whole number",
        ),
    ];
    for (args, says) in cases {
        let mut cmd = Command::new(bin("service-framework"));
        cmd.args(&args);
        let mut p = Proc::spawn("service-framework", cmd);
        let status = p.exit(WAIT).await;
        assert_eq!(status.code(), Some(2), "{args:?}\n{}", p.dump());
        assert!(
            p.has_line(|l| l.contains(says)),
            "{args:?}: no {says:?}\n{}",
            p.dump()
        );
    }
}
