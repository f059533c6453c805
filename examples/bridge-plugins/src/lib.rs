//! The two plugins of issue 16, written with `#[plugin]` / `#[on_request]`: `inventory`
//! (typed config, a query with a default, a JSON body, two methods on one path, an SSE
//! stream, a function API) and `orders` (calls them with `call_plugin_api`, typed and JSON,
//! declared in `required_remote_apis`). Linking this crate registers both; `framex-pair-bridge`
//! is the stock bridge with them linked in. `calc-service` is the other way to ship a
//! plugin: a service on the bus, mounted by a bridge from `[bus.services.calc]` while it runs.
//! `pricing` and `checkout` show a plugin moved to workers behind a Majordomo broker by config
//! alone (`[plugins.pricing.remote]`, `framex-pair-bridge --serve-plugins pricing`).

pub mod checkout;
pub mod inventory;
pub mod orders;
pub mod pricing;
