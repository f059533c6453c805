//! `calc-service` in its own process, mounted by a running bridge from `[bus.services]`:
//! served while it runs, 503 (and out of the document) when it is stopped, served again
//! when it is started anew (on new ports), with no restart of the bridge.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sf_bridge::{Bridge, Settings};
use tokio::process::{Child, Command};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn status_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    match r.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => panic!("the bridge answers: {e}"),
    }
}

/// Waits (at most 20 s) until `path` answers `status`.
async fn until(url: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, _) = status_of(client().get(url)).await;
        if s == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within 20 s (last {s})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_calc(addresses: &PathBuf) -> Child {
    Command::new(env!("CARGO_BIN_EXE_calc-service"))
        .arg("-a")
        .arg(addresses)
        .args(["-cl", "WARNING"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("calc-service runs")
}

async fn terminate(mut c: Child) {
    let pid = c.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(15), c.wait())
        .await
        .expect("stops within 15 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_bus_service_in_its_own_process_comes_and_goes() {
    let control = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("sf-calc-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addresses = dir.join("calc_addresses.json");
    std::fs::write(
        &addresses,
        json!({
            "connections": {
                "in": {"add": {"replyer": "127.0.0.1:0"}, "mul": {"replyer": "127.0.0.1:0"}},
                "out": {"sums": {"publisher": "127.0.0.1:0"}}
            },
            "states": {"in": {}, "out": {}},
            "control": control,
        })
        .to_string(),
    )
    .unwrap();

    let mut s = Settings::default();
    s.server.port = 0;
    s.load_plugins = vec!["calc".into()];
    s.bus.services.insert(
        "calc".into(),
        serde_json::from_value(json!({"control": control, "timeout_s": 2, "refresh_s": 0.1}))
            .unwrap(),
    );
    // The service is not running yet: the bridge starts anyway.
    let b = Bridge::new(s).start().await.expect("the bridge starts");
    let u = b.url();
    let mul = format!("{u}/api/v1/math/mul?a=6&b=7");
    // Its prefix is known from the config: 503 naming it. A path it declares elsewhere is
    // not known before it first answered.
    let (st, v) = status_of(
        client()
            .post(format!("{u}/api/v1/calc/add"))
            .json(&json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(status_of(client().get(&mul)).await.0, 404);

    let calc = spawn_calc(&addresses);
    until(&mul, 200).await;
    let (_, v) = status_of(client().get(&mul)).await;
    assert_eq!(v["data"], json!({"total": 42}), "{v}");
    let (st, v) = status_of(
        client()
            .post(format!("{u}/api/v1/calc/add"))
            .json(&json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!((st, &v["data"]), (200, &json!({"total": 3})), "{v}");
    let (_, doc) = status_of(client().get(format!("{u}/api/v1/openapi.json"))).await;
    assert!(doc["paths"]["/api/v1/math/mul"]["get"].is_object());

    terminate(calc).await;
    until(&mul, 503).await;
    let (_, doc) = status_of(client().get(format!("{u}/api/v1/openapi.json"))).await;
    assert!(doc["paths"].get("/api/v1/math/mul").is_none());

    let calc = spawn_calc(&addresses);
    until(&mul, 200).await;
    terminate(calc).await;
    b.stop().await;
}
