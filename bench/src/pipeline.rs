//! Push/pull through a three-stage pipeline: source PUSH -> worker PULL/PUSH -> sink PULL.
//!
//! Framework: [`Pusher`] and [`Puller`]; the worker decodes each message and pushes its args
//! on, as a pipeline service does. Raw: `zeromq` PUSH/PULL sockets in the same topology, the
//! worker forwarding each message as it came. The sink counts until every message arrived
//! (PUSH/PULL is lossless: it waits instead of dropping) or a quiet period passes.
//!
//! The framework's source is measured two ways: one task pushing (each `push` waits until
//! its message is on the socket), and 16 tasks pushing concurrently.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use sf_connections::wire::WorkflowId;
use sf_connections::{Address, PipelineOptions, Puller, Pusher};
use zeromq::{PullSocket, PushSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::report::{PatternReport, Row, Target};
use crate::util::{block_on, count, count_until, median_run, payload, Flavor};
use crate::Config;

/// Payload bytes per message.
pub const MESSAGE_BYTES: usize = 100;
const WARMUP: u64 = 10;
const WARMUP_LIMIT: Duration = Duration::from_secs(5);

/// What reached the sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Through {
    /// Messages sent by the source.
    pub sent: u64,
    /// Messages the sink received.
    pub received: u64,
    /// Messages per second, first send to last receipt.
    pub per_s: f64,
}

fn binder() -> PipelineOptions {
    PipelineOptions {
        is_binder: true,
        ..Default::default()
    }
}

/// Framework pipeline with `pushers` source tasks.
pub async fn framework(n: u64, pushers: u64, quiet: Duration) -> anyhow::Result<Through> {
    let any = Address::from("127.0.0.1:0");
    let mut sink = Puller::start(&any, binder()).await?;
    let mut worker_in = Puller::start(&any, binder()).await?;
    let worker_out =
        Pusher::start(&Address::from(sink.endpoint()), PipelineOptions::default()).await?;
    let source = Pusher::start(
        &Address::from(worker_in.endpoint()),
        PipelineOptions::default(),
    )
    .await?;
    let worker = tokio::spawn(async move {
        while let Some(m) = worker_in.next::<String>().await {
            let Ok(m) = m else { continue };
            if worker_out.push(&m.args, m.workflow_id).await.is_err() {
                break;
            }
        }
    });
    let body = payload(MESSAGE_BYTES);
    for _ in 0..WARMUP {
        source.push(&body, WorkflowId::None).await?;
    }
    let warm = count_until(&mut sink, WARMUP, WARMUP_LIMIT).await;
    anyhow::ensure!(
        warm.received == WARMUP,
        "warm-up: the sink got {} of {WARMUP}",
        warm.received
    );
    let consumer = tokio::spawn(async move { count_until(&mut sink, n, quiet).await });
    let start = Instant::now();
    let per = n / pushers;
    let mut tasks = Vec::new();
    for i in 0..pushers {
        let (source, body) = (source.clone(), body.clone());
        let mine = if i == 0 { n - per * (pushers - 1) } else { per };
        tasks.push(tokio::spawn(async move {
            for _ in 0..mine {
                source.push(&body, WorkflowId::None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await?.context("push failed")?;
    }
    let counted = consumer.await?;
    worker.abort();
    Ok(Through {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, start.elapsed()),
    })
}

/// Raw `zeromq` pipeline. With `codec`, every stage does the msgpack work a validating
/// pipeline must do, written by hand with `rmp-serde`: the source encodes each message, the
/// worker decodes it and encodes it again (the framework's worker does the same through its
/// own codec); otherwise the worker forwards the bytes untouched.
pub async fn raw(n: u64, quiet: Duration, codec: bool) -> anyhow::Result<Through> {
    let mut sink = PullSocket::new();
    let sink_ep = sink.bind("tcp://127.0.0.1:0").await?.to_string();
    let mut worker_in = PullSocket::new();
    let worker_ep = worker_in.bind("tcp://127.0.0.1:0").await?.to_string();
    let mut worker_out = PushSocket::new();
    worker_out.connect(&sink_ep).await?;
    let mut source = PushSocket::new();
    source.connect(&worker_ep).await?;
    let worker = tokio::spawn(async move {
        while let Ok(m) = worker_in.recv().await {
            let m = if codec {
                let Some(frame) = m.get(0) else { continue };
                let Ok(req) = rmp_serde::from_slice::<RawRequest<String>>(frame) else {
                    continue;
                };
                match rmp_serde::to_vec_named(&req) {
                    Ok(v) => ZmqMessage::from(v),
                    Err(_) => continue,
                }
            } else {
                m
            };
            if worker_out.send(m).await.is_err() {
                break;
            }
        }
    });
    let text = payload(MESSAGE_BYTES);
    let body = Bytes::from(text.clone());
    let message = || -> anyhow::Result<ZmqMessage> {
        Ok(if codec {
            ZmqMessage::from(rmp_serde::to_vec_named(&RawRequest {
                args: &text,
                workflow_id: None,
            })?)
        } else {
            ZmqMessage::from(body.clone())
        })
    };
    for _ in 0..WARMUP {
        source.send(message()?).await?;
    }
    let warm = count_until(&mut sink, WARMUP, WARMUP_LIMIT).await;
    anyhow::ensure!(
        warm.received == WARMUP,
        "warm-up: the raw sink got {} of {WARMUP}",
        warm.received
    );
    let consumer = tokio::spawn(async move { count_until(&mut sink, n, quiet).await });
    let start = Instant::now();
    for _ in 0..n {
        source.send(message()?).await?;
    }
    let counted = consumer.await?;
    worker.abort();
    Ok(Through {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, start.elapsed()),
    })
}

/// The request envelope as a hand-written service would declare it.
#[derive(serde::Serialize, serde::Deserialize)]
struct RawRequest<A> {
    args: A,
    workflow_id: Option<String>,
}

/// Diagnostic: one hop, source -> sink, each end framework or raw, to tell the sending
/// side's cost from the receiving side's.
pub async fn one_hop(
    n: u64,
    fw_push: bool,
    fw_pull: bool,
    quiet: Duration,
) -> anyhow::Result<Through> {
    enum Sink {
        Fw(Puller),
        Raw(PullSocket),
    }
    impl crate::util::Inbox for Sink {
        async fn next_message(&mut self) -> bool {
            match self {
                Sink::Fw(p) => p.next_raw().await.is_some(),
                Sink::Raw(s) => s.recv().await.is_ok(),
            }
        }
    }
    let (mut sink, ep) = if fw_pull {
        let p = Puller::start(&Address::from("127.0.0.1:0"), binder()).await?;
        let ep = p.endpoint().to_owned();
        (Sink::Fw(p), ep)
    } else {
        let mut s = PullSocket::new();
        let ep = s.bind("tcp://127.0.0.1:0").await?.to_string();
        (Sink::Raw(s), ep)
    };
    let body = payload(MESSAGE_BYTES);
    // The raw source sends the framework's frame, so both ends see the same bytes.
    let frame = Bytes::from(sf_connections::wire::encode(
        &sf_connections::wire::Request {
            args: &body,
            workflow_id: WorkflowId::None,
            traceparent: None,
        },
    )?);
    let fw_source = if fw_push {
        Some(Pusher::start(&Address::from(ep.as_str()), PipelineOptions::default()).await?)
    } else {
        None
    };
    let mut raw_source = if fw_push {
        None
    } else {
        let mut s = PushSocket::new();
        s.connect(&ep).await?;
        Some(s)
    };
    let mut send = async |_: ()| -> anyhow::Result<()> {
        if let Some(s) = &fw_source {
            s.push(&body, WorkflowId::None).await?;
        } else if let Some(s) = &mut raw_source {
            s.send(ZmqMessage::from(frame.clone())).await?;
        }
        Ok(())
    };
    for _ in 0..WARMUP {
        send(()).await?;
    }
    let warm = count_until(&mut sink, WARMUP, WARMUP_LIMIT).await;
    anyhow::ensure!(
        warm.received == WARMUP,
        "warm-up: the sink got {} of {WARMUP}",
        warm.received
    );
    let consumer = tokio::spawn(async move { count_until(&mut sink, n, quiet).await });
    let start = Instant::now();
    for _ in 0..n {
        send(()).await?;
    }
    let counted = consumer.await?;
    Ok(Through {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, start.elapsed()),
    })
}

/// One hop, acked: `Pusher -> Puller` in acked mode, `tasks` source tasks each pushing in
/// turn (an acked push returns once the puller acknowledged it), the puller acking each
/// message as it takes it. Items per second, first push to last ack.
pub async fn acked_hop(n: u64, tasks: u64) -> anyhow::Result<Through> {
    let acked = PipelineOptions {
        acked: true,
        ..Default::default()
    };
    let mut sink = Puller::start(
        &Address::from("127.0.0.1:0"),
        PipelineOptions {
            is_binder: true,
            ..acked.clone()
        },
    )
    .await?;
    let source = Pusher::start(&Address::from(sink.endpoint()), acked).await?;
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        while let Some(p) = sink.next_pushed().await {
            if let Some(ack) = p.ack {
                ack.send();
            }
            got += 1;
        }
        got
    });
    let body = payload(MESSAGE_BYTES);
    for _ in 0..WARMUP {
        source.push(&body, WorkflowId::None).await?;
    }
    let start = Instant::now();
    let per = n / tasks;
    let mut running = Vec::new();
    for i in 0..tasks {
        let (source, body) = (source.clone(), body.clone());
        let mine = if i == 0 { n - per * (tasks - 1) } else { per };
        running.push(tokio::spawn(async move {
            for _ in 0..mine {
                source.push(&body, WorkflowId::None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in running {
        t.await?.context("acked push failed")?;
    }
    let elapsed = start.elapsed();
    consumer.abort();
    Ok(Through {
        sent: n,
        received: n,
        per_s: n as f64 / elapsed.as_secs_f64(),
    })
}

/// Runs the pipeline pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let lim = Duration::from_secs(if config.short { 20 } else { 180 });
    let mut p = PatternReport::new(
        "pipeline",
        "push/pull through source -> worker -> sink, multi-thread runtime",
    );
    // Single runs move by up to 1.5x on this kind of VM: every three-stage case runs three
    // times, the cases alternating, and the median run of each is reported.
    let runs = if config.short { 1 } else { 3 };
    let (mut raws, mut codecs, mut ones, mut manys) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        raws.push(block_on(
            Flavor::Multi,
            lim,
            raw(c.pipeline, c.quiet, false),
        ));
        codecs.push(block_on(Flavor::Multi, lim, raw(c.pipeline, c.quiet, true)));
        ones.push(block_on(
            Flavor::Multi,
            lim,
            framework(c.pipeline, 1, c.quiet),
        ));
        manys.push(block_on(
            Flavor::Multi,
            lim,
            framework(c.pipeline, 16, c.quiet),
        ));
    }
    let per_s = |t: &Through| t.per_s;
    let raw = median_run(raws, per_s);
    let raw_codec = median_run(codecs, per_s);
    let mut fws = vec![median_run(ones, per_s), median_run(manys, per_s)].into_iter();
    let r = raw.as_ref().ok();
    for pushers in [1u64, 16] {
        let fw = fws.next().expect("two framework cases");
        let f = fw.as_ref().ok();
        let case = if pushers == 1 {
            "1 source task".to_owned()
        } else {
            format!("{pushers} source tasks")
        };
        let mut errs = Vec::new();
        if let Err(e) = &fw {
            errs.push(format!("framework failed: {e:#}"));
        }
        if let Err(e) = &raw {
            errs.push(format!("raw failed: {e:#}"));
        }
        let mut row = Row::new(&case, "through the pipeline", "msg/s")
            .fw(f.map(|t| t.per_s))
            .raw(r.map(|t| t.per_s))
            .target(Target::RatioAtLeast(0.8));
        row = if errs.is_empty() {
            row.note(format!(
                "framework {} of {} arrived; raw {} of {} (raw source is one task)",
                f.map_or("-".into(), |t| count(t.received)),
                count(c.pipeline),
                r.map_or("-".into(), |t| count(t.received)),
                count(c.pipeline)
            ))
        } else {
            row.note(errs.join("; "))
        };
        p.push(row);
        p.push(
            Row::new(&case, "lost", "msgs")
                .fw(f.map(|t| (t.sent - t.received) as f64))
                .raw(r.map(|t| (t.sent - t.received) as f64))
                .target(Target::AtMost(0.0)),
        );
        let mut row = Row::new(
            format!("{case}, raw with codec"),
            "through the pipeline",
            "msg/s",
        )
        .fw(f.map(|t| t.per_s))
        .raw(raw_codec.as_ref().ok().map(|t| t.per_s))
        .note(
            "diagnostic: raw stages doing the same msgpack work by hand (rmp-serde: the \
             source encodes, the worker decodes and re-encodes)",
        );
        if let Err(e) = &raw_codec {
            row = row.note(format!("diagnostic; raw with codec failed: {e:#}"));
        }
        p.push(row);
    }
    // Which end costs what: one hop, each end framework or raw, against raw PUSH -> PULL.
    let base = block_on(
        Flavor::Multi,
        lim,
        one_hop(c.pipeline, false, false, c.quiet),
    );
    let mut plain_hop = None;
    for (case, fw_push, fw_pull) in [
        ("one hop: Pusher -> raw PULL", true, false),
        ("one hop: raw PUSH -> Puller", false, true),
        ("one hop: Pusher -> Puller", true, true),
    ] {
        let fw = block_on(
            Flavor::Multi,
            lim,
            one_hop(c.pipeline, fw_push, fw_pull, c.quiet),
        );
        if fw_push && fw_pull {
            plain_hop = fw.as_ref().ok().map(|t| t.per_s);
        }
        let mut row = Row::new(case, "through one hop", "msg/s")
            .fw(fw.as_ref().ok().map(|t| t.per_s))
            .raw(base.as_ref().ok().map(|t| t.per_s));
        let mut notes = vec!["diagnostic; raw = raw PUSH -> raw PULL".to_owned()];
        if let Err(e) = &fw {
            notes.push(format!("framework failed: {e:#}"));
        }
        if let Err(e) = &base {
            notes.push(format!("raw failed: {e:#}"));
        }
        row = row.note(notes.join("; "));
        p.push(row);
    }
    // At-least-once costs a round trip per message: acked pushes, against the plain hop.
    for tasks in [1u64, 64] {
        let fw = block_on(Flavor::Multi, lim, acked_hop(c.pipeline, tasks));
        let mut notes = vec![format!(
            "diagnostic; fw = acked Pusher -> Puller, {tasks} source task(s), each push waiting \
             for its ack; raw = the plain Pusher -> Puller hop above"
        )];
        if let Err(e) = &fw {
            notes.push(format!("acked failed: {e:#}"));
        }
        p.push(
            Row::new(
                format!("one hop acked, {tasks} source task(s)"),
                "through one hop",
                "msg/s",
            )
            .fw(fw.as_ref().ok().map(|t| t.per_s))
            .raw(plain_hop)
            .note(notes.join("; ")),
        );
    }
    p.note(format!(
        "{} messages of {MESSAGE_BYTES} bytes per run; three-stage rows: median of {runs} runs each",
        count(c.pipeline)
    ));
    p
}
