//! Brokerless replicas: one `sf_connections` [`Requester`] given 1, 2 and 3 replyer addresses
//! (the addresses.json list form), 1 and 16 callers. Each replica is the `reqrep` pattern's
//! typed echo [`Replyer`](sf_connections::Replyer) on a thread and current-thread runtime of
//! its own, as a replica process would be; the callers run on a multi-thread runtime. Rows:
//! fw = n replicas, raw = 1 replica in the same run (so the ratio is what spreading gains, or
//! costs). On a machine with fewer cores than replicas + caller, the replicas share the cores
//! and the gain is bounded by them.
//!
//! The `broker_replicas` pattern ([`run_brokered`]) is the same over the Majordomo broker:
//! 1, 2 and 3 replicas of the echo handler, each registered as MDP workers on a thread and
//! current-thread runtime of its own, behind one in-process broker on a thread of its own (as
//! a broker process runs its loop); one `Requester`, shared by 1 or 16 callers, at the
//! broker's front-end, then speaking MDP to the broker itself (`Requester::through_broker`).
//! Same columns: n replicas against 1 replica of the same path in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sf_connections::mdp::{self, BrokerOptions};
use sf_connections::{Address, Counter, Requester, RequesterOptions, Stats};

use crate::report::PatternReport;
use crate::reqrep::{fw_calls_on, fw_replyer, rate_and_p50, RoundTrips, CALLERS};
use crate::util::{block_on, median_run, rate, Flavor, Latency};
use crate::Config;

/// How a server started on a thread is shut down there.
type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts a server on a thread of its own with a current-thread runtime, as a process of its
/// own would run; gives what `start` returned; shuts it down when the sender is dropped.
fn on_thread<T, F, Fut>(name: &str, start: F) -> anyhow::Result<(T, std::sync::mpsc::Sender<()>)>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<(T, Shutdown)>>,
{
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = crate::util::runtime(Flavor::Current);
            rt.block_on(async move {
                let shutdown = match start().await {
                    Ok((t, shutdown)) => {
                        let _ = out_tx.send(Ok(t));
                        shutdown
                    }
                    Err(e) => {
                        let _ = out_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                shutdown.await;
            });
        })?;
    let out = out_rx
        .recv_timeout(Duration::from_secs(5))
        .with_context(|| format!("a {name} thread did not start"))?
        .map_err(anyhow::Error::msg)?;
    Ok((out, stop_tx))
}

/// A replica: the echo replyer on its own thread; stops when the sender is dropped.
fn replica_thread() -> anyhow::Result<(String, std::sync::mpsc::Sender<()>)> {
    on_thread("replica", || async {
        let rep = fw_replyer().await?;
        let ep = rep.endpoint().to_owned();
        let shutdown: Shutdown = Box::pin(async move {
            rep.shutdown().await;
        });
        Ok((ep, shutdown))
    })
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
        push_rows(
            &mut p,
            runs,
            |k| case(k, callers, n, warm),
            |k| format!("{k} replica(s), {callers} caller(s)"),
        );
    }
    p.note(format!(
        "each replica on its own thread and current-thread runtime; callers on a multi-thread runtime; {} core(s)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    p
}

// ---------------------------------------------------------------------------------------------
// Behind the broker.

/// The broker on its own thread, with a front-end for the echo service: (its endpoint, the
/// front-end's endpoint).
fn broker_thread() -> anyhow::Result<((String, String), std::sync::mpsc::Sender<()>)> {
    on_thread("broker", || async {
        let broker = mdp::Broker::bind_with_frontends(
            &Address::from("127.0.0.1:0"),
            &[mdp::Frontend {
                address: Address::from("127.0.0.1:0"),
                service: crate::broker::SERVICE.into(),
            }],
            BrokerOptions::default(),
        )
        .await?;
        let eps = (
            broker.endpoint().to_owned(),
            broker.frontend_endpoints()[0].0.clone(),
        );
        let shutdown: Shutdown = Box::pin(broker.shutdown());
        Ok((eps, shutdown))
    })
}

/// A replica behind the broker: the echo handler as `workers` MDP workers on its own thread;
/// its counters (to see that it serves).
fn brokered_replica_thread(
    broker: String,
    workers: usize,
) -> anyhow::Result<(Arc<Stats>, std::sync::mpsc::Sender<()>)> {
    on_thread("brokered replica", move || async move {
        let rep = crate::broker::brokered_replyer(&broker, workers).await?;
        let stats = rep.stats().clone();
        let shutdown: Shutdown = Box::pin(async move {
            rep.shutdown().await;
        });
        Ok((stats, shutdown))
    })
}

/// Calls at the front-end until every replica has served one (each has registered), bounded.
async fn all_serving(front: String, replicas: Vec<Arc<Stats>>) -> anyhow::Result<()> {
    let req = Requester::connect(
        &Address::from(front.as_str()),
        RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )?;
    let frame = crate::reqrep::request_frame();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replicas.iter().any(|s| s.get(Counter::Received) == 0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every replica registered with the broker within 10 s"
        );
        req.request_raw(frame.to_vec()).await?;
    }
    Ok(())
}

/// How the callers reach the service behind the broker.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// A plain `Requester` at the broker's front-end for the service.
    FrontEnd,
    /// `Requester::through_broker`: MDP to the broker itself.
    Mdp,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::FrontEnd => "Requester at the front-end",
            Path::Mdp => "Requester through_broker (MDP)",
        }
    }
}

fn brokered_case(
    path: Path,
    replicas: usize,
    callers: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let ((router, front), broker) = broker_thread()?;
    // As many workers per replica as callers: one replica can take every caller's request.
    let threads: Vec<(Arc<Stats>, std::sync::mpsc::Sender<()>)> = (0..replicas)
        .map(|_| brokered_replica_thread(router.clone(), callers))
        .collect::<anyhow::Result<_>>()?;
    let stats = threads.iter().map(|(s, _)| s.clone()).collect();
    let limit = Duration::from_secs(120);
    block_on(Flavor::Multi, limit, all_serving(front.clone(), stats))?;
    let out = block_on(Flavor::Multi, limit, async move {
        let options = RequesterOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let req = match path {
            Path::FrontEnd => Requester::connect(&Address::from(front.as_str()), options)?,
            Path::Mdp => Requester::through_broker(
                &Address::from(router.as_str()),
                crate::broker::SERVICE,
                options,
            )?,
        };
        fw_calls_on(req, callers, total, warmup, true).await
    });
    drop(threads);
    drop(broker);
    out
}

/// The `broker_replicas` pattern: 1, 2 and 3 replicas behind the broker in turn, by each path,
/// median of 3 runs each (1 in short mode); every row against the 1-replica median of the same
/// path and run.
pub fn run_brokered(config: &Config) -> PatternReport {
    let c = config.counts();
    let mut p = PatternReport::new(
        "broker_replicas",
        "replicas behind the Majordomo broker: one Requester (at a front-end, or through_broker), 1, 2 and 3 replicas as MDP workers",
    )
    .columns("n replicas", "1 replica", "ratio");
    let runs = if config.short { 1 } else { 3 };
    for path in [Path::FrontEnd, Path::Mdp] {
        for callers in [1, CALLERS] {
            // A quarter of reqrep's counts with 16 callers, as the broker pattern.
            let (n, warm) = if callers == 1 {
                (c.rr_one, c.rr_warmup)
            } else {
                ((c.rr_many / 4).max(CALLERS * 10), c.rr_warmup)
            };
            push_rows(
                &mut p,
                runs,
                |k| brokered_case(path, k, callers, n, warm),
                |k| format!("{k} replica(s), {}, {callers} caller(s)", path.label()),
            );
        }
    }
    p.note(format!(
        "Requester -> broker front-end -> broker -> worker, or Requester (MDP client) -> broker -> worker; the broker and each replica on a thread and current-thread runtime of its own, as many MDP workers per replica as callers; callers on a multi-thread runtime; {} core(s)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    p
}

/// Runs `case` with 1, 2 and 3 replicas, `runs` times each in turn, and pushes each count's
/// median rate and p50 against 1 replica's, rows named by `what`.
fn push_rows(
    p: &mut PatternReport,
    runs: usize,
    mut case: impl FnMut(usize) -> anyhow::Result<RoundTrips>,
    what: impl Fn(usize) -> String,
) {
    let mut by_count: [Vec<anyhow::Result<RoundTrips>>; 3] = Default::default();
    for _ in 0..runs {
        for (i, results) in by_count.iter_mut().enumerate() {
            results.push(case(i + 1));
        }
    }
    let medians: Vec<anyhow::Result<RoundTrips>> = by_count
        .into_iter()
        .map(|r| median_run(r, |x| x.per_s))
        .collect();
    let base = medians[0].as_ref().ok();
    for (i, m) in medians.iter().enumerate() {
        let (mut row, p50) = rate_and_p50(&what(i + 1), m.as_ref().ok(), base);
        if let Err(e) = m {
            row = row.note(format!("failed: {e:#}"));
        }
        p.push(row);
        p.push(p50);
    }
}
