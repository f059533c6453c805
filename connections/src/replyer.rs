//! The serving side of request/reply.
//!
//! A ROUTER socket, not the original's REP: REP serves one request at a time across all
//! clients, ROUTER lets every request run concurrently. It accepts the original's REQ peers
//! (frames `[identity, "", body]`) and the framework's own DEALER requesters (frames
//! `[identity, request-id, "", body]`): every frame before the empty delimiter is the routing
//! envelope and is echoed on the reply, exactly as a REP socket would.
//!
//! Nothing a peer sends can stop the socket: an oversize or malformed frame, or a handler
//! that fails or panics, is counted, logged with the peer, and answered with an error reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use sf_zmtp::{Message, RouterSender, RouterSocket, SocketOptions};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::handler::{Outcome, RawHandler};
use crate::logline::{escape, WARNINGS};
use crate::stats::{Counter, Stats};
use crate::wire::{ErrorCode, WireError, WorkflowId};

/// Tuning for a [`Replyer`].
#[derive(Debug, Clone)]
pub struct ReplyerOptions {
    /// Requests whose body is larger are answered with `too_large` (default 16 MiB).
    pub max_message_bytes: usize,
    /// Handlers running at once; further requests wait for a slot (default 1024).
    pub max_concurrency: usize,
    /// How long [`Replyer::shutdown`] lets in-flight handlers finish (default 5 s).
    pub drain_timeout: Duration,
    /// How long replies queued at shutdown are given to leave the socket (default 1 s; the
    /// close returns as soon as they are out).
    pub linger: Duration,
    /// Begins the shutdown when cancelled (as [`Replyer::begin_shutdown`] does): a service
    /// passes its one stop token, so every replyer stops taking work at the same moment.
    pub stop: Option<CancellationToken>,
    /// NULL (the default: what Python 0.0.18 speaks) or CURVE, for every connection of the
    /// socket; refused peers are counted in `auth_failures`.
    pub security: sf_zmtp::Security,
}

impl Default for ReplyerOptions {
    fn default() -> Self {
        ReplyerOptions {
            max_message_bytes: 16 << 20,
            max_concurrency: 1024,
            drain_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            stop: None,
            security: sf_zmtp::Security::Null,
        }
    }
}

/// A bound replyer serving requests with one handler.
#[derive(Debug)]
pub struct Replyer {
    endpoint: String,
    peers: sf_zmtp::PeerGauge,
    stats: Arc<Stats>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Replyer {
    /// Binds `address` and starts serving with `handler`.
    pub async fn bind(
        address: &Address,
        handler: RawHandler,
        options: ReplyerOptions,
    ) -> Result<Replyer> {
        let endpoint = address.bind_endpoint()?;
        let socket = RouterSocket::with_options(transport_options(&options));
        let endpoint = socket
            .bind(&endpoint)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind replyer to {endpoint}: {e}")))?;
        let stats = Arc::new(Stats::default());
        let stop = options
            .stop
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child_token);
        crate::util::count_auth_failures(
            &options.security,
            || socket.monitor(),
            stats.clone(),
            stop.clone(),
        );
        let peers = socket.peer_gauge();
        let done = tokio::spawn(serve(socket, handler, options, stats.clone(), stop.clone()));
        tracing::debug!(%endpoint, "replyer bound");
        Ok(Replyer {
            endpoint,
            peers,
            stats,
            stop,
            done,
        })
    }

    /// A replyer served some other way (through a broker, see [`crate::mdp::worker`]): its
    /// parts, stopped and drained as a bound one is.
    pub(crate) fn assemble(
        endpoint: String,
        stats: Arc<Stats>,
        stop: CancellationToken,
        done: tokio::task::JoinHandle<()>,
        peers: sf_zmtp::PeerGauge,
    ) -> Replyer {
        Replyer {
            endpoint,
            stats,
            stop,
            done,
            peers,
        }
    }

    /// The endpoint actually bound (the real port when 0 was asked for).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Requesters connected now.
    pub fn peer_gauge(&self) -> sf_zmtp::PeerGauge {
        self.peers.clone()
    }

    /// Starts the stop without waiting for it: from now on new requests are answered
    /// `unavailable` (the service is stopping) while in-flight handlers drain. A service with
    /// several replyers begins all of them at once, so they drain under one deadline.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Stops taking work, lets in-flight handlers finish within the drain timeout, sends
    /// their replies, then closes the socket. Requests arriving meanwhile, and handlers still
    /// running at the deadline, are answered `unavailable`; [`Drained`] counts them.
    pub async fn shutdown(self) -> Drained {
        self.stop.cancel();
        let before = (
            self.stats.get(Counter::Refused),
            self.stats.get(Counter::Abandoned),
        );
        let _ = self.done.await;
        Drained {
            refused: self.stats.get(Counter::Refused) - before.0,
            abandoned: self.stats.get(Counter::Abandoned) - before.1,
        }
    }
}

/// What a replyer's stop left undone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Requests that arrived while stopping (answered `unavailable`).
    pub refused: u64,
    /// Handlers still running at the drain deadline (answered `unavailable`).
    pub abandoned: u64,
}

impl Drained {
    /// True if every request taken before the stop was answered by its handler.
    pub fn is_complete(&self) -> bool {
        self.abandoned == 0
    }
}

/// The socket's own limit sits above the replyer's: a request up to twice the limit is read
/// and answered with `too_large`; a peer that declares more is disconnected on the header.
pub(crate) fn transport_options(options: &ReplyerOptions) -> SocketOptions {
    let limit = options.max_message_bytes;
    SocketOptions::default()
        .max_message_bytes(limit.saturating_mul(2).max(limit.saturating_add(64 << 10)))
        .linger(options.linger)
        .security(options.security.clone())
}

async fn serve(
    socket: RouterSocket,
    handler: RawHandler,
    options: ReplyerOptions,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let (tx, mut rx) = socket.split();
    // Replies of handlers that had to wait come back here; the serve loop owns the send half
    // and sends them, and sends the replies of handlers that finished at once directly.
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Message>();
    // Cancelled once the drain is over: handlers still running are abandoned (their
    // futures dropped).
    let abandon = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(options.max_concurrency.max(1)));
    let tracker = TaskTracker::new();
    // Made once, not per request: a fresh cancellation future registers a fresh waiter.
    let stopped = stop.clone().cancelled_owned();
    tokio::pin!(stopped);
    // Replies owed by handler tasks; the reply channel is polled only while some are.
    let mut owed = 0usize;
    loop {
        let msg = tokio::select! {
            biased;
            _ = &mut stopped => break,
            reply = reply_rx.recv(), if owed > 0 => {
                if let Some(reply) = reply {
                    owed -= 1;
                    send_reply(&tx, reply);
                }
                continue;
            }
            m = rx.recv() => m,
        };
        let Ok(msg) = msg else {
            break; // the socket closed
        };
        stats.bump(Counter::Received);
        let Some((routing, body)) = split_routing(msg) else {
            stats.bump(Counter::Malformed);
            if let Some(suppressed) = WARNINGS.allow("no_body", "") {
                tracing::warn!(suppressed, "replyer dropped a message with no body frame");
            }
            continue;
        };
        if body.len() > options.max_message_bytes {
            let peer = peer_name(&routing);
            stats.bump(Counter::TooLarge);
            if let Some(suppressed) = WARNINGS.allow("too_large", &peer) {
                tracing::warn!(
                    peer,
                    size = body.len(),
                    limit = options.max_message_bytes,
                    suppressed,
                    "request too large"
                );
            }
            let err = WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "request of {} bytes exceeds the limit of {} bytes",
                    body.len(),
                    options.max_message_bytes
                ),
            );
            let outcome = Outcome::err(WorkflowId::None, err);
            send_reply(&tx, with_routing(routing, outcome.frame));
            continue;
        }
        let started = Instant::now();
        let mut run = std::panic::AssertUnwindSafe(handler(body)).catch_unwind();
        // Most handlers finish without waiting (an echo, a lookup): answer those right here,
        // with no task spawn and no hand-off. Only a handler that has to wait gets a task
        // (and a slot).
        // Run as serving a request: a requester called by the handler does not retry (only
        // the caller at the edge does; see `requester::serving`).
        if let Some(outcome) = crate::requester::serving_now(|| (&mut run).now_or_never()) {
            stats.record_processing(started.elapsed());
            send_reply(&tx, finish(outcome, &stats, routing));
            continue;
        }
        let permit = tokio::select! {
            biased;
            _ = &mut stopped => {
                stats.bump(Counter::Refused);
                send_reply(&tx, unavailable(routing, "the service is stopping"));
                break;
            }
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let reply_tx = reply_tx.clone();
        let stats = stats.clone();
        let abandon = abandon.clone();
        owed += 1;
        stats.begin_in_flight();
        tracker.spawn(async move {
            let reply = tokio::select! {
                o = crate::requester::serving(run) => {
                    stats.record_processing(started.elapsed());
                    stats.end_in_flight();
                    finish(o, &stats, routing)
                }
                _ = abandon.cancelled() => {
                    stats.end_in_flight();
                    stats.bump(Counter::Abandoned);
                    unavailable(routing, "the service stopped before this request finished")
                }
            };
            let _ = reply_tx.send(reply);
            drop(permit);
        });
    }
    // Stop accepting connections (and free the port for a successor) while in-flight
    // requests drain.
    tx.stop_listening();
    tracker.close();
    let drained = tracker.wait();
    tokio::pin!(drained);
    let deadline = tokio::time::sleep(options.drain_timeout);
    tokio::pin!(deadline);
    let mut refused = 0u64;
    let mut inbox_open = true;
    loop {
        tokio::select! {
            biased;
            reply = reply_rx.recv() => {
                if let Some(reply) = reply {
                    send_reply(&tx, reply);
                }
            }
            _ = &mut drained => break,
            _ = &mut deadline => {
                tracing::warn!(
                    in_flight = tracker.len(),
                    "replyer drain deadline passed; answering in-flight requests `unavailable`"
                );
                break;
            }
            // Work that arrives while stopping gets an answer, not silence.
            m = rx.recv(), if inbox_open => match m {
                Ok(msg) => {
                    if let Some((routing, _)) = split_routing(msg) {
                        stats.bump(Counter::Refused);
                        refused += 1;
                        send_reply(&tx, unavailable(routing, "the service is stopping"));
                    }
                }
                Err(_) => inbox_open = false,
            },
        }
    }
    abandon.cancel();
    // Abandoned handlers answer at once (their futures are dropped): wait for those replies.
    let _ = tokio::time::timeout(Duration::from_millis(200), tracker.wait()).await;
    while let Ok(reply) = reply_rx.try_recv() {
        send_reply(&tx, reply);
    }
    if refused > 0 {
        tracing::warn!(
            refused,
            "requests arrived while stopping: answered `unavailable`"
        );
    }
    // Returns once the replies are out, or after the linger.
    drop(rx);
    tx.close().await;
}

/// An `unavailable` reply to the request routed by `routing`.
fn unavailable(routing: Vec<Bytes>, why: &str) -> Message {
    let outcome = Outcome::err(
        WorkflowId::None,
        WireError::new(ErrorCode::Unavailable, why),
    );
    with_routing(routing, outcome.frame)
}

fn send_reply(tx: &RouterSender, reply: Message) {
    if let Err(e) = tx.send(reply) {
        // The peer has gone, or stopped reading past its queue (counted by the socket).
        tracing::debug!("reply not delivered: {e}");
    }
}

/// Counts a handler's outcome and builds its reply (a panic becomes an `internal` error).
fn finish(outcome: std::thread::Result<Outcome>, stats: &Stats, routing: Vec<Bytes>) -> Message {
    let outcome = outcome.unwrap_or_else(|_| {
        tracing::error!(peer = peer_name(&routing), "request handler panicked");
        Outcome::err(
            WorkflowId::None,
            WireError::new(ErrorCode::Internal, "the handler failed unexpectedly"),
        )
    });
    count_outcome(stats, &outcome, &routing);
    with_routing(routing, outcome.frame)
}

fn count_outcome(stats: &Stats, outcome: &Outcome, routing: &[Bytes]) {
    match &outcome.error {
        None => stats.bump(Counter::Replied),
        Some(e) => {
            stats.bump(match e.code {
                ErrorCode::InvalidArgs => Counter::InvalidArgs,
                ErrorCode::Malformed => Counter::Malformed,
                ErrorCode::TooLarge => Counter::TooLarge,
                _ => Counter::HandlerFailed,
            });
            stats.set_last_error(format!("{}: {}", e.code, e.message));
            let peer = peer_name(routing);
            if let Some(suppressed) = WARNINGS.allow(e.code.as_str(), &peer) {
                tracing::warn!(
                    peer,
                    code = %e.code,
                    suppressed,
                    "request answered with an error: {}",
                    escape(&e.message)
                );
            }
        }
    }
}

/// Splits `[identity, envelope..., "", body]` into the routing frames and the body. A message
/// with no delimiter (a bare DEALER) routes by everything but its last frame.
fn split_routing(msg: Message) -> Option<(Vec<Bytes>, Bytes)> {
    let mut frames = msg.into_frames();
    if frames.len() < 2 {
        return None;
    }
    let body = frames.pop()?;
    Some((frames, body))
}

fn with_routing(mut routing: Vec<Bytes>, body: Vec<u8>) -> Message {
    routing.push(Bytes::from(body));
    Message::from(routing)
}

/// The peer's identity in hex, for log lines (computed only when one is written).
fn peer_name(routing: &[Bytes]) -> String {
    routing
        .first()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}
