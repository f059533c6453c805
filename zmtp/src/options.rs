//! Socket kinds and the options every socket takes, with their defaults.

use std::time::Duration;

use bytes::Bytes;

use crate::security::Security;
use crate::wire::Limits;

/// The ZMTP socket types (RFC 23 names, sent as `Socket-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// Request (lock-step client). Only spoken by peers; accepted by ROUTER and REP... peers.
    Req,
    /// Reply (lock-step server). Only spoken by peers.
    Rep,
    /// Asynchronous request: load-balances out, fair-queues in.
    Dealer,
    /// Routes replies by peer id; every inbound message is prefixed with it.
    Router,
    /// Publish to subscribers, filtered by prefix per subscriber.
    Pub,
    /// Like PUB, and subscriptions are readable.
    XPub,
    /// Subscribe to topic prefixes.
    Sub,
    /// Like SUB, with subscriptions written as messages.
    XSub,
    /// Pipeline out: round-robin with back-pressure.
    Push,
    /// Pipeline in: fair-queued.
    Pull,
    /// Exclusive pair.
    Pair,
}

impl SocketType {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketType::Req => "REQ",
            SocketType::Rep => "REP",
            SocketType::Dealer => "DEALER",
            SocketType::Router => "ROUTER",
            SocketType::Pub => "PUB",
            SocketType::XPub => "XPUB",
            SocketType::Sub => "SUB",
            SocketType::XSub => "XSUB",
            SocketType::Push => "PUSH",
            SocketType::Pull => "PULL",
            SocketType::Pair => "PAIR",
        }
    }

    /// Parses a wire name (case-sensitive, as libzmq compares it).
    pub fn from_wire(name: &[u8]) -> Option<SocketType> {
        Some(match name {
            b"REQ" => SocketType::Req,
            b"REP" => SocketType::Rep,
            b"DEALER" => SocketType::Dealer,
            b"ROUTER" => SocketType::Router,
            b"PUB" => SocketType::Pub,
            b"XPUB" => SocketType::XPub,
            b"SUB" => SocketType::Sub,
            b"XSUB" => SocketType::XSub,
            b"PUSH" => SocketType::Push,
            b"PULL" => SocketType::Pull,
            b"PAIR" => SocketType::Pair,
            _ => return None,
        })
    }

    /// Whether a peer of type `peer` may talk to this type (RFC 23's table).
    pub fn compatible(self, peer: SocketType) -> bool {
        use SocketType::*;
        matches!(
            (self, peer),
            (Req, Rep | Router)
                | (Rep, Req | Dealer)
                | (Dealer, Rep | Dealer | Router)
                | (Router, Req | Dealer | Router)
                | (Pub | XPub, Sub | XSub)
                | (Sub | XSub, Pub | XPub)
                | (Push, Pull)
                | (Pull, Push)
                | (Pair, Pair)
        )
    }
}

/// Heartbeats (ZMTP 3.1 PING/PONG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often a PING is sent.
    pub interval: Duration,
    /// How long the peer may stay silent (no frame of any kind) before it is dropped. Checked
    /// every quarter of it, reading the clock at each check rather than at each read: a
    /// silent peer is dropped between 1x and 1.5x this after its last frame, never sooner.
    pub timeout: Duration,
    /// The TTL announced in each PING: how long the peer should wait for us.
    pub ttl: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(5),
        }
    }
}

/// Everything a socket can be tuned with. The defaults suit a service bus on a LAN.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketOptions {
    /// The routing id announced as `Identity` (DEALER, ROUTER, REQ); `None` lets the ROUTER
    /// peer pick one.
    pub identity: Option<Bytes>,
    /// Messages queued per peer for sending (default 1,000). At the mark PUB and XPUB drop
    /// for that peer only (counted), ROUTER drops (the send reports it), DEALER and PUSH wait.
    pub send_hwm: usize,
    /// Messages received and not yet read (default 1,000), all peers together; past it the
    /// socket stops reading from its peers (TCP pushes back).
    pub recv_hwm: usize,
    /// Largest message, frame count and command accepted from a peer.
    pub limits: Limits,
    /// How long a peer has to finish the greeting and READY (default 10 s).
    pub handshake_timeout: Duration,
    /// PING/PONG on every 3.1 connection (default on: 1 s interval, 5 s timeout).
    pub heartbeat: Option<Heartbeat>,
    /// First reconnect delay (default 100 ms); doubles per failure, jittered by +-25%.
    pub reconnect_interval: Duration,
    /// Largest reconnect delay (default 500 ms, so a restarted peer is reached again within
    /// about 0.6 s whatever the failures before: a follower that resyncs on reconnect then
    /// sees a restart within a second).
    pub reconnect_interval_max: Duration,
    /// How long one TCP connect may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long closing waits to flush what is queued (default 1 s).
    pub linger: Duration,
    /// Connections a binding socket holds at once (default 4,096); more wait in the backlog.
    pub max_connections: usize,
    /// TCP keepalive probes after this idle time (default 30 s), below the heartbeats.
    pub tcp_keepalive: Option<Duration>,
    /// NULL (the default) or CURVE, as server or client, for every connection of the socket.
    pub security: Security,
    /// XPUB: pass every peer's subscribe and cancel up, not only a topic's first subscribe
    /// and last cancel (libzmq's `ZMQ_XPUB_VERBOSER`). A bus proxy sets it so that the
    /// publishers behind it hear of each new subscriber. Default off.
    pub xpub_verbose: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            identity: None,
            send_hwm: 1000,
            recv_hwm: 1000,
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(10),
            heartbeat: Some(Heartbeat::default()),
            reconnect_interval: Duration::from_millis(100),
            reconnect_interval_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            max_connections: 4096,
            tcp_keepalive: Some(Duration::from_secs(30)),
            security: Security::Null,
            xpub_verbose: false,
        }
    }
}

impl SocketOptions {
    /// Sets the routing id.
    pub fn identity(mut self, id: impl Into<Bytes>) -> Self {
        self.identity = Some(id.into());
        self
    }
    /// Sets the per-peer send high-water mark.
    pub fn send_hwm(mut self, n: usize) -> Self {
        self.send_hwm = n.max(1);
        self
    }
    /// Sets the receive high-water mark.
    pub fn recv_hwm(mut self, n: usize) -> Self {
        self.recv_hwm = n.max(1);
        self
    }
    /// Sets the largest message accepted.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.limits.max_message_bytes = n;
        self
    }
    /// Sets the handshake deadline.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Sets (or with `None` turns off) heartbeats.
    pub fn heartbeat(mut self, hb: Option<Heartbeat>) -> Self {
        self.heartbeat = hb;
        self
    }
    /// Sets the reconnect delays.
    pub fn reconnect(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_interval = first;
        self.reconnect_interval_max = max.max(first);
        self
    }
    /// Sets the linger.
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }
    /// Sets the security mechanism ([`Security::curve_server`], [`Security::curve_client`]).
    pub fn security(mut self, s: Security) -> Self {
        self.security = s;
        self
    }
    /// XPUB: passes every peer's subscribe and cancel up (see [`SocketOptions::xpub_verbose`]).
    pub fn xpub_verbose(mut self, on: bool) -> Self {
        self.xpub_verbose = on;
        self
    }
    /// Sets the connection limit of a binding socket.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_is_symmetric_and_names_round_trip() {
        use SocketType::*;
        let all = [
            Req, Rep, Dealer, Router, Pub, XPub, Sub, XSub, Push, Pull, Pair,
        ];
        for a in all {
            assert_eq!(SocketType::from_wire(a.as_str().as_bytes()), Some(a));
            for b in all {
                assert_eq!(a.compatible(b), b.compatible(a), "{a:?} {b:?}");
            }
        }
        assert!(Router.compatible(Req));
        assert!(!Push.compatible(Sub));
        assert!(!Pub.compatible(Pub));
    }
}
