//! Byte-exact wire compatibility with Python `service_framework` 0.0.18.
//!
//! `vectors/wire_vectors.json` is produced by `tests/python/gen_vectors.py` with the real
//! package's `msg_pack`. For every vector this test builds the same value with the Rust types
//! and requires the encoding to be the SAME bytes, then decodes the Python bytes into the typed
//! form and re-encodes them (round trip). `vectors_are_what_python_produces` re-runs the
//! generator so the committed file cannot drift from what the package really emits.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sf_connections::wire::{
    decode, encode, encode_publish, split_publish, Decimal, NdArray, Publish, PySet, PyUuid, Reply,
    Request, WorkflowId,
};

const VECTORS_JSON: &str = include_str!("vectors/wire_vectors.json");
const FIXED_UUID: &str = "0b7c3a2e-5d4f-4e8a-9c1b-2f3e4d5a6b7c";

/// Every vector name this file checks; `every_vector_is_checked` keeps it in step with the
/// JSON so a vector added to the generator cannot go unchecked.
const CHECKED: &[&str] = &[
    "request_plain",
    "request_workflow_str",
    "request_workflow_uuid",
    "reply_plain",
    "reply_none",
    "publish_no_topic",
    "publish_topic_TOP",
    "request_decimal",
    "set_single",
    "ndarray_f64",
    "int_0",
    "int_127",
    "int_128",
    "int_255",
    "int_256",
    "int_65535",
    "int_65536",
    "int_4294967296",
    "int_-1",
    "int_-32",
    "int_-33",
    "int_-128",
    "int_-129",
    "int_-32768",
    "int_-32769",
    "float_1_5",
    "bytes_00_01",
    "nested",
    "str8_40_chars",
];

fn vectors() -> &'static BTreeMap<String, Vec<u8>> {
    static V: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    V.get_or_init(|| {
        let doc: serde_json::Value =
            serde_json::from_str(VECTORS_JSON).expect("wire_vectors.json is JSON");
        doc["vectors"]
            .as_object()
            .expect("a \"vectors\" object")
            .iter()
            .map(|(name, v)| {
                let hex = v["hex"]
                    .as_str()
                    .unwrap_or_else(|| panic!("vector {name} has no hex"));
                (name.clone(), from_hex(hex))
            })
            .collect()
    })
}

fn vector(name: &str) -> &'static [u8] {
    vectors()
        .get(name)
        .unwrap_or_else(|| panic!("no vector {name:?} in wire_vectors.json: regenerate it"))
}

fn from_hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Encodes `value` and requires Python's exact bytes; decodes Python's bytes into `T`,
/// requires the same value, and requires its re-encoding to be Python's bytes again.
fn check<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let expected = vector(name);
    let ours = encode(value).unwrap_or_else(|e| panic!("{name}: encode failed: {e}"));
    assert_eq!(
        hex(&ours),
        hex(expected),
        "{name}: Rust encoding of {value:?} differs from Python's"
    );
    let decoded: T =
        decode(expected).unwrap_or_else(|e| panic!("{name}: cannot decode Python's bytes: {e}"));
    assert_eq!(&decoded, value, "{name}: decoded value differs");
    let again = encode(&decoded).expect("re-encode");
    assert_eq!(
        hex(&again),
        hex(expected),
        "{name}: round trip changed the bytes"
    );
}

fn fixed_uuid() -> uuid::Uuid {
    uuid::Uuid::parse_str(FIXED_UUID).unwrap()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echo {
    to_echo: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echoed {
    echoed: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Priced {
    price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    value: i64,
    name: String,
}

#[test]
fn requests() {
    let echo = Echo {
        to_echo: "hello".into(),
    };
    check(
        "request_plain",
        &Request {
            args: echo.clone(),
            workflow_id: WorkflowId::None,
            traceparent: None,
        },
    );
    check(
        "request_workflow_str",
        &Request {
            args: echo.clone(),
            workflow_id: WorkflowId::Str("abc_1".into()),
            traceparent: None,
        },
    );
    check(
        "request_workflow_uuid",
        &Request {
            args: echo.clone(),
            workflow_id: WorkflowId::Uuid(fixed_uuid()),
            traceparent: None,
        },
    );
    // The same envelopes with untyped args.
    let args = serde_json::json!({"to_echo": "hello"});
    check(
        "request_plain",
        &Request {
            args: args.clone(),
            workflow_id: WorkflowId::None,
            traceparent: None,
        },
    );
    check(
        "request_workflow_uuid",
        &Request {
            args,
            workflow_id: WorkflowId::Uuid(fixed_uuid()),
            traceparent: None,
        },
    );
    // A derived id prints as Python's "{id}_{n}".
    assert_eq!(
        WorkflowId::Str("abc".into()).derived(1),
        WorkflowId::Str("abc_1".into())
    );
}

#[test]
fn workflow_id_forms_decode_from_python() {
    #[derive(Deserialize)]
    struct OnlyId {
        workflow_id: WorkflowId,
    }
    let id = |name| decode::<OnlyId>(vector(name)).unwrap().workflow_id;
    assert_eq!(id("request_plain"), WorkflowId::None);
    assert_eq!(id("request_workflow_str"), WorkflowId::Str("abc_1".into()));
    assert_eq!(id("request_workflow_uuid"), WorkflowId::Uuid(fixed_uuid()));
    assert_eq!(id("request_workflow_uuid").to_string(), FIXED_UUID);
}

#[test]
fn replies() {
    check(
        "reply_plain",
        &Reply {
            return_args: Some(Echoed {
                echoed: "hello".into(),
            }),
            workflow_id: WorkflowId::None,
            error: None,
            traceparent: None,
        },
    );
    check(
        "reply_none",
        &Reply::<Echoed> {
            return_args: None,
            workflow_id: WorkflowId::Str("abc".into()),
            error: None,
            traceparent: None,
        },
    );
}

#[test]
fn publish_without_topic() {
    let env = Publish {
        args: Sample {
            value: 7,
            name: "x".into(),
        },
        workflow_id: WorkflowId::None,
        seq: None,
        pub_id: None,
        traceparent: None,
    };
    let py = vector("publish_no_topic");
    assert_eq!(hex(&encode_publish("", &env).unwrap()), hex(py));
    check("publish_no_topic", &env);
    let (topic, body) = split_publish(py).unwrap();
    assert_eq!(topic, None);
    assert_eq!(body, py);
}

#[test]
fn publish_with_topic() {
    let env = Publish {
        args: Sample {
            value: 7,
            name: "x".into(),
        },
        workflow_id: WorkflowId::Uuid(fixed_uuid()),
        seq: None,
        pub_id: None,
        traceparent: None,
    };
    let py = vector("publish_topic_TOP");
    assert_eq!(
        hex(&encode_publish("TOP", &env).unwrap()),
        hex(py),
        "publish frame differs from Python's"
    );
    // The subscription prefix is msgpack("TOP"), exactly the bytes the frame starts with.
    let prefix = sf_connections::wire::topic_prefix("TOP");
    assert_eq!(hex(&prefix), "a3544f50");
    assert!(py.starts_with(&prefix));
    assert!(
        !sf_connections::wire::topic_prefix("TOPIC").starts_with(&prefix),
        "TOP must not match TOPIC"
    );
    let (topic, body) = split_publish(py).unwrap();
    assert_eq!(topic.as_deref(), Some("TOP"));
    assert_eq!(body, &py[prefix.len()..]);
    let decoded: Publish<Sample> = decode(body).unwrap();
    assert_eq!(decoded, env);
    assert_eq!(
        hex(&encode_publish("TOP", &decoded).unwrap()),
        hex(py),
        "round trip changed the bytes"
    );
}

#[test]
fn extension_types() {
    check(
        "request_decimal",
        &Request {
            args: Priced {
                price: Decimal::new("1.50").unwrap(),
            },
            workflow_id: WorkflowId::None,
            traceparent: None,
        },
    );
    // Python keeps the trailing zero; so does the Rust face.
    let d: Request<Priced> = decode(vector("request_decimal")).unwrap();
    assert_eq!(d.args.price.as_str(), "1.50");
    check("set_single", &PySet(vec![1i64]));
    check("ndarray_f64", &NdArray(vec![1.0, 2.5]));
    let uuid_map = encode(&PyUuid(fixed_uuid())).unwrap();
    let py = vector("request_workflow_uuid");
    assert!(
        py.windows(uuid_map.len()).any(|w| w == uuid_map.as_slice()),
        "PyUuid encodes as the UUID map Python sends"
    );
}

#[test]
fn integers_at_every_size_boundary() {
    for v in [
        0i64,
        127,
        128,
        255,
        256,
        65535,
        65536,
        1 << 32,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32768,
        -32769,
    ] {
        let name = format!("int_{v}");
        check(&name, &v);
        check(&name, &rmpv::Value::from(v));
        check(&name, &serde_json::Value::from(v));
        if v >= 0 {
            check(&name, &(v as u64));
        }
    }
    check("int_255", &255u8);
    check("int_-128", &-128i8);
    check("int_-32769", &-32769i32);
}

#[test]
fn scalars() {
    check("float_1_5", &1.5f64);
    check("float_1_5", &rmpv::Value::F64(1.5));
    check("bytes_00_01", &serde_bytes::ByteBuf::from(vec![0u8, 1]));
    check("bytes_00_01", &rmpv::Value::Binary(vec![0, 1]));
    check("str8_40_chars", &"a".repeat(40));
}

#[test]
fn nested_values() {
    use rmpv::Value;
    let s = |x: &str| Value::from(x);
    let v = Value::Map(vec![
        (
            s("list"),
            Value::Array(vec![
                Value::from(1),
                s("two"),
                Value::Nil,
                Value::Boolean(true),
                Value::F64(2.5),
            ]),
        ),
        (
            s("map"),
            Value::Map(vec![(
                s("inner"),
                Value::Map(vec![
                    (s("empty"), Value::Array(vec![])),
                    (s("flag"), Value::Boolean(false)),
                ]),
            )]),
        ),
    ]);
    check("nested", &v);
    check(
        "nested",
        &serde_json::json!({"list": [1, "two", null, true, 2.5], "map": {"inner": {"empty": [], "flag": false}}}),
    );
}

#[test]
fn every_vector_is_checked() {
    let in_file: Vec<&str> = vectors().keys().map(String::as_str).collect();
    let mut checked: Vec<&str> = CHECKED.to_vec();
    checked.sort_unstable();
    let mut file_sorted = in_file.clone();
    file_sorted.sort_unstable();
    assert_eq!(
        file_sorted, checked,
        "wire_vectors.json and this test's CHECKED list differ"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The venv interpreter: `SF_PYTHON` (set by scripts/test), else what `scripts/python-env`
/// prints (it creates the venv on first use).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SF_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = workspace_root().join("scripts/python-env");
    let out = Command::new(&script).output().unwrap_or_else(|e| {
        panic!(
            "SF_PYTHON is unset and {} could not run: {e}",
            script.display()
        )
    });
    assert!(
        out.status.success(),
        "SF_PYTHON is unset and {} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

#[test]
fn vectors_are_what_python_produces() {
    let root = workspace_root();
    let tmp = std::env::temp_dir().join(format!("sf_wire_vectors_{}.json", std::process::id()));
    let py = python();
    let out = Command::new(&py)
        .arg(root.join("tests/python/gen_vectors.py"))
        .arg(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    let fresh = std::fs::read_to_string(&tmp);
    let _ = std::fs::remove_file(&tmp);
    assert!(
        out.status.success(),
        "gen_vectors.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = fresh.expect("gen_vectors.py wrote its output");
    let committed =
        std::fs::read_to_string(root.join("connections/tests/vectors/wire_vectors.json")).unwrap();
    assert!(
        fresh == committed,
        "connections/tests/vectors/wire_vectors.json is stale: regenerate it with \
         `$(scripts/python-env) tests/python/gen_vectors.py`\n--- fresh ---\n{fresh}"
    );
}
