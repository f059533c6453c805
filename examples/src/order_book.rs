//! The trading example of the original README, as three real services.
//!
//! - `order_book_feed` (main mode) keeps a simulated order book for one `symbol`, seeded from
//!   its config, and publishes the delta states `market_price` (`{min_ask, max_bid, time_ask,
//!   time_bid}`) and `order_book` (`{asks: {price: size}, bids: {price: size},
//!   updated_time}`). It also answers `cancel_order` (`{order_id}` -> `{order_id}`) by calling
//!   its external target `cancel_order_on_exchange`, whose handler asks the exchange over the
//!   requester `exchange`.
//! - `exchange_sim` is the exchange: it answers `cancel` for its open orders and refuses an
//!   unknown (or already cancelled) id with `not_found`.
//! - `order_book_mirror` follows both states and answers `book` with them.
//!
//! Prices and sizes are [`Dec`]: a `rust_decimal::Decimal` that goes on the wire as Python
//! 0.0.18 puts a `Decimal` there, `{"__decimal__": true, "as_str": "101.25"}`, so a Python
//! follower reads them back as `Decimal` and "101.25" stays "101.25" (and "100.50" keeps
//! its zero). The price levels of `asks` and `bids` are keyed by the price's text
//! ([`PriceKey`]): Python's msgpack refuses non-string map keys. Times are RFC 3339 text
//! (Python 0.0.18 cannot send or receive a datetime).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use service_framework::handle::{DeltaStateIn, DeltaStateOut, ExternalTarget, Replyer, Requester};
use service_framework::{Ctx, ServiceDef, ServiceError};

// ---------------------------------------------------------------------------------------------
// Decimals on the wire

/// A decimal number, on the wire as Python 0.0.18's `Decimal`:
/// `{"__decimal__": true, "as_str": "101.25"}`. It also reads a plain string or integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dec(pub Decimal);

/// A decimal used as a map key: its text (`"101.25"`), since Python's msgpack refuses
/// non-string keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PriceKey(pub Decimal);

fn parse_decimal(s: &str) -> Result<Decimal, String> {
    Decimal::from_str(s)
        .or_else(|_| Decimal::from_scientific(s))
        .map_err(|e| format!("{s:?} is not a finite decimal: {e}"))
}

impl FromStr for Dec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_decimal(s).map(Dec)
    }
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PriceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Dec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("__decimal__", &true)?;
        m.serialize_entry("as_str", &self.0.to_string())?;
        m.end()
    }
}

/// The forms a decimal is read from.
#[derive(Deserialize)]
#[serde(untagged)]
enum DecForm {
    Tagged {
        #[serde(rename = "__decimal__")]
        tag: bool,
        as_str: String,
    },
    Text(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match DecForm::deserialize(d).map_err(|_| {
            D::Error::custom(
                "expected a Decimal ({\"__decimal__\": true, \"as_str\": ..}) or its text",
            )
        })? {
            DecForm::Tagged { tag: true, as_str } | DecForm::Text(as_str) => {
                parse_decimal(&as_str).map(Dec).map_err(D::Error::custom)
            }
            DecForm::Tagged { tag: false, .. } => Err(D::Error::custom("\"__decimal__\" is false")),
            DecForm::Int(i) => Ok(Dec(Decimal::from(i))),
        }
    }
}

impl Serialize for PriceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PriceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_decimal(&s)
            .map(PriceKey)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Dec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Decimal".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A decimal, as Python's Decimal goes on the wire",
            "type": "object",
            "properties": {
                "__decimal__": {"const": true},
                "as_str": {"type": "string", "examples": ["101.25"]}
            },
            "required": ["__decimal__", "as_str"]
        })
    }
}

impl JsonSchema for PriceKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PriceKey".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A decimal price as text",
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]+)?$"
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The models

/// Price levels: price (as text) -> size.
pub type Levels = BTreeMap<PriceKey, Dec>;

/// The delta state `market_price`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MarketPrice {
    /// The lowest ask.
    pub min_ask: Dec,
    /// The highest bid.
    pub max_bid: Dec,
    /// When `min_ask` last changed (RFC 3339, UTC).
    pub time_ask: String,
    /// When `max_bid` last changed (RFC 3339, UTC).
    pub time_bid: String,
}

/// The changed keys of `market_price` (a delta).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MarketPriceChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    min_ask: Option<Dec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bid: Option<Dec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_ask: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_bid: Option<String>,
}

/// The delta state `order_book`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderBook {
    /// Asks: price -> size.
    pub asks: Levels,
    /// Bids: price -> size.
    pub bids: Levels,
    /// When the book last changed (RFC 3339, UTC).
    pub updated_time: String,
}

/// The changed keys of `order_book` (a delta: a changed side is sent whole).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrderBookChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    asks: Option<Levels>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bids: Option<Levels>,
    updated_time: String,
}

/// `cancel_order`'s args and reply (the original's `{order_id: str}` both ways), and the
/// external target's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelOrder {
    /// The order to cancel.
    pub order_id: String,
}

/// What the feed asks the exchange (`exchange` -> `cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExchangeCancel {
    /// The order to cancel.
    pub order_id: String,
    /// The market it is on.
    pub symbol: String,
}

/// The exchange's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExchangeCancelled {
    /// The cancelled order.
    pub order_id: String,
    /// Always `"cancelled"`.
    pub status: String,
}

/// `book`'s (empty) args.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct GetBook {}

/// The numbers of the mirrored states (-1 before anything arrived).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CurrentNums {
    /// `market_price`'s.
    pub market_price: i64,
    /// `order_book`'s.
    pub order_book: i64,
}

/// `book`'s reply: the mirrored states (null before the first arrived) and their numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BookReply {
    /// The mirrored `market_price`.
    pub market_price: Option<MarketPrice>,
    /// The mirrored `order_book`.
    pub order_book: Option<OrderBook>,
    /// Their numbers.
    pub current_num: CurrentNums,
}

/// `order_book_feed`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct FeedConfig {
    /// The market, e.g. "BTC-USD".
    pub symbol: String,
    /// The simulation's seed (default 1): the same seed gives the same prices and sizes.
    pub seed: Option<u64>,
    /// Price levels per side (default 5, 1 to 50).
    pub levels: Option<u32>,
    /// How many updates to publish before holding still (default: until stopped).
    pub updates: Option<u64>,
    /// Milliseconds between updates (default 500).
    pub interval_ms: Option<u64>,
}

/// `exchange_sim`'s config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExchangeConfig {
    /// The open orders, which `cancel` accepts once each (default "o-1", "o-2", "o-3").
    pub open_orders: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Handles

/// The feed's market price (out).
pub const MARKET_PRICE_OUT: DeltaStateOut<MarketPrice> = DeltaStateOut::new("market_price");
/// The feed's order book (out).
pub const ORDER_BOOK_OUT: DeltaStateOut<OrderBook> = DeltaStateOut::new("order_book");
/// The mirror's market price (in).
pub const MARKET_PRICE_IN: DeltaStateIn<MarketPrice> = DeltaStateIn::new("market_price");
/// The mirror's order book (in).
pub const ORDER_BOOK_IN: DeltaStateIn<OrderBook> = DeltaStateIn::new("order_book");
/// The feed's in-connection.
pub const CANCEL_ORDER: Replyer<CancelOrder, CancelOrder> = Replyer::new("cancel_order");
/// The feed's external target: the exchange call (the original's `cancel_order_on_coinbase`).
pub const CANCEL_ORDER_ON_EXCHANGE: ExternalTarget<CancelOrder, CancelOrder> =
    ExternalTarget::new("cancel_order_on_exchange");
/// The feed's requester to the exchange, used inside the external target.
pub const EXCHANGE: Requester<ExchangeCancel, ExchangeCancelled> =
    Requester::new("exchange").timeout_s(Some(2.0));
/// The exchange's in-connection.
pub const CANCEL: Replyer<ExchangeCancel, ExchangeCancelled> = Replyer::new("cancel");
/// The mirror's in-connection.
pub const BOOK: Replyer<GetBook, BookReply> = Replyer::new("book");

// ---------------------------------------------------------------------------------------------
// The simulation

/// The price step: 0.25.
const TICK_CENTS: i64 = 25;
/// Where the mid starts, in ticks: 100.00.
const START_MID: i64 = 400;

/// A deterministic simulated order book: prices on a 0.25 grid around a mid that wanders,
/// sizes in thousandths. The same seed and levels give the same book after the same number
/// of steps.
#[derive(Debug, Clone)]
pub struct Simulation {
    rng: u64,
    levels: i64,
    /// Asks are at mid+1 ..= mid+levels ticks, bids at mid-levels+1 ..= mid.
    mid: i64,
    asks: BTreeMap<i64, i64>,
    bids: BTreeMap<i64, i64>,
}

/// Which sides a step changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The asks changed.
    pub asks: bool,
    /// The bids changed.
    pub bids: bool,
}

impl Simulation {
    /// A full book of `levels` per side.
    pub fn new(seed: u64, levels: u32) -> Simulation {
        let levels = i64::from(levels.clamp(1, 50));
        let mut sim = Simulation {
            rng: seed,
            levels,
            mid: START_MID,
            asks: BTreeMap::new(),
            bids: BTreeMap::new(),
        };
        for k in 0..levels {
            let size = sim.size();
            sim.asks.insert(START_MID + 1 + k, size);
            let size = sim.size();
            sim.bids.insert(START_MID - k, size);
        }
        sim
    }

    /// `new`, then `steps` steps.
    pub fn after(seed: u64, levels: u32, steps: u64) -> Simulation {
        let mut sim = Simulation::new(seed, levels);
        for _ in 0..steps {
            sim.step();
        }
        sim
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n.unsigned_abs()) as i64
    }

    /// 0.001 to 5.000, in thousandths.
    fn size(&mut self) -> i64 {
        1 + self.below(5000)
    }

    /// One market event: the mid moves a tick (1 in 10), a level empties (2 in 10) or a
    /// level's size changes (a missing level appears).
    pub fn step(&mut self) -> Changed {
        let event = self.below(10);
        if event == 0 {
            self.mid += if self.below(2) == 0 { 1 } else { -1 };
            let (mid, levels) = (self.mid, self.levels);
            self.asks.retain(|p, _| *p > mid && *p <= mid + levels);
            self.bids.retain(|p, _| *p <= mid && *p > mid - levels);
            let size = self.size();
            self.asks.insert(mid + 1, size);
            let size = self.size();
            self.bids.insert(mid, size);
            return Changed {
                asks: true,
                bids: true,
            };
        }
        let asks = self.below(2) == 0;
        let side_len = if asks {
            self.asks.len()
        } else {
            self.bids.len()
        };
        if event < 3 && side_len > 1 {
            let nth = self.below(side_len as i64) as usize;
            let side = if asks { &mut self.asks } else { &mut self.bids };
            if let Some(price) = side.keys().nth(nth).copied() {
                side.remove(&price);
            }
        } else {
            let k = self.below(self.levels);
            let size = self.size();
            if asks {
                self.asks.insert(self.mid + 1 + k, size);
            } else {
                self.bids.insert(self.mid - k, size);
            }
        }
        Changed { asks, bids: !asks }
    }

    fn price(ticks: i64) -> Decimal {
        Decimal::new(ticks * TICK_CENTS, 2)
    }

    fn levels_of(side: &BTreeMap<i64, i64>) -> Levels {
        side.iter()
            .map(|(p, s)| (PriceKey(Self::price(*p)), Dec(Decimal::new(*s, 3))))
            .collect()
    }

    /// The asks, as published.
    pub fn asks(&self) -> Levels {
        Self::levels_of(&self.asks)
    }

    /// The bids, as published.
    pub fn bids(&self) -> Levels {
        Self::levels_of(&self.bids)
    }

    /// The lowest ask (a side is never empty).
    pub fn min_ask(&self) -> Dec {
        Dec(Self::price(
            *self.asks.keys().next().unwrap_or(&(self.mid + 1)),
        ))
    }

    /// The highest bid.
    pub fn max_bid(&self) -> Dec {
        Dec(Self::price(
            *self.bids.keys().next_back().unwrap_or(&self.mid),
        ))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

// ---------------------------------------------------------------------------------------------
// The services

/// The feed (main mode): publishes the simulated book, answers `cancel_order`.
pub fn feed() -> ServiceDef {
    ServiceDef::new("order_book_feed")
        .description(
            "Publishes a simulated order book for one symbol as the delta states market_price \
             and order_book; cancel_order cancels on the exchange through an external target",
        )
        .config::<FeedConfig>()
        .delta_update_out(MARKET_PRICE_OUT)
        .delta_update_out(ORDER_BOOK_OUT)
        .requester(EXCHANGE)
        .external_target(CANCEL_ORDER_ON_EXCHANGE, |args, ctx| async move {
            // The one place that talks to the exchange: a real deployment puts its client
            // call here (the original's `CbproClient.cancel_order`); this one asks exchange_sim.
            let symbol = ctx.config::<FeedConfig>().symbol.clone();
            let done = ctx
                .request(
                    &EXCHANGE,
                    &ExchangeCancel {
                        order_id: args.order_id,
                        symbol,
                    },
                )
                .await?;
            Ok(CancelOrder {
                order_id: done.order_id,
            })
        })
        .replyer(CANCEL_ORDER, |args, ctx| async move {
            if args.order_id.trim().is_empty() {
                return Err(ServiceError::invalid_args("order_id: empty"));
            }
            // An exchange refusal comes back as dependency_failed, naming the target, the
            // exchange connection and the exchange's own code and message.
            let cancelled = ctx.request(&CANCEL_ORDER_ON_EXCHANGE, &args).await?;
            service_framework::get_logger().info(format!("cancelled {:?}", cancelled.order_id));
            Ok(cancelled)
        })
        .main(run_feed)
}

async fn run_feed(ctx: Ctx) -> Result<(), ServiceError> {
    let config = ctx.config::<FeedConfig>();
    let log = service_framework::get_logger();
    let mut sim = Simulation::new(config.seed.unwrap_or(1), config.levels.unwrap_or(5));
    let interval = Duration::from_millis(config.interval_ms.unwrap_or(500));

    let t = now();
    let mut market = MarketPrice {
        min_ask: sim.min_ask(),
        max_bid: sim.max_bid(),
        time_ask: t.clone(),
        time_bid: t.clone(),
    };
    let mut market_num = ctx.snapshot_state(&MARKET_PRICE_OUT, &market).await?;
    let book = OrderBook {
        asks: sim.asks(),
        bids: sim.bids(),
        updated_time: t,
    };
    let mut book_num = ctx.snapshot_state(&ORDER_BOOK_OUT, &book).await?;
    log.info(format!(
        "{}: bid {} / ask {}",
        config.symbol, market.max_bid, market.min_ask
    ));

    let mut published = 0u64;
    while config.updates.is_none_or(|n| published < n) {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = ctx.stopping() => return Ok(()),
        }
        let changed = sim.step();
        let t = now();
        book_num = ctx
            .update_state(
                &ORDER_BOOK_OUT,
                &OrderBookChanges {
                    asks: changed.asks.then(|| sim.asks()),
                    bids: changed.bids.then(|| sim.bids()),
                    updated_time: t.clone(),
                },
            )
            .await?;
        let mut changes = MarketPriceChanges::default();
        if sim.min_ask() != market.min_ask {
            market.min_ask = sim.min_ask();
            changes.min_ask = Some(market.min_ask);
            changes.time_ask = Some(t.clone());
        }
        if sim.max_bid() != market.max_bid {
            market.max_bid = sim.max_bid();
            changes.max_bid = Some(market.max_bid);
            changes.time_bid = Some(t);
        }
        if changes.min_ask.is_some() || changes.max_bid.is_some() {
            market_num = ctx.update_state(&MARKET_PRICE_OUT, &changes).await?;
            log.info(format!(
                "{}: bid {} / ask {}",
                config.symbol, market.max_bid, market.min_ask
            ));
        }
        published += 1;
    }
    log.info(format!(
        "{}: {published} updates published; order_book at {book_num}, market_price at \
         {market_num}; holding until stopped",
        config.symbol
    ));
    ctx.stopping().await;
    Ok(())
}

/// The simulated exchange: cancels each of its open orders once.
pub fn exchange() -> ServiceDef {
    let open: Arc<Mutex<Option<BTreeSet<String>>>> = Arc::default();
    ServiceDef::new("exchange_sim")
        .description(
            "A simulated exchange: cancel accepts each open order once, not_found otherwise",
        )
        .config::<ExchangeConfig>()
        .replyer(CANCEL, move |args, ctx| {
            let open = open.clone();
            async move {
                let removed = {
                    let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
                    let open = open.get_or_insert_with(|| {
                        ctx.config::<ExchangeConfig>()
                            .open_orders
                            .clone()
                            .unwrap_or_else(|| vec!["o-1".into(), "o-2".into(), "o-3".into()])
                            .into_iter()
                            .collect()
                    });
                    open.remove(&args.order_id)
                };
                if !removed {
                    return Err(ServiceError::not_found(format!(
                        "no open order {:?} on {}",
                        args.order_id, args.symbol
                    )));
                }
                service_framework::get_logger()
                    .info(format!("{}: cancelled {:?}", args.symbol, args.order_id));
                Ok(ExchangeCancelled {
                    order_id: args.order_id,
                    status: "cancelled".into(),
                })
            }
        })
}

/// An in-state as its typed value; `None` before anything arrived. The out side answers a
/// snapshot request made before its first `snapshot_state` with its empty state (number 0, as
/// a Python 0.0.18 out side answers every time), so an empty state is "nothing yet" too.
fn typed<T: serde::de::DeserializeOwned>(
    name: &str,
    view: &service_framework::StateView,
) -> Result<Option<T>, ServiceError> {
    if view.current_num < 0 || view.state.is_empty() {
        return Ok(None);
    }
    service_framework::states::from_state_map(&view.state)
        .map(Some)
        .map_err(|e| ServiceError::internal(format!("state {name:?}: {e}")))
}

/// The mirror: follows both states, answers `book`.
pub fn mirror() -> ServiceDef {
    ServiceDef::new("order_book_mirror")
        .description("Follows market_price and order_book and answers book with them")
        .delta_update_in(MARKET_PRICE_IN)
        .delta_update_in(ORDER_BOOK_IN)
        .replyer(BOOK, |_args, ctx| async move {
            let market = ctx.state_view(&MARKET_PRICE_IN)?;
            let book = ctx.state_view(&ORDER_BOOK_IN)?;
            Ok(BookReply {
                market_price: typed(MARKET_PRICE_IN.name(), &market)?,
                order_book: typed(ORDER_BOOK_IN.name(), &book)?,
                current_num: CurrentNums {
                    market_price: market.current_num,
                    order_book: book.current_num,
                },
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_goes_on_the_wire_as_python_puts_it_and_comes_back_exact() {
        let d: Dec = "100.50".parse().unwrap();
        let bytes = service_framework::connections::wire::encode(&d).unwrap();
        let back: service_framework::connections::Dynamic =
            service_framework::connections::wire::decode(&bytes).unwrap();
        assert_eq!(
            back.to_json(),
            service_framework::serde_json::json!({"__decimal__": true, "as_str": "100.50"})
        );
        let again: Dec = service_framework::connections::wire::decode(&bytes).unwrap();
        assert_eq!(again.to_string(), "100.50");
    }

    #[test]
    fn the_simulation_is_deterministic_and_never_crossed() {
        let a = Simulation::after(7, 5, 500);
        let b = Simulation::after(7, 5, 500);
        assert_eq!(a.asks(), b.asks());
        assert_eq!(a.bids(), b.bids());
        let mut sim = Simulation::new(3, 2);
        for _ in 0..2000 {
            sim.step();
            assert!(sim.max_bid() < sim.min_ask());
            assert!(!sim.asks.is_empty() && !sim.bids.is_empty());
        }
    }
}
