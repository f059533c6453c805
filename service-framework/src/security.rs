//! Bus security settings: which connections speak CURVE, with which keys.
//!
//! They live in their own file (`--security security.json`, or the environment variable
//! `SF_SECURITY`), never in addresses.json (which Python 0.0.18 services read unchanged) and
//! never in config.json (which is logged and often checked in). The file holds no key, only
//! where keys are: certificate files (libzmq's and pyzmq's Z85 format, as written by
//! `service-framework keygen` or `zmq.auth.create_certificates`) and environment variables.
//!
//! ```text
//! {
//!   "service": {                                   every connection and state of the service
//!     "secret_key_file": "keys/adder.key_secret",  our pair (or "secret_key_env": "ADDER_KEY")
//!     "clients_dir": "keys/clients",               binding side: the client keys accepted
//!     "server_key_file": "keys/bus.key"            connecting side: the server's public key
//!   },
//!   "connections": {"in": {"add": {...}}, "out": {"audit": {"mechanism": "null"}}},
//!   "states": {"in": {...}, "out": {...}}
//! }
//! ```
//!
//! The role follows the direction of the socket: a connection that binds is the CURVE server
//! (it needs `secret_key_*` and `clients_dir`, or `"allow_any_client": true`), one that
//! connects is a CURVE client (it needs `secret_key_*` and `server_key_file` or `server_key`).
//! An entry of `connections` or `states` replaces the `service` entry for that connection,
//! field by field; `"mechanism": "null"` keeps one connection NULL (a Python 0.0.18 peer). A
//! connection with no entry and no `service` entry is NULL. Relative paths are relative to
//! the security file. Everything is checked at start: a missing key is an error there, not
//! a refused peer later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sf_connections::security::{
    load_certificate, Authorizer, KeyPair, PublicKey, SecretKey, Security,
};

use crate::error::{Error, Result};

/// The environment variable naming the security file when `--security` is not given.
pub const SECURITY_ENV: &str = "SF_SECURITY";

/// How one connection (or the whole service) is secured. Every field is optional; see the
/// module documentation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEntry {
    /// `"curve"` (the default when any key is given) or `"null"`.
    pub mechanism: Option<String>,
    /// A certificate with our secret key (`NAME.key_secret`).
    pub secret_key_file: Option<PathBuf>,
    /// An environment variable holding our secret key in Z85.
    pub secret_key_env: Option<String>,
    /// Binding side: a directory of client certificates (`*.key`), reloaded on change.
    pub clients_dir: Option<PathBuf>,
    /// Binding side: accept any client that knows our public key (no client authentication).
    pub allow_any_client: Option<bool>,
    /// Connecting side: the server's public certificate (`NAME.key`).
    pub server_key_file: Option<PathBuf>,
    /// Connecting side: the server's public key in Z85 (public keys are not secret).
    pub server_key: Option<String>,
}

impl SecurityEntry {
    /// `self`'s fields, falling back on `base`'s.
    fn over(&self, base: &SecurityEntry) -> SecurityEntry {
        SecurityEntry {
            mechanism: self.mechanism.clone().or_else(|| base.mechanism.clone()),
            secret_key_file: self
                .secret_key_file
                .clone()
                .or_else(|| base.secret_key_file.clone()),
            secret_key_env: self
                .secret_key_env
                .clone()
                .or_else(|| base.secret_key_env.clone()),
            clients_dir: self
                .clients_dir
                .clone()
                .or_else(|| base.clients_dir.clone()),
            allow_any_client: self.allow_any_client.or(base.allow_any_client),
            server_key_file: self
                .server_key_file
                .clone()
                .or_else(|| base.server_key_file.clone()),
            server_key: self.server_key.clone().or_else(|| base.server_key.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sides {
    #[serde(default, rename = "in")]
    inbound: HashMap<String, SecurityEntry>,
    #[serde(default, rename = "out")]
    outbound: HashMap<String, SecurityEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    service: Option<SecurityEntry>,
    #[serde(default)]
    connections: Sides,
    #[serde(default)]
    states: Sides,
}

/// Which side of the service a connection or state is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An in-connection or in-state.
    In,
    /// An out-connection or out-state.
    Out,
}

/// The loaded security settings of a service. Directory authorizers and keys are loaded once
/// per path and shared by every connection that names them.
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    shape: FileShape,
    base_dir: PathBuf,
    origin: String,
    authorizers: Arc<Mutex<HashMap<PathBuf, Authorizer>>>,
}

impl SecuritySettings {
    /// Reads a security file.
    pub fn read(path: impl AsRef<Path>) -> Result<SecuritySettings> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read security file {}: {e}", path.display()))
        })?;
        let mut s = SecuritySettings::parse(&text, &path.display().to_string())?;
        s.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(s)
    }

    /// Parses a security file's text (`origin` names it in errors; paths are relative to the
    /// working directory).
    pub fn parse(text: &str, origin: &str) -> Result<SecuritySettings> {
        let shape: FileShape = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("security file {origin}: {e}")))?;
        Ok(SecuritySettings {
            shape,
            base_dir: PathBuf::from("."),
            origin: origin.to_owned(),
            authorizers: Arc::default(),
        })
    }

    /// The file named by `--security`, else by `SF_SECURITY`, else none.
    pub fn from_flag_or_env(flag: Option<&Path>) -> Result<Option<SecuritySettings>> {
        match flag {
            Some(p) => SecuritySettings::read(p).map(Some),
            None => match std::env::var_os(SECURITY_ENV) {
                Some(p) if !p.is_empty() => SecuritySettings::read(PathBuf::from(p)).map(Some),
                _ => Ok(None),
            },
        }
    }

    /// Where these settings came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn entry(&self, table: &Sides, side: Side, name: &str) -> Option<SecurityEntry> {
        let own = match side {
            Side::In => table.inbound.get(name),
            Side::Out => table.outbound.get(name),
        };
        match (own, &self.shape.service) {
            (Some(e), Some(base)) => Some(e.over(base)),
            (Some(e), None) => Some(e.clone()),
            (None, base) => base.clone(),
        }
    }

    /// The security of connection `name` on `side`, whose socket binds or connects.
    pub fn connection(&self, side: Side, name: &str, binds: bool) -> Result<Security> {
        let what = format!("connections.{}.{name}", side_name(side));
        let entry = self.entry(&self.shape.connections, side, name);
        self.resolve(entry, binds, &what)
    }

    /// The security of a state's sockets that bind (`binds`) or connect.
    pub fn state(&self, side: Side, name: &str, binds: bool) -> Result<Security> {
        let what = format!("states.{}.{name}", side_name(side));
        let entry = self.entry(&self.shape.states, side, name);
        self.resolve(entry, binds, &what)
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn resolve(&self, entry: Option<SecurityEntry>, binds: bool, what: &str) -> Result<Security> {
        let Some(e) = entry else {
            return Ok(Security::Null);
        };
        let err = |m: String| Error::Config(format!("security file {}: {what}: {m}", self.origin));
        match e
            .mechanism
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("null") => return Ok(Security::Null),
            None | Some("curve") => {}
            Some(other) => return Err(err(format!("unknown mechanism {other:?} (curve or null)"))),
        }
        let secret = match (&e.secret_key_file, &e.secret_key_env) {
            (Some(f), _) => {
                let f = self.path(f);
                let cert = load_certificate(&f).map_err(|k| err(k.to_string()))?;
                cert.secret.ok_or_else(|| {
                    err(format!(
                        "{} holds no secret-key (give the NAME.key_secret file)",
                        f.display()
                    ))
                })?
            }
            (None, Some(var)) => SecretKey::from_env(var).map_err(|k| err(k.to_string()))?,
            (None, None) => {
                return Err(err(
                    "CURVE needs our key pair: secret_key_file or secret_key_env".into(),
                ))
            }
        };
        let pair = KeyPair::from_secret(secret);
        if binds {
            let authorizer = match (&e.clients_dir, e.allow_any_client) {
                (Some(dir), _) => self.authorizer(&self.path(dir)).map_err(err)?,
                (None, Some(true)) => Authorizer::allow_any(),
                _ => {
                    return Err(err(
                        "a binding connection needs clients_dir (the client certificates it accepts) or \"allow_any_client\": true".into(),
                    ))
                }
            };
            tracing::info!(connection = what, public_key = %pair.public, clients = ?authorizer, "CURVE server");
            Ok(Security::curve_server(pair.secret, authorizer))
        } else {
            let server: PublicKey = match (&e.server_key_file, &e.server_key) {
                (Some(f), _) => {
                    let f = self.path(f);
                    load_certificate(&f).map_err(|k| err(k.to_string()))?.public
                }
                (None, Some(z)) => PublicKey::from_z85(z).map_err(|k| err(k.to_string()))?,
                (None, None) => {
                    return Err(err(
                        "a connecting connection needs the server's public key: server_key_file or server_key".into(),
                    ))
                }
            };
            tracing::info!(connection = what, public_key = %pair.public, server_key = %server, "CURVE client");
            Ok(Security::curve_client(server, pair))
        }
    }

    fn authorizer(&self, dir: &Path) -> std::result::Result<Authorizer, String> {
        let mut cache = self.authorizers.lock().expect("authorizer cache");
        if let Some(a) = cache.get(dir) {
            return Ok(a.clone());
        }
        let a = Authorizer::certificate_dir(dir).map_err(|e| e.to_string())?;
        cache.insert(dir.to_path_buf(), a.clone());
        Ok(a)
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::In => "in",
        Side::Out => "out",
    }
}

/// `service-framework keygen [--out DIR] [NAME]`: writes `DIR/NAME.key` and
/// `DIR/NAME.key_secret` (mode 0600) in libzmq's certificate format, as pyzmq's
/// `zmq.auth.create_certificates` does, refusing to overwrite an existing pair; returns the
/// two paths and the public key.
pub fn keygen(out: &Path, name: &str) -> Result<(PathBuf, PathBuf, PublicKey)> {
    if name.is_empty()
        || name.contains(['/', '\\'])
        || name.starts_with('.')
        || name.chars().any(char::is_control)
    {
        return Err(Error::Other(format!(
            "keygen: {name:?} is not a certificate name (no slashes, not starting with a dot)"
        )));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Other(format!("keygen: cannot create {}: {e}", out.display())))?;
    for p in [
        out.join(format!("{name}.key")),
        out.join(format!("{name}.key_secret")),
    ] {
        if p.exists() {
            return Err(Error::Other(format!(
                "keygen: {} exists; remove it or pick another name",
                p.display()
            )));
        }
    }
    let pair = KeyPair::generate();
    let (p, s) = sf_connections::security::write_certificates(out, name, &pair, &[("name", name)])
        .map_err(|e| Error::Other(format!("keygen: {e}")))?;
    Ok((p, s, pair.public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fall_back_on_the_service_entry_and_null_is_the_default() {
        let s = SecuritySettings::parse(
            r#"{"service": {"secret_key_env": "SF_TEST_NO_SUCH_VAR", "allow_any_client": true},
                "connections": {"out": {"py": {"mechanism": "null"}}}}"#,
            "t",
        )
        .unwrap();
        assert!(matches!(
            s.connection(Side::Out, "py", false).unwrap(),
            Security::Null
        ));
        let e = s.connection(Side::In, "add", true).unwrap_err().to_string();
        assert!(e.contains("SF_TEST_NO_SUCH_VAR"), "{e}");
        let none = SecuritySettings::parse("{}", "t").unwrap();
        assert!(matches!(
            none.connection(Side::In, "add", true).unwrap(),
            Security::Null
        ));
        assert!(SecuritySettings::parse(r#"{"service": {"secret_key": "x"}}"#, "t").is_err());
    }

    #[test]
    fn a_secret_key_from_the_environment_makes_a_curve_role() {
        let pair = KeyPair::generate();
        let var = format!("SF_TEST_SECRET_{}", std::process::id());
        std::env::set_var(&var, pair.secret.to_z85().as_str());
        let s = SecuritySettings::parse(
            &format!(
                r#"{{"service": {{"secret_key_env": "{var}", "allow_any_client": true,
                    "server_key": "{}"}}}}"#,
                pair.public.to_z85()
            ),
            "t",
        )
        .unwrap();
        assert!(matches!(
            s.connection(Side::In, "add", true).unwrap(),
            Security::CurveServer { .. }
        ));
        match s.connection(Side::Out, "audit", false).unwrap() {
            Security::CurveClient {
                server_public,
                public,
                ..
            } => {
                assert_eq!(server_public, pair.public);
                assert_eq!(
                    public, pair.public,
                    "our pair is the one from the environment"
                );
            }
            other => panic!("a CURVE client, got {other:?}"),
        }
        std::env::remove_var(&var);
    }

    #[test]
    fn each_role_says_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), "svc").unwrap();
        let s = SecuritySettings::read({
            let p = dir.path().join("security.json");
            std::fs::write(&p, r#"{"service": {"secret_key_file": "svc.key_secret"}}"#).unwrap();
            p
        })
        .unwrap();
        let e = s.connection(Side::In, "a", true).unwrap_err().to_string();
        assert!(e.contains("clients_dir"), "{e}");
        let e = s.connection(Side::Out, "b", false).unwrap_err().to_string();
        assert!(e.contains("server_key"), "{e}");
        assert!(keygen(dir.path(), "svc").is_err(), "no overwrite");
        assert!(keygen(dir.path(), "../x").is_err());
    }
}
