//! The publishing side of publish/subscribe.
//!
//! Binds a PUB socket (or connects one to a bus proxy when `is_x_pub`, as the original does).
//! Every message carries `seq` (1, 2, 3... per publisher) and `pub_id` (random per publisher
//! instance) so a framework subscriber counts what it missed: PUB drops for a subscriber that
//! falls a whole queue behind (that subscriber only: the others are not slowed), and that
//! loss is never silent here. Each subscriber's queue is bounded by `send_hwm` messages.
//!
//! With a credit window (opt-in, framework subscribers only) the publisher uses an XPUB
//! socket: a subscriber's subscription and its credit messages travel upstream on the same
//! connection, in order, so a subscriber is registered only once its subscription is in
//! place. Each subscriber acknowledges the last sequence number its consumer has taken; the
//! publisher never runs more than `window` messages ahead of the slowest registered
//! subscriber, and a subscriber that stays silent for `stall_timeout` while the publisher
//! waits on it is dropped from the window (logged and counted), so no wait is unbounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use serde::Serialize;
use sf_zmtp::{Message, PubSocket, SocketOptions, XPubSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};
use crate::wire::{self, TraceParent, WorkflowId};

/// Binds `address`, or connects to it (a bus proxy) with `connect`; returns the endpoint.
macro_rules! attach {
    ($socket:expr, $address:expr, $connect:expr) => {{
        if $connect {
            let ep = $address.connect_endpoint()?;
            $socket.connect(&ep)?;
            ep
        } else {
            let ep = $address.bind_endpoint()?;
            $socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind publisher to {ep}: {e}")))?
        }
    }};
}

/// Most publishes sent in one go in credit mode.
const MAX_BATCH: usize = 1024;

/// The first byte of a credit message (0 and 1 are unsubscribe and subscribe).
pub(crate) const CREDIT_TAG: u8 = 0x02;

/// A subscriber's credit message, after [`CREDIT_TAG`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct CreditMsg {
    /// Random id of the subscribing connection.
    pub sub: u64,
    /// The publisher the ack is for (nil in the first hello).
    pub pub_id: Option<u64>,
    /// Last sequence number of `pub_id` the consumer has taken.
    pub acked: Option<u64>,
    /// The window the subscriber asks for.
    pub window: u64,
}

/// Credit-window settings (both sides must enable it).
#[derive(Debug, Clone)]
pub struct CreditOptions {
    /// How far the publisher may run ahead of the slowest subscriber (default 50,000). Each
    /// subscriber asks for its own window; the smaller of the two is used.
    pub window: u64,
    /// How long a registered subscriber may stay silent while the publisher waits on it
    /// before it is dropped from the window (default 5 s).
    pub stall_timeout: Duration,
}

impl Default for CreditOptions {
    fn default() -> Self {
        CreditOptions {
            window: 50_000,
            stall_timeout: Duration::from_secs(5),
        }
    }
}

/// Tuning for a [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Topic prefixed to every message (empty: none).
    pub topic: String,
    /// Connect to a bus proxy's XSUB side instead of binding.
    pub is_x_pub: bool,
    /// Lossless mode for framework subscribers.
    pub credit: Option<CreditOptions>,
    /// Messages queued per subscriber (default 10,000); a subscriber that falls further
    /// behind misses messages (counted in `dropped`, seen as `lost` by it). In credit mode
    /// the queue is at least the window.
    pub send_hwm: usize,
    /// NULL (the default: what Python 0.0.18 speaks) or CURVE, for every connection of the
    /// socket; refused peers are counted in `auth_failures`.
    pub security: sf_zmtp::Security,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            topic: String::new(),
            is_x_pub: false,
            credit: None,
            send_hwm: 10_000,
            security: sf_zmtp::Security::Null,
        }
    }
}

/// A publisher; cheap to clone, shared by every task that publishes.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<PubInner>,
}

#[derive(Debug)]
struct PubInner {
    topic: String,
    /// Bytes left free at the front of each publish for the writer's header.
    headroom: usize,
    endpoint: String,
    queue: mpsc::Sender<Vec<u8>>,
    stats: Arc<Stats>,
    subscribers: watch::Receiver<usize>,
    stop: CancellationToken,
    /// How long the writer's socket may take to flush at shutdown, in milliseconds.
    linger_ms: Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Publisher {
    /// Binds (or, with `is_x_pub`, starts connecting to) `address`.
    pub async fn start(address: &Address, options: PublisherOptions) -> Result<Publisher> {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let (queue, rx) = mpsc::channel(4096);
        let (subs_tx, subscribers) = watch::channel(0usize);
        let pub_id: u64 = rand::random();
        let prefix = topic_prefix(&options.topic);
        // One more byte in front: the count of extra entries (see `publish_traced`).
        let headroom = 1 + prefix.len() + MAX_HEADER;
        let linger_ms = Arc::new(std::sync::atomic::AtomicU64::new(1000));
        let mut writer = Writer {
            pub_id,
            seq: 0,
            topic_prefix: prefix,
            headroom,
            stats: stats.clone(),
            dropped_seen: 0,
            linger_ms: linger_ms.clone(),
        };
        let mut hwm = options.send_hwm.max(1);
        if let Some(c) = &options.credit {
            hwm = hwm.max(
                usize::try_from(c.window)
                    .unwrap_or(usize::MAX)
                    .saturating_add(MAX_BATCH),
            );
        }
        // Flushing at shutdown is bounded by `shutdown`'s own linger.
        let socket_options = SocketOptions::default()
            .send_hwm(hwm)
            .linger(Duration::from_secs(30))
            .security(options.security.clone());
        let (endpoint, task) = match &options.credit {
            Some(credit) => {
                let socket = XPubSocket::with_options(socket_options);
                crate::util::count_auth_failures(
                    &options.security,
                    || socket.monitor(),
                    stats.clone(),
                    stop.clone(),
                );
                let endpoint = attach!(socket, address, options.is_x_pub);
                let credit = credit.clone();
                let stop = stop.clone();
                (
                    endpoint,
                    tokio::spawn(async move {
                        writer.run_credit(socket, rx, credit, subs_tx, stop).await
                    }),
                )
            }
            None => {
                let socket = PubSocket::with_options(socket_options);
                crate::util::count_auth_failures(
                    &options.security,
                    || socket.monitor(),
                    stats.clone(),
                    stop.clone(),
                );
                // Subscribers with a subscription in place, for `wait_for_subscribers`.
                count_subscribers(socket.monitor(), subs_tx, stop.clone());
                let endpoint = attach!(socket, address, options.is_x_pub);
                if options.is_x_pub {
                    crate::util::count_reconnects(socket.monitor(), stats.clone(), stop.clone());
                }
                let stop = stop.clone();
                (
                    endpoint,
                    tokio::spawn(async move { writer.run_plain(socket, stop, rx).await }),
                )
            }
        };
        tracing::debug!(%endpoint, pub_id, topic = %options.topic, "publisher started");
        Ok(Publisher {
            inner: Arc::new(PubInner {
                topic: options.topic,
                headroom,
                endpoint,
                queue,
                stats,
                subscribers,
                stop,
                linger_ms,
                done: std::sync::Mutex::new(Some(task)),
            }),
        })
    }

    /// The bound endpoint, or the one connected to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Publishes `args`. Waits only when the send queue is full (or, in credit mode, when the
    /// slowest subscriber is a whole window behind).
    pub async fn publish<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: &WorkflowId,
    ) -> Result<()> {
        self.publish_traced(args, workflow_id, None).await
    }

    /// [`publish`](Self::publish) carrying the publishing span's trace context.
    pub async fn publish_traced<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: &WorkflowId,
        traceparent: Option<TraceParent>,
    ) -> Result<()> {
        // The writer puts the topic and its header in front, in the room left here: one
        // buffer per message, no copy. The room's first byte tells it how many entries
        // beyond `args` and `workflow_id` follow (its header sizes the map by it).
        let room = self.inner.headroom;
        let mut body = Vec::with_capacity(room + 128);
        body.resize(room, 0);
        wire::encode_into(&mut body, "args")?;
        wire::encode_into(&mut body, args)?;
        wire::encode_into(&mut body, "workflow_id")?;
        wire::encode_into(&mut body, workflow_id)?;
        if let Some(tp) = traceparent {
            body[0] = 1;
            wire::encode_into(&mut body, "traceparent")?;
            wire::encode_into(&mut body, &tp)?;
        }
        self.inner.queue.send(body).await.map_err(|_| Error::Closed)
    }

    /// Waits until at least `n` subscribers have a subscription in place (in credit mode:
    /// are registered in the window), so a publish from then on reaches them.
    pub async fn wait_for_subscribers(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.subscribers.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|&c| c >= n)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// The number of subscribers with a subscription in place; `changed()` wakes on every
    /// subscription and every departure (a state's out side answers newcomers with a
    /// snapshot).
    pub fn subscriber_changes(&self) -> watch::Receiver<usize> {
        self.inner.subscribers.clone()
    }

    /// Sends everything queued and closes the socket, giving it up to `linger` to flush;
    /// returns as soon as everything is out.
    pub async fn shutdown(&self, linger: Duration) {
        let task = self.inner.done.lock().expect("done lock").take();
        self.inner.linger_ms.store(
            u64::try_from(linger.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.stop.cancel();
        if let Some(task) = task {
            // Other clones may still hold senders to the queue, so bound the wait.
            let _ = tokio::time::timeout(linger + Duration::from_secs(1), task).await;
        }
    }
}

fn topic_prefix(topic: &str) -> Vec<u8> {
    if topic.is_empty() {
        Vec::new()
    } else {
        wire::topic_prefix(topic)
    }
}

/// The longest header after the topic: a map of four (1 byte), `"seq"` (4), a u64 (9),
/// `"pub_id"` (7), a u64 (9).
const MAX_HEADER: usize = 1 + 4 + 9 + 7 + 9;

struct Writer {
    pub_id: u64,
    seq: u64,
    topic_prefix: Vec<u8>,
    /// The room at the front of each queued publish (see [`Publisher::publish`]).
    headroom: usize,
    stats: Arc<Stats>,
    /// The socket's drop count last read (drops are counted by the socket, per subscriber).
    dropped_seen: u64,
    linger_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Writer {
    /// `topic + {seq, pub_id, args, workflow_id}` around the pre-encoded `args`/`workflow_id`
    /// entries; numbering here keeps `seq` in send order however many tasks publish.
    fn frame(&mut self, publish: Vec<u8>) -> Message {
        Message::single(self.frame_bytes(publish))
    }

    /// Adds what the socket dropped since the last look to `dropped`.
    fn count_drops(&mut self, dropped_now: u64) {
        if dropped_now > self.dropped_seen {
            self.stats
                .add(Counter::Dropped, dropped_now - self.dropped_seen);
            self.dropped_seen = dropped_now;
        }
    }

    fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `publish` is the room left by [`Publisher::publish`] followed by the encoded entries:
    /// the topic and header are written at the end of the room, and the frame starts there.
    fn frame_bytes(&mut self, mut publish: Vec<u8>) -> Bytes {
        self.seq += 1;
        let mut head = [0u8; 64];
        let mut w = &mut head[..];
        let entries = 4 + u32::from(publish[0]);
        rmp::encode::write_map_len(&mut w, entries).expect("fits");
        rmp::encode::write_str(&mut w, "seq").expect("fits");
        rmp::encode::write_uint(&mut w, self.seq).expect("fits");
        rmp::encode::write_str(&mut w, "pub_id").expect("fits");
        rmp::encode::write_uint(&mut w, self.pub_id).expect("fits");
        let head_len = 64 - w.len();
        let start = self.headroom - self.topic_prefix.len() - head_len;
        let prefix_end = start + self.topic_prefix.len();
        publish[start..prefix_end].copy_from_slice(&self.topic_prefix);
        publish[prefix_end..self.headroom].copy_from_slice(&head[..head_len]);
        let mut frame = Bytes::from(publish);
        frame.advance(start);
        frame
    }

    async fn run_plain(
        &mut self,
        socket: PubSocket,
        stop: CancellationToken,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    for entries in batch.drain(..) {
                        let msg = self.frame(entries);
                        // Never waits: a subscriber whose queue is full misses it (counted).
                        if socket.send(msg).is_ok() {
                            self.stats.bump(Counter::Sent);
                        }
                    }
                    self.count_drops(socket.stats().dropped);
                    // Let the connections' writers drain before the next batch.
                    tokio::task::yield_now().await;
                }
                // Shut down: what was queued has gone out (the branch above is polled first).
                _ = stop.cancelled(), if rx.is_empty() => break,
            }
        }
        let linger = self.linger();
        let _ = tokio::time::timeout(linger, socket.close()).await;
    }

    async fn run_credit(
        &mut self,
        mut socket: XPubSocket,
        mut rx: mpsc::Receiver<Vec<u8>>,
        credit: CreditOptions,
        subs_tx: watch::Sender<usize>,
        stop: CancellationToken,
    ) {
        let mut subs: HashMap<u64, CreditSub> = HashMap::new();
        // Publishes waiting for room. The XPUB socket flushes on every send, so as many as
        // the window allows go out as one multipart message, one publish per frame
        // (subscribers read every frame as a message).
        let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
        let mut closed = false;
        let poll = credit.stall_timeout.min(Duration::from_millis(250));
        loop {
            while !closed && pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => pending.push_back(e),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
            // Room = how far the slowest registered subscriber lets us run ahead.
            let room = subs
                .values()
                .map(|s| (s.acked + s.window).saturating_sub(self.seq))
                .min()
                .unwrap_or(u64::MAX);
            if !pending.is_empty() && room > 0 {
                let n = pending
                    .len()
                    .min(usize::try_from(room).unwrap_or(usize::MAX));
                for e in pending.drain(..n).collect::<Vec<_>>() {
                    let msg = self.frame(e);
                    if socket.send(msg).is_ok() {
                        self.stats.bump(Counter::Sent);
                    }
                }
                self.count_drops(socket.stats().dropped);
                tokio::task::yield_now().await;
                continue;
            }
            if closed && pending.is_empty() {
                break;
            }
            let blocked = !pending.is_empty();
            if blocked {
                self.stats.bump(Counter::CreditWaits);
            }
            tokio::select! {
                up = socket.recv() => match up {
                    Ok(msg) => self.on_upstream(msg, &mut subs, credit.window, &subs_tx),
                    Err(e) => tracing::debug!("credit publisher receive error: {e}"),
                },
                entry = rx.recv(), if !blocked && !closed => match entry {
                    Some(e) => pending.push_back(e),
                    None => closed = true,
                },
                _ = tokio::time::sleep(poll), if blocked => {
                    let now = Instant::now();
                    let before = subs.len();
                    subs.retain(|id, s| {
                        let alive = now.duration_since(s.heard) < credit.stall_timeout;
                        if !alive {
                            tracing::warn!(sub = id, "credit subscriber silent for {:?}; dropped from the window", credit.stall_timeout);
                        }
                        alive
                    });
                    if subs.len() != before {
                        self.stats.add(Counter::Dropped, (before - subs.len()) as u64);
                        let _ = subs_tx.send(subs.len());
                    }
                }
                _ = stop.cancelled(), if pending.is_empty() && rx.is_empty() => break,
            }
        }
        let linger = self.linger();
        let _ = tokio::time::timeout(linger, socket.close()).await;
    }

    fn on_upstream(
        &mut self,
        msg: Message,
        subs: &mut HashMap<u64, CreditSub>,
        max_window: u64,
        subs_tx: &watch::Sender<usize>,
    ) {
        let Some(frame) = msg.first() else { return };
        if frame.first() != Some(&CREDIT_TAG) {
            return; // a (un)subscription, already applied by the socket
        }
        let Ok(c) = wire::decode::<CreditMsg>(&frame[1..]) else {
            self.stats.bump(Counter::Malformed);
            return;
        };
        let now = Instant::now();
        match subs.get_mut(&c.sub) {
            Some(s) => {
                s.heard = now;
                if let (true, Some(a)) = (c.pub_id == Some(self.pub_id), c.acked) {
                    s.acked = s.acked.max(a);
                }
            }
            None => {
                // A new subscriber's window starts at what has been sent so far: its
                // subscription arrived before this message on the same connection.
                let start = if c.pub_id == Some(self.pub_id) {
                    c.acked.unwrap_or(self.seq)
                } else {
                    self.seq
                };
                subs.insert(
                    c.sub,
                    CreditSub {
                        acked: start,
                        window: c.window.min(max_window).max(1),
                        heard: now,
                    },
                );
                let _ = subs_tx.send(subs.len());
                tracing::debug!(
                    sub = c.sub,
                    start,
                    window = c.window,
                    "credit subscriber registered"
                );
            }
        }
    }
}

/// One registered subscriber's place in the window.
#[derive(Debug)]
struct CreditSub {
    acked: u64,
    window: u64,
    heard: Instant,
}

/// Plain mode: counts peers with at least one subscription in place.
fn count_subscribers(
    mut events: mpsc::Receiver<sf_zmtp::Event>,
    subs_tx: watch::Sender<usize>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut subscribed = std::collections::HashSet::new();
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            match ev {
                sf_zmtp::Event::Subscribed { peer, .. } => {
                    subscribed.insert(peer);
                }
                sf_zmtp::Event::Disconnected { peer, .. } => {
                    subscribed.remove(&peer);
                }
                _ => continue,
            }
            subs_tx.send_replace(subscribed.len());
        }
    });
}
