//! Typed declarations: mistakes stop the start (never a request), config is checked once
//! into its type, and errors crossing a hop say whose they are.

mod support;

use serde_json::json;
use service_framework::connections::{Error as ConnError, ErrorCode};
use service_framework::prelude::*;
use service_framework::{Error, Service};
use support::{addresses, replyer_at, request, start, Echo, Echoed};

#[derive(Debug, Deserialize, JsonSchema)]
struct Offset {
    offset: u8,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Sum {
    total: i64,
}

const ADD: Replyer<Add, Sum> = Replyer::new("add");

fn adder() -> ServiceDef {
    ServiceDef::new("adder")
        .config::<Offset>()
        .replyer(ADD, |args, ctx| async move {
            Ok(Sum {
                total: args.a + args.b + i64::from(ctx.config::<Offset>().offset),
            })
        })
}

fn start_error(def: ServiceDef, config: serde_json::Value) -> Error {
    Service::new(def)
        .config(config)
        .addresses(addresses(
            json!({"connections": {"in": {"add": {"replyer": "127.0.0.1:0"}}}}),
        ))
        .run_blocking()
        .expect_err("the start must fail")
}

#[test]
fn a_config_value_that_does_not_fit_its_type_stops_the_start_naming_the_key() {
    let e = start_error(adder(), json!({"offset": 300}));
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("\"offset\""), "names the key: {msg}");
    assert!(msg.contains("u8"), "says what was expected: {msg}");
    assert!(msg.contains("config"), "names the source: {msg}");
    // And the CLI maps it to exit code 2.
    assert_eq!(
        format!("{:?}", service_framework::cli::fail(&e)),
        format!("{:?}", std::process::ExitCode::from(2))
    );
}

#[test]
fn handlers_read_the_typed_config_without_a_result() {
    let addrs = addresses(json!({"connections": {"in": {"add": {"replyer": "127.0.0.1:0"}}}}));
    let handle = Service::new(adder())
        .config(json!({"offset": 7}))
        .addresses(addrs)
        .run_in_background();
    let ready = handle.wait_ready(support::READY).unwrap();
    let r = request(ready.endpoint("add").unwrap(), &json!({"a": 1, "b": 2})).unwrap();
    assert_eq!(r, json!({"total": 10}));
    handle.stop().unwrap();
}

#[test]
fn an_option_for_an_undeclared_connection_stops_the_start() {
    let def = adder().option("ad", "max_concurrency", 4);
    let e = start_error(def, json!({"offset": 1}));
    let msg = e.to_string();
    assert!(matches!(e, Error::Definition(_)), "{e:?}");
    assert!(
        msg.contains("\"ad\"") && msg.contains("declared: add"),
        "names the name and what is declared: {msg}"
    );
}

#[test]
fn a_name_declared_twice_stops_the_start() {
    let def = adder().replyer(ADD, |args, _ctx| async move {
        Ok(Sum {
            total: args.a - args.b,
        })
    });
    let msg = start_error(def, json!({"offset": 1})).to_string();
    assert!(msg.contains("\"add\" is declared twice"), "{msg}");
}

#[test]
fn an_unknown_creation_argument_is_refused_at_start_naming_the_allowed_ones() {
    let def = adder().option("add", "max_concurency", 4);
    let msg = start_error(def, json!({"offset": 1})).to_string();
    assert!(
        msg.contains("max_concurency") && msg.contains("max_concurrency"),
        "{msg}"
    );
}

const DOWN: Requester<Echo, Echoed> = Requester::new("down");

/// A replyer whose handler calls `down` with fixed, valid args of its own.
fn relay() -> ServiceDef {
    ServiceDef::new("relay")
        .requester(DOWN)
        .replyer("relay", |_a: Echo, ctx: Ctx| async move {
            let r = ctx
                .request(
                    &DOWN,
                    &Echo {
                        to_echo: "x".into(),
                    },
                )
                .await?;
            Ok::<_, ServiceError>(r)
        })
}

#[test]
fn a_downstream_failure_reaches_the_caller_as_a_dependency_failure_not_its_own() {
    // The downstream refuses everything as invalid args.
    let strict = ServiceDef::new("strict").replyer("reply", |_a: Echo, _ctx: Ctx| async move {
        Err::<Echoed, _>(ServiceError::invalid_args("field to_echo: not today"))
    });
    let (down, down_ready) = start(strict, replyer_at("127.0.0.1:0"));
    let (relay, relay_ready) = start(
        relay(),
        addresses(json!({"connections": {
            "in": {"relay": {"replyer": "127.0.0.1:0"}},
            "out": {"down": {"requester": down_ready.endpoint("reply").unwrap()}},
        }})),
    );
    let err = request(
        relay_ready.endpoint("relay").unwrap(),
        &json!({"to_echo": "valid"}),
    )
    .expect_err("the relay fails");
    let ConnError::Remote(w) = err else {
        panic!("an error reply, got {err:?}")
    };
    assert_eq!(w.code, ErrorCode::DependencyFailed, "{w:?}");
    assert!(
        w.message.contains("\"down\"") && w.message.contains("invalid_args: field to_echo"),
        "names the connection and carries the downstream's code and message: {}",
        w.message
    );
    relay.stop().unwrap();
    down.stop().unwrap();
}

#[test]
fn a_handler_panic_is_internal_with_a_safe_message() {
    let def = ServiceDef::new("buggy").replyer("reply", |a: Echo, _ctx: Ctx| async move {
        if a.to_echo == "boom" {
            panic!("secret detail /etc/passwd");
        }
        Ok::<_, ServiceError>(Echoed { echoed: a.to_echo })
    });
    let (h, ready) = start(def, replyer_at("127.0.0.1:0"));
    let ep = ready.endpoint("reply").unwrap().to_owned();
    let Err(ConnError::Remote(w)) = request(&ep, &json!({"to_echo": "boom"})) else {
        panic!("an error reply")
    };
    assert_eq!(w.code, ErrorCode::Internal);
    assert!(!w.message.contains("secret"), "{}", w.message);
    // Still serving.
    assert_eq!(
        request(&ep, &json!({"to_echo": "ok"})).unwrap(),
        json!({"echoed": "ok"})
    );
    h.stop().unwrap();
}

/// The deployment sets creation options in addresses.json's `options` section, without
/// recompiling: here the relay's requester timeout (declared in code as 10 s) becomes 0.3 s,
/// so a slow downstream is a timeout well before 10 s.
#[test]
fn options_in_the_addresses_file_set_creation_arguments_without_recompiling() {
    let slow = ServiceDef::new("slow").replyer("reply", |a: Echo, _ctx: Ctx| async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        Ok::<_, ServiceError>(Echoed { echoed: a.to_echo })
    });
    let (down, down_ready) = start(slow, replyer_at("127.0.0.1:0"));
    let relay_def = relay().option(DOWN.name(), "timeout_s", 10.0);
    let (relay, relay_ready) = start(
        relay_def,
        addresses(json!({
            "connections": {
                "in": {"relay": {"replyer": "127.0.0.1:0"}},
                "out": {"down": {"requester": down_ready.endpoint("reply").unwrap()}},
            },
            "options": {"connections": {"out": {"down": {"timeout_s": 0.3}}}},
        })),
    );
    let t = std::time::Instant::now();
    let err = request(
        relay_ready.endpoint("relay").unwrap(),
        &json!({"to_echo": "x"}),
    )
    .expect_err("the downstream is too slow for 0.3 s");
    let took = t.elapsed();
    let ConnError::Remote(w) = err else {
        panic!("an error reply, got {err:?}")
    };
    assert_eq!(w.code, ErrorCode::DependencyFailed, "{w:?}");
    assert!(w.message.contains("timeout"), "{w:?}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "the file's 0.3 s applied, not the code's 10 s: {took:?}"
    );
    relay.stop().unwrap();
    down.stop().unwrap();
}

/// An option the kind does not take, or a value of the wrong type, stops the start with the
/// file, the key path and what is allowed or expected; options for connections the service
/// does not declare are ignored (one file serves several services).
#[test]
fn a_wrong_option_in_the_addresses_file_stops_the_start_naming_it() {
    let with_options = |options: serde_json::Value| {
        Service::new(adder())
            .config(json!({"offset": 1}))
            .addresses(addresses(json!({
                "connections": {"in": {"add": {"replyer": "127.0.0.1:0"}}},
                "options": options,
            })))
            .run_blocking()
    };
    let msg = with_options(json!({"connections": {"in": {"add": {"timeout_s": 1}}}}))
        .expect_err("a replyer takes no timeout_s")
        .to_string();
    assert!(
        msg.contains("options.connections.in.add")
            && msg.contains("timeout_s")
            && msg.contains("max_concurrency"),
        "{msg}"
    );
    let err = with_options(json!({"connections": {"in": {"add": {"max_concurrency": "many"}}}}))
        .expect_err("a whole number is needed");
    assert!(matches!(err, Error::Addresses(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("max_concurrency")
            && msg.contains("a whole number")
            && msg.contains("\"many\""),
        "{msg}"
    );
    // Someone else's options: ignored; the adder starts and serves.
    let svc = Service::new(adder())
        .config(json!({"offset": 1}))
        .addresses(addresses(json!({
            "connections": {"in": {"add": {"replyer": "127.0.0.1:0"}}},
            "options": {"connections": {"out": {"someone_elses": {"retries": 3}}}},
        })))
        .run_in_background();
    let ready = svc
        .wait_ready(std::time::Duration::from_secs(10))
        .expect("the adder starts");
    let sum = request(ready.endpoint("add").unwrap(), &json!({"a": 1, "b": 2})).unwrap();
    assert_eq!(sum, json!({"total": 4}));
    svc.stop().unwrap();
}
