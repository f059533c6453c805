//! The delta in side: a follower task that applies deltas in order and resyncs by snapshot.

use std::sync::Arc;
use std::time::Duration;

use sf_connections::stats::{Counter, Stats};
use sf_connections::wire::WorkflowId;
use sf_connections::{Address, Delivery, Requester, RequesterOptions, Subscriber};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::*;

/// `delta_update_in`: follows a `delta_update_out`, resyncing by snapshot when needed.
#[derive(Debug)]
pub struct DeltaUpdateIn {
    view: watch::Receiver<StateView>,
    stats: Arc<Stats>,
    _stop: DropCancel,
}

/// What a [`DeltaUpdateIn`] counts beyond the connection counters: `received` (updates
/// applied), `duplicates` (old or repeated numbers ignored), `lost` (gaps seen), `retries`
/// (snapshot requests), `malformed` (rejected messages).
impl DeltaUpdateIn {
    /// Subscribes to `subscriber` and asks `requester` (the out side's replyer) for a snapshot
    /// at once.
    pub async fn start(
        subscriber: &Address,
        requester: &Address,
        options: &StateOptions,
    ) -> Result<Self> {
        let sub = Subscriber::start(subscriber, options.subscriber()).await?;
        let timeout = options.resync_timeout.unwrap_or(Duration::from_secs(2));
        let req = Requester::connect(
            requester,
            RequesterOptions {
                timeout,
                security: options.connect_security.clone(),
                ..Default::default()
            },
        )?;
        let (tx, view) = empty_view();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let follower = Follower::new(tx, stats.clone());
        tokio::spawn(follower.run(sub, req, stop.clone()));
        Ok(DeltaUpdateIn {
            view,
            stats,
            _stop: DropCancel(stop),
        })
    }

    /// A receiver of the view: `borrow()` reads, `changed()` waits.
    pub fn watch(&self) -> watch::Receiver<StateView> {
        self.view.clone()
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// Deltas kept while a snapshot is on its way (beyond this the oldest go: the snapshot
/// covers them).
const MAX_BUFFERED: usize = 100_000;

struct Follower {
    tx: watch::Sender<StateView>,
    stats: Arc<Stats>,
    buffered: VecDeque<DeltaArgs>,
    state: StateMap,
    num: i64,
    /// The publisher instance followed (framework out sides only): a new one means the out
    /// side restarted and its numbering started again.
    source: Option<u64>,
    /// The next snapshot reply is taken whatever its number: it was asked for after the
    /// connection to the out side was re-established, and the out side may have restarted
    /// (its numbers starting again) while we were cut off.
    force: bool,
    /// A reconnection happened while a resync was on its way: ask again once it lands.
    again: bool,
    /// Updates applied since the view was last published.
    dirty: bool,
    /// When the view was last published, and how long copying the state for it took.
    published: tokio::time::Instant,
    copy_cost: Duration,
}

/// A view is a copy of the whole state (at 10,000 keys a copy costs as much as hundreds of
/// deltas). While updates keep coming, a view is published at most once per this many times
/// the last copy's cost, so copies take at most about a fifth of the follower's time; an
/// update that arrives after a quiet spell is published at once, and the last one of a
/// stream within that interval.
const VIEW_COPY_FACTOR: u32 = 4;

/// The longest a view may lag behind applied updates, whatever one slow copy measured.
const MAX_VIEW_INTERVAL: Duration = Duration::from_millis(50);

impl Follower {
    /// An empty follower, before its first snapshot.
    fn new(tx: watch::Sender<StateView>, stats: Arc<Stats>) -> Follower {
        Follower {
            tx,
            stats,
            buffered: VecDeque::new(),
            state: StateMap::new(),
            num: -1,
            source: None,
            force: false,
            again: false,
            dirty: false,
            published: tokio::time::Instant::now(),
            copy_cost: Duration::ZERO,
        }
    }

    async fn run(mut self, mut sub: Subscriber, req: Requester, stop: CancellationToken) {
        let (snap_tx, mut snap_rx) = mpsc::channel::<SnapshotReply>(1);
        // Ask at once: a late joiner converges without waiting for the next change.
        let mut resync = Some(spawn_resync(
            req.clone(),
            snap_tx.clone(),
            self.stats.clone(),
            stop.clone(),
        ));
        // Armed when a view is owed but the last one is too recent; reset only when armed, so
        // a steady stream registers one timer per interval, not one per delta.
        let later = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(later);
        let mut owed = false;
        let mut connections = sub.connections();
        let mut watching = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                c = connections.changed(), if watching => {
                    if c.is_err() {
                        watching = false;
                        continue;
                    }
                    // Re-established (or first established): whatever was published while
                    // we were cut off is lost to us, and the out side may be a new instance.
                    tracing::debug!("delta_update_in connected to its out side; asking for a snapshot");
                    if resync.is_some() {
                        self.again = true;
                    } else {
                        self.force = true;
                        resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                    }
                }
                _ = &mut later, if owed => {
                    owed = false;
                    self.flush();
                }
                snap = snap_rx.recv() => {
                    resync = None;
                    if let Some(snap) = snap {
                        self.adopt(snap);
                        if self.again {
                            self.again = false;
                            self.force = true;
                        }
                        if self.has_gap() || self.force {
                            resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                        }
                    }
                }
                d = sub.next() => {
                    let Some(d) = d else { return };
                    let Some(args) = self.parse(&d) else { continue };
                    if let Some((_, pub_id)) = d.seq {
                        if self.source.is_some_and(|s| s != pub_id) && !args.is_snapshot {
                            // The out side restarted: its numbers mean nothing against ours.
                            tracing::info!("delta_update_out restarted; resyncing by snapshot");
                            self.num = -1;
                            self.buffered.clear();
                            self.source = Some(pub_id);
                            self.buffer(args);
                            if resync.is_none() {
                                resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                            }
                            continue;
                        }
                        if self.source != Some(pub_id) && args.is_snapshot {
                            self.num = -1;
                        }
                        self.source = Some(pub_id);
                    }
                    if resync.is_some() {
                        self.buffer(args);
                        continue;
                    }
                    if !self.apply(args) {
                        resync = Some(spawn_resync(req.clone(), snap_tx.clone(), self.stats.clone(), stop.clone()));
                    }
                    if self.dirty && !owed {
                        let interval = (self.copy_cost * VIEW_COPY_FACTOR).min(MAX_VIEW_INTERVAL);
                        let due = self.published + interval;
                        if !sub.has_pending() && tokio::time::Instant::now() >= due {
                            self.flush();
                        } else {
                            // Also while a backlog lasts: a stream that never pauses still
                            // gets a fresh view every interval.
                            later.as_mut().reset(due);
                            owed = true;
                        }
                    }
                }
            }
        }
    }

    fn parse(&self, d: &Delivery) -> Option<DeltaArgs> {
        match d.args::<DeltaArgs>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.stats.bump(Counter::Malformed);
                tracing::warn!("delta_update_in rejected a message that is not {{current_num, is_snapshot, state}}: {e}");
                None
            }
        }
    }

    fn buffer(&mut self, args: DeltaArgs) {
        if self.buffered.len() >= MAX_BUFFERED {
            self.buffered.pop_front();
        }
        self.buffered.push_back(args);
    }

    /// Applies one update; false means a gap was found (the update is buffered).
    fn apply(&mut self, args: DeltaArgs) -> bool {
        if args.is_snapshot {
            if args.current_num < self.num {
                self.stats.bump(Counter::Duplicates);
                return true;
            }
            self.state = args.state;
            self.num = args.current_num;
            self.dirty = true;
            return true;
        }
        if args.current_num <= self.num {
            self.stats.bump(Counter::Duplicates);
            return true;
        }
        if args.current_num != self.num + 1 {
            self.stats.bump(Counter::Lost);
            tracing::warn!(
                expected = self.num + 1,
                got = args.current_num,
                "delta_update_in found a gap; resyncing by snapshot"
            );
            self.buffer(args);
            return false;
        }
        apply_delta(&mut self.state, &args.state);
        self.num = args.current_num;
        self.stats.bump(Counter::Received);
        self.dirty = true;
        true
    }

    fn adopt(&mut self, snap: SnapshotReply) {
        // Kept only for a Python out side (see below); framework out sides number truly.
        let python_state = self.source.is_none().then(|| snap.state.clone());
        if std::mem::take(&mut self.force) || snap.current_num >= self.num {
            self.state = snap.state;
            self.num = snap.current_num;
        }
        // Replay what arrived meanwhile, in number order; stale ones are skipped.
        let mut pending: Vec<DeltaArgs> = self.buffered.drain(..).collect();
        pending.sort_by_key(|a| a.current_num);
        let mut rest = Vec::new();
        for a in pending {
            if a.current_num <= self.num && !a.is_snapshot {
                continue;
            }
            if a.is_snapshot || a.current_num == self.num + 1 {
                if a.is_snapshot && a.current_num < self.num {
                    continue;
                }
                if a.is_snapshot {
                    self.state = a.state;
                } else {
                    apply_delta(&mut self.state, &a.state);
                    self.stats.bump(Counter::Received);
                }
                self.num = a.current_num;
            } else {
                rest.push(a);
            }
        }
        if !rest.is_empty() && self.source.is_none() {
            // No framework pub_id seen: a Python 0.0.18 out side, whose snapshot replies always
            // say 0. It updates its state before publishing, so the snapshot (asked for after
            // the first of these deltas arrived) already contains that one; later ones may or
            // may not be in it (one published just after the reply can arrive before it).
            // Take the snapshot and re-apply these deltas on top, in order: a shallow
            // set/delete repeated in order lands on the same values, and one missing from the
            // snapshot is not lost. Then continue from the newest number seen instead of
            // resyncing forever.
            let newest = rest.iter().map(|a| a.current_num).max().unwrap_or(self.num);
            tracing::debug!(newest, "snapshot number is behind the deltas of a Python out side; adopting it at {newest}");
            self.num = newest.max(self.num);
            if let Some(state) = python_state {
                self.state = state;
                for a in &rest {
                    apply_delta(&mut self.state, &a.state);
                }
            }
            rest.clear();
        }
        self.buffered = rest.into();
        self.publish();
    }

    fn has_gap(&self) -> bool {
        !self.buffered.is_empty()
    }

    fn publish(&mut self) {
        self.dirty = false;
        let start = tokio::time::Instant::now();
        self.tx.send_replace(StateView {
            state: Arc::new(self.state.clone()),
            current_num: self.num,
        });
        self.published = tokio::time::Instant::now();
        self.copy_cost = self.published - start;
    }

    /// Publishes the view if updates were applied since the last one. The view is a copy of
    /// the whole state, so the run loop calls this only once no further update is waiting:
    /// a burst costs one copy, not one per delta.
    fn flush(&mut self) {
        if self.dirty {
            self.publish();
        }
    }
}

/// Requests a snapshot in its own task: bounded per attempt, retried with backoff until it
/// succeeds or the state stops. The service loop never waits on it.
fn spawn_resync(
    req: Requester,
    out: mpsc::Sender<SnapshotReply>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    stats.bump(Counter::Resyncs);
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(20);
        let empty = StateMap::new();
        loop {
            stats.bump(Counter::Retries);
            let got = tokio::select! {
                _ = stop.cancelled() => return,
                r = req.request::<_, SnapshotReply>(&empty, WorkflowId::None) => r,
            };
            match got {
                Ok(snap) => {
                    let _ = out.send(snap).await;
                    return;
                }
                Err(e) => tracing::debug!("snapshot request failed, retrying: {e}"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn m(pairs: &[(&str, Value)]) -> StateMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn follower() -> (Follower, watch::Receiver<StateView>) {
        let (tx, rx) = watch::channel(StateView::default());
        (Follower::new(tx, Arc::default()), rx)
    }

    impl Follower {
        /// What the run loop does for one update with nothing else waiting.
        fn apply_now(&mut self, args: DeltaArgs) -> bool {
            let applied = self.apply(args);
            self.flush();
            applied
        }
    }

    fn delta(n: i64, snap: bool, pairs: &[(&str, Value)]) -> DeltaArgs {
        DeltaArgs {
            current_num: n,
            is_snapshot: snap,
            state: m(pairs),
        }
    }

    #[test]
    fn the_originals_scenarios() {
        let (mut f, rx) = follower();
        // Reset snapshot, full snapshot, deltas with deletes.
        assert!(f.apply_now(delta(0, true, &[])));
        assert!(f.apply_now(delta(
            1,
            true,
            &[("x", Value::from(1)), ("y", Value::from(2))]
        )));
        assert!(f.apply_now(delta(2, false, &[("x", Value::Nil), ("z", Value::from(3))])));
        assert_eq!(
            *rx.borrow().state,
            m(&[("y", Value::from(2)), ("z", Value::from(3))])
        );
        // Old number ignored, duplicate ignored (not a gap).
        assert!(f.apply_now(delta(1, false, &[("y", Value::from(99))])));
        assert!(f.apply_now(delta(2, false, &[("y", Value::from(99))])));
        assert_eq!(f.stats.get(Counter::Duplicates), 2);
        assert_eq!(rx.borrow().current_num, 2);
        // A future number is a gap: buffered, then the snapshot plus replay converges.
        assert!(!f.apply_now(delta(4, false, &[("w", Value::from(4))])));
        f.buffer(delta(5, false, &[("z", Value::Nil)]));
        f.adopt(SnapshotReply {
            state: m(&[
                ("y", Value::from(2)),
                ("z", Value::from(3)),
                ("v", Value::from(3)),
            ]),
            current_num: 3,
        });
        assert_eq!(rx.borrow().current_num, 5);
        assert_eq!(
            *rx.borrow().state,
            m(&[
                ("y", Value::from(2)),
                ("v", Value::from(3)),
                ("w", Value::from(4))
            ])
        );
        assert!(!f.has_gap());
    }

    #[test]
    fn a_python_out_side_whose_snapshots_say_zero_still_converges() {
        let (mut f, rx) = follower();
        assert!(f.apply_now(delta(1, true, &[("a", Value::from(1))])));
        assert!(!f.apply_now(delta(3, false, &[("c", Value::from(3))])));
        // 0.0.18's replyer answers with the right state but current_num 0.
        f.adopt(SnapshotReply {
            state: m(&[
                ("a", Value::from(1)),
                ("b", Value::from(2)),
                ("c", Value::from(3)),
            ]),
            current_num: 0,
        });
        assert!(!f.has_gap(), "no endless resync");
        assert_eq!(rx.borrow().current_num, 3);
        assert_eq!(rx.borrow().state.len(), 3);
        assert!(
            f.apply_now(delta(4, false, &[("d", Value::from(4))])),
            "follows on from there"
        );
        assert_eq!(rx.borrow().state.len(), 4);
    }

    #[test]
    fn a_python_snapshot_older_than_a_buffered_delta_loses_nothing() {
        let (mut f, rx) = follower();
        assert!(f.apply_now(delta(1, true, &[("a", Value::from(1))])));
        // Gap: 3 arrives; the resync is asked for; 4 is published just after the Python out
        // side answered, yet reaches us before the answer does.
        assert!(!f.apply_now(delta(3, false, &[("c", Value::from(3))])));
        f.buffer(delta(4, false, &[("a", Value::Nil), ("d", Value::from(4))]));
        f.adopt(SnapshotReply {
            state: m(&[
                ("a", Value::from(1)),
                ("b", Value::from(2)),
                ("c", Value::from(3)),
            ]),
            current_num: 0,
        });
        assert!(!f.has_gap());
        assert_eq!(rx.borrow().current_num, 4);
        assert_eq!(
            *rx.borrow().state,
            m(&[
                ("b", Value::from(2)),
                ("c", Value::from(3)),
                ("d", Value::from(4))
            ]),
            "delta 4, missing from the snapshot, is applied on top of it"
        );
    }

    #[test]
    fn a_stale_snapshot_reply_does_not_go_back() {
        let (mut f, rx) = follower();
        assert!(f.apply_now(delta(7, true, &[("a", Value::from(1))])));
        f.adopt(SnapshotReply {
            state: StateMap::new(),
            current_num: 3,
        });
        assert_eq!(rx.borrow().current_num, 7);
        assert_eq!(*rx.borrow().state, m(&[("a", Value::from(1))]));
    }
}
