//! Finished spans handed to an exporter (the `sf-otel` crate sends them over OTLP).
//!
//! Nothing is recorded until a sink is installed, once per process, with [`set_sink`]; until
//! then [`enabled`] is one atomic load and no clock is read. The spans are the framework's own
//! W3C spans (a request served by a replyer, a message handled by a subscriber or puller, an
//! HTTP request served by the bridge): their ids are the ones the wire carries, so what an
//! exporter sends lines up with the `traceparent` every hop saw.

use std::sync::OnceLock;
use std::time::SystemTime;

use crate::wire::TraceParent;

/// What kind of work a span is, as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request served (replyer, HTTP route).
    Server,
    /// A message handled (subscriber, puller).
    Consumer,
}

/// One finished unit of work.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// `service.connection`, or `METHOD /route` at the bridge.
    pub name: String,
    /// Server or consumer.
    pub kind: SpanKind,
    /// The span's own ids (the trace id it shares with its parent).
    pub trace: TraceParent,
    /// The span it was a child of: the caller's, from the message's `traceparent`.
    pub parent: Option<TraceParent>,
    /// The service that did the work (the exporter's `service.name` when it has none).
    pub service: String,
    /// When the work started and ended.
    pub start: SystemTime,
    /// When the work ended.
    pub end: SystemTime,
    /// The failure, when it failed.
    pub error: Option<String>,
    /// More attributes (`messaging.destination.name`, `http.response.status_code`, ...).
    pub attributes: Vec<(&'static str, String)>,
}

type Sink = Box<dyn Fn(FinishedSpan) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the process's span sink. Only the first call installs; later ones return false.
pub fn set_sink(sink: impl Fn(FinishedSpan) + Send + Sync + 'static) -> bool {
    SINK.set(Box::new(sink)).is_ok()
}

/// Whether spans are recorded at all (a sink is installed).
#[inline]
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Hands a finished span to the sink, if there is one.
pub fn record(span: FinishedSpan) {
    if let Some(sink) = SINK.get() {
        sink(span);
    }
}
