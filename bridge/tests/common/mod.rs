//! Helpers shared by the bridge's tests: a bridge on 127.0.0.1 port 0, an HTTP client with a
//! bounded timeout, scratch folders.

#![allow(dead_code)]

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
    assert!(ts.ends_with("+00:00"), "{ts}");
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
