//! The broker on a socket: one ROUTER for clients and workers alike, driving
//! [`BrokerCore`] with what arrives and with a clock tick; and optionally front-end ROUTERs,
//! each bound for one service, where plain REQ/DEALER requesters (that speak no MDP) call it.

use std::sync::Arc;
use std::time::Instant;

use sf_zmtp::{Message, RouterSender, RouterSocket, SocketOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::broker::{BrokerCore, BrokerOptions};
use crate::address::Address;
use crate::error::{Error, Result};
use crate::stats::Stats;

/// A front-end: an address where plain requesters call one service.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// Where to bind.
    pub address: Address,
    /// The MDP service its requests are queued for.
    pub service: String,
}

/// A running Majordomo broker.
#[derive(Debug)]
pub struct Broker {
    endpoint: String,
    frontends: Vec<(String, String)>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Binds `address` (clients and workers both connect there) and starts brokering.
    pub async fn bind(address: &Address, options: BrokerOptions) -> Result<Broker> {
        Broker::bind_with_frontends(address, &[], options).await
    }

    /// As [`bind`](Self::bind), and binds each front-end: a plain REQ or DEALER requester
    /// sending the framework's request envelope there is served by a worker of the
    /// front-end's service, through the same queues as MDP clients.
    pub async fn bind_with_frontends(
        address: &Address,
        frontends: &[Frontend],
        options: BrokerOptions,
    ) -> Result<Broker> {
        let ep = address.bind_endpoint()?;
        let socket_options = SocketOptions::default()
            .security(options.security.clone())
            // Requests and replies pass through whole: as large as any replyer takes.
            .max_message_bytes(64 << 20);
        let socket = RouterSocket::with_options(socket_options.clone());
        let endpoint = socket
            .bind(&ep)
            .await
            .map_err(|e| Error::Socket(format!("cannot bind the broker to {ep}: {e}")))?;
        let mut fronts = Vec::with_capacity(frontends.len());
        for f in frontends {
            let fep = f.address.bind_endpoint()?;
            let s = RouterSocket::with_options(socket_options.clone());
            let bound = s.bind(&fep).await.map_err(|e| {
                Error::Socket(format!(
                    "cannot bind the broker's front-end for {:?} to {fep}: {e}",
                    f.service
                ))
            })?;
            tracing::info!(endpoint = %bound, service = %f.service, "broker front-end bound");
            fronts.push((s, bound, f.service.clone()));
        }
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
        let (front_tx, front_rx) = mpsc::channel(1024);
        let mut senders = Vec::with_capacity(fronts.len());
        let mut front_list = Vec::with_capacity(fronts.len());
        for (i, (s, bound, service)) in fronts.into_iter().enumerate() {
            crate::util::count_auth_failures(
                &options.security,
                || s.monitor(),
                stats.clone(),
                stop.clone(),
            );
            let (tx, rx) = s.split();
            senders.push(tx);
            tokio::spawn(read_frontend(i, rx, front_tx.clone(), stop.clone()));
            front_list.push((bound, service));
        }
        drop(front_tx);
        let services: Vec<String> = front_list.iter().map(|(_, s)| s.clone()).collect();
        let done = tokio::spawn(run(
            socket,
            core,
            Fronts {
                senders,
                services,
                rx: front_rx,
            },
            stop.clone(),
        ));
        Ok(Broker {
            endpoint,
            frontends: front_list,
            stats,
            stop,
            done,
        })
    }

    /// The endpoint bound.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The front-ends bound: (endpoint, service), in the order given.
    pub fn frontend_endpoints(&self) -> &[(String, String)] {
        &self.frontends
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

/// The front-ends, as the loop uses them: send halves and services by index, and what their
/// readers receive.
struct Fronts {
    senders: Vec<RouterSender>,
    services: Vec<String>,
    rx: mpsc::Receiver<(usize, Message)>,
}

async fn read_frontend(
    index: usize,
    mut rx: sf_zmtp::Receiver,
    tx: mpsc::Sender<(usize, Message)>,
    stop: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => break,
            m = rx.recv() => match m {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        if tx.send((index, m)).await.is_err() {
            break;
        }
    }
}

/// A front-end message into the core: `[routing id, envelope..., body]`, as a replyer reads
/// it (everything before the last frame is echoed).
fn front_in(core: &mut BrokerCore, fronts: &Fronts, now: Instant, index: usize, m: Message) {
    let mut frames = m.into_frames();
    if frames.len() < 2 {
        core.stats().bump(crate::stats::Counter::Malformed);
        return;
    }
    let Some(body) = frames.pop() else { return };
    core.on_frontend_request(now, index, &fronts.services[index], frames, body);
}

async fn run(
    mut socket: RouterSocket,
    mut core: BrokerCore,
    mut fronts: Fronts,
    stop: CancellationToken,
) {
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
            Some((i, m)) = fronts.rx.recv() => {
                let now = Instant::now();
                front_in(&mut core, &fronts, now, i, m);
                for _ in 0..64 {
                    let Ok((i, m)) = fronts.rx.try_recv() else { break };
                    front_in(&mut core, &fronts, now, i, m);
                }
            }
            _ = tick.tick() => core.on_tick(Instant::now()),
        }
        flush(&socket, &mut core, &fronts.senders);
    }
    core.disconnect_all();
    flush(&socket, &mut core, &fronts.senders);
    for s in fronts.senders {
        s.close().await;
    }
    socket.close().await;
}

fn flush(tx: &RouterSocket, core: &mut BrokerCore, front: &[RouterSender]) {
    while let Some((i, msg)) = core.pop_frontend_out() {
        if let Some(s) = front.get(i) {
            if let Err(e) = s.send(msg) {
                // The requester is gone (or not reading): its reply is lost, as a replyer's.
                tracing::debug!("broker: front-end reply not delivered: {e}");
            }
        }
    }
    while let Some(msg) = core.pop_out() {
        let to = msg.first().cloned().unwrap_or_default();
        if let Err(e) = tx.send(msg) {
            tracing::debug!("broker: message not delivered: {e}");
            core.on_unroutable(Instant::now(), &to);
        }
    }
}
