//! Socket plumbing shared by the connections.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketEvent, SocketOptions};

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

/// The socket monitor's event stream.
pub(crate) type Monitor = futures::channel::mpsc::Receiver<SocketEvent>;

/// Builds a fresh socket and connects it to `endpoint`, retrying with backoff until it
/// succeeds or `stop` fires. Runs in a connection's own task: never on a path that answers.
pub(crate) async fn connect_until<S: Socket>(
    endpoint: &str,
    stop: &CancellationToken,
) -> Option<(S, Monitor)> {
    let mut backoff = Duration::from_millis(5);
    let mut attempts = 0u32;
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(Duration::from_secs(2));
        let mut socket = S::with_options(options);
        let monitor = socket.monitor();
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = socket.connect(endpoint) => match r {
                Ok(()) => return Some((socket, monitor)),
                Err(e) => {
                    attempts += 1;
                    if attempts == 5 {
                        tracing::warn!(endpoint, "still cannot connect, retrying: {e}");
                    } else {
                        tracing::debug!(endpoint, "connect failed, retrying: {e}");
                    }
                }
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
