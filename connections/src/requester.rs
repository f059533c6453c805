//! The calling side of request/reply.
//!
//! A DEALER socket, not the original's REQ, so that many requests can be in flight, each can
//! time out on its own, and a lost peer does not wedge the socket. Every request carries a
//! request-id frame before the empty delimiter (`[id, "", body]`): a REP peer (Python) echoes
//! it like any routing envelope and the framework's ROUTER replyer does the same, so replies
//! are matched by id and a late reply to a request that gave up is recognised and dropped.
//!
//! The transport's DEALER reconnects by itself. Callers send straight into it (no task hop);
//! a reader task routes replies and watches the socket's events: when the connection a
//! request went out on is lost, that request fails at once (it is retried if the caller
//! allowed retries) instead of waiting out its timeout. Requests made while no peer is
//! connected wait for one, bounded by their own timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sf_zmtp::{DealerSender, DealerSocket, Event, Message, PeerId, Receiver, SocketOptions};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};
use crate::util::IdMap;
use crate::wire::{self, ErrorCode, Reply, Request, TraceParent, WireError, WorkflowId};

/// Tuning for a [`Requester`].
#[derive(Debug, Clone)]
pub struct RequesterOptions {
    /// How long one attempt waits for its reply (default 10 s).
    pub timeout: Duration,
    /// Extra attempts after a timeout or a lost peer (default 0: requests may not be
    /// idempotent, so resending is the caller's choice).
    pub retries: u32,
    /// Replies larger than this are refused (default 16 MiB).
    pub max_message_bytes: usize,
    /// Requests queued on the connection, not yet written (default 10,000); more wait for
    /// room, bounded by their timeout.
    pub queue: usize,
    /// NULL (the default: what Python 0.0.18 speaks) or CURVE, for every connection of the
    /// socket; refused peers are counted in `auth_failures`.
    pub security: sf_zmtp::Security,
}

impl Default for RequesterOptions {
    fn default() -> Self {
        RequesterOptions {
            timeout: Duration::from_secs(10),
            retries: 0,
            max_message_bytes: 16 << 20,
            queue: 10_000,
            security: sf_zmtp::Security::Null,
        }
    }
}

/// A request waiting for its reply: where the reply goes, and when it was made.
struct Waiting {
    tx: oneshot::Sender<Result<Bytes>>,
    born: tokio::time::Instant,
    /// The connection it went out on, once sent.
    peer: Option<PeerId>,
}

/// Requests in flight by id.
type Pending = Arc<Mutex<IdMap<Waiting>>>;

/// How an idle sweeper is woken: a request that finds `sleeping` set notifies `wake`.
#[derive(Default)]
struct Idle {
    sleeping: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

/// How often the sweeper looks for requests past their timeout. Arming a runtime timer for
/// every request costs more than the rest of the request path put together; instead one
/// sweeper task per requester wakes eight times per timeout (at least every second, at most
/// every millisecond) and fails the requests that have waited their timeout. A request
/// therefore times out after its timeout, never before, and at most one sweep period later
/// (an eighth of the timeout, or 1 ms for timeouts under 8 ms), plus scheduling delay.
fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 8).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

fn request_frame(id: u64, body: Bytes) -> Message {
    Message::from(vec![
        Bytes::copy_from_slice(&id.to_be_bytes()),
        Bytes::new(),
        body,
    ])
}

/// A connection to one replyer (framework or Python), shared freely between tasks.
#[derive(Debug, Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    options: RequesterOptions,
    socket: DealerSender,
    pending: Pending,
    idle: Arc<Idle>,
    next_id: std::sync::atomic::AtomicU64,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("endpoint", &self.endpoint)
            .field("options", &self.options)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Requester {
    /// Starts connecting to `address` in the background and returns at once.
    pub fn connect(address: &Address, options: RequesterOptions) -> Result<Requester> {
        let endpoint = address.connect_endpoint()?;
        let socket = DealerSocket::with_options(
            SocketOptions::default()
                .send_hwm(options.queue.max(1))
                .max_message_bytes(options.max_message_bytes.saturating_mul(2))
                .security(options.security.clone()),
        );
        socket.connect(&endpoint)?;
        let monitor = socket.monitor();
        let auth_events =
            (!matches!(options.security, sf_zmtp::Security::Null)).then(|| socket.monitor());
        let (tx, rx) = socket.split();
        let pending: Pending = Arc::default();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let idle = Arc::new(Idle::default());
        if let Some(events) = auth_events {
            crate::util::count_auth_failures(
                &options.security,
                || events,
                stats.clone(),
                stop.clone(),
            );
        }
        tokio::spawn(sweep(
            options.timeout,
            pending.clone(),
            idle.clone(),
            stats.clone(),
            stop.clone(),
        ));
        tokio::spawn(read_replies(
            endpoint.clone(),
            rx,
            monitor,
            pending.clone(),
            stats.clone(),
            stop.clone(),
        ));
        Ok(Requester {
            inner: Arc::new(Inner {
                endpoint,
                options,
                socket: tx,
                pending,
                idle,
                next_id: std::sync::atomic::AtomicU64::new(1),
                stats,
                stop,
            }),
        })
    }

    /// The endpoint this requester connects to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Replyers connected now (handshake finished).
    pub fn peer_count(&self) -> usize {
        self.inner.socket.peer_count()
    }

    /// The options in force.
    pub fn options(&self) -> &RequesterOptions {
        &self.inner.options
    }

    /// Sends `args` and returns the decoded `return_args`. An error reply becomes
    /// [`Error::Remote`] carrying the peer's code and message.
    pub async fn request<A, R>(&self, args: &A, workflow_id: WorkflowId) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request_traced(args, workflow_id, None).await
    }

    /// [`request`](Self::request) carrying a W3C trace context (`traceparent`): the calling
    /// span's, which the replyer's span takes as its parent.
    pub async fn request_traced<A, R>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
        traceparent: Option<TraceParent>,
    ) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let body = wire::encode(&Request {
            args,
            workflow_id,
            traceparent,
        })?;
        let reply = self.request_raw(body).await?;
        let reply: Reply<R> = wire::decode(&reply).map_err(|e| {
            Error::Codec(format!(
                "reply does not match the expected return model: {e}"
            ))
        })?;
        match reply.error {
            Some(e) => Err(Error::Remote(e)),
            // A nil `return_args` is a valid answer for `()` or `Option<_>` results.
            None => match reply.return_args {
                Some(r) => Ok(r),
                None => wire::decode::<R>(&[0xc0])
                    .map_err(|_| Error::Codec("the reply has no return_args".into())),
            },
        }
    }

    /// Sends an encoded request frame and returns the encoded reply frame, with the
    /// configured timeout and retries.
    pub async fn request_raw(&self, body: Vec<u8>) -> Result<Bytes> {
        // Shared, not copied, by every attempt.
        let body = Bytes::from(body);
        let inner = &self.inner;
        let attempts = inner.options.retries + 1;
        let mut last = Error::Closed;
        for attempt in 0..attempts {
            if attempt > 0 {
                inner.stats.bump(Counter::Retries);
            }
            let id = inner
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let born = tokio::time::Instant::now();
            inner.pending.lock().expect("pending lock").insert(
                id,
                Waiting {
                    tx,
                    born,
                    peer: None,
                },
            );
            if inner
                .idle
                .sleeping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                inner.idle.wake.notify_one();
            }
            // Waits for a connected replyer with room, bounded by the timeout.
            let sent = tokio::time::timeout(
                inner.options.timeout,
                inner.socket.send_tracked(request_frame(id, body.clone())),
            )
            .await;
            let peer_used = match sent {
                Ok(Ok(peer)) => {
                    inner.stats.bump(Counter::Sent);
                    if let Some(w) = inner.pending.lock().expect("pending lock").get_mut(&id) {
                        w.peer = Some(peer);
                    }
                    peer
                }
                Ok(Err(e)) => {
                    inner.pending.lock().expect("pending lock").remove(&id);
                    let e = Error::from(e);
                    if matches!(e, Error::Closed) {
                        return Err(e);
                    }
                    last = e;
                    continue;
                }
                Err(_) => {
                    // Counted here unless the sweeper got to it first (and counted it).
                    if inner
                        .pending
                        .lock()
                        .expect("pending lock")
                        .remove(&id)
                        .is_some()
                    {
                        inner.stats.bump(Counter::Timeouts);
                    }
                    last = Error::Timeout(inner.options.timeout);
                    continue;
                }
            };
            // Bounded by the sweeper, which answers `Timeout` once the request is too old.
            match rx.await {
                Ok(Ok(reply)) => {
                    if reply.len() > inner.options.max_message_bytes {
                        return Err(Error::TooLarge {
                            size: reply.len(),
                            limit: inner.options.max_message_bytes,
                        });
                    }
                    // A replyer that is stopping answers `unavailable`: with retries left,
                    // try again (a successor, or another replica, may take it).
                    if attempt + 1 < attempts && is_stopping_reply(&reply) {
                        // Not to the same replyer again: it refuses work until it goes, and
                        // its connection may close with the retry on it.
                        inner.socket.retire(peer_used);
                        last = match wire::decode::<Reply<serde::de::IgnoredAny>>(&reply) {
                            Ok(Reply { error: Some(e), .. }) => Error::Remote(e),
                            _ => Error::Closed,
                        };
                        continue;
                    }
                    return Ok(reply);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Closed,
            }
        }
        Err(last)
    }
}

/// True for a small reply whose error is `unavailable` (checked by bytes first: a successful
/// reply is never decoded twice).
fn is_stopping_reply(reply: &[u8]) -> bool {
    const CODE: &[u8] = b"unavailable";
    reply.len() < 4096
        && reply.windows(CODE.len()).any(|w| w == CODE)
        && matches!(
            wire::decode::<Reply<serde::de::IgnoredAny>>(reply),
            Ok(Reply {
                error: Some(WireError {
                    code: ErrorCode::Unavailable,
                    ..
                }),
                ..
            })
        )
}

/// Fails the requests that have waited their timeout, once per sweep period. Also clears
/// the entries of callers that stopped waiting (their futures were dropped).
///
/// After a whole timeout with nothing pending it sleeps until a request arrives (see
/// [`Idle`]), so an idle requester costs no wake-ups, while a busy one pays nothing extra.
async fn sweep(
    timeout: Duration,
    pending: Pending,
    idle: Arc<Idle>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(sweep_period(timeout));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut empty_ticks = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let empty = pending.lock().expect("pending lock").is_empty();
        if empty {
            empty_ticks += 1;
            if empty_ticks < 8 {
                continue;
            }
            // Announce the sleep, then look again: a request inserted after this look sees
            // the flag (the lock orders the two) and wakes the sweeper.
            idle.sleeping
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let still_empty = pending.lock().expect("pending lock").is_empty();
            if still_empty {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = idle.wake.notified() => {}
                }
            }
            idle.sleeping
                .store(false, std::sync::atomic::Ordering::SeqCst);
            empty_ticks = 0;
            ticks.reset();
            continue;
        }
        empty_ticks = 0;
        let expired: Vec<Waiting> = {
            let mut map = pending.lock().expect("pending lock");
            // Read after taking the lock: no request in the map was born after `now`.
            let now = tokio::time::Instant::now();
            let old: Vec<u64> = map
                .iter()
                .filter(|(_, w)| now.saturating_duration_since(w.born) >= timeout)
                .map(|(id, _)| *id)
                .collect();
            old.iter().filter_map(|id| map.remove(id)).collect()
        };
        for w in expired {
            // Counted before the caller can see it; not counted for a caller that left.
            if !w.tx.is_closed() {
                stats.bump(Counter::Timeouts);
                let _ = w.tx.send(Err(Error::Timeout(timeout)));
            }
        }
    }
}

/// Routes replies to their callers, and fails the requests of a connection that is lost.
async fn read_replies(
    endpoint: String,
    mut rx: Receiver,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    pending: Pending,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut connected_before = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = rx.recv() => match m {
                Ok(msg) => route_reply(msg, &pending, &stats),
                Err(_) => break,
            },
            ev = events.recv() => match ev {
                Some(Event::Connected { .. }) => {
                    if connected_before {
                        stats.bump(Counter::Reconnects);
                        tracing::info!(%endpoint, "requester reconnected");
                    }
                    connected_before = true;
                }
                Some(Event::Disconnected { peer, .. }) => fail_lost(&endpoint, peer, &pending),
                Some(_) => {}
                None => std::future::pending::<()>().await,
            },
        }
    }
}

/// A lost connection takes the requests queued or in flight on it: they fail now.
fn fail_lost(endpoint: &str, peer: PeerId, pending: &Pending) {
    let lost: Vec<Waiting> = {
        let mut map = pending.lock().expect("pending lock");
        let gone: Vec<u64> = map
            .iter()
            .filter(|(_, w)| w.peer == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        gone.iter().filter_map(|id| map.remove(id)).collect()
    };
    if !lost.is_empty() {
        tracing::warn!(%endpoint, count = lost.len(), "replyer went away with requests in flight");
    }
    for w in lost {
        let _ = w.tx.send(Err(Error::Socket(format!(
            "the replyer at {endpoint} went away before replying"
        ))));
    }
}

fn route_reply(msg: Message, pending: &Pending, stats: &Stats) {
    let frames = msg.frames();
    // Expected: [id, "", body]. Anything else did not come from a request of ours.
    let (Some(id), Some(body)) = (frames.first(), frames.last()) else {
        return;
    };
    if frames.len() != 3 || id.len() != 8 {
        stats.bump(Counter::Malformed);
        tracing::warn!(
            frames = frames.len(),
            "requester ignored a reply without its request id"
        );
        return;
    }
    let id = u64::from_be_bytes(id[..].try_into().expect("8 bytes"));
    match pending.lock().expect("pending lock").remove(&id) {
        Some(w) => {
            stats.bump(Counter::Received);
            let _ = w.tx.send(Ok(body.clone()));
        }
        None => stats.bump(Counter::LateReplies),
    }
}
