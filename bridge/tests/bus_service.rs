//! A plugin shipped as a service on the bus (issue 16 item 3): the bridge reads the service's
//! control `info` and serves each of its replyers as a route (or the routes it declares in
//! its metadata, a publisher as an event stream), tagged with the service's metadata in the
//! OpenAPI document, for as long as it answers (mounted at start, unmounted
//! when it stops, mounted again when it is back, on new ports); `--load-plugins NAME`
//! resolves to it; a compiled-in plugin calls it with `call_plugin_api`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use service_framework::prelude::*;
use service_framework::{AddressesFile, Service, ServiceHandle};
use sf_bridge::{Api, ApiError, Bridge, NoParams, Plugin, PluginCtx, PluginMetadata};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Sum {
    total: i64,
}

const ADD: Replyer<Add, Sum> = Replyer::new("add");
const MUL: Replyer<Add, Sum> = Replyer::new("mul");
const SUMS: Publisher<Sum> = Publisher::new("sums").topic("sums");

/// The team's service: its own process in production, started here on loopback. `add` is
/// served at the default `POST /api/v1/calc/add`; `mul` and the `sums` publisher declare
/// their routes in the service's metadata (`http.<connection>`).
fn calc() -> ServiceDef {
    ServiceDef::new("calc")
        .description("adds numbers")
        .version("2.0.0")
        .metadata("team", "numbers")
        .metadata(
            "http.mul",
            r#"{"path": "/math/mul", "methods": ["GET", "POST"], "summary": "Multiplies"}"#,
        )
        .metadata("http.sums", r#"{"path": "/calc/sums", "stream": true}"#)
        .publisher(SUMS)
        .replyer(ADD, |args, ctx| async move {
            if args.a < 0 {
                return Err(ServiceError::new(format!("negative a: {}", args.a)));
            }
            let sum = Sum {
                total: args.a + args.b,
            };
            ctx.publish(&SUMS, &sum).await?;
            Ok(sum)
        })
        .replyer(MUL, |args, _ctx| async move {
            Ok(Sum {
                total: args.a * args.b,
            })
        })
}

/// A compiled-in plugin calling the bus service's route.
fn adder() -> Plugin {
    Plugin::new(PluginMetadata::new("adder").required_remote_apis(["POST /api/v1/calc/add"])).api(
        Api::new("twice")
            .path("/twice")
            .handle(|_: NoParams, ctx: PluginCtx| async move {
                let one = ctx
                    .call_plugin_api("POST /api/v1/calc/add", json!({"a": 2, "b": 3}))
                    .await?;
                Ok::<_, ApiError>(json!([one, one]))
            }),
    )
}

/// Runs `calc` in the background with its control endpoint at `control` and its replyer on
/// an ephemeral port (a new one at each start, as a restarted process would get).
async fn run_calc(control: &str) -> ServiceHandle {
    let addresses = AddressesFile::parse(
        &json!({"connections": {
            "in": {"add": {"replyer": "127.0.0.1:0"}, "mul": {"replyer": "127.0.0.1:0"}},
            "out": {"sums": {"publisher": "127.0.0.1:0"}}},
            "control": control})
        .to_string(),
        "test",
    )
    .expect("addresses");
    let h = Service::new(calc())
        .addresses(addresses)
        .run_in_background();
    h.wait_ready_async(Duration::from_secs(10))
        .await
        .expect("calc serves");
    h
}

/// Waits (at most 10 s) until `probe` holds.
async fn until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bridge_settings(control: &str) -> sf_bridge::Settings {
    let mut s = settings(&[], &["calc", "adder"]);
    s.bus.services.insert(
        "calc".into(),
        serde_json::from_value(json!({"control": control, "timeout_s": 1, "refresh_s": 0.1}))
            .unwrap(),
    );
    s
}

#[tokio::test]
async fn a_bus_service_is_mounted_while_it_runs() {
    let control = format!("127.0.0.1:{}", sf_tests::free_port());
    let svc = run_calc(&control).await;
    let b = start(bridge_settings(&control), vec![adder()]).await;
    let u = b.url();
    let add = format!("{u}/api/v1/calc/add");
    // Mounted at start: served from the first request.
    let (st, v) = post(&add, &json!({"a": 1, "b": 2})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"total": 3})));
    // The service's own error keeps its meaning.
    let (st, v) = post(&add, &json!({"a": -1, "b": 2})).await;
    assert_eq!(st, 500, "{v}");
    assert!(v["message"].as_str().unwrap().contains("negative a"), "{v}");
    // Only POST.
    let (st, _) = get(&add).await;
    assert_eq!(st, 405);
    // A compiled-in plugin calls it through call_plugin_api.
    let (st, v) = get(&format!("{u}/api/v1/twice")).await;
    assert_eq!(
        (st, data_of(200, &v)),
        (200, json!([{"total": 5}, {"total": 5}]))
    );
    // The document: the route with the service's schemas, a tag with its metadata.
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    let op = &doc["paths"]["/api/v1/calc/add"]["post"];
    assert_eq!(op["tags"], json!(["calc"]), "{op}");
    let body = op["requestBody"]["content"]["application/json"]["schema"].to_string();
    assert!(body.contains("\"a\"") && body.contains("\"b\""), "{body}");
    let tag = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "calc")
        .expect("the service's tag");
    assert_eq!(tag["x-bus-service"]["version"], "2.0.0", "{tag}");
    assert_eq!(tag["x-bus-service"]["metadata"]["team"], "numbers", "{tag}");
    assert_eq!(get(&format!("{u}/health")).await, (200, json!("ok")));

    // Declared by the service: a path of its own with two methods (GET reads the query)...
    let (st, v) = get(&format!("{u}/api/v1/math/mul?a=6&b=7")).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"total": 42})));
    let (st, v) = post(&format!("{u}/api/v1/math/mul"), &json!({"a": 2, "b": 5})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"total": 10})));
    let mul = &doc["paths"]["/api/v1/math/mul"];
    assert_eq!(mul["get"]["summary"], "Multiplies", "{mul}");
    let names: Vec<&str> = mul["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "{mul}");
    assert!(mul["post"]["requestBody"].is_object(), "{mul}");
    // ...and a publisher as an event stream: what `add` publishes arrives as events.
    assert!(doc["paths"]["/api/v1/calc/sums"]["get"].is_object());
    let mut events = client()
        .get(format!("{u}/api/v1/calc/sums"))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(events.status(), 200);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        loop {
            // The subscription takes a moment to reach the publisher: publish until an event
            // arrives (each add publishes one).
            let _ = post(&add, &json!({"a": 20, "b": 1})).await;
            match tokio::time::timeout(Duration::from_millis(200), events.chunk()).await {
                Ok(Ok(Some(c))) => {
                    text.push_str(&String::from_utf8_lossy(&c));
                    if let Some(e) = sf_bridge::envelope::parse_events(&text).first() {
                        return e.clone();
                    }
                }
                Ok(other) => panic!("the stream ended: {other:?}"),
                Err(_) => {} // nothing yet
            }
        }
    })
    .await
    .expect("an event within 10 s");
    assert_eq!(got, ("message_chunk".to_owned(), json!({"total": 21})));
    drop(events);

    // The service stops: its route answers 503 naming it, its entries leave the document,
    // /health lists it.
    svc.stop_async().await.expect("calc stops");
    until("the route answers 503", || async {
        post(&add, &json!({"a": 1, "b": 2})).await.0 == 503
    })
    .await;
    let (_, v) = post(&add, &json!({"a": 1, "b": 2})).await;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("\"calc\" is not answering"),
        "{v}"
    );
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc["paths"].get("/api/v1/calc/add").is_none());
    assert!(doc["paths"].get("/api/v1/math/mul").is_none());
    // A declared path outside the prefix is known too: 503 while the service is away.
    assert_eq!(get(&format!("{u}/api/v1/math/mul?a=1&b=1")).await.0, 503);
    let (_, h) = get(&format!("{u}/health")).await;
    assert_eq!(h["missing_bus_services"][0]["name"], "calc", "{h}");
    let (st, _) = get(&format!("{u}/api/v1/twice")).await;
    assert_eq!(st, 503);

    // Back, on a new replyer port: mounted again.
    let svc = run_calc(&control).await;
    until("the route answers again", || async {
        post(&add, &json!({"a": 1, "b": 2})).await.0 == 200
    })
    .await;
    let (_, v) = get(&format!("{u}/api/v1/twice")).await;
    assert_eq!(data_of(200, &v), json!([{"total": 5}, {"total": 5}]));
    assert_eq!(get(&format!("{u}/health")).await, (200, json!("ok")));
    b.stop().await;
    svc.stop_async().await.expect("calc stops");
}

#[tokio::test]
async fn a_bus_service_started_after_the_bridge_is_mounted_when_it_answers() {
    let control = format!("127.0.0.1:{}", sf_tests::free_port());
    // Not running: the bridge starts anyway (the service is a plugin another team deploys).
    let b = start(bridge_settings(&control), vec![adder()]).await;
    let u = b.url();
    let add = format!("{u}/api/v1/calc/add");
    let (st, v) = post(&add, &json!({"a": 1, "b": 2})).await;
    assert_eq!(st, 503, "{v}");
    let (_, h) = get(&format!("{u}/health")).await;
    assert_eq!(h["status"], "degraded", "{h}");
    let svc = run_calc(&control).await;
    until("the route answers", || async {
        post(&add, &json!({"a": 1, "b": 2})).await.0 == 200
    })
    .await;
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc["paths"]["/api/v1/calc/add"]["post"].is_object());
    b.stop().await;
    svc.stop_async().await.expect("calc stops");

    // Not a linked plugin nor a bus service: the error says both were looked at.
    let e = Bridge::new(settings(&[], &["nothing"]))
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("[bus.services]"), "{e}");
}
