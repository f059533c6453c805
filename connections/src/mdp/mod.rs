//! Majordomo (MDP 0.2, rfc.zeromq.org spec 18): a broker that clients and workers meet at,
//! and the framework's replyers as MDP workers.
//!
//! - [`proto`]: the commands as frames, parsed and built with no I/O (shared by the broker,
//!   the worker, and any MDP client: a requester calling through a broker sends
//!   [`proto::client_request`] on a DEALER and reads [`proto::parse_client_reply`]).
//! - [`broker`]: the broker's state machine ([`BrokerCore`]), pure and unit-tested.
//! - [`server`]: [`Broker`], that state machine on one ROUTER socket (`service-framework -s
//!   broker` runs it), and its front-ends ([`Frontend`]): endpoints bound for one service
//!   where plain REQ/DEALER requesters (a Python `service_framework` requester) call it
//!   without speaking MDP.
//! - [`worker`]: a framework replyer served through a broker, as MDP workers (an addresses
//!   entry `{"broker": "host:port", "service": "name"}` instead of `{"replyer": ...}`).
//!
//! Any MDP 0.2 client or worker works with the broker, not only the framework's:
//! `tests/tests/mdp.rs` proves it with a client and a worker written in Python from the spec.

pub mod broker;
pub mod proto;
pub mod server;
pub mod worker;

pub use broker::{BrokerCore, BrokerOptions};
pub use proto::{BrokerStatus, ClientReply, ProtoError, ToBroker, ToWorker};
pub use server::{Broker, Frontend};
pub use worker::{RegisteredHook, RequestFilter, WorkerOptions};
