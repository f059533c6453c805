//! The HTTP bridge: FrameX's plugin surface over plugins written in Rust, services on the
//! ZeroMQ bus and upstream OpenAPI services.
//!
//! Plain bus services never compile this crate (axum, reqwest, the docs assets): the
//! `service-framework` binary runs it as `service-framework -s bridge ...` by executing the
//! `service-framework-bridge` binary built here.
//!
//! ```text
//! service-framework -s bridge --port 8080 --load-builtin-plugins echo
//! curl 'http://127.0.0.1:8080/api/v1/echo?message=hi'
//! {"status":200,"message":"success","timestamp":"2026-01-01 12:00:00","data":"hi"}
//! ```
//!
//! # Layout
//! - [`declare`] - plugins declared with `#[plugin]` / `#[on_request]` / `#[model]`, and
//!   their registration when their crate is linked.
//! - [`plugin`] - what a plugin declares ([`Plugin`], [`PluginMetadata`], [`Api`] with FrameX's
//!   `on_request` options, typed query / body / result models).
//! - [`registry`] - the loaded routes and function APIs, `required_remote_apis` resolution and
//!   [`PluginCtx::call_plugin_api`].
//! - [`remote`] - plugins run on workers behind a Majordomo broker (`plugins.<name>.remote`,
//!   `--serve-plugins`): FrameX's `@remote()`, the bus way.
//! - [`envelope`] - the JSON envelope and server-sent events.
//! - [`auth`] - `auth.rules`.
//! - [`oauth`] - `auth.oauth`, the login in front of the docs pages.
//! - [`config`] - settings from config.toml, config.json, .env, the environment and the CLI.
//! - [`bus`] - replyers as routes, publisher topics as event streams.
//! - [`proxy`] - routes forwarded to upstream OpenAPI services.
//! - [`openapi`] - the OpenAPI 3.1 document.
//! - [`server`] - the axum router, docs pages, start and stop ([`Bridge`]).
//! - [`trace`] - the W3C `traceparent` of each request, carried on its bus calls and returned.
//! - [`echo`] - the built-in `echo` plugin.
//! - [`cli`] - the `service-framework-bridge` command line.

pub mod auth;
pub mod bus;
pub mod bus_metrics;
mod bus_services;
pub mod cli;
pub mod config;
pub mod declare;
pub mod echo;
pub mod envelope;
pub mod error;
pub mod exporter;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod plugin;
pub mod proxy;
pub mod registry;
pub mod remote;
pub mod server;
pub mod trace;

pub use config::Settings;
#[doc(hidden)]
pub use declare::__private;
pub use declare::{registered_plugins, PluginDef, Registration};
pub use envelope::{EventType, StreamEvent};
pub use error::{ApiError, Error, Result};
pub use plugin::{
    Api, CallType, EventStream, NoParams, Plugin, PluginMetadata, RemoteApi, TextChunk,
};
pub use registry::PluginCtx;
pub use server::{builtin_plugins, App, Bridge, RunningBridge};
/// The attribute macros (see [`declare`]).
pub use sf_bridge_macros::{model, on_request, plugin};

/// Every plugin path is under this prefix unless it opts out.
pub const API_PREFIX: &str = "/api/v1";

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Re-exported for plugin authors.
pub use {axum, schemars, serde, serde_json};
