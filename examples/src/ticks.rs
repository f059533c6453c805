//! The topic pair: `ticker` (main mode) publishes `count` ticks on out-connection `ticks`
//! under topic `"ticks"`, one every `interval_s`; `tick_listener` subscribes to the topic on
//! in-connection `ticks` and prints `Got Tick: {"n":..}` for each.
//!
//! Directly (the ticker binds, the listener connects), or through the bus (`service-framework
//! -s bus`): give the ticker's publisher the bus's publishers side and
//! `"options": {"connections": {"out": {"ticks": {"is_x_pub": true}}}}`, and the listener
//! the bus's subscribers side. `examples/ticks/` has both sets of files.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::handle::{Publisher, Subscriber};
use service_framework::{Ctx, ServiceDef, ServiceError};

/// One tick.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Tick {
    /// Its number, from 0.
    pub n: i64,
}

/// `ticker`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TickerConfig {
    /// How many ticks to publish.
    pub count: i64,
    /// Seconds between ticks (default 0.1).
    pub interval_s: Option<f64>,
}

/// The ticker's out-connection: topic `ticks`; it pauses 0.3 s after start so that
/// listeners already trying to connect are in place for the first tick.
pub const TICKS_OUT: Publisher<Tick> = Publisher::new("ticks")
    .topic("ticks")
    .wait_after_creation_s(Some(0.3));
/// The listener's in-connection.
pub const TICKS_IN: Subscriber<Tick> = Subscriber::new("ticks").topic("ticks");

/// The publisher (main mode).
pub fn ticker() -> ServiceDef {
    ServiceDef::new("ticker")
        .description("Publishes `count` ticks on topic `ticks`, one every `interval_s`")
        .config::<TickerConfig>()
        .publisher(TICKS_OUT)
        .main(|ctx: Ctx| async move {
            let config = ctx.config::<TickerConfig>();
            let every = Duration::from_secs_f64(config.interval_s.unwrap_or(0.1).clamp(0.0, 60.0));
            for n in 0..config.count {
                if ctx.is_stopping() {
                    break;
                }
                ctx.publish(&TICKS_OUT, &Tick { n }).await?;
                println!("Sent Tick: {n}");
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = ctx.stopping() => break,
                }
            }
            Ok::<_, ServiceError>(())
        })
}

/// The subscriber (service loop).
pub fn listener() -> ServiceDef {
    ServiceDef::new("tick_listener")
        .description("Prints each tick published on topic `ticks`")
        .subscriber(TICKS_IN, |tick, _ctx| async move {
            // One line per message, flushed, so a pipe or a test sees it at once.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "Got Tick: {{\"n\":{}}}", tick.n);
            let _ = out.flush();
            Ok::<_, ServiceError>(())
        })
}
