//! Unsolicited snapshots of an out side: for newcomers, and periodic ones, after a quiet
//! spell.

use std::time::Duration;

use tokio::sync::watch;

use crate::*;

pub(crate) type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Publishes unsolicited snapshots for an out side: when a subscriber arrives (or leaves:
/// one that reconnects does both), and when the periodic `check` says one is owed; always
/// once `last_published()` is a quiet spell old, never in the middle of a stream. `publish`
/// returns `Some(false)` once the publisher is closed, which ends the task.
///
/// The first periodic check comes one period after the start, not at once: a burst of
/// changes made right after start-up (before subscribers finished connecting, the
/// slow-joiner window) must be followed by a snapshot that has a chance to reach them, not by
/// one sent in the same instant and lost the same way.
pub(crate) async fn answer_newcomers<P, L, C>(
    mut subscribers: watch::Receiver<usize>,
    periodic: Option<(Duration, C)>,
    mut publish: P,
    mut last_published: L,
) where
    P: FnMut() -> BoxFut<Option<bool>> + Send,
    L: FnMut() -> BoxFut<tokio::time::Instant> + Send,
    C: FnMut() -> BoxFut<bool> + Send,
{
    let (every, mut check) = match periodic {
        Some((every, check)) => (every, Some(check)),
        None => (Duration::from_secs(3600), None),
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching = true;
    let mut owed = false;
    let mut quiet_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = subscribers.changed(), if watching => match changed {
                Ok(()) => owed = true,
                // No count kept for this publisher kind (or it closed): ticks only.
                Err(_) => watching = false,
            },
            _ = tick.tick(), if check.is_some() => {
                if let Some(check) = check.as_mut() {
                    owed |= check().await;
                }
            }
            _ = tokio::time::sleep_until(quiet_at), if owed => {}
        }
        if !owed {
            continue;
        }
        let quiet = last_published().await + QUIET_SPELL;
        if tokio::time::Instant::now() < quiet {
            quiet_at = quiet;
            continue;
        }
        match publish().await {
            Some(false) => return,
            _ => owed = false,
        }
    }
}
