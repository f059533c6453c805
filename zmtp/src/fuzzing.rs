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

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::core::Core;
use crate::engine::{read_only, Ended};
use crate::handshake::{handshake as run_handshake, Local};
use crate::options::{SocketOptions, SocketType};
use crate::wire::frame::put_frame;
use crate::wire::greeting::SIGNATURE_LEN;
use crate::wire::{Command, Frame, FrameDecoder, FrameError, Greeting, Limits, GREETING_LEN};
use crate::Security;

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
        security: &Security::Null,
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

    // The engine's own reader on what follows, without a socket behind it: frames to
    // messages routed by our kind, commands parsed and answered, until the peer breaks the
    // protocol or stops sending. The inbox has room for every message the input can make
    // (a frame is at least 2 octets; an XPUB also passes up a cancel per subscription when
    // the peer goes), counting what the handshake read ahead into `buf`, so the reader
    // never waits and the run always ends.
    let options = SocketOptions {
        limits: HANDSHAKE_LIMITS,
        heartbeat: None,
        recv_hwm: buf.len() + peer.input.len() + 8,
        ..SocketOptions::default()
    };
    let (core, mut inbox) = Core::new(kind, options);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    match rt.block_on(read_only(&core, &info, &mut peer, buf)) {
        Ended::Closing => panic!("the reader saw a close nobody asked for"),
        Ended::Lost(e) => {
            let _ = e.to_string();
        }
    }
    // What reached the inbox respects the limits (a ROUTER puts the peer's id, at most 255
    // octets, in front; an XPUB passes subscriptions up as one frame).
    while let Ok(m) = inbox.try_recv() {
        assert!(
            m.len() <= HANDSHAKE_LIMITS.max_frames + 1,
            "{} frames",
            m.len()
        );
        assert!(
            m.byte_len() <= HANDSHAKE_LIMITS.max_message_bytes + 256,
            "{} octets",
            m.byte_len()
        );
    }
}

/// Our side of any handshake sends our greeting (or, to a peer refused on its signature, the
/// first 12 octets of it), then READY with our type, and an ERROR before or after it when
/// refusing the peer: all of it must parse.
fn check_what_we_sent(out: &[u8], kind: SocketType) {
    let Some(raw) = out.first_chunk::<GREETING_LEN>() else {
        // Our mechanism waits for the peer's version: a peer refused on its signature got our
        // signature and version only.
        let ours = Greeting::ours("NULL", false).encode();
        assert!(out.len() >= 12, "our signature and version were not sent");
        assert_eq!(
            out,
            &ours[..out.len()],
            "a partial greeting that is not ours"
        );
        return;
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

// ---- CURVE -------------------------------------------------------------------------------

/// The fixed long-term keys of the `curve` target: the server's secret, the client's secret.
const CURVE_SERVER_SECRET: [u8; 32] = [0x11; 32];
const CURVE_CLIENT_SECRET: [u8; 32] = [0x22; 32];

fn curve_security(server: bool) -> Security {
    let server_secret = crate::security::SecretKey::from_bytes(CURVE_SERVER_SECRET);
    if server {
        Security::curve_server(server_secret, crate::security::Authorizer::allow_any())
    } else {
        Security::curve_client(
            server_secret.public_key(),
            crate::security::KeyPair::from_secret(crate::security::SecretKey::from_bytes(
                CURVE_CLIENT_SECRET,
            )),
        )
    }
}

/// Target `curve`. Octet 0, bit 7 clear: the CURVE handshake decoder. Bits 0-3 pick our socket
/// type, bit 4 our role (set: server, with the fixed key `CURVE_SERVER_SECRET`; clear: client of
/// it), bits 5-6 the read chunk (all at once, 1, 7, 64 octets). The rest is what the peer
/// sends: its greeting and HELLO/INITIATE (to a server) or WELCOME/READY (to a client).
///
/// Bit 7 set: the MESSAGE decoder of an established session (fixed keys, see
/// `curve::test_pair`), under `LIMITS[bits 0-2]`: the rest is the stream of frames
/// off the wire. Every box that opens must respect the limits, and the frames opened, sealed
/// again, must open to themselves.
pub fn curve(data: &[u8]) {
    let [head, rest @ ..] = data else {
        return;
    };
    if head & 0x80 != 0 {
        curve_boxes(*head, rest);
    } else {
        curve_handshake(*head, rest);
    }
}

fn curve_handshake(head: u8, peer_bytes: &[u8]) {
    let kind = KINDS[usize::from(head & 0x0f) % KINDS.len()];
    let server = head & 0x10 != 0;
    let chunk = [usize::MAX, 1, 7, 64][usize::from((head >> 5) & 0x03)];
    let security = curve_security(server);
    let mut peer = Peer {
        input: peer_bytes,
        chunk,
        output: Vec::new(),
    };
    let local = Local {
        kind,
        identity: b"fuzz",
        security: &security,
    };
    let mut buf = BytesMut::new();
    let shook = complete(run_handshake(&mut peer, &mut buf, &local, HANDSHAKE_LIMITS));
    check_what_we_sent_curve(&peer.output, server);
    match shook {
        Ok(info) => {
            // Only a peer holding the keys gets here (the fuzzer cannot forge a box).
            assert!(info.session.is_some());
            assert!(kind.compatible(info.kind));
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.is_security();
        }
    }
}

/// Our side of a CURVE handshake: the greeting (or its first 12 octets), then only HELLO and
/// INITIATE (client) or WELCOME, READY and ERROR (server), each of its exact size.
fn check_what_we_sent_curve(out: &[u8], server: bool) {
    let ours = Greeting::ours("CURVE", server).encode();
    if out.len() < GREETING_LEN {
        assert!(out.len() >= 12, "our signature and version were not sent");
        assert_eq!(out, &ours[..out.len()]);
        return;
    }
    assert_eq!(&out[..GREETING_LEN], &ours[..]);
    let mut buf = BytesMut::from(&out[GREETING_LEN..]);
    let mut decoder = FrameDecoder::new(Limits::default());
    while let Some(frame) = decoder.decode(&mut buf).expect("our own frames decode") {
        let Frame::Command(body) = frame else {
            panic!("we sent a message during the handshake");
        };
        let name = body
            .get(1..1 + usize::from(body[0]))
            .expect("a command name");
        match (server, name) {
            (false, b"HELLO") => assert_eq!(body.len(), 200),
            (false, b"INITIATE") => assert!(body.len() >= 257),
            (true, b"WELCOME") => assert_eq!(body.len(), 168),
            (true, b"READY") => assert!(body.len() >= 30),
            (_, b"ERROR") => {
                assert!(matches!(Command::parse(&body), Ok(Command::Error(_))));
            }
            (s, n) => panic!("as server={s} we sent {:?}", String::from_utf8_lossy(n)),
        }
    }
    assert!(buf.is_empty(), "we sent a truncated frame");
}

fn curve_boxes(head: u8, stream: &[u8]) {
    let limits = LIMITS[usize::from(head & 0x07) % LIMITS.len()];
    let (_, mut opener) = crate::curve::test_pair(limits);
    let mut decoder = FrameDecoder::new(crate::curve::session_limits(limits));
    let mut buf = BytesMut::from(stream);
    let mut opened = Vec::new();
    let (mut bytes, mut frames) = (0usize, 0usize);
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        };
        match opener.open(frame) {
            Ok(Frame::Data { more, body }) => {
                frames += 1;
                bytes += body.len();
                assert!(frames <= limits.max_frames, "frame limit");
                assert!(bytes <= limits.max_message_bytes, "message limit");
                if !more {
                    (bytes, frames) = (0, 0);
                }
                opened.push(Frame::Data { more, body });
            }
            Ok(Frame::Command(body)) => {
                assert_eq!(frames, 0, "a command inside a message");
                assert!(body.len() <= limits.max_command_bytes, "command limit");
                command(&body);
                opened.push(Frame::Command(body));
            }
            Err(e) => {
                let _ = format!("{e:?}");
                break;
            }
        }
    }
    // What opened, sealed again by a fresh session, opens to itself.
    let (mut sealer, mut again) = crate::curve::test_pair(limits);
    let mut out = BytesMut::new();
    for f in &opened {
        match f {
            Frame::Data { more, body } => sealer.seal_frame(&mut out, false, *more, body),
            Frame::Command(body) => sealer.seal_frame(&mut out, true, false, body),
        }
        .expect("sealing");
    }
    let mut d = FrameDecoder::new(crate::curve::session_limits(limits));
    for f in &opened {
        let outer = d.decode(&mut out).expect("our frames").expect("a frame");
        assert_eq!(&again.open(outer).expect("our boxes open"), f);
    }
    assert!(out.is_empty());
}

/// Seeds for the `curve` target: sessions of boxes sealed with the target's keys, and the
/// handshakes a real peer starts (a client's greeting and HELLO to the fixed server key, a
/// server's greeting and a WELCOME that does not open), plus truncations.
pub fn curve_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let boxes = |head: u8, frames: &[(bool, bool, &[u8])]| {
        let (mut s, _) = crate::curve::test_pair(LIMITS[usize::from(head & 7)]);
        let mut out = BytesMut::new();
        for (cmd, more, body) in frames {
            s.seal_frame(&mut out, *cmd, *more, body).expect("seal");
        }
        let mut v = vec![head];
        v.extend_from_slice(&out);
        v
    };
    seeds.push((
        "boxes-message",
        boxes(0x83, &[(false, true, b"head"), (false, false, b"body")]),
    ));
    seeds.push((
        "boxes-commands",
        boxes(
            0x83,
            &[
                (true, false, b"\x04PING\x00\x32ctx"),
                (true, false, b"\x04PONGctx"),
                (true, false, b"\x09SUBSCRIBEtopic"),
                (false, false, b"m"),
            ],
        ),
    ));
    seeds.push((
        "boxes-past-limits",
        boxes(0x81, &[(false, true, &[7; 40]), (false, false, &[7; 40])]),
    ));
    seeds.push((
        "boxes-command-more",
        boxes(0x83, &[(true, true, b"\x04PING\x00\x00")]),
    ));
    let mut replay = boxes(0x83, &[(false, false, b"once")]);
    let again = replay[1..].to_vec();
    replay.extend_from_slice(&again);
    seeds.push(("boxes-replayed", replay));
    let mut tampered = boxes(0x83, &[(false, false, b"tamper")]);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    seeds.push(("boxes-tampered", tampered));

    // A client's HELLO to the fixed server, for our server side (DEALER peer, ROUTER us).
    let hello = {
        use crypto_box::aead::AeadInPlace;
        let server = crypto_box::SecretKey::from(CURVE_SERVER_SECRET).public_key();
        let transient = crypto_box::SecretKey::from([0x33; 32]);
        let b = crypto_box::SalsaBox::new(&server, &transient);
        let mut n = crypto_box::Nonce::default();
        n[..16].copy_from_slice(b"CurveZMQHELLO---");
        n[23] = 1;
        let mut pt = [0u8; 64];
        let tag = b.encrypt_in_place_detached(&n, b"", &mut pt).expect("seal");
        let mut body = b"\x05HELLO\x01\x00".to_vec();
        body.extend_from_slice(&[0; 72]);
        body.extend_from_slice(transient.public_key().as_bytes());
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&tag);
        body.extend_from_slice(&pt);
        body
    };
    let client_greeting = Greeting::ours("CURVE", false).encode();
    let server_greeting = Greeting::ours("CURVE", true).encode();
    let framed = |body: &[u8]| {
        let mut b = BytesMut::new();
        put_frame(&mut b, crate::wire::frame::COMMAND, body);
        b.to_vec()
    };
    let router_server = 0x10 | 3; // ROUTER, as server, all at once
    let mut s = vec![router_server];
    s.extend_from_slice(&client_greeting);
    s.extend_from_slice(&framed(&hello));
    seeds.push(("server-hello", s.clone()));
    let mut initiate = b"\x08INITIATE".to_vec();
    initiate.extend_from_slice(&[0x44; 96 + 8 + 144]);
    s.extend_from_slice(&framed(&initiate));
    seeds.push(("server-hello-initiate", s.clone()));
    let mut bytewise = s.clone();
    bytewise[0] = 0x10 | 0x20 | 3;
    seeds.push(("server-hello-initiate-bytewise", bytewise));
    let mut short = vec![router_server];
    short.extend_from_slice(&client_greeting);
    short.extend_from_slice(&framed(&hello[..150]));
    seeds.push(("server-short-hello", short));
    let mut null = vec![router_server];
    null.extend_from_slice(&Greeting::ours("NULL", false).encode());
    seeds.push(("server-null-peer", null));

    // Our client side (DEALER): the server's greeting, a WELCOME of the right size that does
    // not open, an ERROR.
    let mut c = vec![2];
    c.extend_from_slice(&server_greeting);
    let mut welcome = b"\x07WELCOME".to_vec();
    welcome.extend_from_slice(&[0x55; 160]);
    c.extend_from_slice(&framed(&welcome));
    seeds.push(("client-welcome", c));
    let mut c = vec![2 | 0x40];
    c.extend_from_slice(&server_greeting);
    c.extend_from_slice(&framed(&Command::Error("400".into()).encode()));
    seeds.push(("client-error", c));
    let mut c = vec![2];
    c.extend_from_slice(&server_greeting);
    c.extend_from_slice(&framed(b"\x05READY"));
    seeds.push(("client-ready-first", c));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake seeds get past the parts the fuzzer cannot forge: the server seed's
    /// HELLO opens (we answer WELCOME), so mutations of INITIATE reach its decoder.
    #[test]
    fn the_curve_hello_seed_opens() {
        let seeds = curve_seeds();
        let (_, seed) = seeds
            .iter()
            .find(|(n, _)| *n == "server-hello-initiate")
            .expect("seed");
        let security = curve_security(true);
        let mut peer = Peer {
            input: &seed[1..],
            chunk: usize::MAX,
            output: Vec::new(),
        };
        let local = Local {
            kind: SocketType::Router,
            identity: b"",
            security: &security,
        };
        let mut buf = BytesMut::new();
        let r = complete(run_handshake(&mut peer, &mut buf, &local, HANDSHAKE_LIMITS));
        let e = r.expect_err("a made-up cookie");
        assert!(e.to_string().contains("cookie"), "{e}");
        let out = &peer.output[GREETING_LEN..];
        assert_eq!(&out[2..10], b"\x07WELCOME", "we answered WELCOME");
        check_what_we_sent_curve(&peer.output, true);
    }
}
