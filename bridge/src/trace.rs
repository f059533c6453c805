//! W3C trace context at the edge: every HTTP request is served in a span of its own, a child
//! of the request's `traceparent` header when it has one valid one, or the root of a new
//! trace. Bus calls made while serving it carry that span as their parent (the envelope's
//! `traceparent`), and the response returns it in a `traceparent` header.

use std::time::SystemTime;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use service_framework::connections::spans::{self, FinishedSpan, SpanKind};
use service_framework::connections::TraceParent;

/// The header, as the W3C names it.
pub const TRACEPARENT: &str = "traceparent";

/// The request's trace context: one `traceparent` header with a valid version-00 value.
/// Several headers, a value that is not text or not a valid traceparent: none (a new trace
/// starts; the request itself is served as usual).
pub fn incoming(headers: &axum::http::HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceParent::parse(value.to_str().ok()?.trim())
}

/// The span a request is served in.
pub fn span_for(headers: &axum::http::HeaderMap) -> TraceParent {
    incoming(headers).map_or_else(TraceParent::new_root, |parent| parent.child())
}

/// The middleware: runs the request in its span (a task-local the bus routes read) and puts
/// the span's `traceparent` on the response, streams included.
pub(crate) async fn layer(req: Request, next: Next) -> Response {
    let parent = incoming(req.headers());
    let span = parent.map_or_else(TraceParent::new_root, |p| p.child());
    // With a span exporter installed (`sf-otel`), the request is one span: its name is the
    // matched route's template, never the raw path.
    let exported = spans::enabled().then(|| {
        let route = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
        (format!("{} {route}", req.method()), SystemTime::now())
    });
    let mut response = service_framework::in_trace(span, next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&span.to_string()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    if let Some((name, start)) = exported {
        let status = response.status();
        spans::record(FinishedSpan {
            name,
            kind: SpanKind::Server,
            trace: span,
            parent,
            service: "bridge".into(),
            start,
            end: SystemTime::now(),
            error: status.is_server_error().then(|| {
                status
                    .canonical_reason()
                    .unwrap_or("server error")
                    .to_owned()
            }),
            attributes: vec![("http.response.status_code", status.as_u16().to_string())],
        });
    }
    response
}

/// The trace context a bus call carries: the serving request's span, or a new trace for a
/// call made outside any request (a plugin's background task).
pub(crate) fn for_call() -> TraceParent {
    service_framework::current_trace().unwrap_or_else(TraceParent::new_root)
}
