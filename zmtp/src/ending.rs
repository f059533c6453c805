//! How a connection's two tasks learn that it ends: the socket closing (the writer then
//! flushes within the linger) or the connection being dropped (both stop at once).
//!
//! A connection's reader and writer wait on this in every turn of their loops, so it is
//! an atomic flag and one waker slot per task: polling costs a load and a waker
//! registration, where a `CancellationToken` future locks two mutexes per poll.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;

use futures::task::AtomicWaker;

/// The socket is closing: the reader stops, the writer flushes what is queued.
pub(crate) const CLOSING: u8 = 1;
/// The connection is dropped (kicked by the socket, a failed write or read): stop at once.
pub(crate) const DROPPED: u8 = 2;

/// The task that waits.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Waiter {
    Reader = 0,
    Writer = 1,
}

/// Set once per cause, never cleared.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    causes: AtomicU8,
    wakers: [AtomicWaker; 2],
}

impl Ending {
    /// Adds a cause (`CLOSING`, `DROPPED`) and wakes both tasks.
    pub(crate) fn set(&self, cause: u8) {
        self.causes.fetch_or(cause, Ordering::SeqCst);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// The causes so far (0 while the connection runs).
    pub(crate) fn causes(&self) -> u8 {
        self.causes.load(Ordering::SeqCst)
    }

    /// Resolves with the causes once there is one. Only `who`'s own task may wait as `who`:
    /// each has one waker slot.
    pub(crate) async fn wait(&self, who: Waiter) -> u8 {
        poll_fn(|cx| {
            let c = self.causes();
            if c != 0 {
                return Poll::Ready(c);
            }
            self.wakers[who as usize].register(cx.waker());
            // A cause set between the load and the registration woke nobody: look again.
            match self.causes() {
                0 => Poll::Pending,
                c => Poll::Ready(c),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cause_wakes_both_waiters_and_the_drop_is_seen_beside_the_close() {
        let e = Arc::new(Ending::default());
        let (r, w) = (e.clone(), e.clone());
        let reader = tokio::spawn(async move { r.wait(Waiter::Reader).await });
        let writer = tokio::spawn(async move { w.wait(Waiter::Writer).await });
        tokio::task::yield_now().await;
        assert_eq!(e.causes(), 0);
        e.set(CLOSING);
        let lim = Duration::from_secs(5);
        assert_eq!(
            tokio::time::timeout(lim, reader).await.unwrap().unwrap(),
            CLOSING
        );
        assert_eq!(
            tokio::time::timeout(lim, writer).await.unwrap().unwrap(),
            CLOSING
        );
        e.set(DROPPED);
        assert_eq!(e.wait(Waiter::Reader).await, CLOSING | DROPPED);
    }
}
