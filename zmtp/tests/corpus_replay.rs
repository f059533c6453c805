//! Replays the fuzz corpus (`zmtp/fuzz/corpus/<target>/`) through the bodies of the fuzz
//! targets (`sf_zmtp::fuzzing`), so that every seed and every input the fuzzer once found
//! (crashes included, once fixed) is checked by `cargo test --workspace` without cargo-fuzz.
//! The envelope target is replayed by `connections/tests/envelope_corpus_replay.rs`; the
//! `curve` target's seeds come from `sf_zmtp::fuzzing::curve_seeds` (they need its keys).
//!
//! The seeds are written by the ignored test below:
//! `cargo test -p sf-zmtp --test corpus_replay -- --ignored write_seed_corpus`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use sf_zmtp::fuzzing;
use sf_zmtp::wire::frame::{put_frame, COMMAND, LONG, MORE};
use sf_zmtp::wire::{Command, Greeting, Metadata};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs `body` on every file of the target's corpus; names every file that panics.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).expect("corpus file");
            catch_unwind(AssertUnwindSafe(|| body(&data))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: panicked on {failed:#?}");
}

#[test]
fn greeting_corpus_replays() {
    replay("greeting", fuzzing::greeting);
}

#[test]
fn handshake_corpus_replays() {
    replay("handshake", fuzzing::handshake);
}

#[test]
fn frames_corpus_replays() {
    replay("frames", fuzzing::frames);
}

#[test]
fn curve_corpus_replays() {
    replay("curve", fuzzing::curve);
}

// ---- the seed corpus -------------------------------------------------------------------

fn frame(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    let mut b = BytesMut::new();
    put_frame(&mut b, flags, body);
    out.extend_from_slice(&b);
}

fn command(out: &mut Vec<u8>, c: &Command) {
    frame(out, COMMAND, &c.encode());
}

fn ready(kind: &str, identity: Option<&[u8]>) -> Command {
    let mut props = vec![(
        "Socket-Type".to_owned(),
        bytes::Bytes::from(kind.to_owned()),
    )];
    if let Some(id) = identity {
        props.push(("Identity".to_owned(), bytes::Bytes::copy_from_slice(id)));
    }
    Command::Ready(Metadata(props))
}

fn ping(ttl: u16, context: &'static [u8]) -> Command {
    Command::Ping {
        ttl_deciseconds: ttl,
        context: bytes::Bytes::from_static(context),
    }
}

fn greeting_with(edit: impl FnOnce(&mut [u8; 64])) -> Vec<u8> {
    let mut g = Greeting::ours("NULL", false).encode();
    edit(&mut g);
    g.to_vec()
}

fn greeting_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("null-3.1", Greeting::ours("NULL", false).encode().to_vec()),
        ("null-3.0", greeting_with(|g| g[11] = 0)),
        ("null-4.0", greeting_with(|g| (g[10], g[11]) = (4, 0))),
        (
            "plain-server",
            Greeting::ours("PLAIN", true).encode().to_vec(),
        ),
        ("curve", Greeting::ours("CURVE", false).encode().to_vec()),
        (
            "mechanism-20-octets",
            Greeting::ours("ABCDEFGHIJKLMNOPQRST", false)
                .encode()
                .to_vec(),
        ),
        ("mechanism-gap", greeting_with(|g| g[13] = 0)),
        ("mechanism-empty", greeting_with(|g| g[12..16].fill(0))),
        ("mechanism-control", greeting_with(|g| g[13] = 0x07)),
        ("version-2", greeting_with(|g| g[10] = 2)),
        ("bad-first-octet", greeting_with(|g| g[0] = 0x01)),
        ("bad-last-octet", greeting_with(|g| g[9] = 0x7E)),
        // libzmq's ZMTP 1.0 fallback puts a length in the padding; 0x7F stays odd.
        ("padding-length", greeting_with(|g| g[1..9].fill(0xAA))),
        ("signature-only", greeting_with(|_| {})[..10].to_vec()),
        ("short-11", greeting_with(|_| {})[..11].to_vec()),
        ("greeting-and-more", {
            let mut g = greeting_with(|_| {});
            command(&mut g, &ready("DEALER", Some(b"")));
            g
        }),
        ("empty", Vec::new()),
    ]
}

/// Octet 0 of a frames input: the limits (see `fuzzing::LIMITS`); octet 1: the chunk size.
fn frames_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut mixed = Vec::new();
    frame(&mut mixed, MORE, b"abc");
    frame(&mut mixed, 0, &[7; 300]);
    command(&mut mixed, &ping(50, b"ctx"));
    frame(&mut mixed, 0, b"");
    for (name, head) in [
        ("mixed-4k-whole", [3u8, 0]),
        ("mixed-4k-bytewise", [3, 1]),
        ("mixed-300-chunks-7", [2, 7]),
        ("mixed-unlimited-chunks-64", [4, 64]),
        ("mixed-64-limit", [1, 0]),
    ] {
        let mut s = head.to_vec();
        s.extend_from_slice(&mixed);
        seeds.push((name, s));
    }
    let mut commands = vec![2u8, 3];
    for c in [
        ready("SUB", None),
        ready("DEALER", Some(b"\x00id")),
        Command::Subscribe(bytes::Bytes::from_static(b"\xa3top")),
        Command::Cancel(bytes::Bytes::from_static(b"\xa3top")),
        Command::Subscribe(bytes::Bytes::new()),
        ping(0, b""),
        ping(65535, b"0123456789abcdef"),
        Command::Pong {
            context: bytes::Bytes::from_static(b"ctx"),
        },
        Command::Error("Invalid socket type".into()),
        Command::Other("HELLO".into()),
    ] {
        command(&mut commands, &c);
    }
    seeds.push(("commands", commands));
    let mut message = vec![1u8, 2];
    for _ in 0..3 {
        frame(&mut message, MORE, b"part");
    }
    frame(&mut message, 0, b"last");
    seeds.push(("four-frame-message", message));
    let mut too_many = vec![1u8, 0];
    for _ in 0..5 {
        frame(&mut too_many, MORE, b"");
    }
    seeds.push(("too-many-frames", too_many));
    // A long header with a short size, as some peers send.
    let mut long_short = vec![3u8, 0, LONG, 0, 0, 0, 0, 0, 0, 0, 3];
    long_short.extend_from_slice(b"xyz");
    seeds.push(("long-header-small-size", long_short));
    seeds.push(("huge-declared", vec![3, 0, LONG, 0, 0, 1, 0, 0, 0, 0, 0]));
    seeds.push((
        "huge-declared-unlimited",
        vec![4, 2, LONG, 0, 0, 1, 0, 0, 0, 0, 0],
    ));
    seeds.push((
        "u64-max-declared",
        vec![3, 0, LONG, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ));
    seeds.push(("command-too-large", vec![1, 0, COMMAND, 17]));
    seeds.push(("reserved-flags", vec![3, 0, 0x08, 0]));
    seeds.push(("command-more", vec![3, 0, COMMAND | MORE, 0]));
    let mut inside = vec![3u8, 0];
    frame(&mut inside, MORE, b"a");
    command(&mut inside, &ping(1, b""));
    seeds.push(("command-inside-message", inside));
    seeds.push(("zero-limits-empty-frame", vec![0, 0, 0, 0, 0, 0]));
    let mut bad_commands = vec![3u8, 0];
    for body in [
        &b""[..],
        b"\x05REA",
        b"\x05READY\x04Name\x00\x00\x00\x09abc",
        b"\x05READY\x00",
        b"\x04PING\x00",
        b"\x04PONG01234567890123456",
        b"\x05ERROR\x05ab",
    ] {
        frame(&mut bad_commands, COMMAND, body);
    }
    seeds.push(("bad-commands", bad_commands));
    seeds
}

/// Octet 0 of a handshake input: our socket type (low nibble, `fuzzing::KINDS` order: REQ
/// REP DEALER ROUTER PUB XPUB SUB XSUB PUSH PULL PAIR) and the chunk size (high nibble).
fn handshake_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let null = Greeting::ours("NULL", false).encode();
    let with = |head: u8, greeting: &[u8], cmds: &[Command], after: &dyn Fn(&mut Vec<u8>)| {
        let mut s = vec![head];
        s.extend_from_slice(greeting);
        for c in cmds {
            command(&mut s, c);
        }
        after(&mut s);
        s
    };
    let none = |_: &mut Vec<u8>| {};
    let traffic = |s: &mut Vec<u8>| {
        frame(s, MORE, b"");
        frame(s, 0, b"hello");
        command(s, &ping(50, b"c"));
        frame(s, 0, &[1; 300]);
        command(
            s,
            &Command::Pong {
                context: bytes::Bytes::new(),
            },
        );
    };
    let subs = |s: &mut Vec<u8>| {
        command(
            s,
            &Command::Subscribe(bytes::Bytes::from_static(b"\xa3top")),
        );
        command(s, &Command::Cancel(bytes::Bytes::from_static(b"\xa3top")));
        command(s, &Command::Error("bye".into()));
    };
    let mut v30 = null;
    v30[11] = 0;
    vec![
        (
            "dealer-router-traffic",
            with(2, &null, &[ready("ROUTER", Some(b""))], &traffic),
        ),
        (
            "dealer-router-bytewise",
            with(0x12, &null, &[ready("ROUTER", Some(b""))], &traffic),
        ),
        (
            "router-dealer-identity",
            with(
                0x33,
                &null,
                &[ready("DEALER", Some(b"\x00\x01id"))],
                &traffic,
            ),
        ),
        (
            "req-rep",
            with(0x40, &null, &[ready("REP", None)], &traffic),
        ),
        (
            "pub-sub-subscriptions",
            with(4, &null, &[ready("SUB", None)], &subs),
        ),
        (
            "xpub-xsub-chunks-16",
            with(0x55, &null, &[ready("XSUB", None)], &subs),
        ),
        (
            "sub-pub-messages",
            with(6, &null, &[ready("PUB", None)], &traffic),
        ),
        (
            "push-pull",
            with(0x28, &null, &[ready("PULL", None)], &traffic),
        ),
        (
            "pull-push-3.0",
            with(9, &v30, &[ready("PUSH", None)], &traffic),
        ),
        ("pair-pair", with(10, &null, &[ready("PAIR", None)], &none)),
        (
            "pub-pub-refused",
            with(4, &null, &[ready("PUB", None)], &none),
        ),
        (
            "plain-mechanism-refused",
            with(2, &Greeting::ours("PLAIN", false).encode(), &[], &none),
        ),
        (
            "peer-error",
            with(
                2,
                &null,
                &[Command::Error("Invalid socket type".into())],
                &none,
            ),
        ),
        (
            "no-socket-type",
            with(2, &null, &[Command::Ready(Metadata::default())], &none),
        ),
        ("ping-before-ready", with(2, &null, &[ping(1, b"")], &none)),
        (
            "message-before-ready",
            with(2, &null, &[], &|s: &mut Vec<u8>| frame(s, 0, b"early")),
        ),
        (
            "ready-twice",
            with(
                2,
                &null,
                &[ready("ROUTER", None), ready("ROUTER", None)],
                &none,
            ),
        ),
        (
            "long-identity",
            with(3, &null, &[ready("DEALER", Some(&[7; 256]))], &none),
        ),
        (
            "not-zmtp",
            vec![
                2, b'G', b'E', b'T', b' ', b'/', b' ', b'H', b'T', b'T', b'P',
            ],
        ),
        ("greeting-only", with(2, &null, &[], &none)),
        ("truncated-greeting", with(2, &null[..30], &[], &none)),
    ]
}

/// Writes the seed corpus (valid greetings, commands, frame sequences, handshakes, and the
/// edge cases the parsers refuse). Inputs the fuzzer found are kept beside these.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    for (target, seeds) in [
        ("greeting", greeting_seeds()),
        ("frames", frames_seeds()),
        ("handshake", handshake_seeds()),
        ("curve", fuzzing::curve_seeds()),
    ] {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
