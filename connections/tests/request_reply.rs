//! Request/reply between the framework's own requester and replyer over real sockets.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sf_connections::{
    typed, Address, Error, ErrorCode, Replyer, ReplyerOptions, Requester, RequesterOptions,
    WireError, WorkflowId,
};

#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    to_echo: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Echoed {
    echoed: String,
}

async fn echo_replyer() -> Replyer {
    let handler = typed(|args: Echo, _meta| async move {
        if args.to_echo == "fail" {
            return Err(WireError::new(ErrorCode::HandlerError, "asked to fail"));
        }
        Ok(Echoed {
            echoed: args.to_echo,
        })
    });
    Replyer::bind(
        &Address::from("127.0.0.1:0"),
        handler,
        ReplyerOptions::default(),
    )
    .await
    .unwrap()
}

fn requester(endpoint: &str) -> Requester {
    let options = RequesterOptions {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    Requester::connect(&Address::from(endpoint), options).unwrap()
}

#[tokio::test]
async fn echo_round_trip_and_concurrency() {
    let replyer = echo_replyer().await;
    let req = requester(replyer.endpoint());
    let got: Echoed = req
        .request(
            &Echo {
                to_echo: "hi".into(),
            },
            WorkflowId::new_random(),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        Echoed {
            echoed: "hi".into()
        }
    );
    let calls = (0..200).map(|i| {
        let req = req.clone();
        async move {
            req.request::<_, Echoed>(
                &Echo {
                    to_echo: format!("m{i}"),
                },
                WorkflowId::None,
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().echoed, format!("m{i}"));
    }
    replyer.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_error_replies_and_the_replyer_keeps_serving() {
    let replyer = echo_replyer().await;
    let req = requester(replyer.endpoint());
    // Wrong type.
    let err = req
        .request::<_, Echoed>(&serde_json::json!({"to_echo": 5}), WorkflowId::None)
        .await
        .unwrap_err();
    match err {
        Error::Remote(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgs);
            assert_eq!(
                e.message,
                "invalid args: args.to_echo: invalid type: integer `5`, expected a string"
            );
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    // Missing field.
    let err = req
        .request::<_, Echoed>(&serde_json::json!({}), WorkflowId::None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Remote(e) if e.code == ErrorCode::InvalidArgs && e.message.contains("to_echo")),
        "{err}"
    );
    // Not an envelope at all.
    let reply = req.request_raw(b"\xc1garbage".to_vec()).await.unwrap();
    let reply: sf_connections::wire::Reply<()> = sf_connections::wire::decode(&reply).unwrap();
    assert_eq!(reply.error.unwrap().code, ErrorCode::Malformed);
    // Handler error.
    let err = req
        .request::<_, Echoed>(
            &Echo {
                to_echo: "fail".into(),
            },
            WorkflowId::None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Remote(e) if e.code == ErrorCode::HandlerError && e.message == "asked to fail")
    );
    // Still serving.
    let ok: Echoed = req
        .request(
            &Echo {
                to_echo: "after".into(),
            },
            WorkflowId::None,
        )
        .await
        .unwrap();
    assert_eq!(ok.echoed, "after");
    let stats = replyer.stats();
    assert_eq!(stats.get(sf_connections::Counter::InvalidArgs), 2);
    assert_eq!(stats.get(sf_connections::Counter::Malformed), 1);
    replyer.shutdown().await;
}
