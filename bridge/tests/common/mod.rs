//! Helpers shared by the bridge's tests: a bridge on 127.0.0.1 port 0, an HTTP client with a
//! bounded timeout, scratch folders.

#![allow(dead_code)]

pub mod openmetrics;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sf_bridge::config::Settings;
use sf_bridge::{Bridge, Plugin, RunningBridge};

/// Settings serving on a free port with the given built-ins and plugins.
pub fn settings(builtins: &[&str], plugins: &[&str]) -> Settings {
    let mut s = Settings::default();
    s.server.port = 0;
    s.load_builtin_plugins = builtins.iter().map(|s| s.to_string()).collect();
    s.load_plugins = plugins.iter().map(|s| s.to_string()).collect();
    s
}

/// Starts a bridge in this runtime.
pub async fn start(settings: Settings, plugins: Vec<Plugin>) -> RunningBridge {
    Bridge::new(settings)
        .plugins(plugins)
        .start()
        .await
        .expect("the bridge starts")
}

/// A client whose every request is bounded.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET, returning status and JSON body.
pub async fn get(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POST a JSON body, returning status and JSON body.
pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Checks the envelope shape and returns `data`.
pub fn data_of(status: u16, body: &Value) -> Value {
    assert_eq!(body["status"], status, "{body}");
    let ts = body["timestamp"].as_str().expect("timestamp");
    // FrameX's form: UTC, `strptime(ts, "%Y-%m-%d %H:%M:%S")` reads it.
    assert!(
        chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{ts}"
    );
    assert!(body.get("data").is_some(), "{body}");
    body["data"].clone()
}

/// A fresh scratch folder.
pub fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("sf-bridge-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Parses an event-stream body.
pub fn events(text: &str) -> Vec<(String, Value)> {
    sf_bridge::envelope::parse_events(text)
}

/// Reads the event stream `r` until it holds at least `n` events (within 10 s), then closes
/// it; the events read.
pub async fn read_events(r: reqwest::Response, n: usize) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events(&text).len() < n {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events within 10 s")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    events(&text)
}

/// A real FastAPI app (`tests/upstream_app.py`) under uvicorn on 127.0.0.1, from the test
/// venv (`SF_PYTHON`, or what `scripts/python-env` prints). Killed on drop.
pub struct FastApi {
    pub port: u16,
    child: std::process::Child,
}

impl FastApi {
    /// A port that was free a moment ago, for an upstream started later.
    pub fn free_port() -> u16 {
        sf_tests::free_port()
    }

    /// Starts the app on `port` and waits (bounded) until it answers.
    pub async fn start_on(port: u16) -> FastApi {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let child = std::process::Command::new(sf_tests::python())
            .args(["-m", "uvicorn", "upstream_app:app", "--app-dir"])
            .arg(&dir)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-level", "warning", "--timeout-graceful-shutdown", "1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("uvicorn starts (is fastapi in tests/python/requirements.txt installed?)");
        let mut app = FastApi { port, child };
        let url = format!("{}/control/hits", app.url());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client().get(&url).send().await {
                if r.status().is_success() {
                    return app;
                }
            }
            if let Ok(Some(status)) = app.child.try_wait() {
                panic!("uvicorn exited before it served: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "uvicorn did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the app on a free port.
    pub async fn start() -> FastApi {
        Self::start_on(Self::free_port()).await
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The raw paths the upstream received so far.
    pub async fn hits(&self) -> Vec<String> {
        let r = client()
            .get(format!("{}/control/hits", self.url()))
            .send()
            .await
            .expect("hits");
        r.json().await.expect("hits are JSON")
    }

    /// Lets the upstream's streams waiting on `key` go on.
    pub async fn release(&self, key: &str) {
        let r = client()
            .post(format!("{}/control/release?key={key}", self.url()))
            .send()
            .await
            .expect("release");
        assert!(r.status().is_success());
    }
}

impl Drop for FastApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request_line` (e.g. `GET /a/../b`) as is over a TCP stream, so no client
/// normalises it, and returns the status and the body.
pub async fn raw_get(addr: std::net::SocketAddr, target: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `cond` every 50 ms until it holds, at most `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the bridge's `/health` says every upstream was read.
pub async fn wait_upstreams(bridge: &RunningBridge) {
    let url = format!("{}/health", bridge.url());
    wait_until(Duration::from_secs(20), "the upstreams to be read", || {
        let url = url.clone();
        async move { get(&url).await.1 == Value::String("ok".into()) }
    })
    .await;
}
