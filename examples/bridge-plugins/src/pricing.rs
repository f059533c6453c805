//! Prices: a plugin written once that runs either inside the bridge or on workers behind a
//! Majordomo broker (`[plugins.pricing.remote]`, `framex-pair-bridge --serve-plugins
//! pricing`), with the same code. `served_by` says which process answered.

use std::time::Duration;

use futures::{stream, Stream};
use sf_bridge::{model, plugin, ApiError};

/// A quote.
#[model]
pub struct Quote {
    pub sku: String,
    pub quantity: u32,
    pub total_cents: u64,
    /// The process that priced it.
    pub served_by: u32,
}

/// A charge made.
#[model]
pub struct Charge {
    pub sku: String,
    pub total_cents: u64,
    /// The process that charged it.
    pub served_by: u32,
}

/// One line of the price list.
#[model]
pub struct Price {
    pub sku: String,
    pub unit_cents: u64,
}

#[derive(Debug, Default)]
pub struct Pricing;

const PRICES: [(&str, u64); 2] = [("apple", 30), ("pear", 45)];

fn unit(sku: &str) -> Result<u64, ApiError> {
    PRICES
        .iter()
        .find(|(s, _)| *s == sku)
        .map(|(_, p)| *p)
        .ok_or_else(|| ApiError::not_found(format!("no price for {sku:?}")))
}

/// A slow pricing engine, simulated: `work_ms` of work before the answer.
async fn work(work_ms: u64) {
    tokio::time::sleep(Duration::from_millis(work_ms.min(60_000))).await;
}

#[plugin(
    name = "pricing",
    version = "1.0.0",
    description = "Prices and charges",
    author = "team-pricing"
)]
impl Pricing {
    /// Prices a quantity (function API `pricing.Pricing.quote`). Idempotent: asking twice
    /// changes nothing, so a call whose worker died is given to another worker.
    #[on_request(call_type = "func", idempotent)]
    async fn quote(
        &self,
        sku: String,
        quantity: u32,
        #[default(0)] work_ms: u64,
    ) -> Result<Quote, ApiError> {
        work(work_ms).await;
        Ok(Quote {
            total_cents: unit(&sku)? * u64::from(quantity),
            sku,
            quantity,
            served_by: std::process::id(),
        })
    }

    /// Charges a quantity (function API `pricing.Pricing.charge`). Not idempotent: a call
    /// whose worker died fails rather than charge twice.
    #[on_request(call_type = "func")]
    async fn charge(
        &self,
        sku: String,
        quantity: u32,
        #[default(0)] work_ms: u64,
    ) -> Result<Charge, ApiError> {
        work(work_ms).await;
        Ok(Charge {
            total_cents: unit(&sku)? * u64::from(quantity),
            sku,
            served_by: std::process::id(),
        })
    }

    /// The price list, one event per SKU (a route of its own: the whole plugin moves).
    #[on_request("/pricing/list", stream, idempotent)]
    fn list(&self) -> impl Stream<Item = Price> {
        stream::iter(PRICES.map(|(sku, unit_cents)| Price {
            sku: sku.to_owned(),
            unit_cents,
        }))
    }
}
