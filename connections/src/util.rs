//! Socket plumbing shared by the connections.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketEvent, SocketOptions};

/// The socket monitor's event stream.
pub(crate) type Monitor = futures::channel::mpsc::Receiver<SocketEvent>;

/// Builds a fresh socket and connects it to `endpoint`, retrying with backoff until it
/// succeeds or `stop` fires. Runs in a connection's own task: never on a path that answers.
pub(crate) async fn connect_until<S: Socket>(
    endpoint: &str,
    stop: &CancellationToken,
) -> Option<(S, Monitor)> {
    let mut backoff = Duration::from_millis(5);
    let mut attempts = 0u32;
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(Duration::from_secs(2));
        let mut socket = S::with_options(options);
        let monitor = socket.monitor();
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = socket.connect(endpoint) => match r {
                Ok(()) => return Some((socket, monitor)),
                Err(e) => {
                    attempts += 1;
                    if attempts == 5 {
                        tracing::warn!(endpoint, "still cannot connect, retrying: {e}");
                    } else {
                        tracing::debug!(endpoint, "connect failed, retrying: {e}");
                    }
                }
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
