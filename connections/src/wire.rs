//! The wire layer: bytes <-> envelopes, byte-compatible with Python `service_framework` 0.0.18.
//!
//! Every message is ONE ZeroMQ frame of msgpack (`str` as msgpack str, bytes as msgpack bin):
//! - a request is `{"args": {...}, "workflow_id": ID}`;
//! - a reply is `{"return_args": {...} | nil, "workflow_id": ID}`, plus `"error": {code, message}`
//!   when the framework has to say something the original could not express (a Python peer
//!   ignores the extra key);
//! - a publish is `msgpack(topic)` immediately followed by `msgpack(envelope)`, or only the
//!   envelope when there is no topic. Framework publishers add `"seq"` and `"pub_id"` so that a
//!   framework subscriber can count what it lost; Python ignores both.
//! - every envelope may carry `"traceparent"`, a W3C trace context string
//!   (`00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`, see [`TraceParent`]); it is
//!   omitted when absent, a Python 0.0.18 peer ignores it, and a value that is not a valid
//!   traceparent is read as absent, never as a failure.
//!
//! Python's custom types travel as maps recognised by key presence; [`Decimal`], [`PySet`],
//! [`PyUuid`] and [`NdArray`] are their Rust faces, and [`WorkflowId`] accepts nil, a string or
//! the UUID map.

use std::fmt;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The id a message carries for log correlation. A receiver accepts all three forms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum WorkflowId {
    /// msgpack nil (Python's `None`).
    #[default]
    None,
    /// A plain string, e.g. `"0b7c...-..._2"` for the second send inside a handler.
    Str(String),
    /// A UUID, sent as `{"__uuid__": true, "as_str": "..."}` (Python's `uuid.UUID`).
    Uuid(uuid::Uuid),
}

impl WorkflowId {
    /// A fresh random id, as the original makes for every main-mode or init call.
    pub fn new_random() -> Self {
        WorkflowId::Uuid(uuid::Uuid::new_v4())
    }

    /// True for [`WorkflowId::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, WorkflowId::None)
    }

    /// The `n`-th derived id inside a handler, as the original numbers them: the first send
    /// reuses the incoming id, later ones are `"{id}_1"`, `"{id}_2"`, ...
    pub fn derived(&self, n: u64) -> WorkflowId {
        if n == 0 {
            return self.clone();
        }
        match self {
            WorkflowId::None => WorkflowId::None,
            other => WorkflowId::Str(format!("{other}_{n}")),
        }
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkflowId::None => f.write_str("None"),
            WorkflowId::Str(s) => f.write_str(s),
            WorkflowId::Uuid(u) => write!(f, "{u}"),
        }
    }
}

impl Serialize for WorkflowId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            WorkflowId::None => s.serialize_none(),
            WorkflowId::Str(v) => s.serialize_str(v),
            WorkflowId::Uuid(u) => PyUuid(*u).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for WorkflowId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WorkflowId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("nil, a string or a {\"__uuid__\": true, \"as_str\": ...} map")
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<WorkflowId, E> {
                Ok(WorkflowId::None)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<WorkflowId, E> {
                Ok(WorkflowId::None)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<WorkflowId, E> {
                Ok(WorkflowId::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<WorkflowId, E> {
                Ok(WorkflowId::Str(v))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<WorkflowId, A::Error> {
                let u = parse_uuid(read_tagged(map, "__uuid__", "as_str")?)
                    .map_err(de::Error::custom)?;
                Ok(WorkflowId::Uuid(u))
            }
        }
        d.deserialize_any(V)
    }
}

/// A W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>): the trace a
/// message belongs to and the span that sent it. On the wire and in HTTP headers it is the
/// 55-character string `00-<trace id>-<parent span id>-<flags>` in lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// The length of a version-00 traceparent.
const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Parses a version-00 traceparent strictly: exactly 55 characters, lowercase hex, dashes
    /// in place, neither id all zeros. Anything else is `None` (a peer's bad value is treated
    /// as absent).
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != TRACEPARENT_LEN || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_decode(&b[3..35], &mut trace_id)?;
        hex_decode(&b[36..52], &mut span_id)?;
        hex_decode(&b[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// A new trace (random trace id and span id, sampled), for a message that arrives with
    /// none or a send outside any handler.
    pub fn new_root() -> Self {
        let id = (u128::from(fast_random()) << 64) | u128::from(fast_random());
        let trace_id = nonzero(id).to_be_bytes();
        TraceParent {
            trace_id,
            span_id: Self::new_span_id(),
            flags: 0x01,
        }
    }

    /// The same trace with a new span id: the next hop's span, whose parent is `self`.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: Self::new_span_id(),
            ..*self
        }
    }

    fn new_span_id() -> [u8; 8] {
        let id = fast_random();
        (if id == 0 { 1 } else { id }).to_be_bytes()
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The 8-byte span id (the parent span of whoever receives this traceparent).
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The trace id as 32 lowercase hex characters, as log lines print it.
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }

    /// The encoded form, on the stack.
    fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        hex_encode(&self.trace_id, &mut out[3..35]);
        hex_encode(&self.span_id, &mut out[36..52]);
        hex_encode(&[self.flags], &mut out[53..55]);
        out
    }
}

/// A random 64-bit value for ids: wyrand on a per-thread state seeded from the OS generator
/// (ids need to be unique and unguessable enough for tracing, not secret; this is a few
/// instructions where `rand::random` costs a generator block now and then on every
/// replyer's request path).
fn fast_random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    STATE.with(|state| {
        let x = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(x);
        let t = u128::from(x).wrapping_mul(u128::from(x ^ 0xe703_7ed1_a0b4_28db));
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn nonzero(v: u128) -> u128 {
    if v == 0 {
        1
    } else {
        v
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Lowercase hex only, as the W3C format requires.
fn hex_decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(hex[2 * i])? << 4) | nibble(hex[2 * i + 1])?;
    }
    Some(())
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.encode();
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl std::str::FromStr for TraceParent {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TraceParent::parse(s).ok_or_else(|| Error::Codec("not a W3C traceparent".into()))
    }
}

/// A trace id printed as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex([u8; 16]);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 32];
        hex_encode(&self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let buf = self.encode();
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

/// Strict: only a valid traceparent string. Envelopes read theirs with
/// [`lenient_traceparent`], which takes anything else as absent.
impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        lenient_traceparent(d)?.ok_or_else(|| de::Error::custom("not a W3C traceparent"))
    }
}

/// Reads an envelope's `traceparent`: a valid one, or `None` for nil and for any other value
/// whatever its type (consumed and ignored, never an error: one peer's bad trace context must
/// not fail its request).
pub fn lenient_traceparent<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<TraceParent>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<TraceParent>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a traceparent string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
            Ok(TraceParent::parse(v))
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> std::result::Result<Self::Value, E> {
            Ok(std::str::from_utf8(v).ok().and_then(TraceParent::parse))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(
            self,
            d: D2,
        ) -> std::result::Result<Self::Value, D2::Error> {
            lenient_traceparent(d)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_enum<A: de::EnumAccess<'de>>(
            self,
            data: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            IgnoredAny.visit_enum(data).map(|_| None)
        }
    }
    d.deserialize_any(V)
}

/// Reads one of Python's tagged maps, `{tag: true, key: value}`, recognised by key
/// presence as the original decodes them, and returns `value`.
fn read_tagged<'de, A: MapAccess<'de>, V: Deserialize<'de>>(
    mut map: A,
    tag: &str,
    key: &'static str,
) -> std::result::Result<V, A::Error> {
    let (mut tagged, mut value) = (false, None);
    while let Some(k) = map.next_key::<String>()? {
        if k == tag {
            map.next_value::<IgnoredAny>()?;
            tagged = true;
        } else if k == key {
            value = Some(map.next_value()?);
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    if !tagged {
        return Err(de::Error::custom(format!("expected the key {tag:?}")));
    }
    value.ok_or_else(|| de::Error::missing_field(key))
}

/// Deserializes a tagged map and converts its value into `T`.
fn deserialize_tagged<'de, D, V, T>(
    d: D,
    tag: &'static str,
    key: &'static str,
    convert: fn(V) -> std::result::Result<T, String>,
) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Tagged<V, T> {
        tag: &'static str,
        key: &'static str,
        convert: fn(V) -> std::result::Result<T, String>,
    }
    impl<'de, V: Deserialize<'de>, T> Visitor<'de> for Tagged<V, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a {{{:?}: true, {:?}: ...}} map", self.tag, self.key)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
            let value = read_tagged(map, self.tag, self.key)?;
            (self.convert)(value).map_err(de::Error::custom)
        }
    }
    d.deserialize_map(Tagged { tag, key, convert })
}

fn parse_uuid(s: String) -> std::result::Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(&s).map_err(|e| format!("bad UUID {s:?}: {e}"))
}

/// Python's `uuid.UUID`: `{"__uuid__": true, "as_str": "..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PyUuid(pub uuid::Uuid);

impl Serialize for PyUuid {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("__uuid__", &true)?;
        m.serialize_entry("as_str", &self.0.hyphenated().to_string())?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for PyUuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_tagged(d, "__uuid__", "as_str", |s: String| {
            parse_uuid(s).map(PyUuid)
        })
    }
}

/// Python's `decimal.Decimal`, kept as its exact decimal string: `{"__decimal__": true,
/// "as_str": "1.5"}`. No precision is lost in transit; convert with `as_str()`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal(String);

impl Decimal {
    /// Validates that `s` is a decimal number as Python's `Decimal(str)` would print it
    /// (digits, one optional point, optional sign and exponent, or NaN / Infinity).
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        if is_decimal_literal(&s) {
            Ok(Decimal(s))
        } else {
            Err(Error::Codec(format!("{s:?} is not a decimal number")))
        }
    }

    /// The exact decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_decimal_literal(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if matches!(body, "NaN" | "sNaN" | "Infinity" | "Inf") {
        return true;
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let mut digits = 0;
    let mut points = 0;
    for c in mantissa.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' => points += 1,
            _ => return false,
        }
    }
    let exp_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    digits > 0 && points <= 1 && exp_ok
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("__decimal__", &true)?;
        m.serialize_entry("as_str", &self.0)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_tagged(d, "__decimal__", "as_str", |s: String| {
            Decimal::new(s).map_err(|e| e.to_string())
        })
    }
}

/// Python's `set`: `{"__set__": true, "value": [...]}`. Order is whatever the sender had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PySet<T>(pub Vec<T>);

impl<T: Serialize> Serialize for PySet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("__set__", &true)?;
        m.serialize_entry("value", &self.0)?;
        m.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for PySet<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_tagged(d, "__set__", "value", |v: Vec<T>| Ok(PySet(v)))
    }
}

/// A numpy array as 0.0.18 sends it: `{"__numpy.ndarray__": true, "as_bytes": <bin>}`, the
/// raw native-endian float64 buffer (the shape is lost on the wire, as in the original).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray(pub Vec<f64>);

impl Serialize for NdArray {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        for v in &self.0 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("__numpy.ndarray__", &true)?;
        m.serialize_entry("as_bytes", serde_bytes::Bytes::new(&bytes))?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for NdArray {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_tagged(
            d,
            "__numpy.ndarray__",
            "as_bytes",
            |raw: serde_bytes::ByteBuf| {
                if raw.len() % 8 != 0 {
                    return Err(format!(
                        "ndarray buffer of {} bytes is not a whole number of float64",
                        raw.len()
                    ));
                }
                let values = raw
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
                    .collect();
                Ok(NdArray(values))
            },
        )
    }
}

/// The closed set of error codes a reply can carry.
///
/// The framework sends only these codes. A code this version does not know (a newer peer's)
/// decodes as [`ErrorCode::Unknown`], keeping the code it carried in the message, so one new
/// code never fails the whole reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame was not msgpack, or not a map with `args`.
    Malformed,
    /// The frame exceeded the connection's size limit.
    TooLarge,
    /// `args` did not match the declared model (missing, wrong type, undeclared key).
    InvalidArgs,
    /// The handler returned something its own declared return model rejects.
    InvalidReturn,
    /// The handler failed; the message is the handler's own.
    HandlerError,
    /// No such connection, state or route.
    NotFound,
    /// The request was not answered in time.
    Timeout,
    /// The service is shutting down or over its concurrency limit.
    Unavailable,
    /// Anything else: a bug on the serving side (a handler panic among them).
    Internal,
    /// A service this one called failed; the message names it and carries its code and
    /// message. Not the caller's fault, whatever the downstream said.
    DependencyFailed,
    /// Received only: a code this version does not know.
    Unknown,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::InvalidReturn => "invalid_return",
            ErrorCode::HandlerError => "handler_error",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::DependencyFailed => "dependency_failed",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one serializable error a reply carries: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(from = "RawWireError")]
#[error("{code}: {message}")]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail naming the problem (the field, the limit, the handler's message).
    pub message: String,
}

/// The error as it arrives: any code string.
#[derive(Deserialize)]
struct RawWireError {
    code: String,
    #[serde(default)]
    message: String,
}

impl From<RawWireError> for WireError {
    fn from(raw: RawWireError) -> Self {
        let known = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&raw.code);
        match ErrorCode::deserialize(known) {
            Ok(code) => WireError {
                code,
                message: raw.message,
            },
            Err(_) => WireError {
                code: ErrorCode::Unknown,
                message: format!("[{}] {}", raw.code, raw.message),
            },
        }
    }
}

impl WireError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// requester -> replyer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request<A> {
    /// The arguments, validated against the connection's model on arrival.
    pub args: A,
    /// Log correlation id.
    #[serde(default)]
    pub workflow_id: WorkflowId,
    /// The W3C trace context of the sending span; omitted when absent, ignored by Python.
    #[serde(
        default,
        deserialize_with = "lenient_traceparent",
        skip_serializing_if = "Option::is_none"
    )]
    pub traceparent: Option<TraceParent>,
}

/// replyer -> requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<R> {
    /// The handler's result; nil when it returned nothing or failed.
    pub return_args: Option<R>,
    /// The request's id, echoed.
    #[serde(default)]
    pub workflow_id: WorkflowId,
    /// Present only on failure. Python peers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// The trace context of the span that served the request (same trace as the request's).
    #[serde(
        default,
        deserialize_with = "lenient_traceparent",
        skip_serializing_if = "Option::is_none"
    )]
    pub traceparent: Option<TraceParent>,
}

/// publisher -> subscribers (after the topic prefix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish<A> {
    /// The published arguments.
    pub args: A,
    /// Log correlation id.
    #[serde(default)]
    pub workflow_id: WorkflowId,
    /// Per-publisher sequence number, from 1 (framework publishers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Random id of the publishing socket, so a subscriber counts gaps per publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pub_id: Option<u64>,
    /// The W3C trace context of the publishing span; omitted when absent.
    #[serde(
        default,
        deserialize_with = "lenient_traceparent",
        skip_serializing_if = "Option::is_none"
    )]
    pub traceparent: Option<TraceParent>,
}

/// Encodes any value as msgpack with named struct fields, as Python's `msgpack.packb` would
/// encode the equivalent dict.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    // Room for a typical request or reply, so encoding it does not reallocate.
    let mut out = Vec::with_capacity(256);
    encode_into(&mut out, value)?;
    Ok(out)
}

/// Like [`encode`] but appends to `out` (used to put a topic prefix before the envelope).
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<()> {
    let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
    value
        .serialize(&mut ser)
        .map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes one msgpack value that must span the whole of `bytes`.
///
/// Strings and binaries are read straight from the slice (no intermediate buffer); the extent
/// of the value is checked afterwards by [`value_len`], which only walks the headers.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    let v = T::deserialize(&mut de).map_err(|e| Error::Codec(e.to_string()))?;
    whole_value(bytes)?;
    Ok(v)
}

/// Like [`decode`], but a failure names where in the value it happened (`args.to_echo:
/// invalid type: integer `5`, expected a string`), which is what a caller needs to fix it.
/// The path is tracked only to explain a failure: valid input takes the plain decoder.
pub fn decode_with_path<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode(bytes).or_else(|_| decode_tracking_path(bytes))
}

fn decode_tracking_path<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            Error::Codec(e.inner().to_string())
        } else {
            Error::Codec(format!("{path}: {}", e.inner()))
        }
    })?;
    whole_value(bytes)?;
    Ok(v)
}

/// Fails if `bytes` holds more than the one msgpack value it starts with.
fn whole_value(bytes: &[u8]) -> Result<()> {
    match value_len(bytes) {
        Some(n) if n == bytes.len() => Ok(()),
        Some(n) => Err(Error::Codec(format!(
            "{} trailing bytes after the msgpack value",
            bytes.len() - n
        ))),
        None => Err(Error::Codec("the msgpack value is cut short".into())),
    }
}

/// The length in bytes of the msgpack value at the start of `b`, or `None` if it is cut short
/// or starts with the reserved byte 0xc1. Walks headers only: a string or a binary is skipped
/// by its length, an array or a map adds its items to the count still to walk.
pub fn value_len(b: &[u8]) -> Option<usize> {
    // A big-endian length of `n` bytes at `at`.
    let be = |at: usize, n: usize| -> Option<usize> {
        let s = b.get(at..at + n)?;
        Some(s.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
    };
    let mut pos = 0usize;
    let mut left: usize = 1;
    while left > 0 {
        left -= 1;
        let m = *b.get(pos)?;
        pos += 1;
        // (header bytes after the marker, payload bytes, items to walk)
        let (head, body, items) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0, 0),
            0x80..=0x8f => (0, 0, 2 * usize::from(m & 0x0f)),
            0x90..=0x9f => (0, 0, usize::from(m & 0x0f)),
            0xa0..=0xbf => (0, usize::from(m & 0x1f), 0),
            0xc4 | 0xd9 => (1, be(pos, 1)?, 0),
            0xc5 | 0xda => (2, be(pos, 2)?, 0),
            0xc6 | 0xdb => (4, be(pos, 4)?, 0),
            0xc7 => (2, be(pos, 1)?, 0),
            0xc8 => (3, be(pos, 2)?, 0),
            0xc9 => (5, be(pos, 4)?, 0),
            0xcc | 0xd0 => (0, 1, 0),
            0xcd | 0xd1 => (0, 2, 0),
            0xca | 0xce | 0xd2 => (0, 4, 0),
            0xcb | 0xcf | 0xd3 => (0, 8, 0),
            0xd4 => (1, 1, 0),
            0xd5 => (1, 2, 0),
            0xd6 => (1, 4, 0),
            0xd7 => (1, 8, 0),
            0xd8 => (1, 16, 0),
            0xdc => (2, 0, be(pos, 2)?),
            0xdd => (4, 0, be(pos, 4)?),
            0xde => (2, 0, be(pos, 2)?.checked_mul(2)?),
            0xdf => (4, 0, be(pos, 4)?.checked_mul(2)?),
            0xc1 => return None,
        };
        pos = pos.checked_add(head)?.checked_add(body)?;
        if pos > b.len() {
            return None;
        }
        left = left.checked_add(items)?;
    }
    Some(pos)
}

/// The subscription prefix of a topic: the bytes of `msgpack(topic)`. Its length header makes
/// a prefix match an exact topic match, which is the original's semantics.
pub fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + 5);
    rmp::encode::write_str(&mut out, topic).expect("writing to a Vec cannot fail");
    out
}

/// Builds a publish frame: `msgpack(topic) + msgpack(envelope)`, or just the envelope when the
/// topic is empty (as the original does).
pub fn encode_publish<A: Serialize>(topic: &str, envelope: &Publish<A>) -> Result<Vec<u8>> {
    let mut out = if topic.is_empty() {
        Vec::with_capacity(64)
    } else {
        topic_prefix(topic)
    };
    encode_into(&mut out, envelope)?;
    Ok(out)
}

/// Splits a received publish frame into (topic, envelope bytes). A frame that starts with a
/// msgpack string followed by more bytes carries a topic; a frame that is one value does not.
pub fn split_publish(frame: &[u8]) -> Result<(Option<String>, &[u8])> {
    let mut cursor = frame;
    match rmp::decode::read_str_len(&mut cursor) {
        Ok(len) => {
            let len = len as usize;
            if cursor.len() < len {
                return Err(Error::Codec(
                    "topic string runs past the end of the frame".into(),
                ));
            }
            let topic = std::str::from_utf8(&cursor[..len])
                .map_err(|e| Error::Codec(format!("topic is not UTF-8: {e}")))?;
            let rest = &cursor[len..];
            if rest.is_empty() {
                // A lone string is an envelope-less message, not a topic.
                return Ok((None, frame));
            }
            Ok((Some(topic.to_owned()), rest))
        }
        Err(_) => Ok((None, frame)),
    }
}

/// What a lenient look at a frame that failed typed decoding tells: its workflow id if any,
/// and whether the envelope itself was sound (so the failure was in `args`).
pub(crate) fn salvage_workflow_id(bytes: &[u8]) -> (WorkflowId, bool) {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        args: Option<IgnoredAny>,
        #[serde(default)]
        workflow_id: Option<WorkflowId>,
    }
    match decode::<Loose>(bytes) {
        Ok(l) => (l.workflow_id.unwrap_or_default(), l.args.is_some()),
        Err(_) => (WorkflowId::None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_a_code_this_version_does_not_know_still_decodes() {
        #[derive(Serialize)]
        struct Raw<'a> {
            return_args: Option<()>,
            workflow_id: Option<()>,
            error: RawErr<'a>,
        }
        #[derive(Serialize)]
        struct RawErr<'a> {
            code: &'a str,
            message: &'a str,
        }
        let frame = |code| {
            rmp_serde::to_vec_named(&Raw {
                return_args: None,
                workflow_id: None,
                error: RawErr {
                    code,
                    message: "quota spent",
                },
            })
            .unwrap()
        };
        let reply: Reply<serde_json::Value> = decode(&frame("rate_limited")).unwrap();
        let e = reply.error.expect("the error is kept");
        assert_eq!(e.code, ErrorCode::Unknown);
        assert_eq!(
            e.message, "[rate_limited] quota spent",
            "the code it carried is kept"
        );
        // A known code decodes as itself, message untouched.
        let reply: Reply<serde_json::Value> = decode(&frame("unavailable")).unwrap();
        assert_eq!(
            reply.error,
            Some(WireError::new(ErrorCode::Unavailable, "quota spent"))
        );
    }

    #[test]
    fn traceparents_parse_strictly_and_round_trip() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(text).expect("the W3C example parses");
        assert_eq!(tp.to_string(), text);
        assert_eq!(
            tp.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(tp.flags(), 1);
        let child = tp.child();
        assert_eq!(child.trace_id(), tp.trace_id());
        assert_ne!(child.span_id(), tp.span_id());
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        assert_ne!(root.trace_id(), TraceParent::new_root().trace_id());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bad_traceparent_in_an_envelope_reads_as_absent() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (value, expected) in [
            (serde_json::json!(good), TraceParent::parse(good)),
            (serde_json::json!("garbage"), None),
            (serde_json::json!(7), None),
            (serde_json::json!(null), None),
            (serde_json::json!({"a": [1, 2]}), None),
            (serde_json::json!([good]), None),
        ] {
            let frame = encode(&serde_json::json!({
                "args": {"x": 1}, "workflow_id": "w", "traceparent": value
            }))
            .unwrap();
            let r: Request<serde_json::Value> = decode(&frame).expect("the request decodes");
            assert_eq!(r.traceparent, expected, "{value}");
            assert_eq!(r.workflow_id, WorkflowId::Str("w".into()));
        }
        // Absent: omitted on the wire, as 0.0.18 sends it.
        let r = Request {
            args: 1u8,
            workflow_id: WorkflowId::None,
            traceparent: None,
        };
        let frame = encode(&r).unwrap();
        assert!(!frame.windows(11).any(|w| w == b"traceparent"));
        assert_eq!(decode::<Request<u8>>(&frame).unwrap(), r);
    }

    #[test]
    fn workflow_ids_derive_like_the_original() {
        let id = WorkflowId::Str("abc".into());
        assert_eq!(id.derived(0), id);
        assert_eq!(id.derived(2), WorkflowId::Str("abc_2".into()));
        assert_eq!(WorkflowId::None.derived(1), WorkflowId::None);
    }

    #[test]
    fn decimal_literals() {
        for ok in [
            "1",
            "-1.5",
            "0.000",
            "1E+3",
            "2e-7",
            "NaN",
            "-Infinity",
            ".5",
        ] {
            assert!(Decimal::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1.2.3", "abc", "1e", "--1", "."] {
            assert!(Decimal::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_publish_finds_topic_or_none() {
        let env = Publish {
            args: 1u8,
            workflow_id: WorkflowId::None,
            seq: None,
            pub_id: None,
            traceparent: None,
        };
        let with = encode_publish("TOP", &env).unwrap();
        let (t, rest) = split_publish(&with).unwrap();
        assert_eq!(t.as_deref(), Some("TOP"));
        assert_eq!(decode::<Publish<u8>>(rest).unwrap(), env);
        let without = encode_publish("", &env).unwrap();
        assert_eq!(split_publish(&without).unwrap(), (None, &without[..]));
    }

    #[test]
    fn tagged_maps_need_their_tag_and_value() {
        let untagged = encode(&serde_json::json!({"as_str": "1.5"})).unwrap();
        let e = decode::<Decimal>(&untagged).unwrap_err().to_string();
        assert!(e.contains("expected the key \"__decimal__\""), "{e}");
        let no_value = encode(&serde_json::json!({"__set__": true})).unwrap();
        let e = decode::<PySet<u8>>(&no_value).unwrap_err().to_string();
        assert!(e.contains("missing field `value`"), "{e}");
        let bad = encode(&serde_json::json!({"__uuid__": true, "as_str": "nope"})).unwrap();
        assert!(decode::<WorkflowId>(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad UUID"));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut b = encode(&1u8).unwrap();
        b.push(0xc0);
        assert!(decode::<u8>(&b)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
    }
    #[test]
    fn value_len_spans_every_kind_of_value_and_rejects_short_ones() {
        use rmpv::Value as V;
        let long = |n: usize| "x".repeat(n);
        let values = vec![
            V::Nil,
            V::Boolean(true),
            V::from(5),
            V::from(-5),
            V::from(200u8),
            V::from(-200),
            V::from(70_000),
            V::from(-70_000),
            V::from(u64::MAX),
            V::from(i64::MIN),
            V::F32(1.5),
            V::F64(2.5),
            V::from(long(3)),
            V::from(long(40)),
            V::from(long(300)),
            V::from(long(70_000)),
            V::Binary(vec![1; 3]),
            V::Binary(vec![1; 300]),
            V::Binary(vec![1; 70_000]),
            V::Ext(1, vec![0; 1]),
            V::Ext(1, vec![0; 2]),
            V::Ext(1, vec![0; 4]),
            V::Ext(1, vec![0; 8]),
            V::Ext(1, vec![0; 16]),
            V::Ext(1, vec![0; 5]),
            V::Ext(1, vec![0; 300]),
            V::Ext(1, vec![0; 70_000]),
            V::Array((0..20).map(V::from).collect()),
            V::Array((0..70_000).map(|_| V::Nil).collect()),
            V::Map(vec![(V::from("a"), V::Array(vec![V::Map(vec![])]))]),
            V::Map(
                (0..20)
                    .map(|i| (V::from(i), V::from(long(i as usize))))
                    .collect(),
            ),
            V::Map((0..70_000).map(|i| (V::from(i), V::Nil)).collect()),
        ];
        for v in values {
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, &v).unwrap();
            assert_eq!(value_len(&b), Some(b.len()), "{:?}", &b[..b.len().min(8)]);
            for cut in [0, 1, b.len() / 2, b.len() - 1] {
                if cut < b.len() {
                    assert_eq!(value_len(&b[..cut]), None, "cut at {cut}");
                }
            }
            let mut more = b.clone();
            more.push(0xc0);
            assert_eq!(value_len(&more), Some(b.len()));
            assert!(decode::<rmpv::Value>(&more)
                .unwrap_err()
                .to_string()
                .contains("1 trailing bytes"));
            assert_eq!(decode::<rmpv::Value>(&b).unwrap(), v);
        }
        assert_eq!(value_len(&[0xc1]), None);
        assert_eq!(value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
