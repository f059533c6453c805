//! Acked PUSH/PULL over real sockets on 127.0.0.1: fan-out to two workers with every message
//! acknowledged, redelivery of what a worker took and never acknowledged when it goes away,
//! back-pressure from the window of unacknowledged messages, and a plain puller refused
//! visibly (the ZMTP handshake fails) instead of a push that pretends to succeed.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sf_connections::wire::{self, Request};
use sf_connections::{Address, Counter, Error, PipelineOptions, Puller, Pusher, WorkflowId};
use tokio::task::JoinSet;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Item {
    id: u64,
}

fn acked(is_binder: bool, send_timeout: Duration) -> PipelineOptions {
    PipelineOptions {
        is_binder,
        send_timeout,
        acked: true,
        // Redelivery in these tests must come from disconnect detection, not the safety net.
        ack_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

fn id_of(body: &[u8]) -> u64 {
    wire::decode::<Request<Item>>(body).unwrap().args.id
}

/// Pulls, records each id, acks: until the puller ends (the test drops the task).
fn worker(mut puller: Puller, seen: Arc<Mutex<Vec<u64>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(p) = puller.next_pushed().await {
            seen.lock().unwrap().push(id_of(&p.body));
            p.ack.expect("an acked puller gives an ack").send();
        }
    })
}

async fn bounded<T>(what: &str, within: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(within, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {within:?}: {what}"))
}

#[tokio::test]
async fn fan_out_to_two_acked_pullers_every_message_acked() {
    const N: u64 = 2000;
    let timeout = Duration::from_secs(10);
    let pusher = Pusher::start(&Address::from("127.0.0.1:0"), acked(true, timeout))
        .await
        .unwrap();
    assert!(pusher.is_acked());
    let at = Address::from(pusher.endpoint());
    let (a, b) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let wa = worker(
        Puller::start(&at, acked(false, timeout)).await.unwrap(),
        a.clone(),
    );
    let wb = worker(
        Puller::start(&at, acked(false, timeout)).await.unwrap(),
        b.clone(),
    );

    // Warm-up: one push at a time (each returns once acked) until both workers have had
    // one, so both are connected before the run (round-robin then alternates).
    let mut next = N;
    bounded("both workers connected", Duration::from_secs(5), async {
        while a.lock().unwrap().is_empty() || b.lock().unwrap().is_empty() {
            pusher
                .push(&Item { id: next }, WorkflowId::None)
                .await
                .unwrap();
            next += 1;
        }
    })
    .await;
    a.lock().unwrap().clear();
    b.lock().unwrap().clear();
    let acked_before = pusher.stats().get(Counter::Acked);

    let mut pushes = JoinSet::new();
    for id in 0..N {
        let p = pusher.clone();
        pushes.spawn(async move { p.push(&Item { id }, WorkflowId::None).await });
    }
    bounded("every push acked", Duration::from_secs(15), async {
        while let Some(r) = pushes.join_next().await {
            r.unwrap().unwrap();
        }
    })
    .await;

    let (a, b) = (a.lock().unwrap().clone(), b.lock().unwrap().clone());
    let all: BTreeSet<u64> = a.iter().chain(b.iter()).copied().collect();
    assert_eq!(all, (0..N).collect(), "every id handled");
    assert_eq!(
        a.len() + b.len(),
        N as usize,
        "none twice: no worker was lost"
    );
    assert!(
        a.len() > N as usize / 4 && b.len() > N as usize / 4,
        "shared between both workers: {} and {}",
        a.len(),
        b.len()
    );
    assert_eq!(pusher.stats().get(Counter::Acked) - acked_before, N);
    assert_eq!(pusher.stats().get(Counter::Redelivered), 0);
    assert_eq!(pusher.in_flight(), 0);
    wa.abort();
    wb.abort();
}

#[tokio::test]
async fn a_worker_that_leaves_without_acking_has_its_messages_redelivered() {
    const N: u64 = 300;
    let timeout = Duration::from_secs(15);
    let pusher = Pusher::start(&Address::from("127.0.0.1:0"), acked(true, timeout))
        .await
        .unwrap();
    let at = Address::from(pusher.endpoint());

    // The bad worker is the only one: it takes every message and acknowledges none.
    let mut bad = Puller::start(&at, acked(false, timeout)).await.unwrap();
    let mut pushes = JoinSet::new();
    for id in 0..N {
        let p = pusher.clone();
        pushes.spawn(async move { p.push(&Item { id }, WorkflowId::None).await });
    }
    let mut taken = BTreeSet::new();
    bounded(
        "the bad worker took every message",
        Duration::from_secs(10),
        async {
            while taken.len() < N as usize {
                let p = bad.next_pushed().await.unwrap();
                taken.insert(id_of(&p.body));
                drop(p.ack); // dropped unsent: no ack
            }
        },
    )
    .await;
    assert_eq!(pusher.in_flight(), N as usize);
    assert_eq!(pusher.stats().get(Counter::Acked), 0);

    // A good worker comes; the bad one goes away (its socket closes, no ack ever sent).
    let good_seen = Arc::new(Mutex::new(Vec::new()));
    let good = worker(
        Puller::start(&at, acked(false, timeout)).await.unwrap(),
        good_seen.clone(),
    );
    drop(bad);

    bounded(
        "every push acked after redelivery",
        Duration::from_secs(15),
        async {
            while let Some(r) = pushes.join_next().await {
                r.unwrap().unwrap();
            }
        },
    )
    .await;
    let good_seen = good_seen.lock().unwrap().clone();
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for id in &good_seen {
        *counts.entry(*id).or_default() += 1;
    }
    let final_set: BTreeSet<u64> = counts.keys().copied().collect();
    assert_eq!(
        final_set,
        (0..N).collect(),
        "every id reached the good worker"
    );
    let duplicates = good_seen.len() - final_set.len();
    assert_eq!(
        duplicates, 0,
        "the good worker acked each once, so none came twice"
    );
    assert_eq!(pusher.stats().get(Counter::Redelivered), N);
    assert_eq!(pusher.stats().get(Counter::Acked), N);
    assert_eq!(pusher.in_flight(), 0);
    good.abort();
}

#[tokio::test]
async fn the_window_of_unacknowledged_messages_makes_pushes_wait() {
    let timeout = Duration::from_secs(3);
    let pusher = Pusher::start(
        &Address::from("127.0.0.1:0"),
        PipelineOptions {
            window: 10,
            ..acked(true, timeout)
        },
    )
    .await
    .unwrap();
    let mut puller = Puller::start(&Address::from(pusher.endpoint()), acked(false, timeout))
        .await
        .unwrap();
    let mut first = JoinSet::new();
    for id in 0..10 {
        let p = pusher.clone();
        first.spawn(async move { p.push(&Item { id }, WorkflowId::None).await });
    }
    // The puller takes all ten and holds their acks.
    let mut held = Vec::new();
    bounded("ten messages taken", Duration::from_secs(5), async {
        while held.len() < 10 {
            held.push(puller.next_pushed().await.unwrap().ack.unwrap());
        }
    })
    .await;
    assert_eq!(pusher.in_flight(), 10);

    // The eleventh waits for room: nothing reaches the puller while the ten are unacked.
    let p = pusher.clone();
    let started = tokio::time::Instant::now();
    let eleventh = tokio::spawn(async move { p.push(&Item { id: 10 }, WorkflowId::None).await });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), puller.next_pushed())
            .await
            .is_err(),
        "an eleventh message went out past a window of ten"
    );
    assert!(!eleventh.is_finished());
    assert_eq!(pusher.in_flight(), 10);
    let r = bounded(
        "the eleventh push gives up",
        Duration::from_secs(6),
        eleventh,
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(started.elapsed() >= timeout - Duration::from_millis(50));
    assert!(pusher.stats().get(Counter::Timeouts) >= 1);
    // Given up pushes leave nothing behind.
    while let Some(r) = first.join_next().await {
        assert!(matches!(r.unwrap(), Err(Error::Timeout(_))));
    }
    assert_eq!(pusher.in_flight(), 0);
    drop(held);
}

#[tokio::test]
async fn an_acked_pusher_refuses_a_plain_puller_visibly() {
    let timeout = Duration::from_secs(2);
    let pusher = Pusher::start(&Address::from("127.0.0.1:0"), acked(true, timeout))
        .await
        .unwrap();
    let plain = PipelineOptions {
        send_timeout: timeout,
        ..Default::default()
    };
    let _puller = Puller::start(&Address::from(pusher.endpoint()), plain)
        .await
        .unwrap();
    let r = bounded(
        "the push fails",
        Duration::from_secs(5),
        pusher.push(&Item { id: 1 }, WorkflowId::None),
    )
    .await;
    match r {
        Err(Error::Socket(msg)) => {
            assert!(msg.contains("handshake"), "{msg}");
            assert!(msg.contains("acked puller"), "{msg}");
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    assert_eq!(pusher.stats().get(Counter::Sent), 0);
    assert_eq!(pusher.stats().get(Counter::Dropped), 1);
}

#[tokio::test]
async fn a_restarted_binding_puller_gets_what_its_predecessor_left_unacked() {
    const N: u64 = 50;
    let timeout = Duration::from_secs(15);
    // The puller binds (a sink); the pusher connects and reconnects by itself.
    let mut first = Puller::start(&Address::from("127.0.0.1:0"), acked(true, timeout))
        .await
        .unwrap();
    let at = first.endpoint().to_owned();
    let pusher = Pusher::start(&Address::from(at.as_str()), acked(false, timeout))
        .await
        .unwrap();
    let mut pushes = JoinSet::new();
    for id in 0..N {
        let p = pusher.clone();
        pushes.spawn(async move { p.push(&Item { id }, WorkflowId::None).await });
    }
    // The first instance acks the even ids and dies holding the odd ones.
    let mut got = 0;
    bounded(
        "the first instance took every message",
        Duration::from_secs(10),
        async {
            while got < N {
                let p = first.next_pushed().await.unwrap();
                if id_of(&p.body) % 2 == 0 {
                    p.ack.unwrap().send();
                }
                got += 1;
            }
        },
    )
    .await;
    drop(first);

    // Restarted on the same port.
    let second = bounded("the port is free again", Duration::from_secs(5), async {
        loop {
            match Puller::start(&Address::from(at.as_str()), acked(true, timeout)).await {
                Ok(p) => return p,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let w = worker(second, seen.clone());
    bounded("every push acked", Duration::from_secs(15), async {
        while let Some(r) = pushes.join_next().await {
            r.unwrap().unwrap();
        }
    })
    .await;
    let mut again = seen.lock().unwrap().clone();
    again.sort_unstable();
    again.dedup();
    assert!(
        again.iter().all(|id| id % 2 == 1),
        "only what was not acked comes again: {again:?}"
    );
    assert_eq!(again, (0..N).filter(|id| id % 2 == 1).collect::<Vec<_>>());
    assert_eq!(pusher.stats().get(Counter::Redelivered), N / 2);
    assert_eq!(pusher.in_flight(), 0);
    w.abort();
}
