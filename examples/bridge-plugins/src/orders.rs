//! Orders: FrameX's `orders` plugin, calling `inventory` through `call_plugin_api`.

use std::sync::Mutex;

use sf_bridge::{model, plugin, serde_json::json, ApiError, PluginCtx};

use crate::inventory::{inventory_api, Level};

/// An order.
#[model]
pub struct Order {
    pub sku: String,
    pub quantity: u32,
}

/// A placed order and the stock left.
#[model]
pub struct Placed {
    pub number: usize,
    pub left: Level,
}

#[derive(Debug, Default)]
pub struct Orders {
    placed: Mutex<Vec<Order>>,
}

#[plugin(name = "orders", version = "1.0.0", author = "team-orders",
         required_remote_apis = [inventory_api::Reserve, inventory_api::Watch, "GET /api/v1/inventory/items"])]
impl Orders {
    /// Places an order, reserving its stock (a typed call of a function API).
    #[on_request("/orders", methods = ["POST"])]
    async fn place(&self, order: Order, ctx: &PluginCtx) -> Result<Placed, ApiError> {
        let left = ctx
            .call_api(inventory_api::Reserve::new(
                order.sku.clone(),
                order.quantity,
            ))
            .await?;
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed.push(order);
        Ok(Placed {
            number: placed.len(),
            left,
        })
    }

    /// The SKUs running low (the JSON form of call_plugin_api, query default overridden).
    #[on_request("/orders/low")]
    async fn low(&self, ctx: &PluginCtx) -> Result<Vec<String>, ApiError> {
        let v = ctx
            .call_plugin_api("GET /api/v1/inventory/items", json!({"limit": 100}))
            .await?;
        let levels: Vec<Level> =
            sf_bridge::serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(levels
            .into_iter()
            .filter(|l| l.low)
            .map(|l| l.sku)
            .collect())
    }

    /// The inventory's stream, collected (a typed call of a stream).
    #[on_request("/orders/stocked")]
    async fn stocked(
        &self,
        #[default(1)] min: u32,
        ctx: &PluginCtx,
    ) -> Result<Vec<Level>, ApiError> {
        ctx.call_api(inventory_api::Watch::new().min(min)).await
    }
}
