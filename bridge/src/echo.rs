//! The built-in `echo` plugin, with FrameX's endpoints:
//!
//! - `GET /api/v1/echo?message=..` -> the message;
//! - `POST /api/v1/echo_model?message=..` with body `{"id": int, "name": str = "echo"}` ->
//!   `"<message>,{id, name}"`;
//! - `GET /api/v1/echo_stream?message=..` -> one `message_chunk` event per character, then
//!   `finish`;
//! - function API `echo.EchoPlugin.confess(message)`.
//!
//! `plugins.echo.prefix` (optional) is put before every echoed message.

use futures::stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::StreamEvent;
use crate::error::ApiError;
use crate::plugin::{Api, CallType, Plugin, PluginMetadata};
use crate::registry::PluginCtx;

/// `plugins.echo`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct EchoConfig {
    /// Put before every echoed message.
    #[serde(default)]
    pub prefix: String,
}

/// The query of every echo API.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct EchoQuery {
    /// What to echo.
    pub message: String,
}

/// The body of `echo_model`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct EchoModel {
    /// An id.
    pub id: i64,
    /// A name.
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_name() -> String {
    "echo".into()
}

fn prefix(ctx: &PluginCtx) -> Result<String, ApiError> {
    Ok(ctx.config::<EchoConfig>()?.prefix)
}

/// The plugin.
pub fn plugin() -> Plugin {
    Plugin::new(
        PluginMetadata::new("echo")
            .version(env!("CARGO_PKG_VERSION"))
            .description("Repeats what you say")
            .author("service-framework")
            .url("https://example.invalid/service-framework-rs"),
    )
    .type_name("EchoPlugin")
    .config::<EchoConfig>()
    .api(
        Api::new("echo")
            .path("/echo")
            .get()
            .summary("Echo the message")
            .handle(|q: EchoQuery, ctx: PluginCtx| async move {
                Ok::<_, ApiError>(format!("{}{}", prefix(&ctx)?, q.message))
            }),
    )
    .api(
        Api::new("echo_model")
            .path("/echo_model")
            .post()
            .summary("Echo the message and the model")
            .handle_with_body(
                "model",
                |q: EchoQuery, model: EchoModel, ctx: PluginCtx| async move {
                    let m = serde_json::to_string(&model).unwrap_or_default();
                    Ok::<_, ApiError>(format!("{}{},{m}", prefix(&ctx)?, q.message))
                },
            ),
    )
    .api(
        Api::new("echo_stream")
            .path("/api/v1/echo_stream")
            .get()
            .summary("Echo the message one character per event")
            .event_type::<crate::TextChunk>()
            .handle_stream(|q: EchoQuery, ctx: PluginCtx| async move {
                let text = format!("{}{}", prefix(&ctx)?, q.message);
                let chars: Vec<_> = text
                    .chars()
                    .map(|c| Ok(StreamEvent::chunk(c.to_string())))
                    .collect();
                Ok::<_, ApiError>(stream::iter(chars))
            }),
    )
    .api(Api::new("confess").call_type(CallType::Func).handle(
        |q: EchoQuery, _ctx: PluginCtx| async move {
            Ok::<_, ApiError>(format!("confessed: {}", q.message))
        },
    ))
}
