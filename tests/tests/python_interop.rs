//! Interoperability with the real Python `service_framework` 0.0.18 over real sockets.
//!
//! Each test runs Python peers from `tests/python/` (real 0.0.18 connection classes, so their
//! sockets and framing are exactly the package's) against the Rust connections:
//! - Python REQ -> Rust `Replyer`, including bad requests that get error replies;
//! - Rust `Requester` (DEALER, `[id, "", body]`) -> Python REP;
//! - Python PUB (several topics, and none) -> Rust `Subscriber`s with exact topics;
//! - Rust `Publisher` -> Python SUB (the extra `seq`/`pub_id` keys must not bother it);
//! - both directions through the Rust `BusProxy` with `is_x_pub` publishers.
//!
//! No test sleeps to let things settle: publishers repeat until the far side has seen what it
//! needs (the slow-joiner problem), and every wait has a timeout.
//! Run with `SF_PYTHON=$(scripts/python-env) cargo test -p sf-tests` (or `scripts/test`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sf_connections::wire::{Decimal, NdArray, PySet, PyUuid};
use sf_connections::{
    typed, Address, BusProxy, Counter, Publisher, PublisherOptions, Replyer, ReplyerOptions,
    Requester, RequesterOptions, Subscriber, SubscriberOptions, WorkflowId,
};
use sf_tests::{host_port, PyProcess, TaskGuard};

/// Bound on any single wait for a line or a message.
const STEP: Duration = Duration::from_secs(5);
const FIXED_UUID: &str = "0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echo {
    to_echo: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echoed {
    echoed: String,
}

/// Every extension type 0.0.18 knows, plus bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AllTypes {
    echo_all: bool,
    price: Decimal,
    tags: PySet<i64>,
    id: PyUuid,
    samples: NdArray,
    #[serde(with = "serde_bytes")]
    raw: Vec<u8>,
}

/// What the Python publisher peer sends as args.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct PyPublished {
    n: u64,
    topic: String,
    price: Decimal,
}

/// What the Rust publishers send as args in these tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct RustPublished {
    n: u64,
    topic: String,
    price: Decimal,
    tags: PySet<i64>,
    id: PyUuid,
    samples: NdArray,
}

fn fixed_uuid() -> uuid::Uuid {
    uuid::Uuid::parse_str(FIXED_UUID).unwrap()
}

fn rust_published(n: u64, topic: &str) -> RustPublished {
    RustPublished {
        n,
        topic: topic.to_owned(),
        price: Decimal::new("1.50").unwrap(),
        tags: PySet(vec![1, 2]),
        id: PyUuid(fixed_uuid()),
        samples: NdArray(vec![1.0, 2.5]),
    }
}

/// The JSON the Python subscriber peer prints for `rust_published(n, topic)`.
fn rust_published_as_python_sees_it(n: u64, topic: &str) -> Value {
    json!({
        "n": n,
        "topic": topic,
        "price": {"$decimal": "1.50"},
        "tags": {"$set": [1, 2]},
        "id": {"$uuid": FIXED_UUID},
        "samples": {"$ndarray": [1.0, 2.5], "dtype": "float64"},
    })
}

async fn echo_replyer() -> Replyer {
    let handler = typed(|args: Echo, _meta| async move {
        Ok(Echoed {
            echoed: args.to_echo,
        })
    });
    Replyer::bind(
        &Address::from("127.0.0.1:0"),
        handler,
        ReplyerOptions::default(),
    )
    .await
    .unwrap()
}

/// (a) Python 0.0.18 requesters -> Rust replyer: echoes, every workflow id form echoed back,
/// bad requests answered with an `error` the Python side can read, and the replyer keeps
/// serving afterwards. Two Python requesters at once (the ROUTER serves both).
#[tokio::test]
async fn python_requesters_to_rust_replyer() {
    let replyer = echo_replyer().await;
    let addr = host_port(replyer.endpoint());
    let tags = ["one", "two"];
    let mut peers: Vec<PyProcess> = tags
        .iter()
        .map(|t| PyProcess::spawn("py_requester", &[addr.as_str(), t]))
        .collect();
    for p in &mut peers {
        p.ready().await;
    }
    for (p, tag) in peers.iter_mut().zip(tags) {
        let mut replies = std::collections::BTreeMap::new();
        for _ in 0..7 {
            let line = p.expect_json(STEP).await;
            assert_eq!(line["event"], "reply", "python requester {tag}: {line}");
            replies.insert(
                line["name"].as_str().unwrap().to_owned(),
                line["reply"].clone(),
            );
        }
        p.wait_success(STEP).await;

        assert_eq!(
            replies["uuid_id"],
            json!({"return_args": {"echoed": format!("{tag} hello")}, "workflow_id": {"$uuid": FIXED_UUID}}),
            "a UUID workflow id comes back as the UUID Python sent"
        );
        assert_eq!(
            replies["str_id"],
            json!({"return_args": {"echoed": format!("{tag} world")}, "workflow_id": "abc_1"})
        );
        assert_eq!(
            replies["still_serving"],
            json!({"return_args": {"echoed": format!("{tag} again")}, "workflow_id": null}),
            "the replyer keeps serving after bad requests"
        );
        let error = |name: &str, code: &str, workflow_id: Value| {
            let r = &replies[name];
            assert_eq!(r["return_args"], Value::Null, "{name}: {r}");
            assert_eq!(r["workflow_id"], workflow_id, "{name}: {r}");
            assert_eq!(r["error"]["code"], code, "{name}: {r}");
            r["error"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: error without message: {r}"))
                .to_owned()
        };
        let msg = error("wrong_type", "invalid_args", json!("bad_type"));
        assert!(msg.contains("invalid"), "{msg}");
        let msg = error("missing_arg", "invalid_args", json!("missing"));
        assert!(
            msg.contains("to_echo"),
            "the error names the missing field: {msg}"
        );
        error("no_args_key", "malformed", json!("no_args"));
        error("not_msgpack", "malformed", Value::Null);
    }
    let stats = replyer.stats();
    assert_eq!(stats.get(Counter::Received), 14);
    assert_eq!(stats.get(Counter::Replied), 6);
    assert_eq!(stats.get(Counter::InvalidArgs), 4);
    assert_eq!(stats.get(Counter::Malformed), 4);
    replyer.shutdown().await;
}

/// (b) Rust requester (DEALER sending `[id, "", body]`) -> Python 0.0.18 REP: the REP echoes
/// the id envelope, Python decodes every workflow id form and every extension type Rust
/// sends, its re-encoding decodes back into the same Rust values, a nil `return_args` is a
/// valid answer, and concurrent requests are matched to their replies by id.
#[tokio::test]
async fn rust_requester_to_python_replyer() {
    const REQUESTS: usize = 9;
    let (mut py, addr) = PyProcess::spawn_bound("py_replyer", |addr| {
        vec![addr.into(), REQUESTS.to_string(), "5000".into()]
    })
    .await;
    let options = RequesterOptions {
        timeout: STEP,
        ..Default::default()
    };
    let req = Requester::connect(&Address::from(addr.as_str()), options).unwrap();

    let hello = Echo {
        to_echo: "hello".into(),
    };
    let got: Echoed = req
        .request(&hello, WorkflowId::Uuid(fixed_uuid()))
        .await
        .unwrap();
    assert_eq!(
        got,
        Echoed {
            echoed: "hello".into()
        }
    );
    let got: Echoed = req
        .request(
            &Echo {
                to_echo: "world".into(),
            },
            WorkflowId::Str("abc_1".into()),
        )
        .await
        .unwrap();
    assert_eq!(got.echoed, "world");
    let none: Option<Echoed> = req
        .request(
            &Echo {
                to_echo: "none".into(),
            },
            WorkflowId::None,
        )
        .await
        .unwrap();
    assert_eq!(none, None, "Python's None return is a nil return_args");

    let all = AllTypes {
        echo_all: true,
        price: Decimal::new("1.50").unwrap(),
        tags: PySet(vec![1, 2, 3]),
        id: PyUuid(fixed_uuid()),
        samples: NdArray(vec![1.0, 2.5, -0.125]),
        raw: vec![0, 1, 255],
    };
    let back: AllTypes = req.request(&all, WorkflowId::new_random()).await.unwrap();
    assert_eq!(
        back, all,
        "Python decodes and re-encodes every extension type identically"
    );

    let concurrent = (0..5).map(|i| {
        let req = req.clone();
        async move {
            let r: Echoed = req
                .request(
                    &Echo {
                        to_echo: format!("c{i}"),
                    },
                    WorkflowId::None,
                )
                .await
                .unwrap();
            (i, r.echoed)
        }
    });
    for (i, echoed) in futures::future::join_all(concurrent).await {
        assert_eq!(echoed, format!("c{i}"), "reply matched to its own request");
    }

    // What Python decoded, request by request.
    let mut seen = Vec::new();
    for _ in 0..REQUESTS {
        let line = py.expect_json(STEP).await;
        assert_eq!(line["event"], "request", "{line}");
        seen.push(line["payload"].clone());
    }
    py.wait_success(STEP).await;
    assert_eq!(
        seen[0],
        json!({"args": {"to_echo": "hello"}, "workflow_id": {"$uuid": FIXED_UUID}})
    );
    assert_eq!(
        seen[1],
        json!({"args": {"to_echo": "world"}, "workflow_id": "abc_1"})
    );
    assert_eq!(
        seen[2],
        json!({"args": {"to_echo": "none"}, "workflow_id": null})
    );
    assert_eq!(
        seen[3]["args"],
        json!({
            "echo_all": true,
            "price": {"$decimal": "1.50"},
            "tags": {"$set": [1, 2, 3]},
            "id": {"$uuid": FIXED_UUID},
            "samples": {"$ndarray": [1.0, 2.5, -0.125], "dtype": "float64"},
            "raw": {"$bytes": "0001ff"},
        })
    );
    assert!(
        seen[3]["workflow_id"]["$uuid"].is_string(),
        "a random id arrives as a Python UUID: {}",
        seen[3]
    );
    let mut echoed: Vec<&str> = seen[4..]
        .iter()
        .map(|p| p["args"]["to_echo"].as_str().unwrap())
        .collect();
    echoed.sort_unstable();
    assert_eq!(echoed, ["c0", "c1", "c2", "c3", "c4"]);
    assert_eq!(req.stats().get(Counter::LateReplies), 0);
}

/// Receives until `n` messages arrived, checking each one with `check`.
async fn take(
    sub: &mut Subscriber,
    n: usize,
    what: &str,
) -> Vec<(Option<String>, WorkflowId, PyPublished)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = sub
            .next_timeout(STEP)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e} after {} messages", out.len()));
        let env = d
            .decode::<PyPublished>()
            .unwrap_or_else(|e| panic!("{what}: cannot decode: {e}"));
        assert_eq!(env.workflow_id, d.workflow_id);
        out.push((d.topic, d.workflow_id, env.args));
    }
    out
}

fn assert_increasing(ns: impl IntoIterator<Item = u64>, what: &str) {
    let ns: Vec<u64> = ns.into_iter().collect();
    assert!(
        ns.windows(2).all(|w| w[0] < w[1]),
        "{what}: rounds out of order: {ns:?}"
    );
}

/// (c) Python 0.0.18 publishers on topics `TOP`, `TOPIC` and none, all on one PUB socket ->
/// Rust subscribers: `TOP` gets exactly the `TOP` messages (never `TOPIC`, whose name it
/// prefixes), `TOPIC` exactly its own, and a topic-less subscriber gets all three kinds with
/// the topic recovered from the frame.
#[tokio::test]
async fn python_publisher_to_rust_subscribers() {
    let (mut py, addr) = PyProcess::spawn_bound("py_publisher", |addr| {
        [addr, "--topic", "TOP", "--topic", "TOPIC", "--topic", ""]
            .map(String::from)
            .to_vec()
    })
    .await;
    let sub = |topic: &str| SubscriberOptions {
        topic: topic.into(),
        ..Default::default()
    };
    let address = Address::from(addr.as_str());
    let mut top = Subscriber::start(&address, sub("TOP")).await.unwrap();
    let mut topic = Subscriber::start(&address, sub("TOPIC")).await.unwrap();
    let mut all = Subscriber::start(&address, sub("")).await.unwrap();

    let got = take(&mut top, 5, "TOP subscriber").await;
    for (t, id, args) in &got {
        assert_eq!(t.as_deref(), Some("TOP"));
        assert_eq!(
            args.topic, "TOP",
            "a TOP subscriber got another topic's message"
        );
        assert_eq!(args.price.as_str(), "1.50");
        assert!(
            matches!(id, WorkflowId::Uuid(_)),
            "Python's uuid4 workflow id: {id:?}"
        );
    }
    assert_increasing(got.iter().map(|g| g.2.n), "TOP");
    let got = take(&mut topic, 5, "TOPIC subscriber").await;
    assert!(
        got.iter()
            .all(|(t, _, a)| t.as_deref() == Some("TOPIC") && a.topic == "TOPIC"),
        "{got:?}"
    );
    assert_increasing(got.iter().map(|g| g.2.n), "TOPIC");

    // The catch-all subscriber sees every kind, each with its own topic (or none).
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (t, _, args) = take(&mut all, 1, "catch-all subscriber").await.remove(0);
        assert_eq!(
            t.as_deref().unwrap_or(""),
            args.topic,
            "topic recovered from the frame"
        );
        kinds.insert(args.topic);
        if kinds.len() == 3 {
            break;
        }
    }
    assert_eq!(kinds.len(), 3, "catch-all saw only {kinds:?}");

    py.send_line("stop").await;
    let done = py.expect_json(STEP).await;
    assert_eq!(done["event"], "done", "{done}");
    py.wait_success(STEP).await;
    for (s, name) in [(&top, "TOP"), (&topic, "TOPIC"), (&all, "all")] {
        assert_eq!(
            s.stats().get(Counter::Malformed),
            0,
            "{name} subscriber found malformed frames"
        );
    }
}

/// Reads the Python subscriber's `count` messages and checks what Python decoded.
async fn python_saw(py: &mut PyProcess, count: usize, topic: &str) {
    let mut last: Option<(u64, u64)> = None;
    for _ in 0..count {
        let line = py.expect_json(STEP).await;
        assert_eq!(
            line["event"], "message",
            "python subscriber ({topic:?}): {line}"
        );
        let payload = &line["payload"];
        let n = payload["args"]["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("no args.n in {payload}"));
        assert_eq!(
            payload["args"],
            rust_published_as_python_sees_it(n, topic),
            "Python decoded other args"
        );
        assert_eq!(payload["workflow_id"], json!({"$uuid": FIXED_UUID}));
        // The framework's extra keys arrive as plain values Python carries along unused.
        assert_eq!(
            line["keys"],
            json!(["args", "pub_id", "seq", "workflow_id"])
        );
        let seq = payload["seq"].as_u64().expect("seq is an unsigned integer");
        assert!(
            payload["pub_id"].is_u64(),
            "pub_id is an unsigned integer: {payload}"
        );
        if let Some((last_n, last_seq)) = last {
            assert_eq!(
                (n, seq),
                (last_n + 1, last_seq + 1),
                "messages lost or reordered"
            );
        }
        last = Some((n, seq));
    }
    py.wait_success(STEP).await;
}

/// Publishes `rust_published(n, topic)` on every publisher every 20 ms until dropped.
fn keep_publishing(publishers: Vec<Publisher>) -> TaskGuard {
    TaskGuard::repeat(Duration::from_millis(20), move |n| {
        let publishers = publishers.clone();
        async move {
            for p in &publishers {
                p.publish(
                    &rust_published(n, p.topic()),
                    &WorkflowId::Uuid(fixed_uuid()),
                )
                .await
                .unwrap();
            }
        }
    })
}

/// (d) Rust publishers -> Python 0.0.18 subscribers: a Python `TOP` subscriber connected to
/// both a `TOP` and a `TOPIC` publisher gets only `TOP`, a topic-less one reads a topic-less
/// publisher, and Python decodes Decimal, set, UUID and ndarray args, ignoring `seq`/`pub_id`.
#[tokio::test]
async fn rust_publishers_to_python_subscribers() {
    let start = |topic: &str| {
        let options = PublisherOptions {
            topic: topic.into(),
            ..Default::default()
        };
        async move {
            Publisher::start(&Address::from("127.0.0.1:0"), options)
                .await
                .unwrap()
        }
    };
    let (top, topic, none) = (start("TOP").await, start("TOPIC").await, start("").await);
    let count = "5";
    let mut py_top = PyProcess::spawn(
        "py_subscriber",
        &[
            &host_port(top.endpoint()),
            "TOP",
            count,
            "5000",
            &host_port(topic.endpoint()),
        ],
    );
    let mut py_all = PyProcess::spawn(
        "py_subscriber",
        &[&host_port(none.endpoint()), "", count, "5000"],
    );
    py_top.ready().await;
    py_all.ready().await;
    let _publishing = keep_publishing(vec![top, topic, none]);
    python_saw(&mut py_top, 5, "TOP").await;
    python_saw(&mut py_all, 5, "").await;
}

/// (e1) Python 0.0.18 publishers with `is_x_pub=True` (topics `TOP` and `TOPIC`, each its own
/// connection) -> the Rust bus proxy's XSUB side -> a Rust `TOP` subscriber on its XPUB side.
#[tokio::test]
async fn python_x_publishers_through_rust_bus_proxy() {
    let proxy = BusProxy::bind(&Address::from("127.0.0.1:0"), &Address::from("127.0.0.1:0"))
        .await
        .unwrap();
    let options = SubscriberOptions {
        topic: "TOP".into(),
        ..Default::default()
    };
    let mut sub = Subscriber::start(&Address::from(proxy.subscribers_endpoint()), options)
        .await
        .unwrap();
    let mut py = PyProcess::spawn(
        "py_publisher",
        &[
            &host_port(proxy.publishers_endpoint()),
            "--x-pub",
            "--topic",
            "TOP",
            "--topic",
            "TOPIC",
        ],
    );
    py.ready().await;
    let got = take(&mut sub, 5, "TOP subscriber behind the proxy").await;
    assert!(
        got.iter()
            .all(|(t, _, a)| t.as_deref() == Some("TOP") && a.topic == "TOP"),
        "{got:?}"
    );
    assert_increasing(got.iter().map(|g| g.2.n), "TOP via proxy");
    py.close_stdin();
    let done = py.expect_json(STEP).await;
    assert_eq!(done["event"], "done", "{done}");
    py.wait_success(STEP).await;
    assert!(proxy.stats().get(Counter::Received) >= 5);
    proxy.shutdown().await;
}

/// (e2) Rust publishers with `is_x_pub` (topics `TOP` and `TOPIC`) -> the Rust bus proxy ->
/// a Python 0.0.18 `TOP` subscriber on its XPUB side: its subscription travels up through the
/// proxy and it gets exactly the `TOP` messages.
#[tokio::test]
async fn rust_x_publishers_through_rust_bus_proxy_to_python() {
    let proxy = BusProxy::bind(&Address::from("127.0.0.1:0"), &Address::from("127.0.0.1:0"))
        .await
        .unwrap();
    let bus = Address::from(proxy.publishers_endpoint());
    let start = |topic: &str| {
        let options = PublisherOptions {
            topic: topic.into(),
            is_x_pub: true,
            ..Default::default()
        };
        let bus = bus.clone();
        async move { Publisher::start(&bus, options).await.unwrap() }
    };
    let (top, topic) = (start("TOP").await, start("TOPIC").await);
    let mut py = PyProcess::spawn(
        "py_subscriber",
        &[&host_port(proxy.subscribers_endpoint()), "TOP", "5", "5000"],
    );
    py.ready().await;
    let publishing = keep_publishing(vec![top, topic]);
    python_saw(&mut py, 5, "TOP").await;
    drop(publishing);
    proxy.shutdown().await;
}
