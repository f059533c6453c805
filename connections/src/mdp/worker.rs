//! A framework replyer served through a Majordomo broker: instead of binding a ROUTER, it
//! connects to the broker as one or more MDP 0.2 workers for one service name and runs the
//! same handler on what they are given.
//!
//! Request and reply bodies are the framework's own envelopes (one frame each), so
//! validation, error replies, workflow ids and trace ids work exactly as over a direct
//! connection. Frames before the envelope (at most [`MAX_TAG_FRAMES`]: a framework requester
//! calling through the broker sends its request id there, as `[id, "", envelope]`) are a tag
//! the worker echoes ahead of its reply, as a replyer echoes a routing envelope; that is how
//! one MDP client matches several replies in flight. Each worker serves one request at a time (MDP's rule); `workers` of them
//! serve that many at once.
//!
//! Each worker registers (READY), heartbeats every interval (sending nothing else in it), and
//! takes the broker for gone after `liveness` intervals of silence. On DISCONNECT from the
//! broker, or a silent broker, it closes its socket and registers again on a new one, as the
//! spec says: a restarted broker gets its workers back within a heartbeat or two. On stop it
//! finishes the request in hand (within the drain timeout; past it the caller is answered
//! `unavailable`), then sends DISCONNECT.
//!
//! At most once: MDP workers are meant to be idempotent (the broker gives a dead worker's
//! request to the next one). For requests that must not run twice,
//! [`WorkerOptions::at_most_once`] names them: before such a request's handler starts, the
//! worker sends the broker a PARTIAL (an empty body behind the request's tag) and then asks
//! `mmi.service` on the same connection; the handler starts when that answer arrives, that
//! is once the broker has read the PARTIAL, after which it never gives the request to
//! another worker (a caller whose worker dies is answered `503`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use sf_zmtp::{DealerSocket, Message};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{self, ToWorker};
use crate::address::Address;
use crate::error::{Error, Result};
use crate::handler::{Outcome, RawHandler};
use crate::logline::{escape, WARNINGS};
use crate::replyer::{Replyer, ReplyerOptions};
use crate::stats::{Counter, Stats};
use crate::wire::{ErrorCode, WireError, WorkflowId};

/// How a replyer behaves as MDP workers. The heartbeat must match the broker's.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Heartbeat interval (default 2.5 s, as the broker's default).
    pub heartbeat_interval: Duration,
    /// Intervals of broker silence before re-registering (default 3).
    pub liveness: u32,
    /// Workers (connections to the broker), each serving one request at a time (default 1).
    pub workers: usize,
    /// Requests (given their envelope) that must run at most once (see the module docs);
    /// `None`: every request may be given to another worker if this one dies.
    pub at_most_once: Option<RequestFilter>,
    /// Called with a worker's index each time it hears from the broker first after its READY
    /// (the broker talks only to workers it knows: the worker is registered).
    pub on_registered: Option<RegisteredHook>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            heartbeat_interval: Duration::from_millis(2500),
            liveness: 3,
            workers: 1,
            at_most_once: None,
            on_registered: None,
        }
    }
}

/// Picks requests by their envelope ([`WorkerOptions::at_most_once`]).
#[derive(Clone)]
pub struct RequestFilter(pub Arc<dyn Fn(&Bytes) -> bool + Send + Sync>);

impl std::fmt::Debug for RequestFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestFilter")
    }
}

/// [`WorkerOptions::on_registered`].
#[derive(Clone)]
pub struct RegisteredHook(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for RegisteredHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegisteredHook")
    }
}

/// The broker's own service a worker asks after an at-most-once PARTIAL.
const PROBE_SERVICE: &str = "mmi.service";

/// Most workers one replyer registers.
pub const MAX_WORKERS: usize = 256;

/// Most frames echoed ahead of a reply (the tag before the request envelope).
pub const MAX_TAG_FRAMES: usize = 4;

/// Most bytes in those frames together.
pub const MAX_TAG_BYTES: usize = 256;

/// A request body as `(tag, envelope)`: the last frame is the envelope, the frames before it
/// are echoed ahead of the reply. An error names what is wrong, and the tag is then empty.
fn split_body(body: &[Bytes]) -> std::result::Result<(&[Bytes], &Bytes), String> {
    let Some((envelope, tag)) = body.split_last() else {
        return Err("malformed request: no body frame (a framework request envelope)".into());
    };
    if tag.len() > MAX_TAG_FRAMES || tag.iter().map(Bytes::len).sum::<usize>() > MAX_TAG_BYTES {
        return Err(format!(
            "malformed request: {} frames before the request envelope; at most {MAX_TAG_FRAMES} \
             frames of {MAX_TAG_BYTES} bytes in all are echoed",
            tag.len()
        ));
    }
    Ok((tag, envelope))
}

/// A worker's FINAL: the tag, then the reply frame.
fn final_reply(client: Bytes, tag: &[Bytes], reply: Bytes) -> Message {
    proto::worker_reply(true, client, tag.iter().cloned().chain([reply]))
}

/// Connects `workers` MDP workers for `service` to the broker at `broker` and serves their
/// requests with `handler`. The returned [`Replyer`] stops, drains and counts as a bound
/// one does; its endpoint reads `mdp://<broker host:port>/<service>`.
pub async fn serve(
    broker: &Address,
    service: &str,
    handler: RawHandler,
    options: ReplyerOptions,
    worker: WorkerOptions,
) -> Result<Replyer> {
    let endpoint = broker.connect_endpoint()?;
    let name = proto::service_name(service.as_bytes())
        .ok()
        .filter(|s| !s.starts_with("mmi."))
        .ok_or_else(|| Error::Address {
            address: broker.to_string(),
            reason: format!(
                "service name {service:?}: give 1 to {} printable characters, not starting with \"mmi.\"",
                proto::MAX_SERVICE_LEN
            ),
        })?;
    let stats = Arc::new(Stats::default());
    let stop = options
        .stop
        .as_ref()
        .map_or_else(CancellationToken::new, CancellationToken::child_token);
    let n = worker.workers.clamp(1, MAX_WORKERS);
    let shared = Arc::new(Slot {
        endpoint: endpoint.clone(),
        service: name.clone(),
        handler,
        options,
        worker,
        stats: stats.clone(),
        stop: stop.clone(),
    });
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(shared.clone().run(i)))
        .collect();
    let done = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    let shown = endpoint.strip_prefix("tcp://").unwrap_or(&endpoint);
    tracing::debug!(broker = %endpoint, service = %name, workers = n, "replyer serving through a broker");
    // Its callers are the broker's peers, not its own: it reports none (a gauge of a socket
    // that never connects).
    let no_peers = DealerSocket::new().peer_gauge();
    Ok(Replyer::assemble(
        format!("mdp://{shown}/{name}"),
        stats,
        stop,
        done,
        no_peers,
    ))
}

type Running = Pin<Box<dyn Future<Output = std::thread::Result<Outcome>> + Send>>;

struct Job {
    client: Bytes,
    tag: Vec<Bytes>,
    started: Instant,
    run: Running,
}

struct Slot {
    endpoint: String,
    service: String,
    handler: RawHandler,
    options: ReplyerOptions,
    worker: WorkerOptions,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

/// Why a session ended.
enum End {
    /// Register again on a new socket.
    Again,
    /// The replyer is stopping.
    Stop,
}

impl Slot {
    async fn run(self: Arc<Self>, index: usize) {
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            match self.session(index).await {
                End::Stop => return,
                // A short pause, so a broker that refuses at once is not hammered.
                End::Again => delay = Duration::from_millis(100),
            }
        }
    }

    fn silence_limit(&self) -> Duration {
        self.worker.heartbeat_interval * self.worker.liveness.max(1)
    }

    async fn send(&self, socket: &DealerSocket, msg: Message) -> bool {
        matches!(
            tokio::time::timeout(self.silence_limit(), socket.send(msg)).await,
            Ok(Ok(()))
        )
    }

    /// One registration: from READY to DISCONNECT, a silent broker, or the stop.
    async fn session(&self, index: usize) -> End {
        let mut socket =
            DealerSocket::with_options(crate::replyer::transport_options(&self.options));
        if let Err(e) = socket.connect(&self.endpoint) {
            tracing::warn!(broker = %self.endpoint, "cannot connect to the broker: {e}");
            return End::Again;
        }
        // READY waits for the connection: however long the broker takes to come (back).
        tokio::select! {
            _ = self.stop.cancelled() => {
                socket.close().await;
                return End::Stop;
            }
            r = socket.send(proto::worker_ready(&self.service)) => if r.is_err() {
                return End::Again;
            }
        }
        tracing::info!(broker = %self.endpoint, service = %self.service, worker = index, "registered with the broker");
        let end = self.serve(&mut socket, index).await;
        if matches!(end, End::Stop) {
            let _ =
                tokio::time::timeout(Duration::from_millis(200), socket.send(proto::disconnect()))
                    .await;
        }
        socket.close().await;
        end
    }

    async fn serve(&self, socket: &mut DealerSocket, index: usize) -> End {
        let interval = self.worker.heartbeat_interval;
        let mut broker_deadline = Instant::now() + self.silence_limit();
        let mut heartbeat_at = Instant::now() + interval;
        let mut job: Option<Job> = None;
        let mut heard = false;
        // An at-most-once request's go-ahead, given when the broker answers the probe.
        let mut unconfirmed: Option<tokio::sync::oneshot::Sender<()>> = None;
        let mut drain_deadline: Option<Instant> = None;
        let stopped = self.stop.clone().cancelled_owned();
        tokio::pin!(stopped);
        loop {
            let wake = heartbeat_at.min(broker_deadline);
            tokio::select! {
                biased;
                _ = &mut stopped, if drain_deadline.is_none() => {
                    if job.is_none() {
                        return End::Stop;
                    }
                    drain_deadline = Some(Instant::now() + self.options.drain_timeout);
                }
                _ = sleep_until_opt(drain_deadline), if job.is_some() => {
                    let j = job.take().expect("a job");
                    self.stats.bump(Counter::Abandoned);
                    let outcome = Outcome::err(
                        WorkflowId::None,
                        WireError::new(ErrorCode::Unavailable, "the service stopped before this request finished"),
                    );
                    self.send(socket, final_reply(j.client, &j.tag, Bytes::from(outcome.frame))).await;
                    return End::Stop;
                }
                outcome = poll_job(&mut job), if job.is_some() => {
                    let j = job.take().expect("a job");
                    let reply = self.finish(outcome, &j);
                    if !self.send(socket, final_reply(j.client.clone(), &j.tag, reply)).await {
                        return End::Again;
                    }
                    heartbeat_at = Instant::now() + interval;
                    if drain_deadline.is_some() {
                        return End::Stop;
                    }
                }
                m = socket.recv() => {
                    let Ok(m) = m else { return End::Again };
                    broker_deadline = Instant::now() + self.silence_limit();
                    if !heard {
                        heard = true;
                        if let Some(hook) = &self.worker.on_registered {
                            (hook.0)(index);
                        }
                    }
                    if m.first().is_some_and(|h| h.as_ref() == proto::CLIENT) {
                        // The answer to the probe sent after a PARTIAL, on this connection:
                        // the broker has read the PARTIAL, so the handler may start.
                        if proto::parse_client_reply(m.frames()).is_ok_and(|r| r.service == PROBE_SERVICE) {
                            if let Some(go) = unconfirmed.take() {
                                let _ = go.send(());
                            }
                        }
                        continue;
                    }
                    match proto::parse_to_worker(m.frames()) {
                        Ok(ToWorker::Request { client, body }) => {
                            if job.is_some() || drain_deadline.is_some() {
                                // The broker gives one request at a time; one that breaks
                                // that (or one racing our stop) is refused, not dropped.
                                self.stats.bump(Counter::Refused);
                                let outcome = Outcome::err(
                                    WorkflowId::None,
                                    WireError::new(ErrorCode::Unavailable, "this worker is busy or stopping"),
                                );
                                let tag = split_body(&body).map(|(t, _)| t).unwrap_or_default();
                                if !self.send(socket, final_reply(client, tag, Bytes::from(outcome.frame))).await {
                                    return End::Again;
                                }
                                continue;
                            }
                            match self.start(client, body) {
                                Ok((j, None)) => job = Some(j),
                                Ok((j, Some(go))) => {
                                    // At most once: the PARTIAL, then the probe; the handler
                                    // waits for the probe's answer.
                                    let partial = proto::worker_reply(false, j.client.clone(), j.tag.iter().cloned().chain([Bytes::new()]));
                                    let probe = proto::client_request(PROBE_SERVICE, [Bytes::from(self.service.clone())]);
                                    if !self.send(socket, partial).await || !self.send(socket, probe).await {
                                        self.stats.end_in_flight();
                                        return End::Again;
                                    }
                                    unconfirmed = Some(go);
                                    job = Some(j);
                                }
                                Err((client, tag, reply)) => {
                                    if !self.send(socket, final_reply(client, &tag, reply)).await {
                                        return End::Again;
                                    }
                                }
                            }
                        }
                        Ok(ToWorker::Heartbeat) => {}
                        Ok(ToWorker::Disconnect) => {
                            tracing::info!(broker = %self.endpoint, service = %self.service, "the broker sent DISCONNECT: registering again");
                            self.stats.bump(Counter::Reconnects);
                            return End::Again;
                        }
                        Err(e) => {
                            self.stats.bump(Counter::Malformed);
                            if let Some(suppressed) = WARNINGS.allow("mdp_worker_malformed", &self.endpoint) {
                                tracing::warn!(broker = %self.endpoint, suppressed, "dropped a malformed message from the broker: {e}");
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= broker_deadline {
                        tracing::warn!(broker = %self.endpoint, service = %self.service, silent = ?self.silence_limit(), "the broker is silent: registering again");
                        self.stats.bump(Counter::Reconnects);
                        return End::Again;
                    }
                    if now >= heartbeat_at {
                        heartbeat_at = now + interval;
                        if socket.peer_count() > 0
                            && tokio::time::timeout(interval, socket.send(proto::heartbeat())).await.is_err()
                        {
                            tracing::debug!(broker = %self.endpoint, "heartbeat not sent within an interval");
                        }
                    }
                }
            }
        }
    }

    /// Starts the handler on a request, or says what to answer at once.
    /// With an at-most-once request, also the sender that lets its handler start.
    #[allow(clippy::type_complexity)]
    fn start(
        &self,
        client: Bytes,
        body: Vec<Bytes>,
    ) -> std::result::Result<
        (Job, Option<tokio::sync::oneshot::Sender<()>>),
        (Bytes, Vec<Bytes>, Bytes),
    > {
        self.stats.bump(Counter::Received);
        let refuse = |tag: &[Bytes], code, counter, message: String| {
            self.stats.bump(counter);
            let outcome = Outcome::err(WorkflowId::None, WireError::new(code, message));
            (client.clone(), tag.to_vec(), Bytes::from(outcome.frame))
        };
        let (tag, frame) = match split_body(&body) {
            Ok(parts) => parts,
            Err(why) => return Err(refuse(&[], ErrorCode::Malformed, Counter::Malformed, why)),
        };
        if frame.len() > self.options.max_message_bytes {
            return Err(refuse(
                tag,
                ErrorCode::TooLarge,
                Counter::TooLarge,
                format!(
                    "request of {} bytes exceeds the limit of {} bytes",
                    frame.len(),
                    self.options.max_message_bytes
                ),
            ));
        }
        self.stats.begin_in_flight();
        let (go, gate) = match &self.worker.at_most_once {
            Some(f) if (f.0)(frame) => {
                let (go, gate) = tokio::sync::oneshot::channel::<()>();
                (Some(go), Some(gate))
            }
            _ => (None, None),
        };
        let handler = (self.handler)(frame.clone());
        let run = async move {
            if let Some(gate) = gate {
                // Dropped unanswered only with the session, which drops this job too.
                let _ = gate.await;
            }
            handler.await
        };
        let job = Job {
            client,
            tag: tag.to_vec(),
            started: Instant::now(),
            run: Box::pin(
                // Run as serving a request: a requester the handler calls does not retry
                // (retries happen at the edge only, as in a bound replyer).
                std::panic::AssertUnwindSafe(crate::requester::serving(run)).catch_unwind(),
            ),
        };
        Ok((job, go))
    }

    /// Counts the outcome and gives the reply frame (a panic becomes `internal`).
    fn finish(&self, outcome: std::thread::Result<Outcome>, job: &Job) -> Bytes {
        self.stats.end_in_flight();
        self.stats.record_processing(job.started.elapsed());
        let peer: String = job.client.iter().map(|b| format!("{b:02x}")).collect();
        let outcome = outcome.unwrap_or_else(|_| {
            tracing::error!(peer, "request handler panicked");
            Outcome::err(
                WorkflowId::None,
                WireError::new(ErrorCode::Internal, "the handler failed unexpectedly"),
            )
        });
        match &outcome.error {
            None => self.stats.bump(Counter::Replied),
            Some(e) => {
                self.stats.bump(match e.code {
                    ErrorCode::InvalidArgs => Counter::InvalidArgs,
                    ErrorCode::Malformed => Counter::Malformed,
                    ErrorCode::TooLarge => Counter::TooLarge,
                    _ => Counter::HandlerFailed,
                });
                self.stats
                    .set_last_error(format!("{}: {}", e.code, e.message));
                if let Some(suppressed) = WARNINGS.allow(e.code.as_str(), &peer) {
                    tracing::warn!(peer, code = %e.code, suppressed, "request answered with an error: {}", escape(&e.message));
                }
            }
        }
        Bytes::from(outcome.frame)
    }
}

async fn poll_job(job: &mut Option<Job>) -> std::thread::Result<Outcome> {
    match job {
        Some(j) => (&mut j.run).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
