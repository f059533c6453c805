//! libzmq through the `zmq` crate (`libzmq` feature): the transport pattern's cases as a
//! blocking program runs them, each end on its own thread, one context for both, default
//! options but the PUB's send high-water mark. Same frames, same loops as the tokio
//! libraries: prepared request frames by slot, the credit window, counting that reads the
//! clock only when it has to wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{frame, request_frames, seq_of, REPLY_TIMEOUT, SLOTS, STREAM_WARMUP, WARMUP_LIMIT};
use crate::pubsub::Delivered;
use crate::reqrep::RoundTrips;
use crate::util::{rate, Counted, Latency};

/// The linked libzmq's version (`4.3.4`).
pub fn version() -> String {
    let (a, b, c) = zmq::version();
    format!("{a}.{b}.{c}")
}

fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> anyhow::Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    // Nothing to flush after a measurement: closing must not wait.
    s.set_linger(0)?;
    Ok(s)
}

fn bind_any(s: &zmq::Socket) -> anyhow::Result<String> {
    s.bind("tcp://127.0.0.1:*")?;
    s.get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("a bound endpoint that is not UTF-8"))
}

/// A thread that runs until told to stop; stopped and joined when dropped (before the
/// context, so closing never waits on a socket still in use).
struct Worker<T> {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    fn spawn(
        name: &str,
        f: impl FnOnce(&AtomicBool) -> T + Send + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || f(&flag))?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }

    fn join(mut self) -> anyhow::Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("joined once");
        h.join()
            .map_err(|_| anyhow::anyhow!("a libzmq thread panicked"))
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// DEALER -> ROUTER echo keeping `window` requests of `size` bytes in flight.
pub fn round_trips(
    size: usize,
    window: usize,
    total: usize,
    warmup: usize,
) -> anyhow::Result<RoundTrips> {
    anyhow::ensure!(window <= SLOTS, "at most {SLOTS} requests in flight");
    let ctx = zmq::Context::new();
    let router = socket(&ctx, zmq::ROUTER)?;
    let ep = bind_any(&router)?;
    // The echo checks for the stop flag this often when idle.
    router.set_rcvtimeo(50)?;
    let echo = Worker::spawn("libzmq-echo", move |stop| -> anyhow::Result<()> {
        let (mut id, mut body) = (zmq::Message::new(), zmq::Message::new());
        while !stop.load(Ordering::Relaxed) {
            match router.recv(&mut id, 0) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
            // The parts of a message arrive together.
            router.recv(&mut body, 0)?;
            router.send(
                std::mem::replace(&mut id, zmq::Message::new()),
                zmq::SNDMORE,
            )?;
            router.send(std::mem::replace(&mut body, zmq::Message::new()), 0)?;
        }
        Ok(())
    })?;
    let dealer = socket(&ctx, zmq::DEALER)?;
    dealer.set_rcvtimeo(ms(REPLY_TIMEOUT))?;
    dealer.set_sndtimeo(ms(REPLY_TIMEOUT))?;
    dealer.connect(&ep)?;
    let frames = request_frames(size);
    let mut reply = zmq::Message::new();
    for i in 0..warmup {
        dealer.send(&frames[i % SLOTS][..], 0)?;
        dealer.recv(&mut reply, 0).context("warm-up reply")?;
    }
    let mut starts = [Instant::now(); SLOTS];
    let mut lat = Vec::with_capacity(total);
    let start = Instant::now();
    let mut sent = 0;
    while sent < window.min(total) {
        starts[sent % SLOTS] = Instant::now();
        dealer.send(&frames[sent % SLOTS][..], 0)?;
        sent += 1;
    }
    while lat.len() < total {
        dealer.recv(&mut reply, 0).context("reply timed out")?;
        anyhow::ensure!(reply.len() == size, "a reply of {} bytes", reply.len());
        let slot = seq_of(&reply)? as usize;
        lat.push(
            starts
                .get(slot)
                .context("reply to an unknown slot")?
                .elapsed(),
        );
        if sent < total {
            starts[sent % SLOTS] = Instant::now();
            dealer.send(&frames[sent % SLOTS][..], 0)?;
            sent += 1;
        }
    }
    let elapsed = start.elapsed();
    echo.join()??;
    Ok(RoundTrips {
        per_s: rate(total as u64, elapsed),
        latency: Latency::of(&mut lat),
    })
}

/// Counts messages on `sock` as `util::count_granting` does: a waiting message is taken with
/// no clock read; the clock is read when the consumer has to wait (for up to `quiet`, the
/// socket's receive timeout). Every `every` messages, `grant(received)`.
fn count_granting(
    sock: &zmq::Socket,
    expected: u64,
    every: u64,
    mut grant: impl FnMut(u64) -> bool,
) -> Counted {
    let mut msg = zmq::Message::new();
    let (mut received, mut last) = (0u64, None);
    let every = every.max(1);
    let mut until_grant = every;
    while received < expected {
        match sock.recv(&mut msg, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => {
                if received > 0 {
                    last = Some(Instant::now());
                }
                if sock.recv(&mut msg, 0).is_err() {
                    return Counted { received, last };
                }
            }
            Err(_) => return Counted { received, last },
        }
        received += 1;
        until_grant -= 1;
        if until_grant == 0 {
            until_grant = every;
            if !grant(received) {
                return Counted {
                    received,
                    last: Some(Instant::now()),
                };
            }
        }
    }
    Counted {
        received,
        last: Some(Instant::now()),
    }
}

/// PUB -> SUB of `n` messages of `size` bytes under a credit window of `window` (acks every
/// `window / 4` over PUSH -> PULL); the PUB queues up to twice the window.
pub fn credit_stream(
    n: u64,
    size: usize,
    window: u64,
    quiet: Duration,
) -> anyhow::Result<Delivered> {
    let ctx = zmq::Context::new();
    let publ = socket(&ctx, zmq::PUB)?;
    publ.set_sndhwm(i32::try_from(2 * window).unwrap_or(i32::MAX))?;
    let ep = bind_any(&publ)?;
    let acks = socket(&ctx, zmq::PULL)?;
    acks.set_rcvtimeo(ms(quiet))?;
    let ack_ep = bind_any(&acks)?;
    let sub = socket(&ctx, zmq::SUB)?;
    sub.set_subscribe(b"")?;
    sub.connect(&ep)?;
    let ack_tx = socket(&ctx, zmq::PUSH)?;
    ack_tx.set_sndtimeo(ms(quiet))?;
    ack_tx.connect(&ack_ep)?;
    let body = frame(size, 0);
    let mut m = zmq::Message::new();
    let deadline = Instant::now() + WARMUP_LIMIT;
    loop {
        publ.send(&body[..], 0)?;
        if sub.poll(zmq::POLLIN, 20)? > 0 {
            sub.recv(&mut m, 0)?;
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the subscriber received no warm-up message within {WARMUP_LIMIT:?}"
        );
    }
    while sub.poll(zmq::POLLIN, 100)? > 0 {
        sub.recv(&mut m, 0)?;
    }
    sub.set_rcvtimeo(ms(quiet))?;
    let every = (window / 4).max(1);
    let consumer = Worker::spawn("libzmq-sub", move |_| {
        count_granting(&sub, n, every, |received| {
            ack_tx.send(&received.to_be_bytes()[..], 0).is_ok()
        })
    })?;
    let start = Instant::now();
    let mut acked = 0u64;
    for seq in 1..=n {
        while seq > acked + window {
            acks.recv(&mut m, 0)
                .context("no credit from the subscriber")?;
            acked = acked.max(seq_of(&m)?);
        }
        publ.send(&body[..], 0)?;
    }
    let published = start.elapsed();
    let counted = consumer.join()?;
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: None,
    })
}

/// PUSH -> PULL of `n` messages of `size` bytes, one hop, default high-water marks.
pub fn push_pull(n: u64, size: usize, quiet: Duration) -> anyhow::Result<Delivered> {
    let ctx = zmq::Context::new();
    let sink = socket(&ctx, zmq::PULL)?;
    let ep = bind_any(&sink)?;
    let source = socket(&ctx, zmq::PUSH)?;
    source.set_sndtimeo(ms(REPLY_TIMEOUT))?;
    source.connect(&ep)?;
    let body = frame(size, 0);
    for _ in 0..STREAM_WARMUP {
        source.send(&body[..], 0)?;
    }
    sink.set_rcvtimeo(ms(WARMUP_LIMIT))?;
    let warm = count_granting(&sink, STREAM_WARMUP, u64::MAX, |_| true);
    anyhow::ensure!(
        warm.received == STREAM_WARMUP,
        "warm-up: the sink got {} of {STREAM_WARMUP}",
        warm.received
    );
    sink.set_rcvtimeo(ms(quiet))?;
    let consumer = Worker::spawn("libzmq-pull", move |_| {
        count_granting(&sink, n, u64::MAX, |_| true)
    })?;
    let start = Instant::now();
    for _ in 0..n {
        source.send(&body[..], 0)?;
    }
    let published = start.elapsed();
    let counted = consumer.join()?;
    Ok(Delivered {
        sent: n,
        received: counted.received,
        per_s: counted.per_s(start, published),
        publish_per_s: rate(n, published),
        lost_counter: None,
    })
}
