//! Request/reply: round trips per second and p50/p99, one caller and 16 concurrent callers.
//!
//! Framework: an `sf_connections` [`Requester`] (DEALER) calling a [`Replyer`] (ROUTER) with
//! a typed echo handler `{to_echo} -> {echoed}`. Raw: a `zeromq` DEALER calling a ROUTER that
//! sends every message straight back, with frames of the framework's request size; 16
//! callers are one DEALER keeping 16 requests in flight (the hand-written equivalent of a
//! shared requester). A raw REQ -> REP row gives the reference's own baseline.
//!
//! Each case runs on a multi-thread runtime and on a current-thread runtime (the reference
//! found thread hand-offs dominate latency on 2 cores), and once more as embedded services
//! run: the server on its own thread and runtime (`Service::run_in_background`), the caller on
//! another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sf_connections::wire::{self, Reply, Request, WorkflowId};
use sf_connections::{
    typed, Address, Replyer, ReplyerOptions, RequestMeta, Requester, RequesterOptions, WireError,
};
use zeromq::{
    DealerSocket, RepSocket, ReqSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage,
};

use crate::report::{PatternReport, Row, Target};
use crate::util::{block_on, rate, Flavor, Latency};
use crate::Config;

/// Characters of `to_echo` (the request frame is about 130 bytes).
pub const ECHO_CHARS: usize = 100;
/// Concurrent callers of the concurrent case.
pub const CALLERS: usize = 16;
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echo {
    to_echo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echoed {
    echoed: String,
}

/// One measured case.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundTrips {
    /// Round trips per second.
    pub per_s: f64,
    /// Latency of one round trip.
    pub latency: Latency,
}

fn echo_args() -> Echo {
    Echo {
        to_echo: crate::util::payload(ECHO_CHARS),
    }
}

/// The framework's request frame for the echo args: the raw cases send these very bytes
/// (so a raw caller can call the framework's replyer too).
pub fn request_frame() -> Bytes {
    Bytes::from(
        wire::encode(&Request {
            args: echo_args(),
            workflow_id: WorkflowId::None,
            traceparent: None,
        })
        .expect("the echo request encodes"),
    )
}

// ---------------------------------------------------------------------------------------
// Framework
// ---------------------------------------------------------------------------------------

pub async fn fw_replyer() -> anyhow::Result<Replyer> {
    let handler = typed(|a: Echo, _m: RequestMeta| async move {
        Ok::<_, WireError>(Echoed { echoed: a.to_echo })
    });
    Ok(Replyer::bind(
        &Address::from("127.0.0.1:0"),
        handler,
        ReplyerOptions::default(),
    )
    .await?)
}

fn fw_requester(endpoint: &str) -> anyhow::Result<Requester> {
    Ok(Requester::connect(
        &Address::from(endpoint),
        RequesterOptions {
            timeout: REPLY_TIMEOUT,
            ..Default::default()
        },
    )?)
}

async fn fw_call(req: &Requester, args: &Echo) -> anyhow::Result<()> {
    let r: Echoed = req.request(args, WorkflowId::None).await?;
    anyhow::ensure!(r.echoed.len() == args.to_echo.len(), "wrong echo");
    Ok(())
}

/// Framework round trips from `callers` tasks sharing one requester to `endpoint`.
pub async fn fw_calls(
    endpoint: String,
    callers: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    fw_calls_as(endpoint, callers, total, warmup, true).await
}

/// `typed`: `request` (encode args, decode the reply); otherwise `request_raw` with the
/// encoded request (against a raw echo, whose "reply" is the request itself).
pub async fn fw_calls_as(
    endpoint: String,
    callers: usize,
    total: usize,
    warmup: usize,
    typed: bool,
) -> anyhow::Result<RoundTrips> {
    fw_calls_on(fw_requester(&endpoint)?, callers, total, warmup, typed).await
}

/// As [`fw_calls_as`], on a requester made by the caller (one calling through a broker).
pub async fn fw_calls_on(
    req: Requester,
    callers: usize,
    total: usize,
    warmup: usize,
    typed: bool,
) -> anyhow::Result<RoundTrips> {
    let args = Arc::new(echo_args());
    let frame = request_frame();
    let call = move |req: Requester, args: Arc<Echo>| {
        let frame = frame.clone();
        async move {
            if typed {
                fw_call(&req, &args).await
            } else {
                req.request_raw(frame.to_vec()).await?;
                Ok(())
            }
        }
    };
    for _ in 0..warmup {
        call(req.clone(), args.clone())
            .await
            .context("warm-up request")?;
    }
    concurrent(callers, total, move || call(req.clone(), args.clone())).await
}

/// `total` calls from `callers` tasks, each making its share one after the other.
async fn concurrent<F, Fut>(callers: usize, total: usize, call: F) -> anyhow::Result<RoundTrips>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let per = total / callers;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                call().await?;
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

async fn fw_case(callers: usize, total: usize, warmup: usize) -> anyhow::Result<RoundTrips> {
    let rep = fw_replyer().await?;
    fw_calls(rep.endpoint().to_owned(), callers, total, warmup).await
}

// ---------------------------------------------------------------------------------------
// Raw zeromq
// ---------------------------------------------------------------------------------------

/// A raw ROUTER on 127.0.0.1 that sends every message back as it came; returns its endpoint.
pub async fn raw_router_echo() -> anyhow::Result<String> {
    let mut router = RouterSocket::new();
    let ep = router.bind("tcp://127.0.0.1:0").await?.to_string();
    tokio::spawn(async move {
        while let Ok(m) = router.recv().await {
            if router.send(m).await.is_err() {
                break;
            }
        }
    });
    Ok(ep)
}

/// The reply's request id (its first frame).
fn reply_id(reply: &ZmqMessage) -> anyhow::Result<usize> {
    reply
        .get(0)
        .filter(|f| f.len() == 8)
        .map(|f| u64::from_be_bytes(f[..].try_into().expect("8 bytes")) as usize)
        .context("reply without its id")
}

/// `[id, "", body]`.
fn id_frame(id: u64, body: Bytes) -> ZmqMessage {
    ZmqMessage::try_from(vec![
        Bytes::copy_from_slice(&id.to_be_bytes()),
        Bytes::new(),
        body,
    ])
    .expect("three frames")
}

/// Raw round trips over one DEALER to `endpoint` keeping `window` requests in flight
/// (1: lock-step): `request(id)` builds each request, `check(reply)` checks a reply and
/// returns its id.
async fn pipelined(
    endpoint: String,
    window: usize,
    total: usize,
    warmup: usize,
    request: impl Fn(u64) -> anyhow::Result<ZmqMessage>,
    check: impl Fn(&ZmqMessage) -> anyhow::Result<usize>,
) -> anyhow::Result<RoundTrips> {
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await?;
    for i in 0..warmup as u64 {
        dealer.send(request(i)?).await?;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, dealer.recv())
            .await
            .context("warm-up reply timed out")??;
        check(&reply)?;
    }
    let mut starts = vec![Instant::now(); total];
    let mut lat = Vec::with_capacity(total);
    let start = Instant::now();
    let mut sent = 0;
    while sent < window.min(total) {
        starts[sent] = Instant::now();
        dealer.send(request(sent as u64)?).await?;
        sent += 1;
    }
    while lat.len() < total {
        let reply = tokio::time::timeout(REPLY_TIMEOUT, dealer.recv())
            .await
            .context("raw reply timed out")??;
        let id = check(&reply)?;
        lat.push(starts.get(id).context("reply to an unknown id")?.elapsed());
        if sent < total {
            starts[sent] = Instant::now();
            dealer.send(request(sent as u64)?).await?;
            sent += 1;
        }
    }
    let elapsed = start.elapsed();
    Ok(RoundTrips {
        per_s: rate(total as u64, elapsed),
        latency: Latency::of(&mut lat),
    })
}

/// Raw round trips over one DEALER to `endpoint` keeping `window` requests in flight
/// (1: lock-step), frames `[id, "", request]`; replies are not looked into.
pub async fn raw_calls(
    endpoint: String,
    window: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let body = request_frame();
    let request = |id: u64| Ok(id_frame(id, body.clone()));
    pipelined(endpoint, window, total, warmup, request, reply_id).await
}

/// A raw ROUTER on 127.0.0.1 doing by hand what a validating service must: decode each
/// request's envelope and args with `rmp-serde`, encode the reply; returns its endpoint.
pub async fn raw_router_codec() -> anyhow::Result<String> {
    let mut router = RouterSocket::new();
    let ep = router.bind("tcp://127.0.0.1:0").await?.to_string();
    tokio::spawn(async move {
        while let Ok(m) = router.recv().await {
            let mut frames = m.into_vec();
            let Some(body) = frames.pop() else { continue };
            let Ok(req) = rmp_serde::from_slice::<Request<Echo>>(&body) else {
                continue;
            };
            let reply = Reply {
                return_args: Some(Echoed {
                    echoed: req.args.to_echo,
                }),
                workflow_id: req.workflow_id,
                error: None,
                traceparent: None,
            };
            let Ok(out) = rmp_serde::to_vec_named(&reply) else {
                continue;
            };
            frames.push(Bytes::from(out));
            let Ok(msg) = ZmqMessage::try_from(frames) else {
                continue;
            };
            if router.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(ep)
}

/// Raw round trips like [`raw_calls`], but every request is encoded from the args and every
/// reply decoded to its typed result by hand with `rmp-serde`, as the framework's typed
/// `request` does; `window` requests in flight.
pub async fn raw_calls_codec(
    endpoint: String,
    window: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    let args = echo_args();
    let request = |id: u64| -> anyhow::Result<ZmqMessage> {
        let body = rmp_serde::to_vec_named(&Request {
            args: &args,
            workflow_id: WorkflowId::None,
            traceparent: None,
        })?;
        Ok(id_frame(id, Bytes::from(body)))
    };
    let check = |reply: &ZmqMessage| -> anyhow::Result<usize> {
        let id = reply_id(reply)?;
        let body = reply.get(2).context("reply without a body")?;
        let r: Reply<Echoed> = rmp_serde::from_slice(body)?;
        let echoed = r.return_args.context("reply without return_args")?;
        anyhow::ensure!(echoed.echoed.len() == ECHO_CHARS, "wrong echo");
        Ok(id)
    };
    pipelined(endpoint, window, total, warmup, request, check).await
}

/// Raw round trips from `callers` tasks sharing one DEALER the way a hand-written program
/// would: the send half behind a mutex, one reader task matching replies to waiting callers
/// by id. Same frames as [`raw_calls`], no codec.
pub async fn raw_calls_tasks(
    endpoint: String,
    callers: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::{oneshot, Mutex};
    type Waiting = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<()>>>>;
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await?;
    let (tx, mut rx) = dealer.split();
    let tx = Arc::new(Mutex::new(tx));
    let waiting: Waiting = Arc::default();
    let reader = {
        let waiting = waiting.clone();
        tokio::spawn(async move {
            while let Ok(reply) = rx.recv().await {
                let Ok(id) = reply_id(&reply) else { continue };
                if let Some(w) = waiting.lock().expect("lock").remove(&(id as u64)) {
                    let _ = w.send(());
                }
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let body = request_frame();
    let call =
        move |tx: Arc<Mutex<zeromq::DealerSendHalf>>, waiting: Waiting, next: Arc<AtomicU64>| {
            let body = body.clone();
            async move {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let (done, wait) = oneshot::channel();
                waiting.lock().expect("lock").insert(id, done);
                tx.lock().await.send(id_frame(id, body)).await?;
                tokio::time::timeout(REPLY_TIMEOUT, wait)
                    .await
                    .context("raw reply timed out")?
                    .context("reader gone")?;
                anyhow::Ok(())
            }
        };
    for _ in 0..warmup {
        call(tx.clone(), waiting.clone(), next.clone()).await?;
    }
    let result = concurrent(callers, total, move || {
        call(tx.clone(), waiting.clone(), next.clone())
    })
    .await;
    reader.abort();
    result
}

async fn raw_case(window: usize, total: usize, warmup: usize) -> anyhow::Result<RoundTrips> {
    let ep = raw_router_echo().await?;
    raw_calls(ep, window, total, warmup).await
}

/// Raw REQ -> REP, lock-step (the reference's baseline).
async fn raw_req_rep(total: usize, warmup: usize) -> anyhow::Result<RoundTrips> {
    let mut rep = RepSocket::new();
    let ep = rep.bind("tcp://127.0.0.1:0").await?.to_string();
    tokio::spawn(async move {
        while let Ok(m) = rep.recv().await {
            if rep.send(m).await.is_err() {
                break;
            }
        }
    });
    let mut req = ReqSocket::new();
    req.connect(&ep).await?;
    let body = request_frame();
    for _ in 0..warmup {
        req.send(ZmqMessage::from(body.clone())).await?;
        tokio::time::timeout(REPLY_TIMEOUT, req.recv())
            .await
            .context("warm-up reply timed out")??;
    }
    let mut lat = Vec::with_capacity(total);
    let start = Instant::now();
    for _ in 0..total {
        let t = Instant::now();
        req.send(ZmqMessage::from(body.clone())).await?;
        tokio::time::timeout(REPLY_TIMEOUT, req.recv())
            .await
            .context("raw reply timed out")??;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    Ok(RoundTrips {
        per_s: rate(total as u64, elapsed),
        latency: Latency::of(&mut lat),
    })
}

// ---------------------------------------------------------------------------------------
// Servers on their own thread (as embedded services run)
// ---------------------------------------------------------------------------------------

/// A raw ROUTER echo on its own thread and current-thread runtime; stops when the returned
/// sender is dropped.
pub fn raw_echo_thread() -> anyhow::Result<(String, std::sync::mpsc::Sender<()>)> {
    let (ep_tx, ep_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("raw-echo".into())
        .spawn(move || {
            let rt = crate::util::runtime(Flavor::Current);
            rt.block_on(async move {
                let ep = match raw_router_echo().await {
                    Ok(ep) => ep,
                    Err(e) => {
                        let _ = ep_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ep_tx.send(Ok(ep));
                // Poll the stop channel; the echo task runs meanwhile.
                while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
    let ep = ep_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the raw echo thread did not start")?
        .map_err(anyhow::Error::msg)?;
    Ok((ep, stop_tx))
}

/// The example `echo_replyer` service embedded on its own thread.
pub fn fw_service_thread() -> anyhow::Result<(String, service_framework::ServiceHandle)> {
    let addresses = service_framework::AddressesFile::parse(
        r#"{"connections": {"in": {"reply": {"replyer": "127.0.0.1:0"}}, "out": {}}, "states": {"in": {}, "out": {}}}"#,
        "bench addresses",
    )?;
    let handle = service_framework::Service::new(sf_examples::echo::replyer())
        .addresses(addresses)
        .drain_timeout(Duration::from_millis(200))
        .run_in_background();
    let ready = handle.wait_ready(Duration::from_secs(10))?;
    let ep = ready
        .endpoint("reply")
        .context("the service reported no endpoint for `reply`")?
        .to_owned();
    Ok((ep, handle))
}

// ---------------------------------------------------------------------------------------
// The pattern
// ---------------------------------------------------------------------------------------

fn limit(config: &Config) -> Duration {
    if config.short {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(120)
    }
}

/// A case's round trips/s and p50 rows, `fw` against `base` (either may have failed); the
/// caller adds its notes to the first.
pub(crate) fn rate_and_p50(
    case: &str,
    fw: Option<&RoundTrips>,
    base: Option<&RoundTrips>,
) -> (Row, Row) {
    (
        Row::new(case, "round trips/s", "rt/s")
            .fw(fw.map(|x| x.per_s))
            .raw(base.map(|x| x.per_s)),
        Row::new(case, "p50 latency", "us")
            .fw(fw.map(|x| x.latency.p50_us))
            .raw(base.map(|x| x.latency.p50_us)),
    )
}

fn push_rows(
    p: &mut PatternReport,
    case: &str,
    fw: &anyhow::Result<RoundTrips>,
    raw: &anyhow::Result<RoundTrips>,
    raw_name: &str,
) {
    let f = fw.as_ref().ok();
    let r = raw.as_ref().ok();
    let mut errors = Vec::new();
    if let Err(e) = fw {
        errors.push(format!("framework failed: {e:#}"));
    }
    if let Err(e) = raw {
        errors.push(format!("raw failed: {e:#}"));
    }
    let mut rt = Row::new(case, "round trips/s", "rt/s")
        .fw(f.map(|x| x.per_s))
        .raw(r.map(|x| x.per_s))
        .target(Target::RatioAtLeast(0.8));
    if !errors.is_empty() {
        rt = rt.note(errors.join("; "));
    } else {
        rt = rt.note(format!("raw = {raw_name}"));
    }
    p.push(rt);
    p.push(
        Row::new(case, "p50 latency", "us")
            .fw(f.map(|x| x.latency.p50_us))
            .raw(r.map(|x| x.latency.p50_us))
            .target(Target::RatioAtMost(1.25)),
    );
    p.push(
        Row::new(case, "p99 latency", "us")
            .fw(f.map(|x| x.latency.p99_us))
            .raw(r.map(|x| x.latency.p99_us)),
    );
}

/// Runs the request/reply pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let lim = limit(config);
    let body_len = request_frame().len();
    let mut p = PatternReport::new(
        "reqrep",
        "request/reply, framework Requester->Replyer vs raw DEALER->ROUTER",
    );
    // The rows with targets: each side runs several times, alternating, and the median run
    // (by throughput) is reported; single runs on this kind of VM move by up to 1.3x.
    let runs = if config.short { 1 } else { 3 };
    let median_pair = |raw: &dyn Fn() -> anyhow::Result<RoundTrips>,
                       fw: &dyn Fn() -> anyhow::Result<RoundTrips>| {
        let (mut raws, mut fws) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            raws.push(raw());
            fws.push(fw());
        }
        (
            crate::util::median_run(raws, |r| r.per_s),
            crate::util::median_run(fws, |r| r.per_s),
        )
    };
    for flavor in [Flavor::Multi, Flavor::Current] {
        let (raw, fw) = median_pair(
            &|| block_on(flavor, lim, raw_case(1, c.rr_one, c.rr_warmup)),
            &|| block_on(flavor, lim, fw_case(1, c.rr_one, c.rr_warmup)),
        );
        push_rows(
            &mut p,
            &format!("1 caller, {}", flavor.label()),
            &fw,
            &raw,
            "DEALER->ROUTER lock-step",
        );
        let (raw16, fw) = median_pair(
            &|| block_on(flavor, lim, raw_case(CALLERS, c.rr_many, c.rr_warmup)),
            &|| block_on(flavor, lim, fw_case(CALLERS, c.rr_many, c.rr_warmup)),
        );
        push_rows(
            &mut p,
            &format!("{CALLERS} callers, {}", flavor.label()),
            &fw,
            &raw16,
            "one DEALER with 16 requests in flight",
        );
        let (c_many, c_warm) = (c.rr_many, c.rr_warmup);
        // The same 16 in flight with raw sockets doing the framework's msgpack work by hand:
        // what is left between this and the framework is the framework's own plumbing.
        let raw_codec = block_on(flavor, lim, async move {
            let ep = raw_router_codec().await?;
            raw_calls_codec(ep, CALLERS, c_many, c_warm).await
        });
        {
            let case = format!("{CALLERS} callers, {}, raw with codec", flavor.label());
            let (mut row, p50) = rate_and_p50(&case, fw.as_ref().ok(), raw_codec.as_ref().ok());
            row = row.note(
                "diagnostic: raw DEALER -> ROUTER encoding and decoding the same envelopes by \
                 hand with rmp-serde",
            );
            if let Err(e) = &raw_codec {
                row = row.note(format!("diagnostic; raw with codec failed: {e:#}"));
            }
            p.push(row);
            p.push(p50);
        }
        // Which side costs what with 16 in flight: each framework end against a raw one.
        // The raw side written as the framework is used: 16 tasks sharing one socket.
        let raw_tasks = block_on(flavor, lim, async move {
            let ep = raw_router_echo().await?;
            raw_calls_tasks(ep, CALLERS, c_many, c_warm).await
        });
        {
            let case = format!("16: raw, 16 tasks share a DEALER, {}", flavor.label());
            let (mut row, p50) = rate_and_p50(&case, raw_tasks.as_ref().ok(), raw16.as_ref().ok());
            row = row.note(
                "diagnostic, no framework: 16 caller tasks, send half behind a mutex, a reader \
                 task and a oneshot per request; raw = one task, 16 in flight",
            );
            if let Err(e) = &raw_tasks {
                row = row.note(format!("diagnostic; failed: {e:#}"));
            }
            p.push(row);
            p.push(p50);
        }
        let mixed_fw_caller = block_on(flavor, lim, async move {
            let ep = raw_router_echo().await?;
            fw_calls_as(ep, CALLERS, c_many, c_warm, false).await
        });
        let mixed_fw_server = block_on(flavor, lim, async move {
            let rep = fw_replyer().await?;
            raw_calls(rep.endpoint().to_owned(), CALLERS, c_many, c_warm).await
        });
        for (case, r) in [
            (
                format!("16: Requester -> raw ROUTER, {}", flavor.label()),
                &mixed_fw_caller,
            ),
            (
                format!("16: raw DEALER -> Replyer, {}", flavor.label()),
                &mixed_fw_server,
            ),
        ] {
            let (mut row, p50) = rate_and_p50(&case, r.as_ref().ok(), raw16.as_ref().ok());
            row = row.note("diagnostic: one framework end; raw = raw DEALER -> raw ROUTER");
            if let Err(e) = r {
                row = row.note(format!("failed: {e:#}"));
            }
            p.push(row);
            p.push(p50);
        }
        let rr = block_on(flavor, lim, raw_req_rep(c.rr_one, c.rr_warmup));
        let case = format!("raw REQ->REP, {}", flavor.label());
        match rr {
            Ok(rr) => {
                p.push(
                    Row::new(&case, "round trips/s", "rt/s")
                        .raw(rr.per_s)
                        .note("reference baseline only (REQ/REP is lock-step)"),
                );
                p.push(Row::new(&case, "p50 latency", "us").raw(rr.latency.p50_us));
            }
            Err(e) => p.push(Row::new(&case, "round trips/s", "rt/s").note(format!("{e:#}"))),
        }
    }
    // As embedded services run: server on its own thread, caller on a current-thread runtime.
    for callers in [1, CALLERS] {
        let case = format!("{callers} caller(s) -> service on own thread");
        let (n, warm) = (total(&c, callers), c.rr_warmup);
        let (raw, fw) = median_pair(
            &|| {
                raw_echo_thread().and_then(|(ep, _stop)| {
                    block_on(Flavor::Current, lim, raw_calls(ep, callers, n, warm))
                })
            },
            &|| {
                fw_service_thread().and_then(|(ep, handle)| {
                    let r = block_on(Flavor::Current, lim, async move {
                        fw_calls(ep, callers, n, warm).await
                    });
                    let _ = handle.stop();
                    r
                })
            },
        );
        push_rows(
            &mut p,
            &case,
            &fw,
            &raw,
            "ROUTER echo on its own thread; fw = examples echo_replyer via Service::run_in_background",
        );
    }
    p.note(format!(
        "request frame {body_len} bytes (to_echo of {ECHO_CHARS} chars); raw callers send the same bytes; rows with a target: median run of {runs} per side"
    ));
    p
}

fn total(c: &crate::Counts, callers: usize) -> usize {
    if callers == 1 {
        c.rr_one
    } else {
        c.rr_many
    }
}
