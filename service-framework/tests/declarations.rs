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
