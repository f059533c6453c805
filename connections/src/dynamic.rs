//! [`Dynamic`]: any value a peer sends, kept as msgpack.
//!
//! `serde_json::Value` cannot hold msgpack `bin`: a numpy array's `as_bytes` decoded into it
//! comes back out as a list of integers, and Python 0.0.18 can no longer decode the message.
//! `Dynamic` keeps every msgpack kind as it arrived (bin, ext, integers of either sign and
//! width, float32, non-string map keys), so Python's tagged maps (`__decimal__`, `__set__`,
//! `__uuid__`, `__numpy.ndarray__`) go through a Rust service and back byte for byte. Where
//! JSON is needed (the HTTP bridge, `service-framework call`, logs) [`Dynamic::to_json`]
//! gives a JSON view and [`Dynamic::from_json`] the way back.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Any msgpack value, as the peer sent it. Use it for dynamic args, replies and state values
/// (`ServiceDef::replyer(.., |args: Dynamic, ctx| ..)`): it decodes from anything, and
/// encodes back to the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Dynamic(pub rmpv::Value);

impl Dynamic {
    /// The JSON view: maps with string keys stay maps, `bin` becomes an array of its bytes
    /// (0-255), an ext value `{"ext": type, "data": [bytes]}`, a non-string map key its text,
    /// a non-finite float `null`. Python's tagged maps stay the maps they are.
    pub fn to_json(&self) -> serde_json::Value {
        self.clone().into_json()
    }

    /// [`to_json`](Self::to_json), taking the value (no copy of its strings).
    pub fn into_json(self) -> serde_json::Value {
        into_json(self.0)
    }

    /// From JSON: numbers, strings, arrays and maps as msgpack's own kinds (no `bin`: JSON has
    /// none). `Dynamic::from_json(d.to_json())` is `d` for values without bin or ext.
    pub fn from_json(v: &serde_json::Value) -> Dynamic {
        Dynamic(from_json(v))
    }

    /// The value inside.
    pub fn into_inner(self) -> rmpv::Value {
        self.0
    }
}

impl Default for Dynamic {
    /// Nil.
    fn default() -> Self {
        Dynamic(rmpv::Value::Nil)
    }
}

impl From<rmpv::Value> for Dynamic {
    fn from(v: rmpv::Value) -> Self {
        Dynamic(v)
    }
}

impl From<Dynamic> for rmpv::Value {
    fn from(d: Dynamic) -> Self {
        d.0
    }
}

impl From<serde_json::Value> for Dynamic {
    fn from(v: serde_json::Value) -> Self {
        Dynamic::from_json(&v)
    }
}

impl std::ops::Deref for Dynamic {
    type Target = rmpv::Value;
    fn deref(&self) -> &rmpv::Value {
        &self.0
    }
}

impl fmt::Display for Dynamic {
    /// The JSON view.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl Serialize for Dynamic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Dynamic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        rmpv::Value::deserialize(d).map(Dynamic)
    }
}

impl schemars::JsonSchema for Dynamic {
    fn schema_name() -> Cow<'static, str> {
        "Dynamic".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Any value (kept as msgpack: bytes, Decimal, set, UUID and ndarray maps included)"
        })
    }
}

fn into_json(v: rmpv::Value) -> serde_json::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    let bytes = |b: Vec<u8>| J::Array(b.into_iter().map(J::from).collect());
    match v {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => n.into(),
            (None, Some(n)) => n.into(),
            _ => J::Null,
        },
        M::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(J::Null, J::Number),
        M::F64(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        // Not UTF-8: its bytes, as for bin.
        M::String(s) if !s.is_str() => bytes(s.into_bytes()),
        M::String(s) => J::String(s.into_str().unwrap_or_default()),
        M::Binary(b) => bytes(b),
        M::Array(a) => J::Array(a.into_iter().map(into_json).collect()),
        M::Map(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) if s.is_str() => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, into_json(v))
                })
                .collect(),
        ),
        M::Ext(t, data) => serde_json::json!({"ext": t, "data": data}),
    }
}

fn from_json(v: &serde_json::Value) -> rmpv::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    match v {
        J::Null => M::Nil,
        J::Bool(b) => M::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => M::from(i),
            (None, Some(u), _) => M::from(u),
            (_, _, Some(f)) => M::F64(f),
            _ => M::Nil,
        },
        J::String(s) => M::from(s.as_str()),
        J::Array(a) => M::Array(a.iter().map(from_json).collect()),
        J::Object(o) => M::Map(
            o.iter()
                .map(|(k, v)| (M::from(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    /// A 0.0.18-style map with every kind Python's msgpack_utils sends.
    fn python_kinds() -> rmpv::Value {
        use rmpv::Value as M;
        let floats: Vec<u8> = [1.5f64, -2.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        M::Map(vec![
            (
                M::from("arr"),
                M::Map(vec![
                    (M::from("__numpy.ndarray__"), M::Boolean(true)),
                    (M::from("as_bytes"), M::Binary(floats)),
                ]),
            ),
            (
                M::from("dec"),
                M::Map(vec![
                    (M::from("__decimal__"), M::Boolean(true)),
                    (M::from("as_str"), M::from("1.10")),
                ]),
            ),
            (
                M::from("set"),
                M::Map(vec![
                    (M::from("__set__"), M::Boolean(true)),
                    (M::from("value"), M::Array(vec![M::from(1), M::from(2)])),
                ]),
            ),
            (M::from("raw"), M::Binary(vec![0, 255, 7])),
            (M::from("big"), M::from(u64::MAX)),
            (M::from("neg"), M::from(-3)),
            (M::from("f32"), M::F32(0.5)),
            (M::from(7), M::from("an integer key")),
            (M::from("ext"), M::Ext(5, vec![1, 2])),
        ])
    }

    #[test]
    fn every_msgpack_kind_goes_through_byte_for_byte() {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &python_kinds()).unwrap();
        let d: Dynamic = wire::decode(&bytes).unwrap();
        assert_eq!(d.0, python_kinds());
        assert_eq!(
            wire::encode(&d).unwrap(),
            bytes,
            "re-encoded to the same bytes"
        );
        // serde_json::Value cannot hold the same bytes (it refuses bin outright).
        let json: crate::Result<serde_json::Value> = wire::decode(&bytes);
        assert!(json.is_err(), "{json:?}");
    }

    #[test]
    fn the_json_view_and_back() {
        let d = Dynamic(python_kinds());
        let j = d.to_json();
        assert_eq!(
            j["dec"],
            serde_json::json!({"__decimal__": true, "as_str": "1.10"})
        );
        assert_eq!(j["raw"], serde_json::json!([0, 255, 7]));
        assert_eq!(j["big"], serde_json::json!(u64::MAX));
        assert_eq!(j["7"], "an integer key");
        assert_eq!(j["ext"], serde_json::json!({"ext": 5, "data": [1, 2]}));
        let plain = serde_json::json!({"a": [1, -2, 2.5, "x", null, true], "b": {"c": {}}});
        assert_eq!(Dynamic::from_json(&plain).to_json(), plain);
        assert_eq!(d.to_string(), j.to_string());
    }
}
