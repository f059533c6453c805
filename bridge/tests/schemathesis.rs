//! schemathesis (from the test venv) against the bridge's own OpenAPI document: the echo
//! plugin, a plugin with a body model, defaults and a stream, an auth rule, and routes
//! proxied from a real FastAPI upstream. A bounded number of examples per operation with a
//! fixed seed; the run must find no server error, no response outside its schema, no
//! undocumented status or content type.

mod common;

use std::time::Duration;

use common::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sf_bridge::{Api, ApiError, NoParams, Plugin, PluginMetadata, StreamEvent};

#[derive(Deserialize, Serialize, JsonSchema)]
struct Order {
    id: u32,
    #[serde(default)]
    quantity: i64,
    note: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct Count {
    #[serde(default = "three")]
    n: u8,
}

fn three() -> u8 {
    3
}

fn shop() -> Plugin {
    Plugin::new(PluginMetadata::new("shop").version("1.0.0"))
        .api(
            Api::new("order")
                .path("/order")
                .post()
                .handle_with_body("order", |_: NoParams, o: Order, _| async move {
                    Ok::<_, ApiError>(o)
                }),
        )
        .api(
            Api::new("count")
                .path("/count")
                .handle_stream(|q: Count, _| async move {
                    Ok::<_, ApiError>(futures::stream::iter(
                        (0..q.n.min(20)).map(|i| Ok(StreamEvent::chunk(i.to_string()))),
                    ))
                }),
        )
        .api(
            Api::new("secret")
                .path("/secret")
                .handle(|_: NoParams, _| async move { Ok::<_, ApiError>("hidden") }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let up = FastApi::start().await;
    let mut s = settings(&["echo"], &["shop"]);
    s.auth
        .rules
        .insert("/api/v1/secret".into(), vec!["k".into()]);
    s.server.enable_proxy = true;
    s.plugins.insert(
        "proxy".into(),
        json!({"proxy_urls": {up.url(): {"name": "catalog",
            "enable": ["/api/v1/items/*", "/api/v1/files/*", "/api/v1/create", "/api/v1/sections/*"]}},
            "timeout": 10}),
    );
    let b = start(s, vec![shop()]).await;
    wait_upstreams(&b).await;
    let dir = scratch("schemathesis");
    let run = tokio::process::Command::new(sf_tests::python())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/api/v1/openapi.json", b.url()))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--seed",
            "20260101",
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--no-color",
            "--request-timeout",
            "10",
        ])
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within 300 s")
        .expect("schemathesis runs (is it in tests/python/requirements.txt?)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    // Every operation was exercised: the plugins', the system routes' and the upstream's.
    let tested = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no operation count in {text}"));
    assert!(tested >= 14, "only {tested} operations tested:\n{text}");
    b.stop().await;
}
