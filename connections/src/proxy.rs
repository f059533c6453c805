//! The XSUB/XPUB bus proxy that the original's `is_x_pub` publishers and subscribers use:
//! publishers connect to its XSUB side, subscribers to its XPUB side, and it forwards
//! messages down and subscriptions (and credit messages) up.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SocketSend, XPubSocket, XSubSocket};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};

/// A running proxy.
#[derive(Debug)]
pub struct BusProxy {
    publishers_endpoint: String,
    subscribers_endpoint: String,
    stats: Arc<Stats>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl BusProxy {
    /// Binds the side publishers connect to (`publishers`, XSUB) and the side subscribers
    /// connect to (`subscribers`, XPUB).
    pub async fn bind(publishers: &Address, subscribers: &Address) -> Result<BusProxy> {
        let mut xsub = XSubSocket::new();
        let ep = publishers.bind_endpoint()?;
        let publishers_endpoint = xsub
            .bind(&ep)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind bus XSUB to {ep}: {e}")))?
            .to_string();
        let mut xpub = XPubSocket::new();
        let ep = subscribers.bind_endpoint()?;
        let subscribers_endpoint = xpub
            .bind(&ep)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind bus XPUB to {ep}: {e}")))?
            .to_string();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let done = tokio::spawn(forward(xsub, xpub, stats.clone(), stop.clone()));
        tracing::info!(%publishers_endpoint, %subscribers_endpoint, "bus proxy running");
        Ok(BusProxy {
            publishers_endpoint,
            subscribers_endpoint,
            stats,
            stop,
            done,
        })
    }

    /// Where publishers connect.
    pub fn publishers_endpoint(&self) -> &str {
        &self.publishers_endpoint
    }

    /// Where subscribers connect.
    pub fn subscribers_endpoint(&self) -> &str {
        &self.subscribers_endpoint
    }

    /// Live counters (`received` = messages forwarded down).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops forwarding and closes both sockets.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

async fn forward(
    mut xsub: XSubSocket,
    mut xpub: XPubSocket,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            up = xpub.recv() => match up {
                Ok(msg) => { let _ = xsub.send(msg).await; }
                Err(e) => tracing::debug!("bus proxy: subscriber side error: {e}"),
            },
            down = xsub.recv() => match down {
                Ok(msg) => {
                    stats.bump(Counter::Received);
                    if xpub.send(msg).await.is_err() {
                        stats.bump(Counter::Dropped);
                    }
                }
                Err(e) => tracing::debug!("bus proxy: publisher side error: {e}"),
            },
        }
    }
}
