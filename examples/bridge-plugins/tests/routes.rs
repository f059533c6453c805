//! Every route of the two macro-written plugins, through a real HTTP client against a running
//! bridge (127.0.0.1, port 0); the plugins are found because this crate is linked, and the
//! OpenAPI document shows what the macros declared.

use std::time::Duration;

use serde_json::{json, Value};
use sf_bridge::{Bridge, Settings};
use sf_example_bridge_plugins::inventory::Level;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("the bridge answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `data` of a success envelope.
fn data(status: u16, v: &Value) -> Value {
    assert_eq!((status, &v["status"]), (200, &json!(200)), "{v}");
    v["data"].clone()
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.server.port = 0;
    s.load_plugins = vec!["inventory".into(), "orders".into()];
    s.plugins.insert(
        "inventory".into(),
        json!({"warehouse": "north", "low_stock": 2}),
    );
    s
}

#[tokio::test]
async fn every_route_of_the_macro_plugins() {
    // Registered by linking: Bridge::new finds them without being handed them.
    let names: Vec<String> = sf_bridge::registered_plugins()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(names, ["checkout", "inventory", "orders", "pricing"]);
    let b = Bridge::new(settings())
        .start()
        .await
        .expect("the bridge starts");
    let u = b.url();
    let c = client();

    // A query with a default (10), then given.
    let (s, v) = answer(c.get(format!("{u}/api/v1/inventory/items"))).await;
    assert_eq!(
        data(s, &v),
        json!([{"sku": "pear", "quantity": 2, "low": true}, {"sku": "apple", "quantity": 10, "low": false}])
    );
    let (s, v) = answer(c.get(format!("{u}/api/v1/inventory/items?limit=1"))).await;
    assert_eq!(data(s, &v).as_array().map(Vec::len), Some(1));
    // A bad query value is a 422 naming it.
    let (s, v) = answer(c.get(format!("{u}/api/v1/inventory/items?limit=x"))).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v["data"]["detail"][0]["loc"],
        json!(["query", "limit"]),
        "{v}"
    );

    // A JSON body on the same path with POST.
    let (s, v) = answer(
        c.post(format!("{u}/api/v1/inventory/items"))
            .json(&json!({"sku": "fig", "quantity": 4})),
    )
    .await;
    assert_eq!(
        data(s, &v),
        json!({"sku": "fig", "quantity": 4, "low": false})
    );
    let (s, v) = answer(
        c.post(format!("{u}/api/v1/inventory/items"))
            .json(&json!({"sku": "fig"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v["data"]["detail"][0]["loc"],
        json!(["body", "quantity"]),
        "{v}"
    );

    // The SSE stream: one event per level at or above min, then finish.
    let r = c
        .get(format!("{u}/api/v1/inventory/watch?min=4"))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sf_bridge::envelope::parse_events(&r.text().await.expect("the stream ends"));
    assert_eq!(
        events,
        vec![
            (
                "message_chunk".to_owned(),
                json!({"sku": "fig", "quantity": 4, "low": false})
            ),
            (
                "message_chunk".to_owned(),
                json!({"sku": "apple", "quantity": 10, "low": false})
            ),
            ("finish".to_owned(), json!({})),
        ]
    );

    // orders -> inventory's function API, typed.
    let (s, v) = answer(
        c.post(format!("{u}/api/v1/orders"))
            .json(&json!({"sku": "apple", "quantity": 9})),
    )
    .await;
    assert_eq!(
        data(s, &v),
        json!({"number": 1, "left": {"sku": "apple", "quantity": 1, "low": true}})
    );
    // The callee's error keeps its status through the call.
    let (s, v) = answer(
        c.post(format!("{u}/api/v1/orders"))
            .json(&json!({"sku": "apple", "quantity": 5})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("only 1 of apple left"),
        "{v}"
    );
    let (s, _) = answer(
        c.post(format!("{u}/api/v1/orders"))
            .json(&json!({"sku": "kiwi", "quantity": 1})),
    )
    .await;
    assert_eq!(s, 404);

    // orders -> inventory's GET route, the JSON form.
    let (s, v) = answer(c.get(format!("{u}/api/v1/orders/low"))).await;
    assert_eq!(data(s, &v), json!(["apple", "pear"]));

    // orders -> inventory's stream, typed and collected (default min 1, then 3).
    let (s, v) = answer(c.get(format!("{u}/api/v1/orders/stocked"))).await;
    let levels: Vec<Level> = serde_json::from_value(data(s, &v)).expect("levels");
    assert_eq!(levels.len(), 3, "{levels:?}");
    let (s, v) = answer(c.get(format!("{u}/api/v1/orders/stocked?min=3"))).await;
    assert_eq!(
        data(s, &v),
        json!([{"sku": "fig", "quantity": 4, "low": false}])
    );

    // The function API is not a route.
    let (s, _) = answer(c.get(format!("{u}/api/v1/reserve"))).await;
    assert_eq!(s, 404);

    // The document shows what the macros declared.
    let (s, doc) = answer(c.get(format!("{u}/api/v1/openapi.json"))).await;
    assert_eq!(s, 200);
    let items = &doc["paths"]["/api/v1/inventory/items"];
    assert_eq!(items["get"]["summary"], "The levels, lowest first.");
    assert_eq!(items["get"]["tags"], json!(["stock"]));
    let limit = &items["get"]["parameters"][0];
    assert_eq!(
        (&limit["name"], &limit["required"]),
        (&json!("limit"), &json!(false))
    );
    assert_eq!(limit["schema"]["default"], 10, "{limit}");
    assert!(items["post"]["requestBody"].is_object());
    // The function API and the stream's event type are in the document too.
    let reserve = &doc["x-function-apis"]["inventory.Inventory.reserve"];
    assert_eq!(
        reserve["kwargs"]["required"],
        json!(["sku", "quantity"]),
        "{reserve}"
    );
    assert_eq!(
        reserve["returns"]["$ref"], "#/components/schemas/Level",
        "{reserve}"
    );
    assert_eq!(
        doc["paths"]["/api/v1/inventory/watch"]["get"]["x-message-schema"]["$ref"],
        "#/components/schemas/Level"
    );
    let tag = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .expect("the orders tag");
    assert_eq!(
        tag["x-plugin"]["required_remote_apis"],
        json!([
            "inventory.Inventory.reserve",
            "GET /api/v1/inventory/watch",
            "GET /api/v1/inventory/items"
        ])
    );
    b.stop().await;
}

#[tokio::test]
async fn a_config_mistake_names_the_key() {
    let mut s = settings();
    s.plugins
        .insert("inventory".into(), json!({"warehouse": "n", "low": 1}));
    let e = Bridge::new(s).build().await.unwrap_err().to_string();
    assert!(e.contains("plugins.inventory") && e.contains("low"), "{e}");
}
