//! Wire codec and ZeroMQ connections of the service framework.
//!
//! This is the only crate that touches sockets (through the project's transport, `sf-zmtp`).
//! Everything above it (states, the runtime, the HTTP bridge) speaks in addresses, typed
//! envelopes and connection handles.
//!
//! # Layout
//! - [`wire`]: bytes <-> envelopes, byte-compatible with Python `service_framework` 0.0.18
//!   (request, reply, publish with topic prefix, Decimal / set / UUID / ndarray maps).
//! - [`dynamic`]: [`Dynamic`], any value a peer sends kept as msgpack (bin included), with a
//!   JSON view.
//! - [`address`]: `"host:port"`, `tcp://`, `ipc://` and `{bind, connect}` addresses.
//! - [`handler`]: what a replyer runs for a request; typed handlers validate args.
//! - [`replyer`] (ROUTER) and [`requester`] (DEALER): request/reply that serves concurrently,
//!   times out, retries, matches replies by id and reconnects.
//! - [`publisher`] and [`subscriber`]: publish/subscribe with exact topics, sequence numbers
//!   that make loss visible, and an opt-in credit window that makes a stream lossless.
//! - [`pipeline`]: PUSH/PULL with back-pressure and fair distribution, and an opt-in acked
//!   mode (at-least-once, redelivery when a worker is lost).
//! - [`external`]: an out-connection that calls a local async function.
//! - [`proxy`]: the XSUB/XPUB bus proxy.
//! - [`mdp`]: the Majordomo (MDP 0.2) broker and its framing.
//! - [`stats`]: the counters every connection keeps.

pub mod address;
pub mod dynamic;
pub mod error;
pub mod external;
pub mod handler;
pub mod logline;
pub mod mdp;
pub mod pipeline;
pub mod proxy;
pub mod publisher;
pub mod replyer;
pub mod requester;
pub mod spans;
pub mod stats;
pub mod subscriber;
mod util;
pub mod wire;

pub use address::Address;
pub use dynamic::Dynamic;
pub use error::{Error, Result};
pub use external::ExternalTarget;
pub use handler::{typed, Outcome, RawHandler, RequestMeta};
pub use pipeline::{Ack, PipelineOptions, Puller, Pushed, Pusher};
pub use proxy::BusProxy;
pub use publisher::{CreditOptions, Publisher, PublisherOptions};
pub use replyer::{Drained, Replyer, ReplyerOptions};
pub use requester::{Requester, RequesterOptions};
pub use stats::{Counter, Stats};
pub use subscriber::{Delivery, PublisherProbe, Subscriber, SubscriberOptions};
pub use wire::{ErrorCode, TraceParent, WireError, WorkflowId};

/// A socket's live count of connected peers (see each connection's `peer_gauge`).
pub use sf_zmtp::PeerGauge;

/// The transport's security: keys, certificates, the authorizer of client keys, and the
/// [`Security`] every connection's options take.
pub use sf_zmtp::security;
pub use sf_zmtp::security::Security;
