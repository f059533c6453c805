//! The delta out side: numbered snapshots and deltas, and a replyer for snapshot requests.

use std::sync::Arc;
use std::time::Duration;

use sf_connections::stats::Counter;
use sf_connections::wire::WorkflowId;
use sf_connections::{typed, Address, Publisher, Replyer, ReplyerOptions, WireError};
use tokio::sync::Mutex;

use crate::newcomers::{answer_newcomers, BoxFut};
use crate::*;

/// `delta_update_out`: owns the sequence number, publishes snapshots and deltas, answers
/// snapshot requests.
#[derive(Debug, Clone)]
pub struct DeltaUpdateOut {
    publisher: Publisher,
    inner: Arc<Mutex<OutInner>>,
    replyer: Arc<std::sync::Mutex<Option<Replyer>>>,
    replyer_endpoint: String,
}

/// A delta out side's state, its number, and when it last published.
#[derive(Debug)]
struct OutInner {
    state: StateMap,
    num: i64,
    published: tokio::time::Instant,
}

impl DeltaUpdateOut {
    /// Binds the publisher (or connects it, `is_x_pub`) and the snapshot replyer, then waits
    /// `wait_after_creation`. From then on a subscriber's arrival is answered with a snapshot
    /// (after a quiet spell), so a follower that never asks (Python 0.0.18's) converges too.
    pub async fn start(
        publisher: &Address,
        replyer: &Address,
        options: &StateOptions,
    ) -> Result<Self> {
        let inner = Arc::new(Mutex::new(OutInner {
            state: StateMap::new(),
            num: 0,
            published: tokio::time::Instant::now(),
        }));
        let for_replies = inner.clone();
        // Any request gets the snapshot: the original's in side sends `{"args": {}}`.
        let handler = typed(move |_args: Value, _meta| {
            let inner = for_replies.clone();
            async move {
                let guard = inner.lock().await;
                Ok::<_, WireError>(SnapshotReply {
                    state: guard.state.clone(),
                    current_num: guard.num,
                })
            }
        });
        let rep = Replyer::bind(
            replyer,
            handler,
            ReplyerOptions {
                security: options.bind_security.clone(),
                ..Default::default()
            },
        )
        .await?;
        let replyer_endpoint = rep.endpoint().to_owned();
        let opts = options.publisher();
        let publisher = Publisher::start(publisher, opts).await?;
        let out = DeltaUpdateOut {
            publisher,
            inner,
            replyer: Arc::new(std::sync::Mutex::new(Some(rep))),
            replyer_endpoint,
        };
        let every = options.snapshot_interval.unwrap_or(Duration::from_secs(1));
        let periodic = (!every.is_zero()).then(|| {
            let out = out.clone();
            // (number, drops) at the last check.
            let last = Arc::new(std::sync::Mutex::new((0i64, 0u64)));
            let check = move || {
                let out = out.clone();
                let last = last.clone();
                let fut: BoxFut<bool> = Box::pin(async move {
                    // Owed when the state moved on since the last look, or when a
                    // subscriber missed messages (the last snapshot among them, perhaps).
                    let now = (
                        out.inner.lock().await.num,
                        out.publisher.stats().get(Counter::Dropped),
                    );
                    let before = std::mem::replace(&mut *last.lock().expect("last lock"), now);
                    before != now
                });
                fut
            };
            (every, check)
        });
        tokio::spawn(answer_newcomers(
            out.publisher.subscriber_changes(),
            periodic,
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(
                        async move { Some(out.publish_snapshot(&WorkflowId::None).await.is_ok()) },
                    )
                }
            },
            {
                let out = out.clone();
                move || {
                    let out = out.clone();
                    Box::pin(async move { out.inner.lock().await.published })
                }
            },
        ));
        options.wait_after_creation().await;
        Ok(out)
    }

    /// The publisher's endpoint.
    pub fn publisher_endpoint(&self) -> &str {
        self.publisher.endpoint()
    }

    /// The snapshot replyer's endpoint.
    pub fn replyer_endpoint(&self) -> &str {
        &self.replyer_endpoint
    }

    /// Replaces the whole state; publishes it as a snapshot with the next number.
    pub async fn snapshot(&self, state: StateMap, workflow_id: &WorkflowId) -> Result<i64> {
        let mut guard = self.inner.lock().await;
        guard.state = state;
        guard.num += 1;
        let whole = guard.state.clone();
        self.publish_locked(&mut guard, true, whole, workflow_id)
            .await
    }

    /// Applies a shallow delta (nil deletes); publishes it with the next number. Deletes of
    /// keys the state does not hold are left out of what is published (Python 0.0.18's
    /// follower raises on them); a delta left with nothing to say is not published and keeps
    /// the number.
    pub async fn delta(&self, mut delta: StateMap, workflow_id: &WorkflowId) -> Result<i64> {
        let mut guard = self.inner.lock().await;
        delta.retain(|k, v| !v.is_nil() || guard.state.contains_key(k));
        if delta.is_empty() {
            return Ok(guard.num);
        }
        apply_delta(&mut guard.state, &delta);
        guard.num += 1;
        self.publish_locked(&mut guard, false, delta, workflow_id)
            .await
    }

    /// Publishes the current state as a snapshot (same number: nothing changed), e.g. when
    /// subscribers are known to have joined.
    pub async fn publish_snapshot(&self, workflow_id: &WorkflowId) -> Result<i64> {
        let mut guard = self.inner.lock().await;
        let whole = guard.state.clone();
        self.publish_locked(&mut guard, true, whole, workflow_id)
            .await
    }

    /// Publishes `state` (the whole state, or a delta) with the current number, under the
    /// lock, and notes when (the quiet spell of unsolicited snapshots counts from it).
    async fn publish_locked(
        &self,
        guard: &mut OutInner,
        is_snapshot: bool,
        state: StateMap,
        workflow_id: &WorkflowId,
    ) -> Result<i64> {
        let args = DeltaArgs {
            current_num: guard.num,
            is_snapshot,
            state,
        };
        self.publisher.publish(&args, workflow_id).await?;
        guard.published = tokio::time::Instant::now();
        Ok(guard.num)
    }

    /// The publisher's counters (published, dropped at the high-water mark).
    pub fn publisher_stats(&self) -> &Arc<sf_connections::Stats> {
        self.publisher.stats()
    }

    /// Snapshot requests answered by the snapshot replyer (0 once it closed).
    pub fn snapshots_served(&self) -> u64 {
        self.replyer
            .lock()
            .expect("replyer lock")
            .as_ref()
            .map_or(0, |r| r.stats().get(Counter::Replied))
    }

    /// Peers refused by security (CURVE) on the publisher and the snapshot replyer together.
    pub fn auth_failures(&self) -> u64 {
        let replyer = self
            .replyer
            .lock()
            .expect("replyer lock")
            .as_ref()
            .map_or(0, |r| r.stats().get(Counter::AuthFailures));
        self.publisher.stats().get(Counter::AuthFailures) + replyer
    }

    /// The current state and number.
    pub async fn current(&self) -> (StateMap, i64) {
        let guard = self.inner.lock().await;
        (guard.state.clone(), guard.num)
    }

    /// Closes the replyer, flushes the publisher.
    pub async fn shutdown(&self, linger: Duration) {
        let rep = self.replyer.lock().expect("replyer lock").take();
        if let Some(rep) = rep {
            rep.shutdown().await;
        }
        self.publisher.shutdown(linger).await;
    }
}
