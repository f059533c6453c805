//! Microservices on a ZeroMQ bus, wire-compatible with Python `service_framework` 0.0.18.
//!
//! A service declares its config model, connection models and handlers with [`ServiceDef`];
//! the runtime reads addresses.json and config.json, binds and connects the sockets,
//! validates every message, and runs either `main` (a leading-edge service) or the service
//! loop until a signal, then stops gracefully.
//!
//! ```no_run
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use service_framework::{Ctx, ServiceDef, ServiceError};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Echo { to_echo: String }
//! #[derive(Serialize, JsonSchema)]
//! struct Echoed { echoed: String }
//!
//! fn service() -> ServiceDef {
//!     ServiceDef::new("echo_replyer").replyer("reply", |args: Echo, _ctx: Ctx| async move {
//!         Ok::<_, ServiceError>(Echoed { echoed: args.to_echo })
//!     })
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     service_framework::cli::main(service())
//! }
//! ```
//!
//! # The public surface
//! - At the root: [`ServiceDef`] (what a service declares), [`Ctx`] (what handlers and `main`
//!   use), [`Service`] (running one: `run_in_background`, `run_blocking` or `run(..).await`,
//!   each in main mode or not), [`AddressesFile`], [`Error`] and [`ServiceError`].
//! - [`prelude`]: the usual imports, typed handles included.
//! - [`handle`]: typed connection and state handles (`Replyer<A, R>`, `Publisher<T>`, ...).
//! - [`testing`]: the testkit, for users' own `#[tokio::test]`s.
//! - [`cli`]: a service binary's `main` ([`cli::main`]) and the command line's pieces.
//! - [`addresses`]: the addresses.json model; [`security`]: CURVE settings;
//!   [`logging`]: the logger; [`inspect`]: asking running services' control endpoints.
//!
//! Inside (private): the declaration model, config checking, the context, the runtime's
//! steps (prepare, wire, serve, drive, drain), embedding, and the control endpoint every
//! service answers on (`ping`, `info`, `stats`, `health`).

pub mod addresses;
pub mod cli;
pub mod handle;
pub mod inspect;
pub mod logging;
pub mod security;
pub mod testing;

mod config;
mod context;
mod control;
mod error;
mod model;
mod runtime;
mod service;

pub use addresses::AddressesFile;
pub use context::Ctx;
pub use error::{Error, Result, ServiceError};
pub use logging::{current_trace, current_workflow_id, get_logger, in_trace, in_workflow};
pub use model::{
    ConnectionKind, ConnectionModel, ConnectionModels, Model, Models, ServiceDef, StateKind,
    StateModel, StateModels,
};
pub use runtime::{Ready, StopReason};
pub use service::{Service, ServiceHandle};
pub use sf_states::StateView;

/// Everything a service usually needs: `use service_framework::prelude::*;`.
pub mod prelude {
    pub use crate::handle::{
        DeltaStateIn, DeltaStateOut, ExternalTarget, FullStateIn, FullStateOut, Publisher, Puller,
        Pusher, Replyer, Requester, Subscriber,
    };
    pub use crate::{Ctx, ServiceDef, ServiceError};
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
    pub use sf_connections::Dynamic;
}

/// Re-exported so services need not depend on them directly.
pub use {
    schemars, serde, serde_json, sf_connections as connections, sf_states as states, tracing,
};

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
