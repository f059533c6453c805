//! The 64-octet greeting each side sends first (RFC 23, "Greeting").
//!
//! Layout: signature (`0xFF`, eight padding octets, `0x7F`), major and minor version, the
//! mechanism name padded with NULs to 20 octets, the as-server octet, 31 octets of filler.
//! The first ten octets tell a ZMTP 3 peer from an older one; the eleventh the major version.

/// Length of a whole greeting.
pub const GREETING_LEN: usize = 64;
/// Length of the signature, which identifies the protocol.
pub const SIGNATURE_LEN: usize = 10;

/// The major version this implementation speaks.
pub const MAJOR: u8 = 3;
/// The minor version this implementation speaks (ZMTP 3.1).
pub const MINOR: u8 = 1;

/// A parsed greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Major version (3 for every peer accepted).
    pub major: u8,
    /// Minor version: 0 for ZMTP 3.0, 1 for 3.1 (higher minors are treated as 3.1).
    pub minor: u8,
    /// The mechanism name, without padding (`NULL`, `PLAIN`, `CURVE`).
    pub mechanism: String,
    /// The as-server octet (meaningful for PLAIN and CURVE).
    pub as_server: bool,
}

/// A greeting this implementation does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GreetingError {
    /// The first ten octets are not a ZMTP 3 signature.
    #[error("the peer did not send a ZMTP signature")]
    BadSignature,
    /// ZMTP 1.0 or 2.0.
    #[error("the peer speaks ZMTP major version {0}; 3 is required")]
    OldVersion(u8),
    /// The mechanism field holds something other than an ASCII name.
    #[error("the mechanism name is not printable ASCII")]
    BadMechanism,
}

impl Greeting {
    /// Our own greeting for `mechanism`.
    pub fn ours(mechanism: &str, as_server: bool) -> Greeting {
        Greeting {
            major: MAJOR,
            minor: MINOR,
            mechanism: mechanism.to_owned(),
            as_server,
        }
    }

    /// The 64 octets of this greeting.
    pub fn encode(&self) -> [u8; GREETING_LEN] {
        let mut g = [0u8; GREETING_LEN];
        g[0] = 0xFF;
        g[9] = 0x7F;
        g[10] = self.major;
        g[11] = self.minor;
        let name = self.mechanism.as_bytes();
        let n = name.len().min(20);
        g[12..12 + n].copy_from_slice(&name[..n]);
        g[32] = u8::from(self.as_server);
        g
    }

    /// Checks the signature octets. Octets 1..9 are padding: libzmq's ZMTP 1.0 fallback puts a
    /// length there, so only the first and last are checked, as libzmq does.
    pub fn check_signature(sig: &[u8]) -> Result<(), GreetingError> {
        if sig.len() < SIGNATURE_LEN || sig[0] != 0xFF || sig[9] & 0x01 != 0x01 {
            return Err(GreetingError::BadSignature);
        }
        Ok(())
    }

    /// Parses a whole greeting.
    pub fn parse(g: &[u8; GREETING_LEN]) -> Result<Greeting, GreetingError> {
        Greeting::check_signature(&g[..SIGNATURE_LEN])?;
        if g[10] < MAJOR {
            return Err(GreetingError::OldVersion(g[10]));
        }
        let raw = &g[12..32];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let name = &raw[..end];
        if name.is_empty()
            || !name.iter().all(|b| b.is_ascii_graphic())
            || raw[end..].iter().any(|&b| b != 0)
        {
            return Err(GreetingError::BadMechanism);
        }
        Ok(Greeting {
            major: g[10],
            minor: g[11],
            mechanism: String::from_utf8_lossy(name).into_owned(),
            as_server: g[32] != 0,
        })
    }

    /// Whether the peer speaks 3.1 or later (PING/PONG, SUBSCRIBE/CANCEL commands).
    pub fn is_31(&self) -> bool {
        self.major > 3 || self.minor >= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_null_greeting_libzmq_sends() {
        let g = Greeting::ours("NULL", false).encode();
        assert_eq!(&g[..12], &[0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 1]);
        assert_eq!(&g[12..16], b"NULL");
        assert!(g[16..].iter().all(|&b| b == 0));
        let back = Greeting::parse(&g).unwrap();
        assert_eq!(back, Greeting::ours("NULL", false));
        assert!(back.is_31());
    }

    #[test]
    fn refuses_old_versions_and_bad_signatures() {
        let mut g = Greeting::ours("NULL", false).encode();
        g[10] = 2;
        assert_eq!(Greeting::parse(&g), Err(GreetingError::OldVersion(2)));
        let mut g = Greeting::ours("NULL", false).encode();
        g[0] = 0x01;
        assert_eq!(Greeting::parse(&g), Err(GreetingError::BadSignature));
        let mut g = Greeting::ours("NULL", false).encode();
        g[14] = 0;
        g[15] = b'L';
        assert_eq!(Greeting::parse(&g), Err(GreetingError::BadMechanism));
        let mut g = Greeting::ours("NULL", false).encode();
        g[11] = 0;
        assert!(!Greeting::parse(&g).unwrap().is_31());
    }
}
