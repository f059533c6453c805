//! Counters every connection keeps about itself (async-nats style: stats that count
//! themselves, readable at any time without locking).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

macro_rules! counters {
    ($($name:ident => $text:literal: $doc:literal,)*) => {
        /// One thing a connection counts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Counter { $(#[doc = $doc] $name,)* }

        impl Counter {
            /// Every counter, in a fixed order.
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// The counter's snake_case name.
            pub fn name(self) -> &'static str {
                match self { $(Counter::$name => $text,)* }
            }
        }
    };
}

counters! {
    Received => "received": "Messages or requests received.",
    Replied => "replied": "Successful replies sent.",
    Sent => "sent": "Requests, publishes or pushes sent.",
    Delivered => "delivered": "Messages handed to the consumer.",
    Lost => "lost": "Messages a subscriber knows it missed (sequence gaps).",
    Duplicates => "duplicates": "Old or repeated sequence numbers ignored.",
    Malformed => "malformed": "Frames that were not a valid envelope.",
    InvalidArgs => "invalid_args": "Requests or messages whose args failed validation.",
    TooLarge => "too_large": "Frames above the size limit.",
    HandlerFailed => "handler_failed": "Handlers that returned an error or panicked.",
    Timeouts => "timeouts": "Requests that got no reply in time.",
    Retries => "retries": "Requests sent again after a timeout or a lost peer.",
    Reconnects => "reconnects": "Sockets rebuilt after the peer went away.",
    LateReplies => "late_replies": "Replies that arrived after their request gave up.",
    Dropped => "dropped": "Messages dropped locally (no peer yet, queue closed).",
    CreditWaits => "credit_waits": "Times a publisher waited for subscriber credit.",
    Refused => "refused": "Requests answered `unavailable` because the service was stopping.",
    Abandoned => "abandoned": "Handlers still running at the drain deadline (answered `unavailable`).",
    AuthFailures => "auth_failures": "Peers refused by security (a failed CURVE handshake, a client key not authorized, a NULL peer on a CURVE socket).",
    Redelivered => "redelivered": "Acked pipeline messages sent again (their puller went away, or no ack came within the ack timeout).",
    Acked => "acked": "Acked pipeline messages acknowledged (a pusher: acks received; a puller: acks sent).",
    Resyncs => "resyncs": "Snapshots a state follower asked for (at start, after a gap, a reconnect or a restart of its out side).",
    Partials => "partials": "MDP PARTIAL replies a requester calling through a broker received and dropped (a request has one reply).",
}

/// The counters of one connection.
#[derive(Debug, Default)]
pub struct Stats {
    values: [AtomicU64; Counter::ALL.len()],
    /// Handler time, summed over finished handlers (nanoseconds).
    processing_ns: AtomicU64,
    /// Handlers finished (whatever their outcome): what `processing_ns` is summed over.
    processed: AtomicU64,
    /// Handlers running now.
    in_flight: AtomicU64,
    /// The last handler error, as `code: message`.
    last_error: Mutex<Option<String>>,
}

impl Stats {
    /// Adds one.
    pub fn bump(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Adds `n`.
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// Counts one finished handler run and the time it took (two relaxed atomics).
    pub fn record_processing(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_ns.fetch_add(ns, Ordering::Relaxed);
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    /// Handler time summed over the finished runs, and how many runs.
    pub fn processing(&self) -> (Duration, u64) {
        (
            Duration::from_nanos(self.processing_ns.load(Ordering::Relaxed)),
            self.processed.load(Ordering::Relaxed),
        )
    }

    /// One more handler running.
    pub fn begin_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// One handler fewer running.
    pub fn end_in_flight(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Handlers running now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Remembers the last handler error (only on the error path: a lock per failure).
    pub fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    /// The last handler error, as `code: message`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// Every non-zero counter by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .map(|&c| (c.name(), self.get(c)))
            .filter(|(_, v)| *v > 0)
            .collect()
    }
}
