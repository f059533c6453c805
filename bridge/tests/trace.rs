//! Trace ids end to end (issue 15 item 4): one W3C trace id followed from an HTTP request
//! through the bridge and two bus hops (bridge -> relay -> echo), seen on the log lines of both
//! services' handlers, by the relay's handler itself, and in the bridge's `traceparent`
//! response header; a request without one gets a fresh trace, a malformed one (from an HTTP
//! client or from a bus peer) is ignored and starts a fresh trace without failing anything.
//!
//! Every service runs in this process under one subscriber that writes the framework's own
//! line format into a buffer, so the lines read here are the lines a service prints.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use service_framework::connections::{wire, Address, Requester, RequesterOptions, TraceParent};
use service_framework::handle;
use service_framework::{AddressesFile, Ctx, Service, ServiceDef, ServiceError, ServiceHandle};
use sf_bridge::config::BusRouteConfig;

const READY: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log lines, in the framework's format (installed once).
fn log() -> &'static Buffer {
    static LOG: OnceLock<Buffer> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .event_format(service_framework::logging::line_format(false))
            .init();
        buffer
    })
}

/// The log line containing `needle`, waited for (bounded: a handler's line is written before
/// its reply, so it is there by the time the HTTP response is).
fn line_with(needle: &str) -> String {
    let text = String::from_utf8_lossy(&log().0.lock().unwrap()).into_owned();
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
        .to_owned()
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Echo {
    to_echo: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Echoed {
    echoed: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Relayed {
    echoed: String,
    /// What the relay's handler saw as its trace id.
    trace_id: Option<String>,
}

const DOWN: handle::Requester<Echo, Echoed> = handle::Requester::new("down");

/// Replyer `reply`: logs, asks the echo service, answers with the echo and its trace id.
fn relay() -> ServiceDef {
    ServiceDef::new("relay")
        .requester(DOWN)
        .replyer("reply", |a: Echo, ctx: Ctx| async move {
            tracing::info!("relaying {:?}", a.to_echo);
            let Echoed { echoed } = ctx.request(&DOWN, &a).await?;
            Ok::<_, ServiceError>(Relayed {
                echoed,
                trace_id: ctx.trace_id(),
            })
        })
}

fn run(def: ServiceDef, addresses: Value) -> (ServiceHandle, String) {
    let handle = Service::new(def)
        .addresses(AddressesFile::from_value(addresses).unwrap())
        .run_in_background();
    let ready = handle.wait_ready(READY).expect("the service starts");
    let ep = ready.endpoint("reply").expect("bound endpoint").to_owned();
    (handle, ep)
}

/// The echo service and the relay in front of it; returns the relay's endpoint.
fn services() -> (Vec<ServiceHandle>, String) {
    log();
    let (echo, echo_ep) = run(
        sf_examples::echo::replyer(),
        json!({"connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}}}),
    );
    let (relay, relay_ep) = run(
        relay(),
        json!({"connections": {
            "in": {"reply": {"replyer": "127.0.0.1:0"}},
            "out": {"down": {"requester": echo_ep}}
        }}),
    );
    (vec![relay, echo], relay_ep)
}

fn trace_id_of(tp: &TraceParent) -> String {
    tp.trace_id_hex().to_string()
}

/// POSTs `text` through the bridge's relay route with `header` as its traceparent; returns
/// the response's traceparent and the relay's view of the trace id.
async fn through_bridge(url: &str, text: &str, header: Option<&str>) -> (TraceParent, Value) {
    let mut req = client()
        .post(format!("{url}/api/v1/relay"))
        .json(&json!({ "to_echo": text }));
    if let Some(h) = header {
        req = req.header("traceparent", h);
    }
    let r = req.send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    let tp = r
        .headers()
        .get("traceparent")
        .expect("the response has a traceparent header")
        .to_str()
        .unwrap()
        .to_owned();
    let tp = TraceParent::parse(&tp).unwrap_or_else(|| panic!("not a traceparent: {tp:?}"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["echoed"], json!(text), "{body}");
    (tp, body["data"].clone())
}

/// The echo service, the relay in front of it, and a bridge routing `POST /api/v1/relay` to
/// the relay.
async fn bridge_to_relay() -> (Vec<ServiceHandle>, sf_bridge::RunningBridge) {
    let (services, relay_ep) = services();
    let mut s = settings(&[], &[]);
    s.bus.routes = BTreeMap::from([(
        "/api/v1/relay".to_owned(),
        BusRouteConfig {
            requester: Some(relay_ep),
            timeout_s: Some(5.0),
            ..Default::default()
        },
    )]);
    (services, start(s, vec![]).await)
}

#[tokio::test]
async fn one_trace_id_from_http_through_two_bus_hops_in_logs_and_response_header() {
    let (_services, b) = bridge_to_relay().await;
    let url = b.url();

    // The caller's trace: kept by the bridge and both services.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (tp, data) = through_bridge(&url, "traced hop", Some(given)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(trace_id_of(&tp), trace);
    assert_ne!(
        tp.to_string(),
        given,
        "the bridge answers with its own span, a child of the caller's"
    );
    assert_eq!(
        data["trace_id"],
        json!(trace),
        "the relay's handler sees it"
    );
    let relay_line = line_with("relaying \"traced hop\"");
    let echo_line = line_with("echoing \"traced hop\"");
    for line in [&relay_line, &echo_line] {
        assert!(line.contains(&format!("trace_id={trace}")), "{line}");
        assert!(
            line.contains("workflow{id="),
            "beside the workflow id: {line}"
        );
    }

    // No traceparent: the bridge starts a trace, and it is the one the services log.
    let (fresh, data) = through_bridge(&url, "untraced", None).await;
    let fresh_id = trace_id_of(&fresh);
    assert_ne!(fresh_id, trace);
    assert_eq!(data["trace_id"], json!(fresh_id));
    assert!(line_with("echoing \"untraced\"").contains(&format!("trace_id={fresh_id}")));

    // Malformed (upper-case hex, wrong version, garbage): ignored, a fresh trace, served.
    for (i, bad) in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "not a traceparent",
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!("bad header {i}");
        let (tp, data) = through_bridge(&url, &text, Some(bad)).await;
        assert_ne!(trace_id_of(&tp), trace, "{bad}");
        assert_eq!(data["trace_id"], json!(trace_id_of(&tp)), "{bad}");
    }

    // A route the bridge answers itself still returns the header.
    let r = client().get(format!("{url}/ping")).send().await.unwrap();
    assert!(r
        .headers()
        .get("traceparent")
        .and_then(|v| TraceParent::parse(v.to_str().ok()?))
        .is_some());
    b.stop().await;
}

#[tokio::test]
async fn a_malformed_traceparent_from_a_bus_peer_starts_a_fresh_trace_and_is_served() {
    let (_services, relay_ep) = services();
    let requester = Requester::connect(
        &Address::from(relay_ep.as_str()),
        RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap();
    for (i, bad) in [
        json!("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        json!(17),
        json!({"nested": ["x"]}),
        json!("x".repeat(10_000)),
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!("peer sent bad trace {i}");
        let frame = wire::encode(&json!({
            "args": {"to_echo": text},
            "workflow_id": format!("wf-bad-{i}"),
            "traceparent": bad,
        }))
        .unwrap();
        let reply = requester.request_raw(frame).await.expect("served");
        let reply: wire::Reply<Relayed> = wire::decode(&reply).unwrap();
        assert!(reply.error.is_none(), "{:?}", reply.error);
        let relayed = reply.return_args.expect("a result");
        assert_eq!(relayed.echoed, text);
        // The handler ran in a fresh trace (and passed it on); the reply carries no trace
        // context to a caller that sent none that is valid, as 0.0.18 would answer.
        assert_eq!(reply.traceparent, None);
        let fresh = relayed.trace_id.expect("the handler has a trace id");
        assert_eq!(fresh.len(), 32, "{fresh}");
        assert_ne!(fresh, "0".repeat(32));
        let line = line_with(&format!("echoing {text:?}"));
        assert!(line.contains(&format!("trace_id={fresh}")), "{line}");
        // The peer's value is never logged.
        assert!(!line.contains("xxxxxxxx"), "{line}");
    }
    // A valid one from a peer is continued, through the second hop too, and the reply
    // carries the relay's span: the same trace, a span of its own.
    let given = TraceParent::new_root();
    let frame = wire::encode(&wire::Request {
        args: Echo {
            to_echo: "peer traced".into(),
        },
        workflow_id: wire::WorkflowId::None,
        traceparent: Some(given),
    })
    .unwrap();
    let reply: wire::Reply<Relayed> =
        wire::decode(&requester.request_raw(frame).await.unwrap()).unwrap();
    let served = reply
        .traceparent
        .expect("a traced request's reply is traced");
    assert_eq!(served.trace_id(), given.trace_id());
    assert_ne!(served.span_id(), given.span_id());
    let reply = reply.return_args.unwrap();
    assert_eq!(reply.trace_id, Some(trace_id_of(&given)));
    assert!(
        line_with("echoing \"peer traced\"").contains(&format!("trace_id={}", trace_id_of(&given)))
    );
}

/// A collector of our own: every OTLP/HTTP JSON body POSTed to `/v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>, Arc<tokio::sync::Notify>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (b, n) = (bodies.clone(), arrived.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (b, n) = (b.clone(), n.clone());
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or_else(
                    |e| json!({"unparsed": e.to_string(), "body": String::from_utf8_lossy(&body)}),
                );
                b.lock().unwrap().push(v);
                n.notify_waiters();
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies, arrived)
}

/// One exported span: its service, name, ids (hex) and parent id.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

fn exported(bodies: &[Value]) -> Vec<Exported> {
    let mut out = Vec::new();
    for body in bodies {
        assert!(body.get("unparsed").is_none(), "not OTLP JSON: {body}");
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| s[k].as_str().unwrap_or_default().to_ascii_lowercase();
                    out.push(Exported {
                        service: service.clone(),
                        name: text("name"),
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent: text("parentSpanId"),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_exported_over_otlp_show_http_then_two_bus_hops() {
    let (endpoint, bodies, arrived) = collector().await;
    let guard = sf_otel::install(&endpoint).expect("the exporter installs");
    let (_services, b) = bridge_to_relay().await;
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let (tp, _) = through_bridge(&b.url(), "exported hop", Some(given)).await;
    assert_eq!(trace_id_of(&tp), trace);

    // Flush, then wait (bounded) until the three spans of this trace have arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ours = loop {
        let flushing = guard.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap()
            .expect("the collector takes the spans");
        let all = exported(&bodies.lock().unwrap());
        let ours: Vec<Exported> = all.into_iter().filter(|s| s.trace_id == trace).collect();
        if ours.len() >= 3 {
            break ours;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans of the trace never all arrived: {ours:?}"
        );
        // The next delivery, or a fresh flush soon (a delivery may land between the check
        // above and this wait).
        let _ = tokio::time::timeout(Duration::from_millis(200), arrived.notified()).await;
    };
    let find = |name: &str| {
        ours.iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {ours:?}"))
            .clone()
    };
    let http = find("post /api/v1/relay");
    let relay = find("relay.reply");
    let echo = find("echo_replyer.reply");
    assert_eq!(http.service, "bridge");
    assert_eq!(relay.service, "relay");
    assert_eq!(echo.service, "echo_replyer");
    // HTTP -> bridge -> bus -> relay -> bus -> echo, each the child of the one before, and
    // the bridge's span is the one its response header named.
    assert_eq!(http.parent, "b7ad6b7169203331", "the caller's span");
    assert_eq!(
        http.span_id,
        tp.to_string().split('-').nth(2).unwrap(),
        "the response's traceparent"
    );
    assert_eq!(relay.parent, http.span_id, "{ours:?}");
    assert_eq!(echo.parent, relay.span_id, "{ours:?}");
    assert_eq!(ours.len(), 3, "one span per hop: {ours:?}");
    b.stop().await;
}
