//! The broker on a socket: one ROUTER for clients and workers alike, driving
//! [`BrokerCore`] with what arrives and with a clock tick.

use std::sync::Arc;
use std::time::Instant;

use sf_zmtp::{RouterSocket, SocketOptions};
use tokio_util::sync::CancellationToken;

use super::broker::{BrokerCore, BrokerOptions};
use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::Stats;

/// A running Majordomo broker.
#[derive(Debug)]
pub struct Broker {
    endpoint: String,
    stats: Arc<Stats>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Binds `address` (clients and workers both connect there) and starts brokering.
    pub async fn bind(address: &Address, options: BrokerOptions) -> Result<Broker> {
        let ep = address.bind_endpoint()?;
        let socket = RouterSocket::with_options(
            SocketOptions::default()
                .security(options.security.clone())
                // Requests and replies pass through whole: as large as any replyer takes.
                .max_message_bytes(64 << 20),
        );
        let endpoint = socket
            .bind(&ep)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind the broker to {ep}: {e}")))?;
        let core = BrokerCore::new(options.clone());
        let stats = core.stats().clone();
        let stop = CancellationToken::new();
        crate::util::count_auth_failures(
            &options.security,
            || socket.monitor(),
            stats.clone(),
            stop.clone(),
        );
        tracing::info!(
            %endpoint,
            heartbeat_interval = ?options.heartbeat_interval,
            liveness = options.liveness,
            "Majordomo (MDP 0.2) broker running"
        );
        let done = tokio::spawn(run(socket, core, stop.clone()));
        Ok(Broker {
            endpoint,
            stats,
            stop,
            done,
        })
    }

    /// The endpoint bound.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The counters (see [`BrokerCore::stats`]).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Tells every worker DISCONNECT (they reconnect and register with the next broker),
    /// then closes the socket.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

async fn run(mut socket: RouterSocket, mut core: BrokerCore, stop: CancellationToken) {
    let mut tick = tokio::time::interval(core.options().tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = socket.recv() => match m {
                Ok(m) => {
                    let now = Instant::now();
                    core.on_message(now, m);
                    // Take what else has arrived before sending: fewer wake-ups under load.
                    for _ in 0..64 {
                        let Some(m) = socket.try_recv() else { break };
                        core.on_message(now, m);
                    }
                }
                Err(_) => break,
            },
            _ = tick.tick() => core.on_tick(Instant::now()),
        }
        flush(&socket, &mut core);
    }
    core.disconnect_all();
    flush(&socket, &mut core);
    socket.close().await;
}

fn flush(tx: &RouterSocket, core: &mut BrokerCore) {
    while let Some(msg) = core.pop_out() {
        let to = msg.first().cloned().unwrap_or_default();
        if let Err(e) = tx.send(msg) {
            tracing::debug!("broker: message not delivered: {e}");
            core.on_unroutable(Instant::now(), &to);
        }
    }
}
