//! Brokerless replicas: one `sf_connections` [`Requester`] given 1, 2 and 3 replyer addresses
//! (the addresses.json list form), 1 and 16 callers. Each replica is the `reqrep` pattern's
//! typed echo [`Replyer`](sf_connections::Replyer) on a thread and current-thread runtime of
//! its own, as a replica process would be; the callers run on a multi-thread runtime. Rows:
//! fw = n replicas, raw = 1 replica in the same run (so the ratio is what spreading gains, or
//! costs). On a machine with fewer cores than replicas + caller, the replicas share the cores
//! and the gain is bounded by them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sf_connections::{Address, Requester, RequesterOptions};

use crate::report::{PatternReport, Row};
use crate::reqrep::{fw_replyer, RoundTrips, CALLERS};
use crate::util::{block_on, median_run, rate, Flavor, Latency};
use crate::Config;

/// A replica: the echo replyer on its own thread; stops when the sender is dropped.
fn replica_thread() -> anyhow::Result<(String, std::sync::mpsc::Sender<()>)> {
    let (ep_tx, ep_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("replica".into())
        .spawn(move || {
            let rt = crate::util::runtime(Flavor::Current);
            rt.block_on(async move {
                let rep = match fw_replyer().await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ep_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ep_tx.send(Ok(rep.endpoint().to_owned()));
                while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                rep.shutdown().await;
            });
        })?;
    let ep = ep_rx
        .recv_timeout(Duration::from_secs(5))
        .context("a replica thread did not start")?
        .map_err(anyhow::Error::msg)?;
    Ok((ep, stop_tx))
}

/// `total` round trips from `callers` tasks sharing one requester to `endpoints`.
async fn calls(
    endpoints: Vec<String>,
    callers: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let address = Address::Replicas(
        endpoints
            .iter()
            .map(|e| Address::from(e.as_str()))
            .collect(),
    );
    let req = Requester::connect(
        &address,
        RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )?;
    let mut up = req.replicas_up();
    let n = endpoints.len();
    tokio::time::timeout(Duration::from_secs(5), up.wait_for(|&u| u == n))
        .await
        .context("the replicas did not come up")??;
    let frame = crate::reqrep::request_frame();
    for _ in 0..warmup {
        req.request_raw(frame.to_vec()).await?;
    }
    let per = total / callers;
    let start = Instant::now();
    let frame = Arc::new(frame);
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (req, frame) = (req.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                req.request_raw(frame.to_vec()).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    Ok(RoundTrips {
        per_s: rate(lat.len() as u64, elapsed),
        latency: Latency::of(&mut lat),
    })
}

fn case(
    replicas: usize,
    callers: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let threads: Vec<(String, std::sync::mpsc::Sender<()>)> = (0..replicas)
        .map(|_| replica_thread())
        .collect::<anyhow::Result<_>>()?;
    let endpoints = threads.iter().map(|(e, _)| e.clone()).collect();
    let out = block_on(
        Flavor::Multi,
        Duration::from_secs(120),
        calls(endpoints, callers, total, warmup),
    );
    drop(threads);
    out
}

/// The pattern: 1, 2 and 3 replicas in turn, median of 3 runs each (1 in short mode); every
/// row against the 1-replica median of the same run.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let mut p = PatternReport::new(
        "replicas",
        "brokerless replicas: one Requester over 1, 2 and 3 replyers (fewest in flight first)",
    )
    .columns("n replicas", "1 replica", "ratio");
    let runs = if config.short { 1 } else { 3 };
    for callers in [1, CALLERS] {
        let (n, warm) = if callers == 1 {
            (c.rr_one, c.rr_warmup)
        } else {
            (c.rr_many, c.rr_warmup)
        };
        let mut by_count: [Vec<anyhow::Result<RoundTrips>>; 3] = Default::default();
        for _ in 0..runs {
            for (i, results) in by_count.iter_mut().enumerate() {
                results.push(case(i + 1, callers, n, warm));
            }
        }
        let medians: Vec<anyhow::Result<RoundTrips>> = by_count
            .into_iter()
            .map(|r| median_run(r, |x| x.per_s))
            .collect();
        let base = medians[0].as_ref().ok().copied();
        for (i, m) in medians.iter().enumerate() {
            let what = format!("{} replica(s), {callers} caller(s)", i + 1);
            let mut row = Row::new(&what, "round trips/s", "rt/s")
                .fw(m.as_ref().ok().map(|x| x.per_s))
                .raw(base.map(|x| x.per_s));
            if let Err(e) = m {
                row = row.note(format!("failed: {e:#}"));
            }
            p.push(row);
            p.push(
                Row::new(&what, "p50 latency", "us")
                    .fw(m.as_ref().ok().map(|x| x.latency.p50_us))
                    .raw(base.map(|x| x.latency.p50_us)),
            );
        }
    }
    p.note(format!(
        "each replica on its own thread and current-thread runtime; callers on a multi-thread runtime; {} core(s)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    p
}
