//! Full and delta state replication on top of `sf-connections`, wire-compatible with Python
//! `service_framework` 0.0.18 and without its defects.
//!
//! # Layout
//! - `full`: [`FullUpdateOut`] / [`FullUpdateIn`]: the out side publishes the whole state as
//!   `args`; the in side replaces its copy and notifies.
//! - `delta_out`: [`DeltaUpdateOut`] publishes `{current_num, is_snapshot, state}` and
//!   answers snapshot requests on a replyer with `{state, current_num}`; deltas are shallow
//!   (top-level keys, nil deletes a key).
//! - `follower`: [`DeltaUpdateIn`], the follower task (order, gaps, resync, views).
//! - `newcomers`: the unsolicited snapshots both out sides publish (for a new subscriber,
//!   and periodically), only after a quiet spell.
//! - here: the shared types ([`StateMap`], [`StateView`], [`DeltaArgs`], [`StateOptions`]).
//!
//! What differs from the original, on purpose:
//! - the out side owns `current_num` and records it, so its snapshot replies carry the true
//!   number (the original's always said 0, making every later delta look like a gap);
//! - the in side asks for a snapshot as soon as it starts (a late joiner converges without
//!   waiting for the next change), ignores old and duplicate numbers, and resyncs after a gap
//!   with a bounded, retried request in its own task while newer deltas are buffered, so the
//!   service loop never blocks;
//! - deleting an absent key is not an error; a message that is not a valid state update is a
//!   logged, counted rejection.
//!
//! Every in side exposes a consistent view ([`StateView`]: the map and its number, behind an
//! `Arc`) through a `watch` channel, so readers never see a half-applied update and handlers
//! can wait for changes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sf_connections::Security;
use sf_connections::{PublisherOptions, SubscriberOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use rmpv::Value;

/// A state: top-level keys to msgpack values.
pub type StateMap = BTreeMap<String, Value>;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be set up or used.
    #[error(transparent)]
    Connection(#[from] sf_connections::Error),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The args of a delta publish, as 0.0.18 sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaArgs {
    /// Position in the out side's sequence.
    pub current_num: i64,
    /// True: `state` replaces everything. False: `state` holds changed keys (nil deletes).
    pub is_snapshot: bool,
    /// The snapshot or the changed keys.
    pub state: StateMap,
}

/// The out side's answer to a snapshot request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// The whole state.
    pub state: StateMap,
    /// Its number.
    pub current_num: i64,
}

/// A consistent view of an in-state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateView {
    /// The state.
    pub state: Arc<StateMap>,
    /// Its number (`-1` before anything arrived; full-update states count updates).
    pub current_num: i64,
}

/// Applies a shallow delta: nil deletes (an absent key is fine), anything else sets.
pub fn apply_delta(state: &mut StateMap, delta: &StateMap) {
    for (k, v) in delta {
        if v.is_nil() {
            state.remove(k);
        } else {
            state.insert(k.clone(), v.clone());
        }
    }
}

/// Topic and bus settings shared by every state kind.
#[derive(Debug, Clone, Default)]
pub struct StateOptions {
    /// Topic for the publishes (empty: none).
    pub topic: String,
    /// Out side: connect the publisher to a bus proxy instead of binding.
    pub is_x_pub: bool,
    /// In side: bind the subscriber instead of connecting.
    pub is_binder: bool,
    /// In side (delta): how long one snapshot request may take (default 2 s).
    pub resync_timeout: Option<Duration>,
    /// Out side (delta): look this often whether the state changed since the last snapshot,
    /// or a subscriber missed messages at its queue's limit, and if so re-publish the state as
    /// a snapshot once the stream is quiet (default 1 s; `Some(Duration::ZERO)` turns it
    /// off). Without it, a lost final delta would go unnoticed until the next change.
    pub snapshot_interval: Option<Duration>,
    /// Out side: how long `start` waits after binding or connecting, as the original's
    /// `wait_after_creation_s` (default 0.15 s), so subscribers already trying to connect
    /// are in place before the first publish.
    pub wait_after_creation: Option<Duration>,
    /// Security of the state's sockets that bind: a CURVE server's (default NULL).
    pub bind_security: Security,
    /// Security of the state's sockets that connect: a CURVE client's (default NULL).
    pub connect_security: Security,
}

/// The original's `wait_after_creation_s` default.
pub const DEFAULT_WAIT_AFTER_CREATION: Duration = Duration::from_millis(150);

/// How long the out side must have published nothing before it publishes an unsolicited
/// snapshot (for a new subscriber, or the periodic one). A snapshot sent after a quiet spell
/// holds the newest state, so a follower that applies every snapshot whatever its number
/// (Python 0.0.18 does) can never be taken back by it: everything published before it is
/// older, everything after it follows on from it.
pub const QUIET_SPELL: Duration = Duration::from_millis(100);

impl StateOptions {
    /// Waits `wait_after_creation` (the out sides, after their sockets are up).
    async fn wait_after_creation(&self) {
        let wait = self
            .wait_after_creation
            .unwrap_or(DEFAULT_WAIT_AFTER_CREATION);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The security of a socket that binds (`true`) or connects.
    fn security_of(&self, binds: bool) -> Security {
        if binds {
            self.bind_security.clone()
        } else {
            self.connect_security.clone()
        }
    }

    /// The out side's publisher settings.
    fn publisher(&self) -> PublisherOptions {
        PublisherOptions {
            topic: self.topic.clone(),
            is_x_pub: self.is_x_pub,
            credit: None,
            security: self.security_of(!self.is_x_pub),
            ..Default::default()
        }
    }

    /// The in side's subscriber settings.
    fn subscriber(&self) -> SubscriberOptions {
        SubscriberOptions {
            topic: self.topic.clone(),
            is_binder: self.is_binder,
            security: self.security_of(self.is_binder),
            ..Default::default()
        }
    }
}

mod delta_out;
mod follower;
mod full;
mod newcomers;

pub use delta_out::DeltaUpdateOut;
pub use follower::DeltaUpdateIn;
pub use full::{FullUpdateIn, FullUpdateOut};

#[derive(Debug)]
struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The view of an in-state before anything arrived: empty, number -1.
fn empty_view() -> (watch::Sender<StateView>, watch::Receiver<StateView>) {
    watch::channel(StateView {
        state: Arc::default(),
        current_num: -1,
    })
}

/// Converts a typed value (a struct or map) into a state map.
pub fn to_state_map<T: Serialize + ?Sized>(value: &T) -> Result<StateMap, String> {
    let bytes = sf_connections::wire::encode(value).map_err(|e| e.to_string())?;
    sf_connections::wire::decode::<StateMap>(&bytes)
        .map_err(|_| "a state must be a map with string keys".to_owned())
}

/// Reads a state map as a typed value.
pub fn from_state_map<T: serde::de::DeserializeOwned>(state: &StateMap) -> Result<T, String> {
    let bytes = sf_connections::wire::encode(state).map_err(|e| e.to_string())?;
    sf_connections::wire::decode_with_path::<T>(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, Value)]) -> StateMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn deltas_set_and_delete_and_absent_delete_is_fine() {
        let mut s = m(&[("a", Value::from(1)), ("b", Value::from(2))]);
        apply_delta(
            &mut s,
            &m(&[
                ("a", Value::Nil),
                ("c", Value::from(3)),
                ("zzz", Value::Nil),
            ]),
        );
        assert_eq!(s, m(&[("b", Value::from(2)), ("c", Value::from(3))]));
    }
}
