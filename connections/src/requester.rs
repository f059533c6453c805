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
//!
//! # Replicas
//! A requester may be given several addresses (a list in addresses.json): replicas of one
//! replyer, brokerless. Each replica gets a DEALER socket of its own, so each has its own
//! connection, heartbeats (ZMTP PING/PONG: a replica that stops answering them is dropped
//! after the heartbeat timeout) and reconnects. A request goes to the replica that is up with
//! the fewest requests in flight, ties in turn. A replica is out from the moment its
//! connection is lost (a heartbeat timeout, a reset, a close) or it answers `unavailable`
//! (stopping), and back when a connection to it finishes its handshake again. A request in
//! flight on a replica that is lost fails at once, and is retried on another replica only if
//! the caller allowed retries; when no replica is up, requests wait for one, bounded by their
//! timeout. With one address nothing of this costs anything: the request path is the one
//! described above.
//!
//! # Through a Majordomo broker
//! [`Requester::through_broker`] calls an MDP service instead of a replyer: the socket
//! connects to the broker (or to each of a list of brokers, which are then replicas as
//! above) and each request goes out as an MDP 0.2 client REQUEST for the service, its body
//! `[id, "", envelope]`. The framework's MDP workers echo the frames before the envelope, and
//! so does the broker when it refuses a request, so replies are matched by id exactly as on a
//! direct connection and many requests can be in flight on one socket. PARTIAL replies are
//! counted and dropped (a request has one reply). A worker that dies with the request is the
//! broker's to handle: it gives the request to the next worker (MDP workers are idempotent);
//! a broker that is lost fails the requests on it as a lost replyer does.
//!
//! # Where retries happen
//! Only at the edge: a requester used while serving a request (inside a replyer's handler, see
//! [`serving`]) makes one attempt whatever its `retries`; its failure becomes the handler's
//! error (`dependency_failed` in a service), which no requester retries. The caller at the
//! edge retries the whole chain, so a chain of hops costs at most `retries + 1` attempts at
//! any hop, never `(retries + 1)` to the power of the hops.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sf_zmtp::{DealerSender, DealerSocket, Event, Message, PeerId, Receiver, SocketOptions};

/// The transport's heartbeat settings ([`RequesterOptions::heartbeat`]).
pub use sf_zmtp::Heartbeat;
use tokio::sync::{oneshot, watch};
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
    /// ZMTP PING/PONG on each connection (default: every 1 s, dropped after 5 s without a
    /// frame). A replica whose connection is dropped is out until it answers again.
    pub heartbeat: Option<Heartbeat>,
}

impl Default for RequesterOptions {
    fn default() -> Self {
        RequesterOptions {
            timeout: Duration::from_secs(10),
            retries: 0,
            max_message_bytes: 16 << 20,
            queue: 10_000,
            security: sf_zmtp::Security::Null,
            heartbeat: Some(Heartbeat::default()),
        }
    }
}

tokio::task_local! {
    /// Set while a replyer runs a handler: requests made then are not retried.
    static SERVING: ();
}

/// Runs `fut` as serving a request: a requester called inside it makes one attempt, whatever
/// its `retries` (see the module docs). The replyer runs every handler this way; wrap a task
/// a handler spawns to keep the rule there.
pub fn serving<F: std::future::Future>(fut: F) -> tokio::task::futures::TaskLocalFuture<(), F> {
    SERVING.scope((), fut)
}

/// Runs `f` (one poll of a handler) as serving a request, without wrapping its future.
pub(crate) fn serving_now<R>(f: impl FnOnce() -> R) -> R {
    SERVING.sync_scope((), f)
}

/// True inside [`serving`] (inside a replyer's handler).
pub fn is_serving() -> bool {
    SERVING.try_with(|_| ()).is_ok()
}

/// A request waiting for its reply: where the reply goes, and when it was made.
struct Waiting {
    tx: oneshot::Sender<Result<Bytes>>,
    born: tokio::time::Instant,
    /// The replica (index) and connection it went out on, once sent.
    peer: Option<(usize, PeerId)>,
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

fn request_frame(id: u64, body: Bytes, mdp: Option<&Bytes>) -> Message {
    let id = Bytes::copy_from_slice(&id.to_be_bytes());
    match mdp {
        None => Message::from(vec![id, Bytes::new(), body]),
        Some(service) => Message::from(vec![
            Bytes::from_static(crate::mdp::proto::CLIENT),
            Bytes::from_static(&[crate::mdp::proto::client_cmd::REQUEST]),
            service.clone(),
            id,
            Bytes::new(),
            body,
        ]),
    }
}

/// What the requester knows of one replica, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The endpoint it is reached at.
    pub endpoint: String,
    /// Connected, and not stopping: it is given requests.
    pub up: bool,
    /// Requests sent to it and not finished.
    pub in_flight: usize,
    /// Requests sent to it in all.
    pub sent: u64,
}

/// One replica's live state, shared by the callers and the replica's reader task.
#[derive(Debug)]
struct Replica {
    endpoint: String,
    up: AtomicBool,
    in_flight: AtomicUsize,
    sent: AtomicU64,
}

/// The replicas, and the count of those up (watched by requests that wait for one).
#[derive(Debug)]
struct Replicas {
    list: Box<[Replica]>,
    up_count: watch::Sender<usize>,
}

impl Replicas {
    fn set_up(&self, i: usize, up: bool) {
        if self.list[i].up.swap(up, Ordering::SeqCst) != up {
            let n = self
                .list
                .iter()
                .filter(|r| r.up.load(Ordering::SeqCst))
                .count();
            self.up_count.send_replace(n);
        }
    }

    /// The replica that is up with the fewest in flight, ties taken in turn from `start`;
    /// `avoid` (the replica the last attempt failed on) only if no other is up.
    fn pick(&self, start: usize, avoid: Option<usize>) -> Option<usize> {
        let n = self.list.len();
        let mut best: Option<(usize, usize)> = None;
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            let r = &self.list[i];
            if !r.up.load(Ordering::Relaxed) {
                continue;
            }
            if Some(i) == avoid {
                fallback = Some(i);
                continue;
            }
            let load = r.in_flight.load(Ordering::Relaxed);
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, i));
            }
        }
        best.map(|(_, i)| i).or(fallback)
    }
}

/// Counts a request in flight on a replica until dropped (answered, failed, or abandoned by
/// its caller).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection to one replyer (framework or Python), or to several replicas of one, shared
/// freely between tasks.
#[derive(Debug, Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    options: RequesterOptions,
    /// One socket per replica, in the order of `replicas.list`.
    sockets: Box<[DealerSender]>,
    replicas: Arc<Replicas>,
    /// Where the next pick starts (ties go in turn).
    turn: AtomicUsize,
    pending: Pending,
    idle: Arc<Idle>,
    next_id: std::sync::atomic::AtomicU64,
    stats: Arc<Stats>,
    stop: CancellationToken,
    /// The MDP service called through a broker; `None` for a direct requester.
    mdp: Option<Bytes>,
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
    /// Starts connecting to `address` in the background and returns at once. A list of
    /// addresses connects to each replica (see the module docs).
    pub fn connect(address: &Address, options: RequesterOptions) -> Result<Requester> {
        Self::start(address, options, None)
    }

    /// Starts connecting to the Majordomo broker at `broker` (or to each broker of a list)
    /// and returns at once; requests call MDP service `service` through it (see the module
    /// docs). The endpoint reads `mdp://<broker>/<service>`.
    pub fn through_broker(
        broker: &Address,
        service: &str,
        options: RequesterOptions,
    ) -> Result<Requester> {
        let name =
            crate::mdp::proto::service_name(service.as_bytes()).map_err(|e| Error::Address {
                address: broker.to_string(),
                reason: format!("service name {service:?}: {e}"),
            })?;
        Self::start(broker, options, Some(name))
    }

    fn start(
        address: &Address,
        options: RequesterOptions,
        mdp: Option<String>,
    ) -> Result<Requester> {
        let endpoints = address.connect_endpoints()?;
        let pending: Pending = Arc::default();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let idle = Arc::new(Idle::default());
        let replicas = Arc::new(Replicas {
            list: endpoints
                .iter()
                .map(|ep| Replica {
                    endpoint: ep.clone(),
                    up: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                    sent: AtomicU64::new(0),
                })
                .collect(),
            up_count: watch::Sender::new(0),
        });
        let mut sockets = Vec::with_capacity(endpoints.len());
        for (index, endpoint) in endpoints.iter().enumerate() {
            let socket = DealerSocket::with_options(
                SocketOptions::default()
                    .send_hwm(options.queue.max(1))
                    .max_message_bytes(options.max_message_bytes.saturating_mul(2))
                    .security(options.security.clone())
                    .heartbeat(options.heartbeat),
            );
            // Watched before connecting: a handshake that finishes at once must not be missed
            // (its `Connected` is what puts the replica up).
            let monitor = socket.monitor();
            let auth_events =
                (!matches!(options.security, sf_zmtp::Security::Null)).then(|| socket.monitor());
            socket.connect(endpoint)?;
            let (tx, rx) = socket.split();
            if let Some(events) = auth_events {
                crate::util::count_auth_failures(
                    &options.security,
                    || events,
                    stats.clone(),
                    stop.clone(),
                );
            }
            tokio::spawn(read_replies(
                Reader {
                    mdp: mdp.is_some(),
                    index,
                    endpoint: endpoint.clone(),
                    replicas: replicas.clone(),
                    pending: pending.clone(),
                    stats: stats.clone(),
                    stop: stop.clone(),
                },
                rx,
                monitor,
            ));
            sockets.push(tx);
        }
        tokio::spawn(sweep(
            options.timeout,
            pending.clone(),
            idle.clone(),
            stats.clone(),
            stop.clone(),
        ));
        let endpoint = match &mdp {
            None => endpoints.join(", "),
            Some(service) => endpoints
                .iter()
                .map(|e| format!("mdp://{}/{service}", e.strip_prefix("tcp://").unwrap_or(e)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        Ok(Requester {
            inner: Arc::new(Inner {
                endpoint,
                options,
                sockets: sockets.into(),
                replicas,
                turn: AtomicUsize::new(0),
                pending,
                idle,
                next_id: std::sync::atomic::AtomicU64::new(1),
                stats,
                stop,
                mdp: mdp.map(Bytes::from),
            }),
        })
    }

    /// The endpoint this requester connects to (the replicas' endpoints, comma-separated,
    /// for a list).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Each replica's state, in the order of the address list (one entry for one address).
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        let one = self.inner.sockets.len() == 1;
        self.inner
            .replicas
            .list
            .iter()
            .map(|r| ReplicaStatus {
                endpoint: r.endpoint.clone(),
                up: r.up.load(Ordering::SeqCst),
                // One replica: nothing is counted per replica on the request path.
                in_flight: if one {
                    self.inner.pending.lock().expect("pending lock").len()
                } else {
                    r.in_flight.load(Ordering::Relaxed)
                },
                sent: if one {
                    self.inner.stats.get(Counter::Sent)
                } else {
                    r.sent.load(Ordering::Relaxed)
                },
            })
            .collect()
    }

    /// The number of replicas up, now and as it changes (a test or a health check waits on
    /// it).
    pub fn replicas_up(&self) -> watch::Receiver<usize> {
        self.inner.replicas.up_count.subscribe()
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Replyers connected now (handshake finished), over all replicas.
    pub fn peer_count(&self) -> usize {
        self.inner.sockets.iter().map(|s| s.peer_count()).sum()
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
    /// configured timeout and retries (none inside a handler: see [`serving`]).
    pub async fn request_raw(&self, body: Vec<u8>) -> Result<Bytes> {
        // Shared, not copied, by every attempt.
        let body = Bytes::from(body);
        let inner = &self.inner;
        let retries = inner.options.retries;
        let attempts = if retries > 0 && is_serving() {
            1
        } else {
            retries + 1
        };
        let many = inner.sockets.len() > 1;
        let mut last = Error::Closed;
        // The replica the last attempt failed on: the next goes elsewhere if it can.
        let mut avoid = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                inner.stats.bump(Counter::Retries);
            }
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
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
            if inner.idle.sleeping.load(Ordering::SeqCst) {
                inner.idle.wake.notify_one();
            }
            let (index, _load) = if many {
                match self.pick(avoid, born + inner.options.timeout).await {
                    Some(i) => (i, Some(InFlight::new(&inner.replicas.list[i].in_flight))),
                    None => {
                        self.forget_timed_out(id);
                        last = Error::Timeout(inner.options.timeout);
                        continue;
                    }
                }
            } else {
                (0, None)
            };
            let socket = &inner.sockets[index];
            // Waits for a connected replyer with room, bounded by the timeout.
            let send = tokio::time::timeout_at(
                born + inner.options.timeout,
                socket.send_tracked(request_frame(id, body.clone(), inner.mdp.as_ref())),
            );
            let sent = if many {
                // A replica lost while the send waits for room on it: the request was not
                // sent, and fails (or is retried elsewhere) now, not at its timeout.
                tokio::pin!(send);
                match (&mut send).now_or_never() {
                    Some(sent) => sent,
                    None => tokio::select! {
                        sent = &mut send => sent,
                        _ = self.lost(index) => Ok(Err(sf_zmtp::Error::Closed)),
                    },
                }
            } else {
                send.await
            };
            let peer_used = match sent {
                Ok(Ok(peer)) => {
                    inner.stats.bump(Counter::Sent);
                    if many {
                        inner.replicas.list[index]
                            .sent
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(w) = inner.pending.lock().expect("pending lock").get_mut(&id) {
                        w.peer = Some((index, peer));
                    }
                    peer
                }
                Ok(Err(e)) => {
                    inner.pending.lock().expect("pending lock").remove(&id);
                    let e = match e {
                        // The replica was lost (the requester itself is open: it is ours).
                        sf_zmtp::Error::Closed if many && !inner.stop.is_cancelled() => {
                            Error::Socket(format!(
                                "the replyer at {} went away before the request was sent",
                                inner.replicas.list[index].endpoint
                            ))
                        }
                        e => Error::from(e),
                    };
                    if matches!(e, Error::Closed) {
                        return Err(e);
                    }
                    last = e;
                    avoid = Some(index);
                    continue;
                }
                Err(_) => {
                    self.forget_timed_out(id);
                    last = Error::Timeout(inner.options.timeout);
                    avoid = Some(index);
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
                        // its connection may close with the retry on it. Its replica is out
                        // until a new connection to it is made (its successor).
                        socket.retire(peer_used);
                        inner.replicas.set_up(index, false);
                        last = match wire::decode::<Reply<serde::de::IgnoredAny>>(&reply) {
                            Ok(Reply { error: Some(e), .. }) => Error::Remote(e),
                            _ => Error::Closed,
                        };
                        avoid = Some(index);
                        continue;
                    }
                    return Ok(reply);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Closed,
            }
            avoid = Some(index);
        }
        Err(last)
    }

    /// Removes a request that timed out before it was sent; counted here unless the sweeper
    /// got to it first (and counted it).
    fn forget_timed_out(&self, id: u64) {
        let inner = &self.inner;
        if inner
            .pending
            .lock()
            .expect("pending lock")
            .remove(&id)
            .is_some()
        {
            inner.stats.bump(Counter::Timeouts);
        }
    }

    /// Resolves once replica `index` is out.
    async fn lost(&self, index: usize) {
        let replicas = &self.inner.replicas;
        let mut changes = replicas.up_count.subscribe();
        while replicas.list[index].up.load(Ordering::SeqCst) {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The replica for the next attempt (see [`Replicas::pick`]); while none is up, waits
    /// for one until `deadline` (`None` then).
    async fn pick(&self, avoid: Option<usize>, deadline: tokio::time::Instant) -> Option<usize> {
        let inner = &self.inner;
        let start = inner.turn.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = inner.replicas.pick(start, avoid) {
            return Some(i);
        }
        let mut up = inner.replicas.up_count.subscribe();
        loop {
            // Looked at again after subscribing: a replica that came up meanwhile is seen.
            if let Some(i) = inner.replicas.pick(start, avoid) {
                return Some(i);
            }
            tokio::select! {
                changed = up.changed() => changed.ok()?,
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = inner.stop.cancelled() => return None,
            }
        }
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

/// What a replica's reader task works with.
struct Reader {
    /// Replies come as MDP client commands (through a broker).
    mdp: bool,
    index: usize,
    endpoint: String,
    replicas: Arc<Replicas>,
    pending: Pending,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

/// Routes one replica's replies to their callers, takes the replica out when its connection
/// is lost (failing the requests on it) and puts it back when a connection is made.
async fn read_replies(r: Reader, mut rx: Receiver, mut events: tokio::sync::mpsc::Receiver<Event>) {
    let mut connected_before = false;
    loop {
        tokio::select! {
            biased;
            _ = r.stop.cancelled() => break,
            m = rx.recv() => match m {
                Ok(msg) if r.mdp => route_mdp_reply(msg, &r),
                Ok(msg) => route_reply(msg, &r.pending, &r.stats),
                Err(_) => break,
            },
            ev = events.recv() => match ev {
                Some(Event::Connected { .. }) => {
                    if connected_before {
                        r.stats.bump(Counter::Reconnects);
                        tracing::info!(endpoint = %r.endpoint, "requester reconnected");
                    }
                    connected_before = true;
                    r.replicas.set_up(r.index, true);
                }
                Some(Event::Disconnected { peer, reason, .. }) => {
                    // Out first, so a retry of the requests failed below goes elsewhere.
                    r.replicas.set_up(r.index, false);
                    fail_lost(&r, peer, &reason);
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            },
        }
    }
}

/// A lost connection takes the requests queued or in flight on it: they fail now.
fn fail_lost(r: &Reader, peer: PeerId, reason: &str) {
    let lost: Vec<Waiting> = {
        let mut map = r.pending.lock().expect("pending lock");
        let gone: Vec<u64> = map
            .iter()
            .filter(|(_, w)| w.peer == Some((r.index, peer)))
            .map(|(id, _)| *id)
            .collect();
        gone.iter().filter_map(|id| map.remove(id)).collect()
    };
    let endpoint = &r.endpoint;
    if !lost.is_empty() {
        tracing::warn!(%endpoint, count = lost.len(), reason, "replyer went away with requests in flight");
    }
    for w in lost {
        let _ = w.tx.send(Err(Error::Socket(format!(
            "the replyer at {endpoint} went away before replying"
        ))));
    }
}

/// A broker's `[MDPC02, PARTIAL | FINAL, service, body...]`: a FINAL's body is routed as a
/// direct reply is; a PARTIAL is counted and dropped.
fn route_mdp_reply(msg: Message, r: &Reader) {
    match crate::mdp::proto::parse_client_reply(msg.frames()) {
        Ok(reply) if reply.last => route_frames(&reply.body, &r.pending, &r.stats),
        Ok(_) => r.stats.bump(Counter::Partials),
        Err(e) => {
            r.stats.bump(Counter::Malformed);
            if let Some(suppressed) =
                crate::logline::WARNINGS.allow("mdp_client_malformed", &r.endpoint)
            {
                tracing::warn!(broker = %r.endpoint, suppressed, "requester ignored a malformed message from the broker: {e}");
            }
        }
    }
}

fn route_reply(msg: Message, pending: &Pending, stats: &Stats) {
    route_frames(msg.frames(), pending, stats)
}

fn route_frames(frames: &[Bytes], pending: &Pending, stats: &Stats) {
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
