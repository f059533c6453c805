//! Addresses as addresses.json gives them.
//!
//! Three forms are accepted for every socket address:
//! - the original's `"host:port"`: the binding side binds exactly that host (use `"0.0.0.0:port"`
//!   or `"*:port"` to bind every interface, as the Python original always did), the connecting
//!   side connects to `tcp://host:port`;
//! - a full endpoint, `"tcp://127.0.0.1:5555"` or `"ipc:///tmp/bus.sock"`, used as-is on both sides;
//! - an object `{"bind": "...", "connect": "..."}` for a host that binds one address and is reached
//!   at another (NAT, containers); each side may be given in either of the forms above;
//! - for a requester only, a list of the above, `["10.0.0.1:7999", "10.0.0.2:7999"]`: replicas of
//!   one replyer, which the requester spreads its requests over (see
//!   [`Requester`](crate::Requester)). A one-address list is the same as that address; every
//!   other kind of socket refuses a list with a message saying so.
//!
//! Port 0 binds an ephemeral port; the connection reports the endpoint actually bound.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One socket address from addresses.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Address {
    /// `"host:port"` or a full `tcp://` / `ipc://` endpoint.
    Plain(String),
    /// Different addresses for the binding and the connecting side.
    Split {
        /// What the binding side binds.
        #[serde(default)]
        bind: Option<String>,
        /// What the connecting side connects to.
        #[serde(default)]
        connect: Option<String>,
    },
    /// Replicas of one replyer, for a requester: each element a plain or split address.
    Replicas(Vec<Address>),
}

impl From<&str> for Address {
    fn from(s: &str) -> Self {
        Address::Plain(s.to_owned())
    }
}

impl From<String> for Address {
    fn from(s: String) -> Self {
        Address::Plain(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Plain(s) => f.write_str(s),
            Address::Split { bind, connect } => write!(
                f,
                "{{bind: {}, connect: {}}}",
                bind.as_deref().unwrap_or("-"),
                connect.as_deref().unwrap_or("-")
            ),
            Address::Replicas(list) => {
                f.write_str("[")?;
                for (i, a) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl Address {
    /// The endpoint the binding side binds.
    pub fn bind_endpoint(&self) -> Result<String> {
        let raw = match self {
            Address::Replicas(list) => {
                return match list.as_slice() {
                    [one @ (Address::Plain(_) | Address::Split { .. })] => one.bind_endpoint(),
                    _ => Err(self.err(
                        "a list of addresses names the replicas a requester calls; a socket \
                         that binds takes one address",
                    )),
                }
            }
            Address::Plain(s) => s,
            Address::Split { bind: Some(b), .. } => b,
            Address::Split { bind: None, .. } => {
                return Err(self.err("this socket binds, but the address has no \"bind\" entry"))
            }
        };
        endpoint(raw, true).map_err(|reason| self.err(&reason))
    }

    /// The endpoint the connecting side connects to.
    pub fn connect_endpoint(&self) -> Result<String> {
        let raw =
            match self {
                Address::Replicas(list) => return match list.as_slice() {
                    [one @ (Address::Plain(_) | Address::Split { .. })] => one.connect_endpoint(),
                    _ => Err(self.err(
                        "a list of addresses names the replicas a requester calls; this socket \
                         connects to one address",
                    )),
                },
                Address::Plain(s) => s,
                Address::Split {
                    connect: Some(c), ..
                } => c,
                Address::Split { connect: None, .. } => {
                    return Err(
                        self.err("this socket connects, but the address has no \"connect\" entry")
                    )
                }
            };
        endpoint(raw, false).map_err(|reason| self.err(&reason))
    }

    /// The endpoints a requester connects to: one for a plain or split address, one per
    /// replica for a list (not empty, no list inside it, no endpoint twice).
    pub fn connect_endpoints(&self) -> Result<Vec<String>> {
        let Address::Replicas(list) = self else {
            return Ok(vec![self.connect_endpoint()?]);
        };
        if list.is_empty() {
            return Err(self.err("an empty list of replicas: give at least one address"));
        }
        let mut out: Vec<String> = Vec::with_capacity(list.len());
        for a in list {
            if matches!(a, Address::Replicas(_)) {
                return Err(self.err("a list of replicas cannot hold another list"));
            }
            let ep = a.connect_endpoint()?;
            if out.contains(&ep) {
                return Err(self.err(&format!("{ep} is listed twice")));
            }
            out.push(ep);
        }
        Ok(out)
    }

    fn err(&self, reason: &str) -> Error {
        Error::Address {
            address: self.to_string(),
            reason: reason.to_owned(),
        }
    }
}

fn endpoint(raw: &str, binding: bool) -> std::result::Result<String, String> {
    let raw = raw.trim();
    if raw.starts_with("ipc://") {
        if raw.len() == "ipc://".len() {
            return Err("an ipc:// endpoint needs a path".into());
        }
        return Ok(raw.to_owned());
    }
    let hostport = raw.strip_prefix("tcp://").unwrap_or(raw);
    if hostport.contains("://") {
        return Err("only tcp:// and ipc:// endpoints are supported".into());
    }
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
        "expected \"host:port\", \"tcp://host:port\" or \"ipc://path\"".to_owned()
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let host = match (host, binding) {
        ("*", true) => "0.0.0.0",
        ("*", false) => return Err("cannot connect to \"*\": give the host to reach".into()),
        ("localhost", _) => "127.0.0.1",
        (h, _) => h,
    };
    if !binding && port == 0 {
        return Err("cannot connect to port 0".into());
    }
    if host.contains(':') {
        Ok(format!("tcp://[{host}]:{port}"))
    } else {
        Ok(format!("tcp://{host}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_host_port() {
        let a = Address::from("127.0.0.1:7999");
        assert_eq!(a.bind_endpoint().unwrap(), "tcp://127.0.0.1:7999");
        assert_eq!(a.connect_endpoint().unwrap(), "tcp://127.0.0.1:7999");
        assert_eq!(
            Address::from("*:5").bind_endpoint().unwrap(),
            "tcp://0.0.0.0:5"
        );
        assert_eq!(
            Address::from("localhost:5").connect_endpoint().unwrap(),
            "tcp://127.0.0.1:5"
        );
    }

    #[test]
    fn full_endpoints_and_split() {
        assert_eq!(
            Address::from("ipc:///tmp/x").bind_endpoint().unwrap(),
            "ipc:///tmp/x"
        );
        assert_eq!(
            Address::from("tcp://1.2.3.4:9").connect_endpoint().unwrap(),
            "tcp://1.2.3.4:9"
        );
        let a: Address =
            serde_json::from_str(r#"{"bind": "0.0.0.0:9000", "connect": "gw.example:19000"}"#)
                .unwrap();
        assert_eq!(a.bind_endpoint().unwrap(), "tcp://0.0.0.0:9000");
        assert_eq!(a.connect_endpoint().unwrap(), "tcp://gw.example:19000");
    }

    #[test]
    fn mistakes_are_named() {
        let e = Address::from("nohost")
            .bind_endpoint()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nohost") && e.contains("host:port"), "{e}");
        let e = Address::from("h:99999")
            .connect_endpoint()
            .unwrap_err()
            .to_string();
        assert!(e.contains("99999"), "{e}");
        let e = Address::from("*:5")
            .connect_endpoint()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot connect"), "{e}");
        let a: Address = serde_json::from_str(r#"{"bind": "0.0.0.0:1"}"#).unwrap();
        assert!(a
            .connect_endpoint()
            .unwrap_err()
            .to_string()
            .contains("no \"connect\""));
        let e = Address::from("udp://h:1")
            .bind_endpoint()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcp://"), "{e}");
    }

    #[test]
    fn replica_lists() {
        let a: Address = serde_json::from_str(
            r#"["127.0.0.1:1", "tcp://10.0.0.2:2", {"bind": "*:3", "connect": "h3:3"}]"#,
        )
        .unwrap();
        assert_eq!(
            a.connect_endpoints().unwrap(),
            ["tcp://127.0.0.1:1", "tcp://10.0.0.2:2", "tcp://h3:3"]
        );
        assert_eq!(
            a.to_string(),
            "[127.0.0.1:1, tcp://10.0.0.2:2, {bind: *:3, connect: h3:3}]"
        );
        // Other sockets take one address, and say why a list is refused.
        for e in [a.connect_endpoint(), a.bind_endpoint()] {
            let e = e.unwrap_err().to_string();
            assert!(e.contains("replicas a requester calls"), "{e}");
        }
        // One address, in a list or not, is the same address.
        let one: Address = serde_json::from_str(r#"["127.0.0.1:1"]"#).unwrap();
        assert_eq!(one.connect_endpoint().unwrap(), "tcp://127.0.0.1:1");
        assert_eq!(one.connect_endpoints().unwrap(), ["tcp://127.0.0.1:1"]);
        assert_eq!(
            Address::from("127.0.0.1:1").connect_endpoints().unwrap(),
            ["tcp://127.0.0.1:1"]
        );
        for (bad, why) in [
            ("[]", "empty list"),
            (r#"["h:1", "tcp://h:1"]"#, "listed twice"),
            (r#"["h:1", ["h:2"]]"#, "another list"),
            (r#"["h:1", "h:0"]"#, "port 0"),
        ] {
            let a: Address = serde_json::from_str(bad).unwrap();
            let e = a.connect_endpoints().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
