//! The transport's one error type.

use std::time::Duration;

use crate::wire::{CommandError, FrameError, GreetingError};

/// What can go wrong on a socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint that does not parse (`tcp://host:port`, `ipc://path`).
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operating-system error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The socket is closed.
    #[error("the socket is closed")]
    Closed,
    /// A ROUTER was asked to send to a peer it does not have.
    #[error("no peer with this routing id is connected")]
    Unroutable,
    /// A ROUTER peer's queue is at its high-water mark; the message was dropped.
    #[error("the peer's send queue is full (high-water mark {0})")]
    Full(usize),
    /// An empty message, or one without the frames this socket kind needs.
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    /// The peer broke the greeting.
    #[error("greeting: {0}")]
    Greeting(#[from] GreetingError),
    /// The peer sent a bad frame.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer sent a bad command.
    #[error("command: {0}")]
    Command(#[from] CommandError),
    /// The handshake broke a rule (wrong mechanism, incompatible socket type, ...).
    #[error("handshake: {0}")]
    Handshake(String),
    /// Security refused the connection: a peer of another mechanism (a NULL peer against a
    /// CURVE socket), a CURVE peer with other keys, a box that does not open.
    #[error("security: {0}")]
    Security(String),
    /// A CURVE client whose long-term public key (Z85) the server does not authorize.
    #[error("security: the client key {0} is not authorized")]
    Unauthorized(String),
    /// The peer refused us with an ERROR command.
    #[error("the peer refused the connection: {0}")]
    Refused(String),
    /// The handshake did not finish in time.
    #[error("the handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer sent nothing within the heartbeat timeout.
    #[error("the peer was silent for {0:?} (heartbeat timeout)")]
    HeartbeatTimeout(Duration),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
}

impl Error {
    /// Whether this is a security refusal (counted in `SocketStats::auth_failures`).
    pub fn is_security(&self) -> bool {
        matches!(self, Error::Security(_) | Error::Unauthorized(_))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The transport's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
