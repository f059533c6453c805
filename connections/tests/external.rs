//! External targets: a local async function called exactly as a replyer would be, args
//! validated on the way in.

use serde::{Deserialize, Serialize};
use sf_connections::{Error, ErrorCode, ExternalTarget, WireError, WorkflowId};

#[derive(Debug, Serialize, Deserialize)]
struct Sum {
    a: i64,
    b: i64,
    #[serde(default)]
    label: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Total {
    total: i64,
    label: String,
    workflow_id: String,
}

fn adder() -> ExternalTarget {
    ExternalTarget::new("adder", |args: Sum, meta| async move {
        if args.a == 666 {
            return Err(WireError::new(ErrorCode::HandlerError, "no devil's sums"));
        }
        if args.a == 777 {
            panic!("the function panicked");
        }
        Ok(Total {
            total: args.a + args.b,
            label: args.label.unwrap_or_default(),
            workflow_id: meta.workflow_id.to_string(),
        })
    })
}

fn expect_remote(r: Result<Total, Error>, code: ErrorCode) -> WireError {
    match r {
        Err(Error::Remote(e)) => {
            assert_eq!(e.code, code, "{e}");
            e
        }
        other => panic!("expected a remote {code} error, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_args_return_the_typed_result() {
    let target = adder();
    assert_eq!(target.name(), "adder");
    let got: Total = target
        .call(
            &Sum {
                a: 2,
                b: 40,
                label: Some("x".into()),
            },
            WorkflowId::Str("wf-1".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        Total {
            total: 42,
            label: "x".into(),
            workflow_id: "wf-1".into()
        }
    );
    // Any serializable args of the right shape will do, as on the wire.
    let got: Total = target
        .call(&serde_json::json!({"a": 1, "b": 2}), WorkflowId::None)
        .await
        .unwrap();
    assert_eq!(got.total, 3);
}

#[tokio::test]
async fn missing_or_mistyped_args_are_invalid_args_naming_the_field() {
    let target = adder();
    let e = expect_remote(
        target
            .call(&serde_json::json!({"a": 1}), WorkflowId::None)
            .await,
        ErrorCode::InvalidArgs,
    );
    assert!(e.message.contains("missing field `b`"), "{}", e.message);
    let e = expect_remote(
        target
            .call(&serde_json::json!({"a": 1, "b": "two"}), WorkflowId::None)
            .await,
        ErrorCode::InvalidArgs,
    );
    assert!(e.message.contains("args.b"), "{}", e.message);
    let e = expect_remote(
        target
            .call(
                &serde_json::json!({"a": 1, "b": 2, "label": 3}),
                WorkflowId::None,
            )
            .await,
        ErrorCode::InvalidArgs,
    );
    assert!(e.message.contains("label"), "{}", e.message);
    let e = expect_remote(
        target.call("not a map", WorkflowId::None).await,
        ErrorCode::InvalidArgs,
    );
    assert!(!e.message.is_empty());
}

#[tokio::test]
async fn the_functions_own_errors_and_panics_come_back_as_error_replies() {
    let target = adder();
    let e = expect_remote(
        target
            .call(
                &Sum {
                    a: 666,
                    b: 0,
                    label: None,
                },
                WorkflowId::None,
            )
            .await,
        ErrorCode::HandlerError,
    );
    assert_eq!(e.message, "no devil's sums");
    // A panic is an `internal` error, as a replyer would answer, not a panic in the caller.
    let r = tokio::spawn({
        let target = target.clone();
        async move {
            target
                .call::<_, Total>(
                    &Sum {
                        a: 777,
                        b: 0,
                        label: None,
                    },
                    WorkflowId::None,
                )
                .await
        }
    })
    .await
    .expect("the caller's task survives");
    expect_remote(r, ErrorCode::Internal);
    // And the target goes on working.
    let ok: Total = target
        .call(
            &Sum {
                a: 1,
                b: 1,
                label: None,
            },
            WorkflowId::None,
        )
        .await
        .unwrap();
    assert_eq!(ok.total, 2);
}
