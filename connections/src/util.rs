//! Socket plumbing shared by the connections.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use std::sync::Arc;

use sf_zmtp::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stats::{Counter, Stats};

/// A map keyed by ids (request ids, publisher ids). Sequential or random ids spread as well
/// under a multiplicative hash as under SipHash, for a fraction of the cost.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Counts the peers the transport refused for security (it logs each with its address and
/// key, rate-limited): spawned only for CURVE sockets, so a NULL connection costs nothing.
pub(crate) fn count_auth_failures(
    security: &sf_zmtp::Security,
    events: impl FnOnce() -> mpsc::Receiver<Event>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    if matches!(security, sf_zmtp::Security::Null) {
        return;
    }
    let mut events = events();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv() => match ev {
                    Some(Event::HandshakeFailed { reason, .. }) if reason.starts_with("security:") || reason.starts_with("the peer refused") => {
                        stats.bump(Counter::AuthFailures);
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    });
}

/// Counts the reconnections a connecting end makes (the transport makes them by itself).
pub(crate) fn count_reconnects(
    mut events: mpsc::Receiver<Event>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv() => match ev {
                    Some(Event::Connected { .. }) => {
                        if !first {
                            stats.bump(Counter::Reconnects);
                        }
                        first = false;
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    });
}
