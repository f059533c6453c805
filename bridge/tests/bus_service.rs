//! A plugin shipped as a service on the bus (issue 16 item 3, mounted at start): the bridge
//! reads a running service's control `info` and serves each of its replyers as a route,
//! tagged with the service's metadata in the OpenAPI document; `--load-plugins NAME`
//! resolves to it; a compiled-in plugin calls it with `call_plugin_api`.

mod common;

use common::*;
use serde_json::json;
use service_framework::prelude::*;
use service_framework::testing::TestService;
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

/// The team's service: its own process in production, started here on loopback.
fn calc() -> ServiceDef {
    ServiceDef::new("calc")
        .description("adds numbers")
        .version("2.0.0")
        .metadata("team", "numbers")
        .replyer(ADD, |args, _ctx| async move {
            if args.a < 0 {
                return Err(ServiceError::new(format!("negative a: {}", args.a)));
            }
            Ok(Sum {
                total: args.a + args.b,
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

#[tokio::test]
async fn a_bus_service_is_mounted_as_a_plugin() {
    let svc = TestService::start(calc())
        .await
        .expect("the service starts");
    let control = svc.control().expect("a control endpoint").to_owned();
    let mut s = settings(&[], &["calc", "adder"]);
    s.bus.services.insert(
        "calc".into(),
        serde_json::from_value(json!({"control": control, "timeout_s": 1})).unwrap(),
    );
    let b = start(s, vec![adder()]).await;
    let u = b.url();
    let (st, v) = post(&format!("{u}/api/v1/calc/add"), &json!({"a": 1, "b": 2})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"total": 3})));
    // The service's own error keeps its meaning.
    let (st, v) = post(&format!("{u}/api/v1/calc/add"), &json!({"a": -1, "b": 2})).await;
    assert_eq!(st, 500, "{v}");
    assert!(v["message"].as_str().unwrap().contains("negative a"), "{v}");
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
    // Once the service is gone its route answers a gateway error within timeout_s.
    svc.stop().await.expect("the service stops");
    let (st, v) = post(&format!("{u}/api/v1/calc/add"), &json!({"a": 1, "b": 2})).await;
    assert!((502..=504).contains(&st), "{st} {v}");
    b.stop().await;
}

#[tokio::test]
async fn a_bus_service_that_does_not_answer_stops_the_start() {
    // A port nothing listens on: info times out (bounded by timeout_s).
    let port = sf_tests::free_port();
    let mut s = settings(&[], &["calc"]);
    s.bus.services.insert(
        "calc".into(),
        serde_json::from_value(json!({"control": format!("127.0.0.1:{port}"), "timeout_s": 0.5}))
            .unwrap(),
    );
    let e = Bridge::new(s).build().await.unwrap_err().to_string();
    assert!(e.contains("bus.services.calc") && e.contains("info"), "{e}");
    // Not a compiled-in plugin nor a bus service: the error says both were looked at.
    let e = Bridge::new(settings(&[], &["nothing"]))
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("[bus.services]"), "{e}");
}
