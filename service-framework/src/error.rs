//! Errors of the service layer.

use sf_connections::{ErrorCode, WireError};

/// Why a service could not be set up or run. Every variant names the file, key or
/// connection at fault, so the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// config.json, CLI extras or environment overrides do not fit the config model.
    #[error("config: {0}")]
    Config(String),
    /// addresses.json is missing, unreadable or does not fit the connection models.
    #[error("addresses: {0}")]
    Addresses(String),
    /// The service definition itself is inconsistent (a bug in the service).
    #[error("service definition: {0}")]
    Definition(String),
    /// A socket could not be set up.
    #[error("connection {name:?}: {source}")]
    Connection {
        /// The connection's name.
        name: String,
        /// What went wrong.
        source: sf_connections::Error,
    },
    /// A hook or `main` returned an error.
    #[error("{hook} failed: {error}")]
    Hook {
        /// Which hook.
        hook: &'static str,
        /// Its error.
        error: ServiceError,
    },
    /// The service stopped, but work was still running at the drain deadline (exit code 3):
    /// what, and how much.
    #[error("{0}")]
    DrainIncomplete(String),
    /// Anything else (I/O, a runtime that could not start).
    #[error("{0}")]
    Other(String),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a handler, hook or `main` returns on failure. It travels to a requester as the reply's
/// `error` (code and message), so say what went wrong in terms the caller understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    /// The wire code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl ServiceError {
    /// A handler failure (`handler_error`).
    pub fn new(message: impl Into<String>) -> Self {
        ServiceError {
            code: ErrorCode::HandlerError,
            message: message.into(),
        }
    }

    /// A failure with an explicit code.
    pub fn with_code(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
        }
    }

    /// Bad arguments (`invalid_args`): for checks a handler makes beyond the types.
    pub fn invalid_args(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::InvalidArgs, message)
    }

    /// Something unknown (`not_found`).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::NotFound, message)
    }

    /// A bug on this side (`internal`): nothing the caller did or can fix.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::Internal, message)
    }

    /// A call this service made on out-connection `conn` failed: the caller is told a
    /// dependency failed (`dependency_failed`), with the downstream's code and message, never
    /// the downstream's code as if it were the caller's own error.
    pub fn from_call(conn: &str, e: sf_connections::Error) -> Self {
        let why = match e {
            sf_connections::Error::Remote(w) => format!("{}: {}", w.code, w.message),
            sf_connections::Error::Timeout(_) => format!("timeout: {e}"),
            other => format!("unavailable: {other}"),
        };
        Self::with_code(
            ErrorCode::DependencyFailed,
            format!("{conn:?} failed: {why}"),
        )
    }
}

impl From<ServiceError> for WireError {
    fn from(e: ServiceError) -> Self {
        WireError::new(e.code, e.message)
    }
}

/// Errors of a connection the service used: a dependency's failure (see
/// [`ServiceError::from_call`]).
impl From<sf_connections::Error> for ServiceError {
    fn from(e: sf_connections::Error) -> Self {
        Self::from_call("a connection", e)
    }
}

impl From<String> for ServiceError {
    fn from(message: String) -> Self {
        ServiceError::new(message)
    }
}

impl From<&str> for ServiceError {
    fn from(message: &str) -> Self {
        ServiceError::new(message)
    }
}

/// A JSON conversion inside the service failed: the service's own bug, not the caller's args
/// (those are checked, naming the field, before the handler runs).
impl From<serde_json::Error> for ServiceError {
    fn from(e: serde_json::Error) -> Self {
        ServiceError::internal(e.to_string())
    }
}

impl From<std::io::Error> for ServiceError {
    fn from(e: std::io::Error) -> Self {
        ServiceError::new(e.to_string())
    }
}
