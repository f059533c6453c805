//! TCP and IPC: listening, accepting, connecting. Everything above works on [`Stream`].

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

/// A connected byte stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `ep` (a `*` host means this machine).
    pub(crate) async fn connect(ep: &Endpoint, keepalive: Option<Duration>) -> Result<Stream> {
        match ep {
            Endpoint::Tcp { host, port } => {
                let host = if host == "*" {
                    "127.0.0.1"
                } else {
                    host.as_str()
                };
                let s = TcpStream::connect((host, *port))
                    .await
                    .map_err(|e| Error::io(format!("connect to {ep}"), e))?;
                tune_tcp(&s, keepalive);
                Ok(Stream::Tcp(s))
            }
            Endpoint::Ipc(path) => UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(|e| Error::io(format!("connect to {ep}"), e)),
        }
    }
}

/// TCP_NODELAY (as libzmq sets it) and keepalive probes under the heartbeats.
pub(crate) fn tune_tcp(s: &TcpStream, keepalive: Option<Duration>) {
    let _ = s.set_nodelay(true);
    if let Some(idle) = keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(5))
            .with_retries(3);
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The path is removed when the listener goes.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `ep` and returns the listener with the endpoint actually bound (port 0 resolved).
    pub(crate) async fn bind(ep: &Endpoint) -> Result<(Listener, Endpoint)> {
        match ep {
            Endpoint::Tcp { host, port } => {
                let h = if host == "*" {
                    "0.0.0.0"
                } else {
                    host.as_str()
                };
                let l = TcpListener::bind((h, *port))
                    .await
                    .map_err(|e| Error::io(format!("bind {ep}"), e))?;
                let local = l
                    .local_addr()
                    .map_err(|e| Error::io(format!("bind {ep}"), e))?;
                let bound = Endpoint::Tcp {
                    host: host.clone(),
                    port: local.port(),
                };
                Ok((Listener::Tcp(l), bound))
            }
            Endpoint::Ipc(path) => {
                // As libzmq does: a socket file left by an earlier process is replaced.
                if std::fs::symlink_metadata(path)
                    .map(|m| {
                        use std::os::unix::fs::FileTypeExt;
                        m.file_type().is_socket()
                    })
                    .unwrap_or(false)
                {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(|e| Error::io(format!("bind {ep}"), e))?;
                Ok((Listener::Unix(l, path.clone()), ep.clone()))
            }
        }
    }

    /// Accepts one connection, with the peer's address for logs.
    pub(crate) async fn accept(
        &self,
        keepalive: Option<Duration>,
    ) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                tune_tcp(&s, keepalive);
                Ok((Stream::Tcp(s), addr.to_string()))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), format!("ipc://{}", path.display())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accept errors that mean "out of a resource" (descriptors, memory): retrying at once would
/// spin, so the accept loop backs off.
pub(crate) fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}
