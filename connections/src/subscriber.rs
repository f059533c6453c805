//! The receiving side of publish/subscribe.
//!
//! An XSUB socket underneath: the original's topic filter is the bytes of `msgpack(topic)`,
//! sent as the raw subscription message `0x01 + prefix`. The length header inside the
//! prefix makes the match exact, as in the original. The transport reconnects by itself
//! after a publisher restart and re-sends the subscription.
//!
//! Framework publishers number their messages; the subscriber counts gaps (`lost`) and old or
//! repeated numbers (`duplicates`) per publisher and logs them. In credit mode it also
//! acknowledges, upstream on the same connection, the last number the consumer has taken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use sf_zmtp::{Message, SocketOptions, XSubSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::publisher::{CreditMsg, CREDIT_TAG};
use crate::stats::{Counter, Stats};
use crate::util::IdMap;
use crate::wire::{self, Publish, WorkflowId};

/// Tuning for a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// Only messages published with exactly this topic (empty: everything).
    pub topic: String,
    /// Bind instead of connecting (publishers then connect to it).
    pub is_binder: bool,
    /// Credit window to ask framework publishers for (`None`: plain PUB/SUB).
    pub credit_window: Option<u64>,
    /// Frames larger than this are dropped and counted (default 16 MiB).
    pub max_message_bytes: usize,
    /// Messages buffered between the socket and the consumer (default 8192).
    pub buffer: usize,
    /// NULL (the default: what Python 0.0.18 speaks) or CURVE, for every connection of the
    /// socket; refused peers are counted in `auth_failures`.
    pub security: sf_zmtp::Security,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            topic: String::new(),
            is_binder: false,
            credit_window: None,
            max_message_bytes: 16 << 20,
            buffer: 8192,
            security: sf_zmtp::Security::Null,
        }
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The topic it was published under, if any.
    pub topic: Option<String>,
    /// Its workflow id.
    pub workflow_id: WorkflowId,
    /// Framework publishers only: sequence number and publisher id.
    pub seq: Option<(u64, u64)>,
    /// The envelope bytes (`{args, workflow_id, ...}`), for [`Delivery::decode`].
    pub body: Bytes,
}

impl Delivery {
    /// Decodes the envelope with typed args.
    pub fn decode<A: DeserializeOwned>(&self) -> Result<Publish<A>> {
        wire::decode(&self.body)
    }

    /// Decodes just the args.
    pub fn args<A: DeserializeOwned>(&self) -> Result<A> {
        Ok(self.decode::<A>()?.args)
    }
}

/// A subscription; [`Subscriber::next`] yields messages in arrival order.
#[derive(Debug)]
pub struct Subscriber {
    endpoint: String,
    rx: mpsc::Receiver<Delivery>,
    acks: Option<Acks>,
    stats: Arc<Stats>,
    connections: watch::Receiver<u64>,
    peers: sf_zmtp::PeerGauge,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Acks {
    tx: mpsc::UnboundedSender<(u64, u64)>,
    every: u64,
    taken: HashMap<u64, (u64, u64)>,
    last: Option<(u64, u64)>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Subscriber {
    /// Connects (or binds, with `is_binder`) to `address` and subscribes.
    pub async fn start(address: &Address, options: SubscriberOptions) -> Result<Subscriber> {
        let socket = XSubSocket::with_options(
            SocketOptions::default()
                .max_message_bytes(options.max_message_bytes.saturating_mul(2))
                .security(options.security.clone()),
        );
        let endpoint = if options.is_binder {
            let ep = address.bind_endpoint()?;
            socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind subscriber to {ep}: {e}")))?
        } else {
            // Returns at once: the transport connects (and reconnects) in the background, so
            // a subscriber never holds up the service that owns it.
            let ep = address.connect_endpoint()?;
            socket.connect(&ep)?;
            ep
        };
        let prefix = if options.topic.is_empty() {
            Vec::new()
        } else {
            wire::topic_prefix(&options.topic)
        };
        let sub_id: u64 = rand::random();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        crate::util::count_auth_failures(
            &options.security,
            || socket.monitor(),
            stats.clone(),
            stop.clone(),
        );
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let (acks, ack_rx) = match options.credit_window {
            Some(window) => {
                let (atx, arx) = mpsc::unbounded_channel();
                let acks = Acks {
                    tx: atx,
                    every: (window / 4).max(1),
                    taken: HashMap::new(),
                    last: None,
                };
                (Some(acks), Some((arx, window)))
            }
            None => (None, None),
        };
        let reader = Reader {
            topic: options.topic.clone(),
            prefix,
            max: options.max_message_bytes,
            stats: stats.clone(),
        };
        let (conn_tx, connections) = watch::channel(0u64);
        count_connections(socket.monitor(), conn_tx, stop.clone());
        let peers = socket.peer_gauge();
        tokio::spawn(reader.run(socket, tx, ack_rx, sub_id, stop.clone()));
        Ok(Subscriber {
            endpoint,
            rx,
            acks,
            stats,
            connections,
            peers,
            stop,
        })
    }

    /// The endpoint bound or connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// True when a message is already waiting (the next [`Subscriber::next`] will not wait).
    pub fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Connections established so far (outgoing, or accepted with `is_binder`), counted as
    /// their handshakes finish: `changed()` wakes on each one, so a follower can ask for what
    /// it missed while it was cut off (its subscription is re-sent on the new connection).
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connections.clone()
    }

    /// Publishers connected now, readable after the subscriber has moved into its consumer.
    pub fn peer_gauge(&self) -> sf_zmtp::PeerGauge {
        self.peers.clone()
    }

    /// Live counters (`lost` counts sequence gaps from framework publishers).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The next message; `None` once the subscriber is closed. In credit mode, taking a
    /// message acknowledges the one before it.
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(acks) = &mut self.acks {
            if let Some((pub_id, seq)) = acks.last.take() {
                let entry = acks.taken.entry(pub_id).or_insert((0, 0));
                entry.0 = seq;
                // Ack every quarter window, and whenever the consumer has caught up with
                // everything received: a publisher whose own window is smaller than ours
                // then never waits on an ack that would only come later.
                if seq >= entry.1 + acks.every || (seq > entry.1 && self.rx.is_empty()) {
                    entry.1 = seq;
                    let _ = acks.tx.send((pub_id, seq));
                }
            }
        }
        let d = self.rx.recv().await?;
        if let (Some(acks), Some(s)) = (&mut self.acks, d.seq) {
            let (seq, pub_id) = s;
            acks.last = Some((pub_id, seq));
        }
        Some(d)
    }

    /// Like [`Subscriber::next`] with a bound on the wait.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Delivery> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }
}

/// Counts finished handshakes into `tx`.
fn count_connections(
    mut events: mpsc::Receiver<sf_zmtp::Event>,
    tx: watch::Sender<u64>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv() => match ev { Some(ev) => ev, None => return },
            };
            if matches!(
                ev,
                sf_zmtp::Event::Connected { .. } | sf_zmtp::Event::Accepted { .. }
            ) {
                tx.send_modify(|n| *n += 1);
            }
        }
    });
}

/// Whether a publisher is there, without receiving from it: one connection that subscribes
/// to nothing (so nothing is sent on it), reconnecting as every connection does. For a
/// publisher with no control endpoint to ask, such as a Python 0.0.18 service, its
/// connection is its liveness: the connection ends when its process does.
#[derive(Debug)]
pub struct PublisherProbe {
    up: watch::Receiver<usize>,
    stop: CancellationToken,
    _socket: XSubSocket,
}

impl Drop for PublisherProbe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PublisherProbe {
    /// Connects to the publisher at `address` (its connect side: a publisher binds).
    pub fn start(address: &Address, security: sf_zmtp::Security) -> Result<PublisherProbe> {
        let socket = XSubSocket::with_options(SocketOptions::default().security(security));
        // Watching before connecting: the first connection is not missed.
        let mut events = socket.monitor();
        let ep = address.connect_endpoint()?;
        socket.connect(&ep)?;
        let (tx, up) = watch::channel(0usize);
        let stop = CancellationToken::new();
        let until = stop.clone();
        let gauge = socket.peer_gauge();
        tokio::spawn(async move {
            loop {
                // Events only wake this; the count is the socket's own (an event missed by a
                // full monitor cannot skew it).
                let now = gauge.count();
                tx.send_if_modified(|n| std::mem::replace(n, now) != now);
                tokio::select! {
                    _ = until.cancelled() => return,
                    ev = events.recv() => if ev.is_none() { return },
                }
            }
        });
        Ok(PublisherProbe {
            up,
            stop,
            _socket: socket,
        })
    }

    /// Connections to the publisher now (0 or 1); `changed()` wakes on each change.
    pub fn up(&self) -> watch::Receiver<usize> {
        self.up.clone()
    }
}

fn credit_frame(c: &CreditMsg) -> Result<Message> {
    let mut frame = vec![CREDIT_TAG];
    wire::encode_into(&mut frame, c)?;
    Ok(Message::single(frame))
}

struct Reader {
    topic: String,
    prefix: Vec<u8>,
    max: usize,
    stats: Arc<Stats>,
}

/// Just the header fields of a publish, the args skipped.
#[derive(serde::Deserialize, Default, Debug)]
struct Header {
    #[serde(default)]
    #[allow(dead_code)]
    args: Option<IgnoredAny>,
    #[serde(default)]
    workflow_id: WorkflowId,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    pub_id: Option<u64>,
}

impl Reader {
    async fn run(
        self,
        mut socket: XSubSocket,
        tx: mpsc::Sender<Delivery>,
        mut acks: Option<(mpsc::UnboundedReceiver<(u64, u64)>, u64)>,
        sub_id: u64,
        stop: CancellationToken,
    ) {
        // The subscription is remembered by the socket and re-sent to every new peer; a
        // credit hello follows it on the same connection, so the publisher registers this
        // subscriber only once its subscription is in place.
        let mut subscription = Vec::with_capacity(self.prefix.len() + 1);
        subscription.push(1u8);
        subscription.extend_from_slice(&self.prefix);
        if let Err(e) = socket.send(Message::single(subscription)).await {
            tracing::warn!("subscriber cannot subscribe: {e}");
        }
        if let Some((_, window)) = &acks {
            let hello = CreditMsg {
                sub: sub_id,
                pub_id: None,
                acked: None,
                window: *window,
            };
            if let Ok(frame) = credit_frame(&hello) {
                let _ = socket.send(frame).await;
            }
        }
        let mut last_seq: IdMap<u64> = IdMap::default();
        // The last ack sent to each publisher, sent again with every keepalive: an ack lost
        // on the way (a proxy in between, a reconnect) would otherwise leave a publisher
        // waiting on a subscriber that waits on it, until the stall timeout.
        // (seq, keepalive tick it was last updated on): a publisher not acked for 20 ticks
        // (10 s, twice the default stall timeout) is forgotten, so restarted publishers (new
        // ids) do not pile up.
        let mut last_acks: IdMap<(u64, u64)> = IdMap::default();
        let mut ticks = 0u64;
        let mut keepalive = tokio::time::interval(Duration::from_millis(500));
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                ack = recv_ack(&mut acks) => {
                    if let (Some((pub_id, seq)), Some((_, window))) = (ack, &acks) {
                        last_acks.insert(pub_id, (seq, ticks));
                        let c = CreditMsg { sub: sub_id, pub_id: Some(pub_id), acked: Some(seq), window: *window };
                        if let Ok(frame) = credit_frame(&c) {
                            let _ = socket.send(frame).await;
                        }
                    }
                    continue;
                }
                _ = keepalive.tick(), if acks.is_some() => {
                    // Credit mode: tells credit publishers this subscriber is alive (and
                    // registers it with publishers that started after it). A dead peer is
                    // the transport's to notice (heartbeats), in both modes.
                    if let Some((_, window)) = &acks {
                        let hello = CreditMsg { sub: sub_id, pub_id: None, acked: None, window: *window };
                        if let Ok(frame) = credit_frame(&hello) {
                            let _ = socket.send(frame).await;
                        }
                    }
                    ticks += 1;
                    last_acks.retain(|_, (_, at)| ticks - *at <= 20);
                    if let Some((_, window)) = &acks {
                        for (&pub_id, &(seq, _)) in &last_acks {
                            let c = CreditMsg { sub: sub_id, pub_id: Some(pub_id), acked: Some(seq), window: *window };
                            if let Ok(frame) = credit_frame(&c) {
                                let _ = socket.send(frame).await;
                            }
                        }
                    }
                    continue;
                }
                m = socket.recv() => m,
            };
            let Ok(msg) = msg else {
                return; // the socket closed
            };
            // One frame is one publish (a publisher of an older version batched several).
            for frame in msg.into_frames() {
                self.stats.bump(Counter::Received);
                let Some(delivery) = self.parse(frame, &mut last_seq) else {
                    continue;
                };
                if tx.send(delivery).await.is_err() {
                    return; // the consumer is gone
                }
            }
        }
    }

    fn parse(&self, frame: Bytes, last_seq: &mut IdMap<u64>) -> Option<Delivery> {
        if frame.len() > self.max {
            self.stats.bump(Counter::TooLarge);
            if let Some(suppressed) = crate::logline::WARNINGS.allow("sub_too_large", "") {
                tracing::warn!(
                    size = frame.len(),
                    limit = self.max,
                    suppressed,
                    "subscriber dropped an oversize message"
                );
            }
            return None;
        }
        let (topic, body) = if self.prefix.is_empty() {
            match wire::split_publish(&frame) {
                Ok((topic, body)) => {
                    let start = frame.len() - body.len();
                    (topic, frame.slice(start..))
                }
                Err(e) => return self.malformed(&e.to_string()),
            }
        } else if frame.starts_with(&self.prefix) {
            (Some(self.topic.clone()), frame.slice(self.prefix.len()..))
        } else {
            return None; // not ours (a shared XSUB peer may send more than we asked for)
        };
        let header = match scan_header(&body) {
            Some(h) => h,
            // Anything the scan does not take goes through serde, which has the last word
            // and the error message.
            None => match wire::decode::<Header>(&body) {
                Ok(h) => h,
                Err(e) => return self.malformed(&e.to_string()),
            },
        };
        let seq = match (header.seq, header.pub_id) {
            (Some(seq), Some(pub_id)) => {
                use std::collections::hash_map::Entry;
                match last_seq.entry(pub_id) {
                    Entry::Vacant(v) => {
                        v.insert(seq);
                    }
                    Entry::Occupied(mut o) => {
                        let last = *o.get();
                        if seq <= last {
                            self.stats.bump(Counter::Duplicates);
                            return None;
                        }
                        if seq > last + 1 {
                            let missed = seq - last - 1;
                            self.stats.add(Counter::Lost, missed);
                            if let Some(suppressed) = crate::logline::WARNINGS.allow("sub_lost", "")
                            {
                                tracing::warn!(
                                    pub_id,
                                    missed,
                                    after = last,
                                    suppressed,
                                    "subscriber detected lost messages"
                                );
                            }
                        }
                        o.insert(seq);
                    }
                }
                Some((seq, pub_id))
            }
            _ => None,
        };
        self.stats.bump(Counter::Delivered);
        Some(Delivery {
            topic,
            workflow_id: header.workflow_id,
            seq,
            body,
        })
    }

    fn malformed(&self, why: &str) -> Option<Delivery> {
        self.stats.bump(Counter::Malformed);
        if let Some(suppressed) = crate::logline::WARNINGS.allow("sub_malformed", "") {
            tracing::warn!(
                suppressed,
                "subscriber dropped a malformed message: {}",
                crate::logline::escape(why)
            );
        }
        None
    }
}

/// Reads a publish's header straight from its msgpack, skipping the args by their length:
/// serde's walk validated and visited every byte of the args (1.5k instructions a message,
/// most of a subscriber's own cost). Takes only the plain shapes (a map with string keys,
/// nil or unsigned `seq`/`pub_id`, a nil or string `workflow_id`, each key once, nothing
/// after the map) and returns `None` for anything else, which then goes through serde.
fn scan_header(b: &[u8]) -> Option<Header> {
    let (len, mut at) = match *b.first()? {
        m @ 0x80..=0x8f => (usize::from(m & 0x0f), 1),
        0xde => (usize::from(u16::from_be_bytes([*b.get(1)?, *b.get(2)?])), 3),
        _ => return None,
    };
    let mut h = Header::default();
    let mut seen = [false; 4];
    for _ in 0..len {
        let key_len = match *b.get(at)? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            _ => return None,
        };
        let key = b.get(at + 1..at + 1 + key_len)?;
        at += 1 + key_len;
        let value = b.get(at..at + wire::value_len(b.get(at..)?)?)?;
        at += value.len();
        let slot = match key {
            b"seq" => 0,
            b"pub_id" => 1,
            b"workflow_id" => 2,
            b"args" => 3,
            _ => continue, // keys the header does not declare
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None; // a repeated field: serde says what is wrong
        }
        match slot {
            0 => h.seq = nil_or_uint(value)?,
            1 => h.pub_id = nil_or_uint(value)?,
            3 => {} // skipped by its length
            _ => {
                h.workflow_id = match *value.first()? {
                    0xc0 => WorkflowId::None,
                    0xa0..=0xbf | 0xd9..=0xdb => {
                        WorkflowId::Str(rmp::decode::read_str_from_slice(value).ok()?.0.to_owned())
                    }
                    _ => wire::decode(value).ok()?,
                }
            }
        }
    }
    (at == b.len()).then_some(h)
}

/// `None` for nil, the value for an unsigned or non-negative integer; anything else fails.
fn nil_or_uint(v: &[u8]) -> Option<Option<u64>> {
    if v == [0xc0] {
        return Some(None);
    }
    let mut r = v;
    let n = rmp::decode::read_int::<u64, _>(&mut r).ok()?;
    r.is_empty().then_some(Some(n))
}

async fn recv_ack(
    acks: &mut Option<(mpsc::UnboundedReceiver<(u64, u64)>, u64)>,
) -> Option<(u64, u64)> {
    match acks {
        Some((rx, _)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;

    fn frame(entries: Vec<(&str, V)>) -> Vec<u8> {
        let map = V::Map(entries.into_iter().map(|(k, v)| (V::from(k), v)).collect());
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &map).unwrap();
        b
    }

    #[test]
    fn the_header_scan_agrees_with_serde_wherever_it_answers() {
        let uuid = uuid::Uuid::new_v4();
        let uuid_map = V::Map(vec![
            (V::from("__uuid__"), V::from(true)),
            (V::from("as_str"), V::from(uuid.to_string())),
        ]);
        let big_map = V::Map((0..20).map(|i| (V::from(i), V::from("x"))).collect());
        let cases: Vec<(Vec<u8>, bool)> = vec![
            // (frame, the scan must answer)
            (
                frame(vec![
                    ("seq", V::from(7)),
                    ("pub_id", V::from(u64::MAX)),
                    ("args", V::from("x".repeat(100))),
                    ("workflow_id", V::Nil),
                ]),
                true,
            ),
            (
                frame(vec![
                    ("args", big_map.clone()),
                    ("workflow_id", V::from("wf-1")),
                ]),
                true,
            ),
            (
                frame(vec![
                    ("workflow_id", uuid_map.clone()),
                    ("seq", V::from(300)),
                ]),
                true,
            ),
            (
                frame(vec![
                    ("args", V::Nil),
                    ("extra", V::from(1)),
                    ("seq", V::Nil),
                ]),
                true,
            ),
            (
                {
                    // 17 entries: a map16 header.
                    let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
                    let mut e: Vec<(&str, V)> =
                        keys.iter().map(|k| (k.as_str(), V::from(1))).collect();
                    e.push(("seq", V::from(3)));
                    frame(e)
                },
                true,
            ),
            (frame(vec![("args", V::Nil), ("args", V::Nil)]), false),
            // Shapes left to serde (which accepts or rejects them itself).
            (frame(vec![("seq", V::from(-1))]), false),
            (frame(vec![("seq", V::from(1)), ("seq", V::from(2))]), false),
            (frame(vec![("workflow_id", V::from(5))]), false),
            (frame(vec![("seq", V::F64(1.0))]), false),
            (vec![0x91, 0xc0], false),
            (vec![0xc0], false),
            (vec![0x81, 0xa3, b's', b'e', b'q'], false),
        ];
        for (i, (b, answers)) in cases.iter().enumerate() {
            let scanned = scan_header(b);
            let serde = wire::decode::<Header>(b).ok();
            assert_eq!(scanned.is_some(), *answers, "case {i}: {scanned:?}");
            if let Some(h) = scanned {
                let s =
                    serde.unwrap_or_else(|| panic!("case {i}: serde refuses what the scan took"));
                assert_eq!(
                    (h.seq, h.pub_id, h.workflow_id),
                    (s.seq, s.pub_id, s.workflow_id),
                    "case {i}"
                );
            }
        }
        // Trailing bytes after the map are for serde to report.
        let mut b = frame(vec![("seq", V::from(1))]);
        b.push(0xc0);
        assert!(scan_header(&b).is_none());
        assert!(wire::decode::<Header>(&b).is_err());
        // A framework publish as the publisher frames it.
        let wf = WorkflowId::Str("abc".into());
        let publish = wire::encode(&Publish {
            args: "hello",
            workflow_id: wf.clone(),
            seq: Some(9),
            pub_id: Some(42),
            traceparent: None,
        })
        .unwrap();
        let h = scan_header(&publish).unwrap();
        assert_eq!((h.seq, h.pub_id, h.workflow_id), (Some(9), Some(42), wf));
    }
}
