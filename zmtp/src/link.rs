//! How connections come and go: the accept loop of a bound endpoint and the reconnect loop of
//! a connected one. Each connection then runs in [`engine::run`].

use std::sync::Arc;
use std::time::Duration;

use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::engine::{self, Ended, Origin};
use crate::monitor::Counters;
use crate::transport::{is_resource_exhaustion, Listener, Stream};

/// Accepts until the socket stops. Holds at most `max_connections` at once (the rest wait in
/// the kernel's backlog) and, out of descriptors or memory, backs off instead of spinning.
pub(crate) async fn accept_loop(core: Arc<Core>, listener: Listener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = core.listening.cancelled() => return,
            p = core.conn_limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = core.listening.cancelled() => return,
            r = listener.accept(core.options.tcp_keepalive) => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                let c = core.clone();
                core.tasks.spawn(async move {
                    let _ = engine::run(c, stream, addr, Origin::Accepted).await;
                    drop(permit);
                });
            }
            Err(e) if is_resource_exhaustion(&e) => {
                Counters::bump(&core.counters.accept_backoffs);
                if let Some(held) = core.warn.allow() {
                    tracing::warn!(
                        socket = core.kind.as_str(),
                        suppressed = held,
                        "accept failed ({e}); retrying in {backoff:?}"
                    );
                }
                tokio::select! {
                    _ = core.listening.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            // A connection reset before it was accepted, and the like: the next one is fine.
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}

/// Keeps one connection to `endpoint` up until the socket stops: reconnects after a failed
/// connect, a failed handshake or a lost connection, waiting a jittered, doubling delay from
/// `reconnect_interval` up to `reconnect_interval_max` (reset by every successful handshake).
pub(crate) async fn connect_loop(core: Arc<Core>, endpoint: Endpoint) {
    let first = core.options.reconnect_interval;
    let max = core.options.reconnect_interval_max.max(first);
    let mut delay = first;
    let name = endpoint.to_string();
    let mut failures = 0u32;
    let mut ever = false;
    loop {
        let connected = tokio::select! {
            _ = core.stop.cancelled() => return,
            r = tokio::time::timeout(
                core.options.connect_timeout,
                Stream::connect(&endpoint, core.options.tcp_keepalive),
            ) => r,
        };
        match connected {
            Ok(Ok(stream)) => {
                if ever {
                    Counters::bump(&core.counters.reconnects);
                }
                match engine::run(core.clone(), stream, name.clone(), Origin::Connected).await {
                    Ok(Ended::Closing) => return,
                    Ok(Ended::Lost(e)) => {
                        ever = true;
                        failures = 0;
                        delay = first;
                        tracing::debug!(endpoint = %name, "connection lost: {e}");
                    }
                    Err(_) => failures += 1,
                }
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 10 {
                    tracing::warn!(endpoint = %name, "still cannot connect, retrying: {e}");
                } else {
                    tracing::debug!(endpoint = %name, "connect failed: {e}");
                }
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(endpoint = %name, "connect timed out");
            }
        }
        if core.stop.is_cancelled() {
            return;
        }
        let wait = jitter(delay);
        tokio::select! {
            _ = core.stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if failures > 0 {
            delay = (delay * 2).min(max);
        }
    }
}

/// +-25%, so a fleet that lost one peer does not reconnect in lock-step.
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}
