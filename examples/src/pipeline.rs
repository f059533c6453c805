//! A pipeline: `pipeline_source` (main mode) -> `pipeline_square` (any number of workers) ->
//! `pipeline_sink`, over acked push/pull, so a worker killed mid-stream loses nothing.
//!
//! - The source pushes `count` items `{id, value}` on out-connection `items`, up to
//!   `in_flight` at once (an acked push returns once a worker handled it, so the window is
//!   the back-pressure: a slow sink slows the workers, which slow the source). It also
//!   publishes each item on `stream` (for the HTTP bridge's SSE route).
//! - Each worker pulls `items`, squares the value (after `work_ms` of pretend work), and
//!   pushes `{id, square}` on `squares`. It acknowledges an item only after its own push
//!   was acknowledged by the sink.
//! - The sink pulls `squares` and keeps one result per id: delivery is at-least-once (an
//!   item a dead worker held is sent again), and the sink is idempotent, so the results are
//!   exactly one per item; `duplicates` counts what arrived twice. `results` answers the
//!   running totals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::handle::{Publisher, Puller, Pusher, Replyer};
use service_framework::{Ctx, ServiceDef, ServiceError};

/// One work item.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Item {
    /// Unique within a run: what the sink deduplicates by.
    pub id: u64,
    /// The value to square.
    pub value: i64,
}

/// One result.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Squared {
    /// The item's id.
    pub id: u64,
    /// Its value squared.
    pub square: i64,
}

/// `pipeline_source`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SourceConfig {
    /// How many items (default 1,000).
    pub count: Option<u64>,
    /// The most items unacknowledged at once (default 64).
    pub in_flight: Option<u64>,
    /// Items per second (default: as fast as the pipeline takes them).
    pub rate: Option<f64>,
}

/// `pipeline_square`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SquareConfig {
    /// Milliseconds of pretend work per item (default 0).
    pub work_ms: Option<u64>,
}

/// What the sink answers on `results`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Totals {
    /// Distinct items received.
    pub count: u64,
    /// Items received more than once (a worker died after its push, before its ack).
    pub duplicates: u64,
    /// The sum of the squares (each item once).
    pub sum: i64,
    /// The highest id seen.
    pub max_id: Option<u64>,
}

/// `results` takes no arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NoArgs {}

/// The source's pusher: it binds, so any number of workers connect to it (fan-out).
pub const ITEMS_OUT: Pusher<Item> = Pusher::new("items").acked(true).window(Some(1000));
/// The source's stream of items, for watchers (the bridge's SSE route).
pub const STREAM: Publisher<Item> = Publisher::new("stream").topic("items");
/// A worker's puller: up to 16 items at once, each acknowledged after its push was.
pub const ITEMS_IN: Puller<Item> = Puller::new("items").acked(true).concurrency(Some(16));
/// A worker's pusher, connecting to the sink (fan-in).
pub const SQUARES_OUT: Pusher<Squared> = Pusher::new("squares").acked(true);
/// The sink's puller: it binds.
pub const SQUARES_IN: Puller<Squared> = Puller::new("squares")
    .acked(true)
    .is_binder(true)
    .concurrency(Some(64));
/// The sink's running totals.
pub const RESULTS: Replyer<NoArgs, Totals> = Replyer::new("results");

/// The leading-edge source (main mode).
pub fn source() -> ServiceDef {
    ServiceDef::new("pipeline_source")
        .description(
            "Pushes `count` items {id, value} on `items` (acked) and publishes each on `stream`",
        )
        .config::<SourceConfig>()
        .pusher(ITEMS_OUT.is_binder(true))
        .publisher(STREAM)
        .main(|ctx: Ctx| async move {
            let config = ctx.config::<SourceConfig>();
            let count = config.count.unwrap_or(1000);
            let in_flight = config.in_flight.unwrap_or(64).clamp(1, 1000) as usize;
            let started = std::time::Instant::now();
            let every = config
                .rate
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r.min(1e6)));
            let mut ticks = every.map(tokio::time::interval);
            let mut running = tokio::task::JoinSet::new();
            for id in 0..count {
                if let Some(t) = &mut ticks {
                    tokio::select! {
                        _ = t.tick() => {}
                        () = ctx.stopping() => break,
                    }
                }
                if ctx.is_stopping() {
                    break;
                }
                while running.len() >= in_flight {
                    if let Some(Ok(Err(e))) = running.join_next().await {
                        return Err(e);
                    }
                }
                let item = Item {
                    id,
                    value: id as i64,
                };
                ctx.publish(&STREAM, &item).await?;
                let ctx = ctx.clone();
                running.spawn(async move { ctx.push(&ITEMS_OUT, &item).await });
            }
            while let Some(r) = running.join_next().await {
                if let Ok(Err(e)) = r {
                    return Err(e);
                }
            }
            let s = started.elapsed().as_secs_f64();
            println!(
                "Sent {count} items in {s:.2}s ({:.0} items/s), every one acknowledged",
                count as f64 / s.max(1e-9)
            );
            Ok::<_, ServiceError>(())
        })
}

/// A worker: squares each item.
pub fn square() -> ServiceDef {
    ServiceDef::new("pipeline_square")
        .description("Pulls items, pushes {id, square} on `squares`")
        .config::<SquareConfig>()
        .pusher(SQUARES_OUT)
        .puller(ITEMS_IN, |item: Item, ctx: Ctx| async move {
            let work = ctx.config::<SquareConfig>().work_ms.unwrap_or(0);
            if work > 0 {
                tokio::time::sleep(Duration::from_millis(work)).await;
            }
            let square = item.value.checked_mul(item.value).ok_or_else(|| {
                ServiceError::new(format!("{} squared does not fit in i64", item.value))
            })?;
            ctx.push(
                &SQUARES_OUT,
                &Squared {
                    id: item.id,
                    square,
                },
            )
            .await
        })
}

#[derive(Debug, Default)]
struct Sink {
    seen: HashMap<u64, i64>,
    totals: Totals,
}

/// The idempotent sink.
pub fn sink() -> ServiceDef {
    let state = Arc::new(Mutex::new(Sink::default()));
    let for_results = state.clone();
    ServiceDef::new("pipeline_sink")
        .description("Keeps one result per item id; `results` answers the running totals")
        .puller(SQUARES_IN, move |r: Squared, _ctx: Ctx| {
            let state = state.clone();
            async move {
                let mut s = state.lock().map_err(|_| ServiceError::new("poisoned"))?;
                if s.seen.insert(r.id, r.square).is_some() {
                    s.totals.duplicates += 1;
                } else {
                    s.totals.count += 1;
                    s.totals.sum = s.totals.sum.wrapping_add(r.square);
                    s.totals.max_id = Some(s.totals.max_id.map_or(r.id, |m| m.max(r.id)));
                }
                Ok(())
            }
        })
        .replyer(RESULTS, move |_: NoArgs, _ctx: Ctx| {
            let state = for_results.clone();
            async move {
                let s = state.lock().map_err(|_| ServiceError::new("poisoned"))?;
                Ok::<_, ServiceError>(s.totals.clone())
            }
        })
}
