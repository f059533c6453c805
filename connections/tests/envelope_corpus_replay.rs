//! Replays the `envelope` fuzz corpus (`zmtp/fuzz/corpus/envelope/`) through the body of the
//! fuzz target, `zmtp/fuzz/shared/envelope.rs`, included here as it is there: every seed and
//! every input the fuzzer once found is checked by `cargo test --workspace`.
//!
//! The seeds are written by the ignored test below, with the framework's own encoders:
//! `cargo test -p sf-connections --test envelope_corpus_replay -- --ignored write_seed_corpus`.

#[path = "../../zmtp/fuzz/shared/envelope.rs"]
mod envelope;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sf_connections::wire::{
    self, Decimal, ErrorCode, NdArray, Publish, PySet, PyUuid, Reply, Request, WireError,
    WorkflowId,
};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../zmtp/fuzz/corpus/envelope")
}

#[test]
fn envelope_corpus_replays() {
    let dir = corpus();
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
    // The decoders recurse once per nesting level, up to rmp-serde's limit of 1024. An
    // optimised build stays well inside a tokio worker's 2 MiB stack at that depth (measured:
    // every decoder here survives 5,000 levels), but unoptimised test code needs about 5 KiB
    // a level, so the replay gets a stack that fits the limit in a debug build too.
    let failed: Vec<String> = std::thread::Builder::new()
        .stack_size(DEBUG_STACK)
        .spawn(move || {
            files
                .iter()
                .filter(|p| {
                    let data = std::fs::read(p).expect("corpus file");
                    catch_unwind(AssertUnwindSafe(|| envelope::envelope(&data))).is_err()
                })
                .map(|p| p.display().to_string())
                .collect()
        })
        .expect("replay thread")
        .join()
        .expect("replay thread");
    assert!(failed.is_empty(), "envelope: panicked on {failed:#?}");
}

/// Room for 1024 nested values in an unoptimised build (see above).
const DEBUG_STACK: usize = 32 << 20;

// ---- the seed corpus -------------------------------------------------------------------

#[derive(Serialize)]
struct Args {
    to_echo: String,
    decimal: Decimal,
    set: PySet<String>,
    array: NdArray,
    uuid: PyUuid,
    id: WorkflowId,
    bytes: serde_bytes::ByteBuf,
    list: Vec<u64>,
}

fn args() -> Args {
    Args {
        to_echo: "hello".into(),
        decimal: Decimal::new("-1.50E+3").unwrap(),
        set: PySet(vec!["a".into(), "b".into()]),
        array: NdArray(vec![1.5, -0.0, f64::INFINITY]),
        uuid: PyUuid(uuid::Uuid::from_u128(
            0x0b7c_0000_0000_4000_8000_0000_0000_0001,
        )),
        id: WorkflowId::Str("wf_2".into()),
        bytes: serde_bytes::ByteBuf::from(vec![0, 1, 255]),
        list: vec![0, 127, 128, 65_536, u64::MAX],
    }
}

fn uuid_id() -> WorkflowId {
    WorkflowId::Uuid(uuid::Uuid::from_u128(
        0x1234_5678_9abc_4def_8123_4567_89ab_cdef,
    ))
}

/// `depth` nested one-element arrays around nil, as `args`.
fn nested(depth: usize) -> Vec<u8> {
    let mut b = vec![0x82];
    b.extend(wire::encode("args").unwrap());
    b.extend(std::iter::repeat_n(0x91, depth));
    b.push(0xc0);
    b.extend(wire::encode("workflow_id").unwrap());
    b.push(0xc0);
    b
}

fn envelope_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let enc = |v: &dyn erased::Encode| v.encode();
    let request = wire::encode(&Request {
        args: args(),
        workflow_id: uuid_id(),
        traceparent: None,
    })
    .unwrap();
    let publish = Publish {
        args: serde_json::json!({"x": 1, "y": [true, null, 2.5]}),
        workflow_id: WorkflowId::Str("w".into()),
        seq: Some(7),
        pub_id: Some(u64::MAX),
        traceparent: None,
    };
    let mut trailing = request.clone();
    trailing.push(0xc0);
    let mut seeds = vec![
        ("request-typed", request.clone()),
        ("request-truncated", request[..request.len() / 2].to_vec()),
        ("request-trailing-byte", trailing),
        (
            "request-echo",
            enc(&Request {
                args: serde_json::json!({"to_echo": "hi"}),
                workflow_id: WorkflowId::None,
                traceparent: None,
            }),
        ),
        (
            "request-echo-undeclared-key",
            enc(&Request {
                args: serde_json::json!({"to_echo": "hi", "extra": 1}),
                workflow_id: WorkflowId::Str("id_1".into()),
                traceparent: None,
            }),
        ),
        (
            "request-wrong-type",
            enc(&Request {
                args: serde_json::json!({"to_echo": 5, "decimal": "x"}),
                workflow_id: uuid_id(),
                traceparent: None,
            }),
        ),
        (
            "request-no-args",
            enc(&serde_json::json!({"workflow_id": "w"})),
        ),
        ("not-a-map", enc(&serde_json::json!([1, 2, 3]))),
        (
            "reply-ok",
            enc(&Reply {
                return_args: Some(serde_json::json!({"echoed": "hi"})),
                workflow_id: uuid_id(),
                error: None,
                traceparent: None,
            }),
        ),
        (
            "reply-error",
            enc(&Reply::<()> {
                return_args: None,
                workflow_id: WorkflowId::Str("w".into()),
                error: Some(WireError::new(ErrorCode::InvalidArgs, "args.to_echo: bad")),
                traceparent: None,
            }),
        ),
        (
            "publish-topic",
            wire::encode_publish("TOPIC", &publish).unwrap(),
        ),
        (
            "publish-no-topic",
            wire::encode_publish("", &publish).unwrap(),
        ),
        (
            "publish-python",
            wire::encode_publish(
                "t",
                &Publish {
                    args: serde_json::json!({}),
                    workflow_id: WorkflowId::None,
                    seq: None,
                    pub_id: None,
                    traceparent: None,
                },
            )
            .unwrap(),
        ),
        ("topic-only", wire::topic_prefix("lonely")),
        ("topic-bad-utf8", vec![0xa2, 0xff, 0xfe, 0x80]),
        ("topic-past-end", vec![0xa9, b'a', b'b']),
        ("decimal", enc(&Decimal::new("NaN").unwrap())),
        (
            "decimal-bad",
            enc(&serde_json::json!({"__decimal__": true, "as_str": "1.2.3"})),
        ),
        ("set", enc(&PySet(vec![1u8, 2, 3]))),
        ("set-no-value", enc(&serde_json::json!({"__set__": true}))),
        ("ndarray", enc(&NdArray(vec![0.1, 0.2]))),
        (
            "ndarray-odd-length",
            enc(&serde_json::json!({"__numpy.ndarray__": true, "as_bytes": "abc"})),
        ),
        ("uuid", enc(&PyUuid(uuid::Uuid::nil()))),
        (
            "uuid-bad",
            enc(&serde_json::json!({"__uuid__": true, "as_str": "nope"})),
        ),
        ("workflow-id-str", enc(&WorkflowId::Str("x_1".into()))),
        (
            "wire-error",
            enc(&WireError::new(ErrorCode::Timeout, "late")),
        ),
        ("nested-100", nested(100)),
        ("nested-1100", nested(1100)),
        ("array32-huge-header", vec![0xdd, 0xff, 0xff, 0xff, 0xff]),
        (
            "map32-huge-header",
            vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0],
        ),
        ("bin32-huge-header", vec![0xc6, 0xff, 0xff, 0xff, 0xff, 0]),
        (
            "ext-fixext16",
            vec![0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("reserved-c1", vec![0xc1]),
        ("empty", Vec::new()),
    ];
    seeds.push(("nil", vec![0xc0]));
    seeds
}

/// `wire::encode` behind a trait object, so the seeds above can be listed as one table.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            sf_connections::wire::encode(self).unwrap()
        }
    }
}

/// Writes the seed corpus: envelopes as the framework encodes them, and the edge cases its
/// decoders refuse. Inputs the fuzzer found are kept beside these.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let dir = corpus();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in envelope_seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
