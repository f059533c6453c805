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
use tokio::task::JoinHandle;
use tokio::time::Instant;
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
    /// full or none is connected. `Ok` means the message is on the socket.
    ///
    /// A push that times out waiting for a puller to connect is never sent later (counted in
    /// `dropped`). One that times out while the puller it was given to is full is still
    /// delivered once that puller makes room (counted in `timeouts`): the socket library
    /// cannot take back a message it has begun to send, and dropping such a send half way
    /// makes it forget that puller for good, so the send is always carried to its end.
    pub async fn push<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
    ) -> Result<()> {
        let encode = || {
            wire::encode(&RequestRef {
                args,
                workflow_id: &workflow_id,
            })
            .map(ZmqMessage::from)
        };
        // Read the clock only once the push has to wait.
        let mut deadline = None;
        let mut pause = Duration::from_millis(1);
        loop {
            let guard = match self.slot.clone().try_lock_owned() {
                Ok(g) => g,
                Err(_) => {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
                    match tokio::time::timeout_at(d, self.slot.clone().lock_owned()).await {
                        Ok(g) => g,
                        Err(_) => return Err(self.gave_up()),
                    }
                }
            };
            if guard.is_some() {
                let stats = self.stats.clone();
                let msg = encode()?;
                let mut send = Box::pin(async move {
                    let mut guard = guard;
                    let sock = guard.as_mut().expect("checked above");
                    let sent = sock.send(msg).await;
                    if sent.is_ok() {
                        stats.bump(Counter::Sent);
                    }
                    sent
                });
                // Fast path, no timer: a peer with room takes the message at once.
                let sent = match (&mut send).now_or_never() {
                    Some(sent) => sent,
                    None => {
                        // The peer given the message is full: the send finishes in its own
                        // task, whether or not this caller waits for it.
                        let d = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
                        match tokio::time::timeout_at(d, tokio::spawn(send)).await {
                            Ok(Ok(sent)) => sent,
                            Ok(Err(e)) => {
                                self.stats.bump(Counter::Dropped);
                                return Err(Error::Socket(format!("push task failed: {e}")));
                            }
                            Err(_) => {
                                self.stats.bump(Counter::Timeouts);
                                return Err(Error::Timeout(self.timeout));
                            }
                        }
                    }
                };
                match sent {
                    Ok(()) => return Ok(()),
                    // With no peer the socket refuses at once: wait for one below.
                    Err(zeromq::ZmqError::ReturnToSender { .. }) => {}
                    Err(e) => {
                        self.stats.bump(Counter::Dropped);
                        return Err(Error::Socket(e.to_string()));
                    }
                }
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
            if Instant::now() >= d {
                return Err(self.gave_up());
            }
            tokio::time::sleep_until((Instant::now() + pause).min(d)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// A push that found no puller within the timeout: never sent.
    fn gave_up(&self) -> Error {
        self.stats.bump(Counter::Dropped);
        Error::Timeout(self.timeout)
    }
}

/// A [`Request`] by reference, encoded the same, so a push can encode it twice.
#[derive(Serialize)]
struct RequestRef<'a, A: ?Sized> {
    args: &'a A,
    workflow_id: &'a WorkflowId,
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

/// The receiving end. It reads its socket itself, in [`Puller::next`]: no task and no
/// channel between the socket and the consumer, so a message costs no hand-off, and a
/// consumer that stops pulling makes the pushers wait (nothing piles up in between).
pub struct Puller {
    /// The socket and, for a connecting puller, its monitor; `None` while (re)connecting.
    socket: Option<(ClosingPull, Option<Monitor>)>,
    /// A connect under way (connecting pullers), started at once so that the connection is
    /// up before the first `next`.
    connecting: Option<JoinHandle<Option<(ClosingPull, Monitor)>>>,
    /// Where a connecting puller connects; `None` for a binder.
    reconnect: Option<String>,
    endpoint: String,
    max: usize,
    stats: Arc<Stats>,
    stop: DropCancel,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn start_connect(
    endpoint: String,
    stop: CancellationToken,
) -> JoinHandle<Option<(ClosingPull, Monitor)>> {
    tokio::spawn(async move {
        connect_until::<PullSocket>(&endpoint, &stop)
            .await
            .map(|(s, m)| (ClosingPull(s), m))
    })
}

/// What woke a waiting [`Puller::next_raw`].
enum Woke {
    Lost,
    Event,
    Message(zeromq::ZmqResult<ZmqMessage>),
}

impl Puller {
    /// Binds or starts connecting to `address`.
    pub async fn start(address: &Address, options: PipelineOptions) -> Result<Puller> {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let max = options.max_message_bytes;
        let (socket, connecting, reconnect, endpoint) = if options.is_binder {
            let mut socket = PullSocket::new();
            let ep = address.bind_endpoint()?;
            let bound = socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind puller to {ep}: {e}")))?;
            (
                Some((ClosingPull(socket), None)),
                None,
                None,
                bound.to_string(),
            )
        } else {
            let ep = address.connect_endpoint()?;
            let task = start_connect(ep.clone(), stop.clone());
            (None, Some(task), Some(ep.clone()), ep)
        };
        Ok(Puller {
            socket,
            connecting,
            reconnect,
            endpoint,
            max,
            stats,
            stop: DropCancel(stop),
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

    /// The next envelope's raw bytes; `None` once the puller can receive no more. Cancel
    /// safe: a message is never lost by dropping the future.
    pub async fn next_raw(&mut self) -> Option<Bytes> {
        loop {
            if self.socket.is_none() {
                let ep = self.reconnect.clone()?;
                let stop = self.stop.0.clone();
                let task = self
                    .connecting
                    .get_or_insert_with(|| start_connect(ep, stop));
                let connected = task.await;
                self.connecting = None;
                match connected {
                    Ok(Some((socket, monitor))) => self.socket = Some((socket, Some(monitor))),
                    _ => return None,
                }
            }
            let (sock, monitor) = self.socket.as_mut().expect("set above");
            let woke = tokio::select! {
                biased;
                ev = async {
                    match monitor {
                        Some(m) => m.next().await,
                        None => std::future::pending().await,
                    }
                } => match ev {
                    Some(SocketEvent::Disconnected(_)) | None => Woke::Lost,
                    Some(_) => Woke::Event,
                },
                m = sock.0.recv() => Woke::Message(m),
            };
            let msg = match woke {
                Woke::Event => continue,
                Woke::Lost => {
                    // The socket library does not reconnect PULL: a new socket replaces it,
                    // connecting at once whether or not anyone is pulling.
                    self.stats.bump(Counter::Reconnects);
                    self.socket = None;
                    if let Some(ep) = &self.reconnect {
                        self.connecting = Some(start_connect(ep.clone(), self.stop.0.clone()));
                    }
                    continue;
                }
                Woke::Message(Ok(m)) => m,
                Woke::Message(Err(_)) => continue,
            };
            let Some(frame) = msg.into_vec().pop() else {
                continue;
            };
            self.stats.bump(Counter::Received);
            if frame.len() > self.max {
                self.stats.bump(Counter::TooLarge);
                tracing::warn!(
                    size = frame.len(),
                    limit = self.max,
                    "puller dropped an oversize message"
                );
                continue;
            }
            return Some(frame);
        }
    }

    /// The next message decoded; a malformed one is an `Err` (and counted), the stream goes on.
    pub async fn next<A: DeserializeOwned>(&mut self) -> Option<Result<Request<A>>> {
        let raw = self.next_raw().await?;
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
