//! External target: an out-connection that calls a local async function instead of a socket
//! (the original's `external_request`). Args are validated by decoding them into the
//! function's typed input, exactly as a replyer validates a request, so a service cannot tell
//! from the outside whether a target is local or remote.

use std::future::Future;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::handler::{typed, RawHandler, RequestMeta};
use crate::wire::{self, ErrorCode, Reply, Request, TraceParent, WireError, WorkflowId};

/// A callable target, cheap to clone.
#[derive(Clone)]
pub struct ExternalTarget {
    name: String,
    call: RawHandler,
}

impl std::fmt::Debug for ExternalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalTarget")
            .field("name", &self.name)
            .finish()
    }
}

impl ExternalTarget {
    /// Wraps `f` under `name` (used in errors and logs).
    pub fn new<A, R, F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A, RequestMeta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, WireError>> + Send + 'static,
    {
        ExternalTarget {
            name: name.into(),
            call: typed(f),
        }
    }

    /// Wraps an existing raw handler.
    pub fn from_raw(name: impl Into<String>, call: RawHandler) -> Self {
        ExternalTarget {
            name: name.into(),
            call,
        }
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the target with `args` (serialized and validated against its input type, as on
    /// the wire) and returns its decoded result.
    pub async fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
    ) -> Result<R> {
        self.call_traced(args, workflow_id, None).await
    }

    /// [`call`](Self::call) carrying the calling span's trace context.
    pub async fn call_traced<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
        traceparent: Option<TraceParent>,
    ) -> Result<R> {
        let body = wire::encode(&Request {
            args,
            workflow_id,
            traceparent,
        })?;
        // A panic becomes the `internal` error a replyer would answer, not a panic in the caller.
        let outcome = std::panic::AssertUnwindSafe((self.call)(body.into()))
            .catch_unwind()
            .await
            .map_err(|_| {
                tracing::error!(name = %self.name, "external target panicked");
                Error::Remote(WireError::new(
                    ErrorCode::Internal,
                    "the handler failed unexpectedly",
                ))
            })?;
        if let Some(e) = outcome.error {
            return Err(Error::Remote(e));
        }
        let reply: Reply<R> = wire::decode(&outcome.frame)?;
        match reply.return_args {
            Some(r) => Ok(r),
            None => wire::decode::<R>(&[0xc0])
                .map_err(|_| Error::Codec(format!("{} returned nothing", self.name))),
        }
    }
}
