//! The two error types: [`Error`] stops the bridge from starting (config, plugins, upstreams);
//! [`ApiError`] is what one request answers with, always with its real HTTP status.

use axum::http::StatusCode;
use serde_json::{json, Value};

/// Why the bridge could not be set up. Every variant names the key, plugin or upstream at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// config.toml, config.json, .env, the environment or the command line is wrong.
    #[error("config: {0}")]
    Config(String),
    /// A plugin definition is inconsistent, or a plugin cannot start.
    #[error("plugin: {0}")]
    Plugin(String),
    /// A bus route cannot be set up.
    #[error("bus: {0}")]
    Bus(String),
    /// An upstream OpenAPI service cannot be read.
    #[error("proxy: {0}")]
    Proxy(String),
    /// The listener could not be bound, or the server failed.
    #[error("server: {0}")]
    Server(String),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed request: an HTTP status, a message safe to show the caller, and optional data
/// (the validation detail of a 422, an upstream's body).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status the response carries.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
    /// Extra detail, put in the envelope's `data`.
    pub data: Option<Value>,
}

impl ApiError {
    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            data: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500 with a message the plugin chose to show.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 422 with FastAPI's detail shape: `data = {"detail": [{"loc", "msg", "type"}]}`.
    pub fn validation(loc: Vec<Value>, msg: impl Into<String>, kind: &str) -> Self {
        let msg = msg.into();
        let where_ = loc
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("validation error at {where_}: {msg}"),
            data: Some(json!({"detail": [{"loc": loc, "msg": msg, "type": kind}]})),
        }
    }

    /// Attaches data.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::internal(e.to_string())
    }
}
