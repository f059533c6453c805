//! Publish/subscribe: 100-byte messages published at full speed to one subscriber that
//! consumes as fast as it can; messages/s delivered and how many were lost.
//!
//! Framework: [`Publisher`] -> [`Subscriber`], without and with the credit window (its
//! `lost` counter comes from sequence gaps). Raw: `zeromq` PUB -> SUB (lost = sent -
//! received; the raw socket has no credit window, so both framework cases are compared with
//! the same raw run).
//!
//! The subscription is proved in place first (warm-up messages until one arrives, then a
//! drain), so late joining is not counted as loss. The consumer stops when every message
//! arrived or after a quiet period; the rate is messages received over the time from the
//! first publish to the last receipt.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use sf_connections::stats::Counter;
use sf_connections::wire::WorkflowId;
use sf_connections::{
    Address, CreditOptions, Publisher, PublisherOptions, Subscriber, SubscriberOptions,
};
use zeromq::{
    PubSocket, PullSocket, PushSocket, Socket, SocketRecv, SocketSend, SubSocket, XPubSocket,
    XSubSocket, ZmqMessage,
};

use crate::report::{PatternReport, Row, Target};
use crate::util::{block_on, count, count_until, payload, rate, Flavor, Inbox};
use crate::Config;

/// Payload bytes per message.
pub const MESSAGE_BYTES: usize = 100;
/// The credit window of the lossless case.
pub const CREDIT_WINDOW: u64 = 50_000;
const WARMUP_LIMIT: Duration = Duration::from_secs(5);

/// What one run delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivered {
    /// Messages published in the measured run.
    pub sent: u64,
    /// Messages the consumer received.
    pub received: u64,
    /// Delivered messages per second (first publish to last receipt).
    pub per_s: f64,
    /// Publishes per second (the publishing loop alone).
    pub publish_per_s: f64,
    /// The framework subscriber's own `lost` counter over the run (sequence gaps).
    pub lost_counter: Option<u64>,
}

impl Delivered {
    /// Messages that never arrived.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// Framework publisher -> subscriber; `credit` turns the credit window on.
pub async fn framework(n: u64, credit: Option<u64>, quiet: Duration) -> anyhow::Result<Delivered> {
    let popts = PublisherOptions {
        credit: credit.map(|window| CreditOptions {
            window,
            ..Default::default()
        }),
        ..Default::default()
    };
    let publisher = Publisher::start(&Address::from("127.0.0.1:0"), popts).await?;
    let mut sub = Subscriber::start(
        &Address::from(publisher.endpoint()),
        SubscriberOptions {
            credit_window: credit,
            ..Default::default()
        },
    )
    .await?;
    if credit.is_some() {
        publisher
            .wait_for_subscribers(1, WARMUP_LIMIT)
            .await
            .context("the credit subscriber never registered")?;
    }
    let body = payload(MESSAGE_BYTES);
    let deadline = Instant::now() + WARMUP_LIMIT;
    loop {
        publisher.publish(&body, &WorkflowId::None).await?;
        if sub.next_timeout(Duration::from_millis(20)).await.is_ok() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the subscriber received no warm-up message within {WARMUP_LIMIT:?}"
        );
    }
    while sub.next_timeout(Duration::from_millis(100)).await.is_ok() {}
    let stats = sub.stats().clone();
    let lost_before = stats.get(Counter::Lost);
    let consumer = tokio::spawn(async move {
        let counted = count_until(&mut sub, n, quiet).await;
        (counted, sub)
    });
    let start = Instant::now();
    for _ in 0..n {
        publisher.publish(&body, &WorkflowId::None).await?;
    }
    let published = start.elapsed();
    let (counted, sub) = consumer.await?;
    drop(sub);
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: Some(stats.get(Counter::Lost) - lost_before),
    })
}

/// The raw publishing socket: PUB (plain), or XPUB (the socket the framework's credit mode
/// uses, for attributing costs).
enum RawPub {
    Pub(PubSocket),
    XPub(XPubSocket),
}

/// The raw subscribing socket: SUB, or XSUB (the socket the framework's subscriber uses).
enum RawSub {
    Sub(SubSocket),
    XSub(XSubSocket),
}

impl RawPub {
    async fn send(&mut self, m: ZmqMessage) -> zeromq::ZmqResult<()> {
        match self {
            RawPub::Pub(s) => s.send(m).await,
            RawPub::XPub(s) => s.send(m).await,
        }
    }
}

impl RawSub {
    async fn recv(&mut self) -> zeromq::ZmqResult<ZmqMessage> {
        match self {
            RawSub::Sub(s) => s.recv().await,
            RawSub::XSub(s) => s.recv().await,
        }
    }
}

impl Inbox for RawSub {
    async fn next_message(&mut self) -> bool {
        self.recv().await.is_ok()
    }
}

/// Raw `zeromq` PUB -> SUB (`x_pub` / `x_sub` swap in XPUB / XSUB).
pub async fn raw(n: u64, quiet: Duration, x_pub: bool, x_sub: bool) -> anyhow::Result<Delivered> {
    let (mut publ, ep) = if x_pub {
        let mut s = XPubSocket::new();
        let ep = s.bind("tcp://127.0.0.1:0").await?.to_string();
        (RawPub::XPub(s), ep)
    } else {
        let mut s = PubSocket::new();
        let ep = s.bind("tcp://127.0.0.1:0").await?.to_string();
        (RawPub::Pub(s), ep)
    };
    let mut sub = if x_sub {
        let mut s = XSubSocket::new();
        s.connect(&ep).await?;
        s.send(ZmqMessage::from(vec![1u8])).await?;
        RawSub::XSub(s)
    } else {
        let mut s = SubSocket::new();
        s.connect(&ep).await?;
        s.subscribe("").await?;
        RawSub::Sub(s)
    };
    if let RawPub::XPub(s) = &mut publ {
        // XPUB applies a subscription only when the application receives it.
        tokio::time::timeout(WARMUP_LIMIT, s.recv())
            .await
            .context("the raw XPUB got no subscription")??;
    }
    let body = Bytes::from(payload(MESSAGE_BYTES));
    let deadline = Instant::now() + WARMUP_LIMIT;
    loop {
        publ.send(ZmqMessage::from(body.clone())).await?;
        if tokio::time::timeout(Duration::from_millis(20), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the raw subscriber received no warm-up message within {WARMUP_LIMIT:?}"
        );
    }
    while tokio::time::timeout(Duration::from_millis(100), sub.recv())
        .await
        .is_ok()
    {}
    let consumer = tokio::spawn(async move { count_until(&mut sub, n, quiet).await });
    let start = Instant::now();
    for _ in 0..n {
        publ.send(ZmqMessage::from(body.clone())).await?;
    }
    let published = start.elapsed();
    let counted = consumer.await?;
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: None,
    })
}

/// Raw lossless baseline: a hand-written credit window over the raw library. Data goes
/// PUB -> SUB; the subscriber acknowledges every `window / 4` messages over a PUSH -> PULL
/// side channel; the publisher never runs more than `window` ahead of the last ack.
pub async fn raw_credit(n: u64, window: u64, quiet: Duration) -> anyhow::Result<Delivered> {
    let mut publ = PubSocket::new();
    let ep = publ.bind("tcp://127.0.0.1:0").await?.to_string();
    let mut acks = PullSocket::new();
    let ack_ep = acks.bind("tcp://127.0.0.1:0").await?.to_string();
    let mut sub = SubSocket::new();
    sub.connect(&ep).await?;
    sub.subscribe("").await?;
    let mut ack_tx = PushSocket::new();
    ack_tx.connect(&ack_ep).await?;
    let body = Bytes::from(payload(MESSAGE_BYTES));
    let deadline = Instant::now() + WARMUP_LIMIT;
    loop {
        publ.send(ZmqMessage::from(body.clone())).await?;
        if tokio::time::timeout(Duration::from_millis(20), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "raw credit warm-up got nothing");
    }
    while tokio::time::timeout(Duration::from_millis(100), sub.recv())
        .await
        .is_ok()
    {}
    let every = (window / 4).max(1);
    let consumer = tokio::spawn(async move {
        let (mut received, mut last) = (0u64, None);
        while received < n {
            match tokio::time::timeout(quiet, sub.recv()).await {
                Ok(Ok(_)) => {
                    received += 1;
                    last = Some(Instant::now());
                    if received % every == 0 {
                        let ack = ZmqMessage::from(received.to_be_bytes().to_vec());
                        if ack_tx.send(ack).await.is_err() {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
        crate::util::Counted { received, last }
    });
    let start = Instant::now();
    let mut acked = 0u64;
    for seq in 1..=n {
        while seq > acked + window {
            let m = tokio::time::timeout(quiet, acks.recv())
                .await
                .context("no credit from the raw subscriber")??;
            let a = m
                .get(0)
                .filter(|f| f.len() == 8)
                .map(|f| u64::from_be_bytes(f[..].try_into().expect("8 bytes")))
                .context("malformed ack")?;
            acked = acked.max(a);
        }
        publ.send(ZmqMessage::from(body.clone())).await?;
    }
    let published = start.elapsed();
    let counted = consumer.await?;
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: None,
    })
}

/// Runs the publish/subscribe pattern.
pub fn run(config: &Config) -> PatternReport {
    let c = config.counts();
    let lim = Duration::from_secs(if config.short { 20 } else { 120 });
    let mut p = PatternReport::new(
        "pubsub",
        "publish/subscribe of 100-byte messages at full speed, multi-thread runtime",
    );
    let raw = block_on(Flavor::Multi, lim, raw(c.pubsub, c.quiet, false, false));
    let plain = block_on(Flavor::Multi, lim, framework(c.pubsub, None, c.quiet));
    let credit = block_on(
        Flavor::Multi,
        lim,
        framework(c.pubsub, Some(CREDIT_WINDOW), c.quiet),
    );
    let raw_credit = block_on(
        Flavor::Multi,
        lim,
        raw_credit(c.pubsub, CREDIT_WINDOW, c.quiet),
    );
    for (case, fw, raw) in [
        ("no credit window", &plain, &raw),
        (
            &*format!("credit window {}", count(CREDIT_WINDOW)),
            &credit,
            &raw_credit,
        ),
    ] {
        let f = fw.as_ref().ok();
        let r = raw.as_ref().ok();
        let mut errs = Vec::new();
        if let Err(e) = fw {
            errs.push(format!("framework failed: {e:#}"));
        }
        if let Err(e) = raw {
            errs.push(format!("raw failed: {e:#}"));
        }
        let mut row = Row::new(case, "delivered", "msg/s")
            .fw(f.map(|d| d.per_s))
            .raw(r.map(|d| d.per_s))
            .target(Target::RatioAtLeast(0.8))
            .target(Target::AtLeast(1_000_000.0));
        if !errs.is_empty() {
            row = row.note(errs.join("; "));
        }
        p.push(row);
        let mut lost = Row::new(case, "lost", "msgs")
            .fw(f.map(|d| d.lost() as f64))
            .raw(r.map(|d| d.lost() as f64))
            .target(Target::AtMost(0.0));
        if let Some(d) = f {
            lost = lost.note(format!(
                "framework {} sent, {} received, its own `lost` counter says {}, publish loop {} msg/s; raw {}",
                count(d.sent),
                count(d.received),
                d.lost_counter.map_or("-".into(), count),
                count(d.publish_per_s as u64),
                r.map_or("-".into(), |r| format!(
                    "{} received, publish loop {} msg/s",
                    count(r.received),
                    count(r.publish_per_s as u64)
                ))
            ));
        }
        p.push(lost);
    }
    // The same raw stream over the socket types the framework uses underneath, to tell the
    // socket library's cost from the framework's own.
    for (case, x_pub, why) in [
        (
            "raw PUB->XSUB",
            false,
            "sockets of the framework's plain mode",
        ),
        (
            "raw XPUB->XSUB",
            true,
            "sockets of the framework's credit mode, no credit logic",
        ),
    ] {
        match block_on(
            Flavor::Multi,
            lim,
            self::raw(c.pubsub, c.quiet, x_pub, true),
        ) {
            Ok(d) => p.push(
                Row::new(case, "delivered", "msg/s")
                    .raw(d.per_s)
                    .note(format!(
                        "diagnostic, {why}: {} of {} received, publish loop {} msg/s",
                        count(d.received),
                        count(d.sent),
                        count(d.publish_per_s as u64)
                    )),
            ),
            Err(e) => p.push(Row::new(case, "delivered", "msg/s").note(format!("{e:#}"))),
        }
    }
    p.note(
        "raw baselines: no credit window = PUB->SUB (no flow control); credit window = hand-written \
         window over raw sockets (PUB->SUB data, acks every window/4 over PUSH->PULL)",
    );
    p.note(format!(
        "{} messages per run; framework frames add the envelope (seq, pub_id, workflow_id) to the {MESSAGE_BYTES}-byte payload",
        count(c.pubsub)
    ));
    p
}
