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
//! # Layout
//! - [`model`]: what a service declares ([`ServiceDef`], connection kinds, hooks).
//! - [`config`] and [`addresses`]: the two files, checked with errors naming file and key.
//! - [`context`]: [`Ctx`], the original's `to_send` / `config` as typed methods.
//! - [`runtime`]: the lifecycle, main mode, the service loop, signals, graceful stop.
//! - [`service`]: embedding ([`Service`], background handles).
//! - [`cli`] and [`logging`]: the command line and the logger.
//! - [`control`] and [`inspect`]: the control endpoint every service answers on (`ping`,
//!   `info`, `stats`, `health`) and the CLI verbs that ask it (`ls`, `info`, `stats`).

pub mod addresses;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod error;
pub mod handle;
pub mod inspect;
pub mod logging;
pub mod model;
pub mod runtime;
pub mod security;
pub mod service;
pub mod testing;

pub use addresses::AddressesFile;
pub use context::Ctx;
pub use error::{Error, Result, ServiceError};
pub use logging::{current_trace, current_workflow_id, get_logger, in_trace, in_workflow};
pub use model::{
    ConnectionKind, ConnectionModel, ConnectionModels, Model, Models, ServiceDef, StateKind,
    StateModel, StateModels,
};
pub use runtime::{Ready, RunOptions, StopReason};
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
