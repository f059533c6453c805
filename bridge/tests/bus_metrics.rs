//! Bus services' stats as Prometheus series: on the bridge's `/metrics` (`[metrics]`) and
//! from the standalone exporter process (`service-framework-metrics`), read by a real
//! OpenMetrics parser, with counters that moved by exactly what the test sent.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::openmetrics::{parse, scrape, value};
use common::{settings, start};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_framework::prelude::*;
use service_framework::testing::TestService;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Sum {
    total: i64,
}

const ADD: Replyer<Add, Sum> = Replyer::new("add");

/// 4 good requests and 1 failing one, answered by a running service.
async fn adder_with_traffic() -> TestService {
    let def = ServiceDef::new("adder")
        .version("2.0.0")
        .stats_data(|| {
            let mut m = serde_json::Map::new();
            m.insert("queue_depth".into(), json!(7));
            m
        })
        .replyer(ADD, |args, _ctx| async move {
            if args.a < 0 {
                return Err(ServiceError::new("negative a"));
            }
            Ok(Sum {
                total: args.a + args.b,
            })
        });
    let svc = TestService::start(def).await.expect("the service starts");
    for a in 0..4 {
        svc.call(&ADD, &Add { a, b: 1 }).await.unwrap();
    }
    svc.call(&ADD, &Add { a: -1, b: 1 }).await.unwrap_err();
    svc
}

/// A loopback address where nothing listens.
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("tcp://{a}")
}

/// The series every scrape must carry for the adder (and a dead endpoint).
fn check_adder_series(text: &str, control: &str, dead: &str) {
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let samples = parse(text);
    let add = [
        ("service", "adder"),
        ("connection", "add"),
        ("kind", "replyer"),
    ];
    assert_eq!(
        value(&samples, "sf_connection_requests_total", &add),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, "sf_connection_errors_total", &add),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&samples, "sf_connection_in_flight", &add), Some(0.0));
    assert!(value(&samples, "sf_connection_processing_seconds_total", &add).unwrap() > 0.0);
    assert_eq!(
        value(&samples, "sf_service_up", &[("address", control)]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "sf_service_up", &[("address", dead)]),
        Some(0.0),
        "a dead endpoint is a 0, not a missing series"
    );
    assert_eq!(
        value(
            &samples,
            "sf_service_info",
            &[("service", "adder"), ("version", "2.0.0")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "sf_service_data",
            &[("service", "adder"), ("key", "queue_depth")]
        ),
        Some(7.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_serves_the_stats_of_configured_bus_services() {
    let svc = adder_with_traffic().await;
    let control = svc.control().expect("a control endpoint").to_owned();
    let dead = dead_address();
    let mut s = settings(&["echo"], &[]);
    s.metrics.control = vec![control.clone(), dead.clone()];
    s.metrics.timeout_s = 0.5;
    let bridge = start(s, vec![]).await;
    let url = bridge.url();
    let asked = Instant::now();
    let text = scrape(&format!("{url}/metrics")).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "a dead service costs a scrape at most its timeout"
    );
    check_adder_series(&text, &control, &dead);
    // The bridge's own series are still there, in the same document.
    assert!(text.contains("sf_bridge_http_requests_in_flight"), "{text}");

    bridge.stop().await;
    svc.stop().await.unwrap();
}

/// Kills the exporter if the test fails before it stops it.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_exporter_serves_the_same_series_and_stops_on_sigterm() {
    let svc = adder_with_traffic().await;
    let control = svc.control().expect("a control endpoint").to_owned();
    let dead = dead_address();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_service-framework-metrics"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--timeout",
                "0.5",
                &control,
                &dead,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the exporter starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("the exporter says where it serves")
        .unwrap()
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("metrics: serving ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    check_adder_series(&scrape(&url).await, &control, &dead);

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the exporter did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    svc.stop().await.unwrap();
}

#[test]
fn the_exporter_refuses_a_command_line_with_nothing_to_ask() {
    let out = Command::new(env!("CARGO_BIN_EXE_service-framework-metrics"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("control addresses"), "{err}");
}
