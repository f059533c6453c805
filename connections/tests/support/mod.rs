//! Helpers shared by the socket integration tests: bounded waits, never bare sleeps.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// The port of a bound `tcp://host:port` endpoint.
pub fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint:?}"))
}

/// A loopback port that nothing listens on (bound once by the OS, then released).
pub fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `cond` until it holds, at most `within`; panics with `what` otherwise. Returns how
/// long it took.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// Retries `attempt` (e.g. a bind of a port an old socket is releasing) until it succeeds, at
/// most `within`. Returns the value and the number of attempts it took.
pub async fn retry<T, E: std::fmt::Debug, F, Fut>(
    what: &str,
    within: Duration,
    mut attempt: F,
) -> (T, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Ok(v) => return (v, n),
            Err(e) => {
                assert!(
                    start.elapsed() < within,
                    "{what}: still failing after {within:?} and {n} attempts: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
