//! Stock levels: FrameX's `inventory` plugin.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::{stream, Stream};
use sf_bridge::{model, plugin, ApiError};

/// `[plugins.inventory]`.
#[model]
pub struct InventoryConfig {
    pub warehouse: String,
    #[serde(default)]
    pub low_stock: u32,
}

/// Stock to add.
#[model]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
}

/// One SKU's level.
#[model]
pub struct Level {
    pub sku: String,
    pub quantity: u32,
    pub low: bool,
}

#[derive(Debug)]
pub struct Inventory {
    config: InventoryConfig,
    stock: Mutex<BTreeMap<String, u32>>,
}

#[plugin(name = "inventory", version = "1.0.0", description = "Stock levels",
         author = "team-inventory", config = InventoryConfig)]
impl Inventory {
    fn new(config: InventoryConfig) -> Self {
        let stock = [("apple".to_owned(), 10), ("pear".to_owned(), 2)].into();
        Inventory {
            config,
            stock: Mutex::new(stock),
        }
    }

    fn level(&self, sku: &str, quantity: u32) -> Level {
        Level {
            sku: sku.to_owned(),
            quantity,
            low: quantity <= self.config.low_stock,
        }
    }

    fn levels(&self) -> Vec<Level> {
        let stock = self.stock.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Level> = stock.iter().map(|(s, q)| self.level(s, *q)).collect();
        v.sort_by_key(|l| l.quantity);
        v
    }

    /// The levels, lowest first.
    #[on_request("/inventory/items", tags = ["stock"])]
    async fn items(&self, #[default(10)] limit: usize) -> Vec<Level> {
        self.levels().into_iter().take(limit).collect()
    }

    /// Adds stock (the same path, another method).
    #[on_request("/inventory/items", methods = ["POST"], tags = ["stock"])]
    async fn restock(&self, item: Item) -> Level {
        let mut stock = self.stock.lock().unwrap_or_else(|p| p.into_inner());
        let q = stock.entry(item.sku.clone()).or_default();
        *q += item.quantity;
        self.level(&item.sku, *q)
    }

    /// Every level at or above `min`, one event each.
    #[on_request("/inventory/watch", stream)]
    fn watch(&self, #[default(0)] min: u32) -> impl Stream<Item = Level> {
        stream::iter(self.levels().into_iter().filter(move |l| l.quantity >= min))
    }

    /// Takes stock out (function API `inventory.Inventory.reserve`).
    #[on_request(call_type = "func")]
    async fn reserve(&self, sku: String, quantity: u32) -> Result<Level, ApiError> {
        let mut stock = self.stock.lock().unwrap_or_else(|p| p.into_inner());
        let q = stock
            .get_mut(&sku)
            .ok_or_else(|| ApiError::not_found(format!("no SKU {sku:?}")))?;
        if *q < quantity {
            return Err(ApiError::bad_request(format!("only {q} of {sku} left")));
        }
        *q -= quantity;
        Ok(self.level(&sku, *q))
    }
}
