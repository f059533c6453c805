mod support;
use sf_zmtp::*;
use std::time::Duration;
use support::PyPeer;

#[tokio::test]
async fn dealer_to_rep_and_req_to_router() {
    let mut rep = PyPeer::new("REP").await;
    let ep = rep.bind("tcp://127.0.0.1:*").await;
    let mut d = DealerSocket::new();
    d.connect(&ep).unwrap();
    d.send(Message::from(vec![
        bytes::Bytes::new(),
        bytes::Bytes::from_static(b"hi"),
    ]))
    .await
    .unwrap();
    let got = rep.recv(3000).await.expect("rep got");
    assert_eq!(got, vec![bytes::Bytes::from_static(b"hi")]);
    rep.send(&[b"yo"]).await;
    let r = tokio::time::timeout(Duration::from_secs(3), d.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.frames(),
        &[bytes::Bytes::new(), bytes::Bytes::from_static(b"yo")]
    );

    let mut router = RouterSocket::new();
    let ep = router.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut req = PyPeer::new("REQ").await;
    req.connect(&ep).await;
    req.send(&[b"q"]).await;
    let m = tokio::time::timeout(Duration::from_secs(3), router.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.len(), 3);
    let mut reply = m.clone();
    let last = reply.frames().len() - 1;
    let _ = last;
    let frames = reply.into_frames();
    reply = Message::from(vec![
        frames[0].clone(),
        frames[1].clone(),
        bytes::Bytes::from_static(b"a"),
    ]);
    router.send(reply).unwrap();
    assert_eq!(
        req.recv(3000).await.unwrap(),
        vec![bytes::Bytes::from_static(b"a")]
    );
}

#[tokio::test]
async fn sub_from_libzmq_pub_and_libzmq_sub_from_pub() {
    let mut p = PyPeer::new("PUB").await;
    let ep = p.bind("tcp://127.0.0.1:*").await;
    let mut s = SubSocket::new();
    s.connect(&ep).unwrap();
    s.subscribe(b"A").await;
    s.wait_for_peers(1).await;
    let mut got = None;
    for _ in 0..50 {
        p.send(&[b"Ax"]).await;
        p.send(&[b"Bx"]).await;
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(100), s.recv()).await {
            got = Some(m);
            break;
        }
    }
    assert_eq!(got.unwrap().frames()[0].as_ref(), b"Ax");

    let pb = PubSocket::new();
    let ep = pb.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut sub = PyPeer::new("SUB").await;
    sub.subscribe(b"T").await;
    sub.connect(&ep).await;
    let mut ok = false;
    for _ in 0..50 {
        pb.send(Message::single(bytes::Bytes::from_static(b"Tz")))
            .unwrap();
        pb.send(Message::single(bytes::Bytes::from_static(b"Uz")))
            .unwrap();
        if let Some(f) = sub.recv(100).await {
            assert_eq!(f[0].as_ref(), b"Tz");
            ok = true;
            break;
        }
    }
    assert!(ok);
}
