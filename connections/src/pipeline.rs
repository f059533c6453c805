//! PUSH/PULL: the ZeroMQ pipeline pattern, beyond the original.
//!
//! A [`Pusher`] hands each message to exactly one connected [`Puller`], round-robin, so several
//! workers pulling from one pusher share its work fairly. Unlike PUB, a full peer queue makes
//! the pusher wait instead of dropping: back-pressure travels upstream and nothing is lost.
//! Frames are the same `{args, workflow_id}` envelope as a request.
//!
//! Either side may bind; a connecting side reconnects by itself when the binder restarts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeromq::{PullSocket, PushSocket, Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};
use crate::util::{connect_until, Monitor};
use crate::wire::{self, Request, WorkflowId};

/// Tuning for both ends of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Bind instead of connecting.
    pub is_binder: bool,
    /// How long [`Pusher::push`] waits for a peer with room (default 10 s).
    pub send_timeout: Duration,
    /// Frames larger than this are dropped and counted by the puller (default 16 MiB).
    pub max_message_bytes: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            is_binder: false,
            send_timeout: Duration::from_secs(10),
            max_message_bytes: 16 << 20,
        }
    }
}

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct Pusher {
    /// The socket, used by `push` itself (no hand-off to another task per message); `None`
    /// while a connecting pusher is between connections.
    slot: Arc<tokio::sync::Mutex<Option<PushSocket>>>,
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

#[derive(Debug)]
struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Pusher {
    /// Binds or starts connecting to `address`.
    pub async fn start(address: &Address, options: PipelineOptions) -> Result<Pusher> {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let slot = Arc::new(tokio::sync::Mutex::new(None));
        let endpoint = if options.is_binder {
            let mut socket = PushSocket::new();
            let ep = address.bind_endpoint()?;
            let bound = socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind pusher to {ep}: {e}")))?;
            *slot.lock().await = Some(socket);
            bound.to_string()
        } else {
            let ep = address.connect_endpoint()?;
            tokio::spawn(keep_connected(
                ep.clone(),
                slot.clone(),
                stats.clone(),
                stop.clone(),
            ));
            ep
        };
        Ok(Pusher {
            slot,
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

    /// Hands `args` to one puller; waits (bounded by the send timeout) while every puller is
    /// full or none is connected. `Ok` means the message is on the socket; a push that timed
    /// out is never sent later (counted in `dropped`).
    pub async fn push<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
    ) -> Result<()> {
        let msg = ZmqMessage::from(wire::encode(&Request { args, workflow_id })?);
        // Fast path, no timer: a connected peer with room takes the message at once.
        if let Ok(mut slot) = self.slot.try_lock() {
            if let Some(sock) = slot.as_mut() {
                if let Some(sent) = sock.send(msg.clone()).now_or_never() {
                    match sent {
                        Ok(()) => {
                            self.stats.bump(Counter::Sent);
                            return Ok(());
                        }
                        Err(zeromq::ZmqError::ReturnToSender { .. }) => {}
                        Err(e) => {
                            self.stats.bump(Counter::Dropped);
                            return Err(Error::Socket(e.to_string()));
                        }
                    }
                }
            }
        }
        let work = async {
            let mut pause = Duration::from_millis(1);
            loop {
                {
                    let mut slot = self.slot.lock().await;
                    if let Some(sock) = slot.as_mut() {
                        // With no peer the socket refuses at once: wait for one below.
                        match sock.send(msg.clone()).await {
                            Ok(()) => return Ok(()),
                            Err(zeromq::ZmqError::ReturnToSender { .. }) => {}
                            Err(e) => return Err(Error::Socket(e.to_string())),
                        }
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.timeout)),
        };
        match &result {
            Ok(()) => self.stats.bump(Counter::Sent),
            Err(_) => self.stats.bump(Counter::Dropped),
        }
        result
    }
}

/// Keeps a connecting pusher's socket connected: the `zeromq` crate does not reconnect
/// PUSH, so a new socket replaces the old one when the peer goes away.
async fn keep_connected(
    endpoint: String,
    slot: Arc<tokio::sync::Mutex<Option<PushSocket>>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let Some((socket, mut monitor)) = connect_until::<PushSocket>(&endpoint, &stop).await
        else {
            return;
        };
        if !first {
            stats.bump(Counter::Reconnects);
        }
        first = false;
        *slot.lock().await = Some(socket);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = monitor.next() => {
                    if matches!(ev, Some(SocketEvent::Disconnected(_)) | None) {
                        break;
                    }
                }
            }
        }
        *slot.lock().await = None;
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct Puller {
    rx: mpsc::Receiver<Bytes>,
    endpoint: String,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

impl Puller {
    /// Binds or starts connecting to `address`.
    pub async fn start(address: &Address, options: PipelineOptions) -> Result<Puller> {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(1024);
        let max = options.max_message_bytes;
        let endpoint = if options.is_binder {
            let mut socket = PullSocket::new();
            let ep = address.bind_endpoint()?;
            let bound = socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind puller to {ep}: {e}")))?;
            tokio::spawn(pull_loop(
                Some((ClosingPull(socket), None)),
                None,
                tx,
                max,
                stats.clone(),
                stop.clone(),
            ));
            bound.to_string()
        } else {
            let ep = address.connect_endpoint()?;
            tokio::spawn(pull_loop(
                None,
                Some(ep.clone()),
                tx,
                max,
                stats.clone(),
                stop.clone(),
            ));
            ep
        };
        Ok(Puller {
            rx,
            endpoint,
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

    /// The next envelope's raw bytes; `None` once closed.
    pub async fn next_raw(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The next message decoded; a malformed one is an `Err` (and counted), the stream goes on.
    pub async fn next<A: DeserializeOwned>(&mut self) -> Option<Result<Request<A>>> {
        let raw = self.rx.recv().await?;
        let decoded = wire::decode::<Request<A>>(&raw);
        if decoded.is_err() {
            self.stats.bump(Counter::Malformed);
        }
        Some(decoded)
    }
}

/// A PULL socket that closes its connections when dropped. zeromq 0.7's `PullSocket` has no
/// `Drop`: dropped as it is, its connections stay open (each read half is kept alive by the
/// waker it registered), so a pusher connected to a puller that went away goes on writing
/// into a connection nobody reads and never reconnects. Shutting the backend down closes them.
struct ClosingPull(PullSocket);

impl Drop for ClosingPull {
    fn drop(&mut self) {
        self.0.backend().shutdown();
    }
}

async fn pull_loop(
    mut socket: Option<(ClosingPull, Option<Monitor>)>,
    reconnect: Option<String>,
    tx: mpsc::Sender<Bytes>,
    max: usize,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        if socket.is_none() {
            let Some(ep) = &reconnect else { return };
            match connect_until::<PullSocket>(ep, &stop).await {
                Some((s, m)) => socket = Some((ClosingPull(s), Some(m))),
                None => return,
            }
        }
        let (sock, monitor) = socket.as_mut().expect("set above");
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            ev = async { match monitor { Some(m) => m.next().await, None => std::future::pending().await } } => {
                if matches!(ev, Some(SocketEvent::Disconnected(_)) | None) {
                    stats.bump(Counter::Reconnects);
                    socket = None;
                }
                continue;
            }
            m = sock.0.recv() => m,
        };
        let Ok(msg) = msg else { continue };
        let Some(frame) = msg.into_vec().pop() else {
            continue;
        };
        stats.bump(Counter::Received);
        if frame.len() > max {
            stats.bump(Counter::TooLarge);
            tracing::warn!(
                size = frame.len(),
                limit = max,
                "puller dropped an oversize message"
            );
            continue;
        }
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}
