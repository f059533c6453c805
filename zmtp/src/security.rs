//! Bus security: the keys of CURVE (RFC 26), the per-socket [`Security`] setting, the server's
//! [`Authorizer`] of client keys, and libzmq's certificate files.
//!
//! A CURVE server holds its long-term secret key and decides per client long-term public key
//! whether to accept it; a CURVE client holds its own key pair and the server's public key.
//! Secret keys never appear in `Debug` output or in logs: [`SecretKey`]'s `Debug` prints a
//! placeholder and the only way to its text is [`SecretKey::to_z85`].
//!
//! Certificates are the files of libzmq's tools and pyzmq's `zmq.auth`
//! (`create_certificates`, `load_certificate`): `NAME.key` with the public key,
//! `NAME.key_secret` with both, in ZPL text:
//!
//! ```text
//! metadata
//! curve
//!     public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//!     secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
//! ```

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::handshake::Mechanism;
use crate::z85;

/// A long-term or transient curve25519 public key (32 octets).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub(crate) [u8; 32]);

impl PublicKey {
    /// From its 32 octets.
    pub fn from_bytes(b: [u8; 32]) -> PublicKey {
        PublicKey(b)
    }
    /// From its 40 Z85 characters.
    pub fn from_z85(text: &str) -> Result<PublicKey, KeyError> {
        Ok(PublicKey(z85::decode_key(text.trim())?))
    }
    /// Its 32 octets.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Its 40 Z85 characters.
    pub fn to_z85(&self) -> String {
        z85::encode(&self.0).expect("32 is a multiple of 4")
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_z85(s)
    }
}

/// A long-term curve25519 secret key. Zeroed when dropped; never printed.
#[derive(Clone)]
pub struct SecretKey(pub(crate) crypto_box::SecretKey);

impl SecretKey {
    /// From its 32 octets.
    pub fn from_bytes(b: [u8; 32]) -> SecretKey {
        SecretKey(crypto_box::SecretKey::from(b))
    }
    /// From its 40 Z85 characters (the `secret-key` of a certificate, `ZMQ_CURVE_SECRETKEY`).
    pub fn from_z85(text: &str) -> Result<SecretKey, KeyError> {
        let mut b = z85::decode_key(text.trim())?;
        let k = SecretKey::from_bytes(b);
        zeroize::Zeroize::zeroize(&mut b);
        Ok(k)
    }
    /// From the environment variable `name`, in Z85.
    pub fn from_env(name: &str) -> Result<SecretKey, KeyError> {
        let v = std::env::var(name).map_err(|_| KeyError::Missing(name.to_owned()))?;
        let v = zeroize::Zeroizing::new(v);
        SecretKey::from_z85(&v)
    }
    /// The public key that goes with it.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.public_key().as_bytes())
    }
    /// Its Z85 text: to write a certificate. Handle with care.
    pub fn to_z85(&self) -> zeroize::Zeroizing<String> {
        let b = zeroize::Zeroizing::new(self.0.to_bytes());
        zeroize::Zeroizing::new(z85::encode(&b[..]).expect("32 is a multiple of 4"))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A long-term key pair.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The public half: give it to the peers.
    pub public: PublicKey,
    /// The secret half: keep it.
    pub secret: SecretKey,
}

impl KeyPair {
    /// A new random pair, from the operating system's generator.
    pub fn generate() -> KeyPair {
        let secret = SecretKey(crypto_box::SecretKey::generate(
            &mut crypto_box::aead::OsRng,
        ));
        KeyPair {
            public: secret.public_key(),
            secret,
        }
    }
    /// The pair of a secret key.
    pub fn from_secret(secret: SecretKey) -> KeyPair {
        KeyPair {
            public: secret.public_key(),
            secret,
        }
    }
}

/// A key or certificate that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 40 Z85 characters.
    #[error("not a Z85 key: {0}")]
    Z85(#[from] z85::Z85Error),
    /// The environment variable is not set.
    #[error("the environment variable {0} is not set")]
    Missing(String),
    /// A certificate file without a `public-key`.
    #[error("{0}: no public-key in the certificate")]
    NoPublicKey(PathBuf),
    /// A certificate whose secret key does not give its public key.
    #[error("{0}: the secret key does not match the public key")]
    Mismatch(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// How a socket secures its connections. Every connection of the socket uses it.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Security {
    /// No security (RFC 23 NULL): what Python `service_framework` 0.0.18 speaks.
    #[default]
    Null,
    /// CURVE server (the role is independent of bind or connect): clients must know our public
    /// key, and `authorizer` decides which client keys are accepted.
    CurveServer {
        /// Our long-term secret key.
        secret: SecretKey,
        /// Which clients are accepted.
        authorizer: Authorizer,
    },
    /// CURVE client of a server whose public key we know.
    CurveClient {
        /// The server's long-term public key.
        server_public: PublicKey,
        /// Our long-term public key (what the server authorizes).
        public: PublicKey,
        /// Our long-term secret key.
        secret: SecretKey,
    },
}

impl Security {
    /// A CURVE server with this secret key, accepting the clients `authorizer` accepts.
    pub fn curve_server(secret: SecretKey, authorizer: Authorizer) -> Security {
        Security::CurveServer { secret, authorizer }
    }
    /// A CURVE client with its own pair, for the server whose public key is `server_public`.
    pub fn curve_client(server_public: PublicKey, ours: KeyPair) -> Security {
        Security::CurveClient {
            server_public,
            public: ours.public,
            secret: ours.secret,
        }
    }
    /// The mechanism this setting speaks.
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Security::Null => Mechanism::Null,
            Security::CurveServer { .. } | Security::CurveClient { .. } => Mechanism::Curve,
        }
    }
    /// Whether we are the CURVE server (the greeting's as-server octet).
    pub fn as_server(&self) -> bool {
        matches!(self, Security::CurveServer { .. })
    }
}

// ------------------------------------------------------------------------------------------
// The authorizer.

type Check = dyn Fn(&PublicKey) -> bool + Send + Sync;

enum Rule {
    Any,
    List(HashSet<PublicKey>),
    Dir(Arc<CertDir>),
    Fn(Box<Check>),
}

/// Decides, per client long-term public key, whether a CURVE server accepts the client. Cheap to
/// clone (shared); a directory authorizer is reloaded in the background as its files change.
#[derive(Clone)]
pub struct Authorizer(Arc<Rule>);

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Rule::Any => f.write_str("Authorizer::Any"),
            Rule::List(l) => write!(f, "Authorizer::List({} keys)", l.len()),
            Rule::Dir(d) => write!(f, "Authorizer::Dir({})", d.path.display()),
            Rule::Fn(_) => f.write_str("Authorizer::Fn"),
        }
    }
}

impl Authorizer {
    /// Any client that knows the server's public key (libzmq's CURVE without a ZAP handler):
    /// confidentiality and server authentication, no client authentication.
    pub fn allow_any() -> Authorizer {
        Authorizer(Arc::new(Rule::Any))
    }

    /// Only these client keys.
    pub fn allow_list(keys: impl IntoIterator<Item = PublicKey>) -> Authorizer {
        Authorizer(Arc::new(Rule::List(keys.into_iter().collect())))
    }

    /// Whatever `check` says. It runs during the handshake, on the connection's task: keep it
    /// quick and non-blocking.
    pub fn from_fn(check: impl Fn(&PublicKey) -> bool + Send + Sync + 'static) -> Authorizer {
        Authorizer(Arc::new(Rule::Fn(Box::new(check))))
    }

    /// The public keys of the certificates (`*.key`) in `dir`, reloaded when the directory's
    /// files change (checked every second). Files that do not parse are skipped, and logged.
    pub fn certificate_dir(dir: impl Into<PathBuf>) -> Result<Authorizer, KeyError> {
        Authorizer::certificate_dir_every(dir, Duration::from_secs(1))
    }

    /// As [`certificate_dir`](Self::certificate_dir), checking for changes every `interval`.
    pub fn certificate_dir_every(
        dir: impl Into<PathBuf>,
        interval: Duration,
    ) -> Result<Authorizer, KeyError> {
        let d = Arc::new(CertDir {
            path: dir.into(),
            state: RwLock::new(DirState::default()),
        });
        d.reload()?;
        let weak = Arc::downgrade(&d);
        let name = format!("sf-zmtp-certs {}", d.path.display());
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || watch(weak, interval.max(Duration::from_millis(10))))
            .map_err(|e| KeyError::Io {
                path: d.path.clone(),
                source: e,
            })?;
        Ok(Authorizer(Arc::new(Rule::Dir(d))))
    }

    /// Whether a client with this long-term public key is accepted.
    pub fn allows(&self, key: &PublicKey) -> bool {
        match &*self.0 {
            Rule::Any => true,
            Rule::List(l) => l.contains(key),
            Rule::Dir(d) => d.state.read().expect("cert dir lock").keys.contains(key),
            Rule::Fn(f) => f(key),
        }
    }

    /// Reloads a directory authorizer now (it also reloads by itself); the keys it holds
    /// after. Other authorizers: `None`.
    pub fn reload(&self) -> Option<Result<usize, KeyError>> {
        match &*self.0 {
            Rule::Dir(d) => Some(d.reload().map(|_| d.key_count())),
            _ => None,
        }
    }

    /// The keys a list or directory authorizer holds now (`None` for the others).
    pub fn key_count(&self) -> Option<usize> {
        match &*self.0 {
            Rule::List(l) => Some(l.len()),
            Rule::Dir(d) => Some(d.key_count()),
            _ => None,
        }
    }
}

/// A file's name, length and modification time: a change in any reloads the directory.
type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

#[derive(Default)]
struct DirState {
    keys: HashSet<PublicKey>,
    /// What was loaded last (`None` before the first load).
    stamp: Option<Stamp>,
}

struct CertDir {
    path: PathBuf,
    state: RwLock<DirState>,
}

impl CertDir {
    fn key_count(&self) -> usize {
        self.state.read().expect("cert dir lock").keys.len()
    }

    fn stamp(&self) -> Result<Stamp, KeyError> {
        let io = |source| KeyError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stamp = Vec::new();
        for e in std::fs::read_dir(&self.path).map_err(io)? {
            let Ok(e) = e else { continue };
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("key") {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() {
                stamp.push((p, m.len(), m.modified().ok()));
            }
            if stamp.len() >= MAX_CERTS {
                break;
            }
        }
        stamp.sort();
        Ok(stamp)
    }

    /// Reloads if anything changed; true if it did.
    fn reload(&self) -> Result<bool, KeyError> {
        let stamp = self.stamp()?;
        if self.state.read().expect("cert dir lock").stamp.as_ref() == Some(&stamp) {
            return Ok(false);
        }
        let mut keys = HashSet::new();
        let mut skipped = Vec::new();
        for (p, len, _) in &stamp {
            if *len > MAX_CERT_BYTES {
                skipped.push(p.clone());
                continue;
            }
            match load_certificate(p) {
                Ok(c) => {
                    keys.insert(c.public);
                }
                Err(_) => skipped.push(p.clone()),
            }
        }
        // One line per change of the directory, however many files it has.
        tracing::info!(
            dir = %self.path.display(),
            keys = keys.len(),
            skipped = skipped.len(),
            first_skipped = ?skipped.first(),
            "CURVE client certificates loaded"
        );
        let mut st = self.state.write().expect("cert dir lock");
        st.keys = keys;
        st.stamp = Some(stamp);
        Ok(true)
    }
}

/// Certificates read from one directory at most (the rest are ignored).
const MAX_CERTS: usize = 100_000;
/// A certificate file larger than this is skipped.
const MAX_CERT_BYTES: u64 = 64 << 10;

fn watch(dir: Weak<CertDir>, every: Duration) {
    let mut failing = false;
    loop {
        std::thread::sleep(every);
        let Some(d) = dir.upgrade() else { return };
        match d.reload() {
            Ok(_) => failing = false,
            Err(e) => {
                // Logged when it starts failing, not every interval; the keys stay as they were.
                if !failing {
                    tracing::warn!("CURVE certificate directory unreadable, keys kept: {e}");
                }
                failing = true;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Certificate files.

/// A certificate read from a file.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The public key.
    pub public: PublicKey,
    /// The secret key, in a `.key_secret` file.
    pub secret: Option<SecretKey>,
    /// The `metadata` section's properties.
    pub metadata: Vec<(String, String)>,
}

/// Reads a libzmq/pyzmq certificate (`NAME.key` or `NAME.key_secret`).
pub fn load_certificate(path: impl AsRef<Path>) -> Result<Certificate, KeyError> {
    let path = path.as_ref();
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.to_owned(),
            source: e,
        })?);
    parse_certificate(&text, path)
}

fn parse_certificate(text: &str, path: &Path) -> Result<Certificate, KeyError> {
    let (mut public, mut secret, mut metadata) = (None, None, Vec::new());
    let mut section = "";
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            section = if t == "curve" || t == "metadata" {
                t
            } else {
                ""
            };
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), unquote(v.trim()));
        match (section, k) {
            ("curve", "public-key") => public = Some(PublicKey::from_z85(v)?),
            ("curve", "secret-key") => secret = Some(SecretKey::from_z85(v)?),
            ("metadata", _) => metadata.push((k.to_owned(), v.to_owned())),
            _ => {}
        }
    }
    let public = public.ok_or_else(|| KeyError::NoPublicKey(path.to_owned()))?;
    if let Some(s) = &secret {
        if s.public_key() != public {
            return Err(KeyError::Mismatch(path.to_owned()));
        }
    }
    Ok(Certificate {
        public,
        secret,
        metadata,
    })
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn cert_text(pair: &KeyPair, with_secret: bool, metadata: &[(&str, &str)]) -> String {
    let kind = if with_secret { "Secret" } else { "Public" };
    let mut s =
        format!("#   ****  Generated by sf-zmtp  ****\n#   ZeroMQ CURVE {kind} Certificate\n");
    if with_secret {
        s.push_str("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n");
    } else {
        s.push_str("#   Exchange securely, or use a secure mechanism to verify the contents\n");
        s.push_str("#   of this file after exchange.\n");
    }
    s.push_str("\nmetadata\n");
    for (k, v) in metadata {
        let k: String = k
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
            .collect();
        let v: String = v.chars().filter(|c| !c.is_control() && *c != '"').collect();
        s.push_str(&format!("    {k} = \"{v}\"\n"));
    }
    s.push_str("curve\n");
    s.push_str(&format!("    public-key = \"{}\"\n", pair.public.to_z85()));
    if with_secret {
        s.push_str(&format!(
            "    secret-key = \"{}\"\n",
            pair.secret.to_z85().as_str()
        ));
    }
    s
}

/// Writes `dir/NAME.key` (the public certificate) and `dir/NAME.key_secret` (both keys, mode
/// 0600 on Unix), as pyzmq's `zmq.auth.create_certificates` does; returns both paths.
pub fn write_certificates(
    dir: impl AsRef<Path>,
    name: &str,
    pair: &KeyPair,
    metadata: &[(&str, &str)],
) -> Result<(PathBuf, PathBuf), KeyError> {
    let dir = dir.as_ref();
    let public = dir.join(format!("{name}.key"));
    let secret = dir.join(format!("{name}.key_secret"));
    write_file(&public, cert_text(pair, false, metadata).as_bytes(), false)?;
    let text = zeroize::Zeroizing::new(cert_text(pair, true, metadata));
    write_file(&secret, text.as_bytes(), true)?;
    Ok((public, secret))
}

/// Generates a key pair and writes its two certificates (see [`write_certificates`]).
pub fn create_certificates(
    dir: impl AsRef<Path>,
    name: &str,
) -> Result<(KeyPair, PathBuf, PathBuf), KeyError> {
    let pair = KeyPair::generate();
    let (p, s) = write_certificates(dir, name, &pair, &[])?;
    Ok((pair, p, s))
}

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), KeyError> {
    use std::io::Write;
    let err = |e| KeyError::Io {
        path: path.to_owned(),
        source: e,
    };
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = o.open(path).map_err(err)?;
    #[cfg(unix)]
    if private {
        // A file that existed keeps its mode through open: set it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_never_printed() {
        let pair = KeyPair::generate();
        let text = pair.secret.to_z85();
        for shown in [
            format!("{pair:?}"),
            format!("{:?}", pair.secret),
            format!(
                "{:?}",
                Security::curve_server(pair.secret.clone(), Authorizer::allow_any())
            ),
            format!(
                "{:?}",
                Security::curve_client(pair.public, KeyPair::generate())
            ),
        ] {
            assert!(!shown.contains(text.as_str()), "{shown}");
            assert!(shown.contains("redacted") || shown.contains("PublicKey"));
        }
        assert!(format!("{pair:?}").contains(&pair.public.to_z85()));
    }

    #[test]
    fn the_libzmq_test_pair_matches() {
        // zmq_curve(7)'s test server pair.
        let s = SecretKey::from_z85("JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6").unwrap();
        assert_eq!(
            s.public_key().to_z85(),
            "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        );
    }

    #[test]
    fn certificates_round_trip_and_refuse_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let pair = KeyPair::generate();
        let (p, s) = write_certificates(dir.path(), "svc", &pair, &[("name", "svc")]).unwrap();
        let c = load_certificate(&p).unwrap();
        assert_eq!(c.public, pair.public);
        assert!(c.secret.is_none());
        assert_eq!(c.metadata, vec![("name".into(), "svc".into())]);
        let c = load_certificate(&s).unwrap();
        assert_eq!(c.secret.unwrap().public_key(), pair.public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&s).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = KeyPair::generate();
        let bad = format!(
            "curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            pair.public,
            other.secret.to_z85().as_str()
        );
        assert!(matches!(
            parse_certificate(&bad, Path::new("x")),
            Err(KeyError::Mismatch(_))
        ));
        assert!(matches!(
            parse_certificate("curve\n", Path::new("x")),
            Err(KeyError::NoPublicKey(_))
        ));
        assert!(parse_certificate("curve\n    public-key = \"abc\"\n", Path::new("x")).is_err());
    }

    #[test]
    fn a_directory_authorizer_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        write_certificates(dir.path(), "a", &a, &[]).unwrap();
        std::fs::write(dir.path().join("junk.key"), "not a certificate").unwrap();
        let auth =
            Authorizer::certificate_dir_every(dir.path(), Duration::from_secs(3600)).unwrap();
        assert!(auth.allows(&a.public));
        assert!(!auth.allows(&b.public));
        write_certificates(dir.path(), "b", &b, &[]).unwrap();
        std::fs::remove_file(dir.path().join("a.key")).unwrap();
        assert_eq!(auth.reload().unwrap().unwrap(), 1);
        assert!(auth.allows(&b.public));
        assert!(!auth.allows(&a.public));
    }
}
