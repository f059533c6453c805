//! The receiving side of publish/subscribe.
//!
//! An XSUB socket underneath, because the original's topic filter is the bytes of
//! `msgpack(topic)` (not valid UTF-8, so a SUB socket's `subscribe(&str)` cannot take it): an
//! XSUB accepts the raw subscription message `0x01 + prefix`. The length header inside the
//! prefix makes the match exact, as in the original. XSUB reconnects by itself after a
//! publisher restart and re-sends its subscription.
//!
//! Framework publishers number their messages; the subscriber counts gaps (`lost`) and old or
//! repeated numbers (`duplicates`) per publisher and logs them. In credit mode it also
//! acknowledges, upstream on the same connection, the last number the consumer has taken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SocketSend, XSubSocket, ZmqMessage};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::publisher::{CreditMsg, CREDIT_TAG};
use crate::stats::{Counter, Stats};
use crate::util::connect_until;
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
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            topic: String::new(),
            is_binder: false,
            credit_window: None,
            max_message_bytes: 16 << 20,
            buffer: 8192,
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
        let (endpoint, source) = if options.is_binder {
            let ep = address.bind_endpoint()?;
            let mut socket = XSubSocket::new();
            let bound = socket
                .bind(&ep)
                .await
                .map_err(|e| Error::Socket(format!("cannot bind subscriber to {ep}: {e}")))?
                .to_string();
            (bound, Source::Bound(socket))
        } else {
            // The first connect waits for the publisher to be up, so it happens in the
            // reader task: a subscriber never holds up the service that owns it. After that
            // the XSUB reconnects by itself.
            let ep = address.connect_endpoint()?;
            (ep.clone(), Source::Connect(ep))
        };
        let prefix = if options.topic.is_empty() {
            Vec::new()
        } else {
            wire::topic_prefix(&options.topic)
        };
        let sub_id: u64 = rand::random();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
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
        tokio::spawn(reader.run(source, tx, ack_rx, sub_id, stop.clone()));
        Ok(Subscriber {
            endpoint,
            rx,
            acks,
            stats,
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

/// A no-op sent upstream by plain subscribers every 500 ms: an unsubscribe (0x00) from a
/// prefix nobody subscribes to (0xc1 is never the first byte of msgpack, so of any topic or
/// envelope). PUB and XPUB sockets, libzmq's included, ignore it.
const KEEPALIVE: &[u8] = b"\x00\xc1sf-keepalive";

fn credit_frame(c: &CreditMsg) -> Result<ZmqMessage> {
    let mut frame = vec![CREDIT_TAG];
    wire::encode_into(&mut frame, c)?;
    Ok(ZmqMessage::from(frame))
}

/// Where the reader's socket comes from.
enum Source {
    /// Already bound (`is_binder`): publishers connect to it.
    Bound(XSubSocket),
    /// To connect to, in the reader task.
    Connect(String),
}

struct Reader {
    topic: String,
    prefix: Vec<u8>,
    max: usize,
    stats: Arc<Stats>,
}

/// Just the header fields of a publish, the args skipped.
#[derive(serde::Deserialize)]
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
        source: Source,
        tx: mpsc::Sender<Delivery>,
        mut acks: Option<(mpsc::UnboundedReceiver<(u64, u64)>, u64)>,
        sub_id: u64,
        stop: CancellationToken,
    ) {
        let mut socket = match source {
            Source::Bound(socket) => socket,
            Source::Connect(ep) => match connect_until::<XSubSocket>(&ep, &stop).await {
                Some((socket, _monitor)) => socket,
                None => return,
            },
        };
        // The subscription is remembered by the socket and re-sent to every new peer; a
        // credit hello follows it on the same connection, so the publisher registers this
        // subscriber only once its subscription is in place.
        let mut subscription = Vec::with_capacity(self.prefix.len() + 1);
        subscription.push(1u8);
        subscription.extend_from_slice(&self.prefix);
        if let Err(e) = socket.send(ZmqMessage::from(subscription)).await {
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
        let mut last_seq: HashMap<u64, u64> = HashMap::new();
        let mut keepalive = tokio::time::interval(Duration::from_millis(500));
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                ack = recv_ack(&mut acks) => {
                    if let (Some((pub_id, seq)), Some((_, window))) = (ack, &acks) {
                        let c = CreditMsg { sub: sub_id, pub_id: Some(pub_id), acked: Some(seq), window: *window };
                        if let Ok(frame) = credit_frame(&c) {
                            let _ = socket.send(frame).await;
                        }
                    }
                    continue;
                }
                _ = keepalive.tick() => {
                    // Credit mode: tells credit publishers this subscriber is alive (and
                    // registers it with publishers that started after it). Both modes: an
                    // XPUB socket (bus proxy, credit publisher) dropped while its process
                    // lives leaves its connections open in zeromq 0.7, so this side would
                    // never notice and never reconnect; any message up such a connection
                    // closes it. Plain mode sends an unsubscribe that matches nothing.
                    let frame = match &acks {
                        Some((_, window)) => {
                            credit_frame(&CreditMsg { sub: sub_id, pub_id: None, acked: None, window: *window })
                        }
                        None => Ok(ZmqMessage::from(KEEPALIVE.to_vec())),
                    };
                    if let Ok(frame) = frame {
                        let _ = socket.send(frame).await;
                    }
                    continue;
                }
                m = socket.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("subscriber receive error: {e}");
                    continue;
                }
            };
            // One frame is one publish; a credit publisher batches several into one message.
            for frame in msg.into_vec() {
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

    fn parse(&self, frame: Bytes, last_seq: &mut HashMap<u64, u64>) -> Option<Delivery> {
        if frame.len() > self.max {
            self.stats.bump(Counter::TooLarge);
            tracing::warn!(
                size = frame.len(),
                limit = self.max,
                "subscriber dropped an oversize message"
            );
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
        let header: Header = match wire::decode(&body) {
            Ok(h) => h,
            Err(e) => return self.malformed(&e.to_string()),
        };
        let seq = match (header.seq, header.pub_id) {
            (Some(seq), Some(pub_id)) => {
                match last_seq.get(&pub_id).copied() {
                    Some(last) if seq <= last => {
                        self.stats.bump(Counter::Duplicates);
                        return None;
                    }
                    Some(last) if seq > last + 1 => {
                        let missed = seq - last - 1;
                        self.stats.add(Counter::Lost, missed);
                        tracing::warn!(
                            pub_id,
                            missed,
                            after = last,
                            "subscriber detected lost messages"
                        );
                    }
                    _ => {}
                }
                last_seq.insert(pub_id, seq);
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
        tracing::warn!("subscriber dropped a malformed message: {why}");
        None
    }
}

async fn recv_ack(
    acks: &mut Option<(mpsc::UnboundedReceiver<(u64, u64)>, u64)>,
) -> Option<(u64, u64)> {
    match acks {
        Some((rx, _)) => rx.recv().await,
        None => std::future::pending().await,
    }
}
