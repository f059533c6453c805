//! The service framework's own ZMTP 3.1 transport, interoperable with libzmq 4.3.
//!
//! Why the project carries its own (each defect of the `zeromq` 0.7 crate it replaces has a
//! test in `tests/faults.rs`): a hostile frame header must not be able to crash a service, a
//! slow subscriber must cost only its own bounded queue, dead peers must be noticed
//! (heartbeats), every connecting socket must reconnect, and the queues, limits and linger
//! must be options.
//!
//! # Layout
//! Bytes -> frames -> connections -> sockets, one module per step:
//! - [`wire`]: the greeting, frames and commands, as pure parsers and encoders (no I/O); every
//!   limit is checked on a frame header before anything is buffered.
//! - `handshake`: greetings, the NULL mechanism's READY exchange, the socket-type check.
//! - `curve`: the CURVE mechanism (RFC 26): its handshake, and the MESSAGE boxes every frame
//!   travels in after it; [`security`] holds its keys, the authorizer of client keys and
//!   libzmq's certificate files, [`z85`] the key encoding (RFC 32).
//! - `engine`: one connection: reader (frames -> messages, PING/PONG, subscriptions,
//!   heartbeat timeout) and writer (batched, vectored for large bodies, linger on close);
//!   `ending` tells both when the connection ends (socket closing, connection dropped).
//! - `link`: the accept loop (connection limit, no spinning at the descriptor limit) and the
//!   reconnect loop (bounded, jittered backoff).
//! - `core`: the peers of one socket, each with its own bounded queue, and the routing rules
//!   of every kind (RFC 28, 29, 30).
//! - [`socket`]: the handles: [`RouterSocket`], [`DealerSocket`], [`PubSocket`],
//!   [`XPubSocket`], [`SubSocket`], [`XSubSocket`], [`PushSocket`], [`PullSocket`].
//!
//! # Defaults
//! See [`SocketOptions`]: 1,000 messages queued per peer, 64 MiB per message, a 10 s
//! handshake deadline, heartbeats every 1 s with a 5 s timeout, reconnect from 100 ms up to
//! 2 s, 1 s linger, 4,096 connections per bound socket.

mod core;
mod curve;
mod ending;
pub mod endpoint;
mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod link;
pub mod message;
pub mod monitor;
pub mod options;
pub mod security;
pub mod socket;
mod transport;
pub mod wire;
pub mod z85;

pub use endpoint::Endpoint;
pub use error::{Error, Result};
pub use handshake::Mechanism;
pub use message::Message;
pub use monitor::{Event, PeerId, SocketStats};
pub use options::{Heartbeat, SocketOptions, SocketType};
pub use security::{Authorizer, KeyPair, PublicKey, SecretKey, Security};
pub use socket::{
    DealerSender, DealerSocket, PeerGauge, PubSocket, PullSocket, PushSocket, Receiver,
    RouterSender, RouterSocket, SubSocket, XPubSocket, XSubSocket,
};
pub use wire::Limits;
