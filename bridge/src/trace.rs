//! W3C trace context at the edge: every HTTP request is served in a span of its own, a child
//! of the request's `traceparent` header when it has one valid one, or the root of a new
//! trace. Bus calls made while serving it carry that span as their parent (the envelope's
//! `traceparent`), and the response returns it in a `traceparent` header.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
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
    let span = span_for(req.headers());
    let mut response = service_framework::in_trace(span, next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&span.to_string()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    response
}

/// The trace context a bus call carries: the serving request's span, or a new trace for a
/// call made outside any request (a plugin's background task).
pub(crate) fn for_call() -> TraceParent {
    service_framework::current_trace().unwrap_or_else(TraceParent::new_root)
}
