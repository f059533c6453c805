//! The state pair: `state_source` (main mode) owns the delta state `prices` and applies a
//! scripted series of snapshots and deltas from its config; `state_mirror` follows `prices`
//! as a `delta_update_in` and answers `get_state` with `{"state": ..., "current_num": n}`.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::connections::Dynamic;
use service_framework::handle::{DeltaStateIn, DeltaStateOut, Replyer};
use service_framework::serde_json::{Map, Value};
use service_framework::{Ctx, ServiceDef, ServiceError};

/// One scripted update.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Update {
    /// True: `state` replaces everything. False: `state` holds changed keys, null deletes.
    #[serde(default)]
    pub is_snapshot: bool,
    /// The snapshot or the changes.
    pub state: Map<String, Value>,
}

/// `state_source`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SourceConfig {
    /// The updates to apply, in order.
    pub updates: Vec<Update>,
    /// Seconds to keep serving snapshot requests after the last update (default 0).
    pub hold_s: Option<f64>,
}

/// The value of `prices` (any map of names to values). `Dynamic` keeps whatever a source
/// sends as it came (a Python source's numpy arrays, Decimals, sets and UUIDs included), so
/// the mirror answers with the same values.
pub type Prices = BTreeMap<String, Dynamic>;

/// `get_state`'s (empty) args.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct GetState {}

/// `get_state`'s reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MirrorReply {
    /// The mirrored state.
    pub state: Prices,
    /// Its number (-1 before anything arrived).
    pub current_num: i64,
}

/// The state, as `state_source` owns it.
pub const PRICES_OUT: DeltaStateOut<Prices> = DeltaStateOut::new("prices");
/// The state, as `state_mirror` follows it.
pub const PRICES_IN: DeltaStateIn<Prices> = DeltaStateIn::new("prices");
/// `state_mirror`'s in-connection.
pub const GET_STATE: Replyer<GetState, MirrorReply> = Replyer::new("get_state");

/// The source (main mode).
pub fn source() -> ServiceDef {
    ServiceDef::new("state_source")
        .description("Applies the scripted updates in its config to the delta state `prices`")
        .config::<SourceConfig>()
        .delta_update_out(PRICES_OUT)
        .main(|ctx: Ctx| async move {
            let config = ctx.config::<SourceConfig>();
            for update in &config.updates {
                let n = if update.is_snapshot {
                    let whole: Prices = update
                        .state
                        .iter()
                        .map(|(k, v)| (k.clone(), Dynamic::from_json(v)))
                        .collect();
                    ctx.snapshot_state(&PRICES_OUT, &whole).await?
                } else {
                    ctx.update_state(&PRICES_OUT, &update.state).await?
                };
                service_framework::get_logger().info(format!("prices is now at {n}"));
            }
            let hold = Duration::from_secs_f64(config.hold_s.unwrap_or(0.0).clamp(0.0, 3600.0));
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = ctx.stopping() => {}
            }
            Ok(())
        })
}

/// The mirror (service loop).
pub fn mirror() -> ServiceDef {
    ServiceDef::new("state_mirror")
        .description("Follows the delta state `prices` and answers get_state with it")
        .delta_update_in(PRICES_IN)
        .replyer(GET_STATE, |_args, ctx| async move {
            let view = ctx.state_view(&PRICES_IN)?;
            let state: Prices = view
                .state
                .iter()
                .map(|(k, v)| (k.clone(), Dynamic(v.clone())))
                .collect();
            Ok::<_, ServiceError>(MirrorReply {
                state,
                current_num: view.current_num,
            })
        })
}
