//! The bodies of the fuzz targets in `zmtp/fuzz`, shared with the corpus replay test
//! (`tests/corpus_replay.rs`) so that CI runs every saved input through the same code. Not
//! API: hidden from the docs and free to change.
//!
//! Each function takes arbitrary bytes and must return without panicking. Beyond "no
//! panic", each asserts what the parsers promise: limits hold on every frame handed out,
//! chunking does not change what is decoded, and encoders round-trip what was parsed.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::handshake::{handshake as run_handshake, Local};
use crate::message::Message;
use crate::options::SocketType;
use crate::wire::frame::put_frame;
use crate::wire::greeting::SIGNATURE_LEN;
use crate::wire::{Command, Frame, FrameDecoder, FrameError, Greeting, Limits, GREETING_LEN};
use crate::{Error, Mechanism};

/// Target `greeting`: the signature check on any length, the parse on the first 64 octets.
pub fn greeting(data: &[u8]) {
    let signature = Greeting::check_signature(data);
    if data.len() < SIGNATURE_LEN {
        assert!(signature.is_err(), "a short signature passed");
    }
    let Some(raw) = data.first_chunk::<GREETING_LEN>() else {
        return;
    };
    match Greeting::parse(raw) {
        Ok(g) => {
            assert!(signature.is_ok(), "parsed a greeting with a bad signature");
            assert!(g.major >= crate::wire::greeting::MAJOR);
            assert!(!g.mechanism.is_empty() && g.mechanism.len() <= 20);
            assert!(g.mechanism.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(Greeting::parse(&g.encode()).as_ref(), Ok(&g));
            let _ = g.is_31();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Limits small enough for the fuzzer to reach every bound, and "no limit at all" (what a
/// user gets by setting every field to `usize::MAX`).
const LIMITS: [Limits; 5] = [
    Limits {
        max_message_bytes: 0,
        max_frames: 1,
        max_command_bytes: 0,
    },
    Limits {
        max_message_bytes: 64,
        max_frames: 4,
        max_command_bytes: 16,
    },
    Limits {
        max_message_bytes: 300,
        max_frames: 8,
        max_command_bytes: 300,
    },
    Limits {
        max_message_bytes: 4096,
        max_frames: 64,
        max_command_bytes: 1024,
    },
    Limits {
        max_message_bytes: usize::MAX,
        max_frames: usize::MAX,
        max_command_bytes: usize::MAX,
    },
];

/// Target `frames`. Octet 0 picks the [`LIMITS`], octet 1 the chunk size the stream arrives
/// in (0: all at once); the rest is the stream. Every command frame goes to
/// [`Command::parse`].
pub fn frames(data: &[u8]) {
    let [pick, chunk, stream @ ..] = data else {
        return;
    };
    let limits = LIMITS[usize::from(*pick) % LIMITS.len()];
    let chunked = decode_stream(stream, limits, usize::from(*chunk));
    // Chunking changes nothing: the same frames, then the same error or the same wait.
    let whole = decode_stream(stream, limits, 0);
    assert_eq!(chunked, whole, "chunks of {chunk} decode differently");

    // The frames accepted, written back out, decode to themselves.
    let mut again = BytesMut::new();
    for f in &whole.frames {
        match f {
            Frame::Data { more, body } => {
                put_frame(&mut again, if *more { 0x01 } else { 0 }, body);
            }
            Frame::Command(body) => put_frame(&mut again, 0x04, body),
        }
    }
    let back = decode_stream(&again, limits, 0);
    assert_eq!(
        back.frames, whole.frames,
        "re-encoded frames decode differently"
    );
    assert_eq!(back.error, None);
}

/// What a stream decodes to.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    /// Octets left undecoded at the end.
    rest: usize,
}

/// Feeds `stream` to a decoder `chunk` octets at a time (0: all at once), as the engine
/// reads, checking each frame against the limits and parsing each command.
fn decode_stream(stream: &[u8], limits: Limits, chunk: usize) -> Decoded {
    let mut decoder = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
        rest: 0,
    };
    let (mut msg_bytes, mut msg_frames) = (0usize, 0usize);
    let step = if chunk == 0 {
        stream.len().max(1)
    } else {
        chunk
    };
    'feed: for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    match &frame {
                        Frame::Data { more, body } => {
                            msg_bytes += body.len();
                            msg_frames += 1;
                            assert!(msg_bytes <= limits.max_message_bytes, "message limit");
                            assert!(msg_frames <= limits.max_frames, "frame limit");
                            if !more {
                                (msg_bytes, msg_frames) = (0, 0);
                            }
                        }
                        Frame::Command(body) => {
                            assert_eq!(msg_frames, 0, "a command inside a message");
                            assert!(body.len() <= limits.max_command_bytes, "command limit");
                            command(body);
                        }
                    }
                    assert_eq!(decoder.in_message(), msg_frames > 0);
                    out.frames.push(frame);
                }
                Ok(None) => {
                    // What the engine does with it: reserve a bounded part.
                    let _ = decoder.wanted(&buf).clamp(16 << 10, 1 << 20);
                    break;
                }
                Err(e) => {
                    let _ = e.to_string();
                    out.error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    out.rest = if out.error.is_some() { 0 } else { buf.len() };
    out
}

/// Parses one command body; what parses must encode back to itself.
fn command(body: &Bytes) {
    match Command::parse(body) {
        Ok(c) => {
            let round_trips = match &c {
                Command::Ready(meta) => {
                    if let Some(kind) = meta.get("Socket-Type") {
                        let _ = SocketType::from_wire(kind);
                    }
                    true
                }
                Command::Ping { .. }
                | Command::Pong { .. }
                | Command::Subscribe(_)
                | Command::Cancel(_) => true,
                // Names and reasons are kept lossily as text: no byte-exact round trip.
                _ => false,
            };
            if round_trips {
                assert_eq!(Command::parse(&c.encode().freeze()).as_ref(), Ok(&c));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

const KINDS: [SocketType; 11] = [
    SocketType::Req,
    SocketType::Rep,
    SocketType::Dealer,
    SocketType::Router,
    SocketType::Pub,
    SocketType::XPub,
    SocketType::Sub,
    SocketType::XSub,
    SocketType::Push,
    SocketType::Pull,
    SocketType::Pair,
];

/// The limits of the `handshake` target: small, so that the fuzzer reaches them.
const HANDSHAKE_LIMITS: Limits = Limits {
    max_message_bytes: 1024,
    max_frames: 8,
    max_command_bytes: 512,
};

/// Target `handshake`. Octet 0: the low nibble picks our socket type, the high nibble the
/// chunk the peer's octets arrive in (0: all at once, n: 2^(n-1) octets). The rest is what
/// the peer sends: its greeting, its READY, then what the engine reads after the handshake.
pub fn handshake(data: &[u8]) {
    let [head, peer_bytes @ ..] = data else {
        return;
    };
    let kind = KINDS[usize::from(head & 0x0f) % KINDS.len()];
    let chunk = match head >> 4 {
        0 => usize::MAX,
        n => 1 << (n - 1),
    };
    let mut peer = Peer {
        input: peer_bytes,
        chunk,
        output: Vec::new(),
    };
    let local = Local {
        kind,
        identity: b"fuzz",
        mechanism: &Mechanism::Null,
    };
    let mut buf = BytesMut::new();
    let shook = complete(run_handshake(&mut peer, &mut buf, &local, HANDSHAKE_LIMITS));
    check_what_we_sent(&peer.output, kind);
    let info = match shook {
        Ok(info) => info,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let peer_kind = info
        .metadata
        .get("Socket-Type")
        .and_then(|t| SocketType::from_wire(t));
    assert_eq!(peer_kind, Some(info.kind));
    assert!(kind.compatible(info.kind));
    assert!(info.identity.len() <= 255);
    assert_eq!(info.greeting.mechanism, "NULL");

    // The engine's reader, without a socket behind it: frames to messages, commands parsed
    // and answered, until the peer breaks the protocol or stops sending.
    let mut decoder = FrameDecoder::new(HANDSHAKE_LIMITS);
    let mut current = Message::new();
    loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let _ = Error::Frame(e).to_string();
                    return;
                }
            };
            match frame {
                Frame::Data { more, body } => {
                    current.push(body);
                    assert!(current.len() <= HANDSHAKE_LIMITS.max_frames);
                    assert!(current.byte_len() <= HANDSHAKE_LIMITS.max_message_bytes);
                    if !more {
                        let _ = std::mem::take(&mut current);
                    }
                }
                Frame::Command(body) => match Command::parse(&body) {
                    Ok(Command::Ping {
                        ttl_deciseconds,
                        context,
                    }) => {
                        let _ = Duration::from_millis(u64::from(ttl_deciseconds) * 100);
                        let _ = Command::Pong { context }.encode();
                    }
                    Ok(Command::Error(reason)) => {
                        let _ = Error::Refused(crate::monitor::escape(&reason)).to_string();
                        return;
                    }
                    Ok(Command::Ready(_)) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
        let _ = decoder.wanted(&buf).clamp(16 << 10, 1 << 20);
        let n = peer.input.len().min(peer.chunk);
        if n == 0 {
            return;
        }
        let (now, later) = peer.input.split_at(n);
        buf.extend_from_slice(now);
        peer.input = later;
    }
}

/// Our side of any handshake sends our greeting, then READY with our type, and an ERROR
/// before or after it when refusing the peer: all of it must parse.
fn check_what_we_sent(out: &[u8], kind: SocketType) {
    let Some(raw) = out.first_chunk::<GREETING_LEN>() else {
        panic!("our greeting was not sent");
    };
    assert_eq!(Greeting::parse(raw), Ok(Greeting::ours("NULL", false)));
    let mut buf = BytesMut::from(&out[GREETING_LEN..]);
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut first = true;
    while let Some(frame) = decoder.decode(&mut buf).expect("our own frames decode") {
        let Frame::Command(body) = frame else {
            panic!("we sent a message during the handshake");
        };
        match Command::parse(&body).expect("our own commands parse") {
            Command::Ready(meta) if first => {
                let ours = meta.get("Socket-Type").map(|t| t.as_ref());
                assert_eq!(ours, Some(kind.as_str().as_bytes()));
            }
            Command::Error(_) => {}
            other => panic!("we sent {other:?} during the handshake"),
        }
        first = false;
    }
    assert!(buf.is_empty(), "we sent a truncated frame");
}

/// Runs a future on the in-memory [`Peer`] to its end. It never waits (every read and write
/// is ready at once), so one poll finishes it; anything else would be a hang.
fn complete<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the handshake waited on a stream that is always ready"),
    }
}

/// The peer of a fuzzed connection, in memory: reads hand out its input `chunk` octets at a
/// time and then end of stream; writes are kept.
#[derive(Debug)]
struct Peer<'a> {
    input: &'a [u8],
    chunk: usize,
    output: Vec<u8>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.input.len().min(this.chunk).min(buf.remaining());
        let (now, later) = this.input.split_at(n);
        buf.put_slice(now);
        this.input = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
