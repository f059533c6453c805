//! The full-state pair: `weather_source` (main mode) owns the full state `weather` and
//! publishes it whole after each scripted change from its config; `weather_mirror` follows
//! `weather` as a `full_update_in` and answers `get_weather` with `{"state": .., "current_num": n}`.
//! A mirror that starts late is answered at once: the out side publishes the state to each
//! new subscriber.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::connections::Dynamic;
use service_framework::handle::{FullStateIn, FullStateOut, Replyer};
use service_framework::serde_json::{Map, Value};
use service_framework::{Ctx, ServiceDef, ServiceError};

/// The value of `weather`: names to any values.
pub type Weather = BTreeMap<String, Dynamic>;

/// `weather_source`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SourceConfig {
    /// The whole states to publish, in order.
    pub states: Vec<Map<String, Value>>,
    /// Seconds between them (default 0).
    pub interval_s: Option<f64>,
    /// Seconds to stay up after the last one (default 0), answering new mirrors.
    pub hold_s: Option<f64>,
}

/// `get_weather`'s (empty) args.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct GetWeather {}

/// `get_weather`'s reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WeatherReply {
    /// The mirrored state.
    pub state: Weather,
    /// The number of the last whole state received: 0 for the first, -1 before any.
    pub current_num: i64,
}

/// The state, as the source owns it.
pub const WEATHER_OUT: FullStateOut<Weather> = FullStateOut::new("weather");
/// The state, as the mirror follows it.
pub const WEATHER_IN: FullStateIn<Weather> = FullStateIn::new("weather");
/// The mirror's in-connection.
pub const GET_WEATHER: Replyer<GetWeather, WeatherReply> = Replyer::new("get_weather");

/// The source (main mode).
pub fn source() -> ServiceDef {
    ServiceDef::new("weather_source")
        .description("Publishes the whole states in its config as the full state `weather`")
        .config::<SourceConfig>()
        .full_update_out(WEATHER_OUT)
        .main(|ctx: Ctx| async move {
            let config = ctx.config::<SourceConfig>();
            let every = Duration::from_secs_f64(config.interval_s.unwrap_or(0.0).clamp(0.0, 60.0));
            for (i, state) in config.states.iter().enumerate() {
                let whole: Weather = state
                    .iter()
                    .map(|(k, v)| (k.clone(), Dynamic::from_json(v)))
                    .collect();
                ctx.set_state(&WEATHER_OUT, &whole).await?;
                service_framework::get_logger().info(format!("weather is now state {i}"));
                tokio::time::sleep(every).await;
            }
            let hold = Duration::from_secs_f64(config.hold_s.unwrap_or(0.0).clamp(0.0, 3600.0));
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = ctx.stopping() => {}
            }
            Ok::<_, ServiceError>(())
        })
}

/// The mirror (service loop).
pub fn mirror() -> ServiceDef {
    ServiceDef::new("weather_mirror")
        .description("Follows the full state `weather` and answers get_weather with it")
        .full_update_in(WEATHER_IN)
        .replyer(GET_WEATHER, |_args, ctx| async move {
            let view = ctx.state_view(&WEATHER_IN)?;
            let state: Weather = view
                .state
                .iter()
                .map(|(k, v)| (k.clone(), Dynamic(v.clone())))
                .collect();
            Ok::<_, ServiceError>(WeatherReply {
                state,
                current_num: view.current_num,
            })
        })
}
