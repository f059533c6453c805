//! The XSUB/XPUB bus proxy that the original's `is_x_pub` publishers and subscribers use:
//! publishers connect to its XSUB side, subscribers to its XPUB side, and it forwards
//! messages down and subscriptions (and credit messages) up.
//!
//! Each subscriber has its own bounded queue on the XPUB side: one that stops reading misses
//! messages (counted in `dropped`) while every other subscriber goes on at full rate.

use std::sync::Arc;

use sf_zmtp::{Security, SocketOptions, XPubSocket, XSubSocket};
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::{Counter, Stats};

/// Messages queued per subscriber before it misses some.
const SUBSCRIBER_QUEUE: usize = 10_000;

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
        BusProxy::bind_secured(publishers, subscribers, Security::Null).await
    }

    /// As [`bind`](Self::bind), both sides speaking `security` (a CURVE server: publishers
    /// and subscribers are its clients, and it authorizes their keys). Refused peers are
    /// counted in `auth_failures`.
    pub async fn bind_secured(
        publishers: &Address,
        subscribers: &Address,
        security: Security,
    ) -> Result<BusProxy> {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let xsub = XSubSocket::with_options(SocketOptions::default().security(security.clone()));
        crate::util::count_auth_failures(&security, || xsub.monitor(), stats.clone(), stop.clone());
        let ep = publishers.bind_endpoint()?;
        let publishers_endpoint = xsub
            .bind(&ep)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind bus XSUB to {ep}: {e}")))?;
        let xpub = XPubSocket::with_options(
            SocketOptions::default()
                .send_hwm(SUBSCRIBER_QUEUE)
                .security(security.clone())
                // Each new subscriber is announced to the publishers (an out-state answers
                // it with a snapshot), and each departure too, so the counts stay balanced.
                .xpub_verbose(true),
        );
        crate::util::count_auth_failures(&security, || xpub.monitor(), stats.clone(), stop.clone());
        let ep = subscribers.bind_endpoint()?;
        let subscribers_endpoint = xpub
            .bind(&ep)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind bus XPUB to {ep}: {e}")))?;
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
    let mut dropped_seen = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            up = xpub.recv() => match up {
                Ok(msg) => { let _ = xsub.send(msg).await; }
                Err(_) => break,
            },
            down = xsub.recv() => match down {
                Ok(msg) => {
                    stats.bump(Counter::Received);
                    // Never waits: a full subscriber misses it, nobody else notices.
                    let _ = xpub.send(msg);
                    let dropped = xpub.stats().dropped;
                    if dropped > dropped_seen {
                        stats.add(Counter::Dropped, dropped - dropped_seen);
                        dropped_seen = dropped;
                    }
                }
                Err(_) => break,
            },
        }
    }
    xpub.close().await;
    xsub.close().await;
}
