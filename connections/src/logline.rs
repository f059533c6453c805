//! Log hygiene for what peers send: warnings rate-limited per peer and kind, with a count of
//! what was held back, and every peer-supplied string escaped.
//!
//! A flood of bad requests must not become a flood of log lines (before this, 701k lines and
//! 173 MB in 25 s), and a key holding `\n` must not forge a line of its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per peer and kind in each window.
const BURST: u32 = 5;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);
/// Peers tracked at once; past this, the least recent are forgotten (their next line is
/// allowed again, so memory stays bounded whatever the number of peers).
const MAX_KEYS: usize = 1024;

struct Slot {
    since: Instant,
    used: u32,
    held: u64,
    last: Instant,
}

/// Lines per kind in each window, all peers together (so peers that reconnect under new
/// identities cannot flood either).
const KIND_BURST: u32 = 50;

/// A rate limit per `(kind, peer)`, and per kind over all peers.
#[derive(Default)]
pub struct WarnLimiter {
    slots: Mutex<HashMap<(&'static str, String), Slot>>,
    kinds: Mutex<HashMap<&'static str, Slot>>,
}

impl Slot {
    fn take(&mut self, now: Instant, burst: u32) -> bool {
        self.last = now;
        if now.duration_since(self.since) >= WINDOW {
            self.since = now;
            self.used = 0;
        }
        if self.used < burst {
            self.used += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }

    fn new(now: Instant) -> Slot {
        Slot {
            since: now,
            used: 0,
            held: 0,
            last: now,
        }
    }
}

impl std::fmt::Debug for WarnLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarnLimiter").finish_non_exhaustive()
    }
}

impl WarnLimiter {
    /// `Some(lines held back since the last one written)` if a line about `kind` from `peer`
    /// may be written now.
    pub fn allow(&self, kind: &'static str, peer: &str) -> Option<u64> {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_KEYS && !slots.contains_key(&(kind, peer.to_owned())) {
            // Forget the stalest half: O(n) once per MAX_KEYS/2 new peers.
            let mut ages: Vec<Instant> = slots.values().map(|s| s.last).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            slots.retain(|_, s| s.last > cut);
        }
        let slot = slots
            .entry((kind, peer.to_owned()))
            .or_insert_with(|| Slot::new(now));
        if !slot.take(now, BURST) {
            return None;
        }
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let all = kinds.entry(kind).or_insert_with(|| Slot::new(now));
        if !all.take(now, KIND_BURST) {
            slot.held += 1;
            return None;
        }
        Some(std::mem::take(&mut slot.held) + std::mem::take(&mut all.held))
    }
}

/// The process's limiter for warnings about what peers sent.
pub static WARNINGS: std::sync::LazyLock<WarnLimiter> =
    std::sync::LazyLock::new(WarnLimiter::default);

/// A peer-supplied string made safe for one log line: control characters (newlines among
/// them) and quotes are escaped, and it is cut at 512 characters.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(512) + 8);
    for (i, c) in s.chars().enumerate() {
        if i == 512 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_peer_is_held_back_and_counted_others_still_log() {
        let l = WarnLimiter::default();
        let allowed = (0..1000)
            .filter(|_| l.allow("invalid_args", "a").is_some())
            .count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(
            l.allow("invalid_args", "b"),
            Some(0),
            "another peer is not silenced"
        );
        assert_eq!(
            l.allow("malformed", "a"),
            Some(0),
            "another kind is not silenced"
        );
    }

    #[test]
    fn new_identities_cannot_flood_a_kind() {
        let l = WarnLimiter::default();
        let allowed = (0..1000)
            .filter(|i| l.allow("too_large", &i.to_string()).is_some())
            .count();
        assert_eq!(allowed, KIND_BURST as usize);
    }

    #[test]
    fn memory_stays_bounded_with_many_peers() {
        let l = WarnLimiter::default();
        for i in 0..10 * MAX_KEYS {
            l.allow("k", &i.to_string());
        }
        assert!(l.slots.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn a_newline_cannot_forge_a_line() {
        let e = escape("key\nWARN forged line\r\u{1b}[31m");
        assert!(!e.contains('\n') && !e.contains('\r') && !e.contains('\u{1b}'));
        assert!(e.contains("\\n"), "{e}");
        assert_eq!(escape(&"x".repeat(2000)).len(), 515);
    }
}
