//! The body of the `envelope` fuzz target: every decoder of `sf_connections::wire` that a
//! service runs on a frame from the network. Shared, by `#[path]`, by the fuzz target
//! (`zmtp/fuzz/fuzz_targets/envelope.rs`) and by the corpus replay test
//! (`connections/tests/envelope_corpus_replay.rs`), so CI replays the saved inputs through
//! exactly this code. It takes arbitrary bytes, must not panic, and asserts that the
//! decoders agree with one another.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use sf_connections::wire::{
    self, Decimal, NdArray, Publish, PySet, PyUuid, Reply, Request, WireError, WorkflowId,
};

/// Arguments with a field of every type the wire gives a shape to, as a handler declares
/// them (absent fields are `None`).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Typed {
    decimal: Option<Decimal>,
    set: Option<PySet<String>>,
    array: Option<NdArray>,
    uuid: Option<PyUuid>,
    id: Option<WorkflowId>,
    json: Option<serde_json::Value>,
    bytes: Option<serde_bytes::ByteBuf>,
    list: Option<Vec<u64>>,
    text: Option<String>,
    error: Option<WireError>,
}

/// Arguments of a handler that refuses undeclared keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Strict {
    to_echo: String,
}

/// The whole target.
pub fn envelope(data: &[u8]) {
    // The header walk agrees with a full decoder on where the value ends.
    let len = wire::value_len(data);
    if let Some(n) = len {
        assert!(
            n >= 1 && n <= data.len(),
            "value_len {n} of {} bytes",
            data.len()
        );
    }
    // rmp-serde, the decoder `wire::decode` runs before `value_len` checks the extent.
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(data));
    if IgnoredAny::deserialize(&mut de).is_ok() {
        let read = usize::try_from(de.position()).expect("position within the input");
        assert_eq!(len, Some(read), "value_len disagrees with rmp-serde");
    }
    let mut cursor = data;
    if rmpv::decode::read_value(&mut cursor).is_ok() {
        // rmpv reads the reserved marker 0xc1 as nil; value_len refuses it, as rmp-serde
        // does. Where both accept, they agree.
        if let Some(n) = len {
            assert_eq!(
                n,
                data.len() - cursor.len(),
                "value_len disagrees with rmpv"
            );
        }
    }
    if wire::decode::<IgnoredAny>(data).is_ok() {
        assert_eq!(len, Some(data.len()));
    }

    // A request, as a replyer or a puller decodes it (and explains a failure).
    request::<rmpv::Value>(data);
    request::<serde_json::Value>(data);
    request::<Typed>(data);
    request::<Strict>(data);

    // A reply, as a requester decodes it.
    let _ = wire::decode::<Reply<rmpv::Value>>(data);
    let _ = wire::decode::<Reply<Typed>>(data);
    let _ = wire::decode::<Reply<()>>(data);

    // A publish, as a subscriber splits and decodes it.
    match wire::split_publish(data) {
        Ok((topic, body)) => {
            if topic.is_some() {
                assert!(!body.is_empty() && body.len() < data.len());
            } else {
                assert_eq!(body, data);
            }
            let _ = wire::decode::<Publish<rmpv::Value>>(body);
            let _ = wire::decode::<Publish<Typed>>(body);
            let _ = wire::decode::<Publish<IgnoredAny>>(body);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // Python's types on their own.
    let _ = wire::decode::<WorkflowId>(data).map(|id| id.to_string());
    let _ = wire::decode::<Decimal>(data);
    let _ = wire::decode::<PySet<rmpv::Value>>(data);
    let _ = wire::decode::<NdArray>(data);
    let _ = wire::decode::<PyUuid>(data);
    let _ = wire::decode::<WireError>(data).map(|e| e.to_string());
}

/// Decodes a request the way `sf_connections::handler::typed` does: the path-tracking
/// decoder, and on failure the salvage of the workflow id for the error reply.
fn request<A: DeserializeOwned>(data: &[u8]) {
    let plain = wire::decode::<Request<A>>(data).is_ok();
    match wire::decode_with_path::<Request<A>>(data) {
        Ok(_) => assert!(
            plain,
            "the path-tracking decoder accepted what the plain one refused"
        ),
        Err(e) => {
            assert!(
                !plain,
                "the path-tracking decoder refused what the plain one accepted"
            );
            let (id, err) = sf_connections::handler::decode_failure(data, e.to_string());
            let _ = (id.to_string(), err.to_string());
        }
    }
}
