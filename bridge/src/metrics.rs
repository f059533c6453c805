//! `GET /metrics`: the bridge's own HTTP metrics in the OpenMetrics text format (which
//! Prometheus scrapes), encoded by the `prometheus-client` crate.
//!
//! - `sf_bridge_http_requests_total{method, route, status}`: answered requests;
//! - `sf_bridge_http_request_duration_seconds{method, route}`: a latency histogram;
//! - `sf_bridge_http_requests_in_flight`: requests being served now.
//!
//! `route` is the matched route's template (`/api/v1/echo`, `/docs/{*rest}`), never the raw
//! path, so a client cannot grow the label set: anything no route matched (the proxy's
//! upstreams, a 404) is `route="(unmatched)"`.
//!
//! With `[metrics]` configured, the same page carries the bus services' stats
//! ([`crate::bus_metrics`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of a request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// The labels of a latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// The bridge's HTTP metrics and the registry that encodes them.
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    bus: Option<crate::bus_metrics::BusMetrics>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 100 us to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new(None)
    }
}

impl HttpMetrics {
    /// The HTTP metrics, and the bus services' stats when `bus` is given.
    pub fn new(bus: Option<crate::bus_metrics::BusMetrics>) -> Self {
        let mut registry = Registry::with_prefix("sf_bridge");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response's head, by method and route",
            latency.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served now",
            in_flight.clone(),
        );
        HttpMetrics {
            registry,
            requests,
            latency,
            in_flight,
            bus,
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub async fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        if let Err(e) = encode_registry(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        if let Some(bus) = &self.bus {
            out.push_str(&bus.encode().await);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// Counts every request: in flight while served, then its status and latency.
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    m.in_flight.inc();
    let response = next.run(req).await;
    m.in_flight.dec();
    m.latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`.
pub async fn serve(State(m): State<Arc<HttpMetrics>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode().await,
    )
        .into_response()
}
