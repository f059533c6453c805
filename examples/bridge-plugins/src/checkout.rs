//! Checkout: calls `pricing` through `call_plugin_api`, wherever `pricing` runs (in the
//! bridge, or on workers behind a broker: chosen by `[plugins.pricing.remote]`, not here).

use sf_bridge::serde_json::{self, json};
use sf_bridge::{model, plugin, ApiError, PluginCtx};

use crate::pricing::{pricing_api, Charge, Quote};

/// What to pay for.
#[model]
pub struct Payment {
    pub sku: String,
    pub quantity: u32,
    /// Simulated work on the pricing side.
    #[serde(default)]
    pub work_ms: u64,
}

#[derive(Debug, Default)]
pub struct Checkout;

#[plugin(name = "checkout", version = "1.0.0", author = "team-checkout",
         required_remote_apis = [pricing_api::Quote, "pricing.Pricing.charge"])]
impl Checkout {
    /// A quote (a typed call of an idempotent function API).
    #[on_request("/checkout/quote")]
    async fn quote(
        &self,
        sku: String,
        quantity: u32,
        #[default(0)] work_ms: u64,
        ctx: &PluginCtx,
    ) -> Result<Quote, ApiError> {
        ctx.call_api(pricing_api::Quote::new(sku, quantity).work_ms(work_ms))
            .await
    }

    /// Pays (the JSON form of call_plugin_api, of an API that is not idempotent).
    #[on_request("/checkout/pay", methods = ["POST"])]
    async fn pay(&self, payment: Payment, ctx: &PluginCtx) -> Result<Charge, ApiError> {
        let v = ctx
            .call_plugin_api(
                "pricing.Pricing.charge",
                json!({"sku": payment.sku, "quantity": payment.quantity, "work_ms": payment.work_ms}),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string()))
    }
}
