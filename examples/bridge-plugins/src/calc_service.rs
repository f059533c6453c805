//! `calc-service`: a team's plugin shipped as a service on the bus, released and restarted on
//! its own. A bridge with `[bus.services.calc] control = "<its control endpoint>"` serves
//! `POST /api/v1/calc/add` (undeclared: the default path), `GET|POST /api/v1/math/mul`
//! and the event stream `GET /api/v1/calc/sums`, declared in its metadata (`http.<connection>`).
//!
//! ```text
//! service-framework -s calc-service -a calc_addresses.json
//! ```

use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use service_framework::prelude::{JsonSchema, Publisher, Replyer, ServiceDef, ServiceError};

/// Two numbers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Pair {
    pub a: i64,
    pub b: i64,
}

/// A result.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Total {
    pub total: i64,
}

const ADD: Replyer<Pair, Total> = Replyer::new("add");
const MUL: Replyer<Pair, Total> = Replyer::new("mul");
const SUMS: Publisher<Total> = Publisher::new("sums").topic("sums");

fn calc() -> ServiceDef {
    ServiceDef::new("calc")
        .description("Adds and multiplies")
        .version("2.0.0")
        .metadata("team", "numbers")
        .metadata(
            "http.mul",
            r#"{"path": "/math/mul", "methods": ["GET", "POST"], "summary": "Multiplies"}"#,
        )
        .metadata("http.sums", r#"{"path": "/calc/sums", "stream": true}"#)
        .publisher(SUMS)
        .replyer(ADD, |p, ctx| async move {
            if p.a < 0 {
                return Err(ServiceError::new(format!("negative a: {}", p.a)));
            }
            let t = Total { total: p.a + p.b };
            ctx.publish(&SUMS, &t).await?;
            Ok(t)
        })
        .replyer(MUL, |p, _ctx| async move { Ok(Total { total: p.a * p.b }) })
}

fn main() -> ExitCode {
    service_framework::cli::main(calc())
}
