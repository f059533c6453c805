//! PUSH/PULL: the ZeroMQ pipeline pattern, beyond the original.
//!
//! A [`Pusher`] hands each message to exactly one connected [`Puller`], round-robin, so several
//! workers pulling from one pusher share its work fairly. Unlike PUB, a full peer queue makes
//! the pusher wait instead of dropping: back-pressure travels upstream and nothing is lost.
//! Frames are the same `{args, workflow_id}` envelope as a request.
//!
//! Either side may bind; a connecting side reconnects by itself when the binder restarts (the
//! transport does it). Each puller connection holds at most a bounded queue, so a stalled
//! worker costs its own queue and then its share of pushes goes to the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sf_zmtp::{Message, PullSocket, PushSocket, SocketOptions};
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};
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
    /// NULL (the default: what Python 0.0.18 speaks) or CURVE, for every connection of the
    /// socket; refused peers are counted in `auth_failures`.
    pub security: sf_zmtp::Security,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            is_binder: false,
            send_timeout: Duration::from_secs(10),
            max_message_bytes: 16 << 20,
            security: sf_zmtp::Security::Null,
        }
    }
}

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct Pusher {
    socket: Arc<PushSocket>,
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
            socket: Arc::new(socket),
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

    /// Flushes what is queued to the pullers (up to `linger`) and closes the socket; every
    /// clone fails from then on.
    pub async fn shutdown(&self, linger: Duration) {
        let _ = tokio::time::timeout(linger, self.socket.shutdown()).await;
    }

    /// Hands `args` to one puller; waits (bounded by the send timeout) while every puller is
    /// full or none is connected. `Ok` means the message is queued on a puller's connection.
    ///
    /// A push that times out is never sent: it is counted in `dropped` if no puller was
    /// connected, in `timeouts` if every puller was full.
    pub async fn push<A: Serialize + ?Sized>(
        &self,
        args: &A,
        workflow_id: WorkflowId,
    ) -> Result<()> {
        let msg = Message::single(wire::encode(&RequestRef {
            args,
            workflow_id: &workflow_id,
        })?);
        let send = self.socket.send(msg);
        tokio::pin!(send);
        // Fast path, no timer: a puller with room takes the message at once.
        let sent = match (&mut send).now_or_never() {
            Some(r) => r,
            None => match tokio::time::timeout(self.timeout, send).await {
                Ok(r) => r,
                Err(_) => {
                    self.stats.bump(if self.socket.peer_count() == 0 {
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
}

/// The receiving end. It reads its socket itself, in [`Puller::next`]: no task and no
/// channel between the socket and the consumer, so a message costs no hand-off, and a
/// consumer that stops pulling makes the pushers wait (the socket's queue is bounded).
pub struct Puller {
    socket: PullSocket,
    endpoint: String,
    max: usize,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Puller {
    /// Binds or starts connecting to `address`.
    pub async fn start(address: &Address, options: PipelineOptions) -> Result<Puller> {
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let socket = PullSocket::with_options(transport_options(&options));
        crate::util::count_auth_failures(
            &options.security,
            || socket.monitor(),
            stats.clone(),
            stop.clone(),
        );
        let endpoint = attach!(socket, address, options, stats, stop, "puller");
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

    /// The next envelope's raw bytes; `None` once the puller can receive no more. Cancel
    /// safe: a message is never lost by dropping the future.
    pub async fn next_raw(&mut self) -> Option<Bytes> {
        loop {
            let msg = self.socket.recv().await.ok()?;
            let Some(frame) = msg.into_frames().pop() else {
                continue;
            };
            self.stats.bump(Counter::Received);
            if frame.len() > self.max {
                self.stats.bump(Counter::TooLarge);
                if let Some(suppressed) = crate::logline::WARNINGS.allow("pull_too_large", "") {
                    tracing::warn!(
                        size = frame.len(),
                        limit = self.max,
                        suppressed,
                        "puller dropped an oversize message"
                    );
                }
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
