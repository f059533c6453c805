//! The custom bridge binary (`framex-pair-bridge`: the stock command line with this crate's
//! plugins linked in) run through `service-framework -s`, by path and by name (found beside
//! `service-framework`), with FrameX's flags.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod common;
use common::{bridge_binary, service_framework};

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("the bridge answers");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Runs `service-framework -s <service>` and checks both plugins answer.
async fn run(sf: &Path, service: &str) {
    let dir = std::env::temp_dir().join(format!(
        "sf-framex-pair-{}-{}",
        std::process::id(),
        service.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[plugins.inventory]\nwarehouse = \"north\"\nlow_stock = 2\n",
    )
    .unwrap();
    let mut child = Command::new(sf)
        .args(["-s", service, "--port", "0", "--load-plugins", "inventory"])
        .args(["--load-plugins", "orders", "-cl", "WARNING"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("service-framework runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(u) = l.strip_prefix("bridge serving on ") {
                return u.trim().to_owned();
            }
        }
        panic!("the bridge exited without serving");
    })
    .await
    .expect("the bridge announces itself within 20 s");
    let (s, v) = get(&format!("{url}/api/v1/inventory/items?limit=1")).await;
    assert_eq!(
        (s, &v["data"]),
        (200, &json!([{"sku": "pear", "quantity": 2, "low": true}])),
        "{v}"
    );
    let (s, v) = get(&format!("{url}/api/v1/orders/low")).await;
    assert_eq!((s, &v["data"]), (200, &json!(["pear"])), "{v}");
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within 15 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn service_framework_runs_the_custom_bridge() {
    let sf = service_framework();
    let by_path = bridge_binary();
    run(&sf, by_path.to_str().expect("a UTF-8 path")).await;
    run(&sf, "framex-pair-bridge").await;
}
