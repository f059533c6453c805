//! Services on the bus as routes, against real replyers and a real publisher: the Rust
//! `echo_replyer` embedded as a service, a service whose handler fails in each of the ways a
//! reply can, a Python 0.0.18 replyer, and a publisher's topic as an event stream.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use service_framework::connections::ErrorCode;
use service_framework::{AddressesFile, Ctx, Service, ServiceDef, ServiceError, ServiceHandle};
use sf_bridge::config::{BusRouteConfig, BusStreamConfig};
use sf_bridge::Bridge;
use sf_connections::{Address, Publisher, PublisherOptions};

const READY: Duration = Duration::from_secs(10);

fn embedded(def: ServiceDef) -> (ServiceHandle, String) {
    let addresses = AddressesFile::from_value(
        json!({"connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}}}),
    )
    .unwrap();
    let handle = Service::new(def).addresses(addresses).run_in_background();
    let ready = handle.wait_ready(READY).expect("the replyer starts");
    let ep = ready.endpoint("reply").expect("bound endpoint").to_owned();
    (handle, ep)
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Trouble {
    kind: String,
}

#[derive(Debug, Serialize, JsonSchema)]
struct Fine {
    ok: bool,
}

/// A replyer that fails as asked.
fn troubled() -> ServiceDef {
    ServiceDef::new("troubled").replyer("reply", |args: Trouble, _ctx: Ctx| async move {
        match args.kind.as_str() {
            "ok" => Ok(Fine { ok: true }),
            "fail" => Err(ServiceError::new("the widget broke")),
            "missing" => Err(ServiceError::with_code(ErrorCode::NotFound, "no widget 7")),
            "busy" => Err(ServiceError::with_code(ErrorCode::Unavailable, "try later")),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(Fine { ok: true })
            }
            other => Err(ServiceError::new(format!("unknown kind {other}"))),
        }
    })
}

fn route(requester: &str) -> BusRouteConfig {
    BusRouteConfig {
        requester: Some(requester.to_owned()),
        timeout_s: Some(5.0),
        ..Default::default()
    }
}

#[tokio::test]
async fn replyers_as_routes_with_their_errors_as_statuses() {
    let (echo, echo_ep) = embedded(sf_examples::echo::replyer());
    let (trouble, trouble_ep) = embedded(troubled());
    // The echo replyer's schemas come from its describe output.
    let dir = scratch("bus");
    let describe = dir.join("echo.describe.json");
    std::fs::write(
        &describe,
        sf_examples::echo::replyer().describe().to_string(),
    )
    .unwrap();

    let mut s = settings(&[], &[]);
    s.bus.routes = BTreeMap::from([
        (
            "/api/v1/echo_bus".to_owned(),
            BusRouteConfig {
                describe_file: Some(describe),
                ..route(&echo_ep)
            },
        ),
        (
            "echo_get".to_owned(),
            BusRouteConfig {
                method: Some("GET".into()),
                args_schema: Some(
                    json!({"type": "object", "properties": {"to_echo": {"type": "string"}}, "required": ["to_echo"]}),
                ),
                ..route(&echo_ep)
            },
        ),
        ("/api/v1/trouble".to_owned(), route(&trouble_ep)),
        (
            "/api/v1/trouble_fast".to_owned(),
            BusRouteConfig {
                timeout_s: Some(0.3),
                ..route(&trouble_ep)
            },
        ),
    ]);
    let b = start(s, vec![]).await;
    let u = b.url();

    // JSON body -> args, reply -> data.
    let (st, v) = post(
        &format!("{u}/api/v1/echo_bus"),
        &json!({"to_echo": "over the bus"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(data_of(200, &v), json!({"echoed": "over the bus"}));
    // GET: the query parameters are the args ("echo_get" got the prefix).
    let (st, v) = get(&format!("{u}/api/v1/echo_get?to_echo=q")).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "q"})));
    // The replyer's validation: 422 with its message.
    let (st, v) = post(&format!("{u}/api/v1/echo_bus"), &json!({"wrong": 1})).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("to_echo"), "{v}");
    assert_eq!(v["data"]["code"], "invalid_args");
    // The field is named in `loc`, as a FastAPI client expects.
    assert_eq!(
        v["data"]["detail"][0]["loc"],
        json!(["body", "to_echo"]),
        "{v}"
    );
    // Handler errors keep their meaning.
    let (st, v) = post(&format!("{u}/api/v1/trouble"), &json!({"kind": "ok"})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"ok": true})));
    let (st, v) = post(&format!("{u}/api/v1/trouble"), &json!({"kind": "fail"})).await;
    assert_eq!((st, v["message"].clone()), (500, json!("the widget broke")));
    let (st, v) = post(&format!("{u}/api/v1/trouble"), &json!({"kind": "missing"})).await;
    assert_eq!((st, v["message"].clone()), (404, json!("no widget 7")));
    let (st, _) = post(&format!("{u}/api/v1/trouble"), &json!({"kind": "busy"})).await;
    assert_eq!(st, 503);
    // No reply in time: 504.
    let (st, v) = post(
        &format!("{u}/api/v1/trouble_fast"),
        &json!({"kind": "slow"}),
    )
    .await;
    assert_eq!(st, 504, "{v}");
    assert_eq!(v["status"], 504);
    // Not JSON: 422 from the bridge itself.
    let r = client()
        .post(format!("{u}/api/v1/trouble"))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // Wrong method: 405.
    let r = client()
        .get(format!("{u}/api/v1/trouble"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // The OpenAPI document has the service's declared models.
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    let op = &doc["paths"]["/api/v1/echo_bus"]["post"];
    let body = &op["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["properties"]["to_echo"]["type"], "string", "{op}");
    let data =
        &op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"];
    assert_eq!(data["properties"]["echoed"]["type"], "string", "{op}");
    assert_eq!(
        doc["paths"]["/api/v1/echo_get"]["get"]["parameters"][0]["name"],
        "to_echo"
    );
    assert!(op["responses"].get("504").is_some());
    assert!(doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "bus"));

    b.stop().await;
    echo.stop().unwrap();
    trouble.stop().unwrap();
}

#[tokio::test]
async fn routes_from_addresses_json_and_call_plugin_api() {
    let (echo, echo_ep) = embedded(sf_examples::echo::replyer());
    let addresses = AddressesFile::from_value(json!({"connections": {
        "out": {"echo": {"requester": echo_ep.clone()}, "named": {"requester": echo_ep}}
    }}))
    .unwrap();
    let mut s = settings(&[], &["user"]);
    s.bus.routes.insert(
        "/api/v1/by_name".into(),
        BusRouteConfig {
            connection: Some("named".into()),
            ..Default::default()
        },
    );
    // A plugin calls the bus route through call_plugin_api.
    let user = sf_bridge::Plugin::new(
        sf_bridge::PluginMetadata::new("user").required_remote_apis(["/api/v1/bus/echo"]),
    )
    .api(sf_bridge::Api::new("relay").path("/relay").handle(
        |q: sf_bridge::echo::EchoQuery, ctx: sf_bridge::PluginCtx| async move {
            ctx.call_plugin_api("/api/v1/bus/echo", json!({"to_echo": q.message}))
                .await
        },
    ));
    let b = Bridge::new(s)
        .plugin(user)
        .addresses(addresses)
        .start()
        .await
        .unwrap();
    let u = b.url();
    // Automatic route for out-connection "echo"; "named" is taken by the configured route.
    let (st, v) = post(&format!("{u}/api/v1/bus/echo"), &json!({"to_echo": "auto"})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "auto"})));
    let (st, v) = post(&format!("{u}/api/v1/by_name"), &json!({"to_echo": "named"})).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "named"})));
    assert_eq!(
        post(&format!("{u}/api/v1/bus/named"), &json!({})).await.0,
        404
    );
    let (st, v) = get(&format!("{u}/api/v1/relay?message=relayed")).await;
    assert_eq!((st, data_of(200, &v)), (200, json!({"echoed": "relayed"})));
    b.stop().await;
    echo.stop().unwrap();

    // A connection name without addresses.json is a start error naming the route.
    let mut s = settings(&[], &[]);
    s.bus.routes.insert(
        "/api/v1/x".into(),
        BusRouteConfig {
            connection: Some("x".into()),
            ..Default::default()
        },
    );
    let e = Bridge::new(s).build().await.unwrap_err().to_string();
    assert!(
        e.contains("/api/v1/x") && e.contains("addresses.json"),
        "{e}"
    );
}

#[tokio::test]
async fn a_publisher_topic_as_an_event_stream() {
    let publisher = Publisher::start(
        &Address::from("127.0.0.1:0"),
        PublisherOptions {
            topic: "ticks".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut s = settings(&[], &[]);
    s.bus.streams.insert(
        "/api/v1/ticks".into(),
        BusStreamConfig {
            subscriber: Some(publisher.endpoint().to_owned()),
            topic: "ticks".into(),
            ..Default::default()
        },
    );
    let b = start(s, vec![]).await;
    let r = client()
        .get(format!("{}/api/v1/ticks", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // PUB/SUB has no delivery guarantee for a joiner: publish until the client has three
    // messages (bounded), then check they arrive in order, each as one event.
    let publisher = std::sync::Arc::new(publisher);
    let feeder = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for n in 0..400u32 {
                publisher
                    .publish(&json!({"n": n}), &sf_connections::WorkflowId::None)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let evs = read_events(r, 3).await;
    feeder.abort();
    let ns: Vec<u64> = evs
        .iter()
        .map(|e| {
            assert_eq!(e.0, "message_chunk");
            e.1["n"].as_u64().unwrap()
        })
        .collect();
    assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "{ns:?}");
    b.stop().await;
}

/// Needs the Python venv (SF_PYTHON, set by scripts/test; created by scripts/python-env).
#[tokio::test]
async fn a_python_0_0_18_replyer_as_a_route() {
    let (mut py, addr) = sf_tests::PyProcess::spawn_bound("py_replyer", |addr| {
        vec![addr.into(), "2".into(), "8000".into()]
    })
    .await;
    let mut s = settings(&[], &[]);
    s.bus.routes.insert("/api/v1/py_echo".into(), route(&addr));
    let b = start(s, vec![]).await;
    let (st, v) = post(
        &format!("{}/api/v1/py_echo", b.url()),
        &json!({"to_echo": "from http"}),
    )
    .await;
    assert_eq!(
        (st, data_of(200, &v)),
        (200, json!({"echoed": "from http"})),
        "{}",
        py.stderr()
    );
    let seen = py.expect_json(Duration::from_secs(5)).await;
    assert_eq!(seen["payload"]["args"], json!({"to_echo": "from http"}));
    // A None reply is null data.
    let (st, v) = post(
        &format!("{}/api/v1/py_echo", b.url()),
        &json!({"to_echo": "none"}),
    )
    .await;
    assert_eq!((st, data_of(200, &v)), (200, Value::Null));
    b.stop().await;
    py.wait_success(Duration::from_secs(10)).await;
}

/// GET until `pred` holds for the route's value (bounded), pushing the state again each round
/// because a subscriber that just joined may miss a publish.
async fn state_until<F, Fut>(url: &str, mut push: F, pred: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        push().await;
        let (st, v) = get(url).await;
        assert_eq!(st, 200, "{v}");
        let d = data_of(200, &v);
        if pred(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the state never became right: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_states_as_get_routes() {
    use sf_bridge::config::{BusStateConfig, StateKindConfig};
    use sf_states::{to_state_map, DeltaUpdateOut, FullUpdateOut, StateOptions};

    let opts = StateOptions {
        topic: "prices".into(),
        ..Default::default()
    };
    let full = FullUpdateOut::start(&Address::from("127.0.0.1:0"), &opts)
        .await
        .unwrap();
    let delta = DeltaUpdateOut::start(
        &Address::from("127.0.0.1:0"),
        &Address::from("127.0.0.1:0"),
        &opts,
    )
    .await
    .unwrap();
    let wf = sf_connections::WorkflowId::None;
    delta
        .snapshot(to_state_map(&json!({"a": 1, "b": "x"})).unwrap(), &wf)
        .await
        .unwrap();

    let mut s = settings(&[], &[]);
    s.bus.states.insert(
        "/api/v1/full_state".into(),
        BusStateConfig {
            kind: StateKindConfig::Full,
            subscriber: full.endpoint().to_owned(),
            topic: "prices".into(),
            ..Default::default()
        },
    );
    s.bus.states.insert(
        "delta_state".into(),
        BusStateConfig {
            kind: StateKindConfig::Delta,
            subscriber: delta.publisher_endpoint().to_owned(),
            requester: Some(delta.replyer_endpoint().to_owned()),
            topic: "prices".into(),
            ..Default::default()
        },
    );
    let b = start(s, vec![]).await;
    let u = b.url();

    let d = state_until(
        &format!("{u}/api/v1/full_state"),
        || async {
            full.set(to_state_map(&json!({"price": 7})).unwrap(), &wf)
                .await
                .unwrap()
        },
        |d| d["state"] == json!({"price": 7}),
    )
    .await;
    assert!(d["current_num"].as_i64().unwrap() >= 0, "{d}");

    // The delta in-state asked for a snapshot when the bridge started.
    let d = state_until(
        &format!("{u}/api/v1/delta_state"),
        || async {},
        |d| d["current_num"].as_i64() >= Some(0),
    )
    .await;
    assert_eq!(d["state"], json!({"a": 1, "b": "x"}));
    // A delta that deletes and sets.
    delta
        .delta(to_state_map(&json!({"a": null, "c": [1, 2]})).unwrap(), &wf)
        .await
        .unwrap();
    let d = state_until(
        &format!("{u}/api/v1/delta_state"),
        || async {},
        |d| d["state"].get("a").is_none(),
    )
    .await;
    assert_eq!(d["state"], json!({"b": "x", "c": [1, 2]}));

    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc["paths"]["/api/v1/delta_state"].get("get").is_some());
    b.stop().await;
}

/// The bridge as a CURVE client (`--security FILE`, here `Bridge::security`): a replyer and a
/// publisher that accept only the bridge's key are reached through a route and a stream;
/// the same route from a bridge without the file is refused by the replyer's handshake
/// (counted there) and answered 504, never served.
#[tokio::test]
async fn the_bridge_reaches_curve_services_with_its_security_file() {
    use service_framework::security::SecuritySettings;
    use sf_connections::security::{write_certificates, Authorizer, KeyPair, Security};
    use sf_connections::{typed, Counter, Replyer, ReplyerOptions, WireError};

    let dir = scratch("curve");
    let server = KeyPair::generate();
    let ours = KeyPair::generate();
    write_certificates(&dir, "server", &server, &[]).unwrap();
    write_certificates(&dir, "bridge", &ours, &[]).unwrap();
    let curve_server =
        || Security::curve_server(server.secret.clone(), Authorizer::allow_list([ours.public]));
    let replyer = Replyer::bind(
        &Address::from("127.0.0.1:0"),
        typed(|args: Value, _meta| async move {
            Ok::<_, WireError>(json!({"echoed": args["to_echo"]}))
        }),
        ReplyerOptions {
            security: curve_server(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let publisher = Publisher::start(
        &Address::from("127.0.0.1:0"),
        PublisherOptions {
            topic: "ticks".into(),
            security: curve_server(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let security_file = dir.join("security.json");
    std::fs::write(
        &security_file,
        json!({"service": {"secret_key_file": "bridge.key_secret", "server_key_file": "server.key"}})
            .to_string(),
    )
    .unwrap();

    let (echo_ep, ticks_ep) = (
        replyer.endpoint().to_owned(),
        publisher.endpoint().to_owned(),
    );
    let secured_settings = || {
        let mut s = settings(&[], &[]);
        s.bus.routes = BTreeMap::from([(
            "/api/v1/secure_echo".to_owned(),
            BusRouteConfig {
                timeout_s: Some(1.0),
                ..route(&echo_ep)
            },
        )]);
        s.bus.streams.insert(
            "/api/v1/secure_ticks".into(),
            BusStreamConfig {
                subscriber: Some(ticks_ep.clone()),
                topic: "ticks".into(),
                ..Default::default()
            },
        );
        s
    };
    let b = Bridge::new(secured_settings())
        .security(SecuritySettings::read(&security_file).unwrap())
        .start()
        .await
        .expect("the bridge starts with its security file");

    let (status, body) = post(
        &format!("{}/api/v1/secure_echo", b.url()),
        &json!({"to_echo": "over curve"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data_of(status, &body), json!({"echoed": "over curve"}));

    // The stream: publish until the client has two events (a joiner may miss the first).
    let r = client()
        .get(format!("{}/api/v1/secure_ticks", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let publisher = std::sync::Arc::new(publisher);
    let feeder = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for n in 0..400u32 {
                if publisher
                    .publish(&json!({"n": n}), &sf_connections::WorkflowId::None)
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let evs = read_events(r, 2).await;
    feeder.abort();
    assert!(evs.iter().all(|e| e.0 == "message_chunk"), "{evs:?}");
    b.stop().await;
    assert_eq!(replyer.stats().get(Counter::AuthFailures), 0);

    // Without the file the bridge speaks NULL: refused at the handshake, nothing served.
    let plain = start(secured_settings(), vec![]).await;
    let (status, body) = post(
        &format!("{}/api/v1/secure_echo", plain.url()),
        &json!({"to_echo": "in clear"}),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    wait_until(Duration::from_secs(5), "the refusal counted", || {
        let n = replyer.stats().get(Counter::AuthFailures);
        async move { n > 0 }
    })
    .await;
    assert_eq!(
        replyer.stats().get(Counter::Received),
        1,
        "only the secured request"
    );
    plain.stop().await;
    replyer.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
