//! A Python 0.0.18 service given its routes by the bridge's config (issue 16 item 3): it has
//! no control endpoint, so `[bus.services.<name>] routes = [..]` names its `[bus.routes]`
//! entries, and the bridge's connection to its replyer is its liveness. The real service
//! (`tests/python/services/echo_replyer.py`, run by 0.0.18's own runner) is served while it
//! runs, leaves the routing (503 naming it) and the OpenAPI document when its process stops,
//! and is served again when a new process binds the same address. A Python publisher named
//! the same way (`[bus.streams]`) is an event stream while its process runs, likewise.
//! Needs the Python venv (SF_PYTHON, set by scripts/test; created by scripts/python-env).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sf_bridge::{Api, Plugin, PluginCtx, PluginMetadata};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The Python service's process and its stdout.
struct PyService {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl PyService {
    /// `python -m service_framework -s ./echo_replyer.py -a ADDRESSES`, up once it says READY.
    async fn start(addresses: &std::path::Path) -> PyService {
        let mut child = Command::new(sf_tests::python())
            .args([
                "-u",
                "-m",
                "service_framework",
                "-s",
                "./echo_replyer.py",
                "-a",
            ])
            .arg(addresses)
            .current_dir(sf_tests::workspace_root().join("tests/python/services"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the Python service starts");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = py_line(&mut out, |l| l == "READY").await;
        assert!(ready, "the Python service exited before READY");
        PyService { child, out }
    }

    /// The next `Got Request: <json>` line's JSON.
    async fn request_seen(&mut self) -> Value {
        let mut seen = Value::Null;
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(l) = self.out.next_line().await.unwrap() {
                if let Some(j) = l.strip_prefix("Got Request: ") {
                    seen = serde_json::from_str(j).unwrap();
                    return true;
                }
            }
            false
        })
        .await
        .expect("the Python service reports the request within 10 s");
        assert!(found, "the Python service exited");
        seen
    }

    /// Ends the process (as a crash or a `kill` would) and waits for it.
    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the Python service ends within 10 s")
            .unwrap();
    }
}

/// Reads lines until `pred` holds (`true`) or stdout closes (`false`), at most 20 s
/// (the interpreter imports numpy and pyzmq first).
async fn py_line(out: &mut Lines<BufReader<ChildStdout>>, pred: impl Fn(&str) -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = out.next_line().await.unwrap() {
            if pred(&l) {
                return true;
            }
        }
        false
    })
    .await
    .expect("the Python service says READY within 20 s")
}

fn in_document(doc: &Value) -> bool {
    doc["paths"].get("/api/v1/py/echo").is_some()
}

async fn document(url: &str) -> Value {
    let (st, doc) = get(&format!("{url}/api/v1/openapi.json")).await;
    assert_eq!(st, 200);
    doc
}

/// A compiled-in plugin calling the Python service's route.
fn relay() -> Plugin {
    Plugin::new(PluginMetadata::new("relay").required_remote_apis(["POST /api/v1/py/echo"])).api(
        Api::new("relay")
            .path("/relay")
            .handle(|p: Relay, ctx: PluginCtx| async move {
                ctx.call_plugin_api("POST /api/v1/py/echo", json!({"to_echo": p.text}))
                    .await
            }),
    )
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Relay {
    text: String,
}

/// `--load-plugins relay --load-plugins py_echo` (the latter resolves to the bus service).
fn settings_for(port: u16) -> sf_bridge::Settings {
    let mut s = settings(&[], &["relay", "py_echo"]);
    s.bus.routes.insert(
        "/py/echo".into(),
        serde_json::from_value(json!({
            "requester": format!("127.0.0.1:{port}"),
            "timeout_s": 5,
            "description": "Echoes to_echo",
            "args_schema": {"type": "object", "properties": {"to_echo": {"type": "string"}},
                            "required": ["to_echo"]},
            "return_schema": {"type": "object", "properties": {"echoed": {"type": "string"}}},
        }))
        .unwrap(),
    );
    s.bus.services.insert(
        "py_echo".into(),
        serde_json::from_value(json!({"routes": ["/py/echo"]})).unwrap(),
    );
    s
}

#[tokio::test]
async fn a_python_service_given_routes_by_config_comes_and_goes() {
    let port = sf_tests::free_port();
    let dir = scratch("py-service-routes");
    let addresses = dir.join("replyer_addresses.json");
    std::fs::write(
        &addresses,
        json!({"connections": {"in": {"reply": {"replyer": format!("127.0.0.1:{port}")}}, "out": {}},
               "states": {"in": {}, "out": {}}})
        .to_string(),
    )
    .unwrap();
    let mut py = PyService::start(&addresses).await;
    let b = start(settings_for(port), vec![relay()]).await;
    let u = b.url();
    let echo = format!("{u}/api/v1/py/echo");

    // Running: served from the first request, in the document under the service's tag.
    let (st, v) = post(&echo, &json!({"to_echo": "one"})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "one"})));
    assert_eq!(py.request_seen().await, json!({"to_echo": "one"}));
    let doc = document(&u).await;
    let op = &doc["paths"]["/api/v1/py/echo"]["post"];
    assert_eq!(op["tags"], json!(["py_echo"]), "{doc}");
    assert_eq!(op["summary"], json!("Echoes to_echo"));
    assert!(
        doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "py_echo"),
        "{doc}"
    );
    let (st, health) = get(&format!("{u}/health")).await;
    assert_eq!((st, &health), (200, &json!("ok")));
    // A compiled-in plugin calls it (required_remote_apis resolved to it).
    let (st, v) = get(&format!("{u}/api/v1/relay?text=via")).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "via"})));
    assert_eq!(py.request_seen().await, json!({"to_echo": "via"}));

    // Stopped: out of the document, 503 naming it, listed by /health.
    py.stop().await;
    wait_until(
        Duration::from_secs(10),
        "the route leaves the document",
        || {
            let u = u.clone();
            async move { !in_document(&document(&u).await) }
        },
    )
    .await;
    let (st, v) = post(&echo, &json!({"to_echo": "two"})).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("py_echo"),
        "names the service: {v}"
    );
    let (_, health) = get(&format!("{u}/health")).await;
    assert_eq!(
        health["missing_bus_services"][0]["name"], "py_echo",
        "{health}"
    );
    let (st, v) = get(&format!("{u}/api/v1/relay?text=x")).await;
    assert_eq!(st, 503, "the plugin's call fails as the route does: {v}");

    // Back (a new process on the same address): served and documented again.
    let mut py = PyService::start(&addresses).await;
    wait_until(Duration::from_secs(10), "the route is back", || {
        let u = u.clone();
        async move { in_document(&document(&u).await) }
    })
    .await;
    let (st, v) = post(&echo, &json!({"to_echo": "three"})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "three"})));
    assert_eq!(py.request_seen().await, json!({"to_echo": "three"}));
    let (_, health) = get(&format!("{u}/health")).await;
    assert_eq!(health, json!("ok"));
    b.stop().await;
    py.stop().await;
}

#[tokio::test]
async fn routes_of_a_service_are_checked_at_start() {
    let cases = [
        (
            json!({"routes": ["/nowhere"]}),
            "is not a [bus.routes] or [bus.streams] entry",
        ),
        (json!({}), "needs control"),
        (
            json!({"routes": ["/py/echo"], "control": "127.0.0.1:1"}),
            "not both",
        ),
        (
            json!({"routes": ["/py/echo"], "refresh_s": 1}),
            "refresh_s applies to a service read through its control endpoint",
        ),
    ];
    for (cfg, says) in cases {
        let mut s = settings_for(sf_tests::free_port());
        s.bus.services.insert(
            "py_echo".into(),
            serde_json::from_value(cfg.clone()).unwrap(),
        );
        let e = sf_bridge::Bridge::new(s)
            .plugins(vec![relay()])
            .build()
            .await
            .expect_err("refused at start");
        assert!(e.to_string().contains(says), "{cfg}: {e}");
    }
    // Two services naming one route.
    let mut s = settings_for(sf_tests::free_port());
    s.bus.services.insert(
        "other".into(),
        serde_json::from_value(json!({"routes": ["/api/v1/py/echo"]})).unwrap(),
    );
    let e = sf_bridge::Bridge::new(s)
        .plugins(vec![relay()])
        .build()
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("named by bus.services."), "{e}");
    // Not running at start: the bridge starts (the plugin requiring its route included),
    // and /health says it is missing.
    let b = start(settings_for(sf_tests::free_port()), vec![relay()]).await;
    let (_, health) = get(&format!("{}/health", b.url())).await;
    assert_eq!(
        health["missing_bus_services"][0]["name"], "py_echo",
        "{health}"
    );
    assert!(!in_document(&document(&b.url()).await));
    b.stop().await;
}

/// The first `n` events of the stream at `url` (a fresh client connection each time), or
/// the status it answered instead.
async fn stream_events(url: &str, n: usize) -> Result<Vec<(String, Value)>, (u16, Value)> {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return Err((status, r.json().await.unwrap_or(Value::Null)));
    }
    Ok(read_events(r, n).await.into_iter().take(n).collect())
}

/// The real 0.0.18 Publisher's arguments (`tests/python/py_publisher.py`): bound at `addr`,
/// publishing `ticks` every 10 ms for up to 20 s, until its stdin closes.
fn publisher_args(addr: &str) -> Vec<String> {
    [addr, "--topic", "ticks", "--max-s", "20"]
        .map(String::from)
        .to_vec()
}

#[tokio::test]
async fn a_python_publisher_given_a_stream_by_config_comes_and_goes() {
    let (mut publisher, addr) =
        sf_tests::PyProcess::spawn_bound("py_publisher", publisher_args).await;
    let mut s = settings(&[], &[]);
    s.bus.streams.insert(
        "/py/ticks".into(),
        serde_json::from_value(json!({"subscriber": addr, "topic": "ticks",
                                      "description": "Ticks of the Python publisher"}))
        .unwrap(),
    );
    s.bus.services.insert(
        "py_ticks".into(),
        serde_json::from_value(json!({"routes": ["/py/ticks"]})).unwrap(),
    );
    let b = start(s, vec![]).await;
    let u = b.url();
    let ticks = format!("{u}/api/v1/py/ticks");
    let documented = |doc: &Value| doc["paths"].get("/api/v1/py/ticks").is_some();

    // Running: its messages are events, and the stream is in the document under its tag.
    let evs = stream_events(&ticks, 3)
        .await
        .expect("served while it runs");
    for (kind, data) in &evs {
        assert_eq!(kind, "message_chunk");
        assert_eq!(data["topic"], "ticks", "{data}");
        assert!(data["n"].is_u64(), "{data}");
    }
    let doc = document(&u).await;
    assert!(documented(&doc), "{doc}");
    assert_eq!(
        doc["paths"]["/api/v1/py/ticks"]["get"]["tags"],
        json!(["py_ticks"]),
        "{doc}"
    );

    // Stopped: out of the document, 503 naming it, listed by /health.
    publisher.close_stdin();
    publisher.wait_success(Duration::from_secs(10)).await;
    wait_until(
        Duration::from_secs(10),
        "the stream leaves the document",
        || {
            let u = u.clone();
            async move { !documented(&document(&u).await) }
        },
    )
    .await;
    let (st, v) = stream_events(&ticks, 1).await.expect_err("not served");
    assert_eq!(st, 503, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("py_ticks"),
        "names the service: {v}"
    );
    let (_, health) = get(&format!("{u}/health")).await;
    assert_eq!(
        health["missing_bus_services"][0]["name"], "py_ticks",
        "{health}"
    );

    // Back (a new process on the same address): documented and streaming again.
    let mut publisher = sf_tests::PyProcess::spawn("py_publisher", &publisher_args(&addr));
    publisher.ready().await;
    wait_until(Duration::from_secs(10), "the stream is back", || {
        let u = u.clone();
        async move { documented(&document(&u).await) }
    })
    .await;
    let evs = stream_events(&ticks, 2).await.expect("served again");
    assert!(evs.iter().all(|(_, d)| d["topic"] == "ticks"), "{evs:?}");
    let (_, health) = get(&format!("{u}/health")).await;
    assert_eq!(health, json!("ok"));
    b.stop().await;
    publisher.close_stdin();
    publisher.wait_success(Duration::from_secs(10)).await;
}
