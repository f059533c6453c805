//! The handshake: greetings both ways, then the mechanism's commands (NULL: one READY each
//! way; CURVE: HELLO, WELCOME, INITIATE, READY, see `curve`), then the socket-type check. Run
//! under the socket's handshake deadline by the caller.
//!
//! The mechanism follows from the socket's [`Security`]; a peer greeting with another one is
//! refused with ERROR before any of its commands is read.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::curve;
use crate::error::{Error, Result};
use crate::options::SocketType;
use crate::security::{PublicKey, Security};
use crate::wire::frame::{put_frame, COMMAND};
use crate::wire::{Command, Frame, FrameDecoder, Greeting, Limits, Metadata, GREETING_LEN};

/// The security mechanism of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mechanism {
    /// No security (RFC 23 NULL): what libzmq and Python `service_framework` use by default.
    #[default]
    Null,
    /// CurveZMQ (RFC 26): encryption, and authentication of both ends by long-term keys.
    Curve,
}

impl Mechanism {
    /// The name in the greeting.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Null => "NULL",
            Mechanism::Curve => "CURVE",
        }
    }
}

/// What we announce.
#[derive(Debug)]
pub(crate) struct Local<'a> {
    pub kind: SocketType,
    pub identity: &'a [u8],
    pub security: &'a Security,
}

/// What the peer announced.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    #[allow(dead_code)]
    pub kind: SocketType,
    pub identity: Bytes,
    pub greeting: Greeting,
    #[allow(dead_code)]
    pub metadata: Metadata,
    /// The CURVE session (the engine boxes every frame with it); `None` for NULL.
    pub session: Option<curve::Session>,
    /// The CURVE client's long-term key (the peer's on a server, ours on a client).
    #[allow(dead_code)]
    pub client_key: Option<PublicKey>,
}

/// Reads until `buf` holds at least `n` octets.
async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut, n: usize) -> Result<()> {
    while buf.len() < n {
        buf.reserve(n - buf.len());
        let got = s
            .read_buf(buf)
            .await
            .map_err(|e| Error::io("handshake read", e))?;
        if got == 0 {
            return Err(Error::PeerClosed);
        }
    }
    Ok(())
}

/// Sends an ERROR command, best effort (the connection is closed after it anyway).
pub(crate) async fn send_error<S: AsyncWrite + Unpin>(s: &mut S, reason: &str) {
    let mut out = BytesMut::new();
    put_frame(
        &mut out,
        COMMAND,
        &Command::Error(reason.to_owned()).encode(),
    );
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
}

/// Signature (10 octets), major and minor version: what is sent before the mechanism.
const VERSION_END: usize = 12;

/// The next command frame during the handshake (a message before it is an error).
pub(crate) async fn next_command<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> Result<Bytes> {
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return match frame {
                Frame::Command(body) => Ok(body),
                Frame::Data { .. } => Err(Error::Handshake(
                    "a message arrived before the handshake ended".into(),
                )),
            };
        }
        let want = decoder.wanted(buf).clamp(1, 64 << 10);
        fill(s, buf, buf.len() + want).await?;
    }
}

/// Runs the handshake on `s`. Octets read past the handshake stay in `buf` for the engine.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    local: &Local<'_>,
    limits: Limits,
) -> Result<PeerInfo> {
    let mechanism = local.security.mechanism();
    let ours = Greeting::ours(mechanism.name(), local.security.as_server()).encode();
    // The signature and the version first, the mechanism once the peer's version is in. A
    // libzmq peer sends the rest of its greeting when it has our version, so its mechanism is
    // known here before it can see ours: a peer of another mechanism (NULL against CURVE)
    // is told apart from one that just closed, since libzmq closes on a mismatch at once,
    // before its own greeting has gone out.
    s.write_all(&ours[..VERSION_END])
        .await
        .map_err(|e| Error::io("handshake write", e))?;

    // The signature first: a peer that is not ZMTP at all is refused on ten octets.
    fill(s, buf, crate::wire::greeting::SIGNATURE_LEN).await?;
    Greeting::check_signature(&buf[..crate::wire::greeting::SIGNATURE_LEN])?;
    fill(s, buf, VERSION_END).await?;
    s.write_all(&ours[VERSION_END..])
        .await
        .map_err(|e| Error::io("handshake write", e))?;
    fill(s, buf, GREETING_LEN).await?;
    let mut raw = [0u8; GREETING_LEN];
    raw.copy_from_slice(&buf.split_to(GREETING_LEN));
    let greeting = Greeting::parse(&raw)?;
    if greeting.mechanism != mechanism.name() {
        let reason = format!(
            "the peer uses the {} mechanism, this socket {}",
            crate::monitor::escape(&greeting.mechanism),
            mechanism.name()
        );
        send_error(s, "Mechanism mismatch").await;
        return Err(Error::Security(reason));
    }

    let mut meta = vec![(
        "Socket-Type".to_owned(),
        Bytes::from_static(local.kind.as_str().as_bytes()),
    )];
    if matches!(
        local.kind,
        SocketType::Req | SocketType::Dealer | SocketType::Router
    ) {
        meta.push((
            "Identity".to_owned(),
            Bytes::copy_from_slice(local.identity),
        ));
    }
    let meta = Metadata(meta);
    let (metadata, session, client_key) = match local.security {
        Security::Null => (null_ready(s, buf, &meta, limits).await?, None, None),
        Security::CurveClient {
            server_public,
            public,
            secret,
        } => {
            let session =
                curve::client(s, buf, limits, server_public, public, secret, &meta).await?;
            (session.metadata.clone(), Some(session), Some(*public))
        }
        Security::CurveServer { secret, authorizer } => {
            // libzmq leaves the as-server octet at 0 whatever its role, so only a peer that
            // says it is a server (one of ours) can be told apart before its HELLO.
            if greeting.as_server {
                send_error(s, "Both ends are CURVE servers").await;
                return Err(Error::Security("both ends are CURVE servers".into()));
            }
            let keys = curve::ServerKeys { secret, authorizer };
            let kind = local.kind;
            let session = curve::server(s, buf, limits, keys, &meta, |m| {
                check_type(kind, m)
                    .map(|_| ())
                    .map_err(|e| ("Invalid socket type", e))
            })
            .await?;
            let key = session.client_key;
            (session.metadata.clone(), Some(session), Some(key))
        }
    };
    let kind = match check_type(local.kind, &metadata) {
        Ok(kind) => kind,
        Err(e) => {
            if session.is_none() {
                send_error(s, "Invalid socket type").await;
            }
            return Err(e);
        }
    };
    let identity = metadata.get("Identity").cloned().unwrap_or_default();
    if identity.len() > 255 {
        return Err(Error::Handshake(
            "the peer's Identity is over 255 octets".into(),
        ));
    }
    Ok(PeerInfo {
        kind,
        identity,
        greeting,
        metadata,
        session,
        client_key,
    })
}

/// NULL: READY each way; the peer's metadata.
async fn null_ready<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    meta: &Metadata,
    limits: Limits,
) -> Result<Metadata> {
    let mut out = BytesMut::new();
    put_frame(&mut out, COMMAND, &Command::Ready(meta.clone()).encode());
    s.write_all(&out)
        .await
        .map_err(|e| Error::io("handshake write", e))?;
    let mut decoder = FrameDecoder::new(limits);
    let body = next_command(s, buf, &mut decoder)
        .await
        .map_err(|e| match e {
            Error::Handshake(_) => Error::Handshake("a message arrived before READY".into()),
            e => e,
        })?;
    match Command::parse(&body)? {
        Command::Ready(m) => Ok(m),
        Command::Error(reason) => Err(Error::Refused(reason)),
        other => Err(Error::Handshake(format!("expected READY, got {other:?}"))),
    }
}

/// The peer's socket type, if it may talk to ours.
fn check_type(ours: SocketType, metadata: &Metadata) -> Result<SocketType> {
    let kind = metadata
        .get("Socket-Type")
        .and_then(|t| SocketType::from_wire(t))
        .ok_or_else(|| Error::Handshake("READY has no valid Socket-Type".into()))?;
    if !ours.compatible(kind) {
        return Err(Error::Handshake(format!(
            "a {} peer cannot talk to a {} socket",
            kind.as_str(),
            ours.as_str()
        )));
    }
    Ok(kind)
}
