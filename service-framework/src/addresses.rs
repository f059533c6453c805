//! addresses.json in the exact shape of the original, plus the address forms of the
//! connections crate (`tcp://`, `ipc://`, `{bind, connect}`):
//!
//! ```json
//! {"connections": {"in":  {"reply":   {"replyer": "127.0.0.1:7999"}},
//!                  "out": {"request": {"requester": "127.0.0.1:7999"}}},
//!  "states":      {"in": {}, "out": {}}}
//! ```
//!
//! Entries for connections the service does not declare are ignored, so several services
//! may share one file. A requester's entry may be a list of addresses, the replicas of one
//! replyer (`{"requester": ["10.0.0.1:7999", "10.0.0.2:7999"]}`): requests go to the one with
//! the fewest in flight (see `sf_connections::requester`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sf_connections::Address;

use crate::config::kind;
use crate::error::{Error, Result};
use crate::model::{ConnectionModel, ConnectionModels, StateModel, StateModels};

/// Addresses of one side: connection (or state) name -> socket name -> address.
pub type SideAddresses = BTreeMap<String, BTreeMap<String, Address>>;

/// In and out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sides {
    /// Inbound entries.
    #[serde(default, rename = "in")]
    pub inbound: SideAddresses,
    /// Outbound entries.
    #[serde(default, rename = "out")]
    pub outbound: SideAddresses,
}

/// Creation options of one side: connection (or state) name -> option -> value.
pub type SideOptions = BTreeMap<String, serde_json::Map<String, Value>>;

/// Options by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionSides {
    /// Inbound entries.
    #[serde(default, rename = "in", skip_serializing_if = "BTreeMap::is_empty")]
    pub inbound: SideOptions,
    /// Outbound entries.
    #[serde(default, rename = "out", skip_serializing_if = "BTreeMap::is_empty")]
    pub outbound: SideOptions,
}

impl OptionSides {
    fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty()
    }

    /// The options given for `name` on the side `inbound` says.
    pub fn get(&self, inbound: bool, name: &str) -> Option<&serde_json::Map<String, Value>> {
        if inbound {
            self.inbound.get(name)
        } else {
            self.outbound.get(name)
        }
    }
}

/// The `options` section: creation options set by the deployment, without recompiling
/// (`timeout_s`, `retries`, `topic`, `is_x_pub`, `credit_window`, ...). Python 0.0.18 reads
/// only `connections` and `states`, so a file with options still loads there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsSection {
    /// By connection.
    #[serde(default, skip_serializing_if = "OptionSides::is_empty")]
    pub connections: OptionSides,
    /// By state.
    #[serde(default, skip_serializing_if = "OptionSides::is_empty")]
    pub states: OptionSides,
}

impl OptionsSection {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.states.is_empty()
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressesFile {
    /// Connection addresses.
    #[serde(default)]
    pub connections: Sides,
    /// State addresses.
    #[serde(default)]
    pub states: Sides,
    /// Creation options, by connection and state (a key of this project's, which Python
    /// 0.0.18 ignores).
    #[serde(default, skip_serializing_if = "OptionsSection::is_empty")]
    pub options: OptionsSection,
    /// The control endpoint (introspection: `ping`, `info`, `stats`, `health`): an address
    /// to bind, `false` for none, absent or `true` for an ephemeral port on 127.0.0.1 (a
    /// key of this project's, which Python 0.0.18 ignores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlEntry>,
}

/// The addresses file's `control` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ControlEntry {
    /// `false`: no control endpoint; `true`: the default (an ephemeral loopback port).
    Enabled(bool),
    /// Bind here.
    At(Address),
}

impl AddressesFile {
    /// Reads and parses a file; errors name the file and what is wrong.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Addresses(format!(
                "cannot read addresses file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses JSON text; `origin` names it in errors, with the key at fault and what was
    /// expected there.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Addresses(format!("{origin} is not valid JSON: {e}")))?;
        Self::from_json(value, origin)
    }

    /// From a JSON value (for embedding).
    pub fn from_value(value: Value) -> Result<Self> {
        Self::from_json(value, "addresses")
    }

    fn from_json(value: Value, origin: &str) -> Result<Self> {
        check_shape(&value).map_err(|e| Error::Addresses(format!("{origin}: {e}")))?;
        serde_json::from_value(value).map_err(|e| {
            Error::Addresses(format!(
                "{origin} does not have the addresses shape {SHAPE}: {e}"
            ))
        })
    }

    /// The address of `model`, or an error naming the missing entry.
    pub fn address_for(&self, model: &ConnectionModel, origin: &str) -> Result<Address> {
        let Some(key) = model.kind.address_key() else {
            return Err(Error::Definition(format!(
                "connection {:?} has no address",
                model.name
            )));
        };
        let side = if model.kind.is_inbound() {
            ("in", &self.connections.inbound)
        } else {
            ("out", &self.connections.outbound)
        };
        let entry = side.1.get(&model.name).ok_or_else(|| {
            Error::Addresses(format!(
                "{origin}: connections.{}.{} is missing: the {} connection {:?} needs {{\"{key}\": \"host:port\"}}",
                side.0,
                model.name,
                model.kind.name(),
                model.name
            ))
        })?;
        entry.get(key).cloned().ok_or_else(|| {
            Error::Addresses(format!(
                "{origin}: connections.{}.{} has no {key:?} address (found: {})",
                side.0,
                model.name,
                found_keys(entry)
            ))
        })
    }

    /// A connection through a Majordomo broker: its entry names the broker instead of an
    /// address, with the MDP service name in `"service"`.
    /// - A replyer, `{"broker": "host:port", "service": "name"}`, registers as MDP workers
    ///   under that name (absent: `<service>.<connection>`, chosen by the runtime).
    /// - A requester, `{"broker": "host:port", "service": "name"}` (the name is required),
    ///   calls that service through the broker. `"broker"` may be a list of brokers.
    ///
    /// `None` for any other entry.
    pub fn broker_for(
        &self,
        model: &ConnectionModel,
        origin: &str,
    ) -> Result<Option<(Address, Option<String>)>> {
        use crate::model::ConnectionKind;
        let (side, entries, direct) = match model.kind {
            ConnectionKind::Replyer => ("in", &self.connections.inbound, "replyer"),
            ConnectionKind::Requester => ("out", &self.connections.outbound, "requester"),
            _ => return Ok(None),
        };
        let Some(entry) = entries.get(&model.name) else {
            return Ok(None);
        };
        let Some(broker) = entry.get("broker") else {
            return Ok(None);
        };
        let at = format!("{origin}: connections.{side}.{}", model.name);
        if let Some(other) = entry.keys().find(|k| *k != "broker" && *k != "service") {
            let what = if direct == "replyer" {
                "a replyer served through a broker"
            } else {
                "a requester calling through a broker"
            };
            let hint = if other == direct {
                if direct == "replyer" {
                    " (serve either directly or through the broker)"
                } else {
                    " (call either directly or through the broker)"
                }
            } else {
                ""
            };
            return Err(Error::Addresses(format!(
                "{at}: {what} takes \"broker\" and \"service\" only, found {other:?}{hint}"
            )));
        }
        let service = match entry.get("service") {
            None if model.kind == ConnectionKind::Requester => {
                return Err(Error::Addresses(format!(
                    "{at}: a requester calling through a broker needs \"service\": the MDP \
                     service name to call (a brokered replyer registers as \
                     <service>.<connection> unless its entry names one)"
                )))
            }
            None => None,
            Some(Address::Plain(s)) => Some(s.clone()),
            Some(other) => {
                return Err(Error::Addresses(format!(
                    "{at}.service must be a service name (a string), found {other}"
                )))
            }
        };
        Ok(Some((broker.clone(), service)))
    }

    /// The addresses of state `model`: one per socket its kind needs, or an error naming the
    /// missing entry.
    pub fn state_addresses(&self, model: &StateModel, origin: &str) -> Result<Vec<Address>> {
        let (side_name, side) = if model.kind.is_inbound() {
            ("in", &self.states.inbound)
        } else {
            ("out", &self.states.outbound)
        };
        let keys = model.kind.address_keys();
        let entry = side.get(&model.name).ok_or_else(|| {
            Error::Addresses(format!(
                "{origin}: states.{side_name}.{} is missing: the {} state {:?} needs {}",
                model.name,
                model.kind.name(),
                model.name,
                keys.iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))
        })?;
        keys.iter()
            .map(|k| {
                entry.get(*k).cloned().ok_or_else(|| {
                    Error::Addresses(format!(
                        "{origin}: states.{side_name}.{} has no {k:?} address (found: {})",
                        model.name,
                        found_keys(entry)
                    ))
                })
            })
            .collect()
    }

    /// Checks that every declared connection that needs an address has one, and that each
    /// address parses for its side; reports every problem at once.
    pub fn validate(
        &self,
        models: &ConnectionModels,
        states: &StateModels,
        origin: &str,
    ) -> Result<()> {
        let mut problems = Vec::new();
        for s in states.all() {
            if let Err(e) = self.state_addresses(s, origin) {
                problems.push(match e {
                    Error::Addresses(msg) => msg,
                    other => other.to_string(),
                });
            }
        }
        for m in models.all().filter(|m| m.kind.address_key().is_some()) {
            match self.broker_for(m, origin) {
                Ok(Some((broker, _))) => {
                    let checked = if m.kind == crate::model::ConnectionKind::Requester {
                        broker.connect_endpoints().map(drop)
                    } else {
                        broker.connect_endpoint().map(drop)
                    };
                    if let Err(e) = checked {
                        problems.push(format!("{origin}: connection {:?}: broker: {e}", m.name));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(Error::Addresses(msg)) => {
                    problems.push(msg);
                    continue;
                }
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            }
            match self.address_for(m, origin) {
                Ok(addr) => {
                    let binds = binds(m);
                    let checked = if binds {
                        addr.bind_endpoint().map(drop)
                    } else if m.kind == crate::model::ConnectionKind::Requester {
                        addr.connect_endpoints().map(drop)
                    } else {
                        addr.connect_endpoint().map(drop)
                    };
                    if let Err(e) = checked {
                        problems.push(format!("{origin}: connection {:?}: {e}", m.name));
                    }
                }
                Err(Error::Addresses(msg)) => problems.push(msg),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Addresses(problems.join("; ")))
        }
    }
}

/// Whether a connection binds (else connects), per the original's rules.
pub(crate) fn binds(m: &ConnectionModel) -> bool {
    use crate::model::ConnectionKind::*;
    match m.kind {
        Replyer => true,
        Publisher => !m.creation_bool("is_x_pub"),
        Subscriber | Puller | Pusher => m.creation_bool("is_binder"),
        Requester | ExternalTarget => false,
    }
}

const SHAPE: &str =
    r#"{"connections": {"in": {..}, "out": {..}}, "states": {"in": {..}, "out": {..}}}"#;
const ADDRESS: &str = r#""host:port", a tcp:// or ipc:// endpoint, or {"bind": .., "connect": ..}"#;

fn found_keys<V>(entry: &BTreeMap<String, V>) -> String {
    if entry.is_empty() {
        "nothing".to_owned()
    } else {
        entry.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Checks the file's shape before it is decoded, so that a mistake is reported with its key
/// path (`connections.out.request.requester`) and what belongs there.
fn check_shape(root: &Value) -> std::result::Result<(), String> {
    let top = root
        .as_object()
        .ok_or_else(|| format!("must be a JSON object {SHAPE}, found {}", kind(root)))?;
    for (section, sides) in top {
        if section == "options" {
            check_options(sides)?;
            continue;
        }
        if section == "control" {
            if !sides.is_boolean() {
                check_address(sides).map_err(|found| {
                    format!("control must be {ADDRESS}, or false for none, found {found}")
                })?;
            }
            continue;
        }
        if section != "connections" && section != "states" {
            return Err(format!(
                "unknown key {section:?} (expected \"connections\", \"states\", \"options\" or \"control\")"
            ));
        }
        let sides = sides.as_object().ok_or_else(|| {
            format!(
                "{section} must be an object {{\"in\": {{..}}, \"out\": {{..}}}}, found {}",
                kind(sides)
            )
        })?;
        for (side, entries) in sides {
            if side != "in" && side != "out" {
                return Err(format!(
                    "{section}: unknown key {side:?} (expected \"in\" or \"out\")"
                ));
            }
            let entries = entries.as_object().ok_or_else(|| {
                format!(
                    "{section}.{side} must be an object of names, found {}",
                    kind(entries)
                )
            })?;
            for (name, sockets) in entries {
                let sockets = sockets.as_object().ok_or_else(|| {
                    format!(
                        "{section}.{side}.{name} must be an object like {{\"replyer\": \"host:port\"}}, found {}",
                        kind(sockets)
                    )
                })?;
                for (socket, address) in sockets {
                    let at = format!("{section}.{side}.{name}.{socket}");
                    match address {
                        // Replicas of one replyer: a requester spreads its requests over them.
                        Value::Array(list) if socket == "requester" => {
                            if list.is_empty() {
                                return Err(format!(
                                    "{at} is an empty list: give at least one replica's address"
                                ));
                            }
                            for (i, a) in list.iter().enumerate() {
                                check_address(a).map_err(|found| {
                                    format!("{at}[{i}] must be {ADDRESS}, found {found}")
                                })?;
                            }
                        }
                        Value::Array(_) => {
                            return Err(format!(
                                "{at} must be {ADDRESS}, found an array (a list of replicas is for a requester only)"
                            ))
                        }
                        _ => check_address(address)
                            .map_err(|found| format!("{at} must be {ADDRESS}, found {found}"))?,
                    }
                }
            }
        }
    }
    Ok(())
}

/// `options`: `{"connections"|"states": {"in"|"out": {NAME: {OPTION: value}}}}`. Which
/// options a connection or state takes, and their types, are checked at start against the
/// service's declarations.
fn check_options(v: &Value) -> std::result::Result<(), String> {
    const OPTIONS: &str =
        r#"{"connections": {"out": {"request": {"timeout_s": 2}}}, "states": {..}}"#;
    let top = v
        .as_object()
        .ok_or_else(|| format!("options must be an object {OPTIONS}, found {}", kind(v)))?;
    for (section, sides) in top {
        if section != "connections" && section != "states" {
            return Err(format!(
                "options: unknown key {section:?} (expected \"connections\" or \"states\")"
            ));
        }
        let sides = sides.as_object().ok_or_else(|| {
            format!(
                "options.{section} must be an object {{\"in\": {{..}}, \"out\": {{..}}}}, found {}",
                kind(sides)
            )
        })?;
        for (side, entries) in sides {
            if side != "in" && side != "out" {
                return Err(format!(
                    "options.{section}: unknown key {side:?} (expected \"in\" or \"out\")"
                ));
            }
            let entries = entries.as_object().ok_or_else(|| {
                format!(
                    "options.{section}.{side} must be an object of names, found {}",
                    kind(entries)
                )
            })?;
            for (name, opts) in entries {
                if !opts.is_object() {
                    return Err(format!(
                        "options.{section}.{side}.{name} must be an object like {{\"timeout_s\": 2}}, found {}",
                        kind(opts)
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_address(v: &Value) -> std::result::Result<(), String> {
    match v {
        Value::String(_) => Ok(()),
        Value::Object(m) => {
            for (k, part) in m {
                if k != "bind" && k != "connect" {
                    return Err(format!("an object with the unknown key {k:?}"));
                }
                if !part.is_string() && !part.is_null() {
                    return Err(format!("{k:?}: {}", kind(part)));
                }
            }
            Ok(())
        }
        other => Err(kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<AddressesFile, String> {
        AddressesFile::parse(json, "a.json").map_err(|e| e.to_string())
    }

    #[test]
    fn a_requester_takes_a_list_of_replicas_and_nothing_else_does() {
        let f = parse(
            r#"{"connections": {"out": {"request": {"requester": ["127.0.0.1:1", "tcp://h:2"]}}}}"#,
        )
        .unwrap();
        let a = &f.connections.outbound["request"]["requester"];
        assert_eq!(
            a.connect_endpoints().unwrap(),
            ["tcp://127.0.0.1:1", "tcp://h:2"]
        );
        // The one-address form is unchanged.
        let f = parse(r#"{"connections": {"out": {"request": {"requester": "127.0.0.1:1"}}}}"#)
            .unwrap();
        assert_eq!(
            f.connections.outbound["request"]["requester"],
            Address::from("127.0.0.1:1")
        );
        for (json, expected) in [
            (
                r#"{"connections": {"in": {"reply": {"replyer": ["127.0.0.1:1"]}}}}"#,
                "connections.in.reply.replyer must be",
            ),
            (
                r#"{"connections": {"out": {"request": {"requester": []}}}}"#,
                "connections.out.request.requester is an empty list",
            ),
            (
                r#"{"connections": {"out": {"request": {"requester": ["h:1", 7]}}}}"#,
                "connections.out.request.requester[1] must be",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(expected), "{json}: {e}");
        }
        let e = parse(r#"{"connections": {"in": {"reply": {"replyer": ["h:1"]}}}}"#).unwrap_err();
        assert!(e.contains("for a requester only"), "{e}");
    }
}
