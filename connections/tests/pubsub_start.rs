//! A subscriber whose publisher is not up yet starts at once and receives once it is; a
//! publisher whose credit window is smaller than the subscriber's caps it without stalling.

use std::time::{Duration, Instant};

use sf_connections::{
    Address, CreditOptions, Publisher, PublisherOptions, Subscriber, SubscriberOptions, WorkflowId,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_subscriber_starts_before_its_publisher_exists() {
    let addr = Address::from(format!("127.0.0.1:{}", free_port()));
    let started = Instant::now();
    let mut sub = Subscriber::start(&addr, SubscriberOptions::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "start took {:?}",
        started.elapsed()
    );

    let publisher = Publisher::start(&addr, PublisherOptions::default())
        .await
        .unwrap();
    // Publish until the first message arrives (the subscriber connects in the background).
    let deadline = Instant::now() + Duration::from_secs(8);
    let got = loop {
        publisher
            .publish(&"hello", &WorkflowId::None)
            .await
            .unwrap();
        if let Ok(d) = sub.next_timeout(Duration::from_millis(50)).await {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived once the publisher was up"
        );
    };
    assert_eq!(got.args::<String>().unwrap(), "hello");
}

#[tokio::test]
async fn the_smaller_window_wins_and_the_stream_stays_lossless() {
    let credit = CreditOptions {
        window: 100,
        stall_timeout: Duration::from_secs(5),
    };
    let publisher = Publisher::start(
        &Address::from("127.0.0.1:0"),
        PublisherOptions {
            credit: Some(credit),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let options = SubscriberOptions {
        credit_window: Some(10_000),
        ..Default::default()
    };
    let mut sub = Subscriber::start(&Address::from(publisher.endpoint()), options)
        .await
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .await
        .unwrap();

    const N: u64 = 5_000;
    let sender = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0..N {
                publisher.publish(&i, &WorkflowId::None).await.unwrap();
            }
        })
    };
    for expected in 0..N {
        let d = sub
            .next_timeout(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("message {expected}: {e}"));
        assert_eq!(d.args::<u64>().unwrap(), expected);
    }
    sender.await.unwrap();
    assert_eq!(sub.stats().get(sf_connections::Counter::Lost), 0);
    assert!(
        publisher.stats().get(sf_connections::Counter::CreditWaits) > 0,
        "a 100-message window over 5000 messages must have made the publisher wait"
    );
}
