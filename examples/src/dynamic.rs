//! `dynamic_echo`: a replyer whose args are whatever the caller sends.
//!
//! It answers `reply` with `{"echoed": <the args as they came>}`. The args are a
//! [`Dynamic`]: every msgpack kind is kept (bytes, and the maps in which Python 0.0.18 sends
//! numpy arrays, Decimals, sets and UUIDs), so a Python caller gets back exactly what it sent.
//! Through the bridge or `service-framework call` the same service takes and gives JSON.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::connections::Dynamic;
use service_framework::handle::Replyer;
use service_framework::{ServiceDef, ServiceError};

/// The reply.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct DynamicEchoed {
    /// The args, unchanged.
    pub echoed: Dynamic,
}

/// `dynamic_echo`'s in-connection.
pub const REPLY: Replyer<Dynamic, DynamicEchoed> = Replyer::new("reply");

/// The replyer.
pub fn replyer() -> ServiceDef {
    ServiceDef::new("dynamic_echo")
        .description("Echoes any args back, every msgpack kind kept, as {echoed}")
        .replyer(REPLY, |args, _ctx| async move {
            Ok::<_, ServiceError>(DynamicEchoed { echoed: args })
        })
}
