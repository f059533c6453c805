//! `install_from_env`, the call the `otlp` feature makes in every service binary and in the
//! bridge: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a span recorded by the framework reaches
//! the collector there (a bare HTTP listener in this test), as OTLP/HTTP JSON.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use sf_connections::spans::{record, FinishedSpan, SpanKind};
use sf_connections::TraceParent;

/// Accepts connections and sends each request's path and body down `tx`, answering 200.
fn collector() -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                let lower = header.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let _ = tx.send((path, String::from_utf8_lossy(&body).into_owned()));
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
        }
    });
    (url, rx)
}

#[test]
fn the_environment_names_the_collector_and_a_recorded_span_reaches_it() {
    let (url, rx) = collector();
    std::env::set_var(sf_otel::ENDPOINT_ENV, &url);
    let guard = sf_otel::install_from_env()
        .expect("the variable is set")
        .expect("the exporter installs");
    assert_eq!(guard.endpoint(), format!("{url}/v1/traces"));
    // A second exporter in one process is refused, naming why.
    assert!(matches!(
        sf_otel::install(&url),
        Err(sf_otel::Error::AlreadyInstalled)
    ));

    let parent = TraceParent::new_root();
    let span = parent.child();
    let now = SystemTime::now();
    record(FinishedSpan {
        name: "svc.reply".into(),
        kind: SpanKind::Server,
        trace: span,
        parent: Some(parent),
        service: "svc".into(),
        start: now,
        end: now + Duration::from_millis(3),
        error: Some("boom".into()),
        attributes: vec![("messaging.destination.name", "reply".into())],
    });
    guard.flush().expect("the collector takes the span");
    let (path, body) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the collector got a request");
    assert_eq!(path, "/v1/traces");
    let v: serde_json::Value = serde_json::from_str(&body).expect("OTLP JSON");
    let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(s["name"], "svc.reply", "{body}");
    assert_eq!(
        s["traceId"].as_str().unwrap().to_ascii_lowercase(),
        span.trace_id_hex().to_string()
    );
    assert_eq!(
        s["parentSpanId"].as_str().unwrap().to_ascii_lowercase(),
        parent.to_string().split('-').nth(2).unwrap()
    );
    assert_eq!(s["status"]["code"], 2, "an error status: {body}");
    let service = &v["resourceSpans"][0]["resource"]["attributes"];
    assert!(service.to_string().contains("\"svc\""), "{body}");
    guard.shutdown().unwrap();
}
