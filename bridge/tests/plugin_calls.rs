//! `call_plugin_api` between plugins of a running bridge: a path with two methods resolved by
//! the method named in `required_remote_apis`, an unqualified name of such a path refused at
//! start, the typed form (`PluginCtx::call_api` with a `RemoteApi`), and a plugin's state.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sf_bridge::{Api, ApiError, Bridge, NoParams, Plugin, PluginCtx, PluginMetadata, RemoteApi};

#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
struct Shelf {
    name: String,
    count: u32,
}

#[derive(Deserialize, JsonSchema)]
struct ShelfQuery {
    name: String,
}

#[derive(Deserialize, JsonSchema)]
struct ShelfConfig {
    start: u32,
}

/// The plugin's state: a counter made from its config.
struct Counter {
    n: AtomicU32,
}

/// `GET /api/v1/shelf` reads the counter, `POST /api/v1/shelf` adds the body's count to it.
fn shelf() -> Plugin {
    Plugin::new(PluginMetadata::new("shelf"))
        .config::<ShelfConfig>()
        .state(|c: ShelfConfig| {
            Ok(Counter {
                n: AtomicU32::new(c.start),
            })
        })
        .api(Api::new("read").path("/shelf").get().handle(
            |q: ShelfQuery, ctx: PluginCtx| async move {
                let c = ctx.state::<Counter>()?;
                Ok::<_, ApiError>(Shelf {
                    name: q.name,
                    count: c.n.load(Ordering::SeqCst),
                })
            },
        ))
        .api(Api::new("add").path("/shelf").post().handle_with_body(
            "shelf",
            |_: NoParams, s: Shelf, ctx: PluginCtx| async move {
                let c = ctx.state::<Counter>()?;
                let count = c.n.fetch_add(s.count, Ordering::SeqCst) + s.count;
                Ok::<_, ApiError>(Shelf {
                    name: s.name,
                    count,
                })
            },
        ))
}

/// The typed arguments of `POST /api/v1/shelf`, written by hand (`#[plugin]` writes these).
#[derive(Serialize)]
struct AddToShelf {
    shelf: Shelf,
}

impl RemoteApi for AddToShelf {
    const NAME: &'static str = "POST /api/v1/shelf";
    type Output = Shelf;
}

#[derive(Serialize)]
struct ReadShelf {
    name: String,
}

impl RemoteApi for ReadShelf {
    const NAME: &'static str = "GET /api/v1/shelf";
    type Output = Shelf;
}

/// Calls both methods of `/api/v1/shelf`: the JSON form by the method-qualified names, and
/// the typed form.
fn clerk(required: &[&str]) -> Plugin {
    Plugin::new(PluginMetadata::new("clerk").required_remote_apis(required.iter().copied()))
        .api(Api::new("restock").path("/restock").get().handle(
            |_: NoParams, ctx: PluginCtx| async move {
                let before = ctx
                    .call_plugin_api("GET /api/v1/shelf", json!({"name": "a"}))
                    .await?;
                let after = ctx
                    .call_plugin_api(
                        "POST /api/v1/shelf",
                        json!({"shelf": {"name": "a", "count": 5}}),
                    )
                    .await?;
                Ok::<_, ApiError>(json!([before, after]))
            },
        ))
        .api(Api::new("typed").path("/typed").get().handle(
            |_: NoParams, ctx: PluginCtx| async move {
                let added: Shelf = ctx
                    .call_api(AddToShelf {
                        shelf: Shelf {
                            name: "b".into(),
                            count: 2,
                        },
                    })
                    .await?;
                let read: Shelf = ctx.call_api(ReadShelf { name: "b".into() }).await?;
                Ok::<_, ApiError>(json!({"added": added, "read": read}))
            },
        ))
}

fn bridge_settings() -> sf_bridge::Settings {
    let mut s = settings(&[], &["shelf", "clerk"]);
    s.plugins.insert("shelf".into(), json!({"start": 10}));
    s
}

#[tokio::test]
async fn a_path_with_two_methods_is_called_by_method() {
    let b = start(
        bridge_settings(),
        vec![shelf(), clerk(&["GET /api/v1/shelf", "POST /api/v1/shelf"])],
    )
    .await;
    let u = b.url();
    let (s, v) = get(&format!("{u}/api/v1/restock")).await;
    assert_eq!(
        (s, data_of(200, &v)),
        (
            200,
            json!([{"name": "a", "count": 10}, {"name": "a", "count": 15}])
        )
    );
    // Typed: the arguments serialize to the kwargs, the answer deserializes to Shelf.
    let (s, v) = get(&format!("{u}/api/v1/typed")).await;
    assert_eq!(
        (s, data_of(200, &v)),
        (
            200,
            json!({"added": {"name": "b", "count": 17}, "read": {"name": "b", "count": 17}})
        )
    );
    // Over HTTP the two methods are the two handlers, sharing the state.
    let (_, v) = get(&format!("{u}/api/v1/shelf?name=z")).await;
    assert_eq!(data_of(200, &v), json!({"name": "z", "count": 17}));
    b.stop().await;
}

#[tokio::test]
async fn an_unqualified_path_with_several_methods_stops_the_start() {
    let e = Bridge::new(bridge_settings())
        .plugins([shelf(), clerk(&["/api/v1/shelf"])])
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"clerk\"")
            && e.contains("several methods (GET, POST)")
            && e.contains("\"GET /api/v1/shelf\""),
        "{e}"
    );
    // A method the path does not have is not found either, and says so.
    let e = Bridge::new(bridge_settings())
        .plugins([shelf(), clerk(&["PUT /api/v1/shelf"])])
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("PUT /api/v1/shelf"), "{e}");
}

#[tokio::test]
async fn a_typed_call_checks_required_remote_apis_and_the_answer() {
    // Only GET declared: the typed POST is refused with the JSON form's message.
    let b = start(
        bridge_settings(),
        vec![shelf(), clerk(&["GET /api/v1/shelf"])],
    )
    .await;
    let (s, v) = get(&format!("{}/api/v1/typed", b.url())).await;
    assert_eq!(s, 500, "{v}");
    let m = v["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("required_remote_apis") && m.contains("POST /api/v1/shelf"),
        "{m}"
    );
    b.stop().await;

    // A state missing from the plugin's config stops the start, naming the plugin.
    let mut s = bridge_settings();
    s.plugins.insert("shelf".into(), json!({}));
    let e = Bridge::new(s)
        .plugins([shelf(), clerk(&[])])
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugins.shelf") && e.contains("start"), "{e}");
}

/// Issue 16: function APIs are listed in the document (`x-function-apis`, with the kwargs
/// `call_plugin_api` takes and what they answer), and a stream's event payload model is its
/// operation's `x-message-schema`.
#[tokio::test]
async fn the_document_lists_function_apis_and_stream_event_types() {
    let mut s = settings(&["echo"], &["shelf"]);
    s.plugins.insert("shelf".into(), json!({"start": 0}));
    let app = Bridge::new(s)
        .plugins([shelf()])
        .build()
        .await
        .expect("builds");
    let doc = app.openapi();
    let confess = &doc["x-function-apis"]["echo.EchoPlugin.confess"];
    assert_eq!(confess["plugin"], "echo", "{confess}");
    assert_eq!(
        confess["kwargs"]["required"],
        json!(["message"]),
        "{confess}"
    );
    assert_eq!(
        confess["kwargs"]["properties"]["message"]["type"], "string",
        "{confess}"
    );
    assert_eq!(confess["returns"]["type"], "string", "{confess}");
    assert_eq!(confess["stream"], false);
    // Only function APIs: the HTTP-only ones are paths.
    let names: Vec<&String> = doc["x-function-apis"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["echo.EchoPlugin.confess"]);
    // The echo stream's chunks are {"content": ...}.
    let op = &doc["paths"]["/api/v1/echo_stream"]["get"];
    let chunk = &op["x-message-schema"];
    let r = chunk["$ref"].as_str().expect("a reference");
    let name = r.trim_start_matches("#/components/schemas/");
    let model = &doc["components"]["schemas"][name];
    assert_eq!(model["properties"]["content"]["type"], "string", "{model}");
}
