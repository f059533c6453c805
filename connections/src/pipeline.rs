//! PUSH/PULL: the ZeroMQ pipeline pattern, beyond the original.
//!
//! A [`Pusher`] hands each message to exactly one connected [`Puller`], round-robin, so several
//! workers pulling from one pusher share its work fairly. Unlike PUB, a full peer queue makes
//! the pusher wait instead of dropping: back-pressure travels upstream. Frames are the same
//! `{args, workflow_id}` envelope as a request.
//!
//! Either side may bind; a connecting side reconnects by itself when the binder restarts (the
//! transport does it). Each puller connection holds at most a bounded queue, so a stalled
//! worker costs its own queue and then its share of pushes goes to the others.
//!
//! # Plain and acked
//!
//! Plain (the default) is libzmq's PUSH/PULL, and talks to libzmq peers: a message queued on
//! a worker that dies is lost with it.
//!
//! Acked ([`PipelineOptions::acked`], both ends) is **at-least-once**. The pusher is a DEALER
//! and the puller a ROUTER (so a plain peer on the other end fails the ZMTP handshake, which
//! is logged, and a push then fails naming it). Each message carries a delivery id
//! (`["", id (8 bytes, big-endian), body]`) and stays in the pusher's book until the puller
//! acknowledges it (`["", id]`, or `["", id, 1]` when its handler failed), which the puller
//! does when its consumer calls [`Ack::send`] (after the handler returned). A message whose
//! puller goes away unacknowledged is sent again, to whichever puller takes it next (another
//! worker, or the restarted one); one with no ack after [`PipelineOptions::ack_timeout`] is
//! sent again too (the safety net behind disconnect detection). So a message can arrive more
//! than once: **sinks must be idempotent** (dedupe by an item id carried in the args).
//!
//! [`Pusher::push`] returns `Ok` only once a puller acknowledged the message, i.e. its
//! handler finished; a transform that pushes downstream from its handler therefore acks
//! upstream only after its own push was acked, which carries the guarantee end to end. At most
//! [`PipelineOptions::window`] messages per pusher are unacknowledged at once; further pushes
//! wait for room (end-to-end back-pressure), all of it bounded by the send timeout. A handler
//! that fails is still acknowledged (as failed: the push returns an error), so one poison
//! message cannot loop forever; a push that gives up (timeout) is forgotten by the pusher
//! (the message may or may not have been handled: the caller decides whether to push again).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sf_zmtp::{
    DealerSender, DealerSocket, Event, Message, PeerId, PullSocket, PushSocket, Receiver,
    RouterSender, RouterSocket, SocketOptions,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};
use crate::util::IdMap;
use crate::wire::{self, ErrorCode, Request, TraceParent, WireError, WorkflowId};

/// Tuning for both ends of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Bind instead of connecting.
    pub is_binder: bool,
    /// How long [`Pusher::push`] waits for a peer with room (default 10 s).
    pub send_timeout: Duration,
    /// Frames larger than this are dropped and counted by the puller (default 16 MiB).
    pub max_message_bytes: usize,
    /// NULL (the default: what Python 0.0.18 speaks) or CURVE, for every connection of the
    /// socket; refused peers are counted in `auth_failures`.
    pub security: sf_zmtp::Security,
    /// At-least-once delivery (see the module doc); both ends must agree. Default false:
    /// plain PUSH/PULL, which libzmq peers speak.
    pub acked: bool,
    /// Acked pusher: a message with no ack after this long is sent again (default 30 s), a
    /// safety net behind the redelivery that follows a lost connection at once. A push gives
    /// up (and forgets its message) at its send timeout, so this acts only when it is shorter
    /// than `send_timeout`.
    pub ack_timeout: Duration,
    /// Acked pusher: the most messages unacknowledged at once (default 1,000); further pushes
    /// wait for room, bounded by the send timeout.
    pub window: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            is_binder: false,
            send_timeout: Duration::from_secs(10),
            max_message_bytes: 16 << 20,
            security: sf_zmtp::Security::Null,
            acked: false,
            ack_timeout: Duration::from_secs(30),
            window: 1000,
        }
    }
}

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct Pusher {
    socket: PushSide,
    endpoint: String,
    timeout: Duration,
    stats: Arc<Stats>,
    _stop: Arc<DropCancel>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum PushSide {
    Plain(Arc<PushSocket>),
    Acked(Arc<AckBook>),
}

#[derive(Debug)]
struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The transport's limit sits at twice the pipeline's, so an oversize message up to that is
/// read, counted and dropped by the puller; a peer declaring more is cut on the header.
fn transport_options(options: &PipelineOptions) -> SocketOptions {
    SocketOptions::default()
        .max_message_bytes(options.max_message_bytes.saturating_mul(2))
        .security(options.security.clone())
}

/// Binds or connects `address` on a fresh socket; returns the endpoint.
macro_rules! attach {
    ($socket:expr, $address:expr, $options:expr, $stats:expr, $stop:expr, $what:literal) => {{
        if $options.is_binder {
            let ep = $address.bind_endpoint()?;
            $socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind {} to {ep}: {e}", $what)))?
        } else {
            let ep = $address.connect_endpoint()?;
            crate::util::count_reconnects($socket.monitor(), $stats.clone(), $stop.clone());
            $socket.connect(&ep)?;
            ep
        }
    }};
}

impl Pusher {
    /// Binds or starts connecting to `address`.
    pub async fn start(address: &Address, options: PipelineOptions) -> Result<Pusher> {
        if options.acked {
            return Pusher::start_acked(address, options).await;
        }
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let socket = PushSocket::with_options(transport_options(&options));
        crate::util::count_auth_failures(
            &options.security,
            || socket.monitor(),
            stats.clone(),
            stop.clone(),
        );
        let endpoint = attach!(socket, address, options, stats, stop, "pusher");
        Ok(Pusher {
            socket: PushSide::Plain(Arc::new(socket)),
            endpoint,
            timeout: options.send_timeout,
            stats,
            _stop: Arc::new(DropCancel(stop)),
        })
    }

    /// The endpoint bound or connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Pullers connected now.
    pub fn peer_count(&self) -> usize {
        match &self.socket {
            PushSide::Plain(socket) => socket.peer_count(),
            PushSide::Acked(book) => book.socket.peer_count(),
        }
    }

    /// Flushes what is queued to the pullers (up to `linger`) and closes the socket; every
    /// clone fails from then on.
    ///
    /// Acked: first waits (within the same `linger`) for the acks of the pushes in flight;
    /// those still unacknowledged then fail with [`Error::Closed`]. Nothing is lost by that:
    /// a message in a transform's hands that was not acknowledged upstream is redelivered
    /// by the upstream pusher (at-least-once).
    pub async fn shutdown(&self, linger: Duration) {
        match &self.socket {
            PushSide::Plain(socket) => {
                let _ = tokio::time::timeout(linger, socket.shutdown()).await;
            }
            PushSide::Acked(book) => book.shutdown(linger).await,
        }
    }

    /// True when this pusher runs the acked protocol.
    pub fn is_acked(&self) -> bool {
        matches!(self.socket, PushSide::Acked(_))
    }

    /// Acked: messages sent and not yet acknowledged (0 for a plain pusher).
    pub fn in_flight(&self) -> usize {
        match &self.socket {
            PushSide::Plain(_) => 0,
            PushSide::Acked(book) => book.lock().inflight.len(),
        }
    }

    /// Hands `args` to one puller; waits (bounded by the send timeout) while every puller is
    /// full or none is connected. `Ok` means the message is queued on a puller's connection.
    ///
    /// A push that times out is never sent: it is counted in `dropped` if no puller was
    /// connected, in `timeouts` if every puller was full.
    ///
    /// Acked: `Ok` means a puller acknowledged the message (its handler finished); the
    /// whole push (room in the window, a puller, the ack) is bounded by the send timeout. A
    /// puller whose handler failed makes it [`Error::Remote`] (`handler_error`). With no
    /// puller that passed the handshake, the error names the last handshake failure.
    pub async fn push<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
    ) -> Result<()> {
        self.push_traced(args, workflow_id, None).await
    }

    /// [`push`](Self::push) carrying the pushing span's trace context.
    pub async fn push_traced<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
        traceparent: Option<TraceParent>,
    ) -> Result<()> {
        let body = wire::encode(&RequestRef {
            args,
            workflow_id: &workflow_id,
            traceparent,
        })?;
        let socket = match &self.socket {
            PushSide::Plain(socket) => socket,
            PushSide::Acked(book) => return self.push_acked(book, Bytes::from(body)).await,
        };
        let msg = Message::single(body);
        let send = socket.send(msg);
        tokio::pin!(send);
        // Fast path, no timer: a puller with room takes the message at once.
        let sent = match (&mut send).now_or_never() {
            Some(r) => r,
            None => match tokio::time::timeout(self.timeout, send).await {
                Ok(r) => r,
                Err(_) => {
                    self.stats.bump(if socket.peer_count() == 0 {
                        Counter::Dropped
                    } else {
                        Counter::Timeouts
                    });
                    return Err(Error::Timeout(self.timeout));
                }
            },
        };
        sent?;
        self.stats.bump(Counter::Sent);
        Ok(())
    }
}

/// A [`Request`] by reference, encoded the same.
#[derive(Serialize)]
struct RequestRef<'a, A: ?Sized> {
    args: &'a A,
    workflow_id: &'a WorkflowId,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<TraceParent>,
}

// ---------------------------------------------------------------------------------------
// Acked pusher.

/// Where an unacknowledged message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Its push is handing it to the socket.
    Sending,
    /// Queued on, or delivered through, this connection.
    On(PeerId),
    /// Waiting for the resender (its connection was lost, or its ack is overdue).
    Resending,
}

struct Entry {
    body: Bytes,
    place: Place,
    sent_at: Instant,
    /// The push waiting for the ack: `true` for a handler that succeeded.
    done: Option<oneshot::Sender<bool>>,
}

/// Connections recently lost, remembered so that a push whose send returns after its
/// connection's `Disconnected` was handled still learns it went nowhere.
const DEAD_REMEMBERED: usize = 1024;

#[derive(Default)]
struct Book {
    inflight: IdMap<Entry>,
    dead: VecDeque<PeerId>,
}

/// The acked pusher's shared half: the socket's send half and the book of unacknowledged
/// messages. A reader task takes acks and connection events; a resender task sends again
/// what a lost connection or an overdue ack left behind.
struct AckBook {
    socket: DealerSender,
    book: Mutex<Book>,
    window: Semaphore,
    window_size: u32,
    next_id: AtomicU64,
    resend: mpsc::UnboundedSender<u64>,
    /// The last handshake a puller failed (e.g. a plain PULL: DEALER cannot talk to it).
    refused: Mutex<Option<String>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

fn acked_frame(id: u64, body: Bytes) -> Message {
    Message::from(vec![
        Bytes::new(),
        Bytes::copy_from_slice(&id.to_be_bytes()),
        body,
    ])
}

impl AckBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The message `id` went out on `peer` (from its push or from the resender).
    fn placed(&self, id: u64, peer: PeerId) {
        let mut book = self.lock();
        let dead = book.dead.contains(&peer);
        let Some(e) = book.inflight.get_mut(&id) else {
            return;
        };
        if !matches!(e.place, Place::Sending | Place::Resending) {
            return;
        }
        if dead {
            e.place = Place::Resending;
            let _ = self.resend.send(id);
        } else {
            e.place = Place::On(peer);
            e.sent_at = Instant::now();
        }
    }

    /// A connection was lost: what it had not acknowledged goes out again.
    fn lost(&self, peer: PeerId) -> usize {
        let mut book = self.lock();
        if book.dead.len() >= DEAD_REMEMBERED {
            book.dead.pop_front();
        }
        book.dead.push_back(peer);
        let mut n = 0;
        for (id, e) in book.inflight.iter_mut() {
            if e.place == Place::On(peer) {
                e.place = Place::Resending;
                let _ = self.resend.send(*id);
                n += 1;
            }
        }
        n
    }

    /// Messages whose ack is overdue go out again.
    fn sweep(&self, ack_timeout: Duration) -> usize {
        let mut book = self.lock();
        let now = Instant::now();
        let mut n = 0;
        for (id, e) in book.inflight.iter_mut() {
            if matches!(e.place, Place::On(_))
                && now.saturating_duration_since(e.sent_at) >= ack_timeout
            {
                e.place = Place::Resending;
                let _ = self.resend.send(*id);
                n += 1;
            }
        }
        n
    }

    /// `["", id]` (handled) or `["", id, 1]` (the handler failed).
    fn on_ack(&self, msg: Message) {
        let frames = msg.frames();
        let ok_shape =
            matches!(frames.len(), 2 | 3) && frames[0].is_empty() && frames[1].len() == 8;
        if !ok_shape {
            self.stats.bump(Counter::Malformed);
            if let Some(suppressed) = crate::logline::WARNINGS.allow("push_bad_ack", "") {
                tracing::warn!(
                    frames = frames.len(),
                    suppressed,
                    "acked pusher ignored a message that is not an ack"
                );
            }
            return;
        }
        let id = u64::from_be_bytes(frames[1][..].try_into().expect("8 bytes"));
        let handled = frames.get(2).is_none_or(|f| f.first() != Some(&1));
        let entry = self.lock().inflight.remove(&id);
        match entry {
            Some(e) => {
                self.stats.bump(Counter::Acked);
                if let Some(done) = e.done {
                    let _ = done.send(handled);
                }
            }
            // A second ack of a message sent twice, or one whose push gave up.
            None => self.stats.bump(Counter::LateReplies),
        }
    }

    /// Waits (up to `linger`) for the pushes in flight to be acknowledged, then closes.
    async fn shutdown(&self, linger: Duration) {
        let deadline = Instant::now() + linger;
        let all = tokio::time::timeout_at(deadline, self.window.acquire_many(self.window_size));
        if let Ok(Ok(permits)) = all.await {
            drop(permits);
        }
        self.window.close();
        let left: Vec<Entry> = {
            let mut book = self.lock();
            book.inflight.drain().map(|(_, e)| e).collect()
        };
        if !left.is_empty() {
            tracing::warn!(
                count = left.len(),
                "acked pusher closed with messages not yet acknowledged"
            );
        }
        // Their pushes fail with `Closed` (the senders drop).
        drop(left);
        self.stop.cancel();
        let _ = tokio::time::timeout_at(
            deadline.max(Instant::now() + Duration::from_millis(100)),
            self.socket.clone().close(),
        )
        .await;
    }
}

/// Removes a push's entry however the push ends (returned, failed, or dropped by its
/// caller), so the book never keeps what nobody waits for.
struct Forget<'a> {
    book: &'a AckBook,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.book.lock().inflight.remove(&self.id);
    }
}

impl Pusher {
    async fn start_acked(address: &Address, options: PipelineOptions) -> Result<Pusher> {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let socket = DealerSocket::with_options(transport_options(&options));
        crate::util::count_auth_failures(
            &options.security,
            || socket.monitor(),
            stats.clone(),
            stop.clone(),
        );
        let events = socket.monitor();
        let endpoint = attach!(socket, address, options, stats, stop, "pusher");
        let (tx, rx) = socket.split();
        let (resend, resend_rx) = mpsc::unbounded_channel();
        let window = options
            .window
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let book = Arc::new(AckBook {
            socket: tx,
            book: Mutex::default(),
            window: Semaphore::new(window),
            window_size: window as u32,
            next_id: AtomicU64::new(1),
            resend,
            refused: Mutex::new(None),
            stats: stats.clone(),
            stop: stop.clone(),
        });
        tokio::spawn(read_acks(
            book.clone(),
            rx,
            events,
            endpoint.clone(),
            options.ack_timeout,
        ));
        tokio::spawn(resend_loop(book.clone(), resend_rx));
        Ok(Pusher {
            socket: PushSide::Acked(book),
            endpoint,
            timeout: options.send_timeout,
            stats,
            _stop: Arc::new(DropCancel(stop)),
        })
    }

    async fn push_acked(&self, book: &AckBook, body: Bytes) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        // Room in the window: the back-pressure of unacknowledged work.
        let _permit = match book.window.try_acquire() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout_at(deadline, book.window.acquire()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(Error::Closed),
                    Err(_) => {
                        self.stats.bump(Counter::Timeouts);
                        return Err(Error::Timeout(self.timeout));
                    }
                }
            }
        };
        let id = book.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, acked) = oneshot::channel();
        book.lock().inflight.insert(
            id,
            Entry {
                body: body.clone(),
                place: Place::Sending,
                sent_at: Instant::now(),
                done: Some(done),
            },
        );
        let _forget = Forget { book, id };
        let sent =
            tokio::time::timeout_at(deadline, book.socket.send_tracked(acked_frame(id, body)))
                .await;
        match sent {
            Ok(Ok(peer)) => book.placed(id, peer),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                if book.socket.peer_count() == 0 {
                    self.stats.bump(Counter::Dropped);
                    let refused = book
                        .refused
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Some(reason) = refused {
                        return Err(Error::Socket(format!(
                            "no puller at {} took the push within {:?}: the last handshake \
                             failed ({reason}); an acked pusher needs an acked puller",
                            self.endpoint, self.timeout
                        )));
                    }
                } else {
                    self.stats.bump(Counter::Timeouts);
                }
                return Err(Error::Timeout(self.timeout));
            }
        }
        self.stats.bump(Counter::Sent);
        match tokio::time::timeout_at(deadline, acked).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Error::Remote(WireError {
                code: ErrorCode::HandlerError,
                message: "the puller's handler failed on this message".into(),
            })),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.stats.bump(Counter::Timeouts);
                Err(Error::Timeout(self.timeout))
            }
        }
    }
}

/// How often overdue acks are looked for: four times per ack timeout, between 10 ms and 1 s.
fn sweep_period(ack_timeout: Duration) -> Duration {
    (ack_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Takes acks, watches connections (a lost one's messages go out again; a refused
/// handshake is remembered and logged), and sends overdue messages again.
async fn read_acks(
    book: Arc<AckBook>,
    mut rx: Receiver,
    mut events: mpsc::Receiver<Event>,
    endpoint: String,
    ack_timeout: Duration,
) {
    let stop = book.stop.clone();
    let mut ticks = tokio::time::interval(sweep_period(ack_timeout));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            m = rx.recv() => match m {
                Ok(msg) => book.on_ack(msg),
                Err(_) => return,
            },
            ev = events.recv() => match ev {
                Some(Event::Disconnected { peer, .. }) => {
                    let n = book.lost(peer);
                    if n > 0 {
                        tracing::warn!(%endpoint, count = n, "a puller went away with unacknowledged messages; sending them again");
                    }
                }
                Some(Event::HandshakeFailed { addr, reason }) => {
                    if let Some(suppressed) = crate::logline::WARNINGS.allow("acked_push_refused", &endpoint) {
                        tracing::error!(%endpoint, peer = %addr, suppressed, "acked pusher: handshake with a puller failed ({reason}); is the puller acked too?");
                    }
                    *book.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            },
            _ = ticks.tick() => {
                let n = book.sweep(ack_timeout);
                if n > 0 {
                    if let Some(suppressed) = crate::logline::WARNINGS.allow("acked_push_overdue", &endpoint) {
                        tracing::warn!(%endpoint, count = n, suppressed, "no ack within {ack_timeout:?}; sending again");
                    }
                }
            }
        }
    }
}

/// Sends again the messages queued by [`AckBook::lost`] and [`AckBook::sweep`], one at a
/// time, waiting for a puller with room as a push does.
async fn resend_loop(book: Arc<AckBook>, mut ids: mpsc::UnboundedReceiver<u64>) {
    let stop = book.stop.clone();
    loop {
        let id = tokio::select! {
            _ = stop.cancelled() => return,
            id = ids.recv() => match id { Some(id) => id, None => return },
        };
        let body = match book.lock().inflight.get(&id) {
            Some(e) if e.place == Place::Resending => e.body.clone(),
            _ => continue,
        };
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            r = book.socket.send_tracked(acked_frame(id, body)) => r,
        };
        match sent {
            Ok(peer) => {
                book.stats.bump(Counter::Redelivered);
                book.placed(id, peer);
            }
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Puller.

enum PullSide {
    Plain(PullSocket),
    Acked { rx: Receiver, tx: RouterSender },
}

/// The receiving end. It reads its socket itself, in [`Puller::next`]: no task and no
/// channel between the socket and the consumer, so a message costs no hand-off, and a
/// consumer that stops pulling makes the pushers wait (the socket's queue is bounded).
pub struct Puller {
    socket: PullSide,
    endpoint: String,
    max: usize,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

impl Puller {
    /// Pushers connected now, readable after the puller has moved into its consumer.
    pub fn peer_gauge(&self) -> sf_zmtp::PeerGauge {
        match &self.socket {
            PullSide::Plain(socket) => socket.peer_gauge(),
            PullSide::Acked { tx, .. } => tx.peer_gauge(),
        }
    }
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// One pushed message and, from an acked pusher, what acknowledges it.
#[derive(Debug)]
pub struct Pushed {
    /// The envelope's bytes (`{args, workflow_id}`).
    pub body: Bytes,
    /// `Some` on an acked puller: [`Ack::send`] it once the message is handled. Dropped
    /// unsent, nothing is acknowledged and the pusher sends the message again (to this or
    /// another puller) when this connection is lost or the ack timeout passes.
    pub ack: Option<Ack>,
}

/// The acknowledgement owed for one message of an acked pipeline.
pub struct Ack {
    socket: RouterSender,
    route: Bytes,
    id: Bytes,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Ack {
    /// The message was handled: the pusher forgets it and its push returns `Ok`.
    pub fn send(self) {
        self.answer(None)
    }

    /// The handler failed: acknowledged all the same (a poison message is not sent again and
    /// again), and the push returns an error.
    pub fn fail(self) {
        self.answer(Some(Bytes::from_static(&[1])))
    }

    fn answer(self, status: Option<Bytes>) {
        let mut frames = vec![self.route, Bytes::new(), self.id];
        frames.extend(status);
        // A full or vanished connection loses the ack: the message comes again (at least once).
        match self.socket.send(Message::from(frames)) {
            Ok(()) => self.stats.bump(Counter::Acked),
            Err(e) => tracing::debug!("puller could not send an ack: {e}"),
        }
    }
}

fn too_large(stats: &Stats, size: usize, limit: usize) {
    stats.bump(Counter::TooLarge);
    if let Some(suppressed) = crate::logline::WARNINGS.allow("pull_too_large", "") {
        tracing::warn!(
            size,
            limit,
            suppressed,
            "puller dropped an oversize message"
        );
    }
}

async fn next_plain(socket: &mut PullSocket, stats: &Stats, max: usize) -> Option<Bytes> {
    loop {
        let msg = socket.recv().await.ok()?;
        let Some(frame) = msg.into_frames().pop() else {
            continue;
        };
        stats.bump(Counter::Received);
        if frame.len() > max {
            too_large(stats, frame.len(), max);
            continue;
        }
        return Some(frame);
    }
}

async fn next_acked(
    rx: &mut Receiver,
    tx: &RouterSender,
    stats: &Arc<Stats>,
    max: usize,
) -> Option<Pushed> {
    loop {
        let msg = rx.recv().await.ok()?;
        // [routing id, "", id, body]
        let Ok([route, empty, id, body]) = <[Bytes; 4]>::try_from(msg.into_frames()) else {
            stats.bump(Counter::Malformed);
            continue;
        };
        if !empty.is_empty() || id.len() != 8 {
            stats.bump(Counter::Malformed);
            continue;
        }
        stats.bump(Counter::Received);
        let ack = Ack {
            socket: tx.clone(),
            route,
            id,
            stats: stats.clone(),
        };
        if body.len() > max {
            ack.fail();
            too_large(stats, body.len(), max);
            continue;
        }
        return Some(Pushed {
            body,
            ack: Some(ack),
        });
    }
}

/// Acks are tiny and must not be dropped for want of room: a large queue per pusher.
const ACK_QUEUE: usize = 100_000;

impl Puller {
    /// Binds or starts connecting to `address`.
    pub async fn start(address: &Address, options: PipelineOptions) -> Result<Puller> {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let socket = if options.acked {
            let socket =
                RouterSocket::with_options(transport_options(&options).send_hwm(ACK_QUEUE));
            crate::util::count_auth_failures(
                &options.security,
                || socket.monitor(),
                stats.clone(),
                stop.clone(),
            );
            let endpoint = attach!(socket, address, options, stats, stop, "puller");
            let (tx, rx) = socket.split();
            (PullSide::Acked { rx, tx }, endpoint)
        } else {
            let socket = PullSocket::with_options(transport_options(&options));
            crate::util::count_auth_failures(
                &options.security,
                || socket.monitor(),
                stats.clone(),
                stop.clone(),
            );
            let endpoint = attach!(socket, address, options, stats, stop, "puller");
            (PullSide::Plain(socket), endpoint)
        };
        let (socket, endpoint) = socket;
        Ok(Puller {
            socket,
            endpoint,
            max: options.max_message_bytes,
            stats,
            _stop: DropCancel(stop),
        })
    }

    /// The endpoint bound or connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// True when this puller runs the acked protocol.
    pub fn is_acked(&self) -> bool {
        matches!(self.socket, PullSide::Acked { .. })
    }

    /// The next envelope's raw bytes; `None` once the puller can receive no more. Cancel
    /// safe: a message is never lost by dropping the future.
    ///
    /// On an acked puller the message is acknowledged as it is taken; use
    /// [`next_pushed`](Self::next_pushed) to acknowledge after handling it.
    pub async fn next_raw(&mut self) -> Option<Bytes> {
        match &mut self.socket {
            PullSide::Plain(socket) => next_plain(socket, &self.stats, self.max).await,
            PullSide::Acked { rx, tx } => {
                let pushed = next_acked(rx, tx, &self.stats, self.max).await?;
                if let Some(ack) = pushed.ack {
                    ack.send();
                }
                Some(pushed.body)
            }
        }
    }

    /// The next message with its [`Ack`] (acked puller) or none (plain); `None` once the
    /// puller can receive no more. Cancel safe. An oversize message is acknowledged as failed
    /// and skipped (sending it again would not make it fit).
    pub async fn next_pushed(&mut self) -> Option<Pushed> {
        match &mut self.socket {
            PullSide::Plain(socket) => next_plain(socket, &self.stats, self.max)
                .await
                .map(|body| Pushed { body, ack: None }),
            PullSide::Acked { rx, tx } => next_acked(rx, tx, &self.stats, self.max).await,
        }
    }

    /// The next message decoded; a malformed one is an `Err` (and counted), the stream goes on.
    /// Acknowledged as it is taken on an acked puller (see [`next_raw`](Self::next_raw)).
    pub async fn next<A: DeserializeOwned>(&mut self) -> Option<Result<Request<A>>> {
        let raw = self.next_raw().await?;
        let decoded = wire::decode::<Request<A>>(&raw);
        if decoded.is_err() {
            self.stats.bump(Counter::Malformed);
        }
        Some(decoded)
    }
}
