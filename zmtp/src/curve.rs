//! The CURVE mechanism (ZeroMQ RFC 26, CurveZMQ over ZMTP 3.1, as libzmq 4.3 speaks it).
//!
//! Handshake, client to server and back, each a ZMTP command frame:
//! - HELLO: version 1.0, 72 octets of zero padding (so that HELLO is as large as WELCOME: no
//!   amplification), the client's transient key C', its short nonce, and
//!   Box\[64 zero octets\](C'->S), which proves the client knows the server's public key S.
//! - WELCOME: Box\[S' + cookie\](S->C'), under a random long nonce. The cookie is
//!   SecretBox\[C' + s'\](K) with a cookie key K made for this connection.
//! - INITIATE: the cookie back, and Box\[C + vouch + metadata\](C'->S'); the vouch is
//!   Box\[C' + S\](C->S'), which proves the client holds the long-term secret of C.
//! - READY: Box\[metadata\](S'->C'); or ERROR in its place when the client is refused.
//!
//! Then every frame, both ways, is a MESSAGE: its short nonce and
//! Box\[flags + body\](C'->S' or S'->C'), with nonce prefixes `CurveZMQMESSAGEC` (from the
//! client) and `CurveZMQMESSAGES` (from the server). The flags octet carries MORE (0x01) and
//! COMMAND (0x02: PING, PONG, SUBSCRIBE, CANCEL travel boxed too). Short nonces start at 1 and
//! increase by one per box each way; a receiver accepts only nonces above the last it opened,
//! so a replayed or reordered box ends the connection, as does one that does not open.
//!
//! A MESSAGE travels in a ZMTP frame of its own without the COMMAND flag, as libzmq 4.3 sends
//! it (libzmq boxes whole frames and sends the box as an ordinary frame); one with the COMMAND
//! flag is accepted too. One with the MORE flag is refused: "more" is inside the box.
//!
//! The cookie key lives only while the server waits for INITIATE and is zeroed once the cookie
//! is opened (or the handshake fails); the transient secrets s' and c' live only in the
//! precomputed session key.

use bytes::{BufMut, Bytes, BytesMut};
use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::{AeadInPlace, KeyInit, OsRng};
use crypto_box::{Nonce, SalsaBox, Tag};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::handshake::{next_command, send_error};
use crate::security::{Authorizer, PublicKey, SecretKey};
use crate::wire::frame::{put_header, COMMAND};
use crate::wire::{Command, Frame, FrameDecoder, FrameError, Limits, Metadata};

/// Authentication tag of a box.
const MAC: usize = 16;
/// `\x07MESSAGE` and the short nonce.
const MESSAGE_HEADER: usize = 8 + 8;
/// What a MESSAGE command adds to a frame's body: header, tag, flags octet.
pub(crate) const MESSAGE_OVERHEAD: usize = MESSAGE_HEADER + MAC + 1;
/// Inner flags.
const INNER_MORE: u8 = 0x01;
const INNER_COMMAND: u8 = 0x02;

const HELLO_LEN: usize = 200;
const WELCOME_LEN: usize = 168;
/// INITIATE without metadata: name 9, cookie 96, nonce 8, box of 128 + tag.
const INITIATE_MIN: usize = 9 + 96 + 8 + 128 + MAC;
/// READY without metadata: name 6, nonce 8, tag.
const READY_MIN: usize = 6 + 8 + MAC;
/// The ERROR reason our server sends a client it does not authorize: libzmq's ZAP status
/// code for "denied", which a libzmq client reports as an authentication failure.
pub(crate) const DENIED: &str = "400";

fn nonce(prefix: &[u8], tail: &[u8]) -> Nonce {
    let mut n = Nonce::default();
    n[..prefix.len()].copy_from_slice(prefix);
    n[prefix.len()..].copy_from_slice(tail);
    n
}

fn short_nonce(prefix: &[u8; 16], n: u64) -> Nonce {
    nonce(prefix, &n.to_be_bytes())
}

fn random16() -> [u8; 16] {
    let mut r = [0u8; 16];
    OsRng.fill_bytes(&mut r);
    r
}

/// Box\[plaintext\] as tag then ciphertext, appended to `out`.
fn seal(key: &SalsaBox, n: &Nonce, plaintext: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0u8; MAC]);
    out.extend_from_slice(plaintext);
    let tag = key
        .encrypt_in_place_detached(n, b"", &mut out[at + MAC..])
        .expect("a box of any length this side of 256 GiB seals");
    out[at..at + MAC].copy_from_slice(&tag);
}

/// Opens a box (tag then ciphertext); `None` if it does not authenticate.
fn open(key: &SalsaBox, n: &Nonce, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < MAC {
        return None;
    }
    let tag = Tag::clone_from_slice(&sealed[..MAC]);
    let mut pt = Zeroizing::new(sealed[MAC..].to_vec());
    key.decrypt_in_place_detached(n, b"", &mut pt, &tag).ok()?;
    Some(pt)
}

fn pk(k: &[u8]) -> crypto_box::PublicKey {
    let mut b = [0u8; 32];
    b.copy_from_slice(&k[..32]);
    crypto_box::PublicKey::from(b)
}

fn security(what: impl Into<String>) -> Error {
    Error::Security(what.into())
}

async fn send_command<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> Result<()> {
    let mut out = BytesMut::with_capacity(body.len() + 9);
    put_header(&mut out, COMMAND, body.len());
    out.put_slice(body);
    s.write_all(&out)
        .await
        .map_err(|e| Error::io("handshake write", e))
}

fn metadata_bytes(m: &Metadata) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode_into(&mut out);
    out.to_vec()
}

/// What a finished CURVE handshake leaves: the two halves of the session, and what the peer
/// said.
pub(crate) struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
    pub metadata: Metadata,
    /// The client's long-term key (on the server side; ours on the client side).
    pub client_key: PublicKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

/// The client's side of the handshake, after the greetings.
pub(crate) async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    server: &PublicKey,
    public: &PublicKey,
    secret: &SecretKey,
    ours: &Metadata,
) -> Result<Session> {
    let mut decoder = FrameDecoder::new(handshake_limits(limits));
    let transient = crypto_box::SecretKey::generate(&mut OsRng);
    let c_prime = transient.public_key();
    let server_pk = pk(server.as_bytes());
    let mut nonce_out: u64 = 1;

    // HELLO.
    let to_server = SalsaBox::new(&server_pk, &transient);
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(b"\x05HELLO\x01\x00");
    hello.extend_from_slice(&[0u8; 72]);
    hello.extend_from_slice(c_prime.as_bytes());
    hello.extend_from_slice(&nonce_out.to_be_bytes());
    seal(
        &to_server,
        &short_nonce(b"CurveZMQHELLO---", nonce_out),
        &[0u8; 64],
        &mut hello,
    );
    nonce_out += 1;
    send_command(s, &hello).await?;

    // WELCOME.
    let welcome = next_command(s, buf, &mut decoder).await?;
    refused_by(&welcome)?;
    if !welcome.starts_with(b"\x07WELCOME") || welcome.len() != WELCOME_LEN {
        return Err(security("expected WELCOME"));
    }
    let pt = open(
        &to_server,
        &nonce(b"WELCOME-", &welcome[8..24]),
        &welcome[24..],
    )
    .ok_or_else(|| {
        security("WELCOME does not open: the server is not the one whose key we have")
    })?;
    drop(to_server);
    let s_prime = pk(&pt[..32]);
    let cookie = &pt[32..128];
    let session = SalsaBox::new(&s_prime, &transient);
    // One per half (the box type is not Clone): two Diffie-Hellmans per handshake.
    let session_rx = SalsaBox::new(&s_prime, &transient);

    // INITIATE, with the vouch.
    let vouch_nonce = random16();
    let mut vouch_pt = [0u8; 64];
    vouch_pt[..32].copy_from_slice(c_prime.as_bytes());
    vouch_pt[32..].copy_from_slice(server.as_bytes());
    let mut vouch = Vec::with_capacity(80);
    seal(
        &SalsaBox::new(&s_prime, &secret.0),
        &nonce(b"VOUCH---", &vouch_nonce),
        &vouch_pt,
        &mut vouch,
    );
    let mut init_pt = Zeroizing::new(Vec::with_capacity(128 + 64));
    init_pt.extend_from_slice(public.as_bytes());
    init_pt.extend_from_slice(&vouch_nonce);
    init_pt.extend_from_slice(&vouch);
    init_pt.extend_from_slice(&metadata_bytes(ours));
    let mut initiate = Vec::with_capacity(INITIATE_MIN + init_pt.len());
    initiate.extend_from_slice(b"\x08INITIATE");
    initiate.extend_from_slice(cookie);
    initiate.extend_from_slice(&nonce_out.to_be_bytes());
    seal(
        &session,
        &short_nonce(b"CurveZMQINITIATE", nonce_out),
        &init_pt,
        &mut initiate,
    );
    nonce_out += 1;
    send_command(s, &initiate).await?;

    // READY (or ERROR).
    let ready = next_command(s, buf, &mut decoder).await?;
    refused_by(&ready)?;
    if !ready.starts_with(b"\x05READY") || ready.len() < READY_MIN {
        return Err(security("expected READY"));
    }
    let peer_nonce = u64::from_be_bytes(ready[6..14].try_into().expect("8 octets"));
    let meta = open(
        &session,
        &short_nonce(b"CurveZMQREADY---", peer_nonce),
        &ready[14..],
    )
    .ok_or_else(|| security("READY does not open"))?;
    let metadata = Metadata::parse(&meta)?;
    Ok(Session {
        sealer: Sealer::new(session, b"CurveZMQMESSAGEC", nonce_out),
        opener: Opener::new(session_rx, b"CurveZMQMESSAGES", peer_nonce, limits),
        metadata,
        client_key: *public,
    })
}

/// An ERROR during the CURVE handshake: the server refused us.
fn refused_by(body: &Bytes) -> Result<()> {
    if body.starts_with(b"\x05ERROR") {
        let reason = match Command::parse(body) {
            Ok(Command::Error(r)) => crate::monitor::escape(&r),
            _ => "(malformed ERROR)".to_owned(),
        };
        // Counted as a security refusal: the server did not accept our key (libzmq's ZAP
        // status 400) or our metadata.
        return Err(Error::Security(format!(
            "the server refused the handshake: {reason}"
        )));
    }
    Ok(())
}

/// What the server needs to check a client's INITIATE.
pub(crate) struct ServerKeys<'a> {
    pub secret: &'a SecretKey,
    pub authorizer: &'a Authorizer,
}

/// The server's side of the handshake, after the greetings. `accept` checks the client's
/// metadata (the socket type) before READY; its error is sent as ERROR.
pub(crate) async fn server<S, F>(
    s: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    keys: ServerKeys<'_>,
    ours: &Metadata,
    accept: F,
) -> Result<Session>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Metadata) -> std::result::Result<(), (&'static str, Error)>,
{
    let mut decoder = FrameDecoder::new(handshake_limits(limits));
    let our_public = keys.secret.public_key();

    // HELLO.
    let hello = next_command(s, buf, &mut decoder).await?;
    if !hello.starts_with(b"\x05HELLO") {
        return Err(security("expected HELLO"));
    }
    if hello.len() != HELLO_LEN {
        return Err(security(format!("HELLO of {} octets", hello.len())));
    }
    if hello[6..8] != [1, 0] {
        return Err(security(format!(
            "CurveZMQ version {}.{}",
            hello[6], hello[7]
        )));
    }
    let c_prime_bytes: [u8; 32] = hello[80..112].try_into().expect("32 octets");
    let c_prime = crypto_box::PublicKey::from(c_prime_bytes);
    let hello_nonce = u64::from_be_bytes(hello[112..120].try_into().expect("8 octets"));
    let from_client = SalsaBox::new(&c_prime, &keys.secret.0);
    let signature = open(
        &from_client,
        &short_nonce(b"CurveZMQHELLO---", hello_nonce),
        &hello[120..],
    )
    .ok_or_else(|| security("HELLO does not open: the client has another server key"))?;
    if signature.iter().any(|&b| b != 0) {
        return Err(security("HELLO's signature is not zeros"));
    }

    // WELCOME, with a cookie under a key made for this connection.
    let transient = crypto_box::SecretKey::generate(&mut OsRng);
    let cookie_key = Zeroizing::new(crypto_secretbox::XSalsa20Poly1305::generate_key(&mut OsRng));
    let cookie_box = crypto_secretbox::XSalsa20Poly1305::new(&cookie_key);
    let cookie_nonce = random16();
    let mut cookie_pt = Zeroizing::new([0u8; 64]);
    cookie_pt[..32].copy_from_slice(&c_prime_bytes);
    cookie_pt[32..].copy_from_slice(&transient.to_bytes());
    let mut cookie = Vec::with_capacity(96);
    cookie.extend_from_slice(&cookie_nonce);
    {
        let at = cookie.len();
        cookie.extend_from_slice(&[0u8; MAC]);
        cookie.extend_from_slice(&cookie_pt[..]);
        let tag = cookie_box
            .encrypt_in_place_detached(
                &nonce(b"COOKIE--", &cookie_nonce),
                b"",
                &mut cookie[at + MAC..],
            )
            .expect("64 octets seal");
        cookie[at..at + MAC].copy_from_slice(&tag);
    }
    let mut welcome_pt = Zeroizing::new(Vec::with_capacity(128));
    welcome_pt.extend_from_slice(transient.public_key().as_bytes());
    welcome_pt.extend_from_slice(&cookie);
    let welcome_nonce = random16();
    let mut welcome = Vec::with_capacity(WELCOME_LEN);
    welcome.extend_from_slice(b"\x07WELCOME");
    welcome.extend_from_slice(&welcome_nonce);
    seal(
        &from_client,
        &nonce(b"WELCOME-", &welcome_nonce),
        &welcome_pt,
        &mut welcome,
    );
    send_command(s, &welcome).await?;

    // INITIATE.
    let initiate = next_command(s, buf, &mut decoder).await?;
    if !initiate.starts_with(b"\x08INITIATE") {
        return Err(security("expected INITIATE"));
    }
    if initiate.len() < INITIATE_MIN {
        return Err(security(format!("INITIATE of {} octets", initiate.len())));
    }
    let mut back = Zeroizing::new(initiate[25..105].to_vec());
    let tag = Tag::clone_from_slice(&back[..MAC]);
    cookie_box
        .decrypt_in_place_detached(
            &nonce(b"COOKIE--", &initiate[9..25]),
            b"",
            &mut back[MAC..],
            &tag,
        )
        .map_err(|_| security("INITIATE's cookie does not open"))?;
    // The cookie key is of no more use: gone before anything else is checked.
    drop(cookie_box);
    drop(cookie_key);
    if !bool::from(back[MAC..].ct_eq(&cookie_pt[..])) {
        return Err(security("INITIATE's cookie is not this connection's"));
    }
    drop(back);
    let initiate_nonce = u64::from_be_bytes(initiate[105..113].try_into().expect("8 octets"));
    if initiate_nonce <= hello_nonce {
        return Err(security("INITIATE's nonce is not above HELLO's"));
    }
    let session = SalsaBox::new(&c_prime, &transient);
    let pt = open(
        &session,
        &short_nonce(b"CurveZMQINITIATE", initiate_nonce),
        &initiate[113..],
    )
    .ok_or_else(|| security("INITIATE does not open"))?;
    let client_key = PublicKey(pt[..32].try_into().expect("32 octets"));
    let vouch = open(
        &SalsaBox::new(&pk(client_key.as_bytes()), &transient),
        &nonce(b"VOUCH---", &pt[32..48]),
        &pt[48..128],
    )
    .ok_or_else(|| security("INITIATE's vouch does not open"))?;
    if !bool::from(vouch[..32].ct_eq(&c_prime_bytes)) || vouch[32..64] != our_public.0 {
        return Err(security("INITIATE's vouch is for another connection"));
    }
    let metadata = Metadata::parse(&pt[128..])?;

    if !keys.authorizer.allows(&client_key) {
        send_error(s, DENIED).await;
        return Err(Error::Unauthorized(client_key.to_z85()));
    }
    if let Err((reason, e)) = accept(&metadata) {
        send_error(s, reason).await;
        return Err(e);
    }

    // READY.
    let mut nonce_out: u64 = 1;
    let mut ready = Vec::with_capacity(READY_MIN + 64);
    ready.extend_from_slice(b"\x05READY");
    ready.extend_from_slice(&nonce_out.to_be_bytes());
    seal(
        &session,
        &short_nonce(b"CurveZMQREADY---", nonce_out),
        &metadata_bytes(ours),
        &mut ready,
    );
    nonce_out += 1;
    send_command(s, &ready).await?;
    let session_rx = SalsaBox::new(&c_prime, &transient);
    Ok(Session {
        sealer: Sealer::new(session, b"CurveZMQMESSAGES", nonce_out),
        opener: Opener::new(session_rx, b"CurveZMQMESSAGEC", initiate_nonce, limits),
        metadata,
        client_key,
    })
}

/// Handshake commands are small, whatever the socket's command limit: INITIATE is 257 octets
/// plus the client's metadata.
fn handshake_limits(l: Limits) -> Limits {
    Limits {
        max_command_bytes: l.max_command_bytes.max(INITIATE_MIN + 4096),
        ..l
    }
}

/// The limits of the outer frames once the session is up: every frame is a MESSAGE whose box
/// holds a frame of up to a message's size (or a command); the socket's own limits are applied
/// to what is inside, by the [`Opener`].
pub(crate) fn session_limits(l: Limits) -> Limits {
    let one = l
        .max_message_bytes
        .max(l.max_command_bytes)
        .saturating_add(MESSAGE_OVERHEAD);
    Limits {
        max_message_bytes: one,
        max_frames: 1,
        max_command_bytes: one,
    }
}

/// The sending half of a session: frames into MESSAGE boxes.
pub(crate) struct Sealer {
    key: SalsaBox,
    prefix: &'static [u8; 16],
    nonce: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl Sealer {
    fn new(key: SalsaBox, prefix: &'static [u8; 16], nonce: u64) -> Sealer {
        Sealer { key, prefix, nonce }
    }

    /// Appends one frame as a MESSAGE frame: `command` for a command body, else a data frame
    /// with `more`. Fails only when the nonces are used up (after 2^64 boxes).
    pub(crate) fn seal_frame(
        &mut self,
        out: &mut BytesMut,
        command: bool,
        more: bool,
        body: &[u8],
    ) -> std::io::Result<()> {
        if self.nonce == u64::MAX {
            return Err(std::io::Error::other("CURVE nonces exhausted"));
        }
        let n = self.nonce;
        self.nonce += 1;
        let len = body.len() + MESSAGE_OVERHEAD;
        out.reserve(len + 9);
        // As libzmq: the box goes in a plain frame (flags 0).
        put_header(out, 0, len);
        out.put_slice(b"\x07MESSAGE");
        out.put_slice(&n.to_be_bytes());
        let tag_at = out.len();
        out.put_slice(&[0u8; MAC]);
        let mut flags = 0;
        if command {
            flags |= INNER_COMMAND;
        }
        if more {
            flags |= INNER_MORE;
        }
        out.put_u8(flags);
        out.put_slice(body);
        let tag = self
            .key
            .encrypt_in_place_detached(&short_nonce(self.prefix, n), b"", &mut out[tag_at + MAC..])
            .map_err(|_| std::io::Error::other("a CURVE box does not seal"))?;
        out[tag_at..tag_at + MAC].copy_from_slice(&tag);
        Ok(())
    }
}

/// Why a MESSAGE was refused.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Past the socket's limits (inside the box).
    Limit(FrameError),
    /// Not a MESSAGE, a box that does not open, or a nonce not above the last.
    Refused(String),
}

/// The receiving half of a session: MESSAGE boxes into frames, with the message limits checked
/// on what is inside.
pub(crate) struct Opener {
    key: SalsaBox,
    prefix: &'static [u8; 16],
    last: u64,
    limits: Limits,
    msg_bytes: usize,
    msg_frames: usize,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("last", &self.last).finish()
    }
}

impl Opener {
    fn new(key: SalsaBox, prefix: &'static [u8; 16], last: u64, limits: Limits) -> Opener {
        Opener {
            key,
            prefix,
            last,
            limits,
            msg_bytes: 0,
            msg_frames: 0,
        }
    }

    /// The frame inside one frame off the wire.
    pub(crate) fn open(&mut self, outer: Frame) -> std::result::Result<Frame, OpenError> {
        let refused = |s: &str| Err(OpenError::Refused(s.to_owned()));
        let body = match outer {
            Frame::Command(body) | Frame::Data { more: false, body } => body,
            Frame::Data { more: true, .. } => {
                return refused("a MESSAGE frame with the MORE flag");
            }
        };
        if !body.starts_with(b"\x07MESSAGE") {
            return refused("a frame other than MESSAGE on a CURVE connection");
        }
        if body.len() < MESSAGE_OVERHEAD {
            return refused("a MESSAGE too short for its box");
        }
        let n = u64::from_be_bytes(body[8..16].try_into().expect("8 octets"));
        if n <= self.last {
            return refused("a MESSAGE nonce not above the last one (replayed or reordered)");
        }
        let tag = Tag::clone_from_slice(&body[MESSAGE_HEADER..MESSAGE_HEADER + MAC]);
        let mut pt = BytesMut::from(&body[MESSAGE_HEADER + MAC..]);
        if self
            .key
            .decrypt_in_place_detached(&short_nonce(self.prefix, n), b"", &mut pt, &tag)
            .is_err()
        {
            return refused("a MESSAGE box does not open (tampered, or another key)");
        }
        self.last = n;
        let flags = pt[0];
        let inner = pt.split_off(1).freeze();
        if flags & INNER_COMMAND != 0 {
            if flags & INNER_MORE != 0 {
                return Err(OpenError::Limit(FrameError::CommandMore));
            }
            if self.msg_frames > 0 {
                return Err(OpenError::Limit(FrameError::CommandInMessage));
            }
            if inner.len() > self.limits.max_command_bytes {
                return Err(OpenError::Limit(FrameError::CommandTooLarge {
                    declared: inner.len() as u64,
                    limit: self.limits.max_command_bytes,
                }));
            }
            return Ok(Frame::Command(inner));
        }
        let more = flags & INNER_MORE != 0;
        self.msg_frames += 1;
        self.msg_bytes = self.msg_bytes.saturating_add(inner.len());
        if self.msg_frames > self.limits.max_frames {
            return Err(OpenError::Limit(FrameError::TooManyFrames {
                limit: self.limits.max_frames,
            }));
        }
        if self.msg_bytes > self.limits.max_message_bytes {
            return Err(OpenError::Limit(FrameError::MessageTooLarge {
                declared: self.msg_bytes as u64,
                limit: self.limits.max_message_bytes,
            }));
        }
        if !more {
            (self.msg_bytes, self.msg_frames) = (0, 0);
        }
        Ok(Frame::Data { more, body: inner })
    }
}

/// For the fuzz target: a session's halves with made-up keys, as either side.
#[doc(hidden)]
pub(crate) fn test_pair(limits: Limits) -> (Sealer, Opener) {
    let a = crypto_box::SecretKey::from([7u8; 32]);
    let b = crypto_box::SecretKey::from([9u8; 32]);
    (
        Sealer::new(SalsaBox::new(&b.public_key(), &a), b"CurveZMQMESSAGEC", 1),
        Opener::new(
            SalsaBox::new(&a.public_key(), &b),
            b"CurveZMQMESSAGEC",
            0,
            limits,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outer(out: &mut BytesMut) -> Frame {
        let mut d = FrameDecoder::new(session_limits(Limits::default()));
        d.decode(out).unwrap().unwrap()
    }

    #[test]
    fn boxes_round_trip_and_refuse_replays_and_tampering() {
        let (mut s, mut o) = test_pair(Limits::default());
        let mut out = BytesMut::new();
        s.seal_frame(&mut out, false, true, b"head").unwrap();
        let first = outer(&mut out);
        assert_eq!(
            o.open(first.clone()).unwrap(),
            Frame::Data {
                more: true,
                body: Bytes::from_static(b"head")
            }
        );
        assert!(matches!(o.open(first), Err(OpenError::Refused(_))));

        s.seal_frame(&mut out, false, false, b"body").unwrap();
        let Frame::Data { more: false, body } = outer(&mut out) else {
            panic!("a MESSAGE is a plain frame")
        };
        let mut bad = body.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            o.open(Frame::Command(bad.into())),
            Err(OpenError::Refused(_))
        ));
        // The untampered one still opens (with the COMMAND flag too, which RFC 26 suggests):
        // a failed box does not move the nonce.
        assert!(o.open(Frame::Command(body)).is_ok());

        s.seal_frame(&mut out, true, false, b"\x04PING\x00\x00")
            .unwrap();
        assert_eq!(
            o.open(outer(&mut out)).unwrap(),
            Frame::Command(Bytes::from_static(b"\x04PING\x00\x00"))
        );
    }

    #[test]
    fn limits_apply_inside_the_box() {
        let limits = Limits {
            max_message_bytes: 10,
            max_frames: 2,
            max_command_bytes: 8,
        };
        let (mut s, mut o) = test_pair(limits);
        let mut out = BytesMut::new();
        s.seal_frame(&mut out, false, true, b"123456").unwrap();
        s.seal_frame(&mut out, false, false, b"123456").unwrap();
        assert!(o.open(outer(&mut out)).is_ok());
        assert!(matches!(
            o.open(outer(&mut out)),
            Err(OpenError::Limit(FrameError::MessageTooLarge { .. }))
        ));
    }
}
