//! The crate's error type.

use crate::wire::WireError;

/// Everything that can go wrong in the connections layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that are not the msgpack the wire layer expects, or a value that does not fit.
    #[error("codec: {0}")]
    Codec(String),
    /// An address that cannot be parsed or used for this side of the connection.
    #[error("address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The transport refused (bind in use, bad endpoint, ...).
    #[error("socket: {0}")]
    Socket(String),
    /// A request got no reply in time (after any retries).
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The peer answered with an error reply.
    #[error("remote error: {0}")]
    Remote(WireError),
    /// The connection is closed or its task has stopped.
    #[error("connection closed")]
    Closed,
    /// A message above the configured size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl From<sf_zmtp::Error> for Error {
    fn from(e: sf_zmtp::Error) -> Self {
        match e {
            sf_zmtp::Error::Closed => Error::Closed,
            e => Error::Socket(e.to_string()),
        }
    }
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
