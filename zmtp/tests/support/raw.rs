//! Raw ZMTP for the fault tests: a TCP client that speaks exactly as much of the protocol as a
//! test needs (the greeting, READY, single frames), to play the peers no real socket would be:
//! one that stalls mid-greeting, declares a huge frame, never reads, or never answers a PING.
//! Written from RFC 23 and 37 directly, not with the crate's own encoders, so a fault in those
//! cannot hide itself.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub const MORE: u8 = 0x01;
pub const LONG: u8 = 0x02;
pub const COMMAND: u8 = 0x04;

/// A ZMTP 3.1 greeting for the NULL mechanism, as-server 0: signature, version, the mechanism
/// padded to 20 octets, the as-server octet and 31 octets of filler.
pub fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// One whole frame: flags, a short or a long size, the body.
pub fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    if body.len() > 255 {
        out.push(flags | LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
    out
}

/// The header alone of a long frame that declares `size` octets.
pub fn long_header(flags: u8, size: u64) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[0] = flags | LONG;
    h[1..].copy_from_slice(&size.to_be_bytes());
    h
}

/// A command frame: name length, name, data.
pub fn command(name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    frame(COMMAND, &body)
}

/// READY with one property, `Socket-Type`.
pub fn ready(socket_type: &str) -> Vec<u8> {
    let mut data = vec![11u8];
    data.extend_from_slice(b"Socket-Type");
    data.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    data.extend_from_slice(socket_type.as_bytes());
    command("READY", &data)
}

/// A PING announcing `ttl_deciseconds`, with a context to be echoed.
pub fn ping(ttl_deciseconds: u16, context: &[u8]) -> Vec<u8> {
    let mut data = ttl_deciseconds.to_be_bytes().to_vec();
    data.extend_from_slice(context);
    command("PING", &data)
}

/// A command body's name, if it is well formed.
pub fn command_name(body: &[u8]) -> Option<&[u8]> {
    let n = *body.first()? as usize;
    body.get(1..1 + n)
}

/// `tcp://host:port` -> `host:port`.
pub fn tcp_addr(endpoint: &str) -> &str {
    endpoint
        .strip_prefix("tcp://")
        .unwrap_or_else(|| panic!("{endpoint} is not a tcp:// endpoint"))
}

/// Why a raw read gave no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFrame {
    /// The peer closed the connection (or reset it).
    Closed,
    /// Nothing complete arrived in time.
    TimedOut,
}

/// One raw connection.
#[derive(Debug)]
pub struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawPeer {
    /// A TCP connection and nothing else.
    pub async fn connect(endpoint: &str) -> RawPeer {
        let stream = TcpStream::connect(tcp_addr(endpoint))
            .await
            .unwrap_or_else(|e| panic!("raw connect to {endpoint}: {e}"));
        RawPeer {
            stream,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Connects and completes the NULL handshake as `socket_type`: our greeting and READY,
    /// then the peer's greeting and READY (checked).
    pub async fn handshake(endpoint: &str, socket_type: &str) -> RawPeer {
        let mut p = RawPeer::connect(endpoint).await;
        let mut hello = greeting().to_vec();
        hello.extend_from_slice(&ready(socket_type));
        p.send(&hello).await.expect("raw greeting and READY");
        let deadline = Instant::now() + Duration::from_secs(5);
        p.fill(64, deadline).await.expect("the peer's greeting");
        let g = p.buf.split_to(64);
        assert!(
            g[0] == 0xFF && g[9] & 1 == 1 && g[10] == 3,
            "greeting {g:?}"
        );
        assert_eq!(&g[12..16], b"NULL", "mechanism");
        let (flags, body) = p
            .next_frame(Duration::from_secs(5))
            .await
            .expect("the peer's READY");
        assert!(
            flags & COMMAND != 0 && command_name(&body) == Some(b"READY"),
            "expected READY, got flags {flags:#x} {body:?}"
        );
        p
    }

    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads until `buf` holds `n` octets.
    async fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), NoFrame> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(NoFrame::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(NoFrame::Closed),
                Ok(Ok(_)) => {}
            }
        }
        Ok(())
    }

    /// The next frame (flags, body) within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Result<(u8, Bytes), NoFrame> {
        let deadline = Instant::now() + within;
        self.fill(2, deadline).await?;
        let flags = self.buf[0];
        let (header, size) = if flags & LONG != 0 {
            self.fill(9, deadline).await?;
            let mut s = [0u8; 8];
            s.copy_from_slice(&self.buf[1..9]);
            (9, u64::from_be_bytes(s) as usize)
        } else {
            (2, usize::from(self.buf[1]))
        };
        self.fill(header + size, deadline).await?;
        self.buf.advance(header);
        Ok((flags, self.buf.split_to(size).freeze()))
    }

    /// Reads and discards until the peer closes: how long that took, or `None` if it had not
    /// within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let deadline = start + within;
        let mut scratch = vec![0u8; 64 << 10];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }
}
