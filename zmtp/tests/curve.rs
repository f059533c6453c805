//! CURVE (RFC 26) against libzmq 4.3.5 with libsodium (pyzmq's wheels), over TCP on 127.0.0.1,
//! and refusals: wrong server key, unknown client key, a NULL peer against a CURVE socket, a
//! tampered and a replayed MESSAGE box. Each refusal delivers nothing and leaves the socket
//! serving the next good peer.
//!
//! Keys travel both ways through certificate files: ours are made by `sf_zmtp::security` and
//! read by pyzmq's `zmq.auth.load_certificate`, pyzmq's are made by
//! `zmq.auth.create_certificates` and read by ours. Every wait is for an event (a message, a
//! monitor event, a libzmq monitor count) under a deadline; publishing until a subscriber has
//! its subscription is a bounded retry.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sf_zmtp::security::{load_certificate, write_certificates};
use sf_zmtp::{
    Authorizer, DealerSocket, Event, KeyPair, Message, PubSocket, PublicKey, RouterSocket,
    SecretKey, Security, SocketOptions, SubSocket,
};
use support::mitm::{relay, Alter};
use support::PyPeer;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const RETRY_WAIT_MS: u64 = 50;
const RETRIES: usize = 100;

fn opts(security: Security) -> SocketOptions {
    SocketOptions::default()
        .security(security)
        .handshake_timeout(Duration::from_secs(5))
}

/// The next handshake failure on a monitor (skipping other events), within [`WAIT`].
async fn next_failure(mon: &mut mpsc::Receiver<Event>) -> String {
    let got = timeout(WAIT, async {
        loop {
            match mon.recv().await {
                Some(Event::HandshakeFailed { reason, .. }) => return reason,
                Some(_) => continue,
                None => panic!("monitor closed"),
            }
        }
    })
    .await;
    got.expect("a handshake failure within the deadline")
}

/// The next finished handshake on a monitor, within [`WAIT`]; fails on a handshake failure.
async fn next_handshake(mon: &mut mpsc::Receiver<Event>) {
    timeout(WAIT, async {
        loop {
            match mon.recv().await {
                Some(Event::Accepted { .. }) | Some(Event::Connected { .. }) => return,
                Some(Event::HandshakeFailed { reason, .. }) => {
                    panic!("handshake failed: {reason}")
                }
                Some(_) => continue,
                None => panic!("monitor closed"),
            }
        }
    })
    .await
    .expect("a handshake within the deadline")
}

async fn recv_within<F, Fut>(f: F) -> Option<Message>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = sf_zmtp::Result<Message>>,
{
    timeout(WAIT, f()).await.ok().map(|r| r.expect("recv"))
}

/// A server pair and a client pair made here, written as certificates under `dir`.
struct RustKeys {
    server: KeyPair,
    client: KeyPair,
}

fn rust_keys(dir: &Path) -> RustKeys {
    let server = KeyPair::generate();
    let client = KeyPair::generate();
    write_certificates(dir, "server", &server, &[("name", "server")]).unwrap();
    write_certificates(dir, "client", &client, &[]).unwrap();
    RustKeys { server, client }
}

/// A pyzmq CURVE client of `kind`, keys read by pyzmq from our certificate files.
async fn py_client_from_our_certs(kind: &str, dir: &Path, secret_name: &str) -> PyPeer {
    let mut p = PyPeer::new(kind).await;
    let (server_pub, none) = p.load_certificate(&dir.join("server.key")).await;
    assert!(none.is_none(), "a public certificate has no secret");
    let (public, secret) = p
        .load_certificate(&dir.join(format!("{secret_name}.key_secret")))
        .await;
    p.curve_client(&server_pub, &public, &secret.expect("the secret key"))
        .await;
    p
}

/// Our ROUTER CURVE server echoing every request (identity, then the body reversed).
async fn our_router_server(secret: SecretKey, authorizer: Authorizer) -> (RouterSocket, String) {
    let router = RouterSocket::with_options(opts(Security::curve_server(secret, authorizer)));
    let ep = router.bind("tcp://127.0.0.1:0").await.unwrap();
    (router, ep)
}

async fn echo_once(router: &mut RouterSocket) -> Vec<Bytes> {
    let m = recv_within(|| router.recv())
        .await
        .expect("a request within the deadline");
    let frames = m.frames().to_vec();
    let mut reply = frames.clone();
    let last = reply.pop().unwrap();
    let mut rev = last.to_vec();
    rev.reverse();
    reply.push(rev.into());
    router.send(Message::from(reply)).unwrap();
    frames
}

#[tokio::test]
async fn pyzmq_curve_clients_call_our_router_with_our_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    // The server authorizes the client through the certificate directory (a copy of the
    // public certificate only: the server never sees a client's secret).
    let allowed = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("client.key"),
        allowed.path().join("client.key"),
    )
    .unwrap();
    let auth = Authorizer::certificate_dir(allowed.path()).unwrap();
    assert!(auth.allows(&keys.client.public));
    let (mut router, ep) = our_router_server(keys.server.secret.clone(), auth).await;

    for kind in ["REQ", "DEALER"] {
        let mut py = py_client_from_our_certs(kind, dir.path(), "client").await;
        py.connect(&ep).await;
        let body: &[u8] = b"over curve";
        if kind == "REQ" {
            py.send(&[body]).await;
        } else {
            py.send(&[b"", body]).await;
        }
        let got = echo_once(&mut router).await;
        assert_eq!(got.last().unwrap().as_ref(), body, "{kind}");
        let reply = py.recv(5000).await.expect("the reply");
        assert_eq!(reply.last().unwrap().as_ref(), b"evruc revo", "{kind}");
        py.close().await;
    }
    let st = router.stats();
    assert_eq!(st.handshakes, 2);
    assert_eq!(st.auth_failures, 0);
}

#[tokio::test]
async fn our_dealer_calls_pyzmq_curve_servers_with_pyzmq_certificates() {
    for kind in ["ROUTER", "REP"] {
        let dir = tempfile::tempdir().unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let mut py = PyPeer::new(kind).await;
        let (server_pub, server_sec) = py.create_certificates(dir.path(), "server").await;
        let (client_pub, _) = py.create_certificates(allowed.path(), "client").await;
        // Ours reads pyzmq's files.
        let server_cert = load_certificate(dir.path().join("server.key")).unwrap();
        assert_eq!(server_cert.public.to_z85(), server_pub);
        let client_cert = load_certificate(allowed.path().join("client.key_secret")).unwrap();
        assert_eq!(client_cert.public.to_z85(), client_pub);
        let client = KeyPair::from_secret(client_cert.secret.clone().expect("secret"));

        py.curve_server(&server_sec, Some(allowed.path())).await;
        let ep = py.bind("tcp://127.0.0.1:*").await;
        let dealer =
            DealerSocket::with_options(opts(Security::curve_client(server_cert.public, client)));
        let mut mon = dealer.monitor();
        dealer.connect(&ep).unwrap();
        next_handshake(&mut mon).await;
        let mut dealer = dealer;
        if kind == "ROUTER" {
            dealer.send(Message::from("hello router")).await.unwrap();
            let got = py.recv(5000).await.expect("the request");
            assert_eq!(got[1].as_ref(), b"hello router");
            py.send(&[&got[0], b"back"]).await;
            let reply = recv_within(|| dealer.recv()).await.expect("the reply");
            assert_eq!(reply.frames(), &[Bytes::from_static(b"back")]);
        } else {
            let req: Vec<Bytes> = vec![Bytes::new(), Bytes::from_static(b"hello rep")];
            dealer.send(Message::from(req)).await.unwrap();
            let got = py.recv(5000).await.expect("the request");
            assert_eq!(got, vec![Bytes::from_static(b"hello rep")]);
            py.send(&[b"back"]).await;
            let reply = recv_within(|| dealer.recv()).await.expect("the reply");
            assert_eq!(reply.last().unwrap().as_ref(), b"back");
        }
        assert_eq!(dealer.stats().auth_failures, 0);
        py.close().await;
    }
}

#[tokio::test]
async fn pub_sub_both_ways_over_curve() {
    // Our PUB is the CURVE server, pyzmq's SUB the client.
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let publisher = PubSocket::with_options(opts(Security::curve_server(
        keys.server.secret.clone(),
        Authorizer::allow_list([keys.client.public]),
    )));
    let ep = publisher.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut sub = py_client_from_our_certs("SUB", dir.path(), "client").await;
    sub.subscribe(b"weather").await;
    sub.connect(&ep).await;
    publisher.wait_for_peers(1).await;
    let mut got = None;
    for _ in 0..RETRIES {
        publisher
            .send(Message::from(vec![
                Bytes::from_static(b"weather"),
                Bytes::from_static(b"sunny"),
            ]))
            .unwrap();
        publisher.send(Message::from("other topic")).unwrap();
        if let Some(m) = sub.recv(RETRY_WAIT_MS).await {
            got = Some(m);
            break;
        }
    }
    let got = got.expect("the subscriber receives within the retries");
    assert_eq!(got[1].as_ref(), b"sunny");
    // Only the subscribed topic arrives: the filter works on what went through the boxes.
    for m in sub.recv_n(RETRIES, RETRY_WAIT_MS).await {
        assert_eq!(m[0].as_ref(), b"weather");
    }
    sub.close().await;

    // pyzmq's PUB is the CURVE server, our SUB the client.
    let pdir = tempfile::tempdir().unwrap();
    let mut py_pub = PyPeer::new("PUB").await;
    let (server_pub, server_sec) = py_pub.create_certificates(pdir.path(), "server").await;
    py_pub.curve_server(&server_sec, None).await;
    let ep = py_pub.bind("tcp://127.0.0.1:*").await;
    let mut ours = SubSocket::with_options(opts(Security::curve_client(
        PublicKey::from_z85(&server_pub).unwrap(),
        KeyPair::generate(),
    )));
    ours.subscribe(b"A").await;
    ours.connect(&ep).unwrap();
    ours.wait_for_peers(1).await;
    let mut got = None;
    for _ in 0..RETRIES {
        py_pub.send(&[b"B-not-this"]).await;
        py_pub.send(&[b"A-this"]).await;
        if let Ok(m) = timeout(Duration::from_millis(RETRY_WAIT_MS), ours.recv()).await {
            got = Some(m.unwrap());
            break;
        }
    }
    let got = got.expect("our subscriber receives within the retries");
    assert_eq!(got.frames(), &[Bytes::from_static(b"A-this")]);
    py_pub.close().await;
}

#[tokio::test]
async fn ours_to_ours_with_every_socket_kind_pairing_used_by_services() {
    let server = KeyPair::generate();
    let client = KeyPair::generate();
    let router = RouterSocket::with_options(opts(Security::curve_server(
        server.secret.clone(),
        Authorizer::allow_list([client.public]),
    )));
    let ep = router.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut router = router;
    let mut dealer = DealerSocket::with_options(
        opts(Security::curve_client(server.public, client.clone())).heartbeat(Some(
            sf_zmtp::Heartbeat {
                interval: Duration::from_millis(20),
                timeout: Duration::from_secs(2),
                ttl: Duration::from_secs(2),
            },
        )),
    );
    dealer.connect(&ep).unwrap();
    // Large and multi-frame messages, both ways, with PINGs boxed in between.
    let big = Bytes::from(vec![0xA5u8; 300_000]);
    for i in 0..20u8 {
        let msg = Message::from(vec![Bytes::from(vec![i]), big.clone()]);
        dealer.send(msg).await.unwrap();
        let got = recv_within(|| router.recv()).await.expect("request");
        assert_eq!(got.len(), 3);
        assert_eq!(got.frames()[1].as_ref(), &[i]);
        assert_eq!(got.frames()[2], big);
        router.send(got).unwrap();
        let back = recv_within(|| dealer.recv()).await.expect("reply");
        assert_eq!(back.frames()[1], big);
    }
    assert_eq!(router.stats().crypto_failures, 0);
    assert_eq!(router.stats().handshakes, 1);
}

#[tokio::test]
async fn a_wrong_server_key_is_refused_both_ways_and_the_servers_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let (mut router, ep) =
        our_router_server(keys.server.secret.clone(), Authorizer::allow_any()).await;
    let mut mon = router.monitor();

    // pyzmq client that has another server's key: its HELLO does not open.
    let mut bad = PyPeer::new("DEALER").await;
    let other = KeyPair::generate();
    bad.curve_client(
        &other.public.to_z85(),
        &keys.client.public.to_z85(),
        &keys.client.secret.to_z85(),
    )
    .await;
    bad.connect(&ep).await;
    bad.send_nowait(&[b"", b"must not arrive"]).await; // may find no peer
    let why = next_failure(&mut mon).await;
    assert!(why.contains("HELLO does not open"), "{why}");
    assert!(router.stats().auth_failures >= 1);
    assert!(router.try_recv().is_none());
    bad.close().await;

    // The server still serves a good client.
    let mut good = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    good.connect(&ep).await;
    good.send(&[b"", b"good"]).await;
    assert_eq!(
        echo_once(&mut router).await.last().unwrap().as_ref(),
        b"good"
    );
    assert_eq!(good.recv(5000).await.unwrap()[1].as_ref(), b"doog");
    good.close().await;

    // Our client with another server's key, against a pyzmq server: refused before READY.
    let mut py = PyPeer::new("ROUTER").await;
    let pdir = tempfile::tempdir().unwrap();
    let (server_pub, server_sec) = py.create_certificates(pdir.path(), "server").await;
    py.curve_server(&server_sec, None).await;
    py.monitor().await;
    let ep = py.bind("tcp://127.0.0.1:*").await;
    let wrong = DealerSocket::with_options(opts(Security::curve_client(
        KeyPair::generate().public,
        KeyPair::generate(),
    )));
    let mut wmon = wrong.monitor();
    wrong.connect(&ep).unwrap();
    let why = next_failure(&mut wmon).await;
    assert!(
        why.contains("closed") || why.contains("WELCOME") || why.contains("reset"),
        "{why}"
    );
    assert!(py.wait_event("handshake_failed", 1, 5000).await);
    wrong.close().await;
    assert!(py.recv(0).await.is_none());

    let right = DealerSocket::with_options(opts(Security::curve_client(
        PublicKey::from_z85(&server_pub).unwrap(),
        KeyPair::generate(),
    )));
    right.connect(&ep).unwrap();
    right.send(Message::from("right")).await.unwrap();
    let got = py.recv(5000).await.expect("the good client's message");
    assert_eq!(got[1].as_ref(), b"right");
    py.close().await;
}

#[tokio::test]
async fn an_unknown_client_key_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let stranger = KeyPair::generate();
    write_certificates(dir.path(), "stranger", &stranger, &[]).unwrap();
    let (mut router, ep) = our_router_server(
        keys.server.secret.clone(),
        Authorizer::allow_list([keys.client.public]),
    )
    .await;
    let mut mon = router.monitor();

    let mut bad = py_client_from_our_certs("DEALER", dir.path(), "stranger").await;
    bad.monitor().await;
    bad.connect(&ep).await;
    bad.send_nowait(&[b"", b"must not arrive"]).await; // may find no peer
    let why = next_failure(&mut mon).await;
    assert!(
        why.contains(&stranger.public.to_z85()),
        "names the key: {why}"
    );
    assert!(why.contains("not authorized"), "{why}");
    // libzmq got our ERROR "400" and reports an authentication failure.
    assert!(bad.wait_event("handshake_failed", 1, 5000).await);
    assert!(router.try_recv().is_none());
    bad.close().await;

    let mut good = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    good.connect(&ep).await;
    good.send(&[b"", b"good"]).await;
    assert_eq!(
        echo_once(&mut router).await.last().unwrap().as_ref(),
        b"good"
    );
    good.close().await;
    let st = router.stats();
    assert!(st.auth_failures >= 1, "{st:?}");
    assert!(st.handshake_failures >= st.auth_failures);

    // A pyzmq server whose ZAP handler does not know our key.
    let mut py = PyPeer::new("ROUTER").await;
    let pdir = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let (server_pub, server_sec) = py.create_certificates(pdir.path(), "server").await;
    let known = KeyPair::generate();
    write_certificates(allowed.path(), "known", &known, &[]).unwrap();
    py.curve_server(&server_sec, Some(allowed.path())).await;
    let ep = py.bind("tcp://127.0.0.1:*").await;
    let server_key = PublicKey::from_z85(&server_pub).unwrap();
    let ours = DealerSocket::with_options(opts(Security::curve_client(
        server_key,
        KeyPair::generate(),
    )));
    let mut omon = ours.monitor();
    ours.connect(&ep).unwrap();
    let why = next_failure(&mut omon).await;
    assert!(
        why.contains("400"),
        "refused with libzmq's ZAP status: {why}"
    );
    assert!(ours.stats().auth_failures >= 1);
    ours.close().await;

    let known_client = DealerSocket::with_options(opts(Security::curve_client(server_key, known)));
    known_client.connect(&ep).unwrap();
    known_client.send(Message::from("known")).await.unwrap();
    let got = py.recv(5000).await.expect("the known client's message");
    assert_eq!(got[1].as_ref(), b"known");
    py.close().await;
}

#[tokio::test]
async fn a_null_peer_is_refused_by_a_curve_socket_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let (mut router, ep) =
        our_router_server(keys.server.secret.clone(), Authorizer::allow_any()).await;
    let mut mon = router.monitor();

    let mut null = PyPeer::new("DEALER").await;
    null.connect(&ep).await;
    null.send_nowait(&[b"", b"plain text"]).await; // may find no peer
    let why = next_failure(&mut mon).await;
    assert!(why.contains("NULL mechanism"), "{why}");
    assert!(router.try_recv().is_none());
    null.close().await;
    // Our own NULL dealer too.
    let ours_null = DealerSocket::with_options(opts(Security::Null));
    ours_null.connect(&ep).unwrap();
    let why = next_failure(&mut mon).await;
    assert!(why.contains("NULL mechanism"), "{why}");
    assert!(router.stats().auth_failures >= 2);
    ours_null.close().await;

    let mut good = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    good.connect(&ep).await;
    good.send(&[b"", b"good"]).await;
    assert_eq!(
        echo_once(&mut router).await.last().unwrap().as_ref(),
        b"good"
    );
    good.close().await;

    // Our CURVE client against a pyzmq NULL server.
    let mut py = PyPeer::new("ROUTER").await;
    let ep = py.bind("tcp://127.0.0.1:*").await;
    let ours = DealerSocket::with_options(opts(Security::curve_client(
        keys.server.public,
        keys.client.clone(),
    )));
    let mut omon = ours.monitor();
    ours.connect(&ep).unwrap();
    // Our mechanism goes out only after the peer's greeting is in, so the mismatch is seen
    // here even though libzmq closes on it at once.
    let why = next_failure(&mut omon).await;
    assert!(why.contains("NULL mechanism"), "{why}");
    assert!(ours.stats().auth_failures >= 1);
    ours.close().await;
    assert!(py.recv(0).await.is_none());
    py.close().await;
}

/// A pyzmq client through a relay that alters its first MESSAGE box (frame 2, after HELLO and
/// INITIATE); returns what our server delivered and its stats.
async fn altered(alter: Alter) -> (Vec<Message>, sf_zmtp::SocketStats) {
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let (mut router, ep) = our_router_server(
        keys.server.secret.clone(),
        Authorizer::allow_list([keys.client.public]),
    )
    .await;
    let mut mon = router.monitor();
    let target = support::raw::tcp_addr(&ep).to_owned();
    let via = relay(target, 2, alter).await;
    let mut py = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    py.connect(&via).await;
    // One frame: the box the relay alters is the whole message.
    py.send(&[b"the one message"]).await;
    next_handshake(&mut mon).await;
    // The connection is dropped for the bad box.
    timeout(WAIT, async {
        loop {
            match mon.recv().await {
                Some(Event::Disconnected { reason, .. }) => {
                    assert!(reason.contains("security"), "{reason}");
                    return;
                }
                Some(_) => continue,
                None => panic!("monitor closed"),
            }
        }
    })
    .await
    .expect("the altered connection is dropped");
    let mut delivered = Vec::new();
    while let Some(m) = router.try_recv() {
        delivered.push(m);
    }
    py.close().await;

    // Still serving: a good client, directly.
    let mut good = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    good.connect(&ep).await;
    good.send(&[b"", b"good"]).await;
    assert_eq!(
        echo_once(&mut router).await.last().unwrap().as_ref(),
        b"good"
    );
    good.close().await;
    (delivered, router.stats())
}

#[tokio::test]
async fn a_tampered_box_is_refused_and_nothing_of_it_delivered() {
    let (delivered, st) = altered(Alter::Tamper).await;
    assert!(delivered.is_empty(), "{delivered:?}");
    assert_eq!(st.crypto_failures, 1, "{st:?}");
}

#[tokio::test]
async fn a_replayed_box_is_refused_and_delivered_only_once() {
    let (delivered, st) = altered(Alter::Replay).await;
    assert_eq!(delivered.len(), 1, "the original only: {delivered:?}");
    assert_eq!(delivered[0].last().unwrap().as_ref(), b"the one message");
    assert_eq!(st.crypto_failures, 1, "{st:?}");
}

#[tokio::test]
async fn a_directory_authorizer_picks_up_a_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let allowed = tempfile::tempdir().unwrap();
    let auth =
        Authorizer::certificate_dir_every(allowed.path(), Duration::from_millis(50)).unwrap();
    let (mut router, ep) = our_router_server(keys.server.secret.clone(), auth.clone()).await;
    let mut mon = router.monitor();
    let mut py = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    py.connect(&ep).await;
    let why = next_failure(&mut mon).await;
    assert!(why.contains("not authorized"), "{why}");
    py.close().await;

    // The client's public certificate is added: the watcher reloads, the next one gets in.
    std::fs::copy(
        dir.path().join("client.key"),
        allowed.path().join("client.key"),
    )
    .unwrap();
    assert!(
        support::eventually(WAIT, || auth.allows(&keys.client.public)).await,
        "the directory was reloaded"
    );
    let mut py = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    py.connect(&ep).await;
    py.send(&[b"", b"now"]).await;
    assert_eq!(
        echo_once(&mut router).await.last().unwrap().as_ref(),
        b"now"
    );
    py.close().await;
}

#[tokio::test]
async fn heartbeats_travel_boxed_both_ways() {
    // Both ends ping every 50 ms and drop a peer silent for 300 ms: over 1.5 s the connection
    // lives only if PING and PONG open on both sides (they travel inside MESSAGE boxes).
    let dir = tempfile::tempdir().unwrap();
    let keys = rust_keys(dir.path());
    let hb = sf_zmtp::Heartbeat {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
        ttl: Duration::from_millis(300),
    };
    let router = RouterSocket::with_options(
        opts(Security::curve_server(
            keys.server.secret.clone(),
            Authorizer::allow_list([keys.client.public]),
        ))
        .heartbeat(Some(hb)),
    );
    let ep = router.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut router = router;
    let mut py = py_client_from_our_certs("DEALER", dir.path(), "client").await;
    py.opt("HEARTBEAT_IVL", 50).await;
    py.opt("HEARTBEAT_TIMEOUT", 300).await;
    py.monitor().await;
    py.connect(&ep).await;
    assert!(py.wait_event("handshake_ok", 1, 5000).await);
    assert!(
        !py.wait_event("disconnected", 1, 1500).await,
        "libzmq dropped the connection: our PONGs or PINGs did not open"
    );
    let st = router.stats();
    assert_eq!((st.heartbeat_timeouts, st.disconnects), (0, 0), "{st:?}");
    py.send(&[b"", b"alive"]).await;
    assert_eq!(
        echo_once(&mut router).await.last().unwrap().as_ref(),
        b"alive"
    );
    py.close().await;
}

#[tokio::test]
async fn ours_to_ours_over_ipc_and_a_server_refusing_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("ipc://{}", dir.path().join("curve.sock").display());
    let server = KeyPair::generate();
    let client = KeyPair::generate();
    let publisher = PubSocket::with_options(opts(Security::curve_server(
        server.secret.clone(),
        Authorizer::from_fn(move |k| *k == client.public),
    )));
    publisher.bind(&ep).await.unwrap();
    let mut sub = SubSocket::with_options(opts(Security::curve_client(
        server.public,
        KeyPair::from_secret(client.secret.clone()),
    )));
    sub.subscribe(b"t").await;
    sub.connect(&ep).unwrap();
    publisher.wait_for_peers(1).await;
    let mut got = None;
    for _ in 0..RETRIES {
        publisher.send(Message::from("t-1")).unwrap();
        if let Ok(m) = timeout(Duration::from_millis(RETRY_WAIT_MS), sub.recv()).await {
            got = Some(m.unwrap());
            break;
        }
    }
    assert_eq!(
        got.expect("delivered over ipc").frames()[0].as_ref(),
        b"t-1"
    );

    // Two servers: the connecting one says so in its greeting and is refused before HELLO.
    let other = SubSocket::with_options(opts(Security::curve_server(
        KeyPair::generate().secret,
        Authorizer::allow_any(),
    )));
    let mut mon = publisher.monitor();
    other.connect(&ep).unwrap();
    let why = next_failure(&mut mon).await;
    assert!(why.contains("both ends are CURVE servers"), "{why}");
    assert!(publisher.stats().auth_failures >= 1);
}
