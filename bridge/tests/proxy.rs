//! The proxy against a real upstream HTTP service (an axum server on 127.0.0.1 port 0 that
//! serves its own OpenAPI document): path parameters, query strings, JSON and multipart
//! bodies, client headers, upstream statuses, streams, enable/disable rules, upstream keys,
//! and call_plugin_api reaching proxied routes.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};
use sf_bridge::axum::extract::{Path, Query, Request};
use sf_bridge::axum::http::{HeaderMap, StatusCode};
use sf_bridge::axum::response::IntoResponse;
use sf_bridge::axum::routing;
use sf_bridge::axum::{Json, Router};
use sf_bridge::{Api, ApiError, Bridge, Plugin, PluginCtx, PluginMetadata};

fn upstream_doc() -> Value {
    let ok = json!({"200": {"description": "OK"}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "upstream", "version": "1"},
        "paths": {
            "/api/v1/items/{id}": {"get": {"tags": ["items"], "operationId": "item",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                               {"name": "q", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}}},
            "/api/v1/create": {"post": {"operationId": "create",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}, "responses": ok}},
            "/api/v1/teapot": {"get": {"operationId": "teapot", "responses": ok}},
            "/api/v1/headers": {"get": {"operationId": "headers", "responses": ok}},
            "/api/v1/upload": {"post": {"operationId": "upload", "responses": ok}},
            "/api/v1/events": {"get": {"operationId": "events", "responses": ok}},
            "/api/v1/framex": {"get": {"operationId": "framex", "responses": ok}},
            "/api/v1/echo": {"get": {"operationId": "shadowed", "responses": ok}},
            "/api/v1/hidden/x": {"get": {"operationId": "hidden", "responses": ok}},
        },
        "components": {"schemas": {"Item": {"type": "object", "properties": {"id": {"type": "integer"}}}}},
    })
}

async fn upstream() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/api/v1/openapi.json", routing::get(|| async { Json(upstream_doc()) }))
        .route(
            "/api/v1/items/{id}",
            routing::get(|Path(id): Path<u64>, Query(q): Query<BTreeMap<String, String>>| async move {
                Json(json!({"id": id, "q": q.get("q")}))
            }),
        )
        .route(
            "/api/v1/create",
            routing::post(|Json(body): Json<Value>| async move { (StatusCode::CREATED, Json(json!({"got": body}))) }),
        )
        .route(
            "/api/v1/teapot",
            routing::get(|| async { (StatusCode::IM_A_TEAPOT, Json(json!({"detail": "I'm a teapot"}))) }),
        )
        .route(
            "/api/v1/headers",
            routing::get(|h: HeaderMap| async move {
                let v = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
                Json(json!({"x-custom": v("x-custom"), "authorization": v("authorization")}))
            }),
        )
        .route(
            "/api/v1/upload",
            routing::post(|req: Request| async move {
                let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let body = sf_bridge::axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
                let text = String::from_utf8_lossy(&body).to_string();
                Json(json!({"content_type": ct, "has_file": text.contains("file-content-123")}))
            }),
        )
        .route(
            "/api/v1/events",
            routing::get(|| async {
                (
                    [("content-type", "text/event-stream")],
                    "event: message_chunk\ndata: {\"content\":\"u\"}\n\nevent: finish\ndata: {}\n\n",
                )
                    .into_response()
            }),
        )
        .route(
            "/api/v1/framex",
            routing::get(|| async { Json(json!({"status": 200, "message": "success", "timestamp": "t", "data": {"v": 1}})) }),
        )
        .route("/api/v1/hidden/x", routing::get(|| async { Json(json!("hidden")) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        sf_bridge::axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

fn user() -> Plugin {
    Plugin::new(
        PluginMetadata::new("user")
            .required_remote_apis(["/api/v1/items/{id}", "POST /api/v1/create"]),
    )
    .api(Api::new("via").path("/via").handle(
        |_: sf_bridge::NoParams, ctx: PluginCtx| async move {
            let item = ctx
                .call_plugin_api("/api/v1/items/{id}", json!({"id": 9, "q": "z"}))
                .await?;
            let created = ctx
                .call_plugin_api("POST /api/v1/create", json!({"a": 1}))
                .await?;
            Ok::<_, ApiError>(json!({"item": item, "created": created}))
        },
    ))
}

#[tokio::test]
async fn upstream_routes_are_forwarded_faithfully() {
    let (up, task) = upstream().await;
    let mut s = settings(&["echo"], &["user"]);
    s.server.enable_proxy = true;
    s.plugins.insert(
        "proxy".into(),
        json!({
            "proxy_urls": {up.clone(): {"enable": ["/api/v1/*"], "disable": ["/api/v1/hidden/*"]}},
            "auth": {"rules": {"/api/v1/headers": ["upstream-key"]}},
            "timeout": 10,
        }),
    );
    let b = start(s, vec![user()]).await;
    let u = b.url();

    // Path parameters are substituted, the query passes.
    let (st, v) = get(&format!("{u}/api/v1/items/42?q=hello")).await;
    assert_eq!(
        (st, data_of(200, &v)),
        (200, json!({"id": 42, "q": "hello"}))
    );
    // A JSON body, and the upstream's status.
    let (st, v) = post(&format!("{u}/api/v1/create"), &json!({"k": [1, 2]})).await;
    assert_eq!((st, data_of(201, &v)), (201, json!({"got": {"k": [1, 2]}})));
    // An upstream failure keeps its status (FrameX: 200 with "error proxy").
    let (st, v) = get(&format!("{u}/api/v1/teapot")).await;
    assert_eq!(st, 418);
    assert_eq!(v["status"], 418);
    assert_eq!(v["message"], "I'm a teapot");
    // Client headers are forwarded; the upstream key replaces Authorization.
    let r = client()
        .get(format!("{u}/api/v1/headers"))
        .header("x-custom", "abc")
        .header("authorization", "client-key")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        data_of(200, &v),
        json!({"x-custom": "abc", "authorization": "upstream-key"})
    );
    // Multipart uploads pass through untouched.
    let boundary = "XyZbOuNdArY";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile-content-123\r\n--{boundary}--\r\n"
    );
    let r = client()
        .post(format!("{u}/api/v1/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(data_of(200, &v)["has_file"], true);
    assert!(v["data"]["content_type"]
        .as_str()
        .unwrap()
        .contains(boundary));
    // An upstream stream passes through as events.
    let r = client()
        .get(format!("{u}/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let evs = events(&r.text().await.unwrap());
    assert_eq!(
        evs[0],
        ("message_chunk".to_owned(), json!({"content": "u"}))
    );
    // An upstream envelope is not wrapped twice.
    let (_, v) = get(&format!("{u}/api/v1/framex")).await;
    assert_eq!(data_of(200, &v), json!({"v": 1}));
    // Disabled paths are not routes; a local route wins over the upstream's.
    assert_eq!(get(&format!("{u}/api/v1/hidden/x")).await.0, 404);
    let (_, v) = get(&format!("{u}/api/v1/echo?message=local")).await;
    assert_eq!(data_of(200, &v), "local");
    // call_plugin_api reaches proxied routes (path parameters from the kwargs).
    let (st, v) = get(&format!("{u}/api/v1/via")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        data_of(200, &v),
        json!({"item": {"id": 9, "q": "z"}, "created": {"got": {"a": 1}}})
    );
    // The document includes the upstream's operations and schemas, with valid refs.
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert_eq!(
        doc["paths"]["/api/v1/items/{id}"]["get"]["operationId"],
        "item"
    );
    assert!(doc["components"]["schemas"].get("Item").is_some());
    assert!(doc["paths"].get("/api/v1/hidden/x").is_none());
    serde_json::from_value::<oas3::Spec>(doc).expect("still valid");
    b.stop().await;

    // An upstream that cannot be read stops the start with its URL.
    task.abort();
    let _ = task.await;
    let mut s = settings(&[], &[]);
    s.server.enable_proxy = true;
    s.plugins
        .insert("proxy".into(), json!({"proxy_urls": [up.clone()]}));
    let e = Bridge::new(s).build().await.unwrap_err().to_string();
    assert!(e.contains(&up), "{e}");
    // Unknown proxy keys are named.
    let mut s = settings(&[], &[]);
    s.server.enable_proxy = true;
    s.plugins.insert("proxy".into(), json!({"proxy_url": [up]}));
    let e = Bridge::new(s).build().await.unwrap_err().to_string();
    assert!(e.contains("proxy_url"), "{e}");
}
