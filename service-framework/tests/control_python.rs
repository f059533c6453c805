//! The control endpoint speaks the framework's request/reply wire, so a Python
//! `service_framework` 0.0.18 requester can ask it every verb, and reads the same counters a
//! Rust caller does.

use std::time::Duration;

use serde_json::Value;
use service_framework::prelude::*;
use service_framework::testing::TestService;
use sf_tests::{host_port, PyProcess};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Sum {
    total: i64,
}

const ADD: Replyer<Add, Sum> = Replyer::new("add");

const STEP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_requester_asks_every_verb() {
    let def = ServiceDef::new("adder")
        .version("3.1.4")
        .replyer(ADD, |args, _ctx| async move {
            if args.a < 0 {
                return Err(ServiceError::new("negative a"));
            }
            Ok(Sum {
                total: args.a + args.b,
            })
        });
    let svc = TestService::start(def).await.unwrap();
    for a in 0..3 {
        svc.call(&ADD, &Add { a, b: 2 }).await.unwrap();
    }
    svc.call(&ADD, &Add { a: -5, b: 2 }).await.unwrap_err();
    let control = host_port(svc.control().expect("a control endpoint"));

    let mut py = PyProcess::spawn(
        "py_control",
        &[control.as_str(), "ping", "info", "stats", "health"],
    );
    py.ready().await;
    let mut replies = std::collections::BTreeMap::<String, Value>::new();
    for _ in 0..4 {
        let line = py.expect_json(STEP).await;
        assert_eq!(line["event"], "reply", "{line}");
        let verb = line["verb"].as_str().unwrap().to_owned();
        assert_eq!(line["reply"]["workflow_id"], format!("py-{verb}"), "{line}");
        replies.insert(verb, line["reply"]["return_args"].clone());
    }
    py.wait_success(STEP).await;

    assert_eq!(replies["ping"]["name"], "adder");
    assert_eq!(replies["ping"]["version"], "3.1.4");
    let info_add = &replies["info"]["connections"][0];
    assert_eq!(info_add["name"], "add");
    assert_eq!(info_add["kind"], "replyer");
    assert!(info_add["args"].to_string().contains("\"a\""), "{info_add}");
    let stats_add = &replies["stats"]["connections"][0];
    assert_eq!(stats_add["name"], "add");
    assert_eq!(stats_add["requests"], 4, "{stats_add}");
    assert_eq!(stats_add["errors"], 1, "{stats_add}");
    assert!(
        stats_add["last_error"]
            .as_str()
            .unwrap()
            .contains("negative a"),
        "{stats_add}"
    );
    assert_eq!(replies["health"]["ready"], true);
    assert_eq!(replies["health"]["healthy"], true);
    svc.stop().await.unwrap();
}
