//! Full states: the out side publishes the whole state, the in side keeps the last one.

use std::sync::Arc;
use std::time::Duration;

use sf_connections::stats::{Counter, Stats};
use sf_connections::wire::WorkflowId;
use sf_connections::{Address, Publisher, Subscriber};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::newcomers::{answer_newcomers, BoxFut};
use crate::*;

/// `full_update_out`: publishes the whole state on every change, and again (after a quiet
/// spell) when a subscriber arrives.
#[derive(Debug, Clone)]
pub struct FullUpdateOut {
    publisher: Publisher,
    /// The state, once set, and when it was last published.
    state: Arc<Mutex<(Option<StateMap>, tokio::time::Instant)>>,
}

impl FullUpdateOut {
    /// The publisher's counters (published, dropped at the high-water mark).
    pub fn publisher_stats(&self) -> &Arc<Stats> {
        self.publisher.stats()
    }

    /// Binds (or connects, `is_x_pub`) the publisher, then waits `wait_after_creation`.
    pub async fn start(publisher: &Address, options: &StateOptions) -> Result<Self> {
        let opts = options.publisher();
        let out = FullUpdateOut {
            publisher: Publisher::start(publisher, opts).await?,
            state: Arc::new(Mutex::new((None, tokio::time::Instant::now()))),
        };
        tokio::spawn(answer_newcomers(
            out.publisher.subscriber_changes(),
            None::<(Duration, fn() -> BoxFut<bool>)>,
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(async move {
                        let guard = out.state.lock().await;
                        match &guard.0 {
                            Some(state) => Some(
                                out.publisher
                                    .publish(state, &WorkflowId::None)
                                    .await
                                    .is_ok(),
                            ),
                            None => Some(true),
                        }
                    })
                }
            },
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(async move { out.state.lock().await.1 })
                }
            },
        ));
        options.wait_after_creation().await;
        Ok(out)
    }

    /// The publisher's endpoint.
    pub fn endpoint(&self) -> &str {
        self.publisher.endpoint()
    }

    /// Replaces the state and publishes it.
    pub async fn set(&self, state: StateMap, workflow_id: &WorkflowId) -> Result<()> {
        let mut guard = self.state.lock().await;
        self.publisher.publish(&state, workflow_id).await?;
        *guard = (Some(state), tokio::time::Instant::now());
        Ok(())
    }

    /// The current state.
    pub async fn current(&self) -> StateMap {
        self.state.lock().await.0.clone().unwrap_or_default()
    }

    /// Flushes and closes.
    pub async fn shutdown(&self, linger: Duration) {
        self.publisher.shutdown(linger).await;
    }
}

/// `full_update_in`: keeps the last whole state published.
#[derive(Debug)]
pub struct FullUpdateIn {
    view: watch::Receiver<StateView>,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

impl FullUpdateIn {
    /// Subscribes to `subscriber`.
    pub async fn start(subscriber: &Address, options: &StateOptions) -> Result<Self> {
        let sub = Subscriber::start(subscriber, options.subscriber()).await?;
        let (tx, view) = empty_view();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        tokio::spawn(full_in_loop(sub, tx, stats.clone(), stop.clone()));
        Ok(FullUpdateIn {
            view,
            stats,
            _stop: DropCancel(stop),
        })
    }

    /// A receiver of the view: `borrow()` reads, `changed()` waits.
    pub fn watch(&self) -> watch::Receiver<StateView> {
        self.view.clone()
    }

    /// Counters (`received`, `malformed`).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

async fn full_in_loop(
    mut sub: Subscriber,
    tx: watch::Sender<StateView>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut n = -1;
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return,
            d = sub.next() => match d { Some(d) => d, None => return },
        };
        match d.args::<StateMap>() {
            Ok(state) => {
                stats.bump(Counter::Received);
                n += 1;
                tx.send_replace(StateView {
                    state: Arc::new(state),
                    current_num: n,
                });
            }
            Err(e) => {
                stats.bump(Counter::Malformed);
                tracing::warn!("full_update_in rejected a message that is not a state map: {e}");
            }
        }
    }
}
