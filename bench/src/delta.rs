//! Delta state: updates per second delivered, and the time to resync.
//!
//! Throughput: `DeltaUpdateOut::delta` in a loop (one changed key each) until a
//! `DeltaUpdateIn`'s watch reaches the final `current_num`; a follower that falls behind
//! and loses deltas resyncs by snapshot, so the figure is "updates until converged". Raw:
//! the same `{current_num, is_snapshot, state}` msgpack frames over `zeromq` PUB -> SUB, the
//! consumer decoding and applying each (it cannot resync: lost is reported).
//!
//! Resync (framework only): a late joiner to a state of many keys, from `start` to converged;
//! and a gap injected by a relay (raw SUB -> PUB between the out side and the follower) that
//! drops one delta: from publishing the next delta (the one that reveals the gap) to
//! converged, beside the same path's latency when nothing is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sf_connections::stats::Counter;
use sf_connections::wire::WorkflowId;
use sf_connections::Address;
use sf_states::{
    apply_delta, DeltaArgs, DeltaUpdateIn, DeltaUpdateOut, StateMap, StateOptions, StateView, Value,
};
use tokio::sync::watch;
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::report::{PatternReport, Row, Target};
use crate::util::{block_on, count, rate, Flavor, Latency};
use crate::Config;

/// State sizes (keys) of the throughput runs: every delta changes one of them.
pub const STATE_KEYS: [u64; 2] = [100, 10_000];
const CONVERGE_LIMIT: Duration = Duration::from_secs(10);

fn one_key(i: u64, keys: u64) -> StateMap {
    let mut m = StateMap::new();
    m.insert(format!("k{}", i % keys), Value::from(i));
    m
}

fn full_state(keys: u64) -> StateMap {
    (0..keys)
        .map(|i| (format!("k{i}"), Value::from(0u64)))
        .collect()
}

async fn converged(
    rx: &mut watch::Receiver<StateView>,
    num: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(limit, rx.wait_for(|v| v.current_num >= num))
        .await
        .with_context(|| format!("the follower did not reach current_num {num} within {limit:?}"))?
        .context("the follower stopped")?;
    Ok(())
}

/// Delivered updates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Updates {
    /// Updates published.
    pub sent: u64,
    /// Updates per second, first publish to converged.
    pub per_s: f64,
    /// Deltas the follower applied one by one (the rest came with a snapshot).
    pub applied: u64,
    /// Gaps the follower saw.
    pub gaps: u64,
    /// Snapshot requests it made.
    pub snapshots: u64,
}

/// Framework: out side -> follower, `n` deltas to a state of `keys` keys.
pub async fn framework(n: u64, keys: u64) -> anyhow::Result<Updates> {
    let any = Address::from("127.0.0.1:0");
    let out = DeltaUpdateOut::start(&any, &any, &StateOptions::default()).await?;
    let follower = DeltaUpdateIn::start(
        &Address::from(out.publisher_endpoint()),
        &Address::from(out.replyer_endpoint()),
        &StateOptions::default(),
    )
    .await?;
    let mut rx = follower.watch();
    out.snapshot(full_state(keys), &WorkflowId::None).await?;
    warm_up(&out, &follower, &mut rx).await?;
    let stats = follower.stats().clone();
    let before = |c| stats.get(c);
    let (applied0, gaps0, snaps0) = (
        before(Counter::Received),
        before(Counter::Lost),
        before(Counter::Retries),
    );
    let start = Instant::now();
    let mut last = 0;
    for i in 0..n {
        last = out.delta(one_key(i, keys), &WorkflowId::None).await?;
    }
    converged(&mut rx, last, CONVERGE_LIMIT).await?;
    let elapsed = start.elapsed();
    Ok(Updates {
        sent: n,
        per_s: rate(n, elapsed),
        applied: stats.get(Counter::Received) - applied0,
        gaps: stats.get(Counter::Lost) - gaps0,
        snapshots: stats.get(Counter::Retries) - snaps0,
    })
}

/// Publishes small deltas until the follower has applied one that came over the bus: its
/// subscription is in place. (Converging is not proof enough: the follower's first snapshot
/// request can bring it up to date while published deltas still find no subscriber.)
async fn warm_up(
    out: &DeltaUpdateOut,
    follower: &DeltaUpdateIn,
    rx: &mut watch::Receiver<StateView>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let applied = follower.stats().get(Counter::Received);
    loop {
        let mut m = StateMap::new();
        m.insert("warm".into(), Value::from(1));
        let num = out.delta(m, &WorkflowId::None).await?;
        if converged(rx, num, Duration::from_millis(50)).await.is_ok()
            && follower.stats().get(Counter::Received) > applied
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the follower never received a delta during warm-up"
        );
    }
}

/// Raw: the same frames over PUB -> SUB, decoded and applied by the consumer.
pub async fn raw(n: u64, keys: u64, quiet: Duration) -> anyhow::Result<(Updates, u64)> {
    let mut publ = PubSocket::new();
    let ep = publ.bind("tcp://127.0.0.1:0").await?.to_string();
    let mut sub = SubSocket::new();
    sub.connect(&ep).await?;
    sub.subscribe("").await?;
    let frame = |num: i64, state: StateMap| {
        rmp_serde::to_vec_named(&DeltaArgs {
            current_num: num,
            is_snapshot: false,
            state,
        })
        .map(ZmqMessage::from)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        publ.send(frame(0, StateMap::new())?).await?;
        if tokio::time::timeout(Duration::from_millis(20), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "raw warm-up got nothing");
    }
    while tokio::time::timeout(Duration::from_millis(100), sub.recv())
        .await
        .is_ok()
    {}
    let final_num = n as i64;
    let consumer = tokio::spawn(async move {
        let mut state = full_state(keys);
        let (mut num, mut applied, mut last) = (0i64, 0u64, Instant::now());
        while num < final_num {
            let Ok(Ok(m)) = tokio::time::timeout(quiet, sub.recv()).await else {
                break;
            };
            let Some(f) = m.get(0) else { continue };
            let Ok(d) = rmp_serde::from_slice::<DeltaArgs>(f) else {
                continue;
            };
            apply_delta(&mut state, &d.state);
            num = d.current_num;
            applied += 1;
            last = Instant::now();
        }
        (applied, last)
    });
    let start = Instant::now();
    for i in 0..n {
        publ.send(frame(i as i64 + 1, one_key(i, keys))?).await?;
    }
    let (applied, last) = consumer.await?;
    anyhow::ensure!(applied > 0, "the raw consumer received nothing");
    // Without resync a raw follower that lost updates never converges: its figure is the
    // rate it applied what did arrive.
    Ok((
        Updates {
            sent: n,
            per_s: rate(applied, last - start),
            applied,
            gaps: 0,
            snapshots: 0,
        },
        n - applied,
    ))
}

/// A raw SUB -> PUB relay that drops the next message when told to.
struct Relay {
    endpoint: String,
    drop_next: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

async fn relay(upstream: &str) -> anyhow::Result<Relay> {
    let mut sub = SubSocket::new();
    sub.connect(upstream).await?;
    sub.subscribe("").await?;
    let mut publ = PubSocket::new();
    let endpoint = publ.bind("tcp://127.0.0.1:0").await?.to_string();
    let drop_next = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let (d, n) = (drop_next.clone(), dropped.clone());
    tokio::spawn(async move {
        while let Ok(m) = sub.recv().await {
            if d.swap(false, Ordering::SeqCst) {
                n.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if publ.send(m).await.is_err() {
                break;
            }
        }
    });
    Ok(Relay {
        endpoint,
        drop_next,
        dropped,
    })
}

/// Resync figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resync {
    /// One delta through the relay, nothing dropped.
    pub no_gap: Latency,
    /// The delta after a dropped one, until converged.
    pub after_gap: Latency,
    /// Late joiner, start to converged, milliseconds (median of the runs).
    pub late_join_ms: f64,
}

/// Gap and late-join resync times.
pub async fn resync(gaps: usize, late_keys: usize, late_runs: usize) -> anyhow::Result<Resync> {
    let any = Address::from("127.0.0.1:0");
    // No periodic snapshots: the follower must find the gap itself.
    let opts = StateOptions {
        snapshot_interval: Some(Duration::ZERO),
        ..Default::default()
    };
    let out = DeltaUpdateOut::start(&any, &any, &opts).await?;
    let relay = relay(out.publisher_endpoint()).await?;
    let follower = DeltaUpdateIn::start(
        &Address::from(relay.endpoint.as_str()),
        &Address::from(out.replyer_endpoint()),
        &StateOptions::default(),
    )
    .await?;
    let mut rx = follower.watch();
    warm_up(&out, &follower, &mut rx).await?;
    let mut no_gap = Vec::with_capacity(gaps);
    let mut after_gap = Vec::with_capacity(gaps);
    for i in 0..gaps as u64 {
        let t = Instant::now();
        let num = out.delta(one_key(i, 100), &WorkflowId::None).await?;
        converged(&mut rx, num, CONVERGE_LIMIT).await?;
        no_gap.push(t.elapsed());

        let dropped = relay.dropped.load(Ordering::SeqCst);
        relay.drop_next.store(true, Ordering::SeqCst);
        out.delta(one_key(i + 1, 100), &WorkflowId::None).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.dropped.load(Ordering::SeqCst) == dropped {
            anyhow::ensure!(Instant::now() < deadline, "the relay dropped nothing");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = Instant::now();
        let num = out.delta(one_key(i + 2, 100), &WorkflowId::None).await?;
        converged(&mut rx, num, CONVERGE_LIMIT).await?;
        after_gap.push(t.elapsed());
    }
    let gaps_seen = follower.stats().get(Counter::Lost);
    anyhow::ensure!(
        gaps_seen >= gaps as u64,
        "the follower saw {gaps_seen} gaps of {gaps} injected"
    );

    // Late joiner: a state of `late_keys` keys, then a follower starts.
    let mut joins = Vec::with_capacity(late_runs);
    let big = DeltaUpdateOut::start(&any, &any, &opts).await?;
    let state: StateMap = (0..late_keys)
        .map(|i| (format!("key-{i}"), Value::from(i as u64)))
        .collect();
    let num = big.snapshot(state, &WorkflowId::None).await?;
    for _ in 0..late_runs {
        let t = Instant::now();
        let late = DeltaUpdateIn::start(
            &Address::from(big.publisher_endpoint()),
            &Address::from(big.replyer_endpoint()),
            &StateOptions::default(),
        )
        .await?;
        let mut rx = late.watch();
        converged(&mut rx, num, CONVERGE_LIMIT).await?;
        joins.push(t.elapsed());
        anyhow::ensure!(
            rx.borrow().state.len() == late_keys,
            "the late joiner has {} keys of {late_keys}",
            rx.borrow().state.len()
        );
    }
    let late = Latency::of(&mut joins);
    Ok(Resync {
        no_gap: Latency::of(&mut no_gap),
        after_gap: Latency::of(&mut after_gap),
        late_join_ms: late.p50_us / 1000.0,
    })
}

/// Runs the delta-state pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let lim = Duration::from_secs(if config.short { 20 } else { 120 });
    let mut p = PatternReport::new(
        "delta",
        "delta state, DeltaUpdateOut -> DeltaUpdateIn, multi-thread runtime",
    );
    // Runs of a fraction of a second move by up to 2x on this kind of VM: each side runs
    // several times, alternating, and the median run of each is reported.
    let runs = if config.short { 1 } else { 5 };
    for keys in STATE_KEYS {
        // Bigger states cost more per delta on both sides: fewer deltas keep the run short.
        let n = if keys > 1_000 {
            (c.delta / 2).max(100)
        } else {
            c.delta
        };
        let mut raws = Vec::new();
        let mut fws = Vec::new();
        for _ in 0..runs {
            raws.push(block_on(Flavor::Multi, lim, raw(n, keys, c.quiet)));
            fws.push(block_on(Flavor::Multi, lim, framework(n, keys)));
        }
        let raw = crate::util::median_run(raws, |(u, _)| u.per_s);
        let fw = crate::util::median_run(fws, |u| u.per_s);
        let mut row = Row::new(
            format!("delta loop, {}-key state", count(keys)),
            "updates to converged",
            "upd/s",
        )
        .fw(fw.as_ref().ok().map(|u| u.per_s))
        .raw(raw.as_ref().ok().map(|(u, _)| u.per_s))
        .target(Target::RatioAtLeast(0.8));
        let mut notes = Vec::new();
        match &fw {
            Ok(u) => notes.push(format!(
                "median of {runs} runs each; framework: {} deltas, {} applied one by one, {} gaps, {} snapshot requests",
                count(u.sent),
                count(u.applied),
                count(u.gaps),
                count(u.snapshots)
            )),
            Err(e) => notes.push(format!("framework failed: {e:#}")),
        }
        match &raw {
            Ok((_, lost)) => notes.push(format!(
                "raw PUB->SUB decode+apply, {} lost (no resync: a lossy raw run is the rate of what arrived)",
                count(*lost)
            )),
            Err(e) => notes.push(format!("raw failed: {e:#}")),
        }
        row = row.note(notes.join("; "));
        p.push(row);
    }

    let late_runs = if config.short { 1 } else { 5 };
    match block_on(
        Flavor::Multi,
        lim,
        resync(c.delta_gaps, c.late_join_keys, late_runs),
    ) {
        Ok(r) => {
            p.push(
                Row::new("one delta via relay, no gap", "p50 latency", "us")
                    .fw(r.no_gap.p50_us)
                    .note("framework only: publish to the follower's watch"),
            );
            p.push(
                Row::new("resync after a gap", "p50 time", "us")
                    .fw(r.after_gap.p50_us)
                    .note(format!(
                        "framework only: {} gaps injected by the relay; from the revealing delta to converged (p99 {:.0} us)",
                        c.delta_gaps, r.after_gap.p99_us
                    )),
            );
            p.push(
                Row::new(
                    format!("late joiner, {} keys", count(c.late_join_keys as u64)),
                    "start to converged",
                    "ms",
                )
                .fw(r.late_join_ms)
                .note(format!("framework only: median of {late_runs} starts")),
            );
        }
        Err(e) => p.push(Row::new("resync", "time", "us").note(format!("framework failed: {e:#}"))),
    }
    p
}
