//! `slow_replyer`: an echo replyer that takes its time, for watching a graceful stop.
//!
//! It answers `{to_echo: str, delay_ms?: int}` with `{echoed: str}` on in-connection `reply`
//! after sleeping `delay_ms` milliseconds, logging `slow request received` when a request
//! arrives. Its SIGINT and SIGTERM handlers log that they ran: stop it while a request is in
//! flight and the reply still arrives, then the process exits 0.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::{Ctx, ServiceDef, ServiceError};

use crate::echo::Echoed;

/// The request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SlowEcho {
    /// What to echo.
    pub to_echo: String,
    /// How long to take, in milliseconds (default 0, at most 60 s).
    #[serde(default)]
    pub delay_ms: u64,
}

/// The slow replyer.
pub fn replyer() -> ServiceDef {
    ServiceDef::new("slow_replyer")
        .description("Echoes {to_echo} back as {echoed} after delay_ms milliseconds")
        .replyer("reply", |args: SlowEcho, _ctx: Ctx| async move {
            let log = service_framework::get_logger();
            log.info(format!(
                "slow request received: {:?}, answering in {} ms",
                args.to_echo, args.delay_ms
            ));
            tokio::time::sleep(Duration::from_millis(args.delay_ms.min(60_000))).await;
            log.info(format!("slow request answered: {:?}", args.to_echo));
            Ok::<_, ServiceError>(Echoed {
                echoed: args.to_echo,
            })
        })
        .sigint_handler(|_ctx: Ctx| async move {
            service_framework::get_logger().info("slow_replyer: sigint_handler ran");
            Ok(())
        })
        .sigterm_handler(|_ctx: Ctx| async move {
            service_framework::get_logger().info("slow_replyer: sigterm_handler ran");
            Ok(())
        })
}
