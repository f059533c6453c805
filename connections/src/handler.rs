//! Request handlers: how a replyer turns a request frame into a reply frame.
//!
//! The replyer only knows [`RawHandler`]: body bytes in, reply bytes out. [`typed`] builds one
//! from an async fn over serde types, doing the validation the original skipped: a missing or
//! mistyped argument becomes an `invalid_args` error reply naming the field, a frame that is
//! not an envelope becomes `malformed`, and a handler's own error becomes `handler_error`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{self, ErrorCode, Reply, Request, TraceParent, WireError, WorkflowId};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a replyer calls for each request body.
pub type RawHandler = Arc<dyn Fn(Bytes) -> BoxFuture<Outcome> + Send + Sync + 'static>;

/// A handler's answer: the encoded reply frame, and the error it carries if it is an error
/// reply (so the replyer can count and log it without decoding the frame again).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The encoded reply.
    pub frame: Vec<u8>,
    /// The error inside `frame`, if any.
    pub error: Option<WireError>,
}

impl Outcome {
    /// A successful reply frame.
    pub fn ok(frame: Vec<u8>) -> Self {
        Outcome { frame, error: None }
    }

    /// An error reply for `workflow_id`.
    pub fn err(workflow_id: WorkflowId, error: WireError) -> Self {
        Self::err_traced(workflow_id, None, error)
    }

    /// An error reply for `workflow_id` carrying the serving span's trace context.
    pub fn err_traced(
        workflow_id: WorkflowId,
        traceparent: Option<TraceParent>,
        error: WireError,
    ) -> Self {
        Outcome {
            frame: error_reply_traced(workflow_id, traceparent, error.clone()),
            error: Some(error),
        }
    }
}

/// What a typed handler learns about the request besides its args.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The request's workflow id (echoed on the reply).
    pub workflow_id: WorkflowId,
    /// The span serving this request: a child of the request's `traceparent` (same trace id,
    /// a new span id), or the root of a new trace when the request carried none or a bad one.
    /// The reply carries it.
    pub trace: TraceParent,
    /// The caller's span, from the request's `traceparent` (none from a Python 0.0.18 peer).
    pub parent: Option<TraceParent>,
}

/// Encodes an error reply for `workflow_id`.
pub fn error_reply(workflow_id: WorkflowId, error: WireError) -> Vec<u8> {
    error_reply_traced(workflow_id, None, error)
}

/// Encodes an error reply for `workflow_id` with the serving span's trace context.
pub fn error_reply_traced(
    workflow_id: WorkflowId,
    traceparent: Option<TraceParent>,
    error: WireError,
) -> Vec<u8> {
    let reply: Reply<()> = Reply {
        return_args: None,
        workflow_id,
        error: Some(error),
        traceparent,
    };
    // A unit reply with a string error always encodes.
    wire::encode(&reply).unwrap_or_default()
}

/// Describes why a request frame could not be decoded into `Request<A>`, as the error a
/// caller receives: `malformed` when the envelope is broken, `invalid_args` when only the
/// arguments are wrong.
pub fn decode_failure(body: &[u8], detail: String) -> (WorkflowId, WireError) {
    let (workflow_id, envelope_ok) = wire::salvage_workflow_id(body);
    let error = if envelope_ok {
        WireError::new(
            ErrorCode::InvalidArgs,
            format!("invalid args: {}", clean(&detail)),
        )
    } else {
        WireError::new(
            ErrorCode::Malformed,
            format!(
                "malformed request: expected a msgpack map {{args, workflow_id}}: {}",
                clean(&detail)
            ),
        )
    };
    (workflow_id, error)
}

fn clean(detail: &str) -> &str {
    detail.strip_prefix("codec: ").unwrap_or(detail)
}

/// Builds a [`RawHandler`] from an async fn over typed args and result.
///
/// `A` is decoded from `args` (unknown keys are rejected only if `A` says
/// `#[serde(deny_unknown_fields)]`); `R` is encoded as `return_args`.
pub fn typed<A, R, F, Fut>(f: F) -> RawHandler
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(A, RequestMeta) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, WireError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |body: Bytes| {
        let f = f.clone();
        Box::pin(async move {
            let request: Request<A> = match wire::decode_with_path(&body) {
                Ok(r) => r,
                Err(e) => {
                    let (id, err) = decode_failure(&body, e.to_string());
                    return Outcome::err(id, err);
                }
            };
            let workflow_id = request.workflow_id.clone();
            let trace = request
                .traceparent
                .map_or_else(TraceParent::new_root, |parent| parent.child());
            // The reply carries the serving span to a caller that sent a trace context; one
            // that sent none (a Python 0.0.18 peer) gets the original's bytes.
            let reply_trace = request.traceparent.map(|_| trace);
            let meta = RequestMeta {
                workflow_id: request.workflow_id,
                trace,
                parent: request.traceparent,
            };
            match f(request.args, meta).await {
                Ok(ret) => {
                    let reply = Reply {
                        return_args: Some(ret),
                        workflow_id: workflow_id.clone(),
                        error: None,
                        traceparent: reply_trace,
                    };
                    match wire::encode(&reply) {
                        Ok(bytes) => Outcome::ok(bytes),
                        Err(e) => Outcome::err_traced(
                            workflow_id,
                            reply_trace,
                            WireError::new(
                                ErrorCode::InvalidReturn,
                                format!("cannot encode the reply: {e}"),
                            ),
                        ),
                    }
                }
                Err(err) => Outcome::err_traced(workflow_id, reply_trace, err),
            }
        })
    })
}
