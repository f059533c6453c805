//! Endpoints: `tcp://host:port` and `ipc://path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// Where a socket binds or connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// TCP. `host` may be `*` (every interface, bind only), a name, an IPv4 or a bracketed
    /// IPv6 address; `port` 0 binds an ephemeral port.
    Tcp {
        /// The host part, without brackets.
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix domain socket at this path.
    Ipc(PathBuf),
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint, Error> {
        let bad = |reason: &str| Error::Endpoint {
            endpoint: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp://host:port"))?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                return Err(bad("the host is empty"));
            }
            let port = if port == "*" {
                0
            } else {
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 0 to 65535"))?
            };
            Ok(Endpoint::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(path) = s.strip_prefix("ipc://") {
            if path.is_empty() {
                return Err(bad("the path is empty"));
            }
            Ok(Endpoint::Ipc(PathBuf::from(path)))
        } else {
            Err(bad("the transport must be tcp:// or ipc://"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Ipc(p) => write!(f, "ipc://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "tcp://127.0.0.1:5555",
            "tcp://*:0",
            "tcp://[::1]:9",
            "tcp://localhost:80",
            "ipc:///tmp/x.sock",
        ] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        for s in [
            "udp://x:1",
            "tcp://host",
            "tcp://:5",
            "tcp://h:70000",
            "ipc://",
        ] {
            assert!(s.parse::<Endpoint>().is_err(), "{s}");
        }
    }
}
