//! The HTTP surface against a running bridge (127.0.0.1, port 0) with a real client: system
//! routes, docs pages, the echo plugin, the envelope and error statuses, streams, FrameX's
//! handler options, call_plugin_api, plugin config, auth rules and the OpenAPI document.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use futures::stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sf_bridge::{Api, ApiError, Bridge, NoParams, Plugin, PluginCtx, PluginMetadata, StreamEvent};

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Defaults {
    #[serde(default = "seven")]
    n: i64,
    #[serde(default)]
    flag: bool,
    name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

fn seven() -> i64 {
    7
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Item {
    id: u32,
    label: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)]
struct DemoConfig {
    greeting: String,
    #[serde(default)]
    times: u32,
}

/// Exercises FrameX's handler options and the failure paths.
fn demo() -> Plugin {
    Plugin::new(
        PluginMetadata::new("demo")
            .version("1.2.3")
            .description("Demo plugin")
            .author("tests")
            .url("https://example.invalid/demo"),
    )
    .config::<DemoConfig>()
    .api(
        Api::new("defaults")
            .path("defaults")
            .handle(|q: Defaults, _c: PluginCtx| async move { Ok::<_, ApiError>(q) }),
    )
    // Two APIs on one path, different methods (FrameX keeps only one).
    .api(Api::new("list_items").path("/items").get().handle(
        |_: NoParams, _c: PluginCtx| async move { Ok::<_, ApiError>(vec!["a".to_owned()]) },
    ))
    .api(Api::new("add_item").path("/items").post().handle_with_body(
        "item",
        |_: NoParams, item: Item, _c: PluginCtx| async move { Ok::<_, ApiError>(item) },
    ))
    // One API with two methods.
    .api(
        Api::new("multi")
            .path("/multi")
            .methods(["PUT", "DELETE"])
            .handle(|_: NoParams, _c: PluginCtx| async move { Ok::<_, ApiError>("multi") }),
    )
    .api(
        Api::new("raw")
            .path("/raw")
            .raw_response()
            .tags(["raw", "demo"])
            .handle(|_: NoParams, _c: PluginCtx| async move { Ok::<_, ApiError>(json!({"x": 1})) }),
    )
    .api(
        Api::new("fail")
            .path("/fail")
            .handle(|_: NoParams, _c: PluginCtx| async move {
                Err::<String, _>(ApiError::internal("boom"))
            }),
    )
    .api(
        Api::new("missing")
            .path("/missing")
            .handle(|_: NoParams, _c: PluginCtx| async move {
                Err::<String, _>(ApiError::not_found("no such thing"))
            }),
    )
    .api(
        Api::new("panic")
            .path("/panic")
            .handle(|_: NoParams, _c: PluginCtx| async move {
                if std::hint::black_box(true) {
                    panic!("secret detail 42");
                }
                Ok::<_, ApiError>(())
            }),
    )
    .api(
        Api::new("broken_stream")
            .path("/broken_stream")
            .handle_stream(|_: NoParams, _c: PluginCtx| async move {
                Ok::<_, ApiError>(stream::iter(vec![
                    Ok(StreamEvent::chunk("a")),
                    Ok(StreamEvent::debug(json!({"step": 1}))),
                    Err(ApiError::internal("disk on fire")),
                    Ok(StreamEvent::chunk("never")),
                ]))
            }),
    )
    .api(Api::new("plain").path("/plain").no_prefix().handle(
        |_: NoParams, c: PluginCtx| async move {
            let cfg: DemoConfig = c.config()?;
            Ok::<_, ApiError>(format!("{} x{}", cfg.greeting, cfg.times))
        },
    ))
    .api(
        Api::new("both")
            .path("/both")
            .call_type(sf_bridge::CallType::All)
            .handle(|q: sf_bridge::echo::EchoQuery, _c: PluginCtx| async move {
                Ok::<_, ApiError>(format!("both {}", q.message))
            }),
    )
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CallQuery {
    name: String,
    #[serde(default)]
    kwargs: Option<String>,
}

/// Calls other APIs with call_plugin_api; its start hook does too.
fn caller(started: Arc<Mutex<Option<Value>>>) -> Plugin {
    Plugin::new(PluginMetadata::new("caller").required_remote_apis([
        "/api/v1/echo",
        "echo.EchoPlugin.confess",
        "/api/v1/echo_stream",
        "POST /api/v1/echo_model",
        "demo.DemoPlugin.both",
    ]))
    .on_start(move |ctx: PluginCtx| {
        let started = started.clone();
        async move {
            let v = ctx
                .call_plugin_api("echo.EchoPlugin.confess", json!({"message": "at start"}))
                .await?;
            *started.lock().unwrap() = Some(v);
            Ok(())
        }
    })
    .api(
        Api::new("call")
            .path("/call")
            .handle(|q: CallQuery, ctx: PluginCtx| async move {
                let kwargs: Value = match q.kwargs {
                    Some(k) => serde_json::from_str(&k)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                    None => json!({}),
                };
                ctx.call_plugin_api(&q.name, kwargs).await
            }),
    )
}

async fn demo_bridge(
    extra: impl FnOnce(&mut sf_bridge::Settings),
) -> (sf_bridge::RunningBridge, Arc<Mutex<Option<Value>>>) {
    let mut s = settings(&["echo"], &["demo", "caller"]);
    s.plugins
        .insert("demo".into(), json!({"greeting": "hi", "times": 2}));
    extra(&mut s);
    let started = Arc::new(Mutex::new(None));
    let b = start(s, vec![demo(), caller(started.clone())]).await;
    (b, started)
}

#[tokio::test]
async fn system_routes_and_docs_pages() {
    let (b, _) = demo_bridge(|_| {}).await;
    let u = b.url();
    assert_eq!(get(&format!("{u}/health")).await, (200, json!("ok")));
    // FrameX answers 422 here outside Ray.
    assert_eq!(get(&format!("{u}/ping")).await, (200, json!("pong")));
    // FrameX's shape: a bare version string; the details have their own route.
    assert_eq!(
        get(&format!("{u}/version")).await,
        (200, json!(env!("CARGO_PKG_VERSION")))
    );
    let (s, v) = get(&format!("{u}/version/details")).await;
    assert_eq!(s, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["name"], "sf-bridge");

    // Swagger UI: the page and its assets come from the binary, not a CDN.
    let page = client().get(format!("{u}/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // What the pages load is checked host by host in docs_pages_load_nothing_from_another_host.
    let init = client()
        .get(format!("{u}/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let init = init.text().await.unwrap();
    assert!(init.contains("/api/v1/openapi.json"));
    // The online validator badge would send the document to another host.
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    let bundle = client()
        .get(format!("{u}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);

    // ReDoc: the script is inlined in the page.
    let redoc = client().get(format!("{u}/redoc")).send().await.unwrap();
    assert_eq!(redoc.status(), 200);
    let html = redoc.text().await.unwrap();
    assert!(html.contains("Redoc.init(\"/api/v1/openapi.json\""));
    assert!(html.len() > 500_000);
    // The document has no jsonSchemaDialect (Swagger UI shows a warning box for it).
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc.get("jsonSchemaDialect").is_none());
    b.stop().await;
}

/// The authority (`host[:port]`, lowercase) of each `http://`, `https://`, `ws://` or
/// `wss://` URL in `text`, and of a protocol-relative `//host` when `relative_too`.
fn authority_of(url: &str) -> Option<String> {
    let rest = ["http://", "https://", "ws://", "wss://", "//"]
        .iter()
        .find_map(|p| url.strip_prefix(p))?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || ".-:[]@_".contains(c)))
        .unwrap_or(rest.len());
    Some(rest[..end].to_ascii_lowercase())
}

/// `text` as a page's code reads it: lowercase, JSON's `\/` and `\u002f` as `/`.
fn normalised(text: &str) -> String {
    text.to_ascii_lowercase()
        .replace("\\/", "/")
        .replace("\\u002f", "/")
}

/// Every absolute URL anywhere in `text`, as (authority, a little context).
fn absolute_urls(text: &str) -> Vec<(String, String)> {
    let t = normalised(text);
    let mut out = Vec::new();
    for scheme in ["http://", "https://", "ws://", "wss://"] {
        for (i, _) in t.match_indices(scheme) {
            // `https://` also holds `s://`: count each URL once.
            if scheme.starts_with("ws") && i > 0 && t.as_bytes()[i - 1].is_ascii_alphabetic() {
                continue;
            }
            if let Some(a) = authority_of(&t[i..]) {
                let ctx = t[i.saturating_sub(60)..(i + 80).min(t.len())].to_owned();
                out.push((a, ctx));
            }
        }
    }
    out
}

/// What a page fetches by itself: an HTML `src`, `srcset`, `poster` or `<link href>`, a CSS
/// `url()` or `@import`, and a script's `fetch(`, `import(`, `importScripts(`, `new Worker(`,
/// `EventSource(`, `WebSocket(`, `sendBeacon(`, and its source map. Relative values included.
fn loaded_urls(text: &str) -> Vec<String> {
    let t = normalised(text);
    let value_after = |from: usize| -> String {
        let v = t[from..].trim_start_matches(|c: char| c.is_whitespace() || "\"'`(\\".contains(c));
        let end = v
            .find(|c: char| c.is_whitespace() || "\"'`)<>,*".contains(c))
            .unwrap_or(v.len());
        v[..end].to_owned()
    };
    let mut out = Vec::new();
    for ctx in [
        "src=",
        "src:",
        "srcset=",
        "srcset:",
        "poster=",
        "url(",
        "@import",
        "fetch(",
        "import(",
        "importscripts(",
        "worker(",
        "eventsource(",
        "websocket(",
        "sendbeacon(",
        "sourcemappingurl=",
    ] {
        for (i, _) in t.match_indices(ctx) {
            out.push(value_after(i + ctx.len()));
        }
    }
    for (i, _) in t.match_indices("<link") {
        let tag = &t[i..t[i..].find('>').map_or(t.len(), |e| i + e)];
        if let Some(h) = tag.find("href=") {
            out.push(value_after(i + h + "href=".len()));
        }
    }
    out.retain(|u| !u.is_empty());
    out
}

/// `html` without the bodies of its inline scripts.
fn markup_only(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::new();
    let mut at = 0;
    while let Some(open) = lower[at..].find("<script") {
        let body = at + open + lower[at + open..].find('>').map_or(0, |e| e + 1);
        out.push_str(&html[at..body]);
        at = lower[body..]
            .find("</script")
            .map_or(html.len(), |e| body + e);
    }
    out.push_str(&html[at..]);
    out
}

/// `css` without its `data:` URLs (whose SVG names its XML namespace, an identifier that is
/// never fetched).
fn without_data_urls(css: &str) -> String {
    let lower = css.to_ascii_lowercase();
    let mut out = String::new();
    let mut at = 0;
    while let Some(u) = lower[at..].find("url(") {
        let start = at + u + 4;
        let rest = lower[start..].trim_start();
        let skipped = lower.len() - start - rest.len();
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
        let value_start = start + skipped + quote.map_or(0, |_| 1);
        let end = match quote {
            // Up to the closing quote, skipping escaped ones.
            Some(q) => {
                let b = lower.as_bytes();
                let mut i = value_start;
                while i < b.len() && !(b[i] == q as u8 && b[i - 1] != b'\\') {
                    i += 1;
                }
                i
            }
            None => lower[value_start..]
                .find(')')
                .map_or(lower.len(), |e| value_start + e),
        };
        out.push_str(&css[at..value_start]);
        if !lower[value_start..end].starts_with("data:") {
            out.push_str(&css[value_start..end]);
        }
        at = end;
    }
    out.push_str(&css[at..]);
    out
}

#[test]
fn the_docs_scanner_finds_what_a_page_would_fetch() {
    // ReDoc as its crate ships it fetches its footer logo from the vendor's CDN.
    let shipped = aide::redoc::Redoc::new("/api/v1/openapi.json").html();
    let loads = loaded_urls(&shipped);
    assert!(
        loads.iter().any(|u| u.starts_with("https://cdn.redoc.ly/")),
        "{loads:?}"
    );
    let page = "<html><head><LINK rel=stylesheet HREF='https://unpkg.com/x.css'>\
        <script src=\"//cdn.jsdelivr.net/a.js\"></script><style>@import url(https://fonts.example/c.css);\
        .a{background:url(\"data:image/svg+xml,<svg xmlns=\\\"http://www.w3.org/2000/svg\\\"/>\")}</style>\
        </head><body><script>fetch(\"https:\\/\\/api.example\\/x\")</script>\
        <a href=\"https://example.org/\">a link</a></body></html>";
    let hosts: Vec<Option<String>> = loaded_urls(page).iter().map(|u| authority_of(u)).collect();
    for h in [
        "unpkg.com",
        "cdn.jsdelivr.net",
        "fonts.example",
        "api.example",
    ] {
        assert!(hosts.contains(&Some(h.to_owned())), "{h} in {hosts:?}");
    }
    // A link is not a load; the markup rule still sees it, and an inline script's text is not
    // markup.
    assert!(
        !hosts.contains(&Some("example.org".to_owned())),
        "{hosts:?}"
    );
    let markup: Vec<String> = absolute_urls(&markup_only(page))
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert!(markup.contains(&"example.org".to_owned()), "{markup:?}");
    assert!(!markup.contains(&"api.example".to_owned()), "{markup:?}");
    let css = without_data_urls(".a{background:url(\"data:image/svg+xml,<svg xmlns=\\\"http://www.w3.org/2000/svg\\\"/>\")} .b{background:url(https://img.example/b.png)}");
    let css_hosts: Vec<String> = absolute_urls(&css).into_iter().map(|(a, _)| a).collect();
    assert_eq!(css_hosts, ["img.example"]);
}

#[tokio::test]
async fn docs_pages_load_nothing_from_another_host() {
    let (b, _) = demo_bridge(|_| {}).await;
    let own = b.addr().to_string();
    let base = reqwest::Url::parse(&b.url()).unwrap();
    let own_host = |url: &str| authority_of(url).is_none_or(|a| a == own);
    // (url, kind, text) of each page and of everything it loads from the bridge.
    let mut seen: Vec<(String, &str, String)> = Vec::new();
    let mut todo: Vec<reqwest::Url> =
        vec![base.join("/docs/").unwrap(), base.join("/redoc").unwrap()];
    while let Some(url) = todo.pop() {
        if seen.iter().any(|(u, _, _)| *u == url.as_str()) {
            continue;
        }
        let r = client().get(url.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.url(), &url, "not redirected");
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let kind = if ct.starts_with("text/html") {
            "html"
        } else if ct.starts_with("text/css") {
            "css"
        } else if ct.contains("javascript") {
            "js"
        } else {
            "other"
        };
        let text = String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string();
        if kind != "other" {
            for u in loaded_urls(&text) {
                assert!(own_host(&u), "{url} loads {u} from another host");
            }
        }
        // What the markup of a page or a stylesheet references on the bridge is fetched and
        // scanned too (a script's values are expressions, not always URLs; a source map is
        // read only by a browser's developer tools).
        let references = match kind {
            "html" => loaded_urls(&markup_only(&text)),
            "css" => loaded_urls(&text),
            _ => Vec::new(),
        };
        for u in references {
            if !u.starts_with("data:") && authority_of(&u).is_none() && !u.ends_with(".map") {
                todo.push(url.join(&u).unwrap());
            }
        }
        seen.push((url.to_string(), kind, text));
    }
    let kinds: Vec<(&str, &str)> = seen.iter().map(|(u, k, _)| (u.as_str(), *k)).collect();
    for page in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
        "/docs/swagger-ui.css",
        "/docs/favicon-32x32.png",
    ] {
        assert!(
            kinds.iter().any(|(u, _)| u.ends_with(page)),
            "{page} not reached: {kinds:?}"
        );
    }
    // ReDoc's footer logo, which it would fetch from its vendor's CDN, is inlined.
    let redoc = &seen
        .iter()
        .find(|(u, _, _)| u.ends_with("/redoc"))
        .unwrap()
        .2;
    assert!(
        loaded_urls(redoc)
            .iter()
            .any(|u| u.starts_with("data:image/svg+xml")),
        "the inlined logo"
    );
    for (url, kind, text) in &seen {
        // The markup of the pages, their stylesheets (but for data: URLs) and the bridge's own
        // script name no other host at all; the vendored bundles (Swagger UI, ReDoc) hold
        // links in messages and spec identifiers, and only what they load is checked above.
        let checked = match *kind {
            "html" => markup_only(text),
            "css" => without_data_urls(text),
            "js" if url.ends_with("/swagger-initializer.js") => text.clone(),
            _ => continue,
        };
        for (authority, ctx) in absolute_urls(&checked) {
            assert_eq!(authority, own, "{url} names another host: {ctx}");
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn echo_plugin_routes_and_function_api() {
    let (b, started) = demo_bridge(|_| {}).await;
    let u = b.url();
    let (s, v) = get(&format!("{u}/api/v1/echo?message=hello%20world")).await;
    assert_eq!(s, 200);
    assert_eq!(v["message"], "success");
    assert_eq!(data_of(200, &v), "hello world");
    // Keys in FrameX's order.
    let text = client()
        .get(format!("{u}/api/v1/echo?message=x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with("{\"status\":200,\"message\":\"success\",\"timestamp\":"),
        "{text}"
    );

    let (s, v) = post(
        &format!("{u}/api/v1/echo_model?message=m"),
        &json!({"id": 5}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(data_of(200, &v), "m,{\"id\":5,\"name\":\"echo\"}");
    let (s, v) = post(
        &format!("{u}/api/v1/echo_model?message=m"),
        &json!({"id": 5, "name": "n"}),
    )
    .await;
    assert_eq!(
        (s, data_of(200, &v)),
        (200, json!("m,{\"id\":5,\"name\":\"n\"}"))
    );

    let r = client()
        .get(format!("{u}/api/v1/echo_stream?message=héy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with("event: message_chunk\ndata: {\"content\":\"h\"}\n\n"),
        "{body}"
    );
    let evs = events(&body);
    let chunks: Vec<_> = evs
        .iter()
        .filter(|e| e.0 == "message_chunk")
        .map(|e| e.1["content"].clone())
        .collect();
    assert_eq!(chunks, vec![json!("h"), json!("é"), json!("y")]);
    assert_eq!(evs.last().unwrap(), &("finish".to_owned(), json!({})));

    // The function API is not a route, but call_plugin_api reached it from a start hook.
    assert_eq!(
        started.lock().unwrap().clone(),
        Some(json!("confessed: at start"))
    );
    let (s, _) = get(&format!("{u}/api/v1/confess?message=x")).await;
    assert_eq!(s, 404);
    b.stop().await;
}

#[tokio::test]
async fn errors_keep_their_status_inside_the_envelope() {
    let (b, _) = demo_bridge(|_| {}).await;
    let u = b.url();
    // 422 with FastAPI's detail shape.
    let (s, v) = get(&format!("{u}/api/v1/echo")).await;
    assert_eq!(s, 422);
    let d = data_of(422, &v);
    assert_eq!(d["detail"][0]["loc"], json!(["query", "message"]));
    assert_eq!(d["detail"][0]["type"], "missing");
    let (s, v) = post(
        &format!("{u}/api/v1/echo_model?message=m"),
        &json!({"id": "x"}),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(data_of(422, &v)["detail"][0]["loc"], json!(["body", "id"]));
    let r = client()
        .post(format!("{u}/api/v1/echo_model?message=m"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = client()
        .post(format!("{u}/api/v1/echo_model?message=m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a missing body");
    let (s, v) = get(&format!("{u}/api/v1/demo_defaults_nope")).await;
    assert_eq!((s, v["status"].clone()), (404, json!(404)));
    // Outside /api a 404 is FastAPI's.
    assert_eq!(
        get(&format!("{u}/nope")).await,
        (404, json!({"detail": "Not Found"}))
    );
    // 405 with Allow.
    let r = client()
        .delete(format!("{u}/api/v1/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], 405);
    // A plugin's own errors.
    let (s, v) = get(&format!("{u}/api/v1/fail")).await;
    assert_eq!((s, v["message"].clone()), (500, json!("boom")));
    let (s, v) = get(&format!("{u}/api/v1/missing")).await;
    assert_eq!((s, v["message"].clone()), (404, json!("no such thing")));
    // A panic is a 500 whose message gives nothing away.
    let (s, v) = get(&format!("{u}/api/v1/panic")).await;
    assert_eq!(s, 500);
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("demo.DemoPlugin.panic") && !m.contains("42"),
        "{m}"
    );
    // The bridge still serves.
    assert_eq!(get(&format!("{u}/health")).await.0, 200);
    b.stop().await;
}

#[tokio::test]
async fn handler_options_defaults_methods_raw_and_streams() {
    let (b, _) = demo_bridge(|_| {}).await;
    let u = b.url();
    // Defaults are honoured (FrameX makes every parameter required); types are converted.
    let (s, v) = get(&format!("{u}/api/v1/defaults")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        data_of(200, &v),
        json!({"n": 7, "flag": false, "name": null, "tags": []})
    );
    let (_, v) = get(&format!(
        "{u}/api/v1/defaults?n=3&flag=true&name=z&tags=a&tags=b"
    ))
    .await;
    assert_eq!(
        data_of(200, &v),
        json!({"n": 3, "flag": true, "name": "z", "tags": ["a", "b"]})
    );
    let (s, v) = get(&format!("{u}/api/v1/defaults?n=three")).await;
    assert_eq!(s, 422);
    assert_eq!(v["data"]["detail"][0]["loc"], json!(["query", "n"]));

    // Several methods on one path.
    let (s, v) = get(&format!("{u}/api/v1/items")).await;
    assert_eq!((s, data_of(200, &v)), (200, json!(["a"])));
    let (s, v) = post(
        &format!("{u}/api/v1/items"),
        &json!({"id": 1, "label": "l"}),
    )
    .await;
    assert_eq!((s, data_of(200, &v)), (200, json!({"id": 1, "label": "l"})));
    let r = client()
        .put(format!("{u}/api/v1/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .delete(format!("{u}/api/v1/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{u}/api/v1/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("PUT") && allow.contains("DELETE"), "{allow}");

    // raw_response: no envelope.
    assert_eq!(
        get(&format!("{u}/api/v1/raw")).await,
        (200, json!({"x": 1}))
    );
    // No prefix, outside /api: no envelope; the typed config is read.
    assert_eq!(get(&format!("{u}/plain")).await, (200, json!("hi x2")));
    // call_type all: a route and a function.
    let (_, v) = get(&format!("{u}/api/v1/both?message=q")).await;
    assert_eq!(data_of(200, &v), "both q");

    // A stream that fails midway ends with an error event and no finish.
    let body = client()
        .get(format!("{u}/api/v1/broken_stream"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evs = events(&body);
    let kinds: Vec<&str> = evs.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(kinds, ["message_chunk", "debug", "error"], "{body}");
    assert_eq!(evs[2].1, json!({"status": 500, "message": "disk on fire"}));
    b.stop().await;
}

#[tokio::test]
async fn call_plugin_api_rules() {
    let (b, _) = demo_bridge(|_| {}).await;
    let u = b.url();
    let call = |name: &str, kwargs: Value| {
        let url = format!(
            "{u}/api/v1/call?name={}&kwargs={}",
            urlencode(name),
            urlencode(&kwargs.to_string())
        );
        async move { get(&url).await }
    };
    // By HTTP path: the handler's value, no envelope inside.
    let (s, v) = call("/api/v1/echo", json!({"message": "p"})).await;
    assert_eq!((s, data_of(200, &v)), (200, json!("p")));
    // By function name.
    let (_, v) = call("echo.EchoPlugin.confess", json!({"message": "f"})).await;
    assert_eq!(data_of(200, &v), "confessed: f");
    let (_, v) = call("demo.DemoPlugin.both", json!({"message": "b"})).await;
    assert_eq!(data_of(200, &v), "both b");
    // With a method and a body under its name.
    let (s, v) = call(
        "POST /api/v1/echo_model",
        json!({"message": "m", "model": {"id": 2}}),
    )
    .await;
    assert_eq!(
        (s, data_of(200, &v)),
        (200, json!("m,{\"id\":2,\"name\":\"echo\"}"))
    );
    // A stream is collected into a list.
    let (_, v) = call("/api/v1/echo_stream", json!({"message": "ab"})).await;
    assert_eq!(
        data_of(200, &v),
        json!([{"content": "a"}, {"content": "b"}])
    );
    // Validation errors of the callee come back as such.
    let (s, _) = call("/api/v1/echo", json!({})).await;
    assert_eq!(s, 422);
    // Not declared: an error that says to declare it.
    let (s, v) = call("/api/v1/raw", json!({})).await;
    assert_eq!(s, 500);
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("required_remote_apis") && m.contains("/api/v1/raw"),
        "{m}"
    );
    b.stop().await;

    // A declared API that nothing provides stops the start, naming plugin and API.
    let mut s = settings(&[], &["caller"]);
    s.load_builtin_plugins.clear();
    let e = Bridge::new(s)
        .plugin(caller(Arc::default()))
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"caller\"") && e.contains("/api/v1/echo"),
        "{e}"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn plugin_config_is_typed_and_unknown_keys_are_named() {
    let build = |cfg: Value| async move {
        let mut s = settings(&[], &["demo"]);
        s.plugins.insert("demo".into(), cfg);
        Bridge::new(s).plugin(demo()).build().await.map(|_| ())
    };
    let e = build(json!({"greeting": "x", "greetng": "y"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("plugins.demo")
            && e.contains("`greetng`")
            && e.contains("`greeting`")
            && e.contains("`times`"),
        "{e}"
    );
    let e = build(json!({"greeting": "x", "times": "many"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugins.demo.times"), "{e}");
    let e = build(json!({})).await.unwrap_err().to_string();
    assert!(
        e.contains("plugins.demo.greeting") && e.contains("required"),
        "{e}"
    );
    assert!(build(json!({"greeting": "x"})).await.is_ok());
    // A plugin without a config model takes no keys.
    let mut s = settings(&[], &["caller"]);
    s.plugins.insert("caller".into(), json!({"x": 1}));
    let e = Bridge::new(s)
        .plugin(caller(Arc::default()))
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugins.caller") && e.contains("`x`"), "{e}");
    // A definition mistake is named too.
    let bad = Plugin::new(PluginMetadata::new("bad")).api(
        Api::new("x")
            .path("/x")
            .methods(["GET", "FETCH"])
            .handle(|_: NoParams, _c: PluginCtx| async move { Ok::<_, ApiError>(()) }),
    );
    let e = Bridge::new(settings(&[], &["bad"]))
        .plugin(bad)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.BadPlugin.x") && e.contains("FETCH"), "{e}");
    let twice = Plugin::new(PluginMetadata::new("twice"))
        .api(
            Api::new("a")
                .path("/same")
                .handle(|_: NoParams, _c: PluginCtx| async move { Ok::<_, ApiError>(()) }),
        )
        .api(
            Api::new("b")
                .path("/api/v1/same")
                .handle(|_: NoParams, _c: PluginCtx| async move { Ok::<_, ApiError>(()) }),
        );
    let e = Bridge::new(settings(&[], &["twice"]))
        .plugin(twice)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GET /api/v1/same")
            && e.contains("twice.TwicePlugin.a")
            && e.contains("twice.TwicePlugin.b"),
        "{e}"
    );
    // Unknown plugin names are named with what is available.
    let e = Bridge::new(settings(&["nope"], &[]))
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("echo"), "{e}");
}

#[tokio::test]
async fn auth_rules() {
    let (b, _) = demo_bridge(|s| {
        s.auth.rules = BTreeMap::from([
            ("/api/v1/*".to_owned(), vec!["general".to_owned()]),
            (
                "/api/v1/echo_stream".to_owned(),
                vec!["streamer".to_owned(), "other".to_owned()],
            ),
            ("/api/v1/items/*".to_owned(), vec!["never".to_owned()]),
        ]);
    })
    .await;
    let u = b.url();
    let with = |path: &str, key: Option<&str>| {
        let mut rq = client().get(format!("{u}{path}"));
        if let Some(k) = key {
            rq = rq.header("authorization", k);
        }
        async move { rq.send().await.unwrap() }
    };
    // Covered by the prefix rule.
    let r = with("/api/v1/echo?message=x", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], 401);
    assert_eq!(
        with("/api/v1/echo?message=x", Some("wrong")).await.status(),
        401
    );
    assert_eq!(
        with("/api/v1/echo?message=x", Some("general"))
            .await
            .status(),
        200
    );
    assert_eq!(
        with("/api/v1/echo?message=x", Some("Bearer general"))
            .await
            .status(),
        200
    );
    // The exact rule wins over the prefix.
    assert_eq!(
        with("/api/v1/echo_stream?message=x", Some("general"))
            .await
            .status(),
        401
    );
    assert_eq!(
        with("/api/v1/echo_stream?message=x", Some("Bearer other"))
            .await
            .status(),
        200
    );
    // `/api/v1/items/*` covers paths under it, not /api/v1/items itself.
    assert_eq!(with("/api/v1/items", Some("general")).await.status(), 200);
    // Unmatched paths are public; the key is never echoed.
    assert_eq!(with("/health", None).await.status(), 200);
    assert_eq!(with("/plain", None).await.status(), 200);
    let r = with("/api/v1/echo?message=x", Some("Bearer s3cr3t-guess")).await;
    assert!(!r.text().await.unwrap().contains("s3cr3t"));
    // The document marks protected operations.
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc["paths"]["/api/v1/echo"]["get"]["responses"]
        .get("401")
        .is_some());
    assert!(doc["paths"]["/health"]["get"]["responses"]
        .get("401")
        .is_none());
    b.stop().await;
}

#[tokio::test]
async fn openapi_document_is_valid_3_1() {
    let (b, _) = demo_bridge(|_| {}).await;
    let (s, doc) = get(&format!("{}/api/v1/openapi.json", b.url())).await;
    assert_eq!(s, 200);
    b.stop().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));

    // A typed OpenAPI 3.1 parser accepts it.
    let spec: oas3::Spec = serde_json::from_value(doc.clone()).expect("oas3 parses the document");
    assert!(spec.validate_version().is_ok());
    assert!(spec.operations().count() >= 14);
    for (path, method, op) in spec.operations() {
        assert!(
            !op.responses.as_ref().is_none_or(|r| r.is_empty()),
            "{method} {path} has no responses"
        );
        for p in &op.parameters {
            p.resolve(&spec)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        }
        if let Some(rb) = &op.request_body {
            rb.resolve(&spec)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        }
    }
    // Every $ref anywhere resolves inside the document.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }

    // Tags per plugin with metadata.
    let tags = doc["tags"].as_array().unwrap();
    let demo = tags.iter().find(|t| t["name"] == "demo").unwrap();
    assert!(demo["description"]
        .as_str()
        .unwrap()
        .contains("Demo plugin"));
    assert_eq!(demo["x-plugin"]["version"], "1.2.3");
    assert_eq!(demo["x-plugin"]["author"], "tests");
    assert_eq!(demo["externalDocs"]["url"], "https://example.invalid/demo");
    assert!(tags.iter().any(|t| t["name"] == "echo"));

    // Schemas from the Rust types, defaults included.
    let echo = &doc["paths"]["/api/v1/echo"]["get"];
    assert_eq!(echo["parameters"][0]["name"], "message");
    assert_eq!(echo["parameters"][0]["required"], true);
    let d = &doc["paths"]["/api/v1/defaults"]["get"]["parameters"];
    let n = d
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "n")
        .unwrap();
    assert_eq!(
        (n["required"].clone(), n["schema"]["default"].clone()),
        (json!(false), json!(7))
    );
    let body = &doc["paths"]["/api/v1/echo_model"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    let r = body["$ref"].as_str().unwrap();
    let model = doc.pointer(r.trim_start_matches('#')).unwrap();
    assert_eq!(model["properties"]["name"]["default"], "echo");
    assert_eq!(model["required"], json!(["id"]));
    // Both methods of /api/v1/items are documented.
    assert!(doc["paths"]["/api/v1/items"].get("get").is_some());
    assert!(doc["paths"]["/api/v1/items"].get("post").is_some());
    // Streams are documented as event streams; function APIs are not routes.
    let event = &doc["paths"]["/api/v1/echo_stream"]["get"]["responses"]["200"]["content"]
        ["text/event-stream"]["schema"];
    // The schema describes one event (not `{"type": "string"}`, which each event would fail).
    assert_eq!(event["type"], "object", "{event}");
    assert_eq!(event["required"], json!(["data"]), "{event}");
    assert_eq!(
        event["properties"]["event"]["enum"],
        json!(["message_chunk", "finish", "error", "debug"]),
        "{event}"
    );
    assert!(!doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.contains("confess")));
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn errors_on_stream_routes_are_event_streams() {
    let (b, _) = demo_bridge(|s| {
        s.auth
            .rules
            .insert("/api/v1/broken_stream".into(), vec!["k".into()]);
    })
    .await;
    let u = b.url();
    // A validation error (no `message`): 422 as one `error` event, as FrameX answers.
    let r = client()
        .get(format!("{u}/api/v1/echo_stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let evs = events(&r.text().await.unwrap());
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "error");
    assert_eq!(evs[0].1["status"], 422);
    assert_eq!(evs[0].1["detail"][0]["loc"], json!(["query", "message"]));
    // An auth failure on a stream route, too.
    let r = client()
        .get(format!("{u}/api/v1/broken_stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let evs = events(&r.text().await.unwrap());
    assert_eq!(
        (evs[0].0.as_str(), evs[0].1["status"].clone()),
        ("error", json!(401))
    );
    b.stop().await;
}

#[tokio::test]
async fn validation_is_lax_as_pydantic_by_default_and_strict_on_request() {
    let (b, _) = demo_bridge(|_| {}).await;
    let u = b.url();
    for body in [json!({"id": "7"}), json!({"id": 95335.0}), json!({"id": 7})] {
        let (st, v) = post(&format!("{u}/api/v1/echo_model?message=m"), &body).await;
        assert_eq!(st, 200, "{body}: {v}");
    }
    let (st, v) = post(
        &format!("{u}/api/v1/echo_model?message=m"),
        &json!({"id": 7.5}),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["data"]["detail"][0]["loc"], json!(["body", "id"]));
    let (st, v) = post(
        &format!("{u}/api/v1/items"),
        &json!({"id": "3", "label": "x"}),
    )
    .await;
    assert_eq!(
        (st, data_of(200, &v)),
        (200, json!({"id": 3, "label": "x"}))
    );
    b.stop().await;

    let (b, _) = demo_bridge(|s| s.server.strict_validation = true).await;
    let u = b.url();
    for body in [json!({"id": "7"}), json!({"id": 95335.0})] {
        let (st, v) = post(&format!("{u}/api/v1/echo_model?message=m"), &body).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(v["data"]["detail"][0]["loc"], json!(["body", "id"]));
    }
    b.stop().await;
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Typed {
    n: i64,
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    flag: Option<bool>,
    #[serde(default)]
    ids: Vec<u32>,
}

/// Answers its query as it was read, so a test sees the types.
fn typed() -> Plugin {
    Plugin::new(PluginMetadata::new("typed")).api(
        Api::new("typed")
            .path("/typed")
            .handle(|q: Typed, _c: PluginCtx| async move { Ok::<_, ApiError>(q) }),
    )
}

#[tokio::test]
async fn query_parameters_are_lax_as_pydantic_by_default_and_strict_on_request() {
    async fn typed_bridge(strict: bool) -> sf_bridge::RunningBridge {
        let mut s = settings(&[], &["typed"]);
        s.server.strict_validation = strict;
        start(s, vec![typed()]).await
    }
    let b = typed_bridge(false).await;
    let u = b.url();
    // Integral floats and pydantic's boolean words, in a query, as pydantic's lax mode reads them.
    for (query, read) in [
        (
            "n=5",
            json!({"n": 5, "ratio": null, "flag": null, "ids": []}),
        ),
        (
            "n=5.0",
            json!({"n": 5, "ratio": null, "flag": null, "ids": []}),
        ),
        (
            "n=95335.0&ratio=2",
            json!({"n": 95335, "ratio": 2.0, "flag": null, "ids": []}),
        ),
        (
            "n=1&ratio=1.5&flag=y",
            json!({"n": 1, "ratio": 1.5, "flag": true, "ids": []}),
        ),
        (
            "n=1&flag=f&ids=1&ids=2.0",
            json!({"n": 1, "ratio": null, "flag": false, "ids": [1, 2]}),
        ),
    ] {
        let (st, v) = get(&format!("{u}/api/v1/typed?{query}")).await;
        assert_eq!(st, 200, "{query}: {v}");
        assert_eq!(data_of(200, &v), read, "{query}");
    }
    // What pydantic refuses is still refused, naming the parameter.
    for (query, field) in [
        ("n=7.5", "n"),
        ("n=x", "n"),
        ("n=1&ratio=abc", "ratio"),
        ("n=1&flag=maybe", "flag"),
    ] {
        let (st, v) = get(&format!("{u}/api/v1/typed?{query}")).await;
        assert_eq!(st, 422, "{query}: {v}");
        assert_eq!(
            v["data"]["detail"][0]["loc"],
            json!(["query", field]),
            "{query}: {v}"
        );
    }
    b.stop().await;

    let b = typed_bridge(true).await;
    let u = b.url();
    // A query value is text: a plain number is still read as the declared type.
    let (st, v) = get(&format!("{u}/api/v1/typed?n=5&ratio=1.5&flag=true&ids=3")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        data_of(200, &v),
        json!({"n": 5, "ratio": 1.5, "flag": true, "ids": [3]})
    );
    // The lax forms are refused.
    for (query, loc) in [
        ("n=5.0", json!(["query", "n"])),
        ("n=95335.0", json!(["query", "n"])),
        ("n=1&flag=y", json!(["query", "flag"])),
        ("n=1&ids=2.0", json!(["query", "ids", 0])),
    ] {
        let (st, v) = get(&format!("{u}/api/v1/typed?{query}")).await;
        assert_eq!(st, 422, "{query}: {v}");
        assert_eq!(v["data"]["detail"][0]["loc"], loc, "{query}: {v}");
    }
    b.stop().await;
}

#[tokio::test]
async fn framex_operation_ids_and_timestamps() {
    let (b, _) = demo_bridge(|_| {}).await;
    let u = b.url();
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert_eq!(
        doc["paths"]["/api/v1/echo"]["get"]["operationId"],
        "route_handler_api_v1_echo_get"
    );
    assert_eq!(
        doc["paths"]["/api/v1/items"]["post"]["operationId"],
        "route_handler_api_v1_items_post"
    );
    // FrameX's exact form by default: UTC, no offset.
    let (_, v) = get(&format!("{u}/api/v1/echo?message=t")).await;
    let ts = v["timestamp"].as_str().unwrap();
    let parsed = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").unwrap();
    assert!(
        (chrono::Utc::now().naive_utc() - parsed)
            .num_seconds()
            .abs()
            <= 2,
        "{ts}"
    );
    b.stop().await;
    // The offset form as an option, per bridge.
    let (b, _) = demo_bridge(|s| s.server.timestamp_offset = true).await;
    let (_, v) = get(&format!("{}/api/v1/echo?message=t", b.url())).await;
    let ts = v["timestamp"].as_str().unwrap();
    assert!(ts.ends_with("+00:00"), "{ts}");
    chrono::DateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%:z").unwrap();
    b.stop().await;
}
