//! Plugins declared with the attribute macros: `#[plugin(...)]` on an impl block and
//! `#[on_request(...)]` on its methods (crate `sf-bridge-macros`, re-exported here).
//!
//! ```
//! use sf_bridge::{model, plugin}; // #[on_request] is read by #[plugin]: no import
//!
//! #[model] // serde's and schemars' derives through sf-bridge: no direct dependency on them
//! pub struct Greeting { pub text: String }
//!
//! #[derive(Default)]
//! pub struct Greeter;
//!
//! #[plugin(name = "greeter", version = "1.0.0", author = "me")]
//! impl Greeter {
//!     /// `GET /api/v1/greet?name=bob[&greeting=..]`
//!     #[on_request("/greet")]
//!     async fn greet(&self, name: String, #[default("hello")] greeting: String) -> Greeting {
//!         Greeting { text: format!("{greeting}, {name}") }
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! The impl block belongs at module level (not in a function body): the `greeter_api`
//! module it makes refers to its items through `super`. In a function body, write
//! `#[plugin(..., typed = false)]` (no typed-call module).
//!
//! What the macros make: a [`Plugin`] built by [`PluginDef::plugin`] and registered when the
//! crate is linked (so `--load-plugins greeter` finds it in any bridge binary that links the
//! crate), and a module `greeter_api` with one [`RemoteApi`](crate::RemoteApi) per API for
//! typed [`PluginCtx::call_api`](crate::PluginCtx::call_api) calls.

use std::future::Future;
use std::pin::pin;

use futures::{Stream, StreamExt};

use crate::envelope::StreamEvent;
use crate::error::ApiError;
use crate::plugin::{EventStream, Plugin};

/// A type whose impl block carries `#[plugin(...)]`.
pub trait PluginDef {
    /// The plugin, as the builder API would declare it.
    fn plugin() -> Plugin;
}

/// One plugin linked into the program (`#[plugin]` submits one per impl block).
#[derive(Debug)]
pub struct Registration {
    make: fn() -> Plugin,
}

impl Registration {
    /// A registration (used by the macro).
    pub const fn new(make: fn() -> Plugin) -> Self {
        Registration { make }
    }
}

inventory::collect!(Registration);

/// Every plugin declared with `#[plugin]` in the crates linked into this program, sorted by
/// name. [`Bridge::new`](crate::Bridge::new) makes them available to `load_plugins`.
pub fn registered_plugins() -> Vec<Plugin> {
    let mut v: Vec<Plugin> = inventory::iter::<Registration>
        .into_iter()
        .map(|r| (r.make)())
        .collect();
    v.sort_by(|a, b| a.name().cmp(b.name()));
    v
}

/// What the macros' expansions use; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;

    use super::*;

    /// Converts a handler's error.
    pub fn api_error<E: Into<ApiError>>(e: E) -> ApiError {
        e.into()
    }

    /// Turns a handler's stream into the bridge's. The handler's stream may borrow the
    /// plugin's state, so it is driven by a task that owns the state and forwards each item
    /// through a channel; the task stops when the client goes away.
    pub fn stream_channel() -> (
        StreamSink,
        impl Future<Output = Result<EventStream, ApiError>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<StreamEvent, ApiError>>(16);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
        let out = async move {
            match ready_rx.await {
                Ok(Ok(())) => Ok(futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                })
                .boxed()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ApiError::internal(
                    "the stream handler stopped before its first event",
                )),
            }
        };
        (
            StreamSink {
                ready: Some(ready_tx),
                tx,
            },
            out,
        )
    }

    /// The sending side of [`stream_channel`].
    #[derive(Debug)]
    pub struct StreamSink {
        ready: Option<tokio::sync::oneshot::Sender<Result<(), ApiError>>>,
        tx: tokio::sync::mpsc::Sender<Result<StreamEvent, ApiError>>,
    }

    impl StreamSink {
        /// The handler failed before its stream began: answered with the error's status.
        pub fn fail(mut self, e: ApiError) {
            if let Some(r) = self.ready.take() {
                let _ = r.send(Err(e));
            }
        }

        /// Forwards every item, converted by `f`, until the stream ends or the client goes.
        pub async fn run<S, F>(mut self, s: S, f: F)
        where
            S: Stream,
            F: Fn(S::Item) -> Result<StreamEvent, ApiError>,
        {
            if let Some(r) = self.ready.take() {
                if r.send(Ok(())).is_err() {
                    return;
                }
            }
            let mut s = pin!(s);
            while let Some(item) = s.next().await {
                if self.tx.send(f(item)).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Runs a stream's driver.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(f: F) {
        tokio::spawn(f);
    }

    /// An item that is an event already.
    pub fn event(e: StreamEvent) -> Result<StreamEvent, ApiError> {
        Ok(e)
    }

    /// An item that is an event or an error.
    pub fn event_or_error<E: Into<ApiError>>(
        r: Result<StreamEvent, E>,
    ) -> Result<StreamEvent, ApiError> {
        r.map_err(Into::into)
    }

    /// An item that is a payload: a `message_chunk` event.
    pub fn chunk<T: serde::Serialize>(t: T) -> Result<StreamEvent, ApiError> {
        Ok(StreamEvent::chunk(t))
    }

    /// An item that is a payload or an error.
    pub fn chunk_or_error<T: serde::Serialize, E: Into<ApiError>>(
        r: Result<T, E>,
    ) -> Result<StreamEvent, ApiError> {
        r.map(StreamEvent::chunk).map_err(Into::into)
    }
}
