//! The handshake: greetings both ways, then the mechanism's commands (NULL: one READY each
//! way), then the socket-type check. Run under the socket's handshake deadline by the caller.
//!
//! Only NULL is implemented. The mechanism is chosen in one place ([`Mechanism`]), so a
//! security mechanism (CURVE) adds its commands here and its framing to the engine.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::options::SocketType;
use crate::wire::frame::{put_frame, COMMAND};
use crate::wire::{Command, Frame, FrameDecoder, Greeting, Limits, Metadata, GREETING_LEN};

/// The security mechanism of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mechanism {
    /// No security (RFC 23 NULL): what libzmq and Python `service_framework` use by default.
    #[default]
    Null,
}

impl Mechanism {
    /// The name in the greeting.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Null => "NULL",
        }
    }
}

/// What we announce.
#[derive(Debug)]
pub(crate) struct Local<'a> {
    pub kind: SocketType,
    pub identity: &'a [u8],
    pub mechanism: &'a Mechanism,
}

/// What the peer announced.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    #[allow(dead_code)]
    pub kind: SocketType,
    pub identity: Bytes,
    pub greeting: Greeting,
    #[allow(dead_code)]
    pub metadata: Metadata,
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

/// Runs the handshake on `s`. Octets read past the handshake stay in `buf` for the engine.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    local: &Local<'_>,
    limits: Limits,
) -> Result<PeerInfo> {
    let ours = Greeting::ours(local.mechanism.name(), false);
    s.write_all(&ours.encode())
        .await
        .map_err(|e| Error::io("handshake write", e))?;

    // The signature first: a peer that is not ZMTP at all is refused on ten octets.
    fill(s, buf, crate::wire::greeting::SIGNATURE_LEN).await?;
    Greeting::check_signature(&buf[..crate::wire::greeting::SIGNATURE_LEN])?;
    fill(s, buf, GREETING_LEN).await?;
    let mut raw = [0u8; GREETING_LEN];
    raw.copy_from_slice(&buf.split_to(GREETING_LEN));
    let greeting = Greeting::parse(&raw)?;
    if greeting.mechanism != local.mechanism.name() {
        let reason = format!(
            "the peer uses the {} mechanism, this socket {}",
            greeting.mechanism,
            local.mechanism.name()
        );
        send_error(s, "Mechanism mismatch").await;
        return Err(Error::Handshake(reason));
    }

    // NULL: READY each way.
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
    let mut out = BytesMut::new();
    put_frame(&mut out, COMMAND, &Command::Ready(Metadata(meta)).encode());
    s.write_all(&out)
        .await
        .map_err(|e| Error::io("handshake write", e))?;

    let mut decoder = FrameDecoder::new(limits);
    let body = loop {
        if let Some(frame) = decoder.decode(buf)? {
            match frame {
                Frame::Command(body) => break body,
                Frame::Data { .. } => {
                    return Err(Error::Handshake("a message arrived before READY".into()))
                }
            }
        }
        let want = decoder.wanted(buf).clamp(1, 64 << 10);
        fill(s, buf, buf.len() + want).await?;
    };
    let metadata = match Command::parse(&body)? {
        Command::Ready(m) => m,
        Command::Error(reason) => return Err(Error::Refused(reason)),
        other => return Err(Error::Handshake(format!("expected READY, got {other:?}"))),
    };
    let kind = metadata
        .get("Socket-Type")
        .and_then(|t| SocketType::from_wire(t))
        .ok_or_else(|| Error::Handshake("READY has no valid Socket-Type".into()))?;
    if !local.kind.compatible(kind) {
        send_error(s, "Invalid socket type").await;
        return Err(Error::Handshake(format!(
            "a {} peer cannot talk to a {} socket",
            kind.as_str(),
            local.kind.as_str()
        )));
    }
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
    })
}
