//! The framework's spans, exported over OTLP (OpenTelemetry's protocol, HTTP with JSON).
//!
//! The framework already gives every hop a W3C span: the bridge's HTTP request, each request
//! a replyer serves, each message a subscriber or puller handles, all carried on the wire as
//! `traceparent`. [`install`] hands those spans, with the very ids the wire carried, to an
//! OpenTelemetry batch exporter, so a collector (Jaeger, Tempo, the OpenTelemetry Collector)
//! shows one trace per HTTP request: bridge -> service -> service.
//!
//! A service opts in with the `otlp` feature of `service-framework` (the runtime then calls
//! [`install_from_env`] when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), or by calling [`install`]
//! itself. Each service name gets its own `service.name` resource.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use sf_connections::spans::{self, FinishedSpan, SpanKind};

/// The environment variable naming the collector (`http://host:4318`), as OpenTelemetry's
/// SDKs read it.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// At most this many service names get a provider of their own; spans of more share the
/// last one's.
const MAX_SERVICES: usize = 32;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The exporter could not be built (a bad endpoint).
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
    /// Another exporter is already installed in this process.
    #[error("a span exporter is already installed in this process")]
    AlreadyInstalled,
    /// Flushing or shutting down failed (the collector is unreachable, ...).
    #[error("OTLP export: {0}")]
    Export(String),
}

/// The installed exporter: flush it to be sure spans left; dropping it shuts the providers
/// down (flushing what is queued).
#[derive(Debug, Clone)]
pub struct OtelGuard {
    inner: Arc<Exporters>,
}

#[derive(Debug)]
struct Exporters {
    endpoint: String,
    tracers: Mutex<HashMap<String, (SdkTracerProvider, SdkTracer)>>,
}

impl Exporters {
    fn tracer(&self, service: &str) -> Option<SdkTracer> {
        let mut map = self.tracers.lock().ok()?;
        if let Some((_, t)) = map.get(service) {
            return Some(t.clone());
        }
        if map.len() >= MAX_SERVICES {
            return map.values().next().map(|(_, t)| t.clone());
        }
        match provider(&self.endpoint, service) {
            Ok(p) => {
                let t = p.tracer("service-framework");
                map.insert(service.to_owned(), (p, t.clone()));
                Some(t)
            }
            Err(e) => {
                tracing::warn!("no span export for {service}: {e}");
                None
            }
        }
    }

    fn providers(&self) -> Vec<SdkTracerProvider> {
        self.tracers
            .lock()
            .map(|m| m.values().map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }
}

fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Build(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// The traces URL for a collector's base address (`http://host:4318` ->
/// `http://host:4318/v1/traces`); a URL already ending in `/v1/traces` is kept.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Sends every span this process records to the collector at `endpoint` (its base address,
/// `http://host:4318`, or the full traces URL).
pub fn install(endpoint: &str) -> Result<OtelGuard, Error> {
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(Error::Build(format!(
            "{endpoint:?}: an OTLP/HTTP endpoint starts with http:// or https://"
        )));
    }
    let inner = Arc::new(Exporters {
        endpoint: traces_url(endpoint),
        tracers: Mutex::new(HashMap::new()),
    });
    let sink = inner.clone();
    if !spans::set_sink(move |span| export(&sink, span)) {
        return Err(Error::AlreadyInstalled);
    }
    Ok(OtelGuard { inner })
}

/// [`install`] with the endpoint of `OTEL_EXPORTER_OTLP_ENDPOINT`; `None` when it is not set.
pub fn install_from_env() -> Option<Result<OtelGuard, Error>> {
    let endpoint = std::env::var(ENDPOINT_ENV)
        .ok()
        .filter(|e| !e.trim().is_empty())?;
    Some(install(endpoint.trim()))
}

impl OtelGuard {
    /// Where the spans go (the traces URL).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Sends every span ended so far (blocking; call it from a blocking context).
    pub fn flush(&self) -> Result<(), Error> {
        for p in self.inner.providers() {
            p.force_flush().map_err(|e| Error::Export(e.to_string()))?;
        }
        Ok(())
    }

    /// Flushes and stops every exporter (blocking). Spans recorded later are dropped.
    pub fn shutdown(&self) -> Result<(), Error> {
        for p in self.inner.providers() {
            p.shutdown().map_err(|e| Error::Export(e.to_string()))?;
        }
        Ok(())
    }
}

fn export(exporters: &Exporters, span: FinishedSpan) {
    let Some(tracer) = exporters.tracer(&span.service) else {
        return;
    };
    let parent = match span.parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id()),
            SpanId::from_bytes(p.span_id()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let mut attributes: Vec<KeyValue> = span
        .attributes
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    attributes.push(KeyValue::new("sf.service", span.service));
    let mut builder = tracer
        .span_builder(span.name)
        .with_kind(match span.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Consumer => OtelKind::Consumer,
        })
        .with_trace_id(TraceId::from_bytes(span.trace.trace_id()))
        .with_span_id(SpanId::from_bytes(span.trace.span_id()))
        .with_start_time(span.start)
        .with_attributes(attributes);
    if let Some(e) = span.error {
        builder = builder.with_status(Status::error(e));
    }
    let mut s = tracer.build_with_context(builder, &parent);
    s.end_with_timestamp(span.end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_urls() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
