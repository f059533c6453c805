//! One subscriber that stops reading costs only its own bounded queue: the publisher's memory
//! stays within that bound and every other subscriber keeps receiving everything, directly
//! from a publisher and through the bus proxy. (With the `zeromq` crate a stopped subscriber
//! grew a publisher by ~190 MB and stopped a bus's other subscribers for 9 s.)
//!
//! Its own test binary: it measures the process's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sf_connections::{
    Address, BusProxy, Counter, Publisher, PublisherOptions, Subscriber, SubscriberOptions,
    WorkflowId,
};

#[derive(Debug, Serialize, Deserialize)]
struct Blob {
    n: u64,
    pad: String,
}

const COUNT: u64 = 60_000;
const PAD: usize = 1000;
/// What one stalled subscriber may cost: its queue (10,000 x ~1 KB) plus socket buffers and
/// allocator slack. Unbounded queueing of the whole stream would take over 60 MB.
const BOUND_BYTES: u64 = 40 << 20;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .expect("rss field")
        .parse()
        .expect("number");
    pages * 4096
}

/// Publishes `COUNT` blobs in bursts while `reader` takes them; returns (received, lost,
/// publisher or proxy drops, RSS growth, time the reader needed).
async fn run(via_bus: bool) -> (u64, u64, u64, u64, Duration) {
    let any = Address::from("127.0.0.1:0");
    let proxy = if via_bus {
        Some(BusProxy::bind(&any, &any).await.unwrap())
    } else {
        None
    };
    let (pub_at, pub_opts, sub_at) = match &proxy {
        Some(p) => (
            Address::from(p.publishers_endpoint()),
            PublisherOptions {
                is_x_pub: true,
                ..Default::default()
            },
            Some(Address::from(p.subscribers_endpoint())),
        ),
        None => (any.clone(), PublisherOptions::default(), None),
    };
    let publisher = Publisher::start(&pub_at, pub_opts).await.unwrap();
    let sub_at = sub_at.unwrap_or_else(|| Address::from(publisher.endpoint()));

    // The stalled one: a raw SUB that takes one message (so its subscription is known to be
    // in place) and then never reads again.
    let mut stalled = sf_zmtp::SubSocket::new();
    stalled
        .connect(&sub_at.connect_endpoint().unwrap())
        .unwrap();
    stalled.subscribe(b"").await;
    let mut reader = Subscriber::start(&sub_at, SubscriberOptions::default())
        .await
        .unwrap();
    let pad = "x".repeat(PAD);
    let start = Instant::now();
    let (mut stalled_ready, mut reader_ready) = (false, false);
    while !(stalled_ready && reader_ready) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "subscriptions never in place"
        );
        publisher
            .publish(
                &Blob {
                    n: u64::MAX,
                    pad: String::new(),
                },
                &WorkflowId::None,
            )
            .await
            .unwrap();
        if !stalled_ready {
            stalled_ready = tokio::time::timeout(Duration::from_millis(20), stalled.recv())
                .await
                .is_ok();
        }
        while let Ok(d) = reader.next_timeout(Duration::from_millis(5)).await {
            let _ = d;
            reader_ready = true;
        }
    }
    while reader.next_timeout(Duration::from_millis(50)).await.is_ok() {}
    let lost_before = reader.stats().get(Counter::Lost);

    let before = rss_bytes();
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        let t = Instant::now();
        while got < COUNT {
            match reader.next_timeout(Duration::from_secs(5)).await {
                Ok(d) => {
                    let b: Blob = d.args().unwrap();
                    assert_eq!(b.pad.len(), PAD);
                    got += 1;
                    seen.store(got, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        (got, reader.stats().get(Counter::Lost), t.elapsed(), reader)
    });
    // Bursts of 500, each once the reading subscriber has taken all but the last burst: a
    // pace it keeps up with however loaded the machine is (its queue never holds more than
    // two bursts), so any loss it saw would be the stalled one's fault. The stalled one reads
    // nothing, so its queue fills all the same.
    for burst in 0..COUNT / 500 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress.load(Ordering::Relaxed) + 500 < burst * 500 {
            assert!(
                Instant::now() < deadline,
                "the reading subscriber stopped at {}",
                progress.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 0..500 {
            publisher
                .publish(
                    &Blob {
                        n: burst * 500 + i,
                        pad: pad.clone(),
                    },
                    &WorkflowId::None,
                )
                .await
                .unwrap();
        }
    }
    let (got, lost, took, _reader) = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("the reading subscriber finishes")
        .unwrap();
    let grown = rss_bytes().saturating_sub(before);
    let dropped = match &proxy {
        Some(p) => p.stats().get(Counter::Dropped),
        None => publisher.stats().get(Counter::Dropped),
    };
    drop(stalled);
    (got, lost - lost_before, dropped, grown, took)
}

/// The two tests measure one process's memory: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn check(via_bus: bool) {
    let _one_at_a_time = SERIAL.lock().await;
    let (got, lost, dropped, grown, took) = run(via_bus).await;
    eprintln!(
        "via bus {via_bus}: reader got {got}/{COUNT} in {took:?}, lost {lost}; \
         dropped for the stalled one {dropped}; RSS grew {} KiB",
        grown / 1024
    );
    assert_eq!(got, COUNT, "the reading subscriber got everything");
    assert_eq!(lost, 0);
    assert!(
        dropped > 0,
        "the stalled subscriber's queue filled and it missed messages"
    );
    assert!(
        grown < BOUND_BYTES,
        "a stalled subscriber grew the process by {} MiB",
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_only_its_own_queue() {
    check(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_of_the_bus_does_not_hold_up_the_others() {
    check(true).await;
}
