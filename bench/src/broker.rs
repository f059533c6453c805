//! The Majordomo broker: what a hop through it costs, against a direct request/reply in the
//! same run.
//!
//! Direct: an `sf_connections` [`Requester`](sf_connections::Requester) calling a bound
//! [`Replyer`] (the `reqrep` pattern's framework case). Brokered: the same typed echo
//! handler served through [`mdp::worker::serve`] behind an in-process
//! [`mdp::Broker`], called by MDP clients (one DEALER each, lock-step as MDP clients are,
//! sending the framework's request envelope). With 16 callers the broker side has 16 clients
//! and 16 workers; the direct side one requester shared by 16 tasks. Each on a multi-thread
//! and on a current-thread runtime (everything in the process on one thread, as a broker
//! process runs its own loop). Rows: fw = through the broker, raw = direct; the p50 the
//! broker adds; a diagnostic with hand-written MDP workers instead of the framework's; and
//! the same `Requester` calling through a broker front-end (no MDP on the caller's side:
//! one DEALER, its requests in flight together, spread over the workers).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sf_connections::mdp::{self, proto, BrokerOptions, WorkerOptions};
use sf_connections::wire::{self, Reply};
use sf_connections::{typed, Address, Replyer, ReplyerOptions, RequestMeta, WireError};
use sf_zmtp::DealerSocket;

use crate::report::{PatternReport, Row};
use crate::reqrep::{fw_calls, fw_replyer, request_frame, RoundTrips, CALLERS};
use crate::util::{block_on, rate, Flavor, Latency};
use crate::Config;

pub(crate) const SERVICE: &str = "echo";
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echo {
    to_echo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echoed {
    echoed: String,
}

pub(crate) async fn brokered_replyer(broker: &str, workers: usize) -> anyhow::Result<Replyer> {
    let handler = typed(|a: Echo, _m: RequestMeta| async move {
        Ok::<_, WireError>(Echoed { echoed: a.to_echo })
    });
    Ok(mdp::worker::serve(
        &Address::from(broker),
        SERVICE,
        handler,
        ReplyerOptions::default(),
        WorkerOptions {
            workers,
            ..Default::default()
        },
    )
    .await?)
}

/// One MDP request and its FINAL; the body is the framework's request envelope.
async fn mdp_call(
    sock: &mut DealerSocket,
    service: &str,
    body: Bytes,
) -> anyhow::Result<Vec<Bytes>> {
    tokio::time::timeout(
        REPLY_TIMEOUT,
        sock.send(proto::client_request(service, [body])),
    )
    .await
    .context("send timed out")??;
    loop {
        let m = tokio::time::timeout(REPLY_TIMEOUT, sock.recv())
            .await
            .context("no reply in time")??;
        let r = proto::parse_client_reply(m.frames())?;
        if r.last {
            return Ok(r.body);
        }
    }
}

async fn client(ep: &str) -> anyhow::Result<DealerSocket> {
    let sock = DealerSocket::new();
    sock.connect(ep)?;
    Ok(sock)
}

/// Hand-written MDP workers with no framework: READY, then every REQUEST's body straight
/// back as the FINAL (a diagnostic: what the broker costs without the framework's worker).
fn raw_workers(ep: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let ep = ep.to_owned();
            tokio::spawn(async move {
                let mut sock = DealerSocket::new();
                if sock.connect(&ep).is_err()
                    || sock.send(proto::worker_ready(SERVICE)).await.is_err()
                {
                    return;
                }
                while let Ok(m) = sock.recv().await {
                    if let Ok(proto::ToWorker::Request { client, body }) =
                        proto::parse_to_worker(m.frames())
                    {
                        if sock
                            .send(proto::worker_reply(true, client, body))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            })
        })
        .collect()
}

/// `total` brokered round trips from `callers` clients, after every worker registered; with
/// `raw`, the workers are [`raw_workers`] (the reply is the request, not checked).
async fn brokered(
    callers: usize,
    total: usize,
    warmup: usize,
    raw: bool,
) -> anyhow::Result<RoundTrips> {
    let broker = mdp::Broker::bind(&Address::from("127.0.0.1:0"), BrokerOptions::default()).await?;
    let ep = broker.endpoint().to_owned();
    let (replyer, raw_tasks) = if raw {
        (None, raw_workers(&ep, callers))
    } else {
        (Some(brokered_replyer(&ep, callers).await?), Vec::new())
    };
    // Every worker registered: ask `mmi.service` until it answers, then warm each client up.
    registered(&ep).await?;
    let frame = request_frame();
    let per = total / callers;
    let warm = (warmup / callers).max(1);
    let start_gate = std::sync::Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = Vec::with_capacity(callers);
    let mut started = None;
    for _ in 0..callers {
        let mut sock = client(&ep).await?;
        let frame = frame.clone();
        let gate = start_gate.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..warm {
                mdp_call(&mut sock, SERVICE, frame.clone()).await?;
            }
            gate.wait().await;
            let t0 = Instant::now();
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let body = mdp_call(&mut sock, SERVICE, frame.clone()).await?;
                if !raw {
                    let reply: Reply<Echoed> = wire::decode(&body[0])?;
                    anyhow::ensure!(
                        reply.return_args.is_some_and(|r| !r.echoed.is_empty()),
                        "wrong echo"
                    );
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok((t0, lat))
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        let (t0, l) = t.await??;
        started = Some(started.map_or(t0, |s: Instant| s.min(t0)));
        lat.extend(l);
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    if let Some(r) = replyer {
        r.shutdown().await;
    }
    for t in raw_tasks {
        t.abort();
    }
    broker.shutdown().await;
    Ok(RoundTrips {
        per_s: rate(lat.len() as u64, elapsed),
        latency: Latency::of(&mut lat),
    })
}

/// A client of the broker at `ep`, once the workers of `SERVICE` have registered (it asks
/// `mmi.service` until the answer is 200).
async fn registered(ep: &str) -> anyhow::Result<DealerSocket> {
    let mut probe = client(ep).await?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while mdp_call(
        &mut probe,
        "mmi.service",
        Bytes::from_static(SERVICE.as_bytes()),
    )
    .await?[0]
        .as_ref()
        != b"200"
    {
        anyhow::ensure!(Instant::now() < deadline, "the workers never registered");
    }
    Ok(probe)
}

/// `total` round trips from a framework `Requester` (shared by `callers` tasks) at a broker
/// front-end, `callers` framework workers behind it.
async fn through_frontend(
    callers: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let broker = mdp::Broker::bind_with_frontends(
        &Address::from("127.0.0.1:0"),
        &[mdp::Frontend {
            address: Address::from("127.0.0.1:0"),
            service: SERVICE.into(),
        }],
        BrokerOptions::default(),
    )
    .await?;
    let ep = broker.endpoint().to_owned();
    let front = broker.frontend_endpoints()[0].0.clone();
    let replyer = brokered_replyer(&ep, callers).await?;
    registered(&ep).await?;
    let r = fw_calls(front, callers, total, warmup).await;
    replyer.shutdown().await;
    broker.shutdown().await;
    r
}

async fn direct(callers: usize, total: usize, warmup: usize) -> anyhow::Result<RoundTrips> {
    let rep = fw_replyer().await?;
    fw_calls(rep.endpoint().to_owned(), callers, total, warmup).await
}

/// Runs the broker pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let lim = if config.short {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(120)
    };
    let mut p = PatternReport::new(
        "broker",
        "request/reply through the Majordomo broker (MDP 0.2) vs direct Requester->Replyer, same run",
    );
    let runs = if config.short { 1 } else { 3 };
    for (flavor, callers) in [
        (Flavor::Multi, 1),
        (Flavor::Multi, CALLERS),
        (Flavor::Current, 1),
        (Flavor::Current, CALLERS),
    ] {
        // A quarter of reqrep's count with 16 callers: the brokered side runs at a few
        // thousand round trips per second.
        let (n, warm) = if callers == 1 {
            (c.rr_one, c.rr_warmup)
        } else {
            ((c.rr_many / 4).max(CALLERS * 10), c.rr_warmup)
        };
        // Alternating runs, the median of each side (by throughput).
        let (mut ds, mut bs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ds.push(block_on(flavor, lim, direct(callers, n, warm)));
            bs.push(block_on(flavor, lim, brokered(callers, n, warm, false)));
        }
        let d = crate::util::median_run(ds, |r| r.per_s);
        let b = crate::util::median_run(bs, |r| r.per_s);
        let case = if callers == 1 {
            format!("1 caller, {}", flavor.label())
        } else {
            format!("{callers} callers, {}", flavor.label())
        };
        let (bo, dok) = (b.as_ref().ok(), d.as_ref().ok());
        let mut rt = Row::new(&case, "round trips/s", "rt/s")
            .fw(bo.map(|x| x.per_s))
            .raw(dok.map(|x| x.per_s))
            .note(if callers == 1 {
                "fw = MDP client -> broker -> worker; raw = direct Requester -> Replyer".to_owned()
            } else {
                format!(
                    "fw = {callers} MDP clients, {callers} workers; raw = one Requester shared by {callers} tasks"
                )
            });
        for (side, r) in [("brokered", &b), ("direct", &d)] {
            if let Err(e) = r {
                rt = rt.note(format!("{side} failed: {e:#}"));
            }
        }
        p.push(rt);
        for (metric, get) in [
            (
                "p50 latency",
                (|l: &Latency| l.p50_us) as fn(&Latency) -> f64,
            ),
            ("p99 latency", |l: &Latency| l.p99_us),
        ] {
            p.push(
                Row::new(&case, metric, "us")
                    .fw(bo.map(|x| get(&x.latency)))
                    .raw(dok.map(|x| get(&x.latency))),
            );
        }
        // Where the time goes: the same broker with hand-written workers (no framework).
        let rw = block_on(flavor, lim, brokered(callers, n, warm, true));
        let mut row = Row::new(format!("{case}, raw MDP workers"), "round trips/s", "rt/s")
            .fw(rw.as_ref().ok().map(|x| x.per_s))
            .raw(dok.map(|x| x.per_s))
            .note("diagnostic: the broker with hand-written echo workers; raw = direct");
        if let Err(e) = &rw {
            row = row.note(format!("failed: {e:#}"));
        }
        p.push(row);
        p.push(
            Row::new(format!("{case}, raw MDP workers"), "p50 latency", "us")
                .fw(rw.as_ref().ok().map(|x| x.latency.p50_us))
                .raw(dok.map(|x| x.latency.p50_us)),
        );
        // A plain Requester at a front-end: what a caller that speaks no MDP gets.
        let fe = block_on(flavor, lim, through_frontend(callers, n, warm));
        let mut row = Row::new(
            format!("{case}, Requester at a front-end"),
            "round trips/s",
            "rt/s",
        )
        .fw(fe.as_ref().ok().map(|x| x.per_s))
        .raw(dok.map(|x| x.per_s))
        .note("fw = Requester -> broker front-end -> broker -> worker; raw = direct");
        if let Err(e) = &fe {
            row = row.note(format!("failed: {e:#}"));
        }
        p.push(row);
        p.push(
            Row::new(
                format!("{case}, Requester at a front-end"),
                "p50 latency",
                "us",
            )
            .fw(fe.as_ref().ok().map(|x| x.latency.p50_us))
            .raw(dok.map(|x| x.latency.p50_us)),
        );
        if let (Some(b), Some(d)) = (bo, dok) {
            p.push(
                Row::new(&case, "p50 added by the broker", "us")
                    .fw(b.latency.p50_us - d.latency.p50_us)
                    .note("brokered p50 minus direct p50"),
            );
        }
    }
    p.note(format!(
        "in-process broker and worker (default 2.5 s heartbeat), request frame {} bytes; median run of {runs} per side",
        request_frame().len()
    ));
    p
}
