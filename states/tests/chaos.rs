//! Chaos: a delta state streamed through the bus proxy while the source, the followers and
//! the bus itself are killed and restarted at random moments. Every follower must end equal
//! to the source. Bounded: a few seconds of stream, then at most 15 s to converge. The seed
//! (fixed, or `SF_CHAOS_SEED`) is printed, and named in every failure, so a failing
//! schedule can be replayed.

use std::time::Duration;

use sf_connections::wire::WorkflowId;
use sf_connections::{Address, BusProxy};
use sf_states::{DeltaUpdateIn, DeltaUpdateOut, StateMap, StateOptions, StateView, Value};
use tokio::time::Instant;

/// How long the stream runs, and how many of each fault it sees.
const STREAM: Duration = Duration::from_secs(4);
const EVENTS: usize = 12;
const FOLLOWERS: usize = 3;
/// The bound on convergence once the stream stops.
const CONVERGE: Duration = Duration::from_secs(15);

/// xorshift64*: a small deterministic generator (the schedule must replay from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint}"))
}

fn at(port: u16) -> Address {
    Address::from(format!("127.0.0.1:{port}").as_str())
}

/// Retries a bind on a port just released (bounded).
async fn rebind<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: could not bind again within 5 s: {e}"),
        }
    }
}

struct Fleet {
    bus_ports: (u16, u16),
    replyer_port: u16,
    source: DeltaUpdateOut,
    bus: Option<BusProxy>,
    followers: Vec<DeltaUpdateIn>,
}

fn source_options() -> StateOptions {
    StateOptions {
        topic: "chaos".into(),
        is_x_pub: true,
        wait_after_creation: Some(Duration::ZERO),
        snapshot_interval: Some(Duration::from_millis(300)),
        ..Default::default()
    }
}

fn follower_options() -> StateOptions {
    StateOptions {
        topic: "chaos".into(),
        resync_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    }
}

impl Fleet {
    async fn source(&self, state: &StateMap) -> DeltaUpdateOut {
        let (publishers, _) = self.bus_ports;
        let replyer = self.replyer_port;
        let out = rebind("the source", || async {
            DeltaUpdateOut::start(&at(publishers), &at(replyer), &source_options())
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        // A restarted source starts from what it holds (here: the state it had).
        out.snapshot(state.clone(), &WorkflowId::None)
            .await
            .unwrap();
        out
    }

    async fn follower(&self) -> DeltaUpdateIn {
        let (_, subscribers) = self.bus_ports;
        DeltaUpdateIn::start(
            &at(subscribers),
            &at(self.replyer_port),
            &follower_options(),
        )
        .await
        .unwrap()
    }

    async fn bus(&self) -> BusProxy {
        let (p, s) = self.bus_ports;
        rebind("the bus", || async {
            BusProxy::bind(&at(p), &at(s))
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_follower_ends_equal_to_the_source_whatever_is_restarted_when() {
    let seed: u64 = std::env::var("SF_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a0_5000_0001);
    println!("chaos seed: {seed} (replay with SF_CHAOS_SEED={seed})");
    let mut rng = Rng(seed | 1);

    let any = Address::from("127.0.0.1:0");
    let bus = BusProxy::bind(&any, &any).await.unwrap();
    let bus_ports = (
        port_of(bus.publishers_endpoint()),
        port_of(bus.subscribers_endpoint()),
    );
    let first = DeltaUpdateOut::start(&at(bus_ports.0), &any, &source_options())
        .await
        .unwrap();
    let replyer_port = port_of(first.replyer_endpoint());
    let mut fleet = Fleet {
        bus_ports,
        replyer_port,
        source: first,
        bus: Some(bus),
        followers: Vec::new(),
    };
    for _ in 0..FOLLOWERS {
        let f = fleet.follower().await;
        fleet.followers.push(f);
    }

    // The schedule: EVENTS faults at random moments of the stream.
    let mut schedule: Vec<(Duration, u64)> = (0..EVENTS)
        .map(|_| {
            (
                Duration::from_millis(rng.below(STREAM.as_millis() as u64)),
                rng.below(3 + FOLLOWERS as u64),
            )
        })
        .collect();
    schedule.sort();
    println!("chaos schedule (ms, what): {schedule:?}");

    let mut state = StateMap::new();
    let started = Instant::now();
    let mut next_event = 0;
    let mut n: i64 = 0;
    let mut log = Vec::new();
    while started.elapsed() < STREAM {
        // One delta: a key of 40 set to the running count, now and then a delete.
        let key = format!("k{}", rng.below(40));
        let mut delta = StateMap::new();
        if rng.below(10) == 0 {
            delta.insert(key.clone(), Value::Nil);
            state.remove(&key);
        } else {
            delta.insert(key.clone(), Value::from(n));
            state.insert(key, Value::from(n));
        }
        n += 1;
        // A source being restarted refuses nothing: the delta goes to whichever is up.
        let _ = fleet.source.delta(delta, &WorkflowId::None).await;

        while next_event < schedule.len() && started.elapsed() >= schedule[next_event].0 {
            let what = schedule[next_event].1;
            next_event += 1;
            match what {
                0 => {
                    fleet.source.shutdown(Duration::from_millis(50)).await;
                    fleet.source = fleet.source(&state).await;
                    log.push(format!("{:?}: source restarted", started.elapsed()));
                }
                1 => {
                    if let Some(bus) = fleet.bus.take() {
                        bus.shutdown().await;
                    }
                    fleet.bus = Some(fleet.bus().await);
                    log.push(format!("{:?}: bus restarted", started.elapsed()));
                }
                2 => {
                    // A pause in the stream (a quiet spell in the middle of it).
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    log.push(format!("{:?}: source paused", started.elapsed()));
                }
                i => {
                    let i = (i - 3) as usize;
                    let new = fleet.follower().await;
                    let old = std::mem::replace(&mut fleet.followers[i], new);
                    drop(old);
                    log.push(format!("{:?}: follower {i} restarted", started.elapsed()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("chaos: {n} deltas; {}", log.join("; "));

    // Every follower ends at the source's state (the source's own view agrees first).
    let (held, _) = fleet.source.current().await;
    assert_eq!(held, state, "seed {seed}: the source holds what was sent");
    let deadline = Instant::now() + CONVERGE;
    for (i, f) in fleet.followers.iter().enumerate() {
        let mut rx = f.watch();
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, rx.wait_for(|v: &StateView| *v.state == state))
            .await
            .map(|r| r.is_ok());
        assert!(
            matches!(got, Ok(true)),
            "seed {seed}: follower {i} did not converge within {CONVERGE:?}; it holds {} keys \
             at number {}, the source {} keys; schedule {schedule:?}; {}",
            rx.borrow().state.len(),
            rx.borrow().current_num,
            state.len(),
            log.join("; ")
        );
    }
    fleet.source.shutdown(Duration::from_millis(50)).await;
    if let Some(bus) = fleet.bus.take() {
        bus.shutdown().await;
    }
}
