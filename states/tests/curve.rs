//! A delta state over CURVE: the out side's publisher and snapshot replyer are CURVE servers
//! accepting one client key; a follower with that key converges, one with another key (or
//! NULL) never sees a thing, and the out side counts the refusals. Real sockets, every wait
//! bounded.

use std::time::Duration;

use sf_connections::security::{Authorizer, KeyPair, Security};
use sf_connections::wire::WorkflowId;
use sf_connections::Address;
use sf_states::{DeltaUpdateIn, DeltaUpdateOut, StateMap, StateOptions, Value};

const WAIT: Duration = Duration::from_secs(8);

fn map(pairs: &[(&str, i64)]) -> StateMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect()
}

#[tokio::test]
async fn a_delta_state_over_curve_reaches_only_the_authorized_follower() {
    let server = KeyPair::generate();
    let trusted = KeyPair::generate();
    let stranger = KeyPair::generate();
    let out = DeltaUpdateOut::start(
        &Address::from("127.0.0.1:0"),
        &Address::from("127.0.0.1:0"),
        &StateOptions {
            bind_security: Security::curve_server(
                server.secret.clone(),
                Authorizer::allow_list([trusted.public]),
            ),
            wait_after_creation: Some(Duration::ZERO),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (publisher, replyer) = (
        Address::from(out.publisher_endpoint()),
        Address::from(out.replyer_endpoint()),
    );
    out.snapshot(map(&[("a", 1)]), &WorkflowId::None)
        .await
        .unwrap();
    out.delta(map(&[("b", 2)]), &WorkflowId::None)
        .await
        .unwrap();

    let follower = |pair: Option<&KeyPair>| StateOptions {
        connect_security: match pair {
            Some(p) => Security::curve_client(server.public, p.clone()),
            None => Security::Null,
        },
        ..Default::default()
    };
    let good = DeltaUpdateIn::start(&publisher, &replyer, &follower(Some(&trusted)))
        .await
        .unwrap();
    let bad = DeltaUpdateIn::start(&publisher, &replyer, &follower(Some(&stranger)))
        .await
        .unwrap();
    let plain = DeltaUpdateIn::start(&publisher, &replyer, &follower(None))
        .await
        .unwrap();

    let mut rx = good.watch();
    let got = tokio::time::timeout(
        WAIT,
        rx.wait_for(|v| *v.state == map(&[("a", 1), ("b", 2)])),
    )
    .await
    .map(|r| r.map(|v| v.current_num));
    assert!(
        matches!(got, Ok(Ok(2))),
        "the trusted follower converges: {got:?}, {:?}",
        *rx.borrow()
    );
    // A live delta reaches it too, boxed.
    out.delta(map(&[("c", 3)]), &WorkflowId::None)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, rx.wait_for(|v| v.current_num == 3))
        .await
        .expect("the delta arrives")
        .unwrap();

    // The stranger and the NULL follower each failed the handshakes of both sockets
    // (publisher and snapshot replyer) at least once by now: wait until the out side has
    // counted four refusals, then check they hold nothing.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let refused = out.auth_failures();
        if refused >= 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the out side counted {refused} refusals"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (who, f) in [("stranger", &bad), ("NULL", &plain)] {
        let v = f.watch().borrow().clone();
        assert!(v.state.is_empty() && v.current_num < 0, "{who} got {v:?}");
    }
    out.shutdown(Duration::from_millis(100)).await;
}
