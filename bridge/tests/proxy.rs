//! The proxy against a real FastAPI upstream (tests/upstream_app.py under uvicorn, from the
//! test venv): paths that try to leave their route, answers passed through raw, upstreams read
//! in the background, per-read timeouts, cut streams, forced streaming, and call_plugin_api
//! reaching proxied routes; and the connect timeout against a listener that accepts nothing.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sf_bridge::config::Settings;
use sf_bridge::{Api, ApiError, Plugin, PluginCtx, PluginMetadata};

/// Everything the bridge logs in this test binary, for the tests that check a log line.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle)
}

fn proxy_settings(builtins: &[&str], plugins: &[&str], proxy: Value) -> Settings {
    let mut s = settings(builtins, plugins);
    s.server.enable_proxy = true;
    s.plugins.insert("proxy".into(), proxy);
    s
}

async fn text(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.expect("GET");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn a_path_parameter_cannot_leave_its_route_or_its_rules() {
    let up = FastApi::start().await;
    let mut s = proxy_settings(
        &[],
        &[],
        json!({"proxy_urls": {up.url(): {
            "enable": ["/api/v1/files/*", "/api/v1/admin", "/api/v1/items/*", "/api/v1/sections/*"],
            "disable": ["/api/v1/admin", "/api/v1/sections/secret/*"],
        }}}),
    );
    s.auth
        .rules
        .insert("/api/v1/admin".into(), vec!["admin-key".into()]);
    s.auth.rules.insert(
        "/api/v1/sections/locked/info".into(),
        vec!["locked-key".into()],
    );
    let b = start(s, vec![]).await;
    wait_upstreams(&b).await;
    let u = b.url();

    // The plain request is refused: disabled, so not published.
    assert_eq!(get(&format!("{u}/api/v1/admin")).await.0, 404);

    // Every spelling of a relative or slashed segment is a 400, sent byte for byte.
    for target in [
        "/api/v1/files/%2e%2e/admin",
        "/api/v1/files/%2E%2E/admin",
        "/api/v1/files/%2e%2E/admin",
        "/api/v1/files/.%2e/admin",
        "/api/v1/files/.%2E/admin",
        "/api/v1/files/%2e./admin",
        "/api/v1/files/%2E./admin",
        "/api/v1/files/../admin",
        "/api/v1/files/./admin",
        "/api/v1/files/%2e/admin",
        "/api/v1/files/..%2fadmin",
        "/api/v1/files/..%2Fadmin",
        "/api/v1/files/%2e%2e%2fadmin",
        "/api/v1/files/%2E%2E%2Fadmin",
        "/api/v1/files/%2fapi%2fv1%2fadmin",
        "/api/v1/files/..%5cadmin",
        "/api/v1/files/..",
        "/api/v1/files/%2e%2e",
        "/api/v1/items/%2e%2e",
        "/api/v1/items/..",
        "/api/v1/items/.%2e?q=1",
        "/api/v1/sections/x/../../admin",
        "/api/v1/sections/%2e%2e/admin",
    ] {
        let (status, body) = raw_get(b.addr(), target, "Authorization: admin-key\r\n").await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("refused"), "{target}: {body}");
    }
    // None of them reached the upstream.
    assert_eq!(up.hits().await, Vec::<String>::new());

    // A parameter is decoded, then encoded again for the upstream.
    let (st, v) = get(&format!("{u}/api/v1/files/a%20b...txt")).await;
    assert_eq!((st, v), (200, json!({"file": "a b...txt"})));
    let (st, v) = get(&format!("{u}/api/v1/files/%61dmin")).await;
    assert_eq!((st, v), (200, json!({"file": "admin"})));

    // The rules are checked against the exact path sent upstream, however it was spelled.
    for path in [
        "/api/v1/sections/secret/info",
        "/api/v1/sections/%73ecret/info",
        "/api/v1/sections/%73%65%63%72%65%74/info",
    ] {
        assert_eq!(get(&format!("{u}{path}")).await.0, 404, "{path}");
    }
    assert_eq!(
        get(&format!("{u}/api/v1/sections/open/info")).await,
        (200, json!({"section": "open"}))
    );
    for path in [
        "/api/v1/sections/locked/info",
        "/api/v1/sections/%6cocked/info",
    ] {
        let (st, v) = get(&format!("{u}{path}")).await;
        assert_eq!(st, 401, "{path}: {v}");
    }
    let r = client()
        .get(format!("{u}/api/v1/sections/%6cocked/info"))
        .header("authorization", "locked-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let hits = up.hits().await;
    assert_eq!(
        hits,
        [
            "/api/v1/files/a%20b...txt",
            "/api/v1/files/admin",
            "/api/v1/sections/open/info",
            "/api/v1/sections/locked/info",
        ],
        "only the allowed requests reached the upstream"
    );
    b.stop().await;
}

fn user() -> Plugin {
    Plugin::new(PluginMetadata::new("user").required_remote_apis([
        "/api/v1/items/{item_id}",
        "POST /api/v1/create",
        "/api/v1/files/{name}",
    ]))
    .api(
        Api::new("via")
            .path("/via")
            .handle(|_: sf_bridge::NoParams, ctx: PluginCtx| async move {
                let item = ctx
                    .call_plugin_api("/api/v1/items/{item_id}", json!({"item_id": 9, "q": "z"}))
                    .await?;
                let created = ctx
                    .call_plugin_api("POST /api/v1/create", json!({"id": 1}))
                    .await?;
                Ok::<_, ApiError>(json!({"item": item, "created": created}))
            }),
    )
    .api(Api::new("dots").path("/dots").handle(
        |_: sf_bridge::NoParams, ctx: PluginCtx| async move {
            ctx.call_plugin_api("/api/v1/files/{name}", json!({"name": ".."}))
                .await
        },
    ))
}

#[tokio::test]
async fn answers_pass_through_raw_unless_a_route_is_wrapped() {
    let up = FastApi::start().await;
    let s = proxy_settings(
        &["echo"],
        &["user"],
        json!({
            "proxy_urls": {up.url(): {"name": "catalog"}},
            "wrap_apis": ["/api/v1/files/*", "/api/v1/framex"],
            "auth": {"rules": {"/api/v1/headers": ["upstream-key"]}},
        }),
    );
    let b = start(s, vec![user()]).await;
    wait_upstreams(&b).await;
    let u = b.url();

    // Body and status byte for byte as the upstream sends them (key order too).
    for path in [
        "/api/v1/items/42?q=hello",
        "/api/v1/teapot",
        "/api/v1/missing",
        "/api/v1/boom",
        "/api/v1/items/notanumber",
    ] {
        let direct = text(&format!("{}{path}", up.url())).await;
        let proxied = text(&format!("{u}{path}")).await;
        assert_eq!(proxied, direct, "{path}");
    }
    let (_, body) = text(&format!("{u}/api/v1/items/42?q=hello")).await;
    assert_eq!(body, r#"{"zeta":1,"id":42,"alpha":2,"q":"hello"}"#);
    // A JSON body and the upstream's 201.
    let (st, v) = post(&format!("{u}/api/v1/create"), &json!({"id": 3})).await;
    assert_eq!((st, v), (201, json!({"got": {"id": 3, "name": "thing"}})));
    // Client headers go upstream; the upstream key replaces Authorization.
    let r = client()
        .get(format!("{u}/api/v1/headers"))
        .header("x-custom", "abc")
        .header("authorization", "client-key")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"x-custom": "abc", "authorization": "upstream-key"})
    );
    // A multipart upload with a form field.
    let boundary = "XyZbOuNdArY";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile-content-123\r\n--{boundary}--\r\n"
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
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"filename": "a.txt", "size": 16, "note": "hi", "text": "file-content-123"})
    );
    // A wrapped route: the envelope, `data` as the upstream sent it.
    let (st, body) = text(&format!("{u}/api/v1/files/x")).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(data_of(200, &v), json!({"file": "x"}));
    // An upstream envelope is not wrapped twice, and its data keeps its order.
    let (_, body) = text(&format!("{u}/api/v1/framex")).await;
    assert!(body.ends_with(r#""data":{"v":1,"a":0}}"#), "{body}");
    // Local routes win, however the path is spelled (the upstream also has /api/v1/echo).
    let (_, v) = get(&format!("{u}/api/v1/echo?message=local")).await;
    assert_eq!(data_of(200, &v), "local");
    assert_eq!(get(&format!("{u}/api/v1/%65cho?message=x")).await.0, 404);
    assert!(!up.hits().await.iter().any(|h| h.contains("echo")));
    // Another method on that path is the upstream's (the local route answers GET only).
    let (st, v) = post(&format!("{u}/api/v1/echo"), &json!({"id": 4})).await;
    assert_eq!((st, v), (200, json!({"posted": 4})));
    // call_plugin_api reaches proxied routes, path parameters from the kwargs, and refuses
    // a relative segment there too.
    let (st, v) = get(&format!("{u}/api/v1/via")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        data_of(200, &v),
        json!({"item": {"zeta": 1, "id": 9, "alpha": 2, "q": "z"}, "created": {"got": {"id": 1, "name": "thing"}}})
    );
    let (st, v) = get(&format!("{u}/api/v1/dots")).await;
    assert_eq!(st, 422, "{v}");
    // The document has the upstream's operations, its schemas and FrameX's proxy tag.
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    let op = &doc["paths"]["/api/v1/items/{item_id}"]["get"];
    assert_eq!(op["tags"], json!([format!("proxy({})", up.url())]), "{op}");
    assert_eq!(
        op["operationId"],
        "route_handler_api_v1_items__item_id__get"
    );
    assert_eq!(
        op["x-upstream-operation-id"],
        "item_api_v1_items__item_id__get"
    );
    assert!(doc["components"]["schemas"].get("Item").is_some());
    // A wrapped route is documented inside the envelope.
    let wrapped = &doc["paths"]["/api/v1/files/{name}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert_eq!(
        wrapped["required"],
        json!(["status", "message", "timestamp", "data"]),
        "{wrapped}"
    );
    assert!(doc["paths"].get("/control/hits").is_none());
    assert!(doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == format!("proxy({})", up.url())));
    b.stop().await;
}

fn needs_items() -> Plugin {
    Plugin::new(PluginMetadata::new("needs").required_remote_apis(["/api/v1/items/{item_id}"])).api(
        Api::new("item").path("/needs_item").handle(
            |_: sf_bridge::NoParams, ctx: PluginCtx| async move {
                ctx.call_plugin_api("/api/v1/items/{item_id}", json!({"item_id": 5}))
                    .await
            },
        ),
    )
}

#[tokio::test]
async fn the_bridge_starts_before_its_upstream_and_adds_it_when_it_comes_up() {
    let _ = logs();
    let port = FastApi::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let s = proxy_settings(
        &["echo"],
        &["needs"],
        json!({"proxy_urls": {url.clone(): {"name": "catalog"}}, "retry_max_interval": 0.5, "timeout": 5}),
    );
    let started = Instant::now();
    let b = start(s, vec![needs_items()]).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let u = b.url();
    // Everything else is served at once; /health names what is missing.
    let (_, v) = get(&format!("{u}/api/v1/echo?message=up")).await;
    assert_eq!(data_of(200, &v), "up");
    let (st, v) = get(&format!("{u}/health")).await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["missing_upstreams"][0]["name"], "catalog");
    assert_eq!(get(&format!("{u}/api/v1/items/1")).await.0, 404);
    let (st, v) = get(&format!("{u}/api/v1/needs_item")).await;
    assert_eq!(st, 503, "{v}");
    assert!(v["message"].as_str().unwrap().contains("catalog"), "{v}");
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc["paths"].get("/api/v1/items/{item_id}").is_none());
    wait_until(
        Duration::from_secs(10),
        "the unreachable upstream's log line",
        || async { logged("catalog") && logged("cannot be read yet") },
    )
    .await;

    // The upstream comes up: its routes and OpenAPI entries appear.
    let up = FastApi::start_on(port).await;
    wait_upstreams(&b).await;
    let (st, v) = get(&format!("{u}/api/v1/items/1")).await;
    assert_eq!((st, v["id"].clone()), (200, json!(1)));
    let (_, doc) = get(&format!("{u}/api/v1/openapi.json")).await;
    assert!(doc["paths"].get("/api/v1/items/{item_id}").is_some());
    let (st, v) = get(&format!("{u}/api/v1/needs_item")).await;
    assert_eq!((st, data_of(200, &v)["id"].clone()), (200, json!(5)));

    // It goes away: a 502 that names it by its configured name, not its address.
    drop(up);
    let (st, v) = get(&format!("{u}/api/v1/items/1")).await;
    assert_eq!(st, 502, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("catalog"), "{v}");
    assert!(!v.to_string().contains(&port.to_string()), "{v}");
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");
    b.stop().await;
}

#[tokio::test]
async fn timeouts_are_per_read_and_a_cut_stream_ends_with_an_error_event() {
    let _ = logs();
    let up = FastApi::start().await;
    let s = proxy_settings(
        &[],
        &[],
        json!({"proxy_urls": {up.url(): {"name": "streams"}}, "timeout": 1.5, "connect_timeout": 2}),
    );
    let b = start(s, vec![]).await;
    wait_upstreams(&b).await;
    let u = b.url();

    // A 2.4 s stream whose reads each wait 0.3 s is not cut by a 1.5 s timeout.
    let t = Instant::now();
    let (st, body) = text(&format!("{u}/api/v1/sse?count=9&gap=0.3")).await;
    assert_eq!(st, 200);
    assert!(t.elapsed() >= Duration::from_millis(2400));
    let evs = events(&body);
    assert_eq!(evs.len(), 10, "{body}");
    assert_eq!(evs.last().unwrap().0, "finish");

    // Nothing for longer than the timeout: 504 naming the upstream.
    let (st, v) = get(&format!("{u}/api/v1/slow?seconds=4")).await;
    assert_eq!(st, 504, "{v}");
    assert!(v["message"].as_str().unwrap().contains("streams"), "{v}");

    // A stream that stalls ends with an error event, and a log line.
    let t = Instant::now();
    let (st, body) = text(&format!("{u}/api/v1/sse_hang?key=h1")).await;
    assert_eq!(st, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    let evs = events(&body);
    assert_eq!(evs[0].1, json!({"content": "first"}), "{body}");
    let last = evs.last().unwrap();
    assert_eq!(last.0, "error", "{body}");
    assert_eq!(last.1["status"], 504);
    wait_until(Duration::from_secs(5), "the timeout's log line", || async {
        logged("the upstream streams sent nothing within the timeout")
    })
    .await;

    // A stream the upstream cuts midway (inside an event): a blank line, then the error.
    let r = client()
        .get(format!("{u}/api/v1/sse_cut?key=c1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.release("c1").await;
    let body = r.text().await.unwrap();
    let evs = events(&body);
    assert_eq!(evs[0].1, json!({"content": "first"}), "{body}");
    let last = evs.last().unwrap();
    assert_eq!(last.0, "error", "{body}");
    assert_eq!(last.1["status"], 502);
    wait_until(Duration::from_secs(5), "the cut's log line", || async {
        logged("the upstream streams cut the answer")
    })
    .await;
    b.stop().await;
}

/// An upstream that stops accepting connections once its document was read: a listener on
/// 127.0.0.1 with a backlog of 0 whose one queue slot is taken by a connection nobody accepts,
/// so the kernel drops every further SYN and a connect hangs (it is not refused).
struct StalledUpstream {
    listener: tokio::net::TcpListener,
    addr: std::net::SocketAddr,
    _filler: Option<tokio::net::TcpStream>,
}

impl StalledUpstream {
    fn bind() -> StalledUpstream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind 127.0.0.1");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().unwrap();
        StalledUpstream {
            listener,
            addr,
            _filler: None,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts one connection (the bridge reading the document), answers `body` with
    /// `Connection: close` (so the bridge keeps no connection to reuse) and returns the
    /// request line.
    async fn serve_document_once(&self, body: &Value) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(20), self.listener.accept())
            .await
            .expect("the bridge asks for the document within 20 s")
            .expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("the request head in time")
                .expect("read");
            assert!(n > 0, "the bridge closed before its request ended");
            head.extend_from_slice(&buf[..n]);
        }
        let body = body.to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(answer.as_bytes()).await.expect("write");
        s.shutdown().await.expect("shutdown");
        let head = String::from_utf8_lossy(&head).to_string();
        head.lines().next().unwrap_or_default().to_owned()
    }

    /// Takes the accept queue's one slot, then checks that a further connect now hangs.
    async fn stop_accepting(&mut self) {
        let filler = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .expect("the queue's one slot is free")
        .expect("connect");
        self._filler = Some(filler);
        let probe = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await;
        assert!(
            probe.is_err(),
            "a connect to the full listener should hang, got {probe:?}"
        );
    }
}

#[tokio::test]
async fn a_connect_that_hangs_is_cut_by_connect_timeout_and_names_the_upstream() {
    let _ = logs();
    let mut up = StalledUpstream::bind();
    // A read timeout far longer than the connect timeout: an answer in about a second can only
    // come from connect_timeout.
    let s = proxy_settings(
        &[],
        &[],
        json!({"proxy_urls": {up.url(): {"name": "stalled"}}, "timeout": 30, "connect_timeout": 1}),
    );
    let b = start(s, vec![]).await;
    let doc = json!({"openapi": "3.1.0", "info": {"title": "stalled", "version": "1"},
        "paths": {"/api/v1/items/{item_id}": {"get": {"operationId": "item",
            "parameters": [{"name": "item_id", "in": "path", "required": true,
                "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "an item"}}}}}});
    assert_eq!(
        up.serve_document_once(&doc).await,
        "GET /api/v1/openapi.json HTTP/1.1"
    );
    wait_upstreams(&b).await;
    up.stop_accepting().await;

    let t = Instant::now();
    let (st, v) = get(&format!("{}/api/v1/items/1", b.url())).await;
    let took = t.elapsed();
    assert_eq!(st, 504, "{v}");
    assert_eq!(v["status"], 504, "{v}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}, connect_timeout is 1 s"
    );
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("stalled"), "{v}");
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");
    assert!(!v.to_string().contains(&up.addr.port().to_string()), "{v}");
    wait_until(
        Duration::from_secs(5),
        "the connect timeout's log line",
        || async { logged("the upstream stalled did not answer in time") },
    )
    .await;
    b.stop().await;
}

#[tokio::test]
async fn force_stream_apis_stream_as_the_bytes_arrive() {
    let up = FastApi::start().await;
    let s = proxy_settings(
        &[],
        &[],
        json!({"proxy_urls": [up.url()], "force_stream_apis": ["/api/v1/ndjson"]}),
    );
    let b = start(s, vec![]).await;
    wait_upstreams(&b).await;
    let mut r = client()
        .get(format!("{}/api/v1/ndjson?key=n1", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    // The first line arrives while the upstream still holds the rest back.
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("the first line before the rest is released")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"{\"n\": 1}\n");
    up.release("n1").await;
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("the rest in time")
        .unwrap()
    {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"{\"n\": 2}\n{\"n\": 3}\n");
    b.stop().await;
}

#[tokio::test]
async fn proxy_config_mistakes_are_named() {
    for (cfg, needle) in [
        (json!({"proxy_url": ["http://127.0.0.1:1"]}), "proxy_url"),
        (json!({"proxy_urls": ["not a url"]}), "not a url"),
        (
            json!({"proxy_urls": ["http://127.0.0.1:1"], "timeout": 0}),
            "timeout",
        ),
        (json!({"proxy_urls": []}), "no upstream"),
    ] {
        let s = proxy_settings(&[], &[], cfg);
        let e = sf_bridge::Bridge::new(s)
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

/// The list form of `proxy_urls`, as FrameX documents it (bridge/README.md says how FrameX
/// 0.4.2 itself differs): every route of each listed upstream is published, in the OpenAPI
/// document and as a route; with `white_list` only the routes it enables.
#[tokio::test]
async fn the_list_form_publishes_every_route_or_those_white_list_enables() {
    let up = FastApi::start().await;
    let paths_of = |doc: &Value| -> Vec<String> {
        doc["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    };

    let all = start(
        proxy_settings(&[], &[], json!({"proxy_urls": [up.url()]})),
        vec![],
    )
    .await;
    wait_upstreams(&all).await;
    let (_, doc) = get(&format!("{}/api/v1/openapi.json", all.url())).await;
    let paths = paths_of(&doc);
    for p in [
        "/api/v1/items/{item_id}",
        "/api/v1/admin",
        "/api/v1/echo",
        "/api/v1/teapot",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} published: {paths:?}");
    }
    let (st, _) = get(&format!("{}/api/v1/admin", all.url())).await;
    assert_eq!(st, 200, "a listed upstream's route is served");
    all.stop().await;

    let some = start(
        proxy_settings(
            &[],
            &[],
            json!({"proxy_urls": [up.url()], "white_list": ["/api/v1/items/*"]}),
        ),
        vec![],
    )
    .await;
    wait_upstreams(&some).await;
    let (_, doc) = get(&format!("{}/api/v1/openapi.json", some.url())).await;
    let paths = paths_of(&doc);
    assert!(
        paths.iter().any(|x| x == "/api/v1/items/{item_id}"),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|x| x == "/api/v1/admin" || x == "/api/v1/echo"),
        "only what white_list enables: {paths:?}"
    );
    let (st, _) = get(&format!("{}/api/v1/admin", some.url())).await;
    assert_eq!(st, 404, "a route white_list leaves out is not served");
    let (st, _) = get(&format!("{}/api/v1/items/3", some.url())).await;
    assert_eq!(st, 200);
    some.stop().await;
}
