//! The order book example as processes: `exchange_sim`, `order_book_feed` (main mode) and
//! `order_book_mirror`, started as a user starts them (`service-framework -s NAME ...`). The
//! mirror converges to the feed's simulated book with its Decimals exact, `cancel_order`
//! goes through the external target to the exchange, an unknown order comes back as
//! `dependency_failed`, and SIGTERM stops each with exit 0.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_framework::connections::{Error, ErrorCode, WorkflowId};
use sf_examples::order_book::{BookReply, Simulation};
use support::*;

const SEED: u64 = 7;
const LEVELS: u32 = 4;
const UPDATES: u64 = 40;

/// `N` distinct TCP ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// `service-framework ARGS` as a process.
fn sf(args: &[&str]) -> Proc {
    let mut cmd = Command::new(service_framework());
    cmd.args(args);
    Proc::spawn(cmd)
}

fn at(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The mirror's addresses.json: its `book` replyer and both in-states, from the ports of
/// `[market_price publisher, its snapshot replyer, order_book publisher, its snapshot
/// replyer, book]`.
fn mirror_addresses(dir: &Scratch, ports: [u16; 5]) -> std::path::PathBuf {
    let [mp_pub, mp_rep, ob_pub, ob_rep, book] = ports;
    dir.write(
        "mirror.json",
        &json!({
            "connections": {"in": {"book": {"replyer": at(book)}}},
            "states": {"in": {"market_price": {"subscriber": at(mp_pub), "requester": at(mp_rep)},
                              "order_book": {"subscriber": at(ob_pub), "requester": at(ob_rep)}}}
        })
        .to_string(),
    )
}

/// The three services, wired as examples/order_book/*_addresses.json wire them (on free
/// ports).
struct Running {
    exchange: Proc,
    feed: Proc,
    mirror: Proc,
    cancel_order: String,
    book: String,
}

fn start(dir: &Scratch) -> Running {
    let [cancel, cancel_order, mp_pub, mp_rep, ob_pub, ob_rep, book] = free_ports();
    let exchange_file = dir.write(
        "exchange.json",
        &json!({"connections": {"in": {"cancel": {"replyer": at(cancel)}}}}).to_string(),
    );
    let feed_file = dir.write(
        "feed.json",
        &json!({
            "connections": {"in": {"cancel_order": {"replyer": at(cancel_order)}},
                            "out": {"exchange": {"requester": at(cancel)}}},
            "states": {"out": {"market_price": {"publisher": at(mp_pub), "replyer": at(mp_rep)},
                               "order_book": {"publisher": at(ob_pub), "replyer": at(ob_rep)}}}
        })
        .to_string(),
    );
    let feed_config = dir.write(
        "feed_config.json",
        &json!({"symbol": "BTC-USD", "seed": SEED, "levels": LEVELS, "updates": UPDATES,
                "interval_ms": 10})
        .to_string(),
    );
    let mirror_file = mirror_addresses(dir, [mp_pub, mp_rep, ob_pub, ob_rep, book]);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    let exchange_config = dir.write(
        "exchange_config.json",
        &json!({"open_orders": ["o-1", "o-2"]}).to_string(),
    );
    let mut exchange = sf(&[
        "-s",
        "exchange_sim",
        "-a",
        &path(&exchange_file),
        "-c",
        &path(&exchange_config),
    ]);
    exchange.wait_serving(START);
    let mut mirror = sf(&["-s", "order_book_mirror", "-a", &path(&mirror_file)]);
    mirror.wait_serving(START);
    let mut feed = sf(&[
        "-s",
        "order_book_feed",
        "-a",
        &path(&feed_file),
        "-c",
        &path(&feed_config),
        "-m",
    ]);
    feed.wait_serving(START);
    Running {
        exchange,
        feed,
        mirror,
        cancel_order: at(cancel_order),
        book: at(book),
    }
}

fn call(endpoint: &str, args: &Value) -> Result<Value, Error> {
    request(endpoint, args, WorkflowId::None)
}

/// The numbers the feed logs when it has published everything.
fn final_nums(feed: &mut Proc) -> (i64, i64) {
    let line = feed.wait_for_stderr("updates published", Duration::from_secs(15));
    let num_after = |key: &str| -> i64 {
        let at = line
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
            + key.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number after {key} in {line:?}"))
    };
    (num_after("order_book at "), num_after("market_price at "))
}

/// Asks the mirror until its numbers reach the feed's, within 10 s.
fn converged(book: &str, order_book_num: i64, market_price_num: i64) -> (BookReply, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let raw = call(book, &json!({})).expect("book answers");
        let reply: BookReply = serde_json::from_value(raw.clone()).expect("book's reply");
        if reply.current_num.order_book == order_book_num
            && reply.current_num.market_price == market_price_num
        {
            return (reply, raw);
        }
        assert!(
            Instant::now() < deadline,
            "the mirror did not reach order_book {order_book_num} / market_price \
             {market_price_num}: {raw}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(p: &mut Proc, name: &str) {
    p.signal("TERM");
    let status = p.finish(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "{name} after SIGTERM: {status}\n{}",
        p.stderr_text()
    );
}

#[test]
fn the_mirror_converges_cancel_goes_to_the_exchange_and_sigterm_stops_each() {
    let dir = Scratch::new("order-book");
    let mut run = start(&dir);

    // The mirror converges to the feed's final book, Decimals exact.
    let (order_book_num, market_price_num) = final_nums(&mut run.feed);
    assert_eq!(
        order_book_num,
        UPDATES as i64 + 1,
        "one snapshot, then one delta per update (the out side numbers from 1)"
    );
    let (reply, raw) = converged(&run.book, order_book_num, market_price_num);
    let sim = Simulation::after(SEED, LEVELS, UPDATES);
    let book = reply.order_book.expect("order_book mirrored");
    let market = reply.market_price.expect("market_price mirrored");
    assert_eq!(book.asks, sim.asks(), "{raw}");
    assert_eq!(book.bids, sim.bids(), "{raw}");
    assert_eq!(market.min_ask, sim.min_ask(), "{raw}");
    assert_eq!(market.max_bid, sim.max_bid(), "{raw}");
    // On the wire (and in the JSON view) a price is Python's Decimal map, its text exact:
    // two decimals for prices ("100.50", not 100.5), three for sizes.
    let min_ask = &raw["market_price"]["min_ask"];
    assert_eq!(min_ask["__decimal__"], json!(true), "{raw}");
    assert_eq!(min_ask["as_str"], json!(sim.min_ask().to_string()), "{raw}");
    let text = min_ask["as_str"].as_str().unwrap();
    assert_eq!(text.split('.').nth(1).map(str::len), Some(2), "{text}");
    for (price, size) in raw["order_book"]["asks"].as_object().expect("asks") {
        assert_eq!(price.split('.').nth(1).map(str::len), Some(2), "{price}");
        assert_eq!(size["__decimal__"], json!(true), "{raw}");
        let size = size["as_str"].as_str().expect("a size's text");
        assert_eq!(size.split('.').nth(1).map(str::len), Some(3), "{size}");
    }
    assert!(book.updated_time.ends_with('Z'), "{}", book.updated_time);
    assert!(market.time_ask.ends_with('Z'), "{}", market.time_ask);

    // cancel_order: through the external target and the exchange.
    let ok = call(&run.cancel_order, &json!({"order_id": "o-1"})).expect("o-1 cancels");
    assert_eq!(ok, json!({"order_id": "o-1"}));
    run.exchange
        .wait_for_stderr(r#"BTC-USD: cancelled "o-1""#, SHORT);

    // An unknown order, and one already cancelled: the exchange's not_found, reported to
    // the caller as a failed dependency (never as the caller's invalid args).
    for (id, why) in [("o-404", "unknown"), ("o-1", "already cancelled")] {
        match call(&run.cancel_order, &json!({"order_id": id})) {
            Err(Error::Remote(e)) => {
                assert_eq!(e.code, ErrorCode::DependencyFailed, "{why}: {e:?}");
                for part in [
                    "cancel_order_on_exchange",
                    "\"exchange\"",
                    "not_found",
                    &format!("no open order \"{id}\" on BTC-USD"),
                ] {
                    assert!(e.message.contains(part), "{why}: {part:?} in {e:?}");
                }
            }
            other => panic!("{why} {id}: expected a remote error, got {other:?}"),
        }
    }
    // An empty id is the caller's mistake.
    match call(&run.cancel_order, &json!({"order_id": " "})) {
        Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::InvalidArgs, "{e:?}"),
        other => panic!("expected invalid_args, got {other:?}"),
    }

    stop(&mut run.mirror, "order_book_mirror");
    stop(&mut run.feed, "order_book_feed");
    stop(&mut run.exchange, "exchange_sim");
}

/// The mirror may ask for a snapshot after the feed's out side is up but before its first
/// `snapshot_state`: the out side answers with its empty state at number 0. The mirror must
/// answer `book` with "nothing yet" (null), not an error about a missing field. (A cold CI
/// run hit this under `up`, where the services start in no fixed order.)
#[test]
fn the_mirror_answers_nothing_yet_while_the_feed_has_not_taken_its_first_snapshot() {
    use service_framework::connections::Address;
    use service_framework::states::{DeltaUpdateOut, StateOptions};

    let dir = Scratch::new("order-book-empty");
    let [mp_pub, mp_rep, ob_pub, ob_rep, book] = free_ports();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    // Both out sides bound, neither ever snapshotted.
    let _outs = rt.block_on(async {
        let opts = StateOptions::default();
        let a = DeltaUpdateOut::start(
            &Address::Plain(at(mp_pub)),
            &Address::Plain(at(mp_rep)),
            &opts,
        )
        .await
        .expect("market_price out");
        let b = DeltaUpdateOut::start(
            &Address::Plain(at(ob_pub)),
            &Address::Plain(at(ob_rep)),
            &opts,
        )
        .await
        .expect("order_book out");
        (a, b)
    });
    let mirror_file = mirror_addresses(&dir, [mp_pub, mp_rep, ob_pub, ob_rep, book]);
    let mut mirror = sf(&[
        "-s",
        "order_book_mirror",
        "-a",
        mirror_file.to_str().unwrap(),
    ]);
    mirror.wait_serving(START);
    // Until both followers have adopted the empty snapshot (number 0), then once more.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let raw = call(&at(book), &json!({})).expect("book answers before any snapshot");
        if raw["current_num"]["order_book"] == json!(0)
            && raw["current_num"]["market_price"] == json!(0)
        {
            break raw;
        }
        assert!(
            Instant::now() < deadline,
            "the followers never adopted: {raw}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(reply["order_book"], Value::Null, "{reply}");
    assert_eq!(reply["market_price"], Value::Null, "{reply}");
    stop(&mut mirror, "order_book_mirror");
}
