//! What a socket reports about itself: events for a watcher, counters, and rate-limited logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A connection's id within its socket, unique for the socket's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// A connection event. Delivered to every monitor that has room; a monitor that does not keep
/// up misses events (counted in [`SocketStats::events_missed`]) and never slows the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The socket is bound and accepting on this endpoint.
    Listening {
        /// The endpoint actually bound.
        endpoint: String,
    },
    /// An accepted connection finished its handshake.
    Accepted {
        /// Its id.
        peer: PeerId,
        /// The remote address.
        addr: String,
    },
    /// An outgoing connection finished its handshake.
    Connected {
        /// Its id.
        peer: PeerId,
        /// The endpoint connected to.
        endpoint: String,
    },
    /// PUB, XPUB: a peer's subscription to `topic` is in place (messages sent from now on
    /// that match reach it).
    Subscribed {
        /// Its id.
        peer: PeerId,
        /// The topic prefix.
        topic: bytes::Bytes,
    },
    /// A connection that had finished its handshake ended.
    Disconnected {
        /// Its id.
        peer: PeerId,
        /// The remote address or endpoint.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A connection failed before or during the handshake.
    HandshakeFailed {
        /// The remote address or endpoint.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Counters a socket keeps about its connections.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub handshakes: AtomicU64,
    pub disconnects: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub crypto_failures: AtomicU64,
    pub limit_violations: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    pub dropped: AtomicU64,
    pub accept_backoffs: AtomicU64,
    pub reconnects: AtomicU64,
    pub events_missed: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SocketStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SocketStats {
            handshakes: g(&self.handshakes),
            disconnects: g(&self.disconnects),
            handshake_failures: g(&self.handshake_failures),
            auth_failures: g(&self.auth_failures),
            crypto_failures: g(&self.crypto_failures),
            limit_violations: g(&self.limit_violations),
            protocol_errors: g(&self.protocol_errors),
            heartbeat_timeouts: g(&self.heartbeat_timeouts),
            dropped: g(&self.dropped),
            accept_backoffs: g(&self.accept_backoffs),
            reconnects: g(&self.reconnects),
            events_missed: g(&self.events_missed),
        }
    }
}

/// A snapshot of a socket's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStats {
    /// Connections that finished their handshake.
    pub handshakes: u64,
    /// Handshaken connections that ended.
    pub disconnects: u64,
    /// Connections that failed the handshake (timeout, bad greeting, wrong type, ...).
    pub handshake_failures: u64,
    /// Of those, the ones security refused: a peer of another mechanism (NULL against CURVE),
    /// another server key, a client key not authorized, a handshake box that did not open, or
    /// (as a client) a server that refused our key.
    pub auth_failures: u64,
    /// CURVE connections dropped after the handshake for a MESSAGE box that did not open
    /// (tampered) or whose nonce was not above the last (replayed, reordered).
    pub crypto_failures: u64,
    /// Connections dropped for a frame or message past the limits.
    pub limit_violations: u64,
    /// Connections dropped for breaking the protocol after the handshake.
    pub protocol_errors: u64,
    /// Connections dropped after the heartbeat timeout.
    pub heartbeat_timeouts: u64,
    /// Messages dropped at a peer's high-water mark (PUB, XPUB, ROUTER).
    pub dropped: u64,
    /// Times the accept loop paused for lack of descriptors or memory.
    pub accept_backoffs: u64,
    /// Reconnections of connecting sockets after a lost or failed connection.
    pub reconnects: u64,
    /// Events a full monitor did not get.
    pub events_missed: u64,
}

/// Lets through at most `burst` warnings per `window`; says how many were held back.
#[derive(Debug)]
pub(crate) struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed since the last line)` if a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().expect("rate limit lock");
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            *s = (now, 0, s.2);
        }
        if s.1 < self.burst {
            s.1 += 1;
            let held = s.2;
            s.2 = 0;
            Some(held)
        } else {
            s.2 += 1;
            None
        }
    }
}

/// Escapes a peer-supplied string for a log line (no control characters get through).
pub(crate) fn escape(s: &str) -> String {
    s.escape_debug().to_string()
}
