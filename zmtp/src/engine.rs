//! One connection's life after the socket has it: the handshake under its deadline, then a
//! reader (this task) and a writer (its own task) until either side ends it.
//!
//! The reader decodes frames into messages and feeds the socket's inbox, answers PINGs, applies
//! subscriptions and drops the peer when it goes silent past the heartbeat timeout. The writer
//! drains the peer's bounded queue in batches into one buffer per write (bodies of 16 KiB and
//! more go out as they are, without a copy), sends PINGs, and on close flushes what is queued
//! up to the linger deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::core::{Core, Out};
use crate::curve::{OpenError, Opener, Sealer};
use crate::ending::{Ending, Waiter, DROPPED};
use crate::error::{Error, Result};
use crate::handshake::{handshake, Local, PeerInfo};
use crate::message::Message;
use crate::monitor::{escape, Counters, Event, PeerId};
use crate::transport::Stream;
use crate::wire::frame::{header_len, put_header, COMMAND, MORE};
use crate::wire::{Command, Frame, FrameDecoder, FrameError};

/// Bodies this large are written straight from the message instead of through the buffer.
const DIRECT_WRITE: usize = 16 << 10;
/// The write buffer is flushed once it holds this much.
const FLUSH_AT: usize = 64 << 10;
/// A new read buffer has at least this much room.
const READ_CHUNK: usize = 16 << 10;
/// Reads go on in the room left while it is this large: small messages split off one buffer
/// share its allocation, instead of each read allocating anew.
const READ_LOW: usize = 4 << 10;
/// And at most this much ahead of what a frame header declared.
const READ_AHEAD_MAX: usize = 1 << 20;

/// Where a connection came from, for events and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Accepted,
    Connected,
}

/// How a session ended after its handshake.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The socket is closing.
    Closing,
    /// The connection ended; the reason.
    Lost(Error),
}

/// Runs one connection to its end. `Err` if the handshake failed.
pub(crate) async fn run(
    core: Arc<Core>,
    mut stream: Stream,
    addr: String,
    origin: Origin,
) -> Result<Ended> {
    let identity = core.options.identity.clone().unwrap_or_default();
    let local = Local {
        kind: core.kind,
        identity: &identity,
        security: &core.options.security,
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let deadline = core.options.handshake_timeout;
    let shook = tokio::select! {
        r = tokio::time::timeout(deadline, handshake(&mut stream, &mut buf, &local, core.options.limits)) => {
            r.unwrap_or(Err(Error::HandshakeTimeout(deadline)))
        }
        _ = core.stop.cancelled() => return Ok(Ended::Closing),
    };
    let mut info = match shook {
        Ok(info) => info,
        Err(e) => {
            Counters::bump(&core.counters.handshake_failures);
            if e.is_security() {
                Counters::bump(&core.counters.auth_failures);
            }
            if let Some(held) = core.warn.allow() {
                tracing::warn!(
                    socket = core.kind.as_str(),
                    peer = %addr,
                    suppressed = held,
                    "handshake failed: {e}"
                );
            }
            core.emit(Event::HandshakeFailed {
                addr: addr.clone(),
                reason: e.to_string(),
            });
            return Err(e);
        }
    };
    let reg = core.register(&info);
    Counters::bump(&core.counters.handshakes);
    core.emit(match origin {
        Origin::Accepted => Event::Accepted {
            peer: reg.id,
            addr: addr.clone(),
        },
        Origin::Connected => Event::Connected {
            peer: reg.id,
            endpoint: addr.clone(),
        },
    });
    let id = reg.id;
    if let Some(key) = &info.client_key {
        tracing::debug!(socket = core.kind.as_str(), peer = %addr, client_key = %key, "CURVE session up");
    }
    let (sealer, opener) = match info.session.take() {
        Some(s) => (Some(s.sealer), Some(s.opener)),
        None => (None, None),
    };
    let boxes = Boxes { sealer, opener };
    let ended = match stream {
        Stream::Tcp(s) => {
            let (r, w) = s.into_split();
            drive(&core, r, w, buf, reg, &info, &addr, boxes).await
        }
        Stream::Unix(s) => {
            let (r, w) = s.into_split();
            drive(&core, r, w, buf, reg, &info, &addr, boxes).await
        }
    };
    core.unregister(id).await;
    Counters::bump(&core.counters.disconnects);
    let reason = match &ended {
        Ended::Closing => "the socket closed".to_owned(),
        Ended::Lost(e) => e.to_string(),
    };
    core.emit(Event::Disconnected {
        peer: id,
        addr,
        reason,
    });
    Ok(ended)
}

/// A CURVE session's two halves: every frame is boxed on the way out, opened on the way in.
struct Boxes {
    sealer: Option<Sealer>,
    opener: Option<Opener>,
}

#[allow(clippy::too_many_arguments)]
async fn drive<R, W>(
    core: &Arc<Core>,
    rd: R,
    wr: W,
    buf: BytesMut,
    reg: crate::core::Registration,
    info: &PeerInfo,
    addr: &str,
    boxes: Boxes,
) -> Ended
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let v31 = info.greeting.is_31();
    // A 3.0 peer does not know PING; TCP keepalive is all it gets.
    let heartbeat = core.options.heartbeat.filter(|_| v31);
    let (ctrl_tx, ctrl_rx) = mpsc::channel::<Bytes>(16);
    let ending = reg.ending.clone();
    let writer = Writer {
        rx: reg.rx,
        ctrl: ctrl_rx,
        ping: heartbeat.map(|h| {
            let ttl = (h.ttl.as_millis() / 100).min(u128::from(u16::MAX)) as u16;
            (h.interval, ttl)
        }),
        ending: ending.clone(),
        linger: core.options.linger,
        initial: reg.initial,
        sealer: boxes.sealer,
    };
    let writer = core.tasks.spawn(writer.run(wr));
    let reader = Reader {
        core: core.clone(),
        peer: reg.id,
        identity: reg.identity,
        ctrl: ctrl_tx,
        ending: ending.clone(),
        timeout: heartbeat.map(|h| h.timeout),
        addr,
        opener: boxes.opener,
    };
    let ended = reader.run(rd, buf).await;
    match ended {
        Ended::Closing => {
            // The writer flushes what is queued, bounded by the linger.
            let _ = writer.await;
        }
        Ended::Lost(_) => {
            ending.set(DROPPED);
            let _ = writer.await;
        }
    }
    ended
}

/// The reader alone, as the `handshake` fuzz target runs it: what the peer sends after the
/// handshake read from `rd` into `core`'s inbox until the reader ends (no writer: PONGs go
/// nowhere; no heartbeat timeout).
pub(crate) async fn read_only<R: AsyncRead + Unpin>(
    core: &Arc<Core>,
    info: &PeerInfo,
    rd: R,
    buf: BytesMut,
) -> Ended {
    let reg = core.register(info);
    let (ctrl, _pongs) = mpsc::channel::<Bytes>(16);
    let reader = Reader {
        core: core.clone(),
        peer: reg.id,
        identity: reg.identity,
        ctrl,
        ending: reg.ending,
        timeout: None,
        addr: "fuzz",
        opener: None,
    };
    let ended = reader.run(rd, buf).await;
    core.unregister(reg.id).await;
    ended
}

struct Reader<'a> {
    core: Arc<Core>,
    peer: PeerId,
    identity: Bytes,
    ctrl: mpsc::Sender<Bytes>,
    ending: Arc<Ending>,
    timeout: Option<Duration>,
    addr: &'a str,
    opener: Option<Opener>,
}

impl Reader<'_> {
    async fn run<R: AsyncRead + Unpin>(mut self, mut rd: R, mut buf: BytesMut) -> Ended {
        let limits = self.core.options.limits;
        let mut decoder = FrameDecoder::new(match self.opener {
            // Every frame is a MESSAGE command; the limits apply to what is inside.
            Some(_) => crate::curve::session_limits(limits),
            None => limits,
        });
        let mut current = Message::new();
        let mut last_rx = Instant::now();
        // Read since the last check: the clock is read per check, not per read.
        let mut heard = false;
        // The peer's own TTL may shorten our timeout.
        let mut timeout = self.timeout;
        let mut check = self.timeout.map(|t| {
            let period = (t / 4).max(Duration::from_millis(10));
            let mut i = tokio::time::interval_at(Instant::now() + period, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            loop {
                let frame = match decoder.decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return self.violation(e),
                };
                let frame = match &mut self.opener {
                    None => frame,
                    Some(o) => match o.open(frame) {
                        Ok(f) => f,
                        Err(OpenError::Limit(e)) => return self.violation(e),
                        Err(OpenError::Refused(why)) => return self.refused_box(why),
                    },
                };
                // What goes to the inbox: a complete message routed by our kind, or a
                // subscription an XPUB passes up.
                let up = match frame {
                    Frame::Data { more, body } => {
                        current.push(body);
                        if more {
                            None
                        } else {
                            let msg = std::mem::take(&mut current);
                            self.core.inbound(self.peer, &self.identity, msg)
                        }
                    }
                    Frame::Command(body) => match Command::parse(&body) {
                        Ok(Command::Ping {
                            ttl_deciseconds,
                            context,
                        }) => {
                            if ttl_deciseconds > 0 {
                                let ttl = Duration::from_millis(u64::from(ttl_deciseconds) * 100);
                                timeout = Some(timeout.map_or(ttl, |t| t.min(ttl)));
                                if check.is_none() {
                                    let period = (ttl / 4).max(Duration::from_millis(10));
                                    check = Some(tokio::time::interval(period));
                                }
                            }
                            // A peer flooding PINGs faster than we write gets fewer PONGs.
                            let _ = self
                                .ctrl
                                .try_send(Command::Pong { context }.encode().freeze());
                            None
                        }
                        Ok(Command::Pong { .. }) | Ok(Command::Other(_)) => None,
                        Ok(Command::Subscribe(topic)) => {
                            self.core.subscription(self.peer, true, &topic)
                        }
                        Ok(Command::Cancel(topic)) => {
                            self.core.subscription(self.peer, false, &topic)
                        }
                        Ok(Command::Error(reason)) => {
                            return Ended::Lost(Error::Refused(escape(&reason)));
                        }
                        Ok(Command::Ready(_)) => {
                            return self
                                .protocol(Error::Handshake("READY after the handshake".into()))
                        }
                        Err(e) => return self.protocol(e.into()),
                    },
                };
                if let Some(m) = up {
                    // No future is made unless the inbox is full.
                    match self.core.inbox.try_send(m) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ended::Closing,
                        Err(mpsc::error::TrySendError::Full(m)) => {
                            if let Err(e) = self.wait_inbox(m).await {
                                return e;
                            }
                            // We were not reading: the peer's silence is ours.
                            heard = true;
                        }
                    }
                }
            }
            let wanted = decoder.wanted(&buf);
            let room = buf.capacity() - buf.len();
            if room < READ_LOW || room < wanted.min(READ_AHEAD_MAX) {
                buf.reserve(wanted.clamp(READ_CHUNK, READ_AHEAD_MAX));
            }
            tokio::select! {
                biased;
                c = self.ending.wait(Waiter::Reader) => return ended_by(c),
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => return Ended::Lost(Error::PeerClosed),
                    Ok(_) => heard = true,
                    Err(e) => return Ended::Lost(Error::io("read", e)),
                },
                _ = tick(&mut check) => {
                    if let Some(t) = timeout {
                        if std::mem::take(&mut heard) {
                            last_rx = Instant::now();
                        } else if last_rx.elapsed() > t {
                            Counters::bump(&self.core.counters.heartbeat_timeouts);
                            if let Some(held) = self.core.warn.allow() {
                                tracing::warn!(
                                    socket = self.core.kind.as_str(),
                                    peer = %self.addr,
                                    suppressed = held,
                                    "peer silent for {t:?}: dropped"
                                );
                            }
                            return Ended::Lost(Error::HeartbeatTimeout(t));
                        }
                    }
                }
            }
        }
    }

    /// The inbox is full: wait for room (the receiver is behind) or for the end.
    async fn wait_inbox(&mut self, msg: Message) -> Result<(), Ended> {
        tokio::select! {
            r = self.core.inbox.send(msg) => r.map_err(|_| Ended::Closing),
            c = self.ending.wait(Waiter::Reader) => Err(ended_by(c)),
        }
    }

    fn violation(&self, e: FrameError) -> Ended {
        let limit = matches!(
            e,
            FrameError::MessageTooLarge { .. }
                | FrameError::CommandTooLarge { .. }
                | FrameError::TooManyFrames { .. }
        );
        if limit {
            Counters::bump(&self.core.counters.limit_violations);
            if let Some(held) = self.core.warn.allow() {
                tracing::warn!(
                    socket = self.core.kind.as_str(),
                    peer = %self.addr,
                    suppressed = held,
                    "peer disconnected: {e}"
                );
            }
            Ended::Lost(Error::Frame(e))
        } else {
            self.protocol(Error::Frame(e))
        }
    }

    /// A CURVE box that does not open, or came out of order: dropped, nothing of it delivered.
    fn refused_box(&self, why: String) -> Ended {
        Counters::bump(&self.core.counters.crypto_failures);
        Counters::bump(&self.core.counters.protocol_errors);
        if let Some(held) = self.core.warn.allow() {
            tracing::warn!(
                socket = self.core.kind.as_str(),
                peer = %self.addr,
                suppressed = held,
                "peer disconnected: {why}"
            );
        }
        Ended::Lost(Error::Security(why))
    }

    fn protocol(&self, e: Error) -> Ended {
        Counters::bump(&self.core.counters.protocol_errors);
        if let Some(held) = self.core.warn.allow() {
            tracing::warn!(
                socket = self.core.kind.as_str(),
                peer = %self.addr,
                suppressed = held,
                "peer broke the protocol: {e}"
            );
        }
        Ended::Lost(e)
    }
}

/// How the reader ends for the causes `Ending` gives: a drop wins over a close.
fn ended_by(causes: u8) -> Ended {
    if causes & DROPPED != 0 {
        Ended::Lost(Error::Closed)
    } else {
        Ended::Closing
    }
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

struct Writer {
    rx: mpsc::Receiver<Out>,
    ctrl: mpsc::Receiver<Bytes>,
    ping: Option<(Duration, u16)>,
    ending: Arc<Ending>,
    linger: Duration,
    initial: Vec<Out>,
    sealer: Option<Sealer>,
}

impl Writer {
    async fn run<W: AsyncWrite + Unpin>(mut self, mut w: W) {
        let mut out = BytesMut::with_capacity(FLUSH_AT);
        let mut batch: Vec<Out> = Vec::with_capacity(128);
        for o in std::mem::take(&mut self.initial) {
            if put_out(&mut self.sealer, o, &mut out, &mut w)
                .await
                .is_err()
            {
                self.ending.set(DROPPED);
                return;
            }
        }
        let mut ping = self.ping.map(|(every, ttl)| {
            let mut i = tokio::time::interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (i, ttl)
        });
        loop {
            if !out.is_empty() && w.write_all(&out).await.is_err() {
                self.ending.set(DROPPED);
                return;
            }
            out.clear();
            tokio::select! {
                biased;
                c = self.ending.wait(Waiter::Writer) => {
                    if c & DROPPED == 0 {
                        // The socket is closing: what is queued goes out within the linger.
                        let _ = tokio::time::timeout(self.linger, self.flush_rest(out, w)).await;
                    }
                    return;
                }
                // Disabled once the reader has gone (the channel then yields `None` at once).
                Some(c) = self.ctrl.recv() => {
                    if put_cmd(&mut self.sealer, &mut out, &c).is_err() {
                        self.ending.set(DROPPED);
                        return;
                    }
                }
                n = self.rx.recv_many(&mut batch, 128) => {
                    if n == 0 {
                        return;
                    }
                    for o in batch.drain(..) {
                        if put_out(&mut self.sealer, o, &mut out, &mut w).await.is_err() {
                            self.ending.set(DROPPED);
                            return;
                        }
                    }
                }
                _ = ping_tick(&mut ping) => {
                    let ttl = ping.as_ref().map_or(0, |p| p.1);
                    let c = Command::Ping { ttl_deciseconds: ttl, context: Bytes::new() }.encode();
                    if put_cmd(&mut self.sealer, &mut out, &c).is_err() {
                        self.ending.set(DROPPED);
                        return;
                    }
                }
            }
            while let Ok(c) = self.ctrl.try_recv() {
                if put_cmd(&mut self.sealer, &mut out, &c).is_err() {
                    self.ending.set(DROPPED);
                    return;
                }
            }
        }
    }

    /// Linger: what is queued goes out, then the write side closes.
    async fn flush_rest<W: AsyncWrite + Unpin>(mut self, mut out: BytesMut, mut w: W) {
        self.rx.close();
        while let Some(o) = self.rx.recv().await {
            if put_out(&mut self.sealer, o, &mut out, &mut w)
                .await
                .is_err()
            {
                return;
            }
            if out.len() >= FLUSH_AT {
                if w.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if w.write_all(&out).await.is_ok() {
            let _ = w.shutdown().await;
        }
    }
}

async fn ping_tick(p: &mut Option<(tokio::time::Interval, u16)>) {
    match p {
        Some((i, _)) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A command, boxed on a CURVE session.
fn put_cmd(sealer: &mut Option<Sealer>, out: &mut BytesMut, body: &[u8]) -> std::io::Result<()> {
    match sealer {
        Some(s) => s.seal_frame(out, true, false, body),
        None => {
            put_command(out, body);
            Ok(())
        }
    }
}

/// One queued item: as it is (see [`encode`]), or each frame boxed on a CURVE session (the
/// box is a copy anyway, so large bodies take no special path).
async fn put_out<W: AsyncWrite + Unpin>(
    sealer: &mut Option<Sealer>,
    o: Out,
    out: &mut BytesMut,
    w: &mut W,
) -> std::io::Result<()> {
    let Some(s) = sealer else {
        return encode(o, out, w).await;
    };
    match o {
        Out::Cmd(c) => s.seal_frame(out, true, false, &c)?,
        Out::Msg(m) => {
            let n = m.len();
            for (i, f) in m.into_iter().enumerate() {
                s.seal_frame(out, false, i + 1 < n, &f)?;
                if out.len() >= FLUSH_AT {
                    w.write_all(out).await?;
                    out.clear();
                }
            }
        }
    }
    if out.len() >= FLUSH_AT {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

fn put_command(out: &mut BytesMut, body: &[u8]) {
    out.reserve(header_len(body.len()) + body.len());
    put_header(out, COMMAND, body.len());
    out.put_slice(body);
}

/// Writes `a` then `b`, vectored, to the end.
async fn write_pair<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            w.write(b).await?
        } else {
            w.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    Ok(())
}

/// Appends one queued item to `out`, writing `out` and large bodies through `w` as needed.
async fn encode<W: AsyncWrite + Unpin>(
    o: Out,
    out: &mut BytesMut,
    w: &mut W,
) -> std::io::Result<()> {
    match o {
        Out::Cmd(c) => put_command(out, &c),
        Out::Msg(m) => {
            let n = m.len();
            for (i, f) in m.into_iter().enumerate() {
                let flags = if i + 1 < n { MORE } else { 0 };
                if f.len() >= DIRECT_WRITE {
                    // What is buffered (this header included) and the body, in one vectored
                    // write: no copy of the body, no extra system call.
                    put_header(out, flags, f.len());
                    write_pair(w, out, &f).await?;
                    out.clear();
                } else {
                    out.reserve(header_len(f.len()) + f.len());
                    put_header(out, flags, f.len());
                    out.put_slice(&f);
                }
            }
        }
    }
    if out.len() >= FLUSH_AT {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_frames_are_written_whole_after_what_was_buffered() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let big = Bytes::from(vec![7u8; DIRECT_WRITE * 3]);
        let mut msg = Message::new();
        msg.push(Bytes::from_static(b"head"));
        msg.push(big.clone());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut out = BytesMut::new();
        encode(Out::Msg(msg), &mut out, &mut a).await.unwrap();
        a.write_all(&out).await.unwrap();
        drop(a);
        let mut got = BytesMut::from(&reader.await.unwrap()[..]);
        let mut d = FrameDecoder::new(crate::wire::Limits::default());
        assert_eq!(
            d.decode(&mut got).unwrap(),
            Some(Frame::Data {
                more: true,
                body: Bytes::from_static(b"head")
            })
        );
        assert_eq!(
            d.decode(&mut got).unwrap(),
            Some(Frame::Data {
                more: false,
                body: big
            })
        );
        assert!(got.is_empty());
    }
}
