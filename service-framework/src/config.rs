//! config.json, CLI extras and environment overrides, checked against the config model.
//!
//! The config is a FLAT JSON object, as in the original. Sources, lowest first:
//! 1. the config file (`-c config.json`);
//! 2. environment variables `SF_CONFIG_<KEY>` (key upper-cased), for deployments;
//! 3. extra command-line pairs (`--num_req_to_send 10` or `num_req_to_send 10`).
//!
//! (The Python original lets the file win over CLI extras; here the most specific source
//! wins, which is what a user typing a flag expects.) Environment and CLI values arrive as
//! strings and are converted to the type the model declares for that key.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::Schema;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Reads the config file: a missing file, bad JSON or a non-object is an error naming it.
pub fn read_config_file(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", path.display())))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::Config(format!(
            "{} must hold a flat JSON object of config keys, found {}",
            path.display(),
            kind(&other)
        ))),
    }
}

/// Turns extra CLI words into key/value pairs: `--key value`, `-key value` or `key value`.
pub fn pairs_from_extras(extras: &[String]) -> Result<Vec<(String, String)>> {
    if extras.len() % 2 != 0 {
        return Err(Error::Config(format!(
            "extra command-line arguments must come in --key value pairs; got {} word{}: {}",
            extras.len(),
            if extras.len() == 1 { "" } else { "s" },
            extras.join(" ")
        )));
    }
    Ok(extras
        .chunks(2)
        .map(|p| (p[0].trim_start_matches('-').to_owned(), p[1].clone()))
        .collect())
}

/// Collects `SF_CONFIG_<KEY>` overrides for the keys the model declares.
pub fn env_overrides(model: &ConfigModel) -> Vec<(String, String)> {
    model
        .keys()
        .into_iter()
        .filter_map(|k| {
            std::env::var(format!("SF_CONFIG_{}", k.to_uppercase()))
                .ok()
                .map(|v| (k, v))
        })
        .collect()
}

/// The declared config: its JSON Schema (from the Rust type) with required/optional keys.
#[derive(Debug, Clone, Default)]
pub struct ConfigModel {
    schema: Option<Schema>,
}

impl ConfigModel {
    /// A model from a schema (normally `schemars::schema_for!(YourConfig)`).
    pub fn from_schema(schema: Schema) -> Self {
        ConfigModel {
            schema: Some(schema),
        }
    }

    /// True when the service declared a config.
    pub fn is_declared(&self) -> bool {
        self.schema.is_some()
    }

    /// The schema, if declared.
    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    fn properties(&self) -> Option<&Map<String, Value>> {
        self.schema.as_ref()?.get("properties")?.as_object()
    }

    /// Every declared key.
    pub fn keys(&self) -> Vec<String> {
        self.properties()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The required keys.
    pub fn required(&self) -> Vec<String> {
        self.schema
            .as_ref()
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The JSON types a key accepts (`["integer"]`, `["string", "null"]`, ...); empty = any.
    pub fn types_of(&self, key: &str) -> Vec<String> {
        let Some(prop) = self.properties().and_then(|p| p.get(key)) else {
            return vec![];
        };
        let root = self.schema.as_ref().map(|s| s.as_value());
        types_in(prop, root)
    }

    /// Merges string overrides into `config`, converting each to the declared type.
    pub fn apply_strings(
        &self,
        config: &mut Map<String, Value>,
        pairs: Vec<(String, String)>,
        source: &str,
    ) -> Result<()> {
        for (key, raw) in pairs {
            let value = self
                .convert(&key, &raw)
                .map_err(|why| Error::Config(format!("{source} {key}={raw:?}: {why}")))?;
            config.insert(key, value);
        }
        Ok(())
    }

    fn convert(&self, key: &str, raw: &str) -> std::result::Result<Value, String> {
        let types = self.types_of(key);
        if types.is_empty() || types.iter().any(|t| t == "string") {
            return Ok(Value::String(raw.to_owned()));
        }
        for t in &types {
            let v = match t.as_str() {
                "integer" => raw.trim().parse::<i64>().ok().map(Value::from),
                "number" => raw
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
                "boolean" => match raw.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Some(Value::Bool(true)),
                    "false" | "0" | "no" => Some(Value::Bool(false)),
                    _ => None,
                },
                "null" if raw.is_empty() || raw == "null" => Some(Value::Null),
                "array" | "object" => serde_json::from_str::<Value>(raw)
                    .ok()
                    .filter(|v| matches_type(v, t)),
                _ => None,
            };
            if let Some(v) = v {
                return Ok(v);
            }
        }
        Err(format!("expected {}", types.join(" or ")))
    }

    /// Checks a complete config: undeclared keys, missing required keys and wrong types are
    /// errors naming the key, what was expected and `origin` (the file).
    #[cfg(test)]
    pub fn validate(&self, config: &Map<String, Value>, origin: &str) -> Result<()> {
        self.validate_sourced(config, origin, &BTreeMap::new())
    }

    /// [`validate`](Self::validate), naming for each key that did not come from `origin` where
    /// it came from instead (`sources`: key -> `command line`, `environment SF_CONFIG_KEY`), so
    /// a mistyped command-line key is not blamed on the file.
    pub fn validate_sourced(
        &self,
        config: &Map<String, Value>,
        origin: &str,
        sources: &BTreeMap<String, String>,
    ) -> Result<()> {
        let source = |key: &str| sources.get(key).map_or(origin, String::as_str);
        let mut problems: Vec<(&str, String)> = Vec::new();
        if !self.is_declared() {
            if let Some(key) = config.keys().next() {
                problems.push((
                    source(key),
                    format!("key {key:?} is not declared: this service declares no config"),
                ));
            }
            return report(problems);
        }
        let keys = self.keys();
        for key in config.keys() {
            if !keys.contains(key) {
                problems.push((
                    source(key),
                    format!(
                        "key {key:?} is not declared (declared: {})",
                        keys.join(", ")
                    ),
                ));
            }
        }
        for key in self.required() {
            if !config.contains_key(&key) {
                problems.push((
                    origin,
                    format!(
                        "required key {key:?} is missing (expected {})",
                        self.types_of(&key).join(" or ")
                    ),
                ));
            }
        }
        for (key, value) in config {
            let types = self.types_of(key);
            if !types.is_empty() && !types.iter().any(|t| matches_type(value, t)) {
                problems.push((
                    source(key),
                    format!(
                        "key {key:?} must be {}, found {}",
                        types.join(" or "),
                        kind(value)
                    ),
                ));
            }
        }
        report(problems)
    }
}

/// The config parsed into the type declared with `ServiceDef::config::<C>()`, once, at start.
pub(crate) type TypedConfig = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// Parses a checked config into the declared type: `Err((key path, what went wrong))`.
pub(crate) type TypedParser = std::sync::Arc<
    dyn Fn(&Map<String, Value>) -> std::result::Result<TypedConfig, (String, String)> + Send + Sync,
>;

pub(crate) fn typed_parser<C>() -> TypedParser
where
    C: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    std::sync::Arc::new(|config: &Map<String, Value>| {
        let value = Value::Object(config.clone());
        match serde_path_to_error::deserialize::<_, C>(value) {
            Ok(c) => Ok(std::sync::Arc::new(c) as TypedConfig),
            Err(e) => Err((e.path().to_string(), e.into_inner().to_string())),
        }
    })
}

/// Runs the typed parser, naming the key at fault and where its value came from.
pub(crate) fn parse_typed(
    parser: &TypedParser,
    config: &Map<String, Value>,
    origin: &str,
    sources: &BTreeMap<String, String>,
) -> Result<TypedConfig> {
    parser(config).map_err(|(path, problem)| {
        let top = path.split(['.', '[']).next().unwrap_or_default();
        let source = sources.get(top).map_or(origin, String::as_str);
        if path.is_empty() || path == "." {
            Error::Config(format!("{source}: {problem}"))
        } else {
            Error::Config(format!("{source}: key {path:?}: {problem}"))
        }
    })
}

/// `origin: problem; problem; other origin: problem`: each run of problems from one source
/// is introduced by its name once.
fn report(problems: Vec<(&str, String)>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut out = String::new();
    let mut last: Option<&str> = None;
    for (source, problem) in problems {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if last != Some(source) {
            out.push_str(source);
            out.push_str(": ");
            last = Some(source);
        }
        out.push_str(&problem);
    }
    Err(Error::Config(out))
}

fn types_in(prop: &Value, root: Option<&Value>) -> Vec<String> {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/")
            .and_then(|p| root.and_then(|root| root.pointer(&format!("/{p}"))));
        return target.map(|t| types_in(t, root)).unwrap_or_default();
    }
    match prop.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => {
            for combinator in ["anyOf", "oneOf"] {
                if let Some(Value::Array(options)) = prop.get(combinator) {
                    let mut all: Vec<String> =
                        options.iter().flat_map(|o| types_in(o, root)).collect();
                    all.dedup();
                    if all.is_empty() {
                        return vec![];
                    }
                    return all;
                }
            }
            vec![]
        }
    }
}

fn matches_type(v: &Value, t: &str) -> bool {
    match t {
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// A value's JSON kind for messages: `string "abc"`, `integer 5`.
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(n) => format!("integer {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::JsonSchema;
    use serde_json::json;

    #[derive(JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        num_req_to_send: i64,
        ratio: Option<f64>,
        name: Option<String>,
        verbose: Option<bool>,
    }

    fn model() -> ConfigModel {
        ConfigModel::from_schema(schemars::schema_for!(Cfg))
    }

    #[test]
    fn converts_strings_to_declared_types() {
        let mut c = Map::new();
        let pairs = pairs_from_extras(&[
            "--num_req_to_send".into(),
            "10".into(),
            "ratio".into(),
            "0.5".into(),
            "-verbose".into(),
            "true".into(),
        ])
        .unwrap();
        model()
            .apply_strings(&mut c, pairs, "command line")
            .unwrap();
        assert_eq!(
            Value::Object(c.clone()),
            json!({"num_req_to_send": 10, "ratio": 0.5, "verbose": true})
        );
        model().validate(&c, "config.json").unwrap();
        let err = model()
            .apply_strings(
                &mut c,
                vec![("num_req_to_send".into(), "ten".into())],
                "command line",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: command line num_req_to_send=\"ten\": expected integer"
        );
    }

    #[test]
    fn odd_extras_are_an_error() {
        let err = pairs_from_extras(&["--a".into()]).unwrap_err().to_string();
        assert!(err.contains("pairs"), "{err}");
    }

    #[test]
    fn validation_names_every_problem() {
        let c = json!({"ratio": "high", "colour": 1})
            .as_object()
            .unwrap()
            .clone();
        let err = model().validate(&c, "config.json").unwrap_err().to_string();
        assert!(err.starts_with("config: config.json: "), "{err}");
        assert!(
            err.contains("key \"colour\" is not declared (declared: "),
            "{err}"
        );
        assert!(
            err.contains("required key \"num_req_to_send\" is missing (expected integer)"),
            "{err}"
        );
        assert!(
            err.contains("key \"ratio\" must be number or null, found string \"high\""),
            "{err}"
        );
    }

    #[test]
    fn problems_name_the_source_of_each_key() {
        let c = json!({"num_req_to_send": 1, "colour": "red", "ratio": "x"})
            .as_object()
            .unwrap()
            .clone();
        let sources = BTreeMap::from([("colour".to_owned(), "command line --colour".to_owned())]);
        let err = model()
            .validate_sourced(&c, "config.json", &sources)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config: command line --colour: key \"colour\" is not declared (declared: name, num_req_to_send, ratio, verbose); \
             config.json: key \"ratio\" must be number or null, found string \"x\""
        );
    }

    #[test]
    fn undeclared_config_is_rejected() {
        let c = json!({"x": 1}).as_object().unwrap().clone();
        let err = ConfigModel::default()
            .validate(&c, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("declares no config"), "{err}");
    }
}
