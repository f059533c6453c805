//! The echo pair, mirroring the original's own test services.
//!
//! `echo_replyer` answers `{to_echo: str}` with `{echoed: str}` on in-connection `reply`.
//! `echo_requester` (main mode) sends `num_req_to_send` requests on out-connection `request`
//! and prints `Got Response: ...` for each reply.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use service_framework::handle::{Replyer, Requester};
use service_framework::{Ctx, ServiceDef, ServiceError};

/// The request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ToEcho {
    /// What to echo.
    pub to_echo: String,
}

/// The reply.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Echoed {
    /// What was echoed.
    pub echoed: String,
}

/// `echo_requester`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RequesterConfig {
    /// How many requests `main` sends.
    pub num_req_to_send: i64,
}

/// `echo_replyer`'s in-connection.
pub const REPLY: Replyer<ToEcho, Echoed> = Replyer::new("reply");
/// `echo_requester`'s out-connection.
pub const REQUEST: Requester<ToEcho, Echoed> = Requester::new("request");

/// The replyer.
pub fn replyer() -> ServiceDef {
    ServiceDef::new("echo_replyer")
        .description("Echoes {to_echo} back as {echoed}")
        .replyer(REPLY, |args, _ctx| async move {
            // format_args!: formatted only if DEBUG is on (this handler is benchmarked).
            service_framework::get_logger().debug(format_args!("echoing {:?}", args.to_echo));
            Ok::<_, ServiceError>(Echoed {
                echoed: args.to_echo,
            })
        })
}

/// The requester (main mode).
pub fn requester() -> ServiceDef {
    ServiceDef::new("echo_requester")
        .description("Sends num_req_to_send echo requests and prints each reply")
        .config::<RequesterConfig>()
        .requester(REQUEST)
        .main(|ctx: Ctx| async move {
            let config = ctx.config::<RequesterConfig>();
            for i in 0..config.num_req_to_send {
                if ctx.is_stopping() {
                    break;
                }
                let reply = ctx
                    .request(
                        &REQUEST,
                        &ToEcho {
                            to_echo: format!("Hello World {i}"),
                        },
                    )
                    .await?;
                println!("Got Response: {}", serde_json_line(&reply));
            }
            Ok(())
        })
}

fn serde_json_line(reply: &Echoed) -> String {
    service_framework::serde_json::to_string(reply).unwrap_or_default()
}
