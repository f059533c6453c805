//! Runtimes, latency summaries and bounded waits shared by the patterns.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Which tokio runtime a measurement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// Multi-thread runtime, one worker per core (tokio's default).
    Multi,
    /// Single-thread runtime: every task on the calling thread.
    Current,
}

impl Flavor {
    /// As printed in the table.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::Multi => "multi-thread",
            Flavor::Current => "current-thread",
        }
    }
}

/// Builds a runtime of `flavor`.
pub fn runtime(flavor: Flavor) -> tokio::runtime::Runtime {
    let mut b = match flavor {
        Flavor::Multi => tokio::runtime::Builder::new_multi_thread(),
        Flavor::Current => tokio::runtime::Builder::new_current_thread(),
    };
    b.enable_all().build().expect("a tokio runtime builds")
}

/// Runs `fut` as a task on a fresh runtime of `flavor`, bounded by `limit`, then shuts the
/// runtime down (ending whatever tasks the measurement left behind: socket tasks, servers).
///
/// A task, not the `block_on` root future: on a multi-thread runtime the root future runs on
/// the calling thread, outside the workers, and every wake-up would cross threads.
pub fn block_on<F, T>(flavor: Flavor, limit: Duration, fut: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime(flavor);
    let out = rt.block_on(async {
        match tokio::time::timeout(limit, tokio::spawn(fut)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::anyhow!("the measurement task failed: {e}")),
            Err(_) => Err(anyhow::anyhow!("did not finish within {limit:?}")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

/// Latency percentiles of a set of round trips.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Mean, microseconds.
    pub mean_us: f64,
}

impl Latency {
    /// Summarises `samples` (sorted in place).
    pub fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i.min(samples.len() - 1)].as_secs_f64() * 1e6
        };
        let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
        Latency {
            p50_us: at(0.50),
            p99_us: at(0.99),
            mean_us: mean * 1e6,
        }
    }
}

/// Per-second rate of `n` events over `d`.
pub fn rate(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

/// What a counting consumer saw.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    /// Messages received.
    pub received: u64,
    /// When the last one arrived.
    pub last: Option<Instant>,
}

impl Counted {
    /// Messages per second from `start` to the last receipt (to `start + otherwise` if none
    /// arrived).
    pub fn per_s(&self, start: Instant, otherwise: Duration) -> f64 {
        rate(self.received, self.last.map_or(otherwise, |l| l - start))
    }
}

/// Something a counting consumer reads messages from.
pub trait Inbox {
    /// The next message; false once the stream has ended.
    fn next_message(&mut self) -> impl Future<Output = bool> + Send;
}

impl Inbox for sf_connections::Subscriber {
    async fn next_message(&mut self) -> bool {
        self.next().await.is_some()
    }
}

impl Inbox for sf_connections::Puller {
    async fn next_message(&mut self) -> bool {
        self.next_raw().await.is_some()
    }
}

impl Inbox for zeromq::SubSocket {
    async fn next_message(&mut self) -> bool {
        zeromq::SocketRecv::recv(self).await.is_ok()
    }
}

impl Inbox for zeromq::PullSocket {
    async fn next_message(&mut self) -> bool {
        zeromq::SocketRecv::recv(self).await.is_ok()
    }
}

/// Counts messages from `inbox` until `expected` arrived, nothing arrived for `quiet`, or
/// the stream ends.
///
/// The counting itself stays out of the figures as far as it can: a message already waiting
/// is taken with no timer and no clock read (at a million messages a second, two clock reads
/// and a timer per message are a visible share of a consumer's time, framework's or raw's
/// alike). The clock is read when the consumer has to wait, which is right after the last
/// message it took, and once at the end.
pub async fn count_until<I: Inbox>(inbox: &mut I, expected: u64, quiet: Duration) -> Counted {
    count_granting(inbox, expected, quiet, u64::MAX, &mut NoCredit).await
}

/// Where a counting consumer sends credit: the count received so far, every so many messages
/// (a hand-written flow-control window over raw sockets).
pub trait Credit {
    /// Grants credit up to `received`; false once the grant cannot be sent.
    fn grant(&mut self, received: u64) -> impl Future<Output = bool> + Send;
}

/// No credit to grant ([`count_until`]).
#[derive(Debug)]
pub struct NoCredit;

impl Credit for NoCredit {
    async fn grant(&mut self, _received: u64) -> bool {
        true
    }
}

/// [`count_until`], granting `credit` the count received every `every` messages.
pub async fn count_granting<I: Inbox, C: Credit>(
    inbox: &mut I,
    expected: u64,
    quiet: Duration,
    every: u64,
    credit: &mut C,
) -> Counted {
    use std::task::Poll;
    let mut received = 0;
    let mut last = None;
    let every = every.max(1);
    let mut until_grant = every;
    while received < expected {
        let mut next = std::pin::pin!(inbox.next_message());
        let ready = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
        let got = match ready {
            Poll::Ready(got) => got,
            Poll::Pending => {
                if received > 0 {
                    last = Some(Instant::now());
                }
                matches!(tokio::time::timeout(quiet, next).await, Ok(true))
            }
        };
        if !got {
            return Counted { received, last };
        }
        received += 1;
        until_grant -= 1;
        if until_grant == 0 {
            until_grant = every;
            if !credit.grant(received).await {
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

/// The run with the median figure; the first failure if any run failed.
pub fn median_run<T>(
    runs: Vec<anyhow::Result<T>>,
    figure: impl Fn(&T) -> f64,
) -> anyhow::Result<T> {
    let mut ok = Vec::with_capacity(runs.len());
    for r in runs {
        ok.push(r?);
    }
    ok.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let mid = ok.len() / 2;
    ok.into_iter()
        .nth(mid)
        .ok_or_else(|| anyhow::anyhow!("no runs"))
}

/// `n` printed as a readable count (`1,000,000`).
pub fn count(n: u64) -> String {
    crate::report::format_value(n as f64, "msgs")
}

/// A payload of `len` ASCII bytes.
pub fn payload(len: usize) -> String {
    "x".repeat(len)
}

/// Resident memory of process `pid` (`VmRSS` in /proc/<pid>/status), in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = Latency::of(&mut v);
        assert!((l.p50_us - 50.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99_us - 99.0).abs() <= 1.0, "{l:?}");
    }

    #[test]
    fn own_rss_is_read() {
        assert!(rss_mib(std::process::id()).unwrap() > 0.0);
    }
}
