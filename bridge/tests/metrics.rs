//! `GET /metrics`: the bridge's HTTP metrics, read by a real Prometheus text parser (the
//! `prometheus_client` Python package's OpenMetrics parser, from the test venv), with the
//! values the test's own requests make.

mod common;

use common::openmetrics::{parse, scrape, value};
use common::{client, settings, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_with_latency_and_in_flight() {
    let bridge = start(settings(&["echo"], &[]), vec![]).await;
    let url = bridge.url();
    let c = client();
    for _ in 0..3 {
        let r = c
            .get(format!("{url}/api/v1/echo?message=hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c.get(format!("{url}/api/v1/echo")).send().await.unwrap();
    assert_eq!(r.status(), 422, "a missing query parameter");
    for path in ["/nowhere/1", "/nowhere/2"] {
        let r = c.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }

    let text = scrape(&format!("{url}/metrics")).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = parse(&text);

    let echo_ok = [
        ("method", "GET"),
        ("route", "/api/v1/echo"),
        ("status", "200"),
    ];
    assert_eq!(
        value(&samples, "sf_bridge_http_requests_total", &echo_ok),
        Some(3.0),
        "{text}"
    );
    let echo_bad = [
        ("method", "GET"),
        ("route", "/api/v1/echo"),
        ("status", "422"),
    ];
    assert_eq!(
        value(&samples, "sf_bridge_http_requests_total", &echo_bad),
        Some(1.0)
    );
    // Unmatched paths share one label value: a client cannot grow the series.
    let unmatched = [("route", "(unmatched)"), ("status", "404")];
    assert_eq!(
        value(&samples, "sf_bridge_http_requests_total", &unmatched),
        Some(2.0)
    );
    assert!(!text.contains("/nowhere"), "{text}");
    // The latency histogram: every echo request observed once, and in the +Inf bucket.
    let echo = [("method", "GET"), ("route", "/api/v1/echo")];
    assert_eq!(
        value(
            &samples,
            "sf_bridge_http_request_duration_seconds_count",
            &echo
        ),
        Some(4.0)
    );
    let inf = [("method", "GET"), ("route", "/api/v1/echo"), ("le", "+Inf")];
    assert_eq!(
        value(
            &samples,
            "sf_bridge_http_request_duration_seconds_bucket",
            &inf
        ),
        Some(4.0)
    );
    assert!(
        value(
            &samples,
            "sf_bridge_http_request_duration_seconds_sum",
            &echo
        )
        .unwrap()
            > 0.0
    );
    // The scrape itself is the one request in flight while the text is made.
    assert_eq!(
        value(&samples, "sf_bridge_http_requests_in_flight", &[]),
        Some(1.0)
    );

    // A second scrape counts the first.
    let text = scrape(&format!("{url}/metrics")).await;
    let samples = parse(&text);
    let scrape = [("method", "GET"), ("route", "/metrics"), ("status", "200")];
    assert_eq!(
        value(&samples, "sf_bridge_http_requests_total", &scrape),
        Some(1.0)
    );
    bridge.stop().await;
}
