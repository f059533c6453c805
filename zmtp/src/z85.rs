//! Z85 (ZeroMQ RFC 32): the printable encoding of CURVE keys, 4 octets to 5 characters.
//!
//! A 32-octet key is 40 characters. Only lengths that are multiples of 4 (encoding) and of 5
//! (decoding) are accepted, as the spec requires; anything else, a character outside the
//! alphabet or a group past `u32::MAX` is an error, never a panic.

/// The 85 characters, in value order.
const ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Why a string or a buffer cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Z85Error {
    /// Encoding takes a multiple of 4 octets.
    #[error("Z85 encodes a multiple of 4 octets, not {0}")]
    OctetCount(usize),
    /// Decoding takes a multiple of 5 characters.
    #[error("Z85 text has a multiple of 5 characters, not {0}")]
    CharCount(usize),
    /// A character outside the alphabet, at this position.
    #[error("character {position} is not in the Z85 alphabet")]
    BadChar {
        /// Its position (in octets).
        position: usize,
    },
    /// Five characters whose value does not fit in 32 bits.
    #[error("the group at character {position} is past 32 bits")]
    Overflow {
        /// The group's first position.
        position: usize,
    },
}

/// The value of each character, 0xff for those outside the alphabet.
const fn decode_table() -> [u8; 256] {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
}
const DECODE: [u8; 256] = decode_table();

/// Encodes `data` (a multiple of 4 octets).
pub fn encode(data: &[u8]) -> Result<String, Z85Error> {
    if data.len() % 4 != 0 {
        return Err(Z85Error::OctetCount(data.len()));
    }
    let mut out = String::with_capacity(data.len() / 4 * 5);
    for group in data.chunks_exact(4) {
        let mut v = u32::from_be_bytes([group[0], group[1], group[2], group[3]]);
        let mut chars = [0u8; 5];
        for c in chars.iter_mut().rev() {
            *c = ALPHABET[(v % 85) as usize];
            v /= 85;
        }
        out.extend(chars.iter().map(|&c| char::from(c)));
    }
    Ok(out)
}

/// Decodes `text` (a multiple of 5 characters).
pub fn decode(text: &str) -> Result<Vec<u8>, Z85Error> {
    let b = text.as_bytes();
    if b.len() % 5 != 0 {
        return Err(Z85Error::CharCount(b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 5 * 4);
    for (g, group) in b.chunks_exact(5).enumerate() {
        let mut v: u64 = 0;
        for (i, &c) in group.iter().enumerate() {
            let d = DECODE[usize::from(c)];
            if d == 0xff {
                return Err(Z85Error::BadChar {
                    position: g * 5 + i,
                });
            }
            v = v * 85 + u64::from(d);
        }
        let v = u32::try_from(v).map_err(|_| Z85Error::Overflow { position: g * 5 })?;
        out.extend_from_slice(&v.to_be_bytes());
    }
    Ok(out)
}

/// Decodes exactly 32 octets (a key) from 40 characters.
pub fn decode_key(text: &str) -> Result<[u8; 32], Z85Error> {
    if text.len() != 40 {
        return Err(Z85Error::CharCount(text.len()));
    }
    let v = decode(text)?;
    let mut k = [0u8; 32];
    k.copy_from_slice(&v);
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_test_vector() {
        // RFC 32: 0x86 0x4F 0xD2 0x6F 0xB5 0x59 0xF7 0x5B is "HelloWorld".
        let raw = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(encode(&raw).unwrap(), "HelloWorld");
        assert_eq!(decode("HelloWorld").unwrap(), raw);
    }

    #[test]
    fn the_libzmq_test_keys() {
        // zmq_curve(7): the test server's public key, in hex and in Z85.
        let hex = "BB88471D65E2659B30C55A5321CEBB5AAB2B70A398645C26DCA2B2FCB43FC518";
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let z = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
        assert_eq!(encode(&raw).unwrap(), z);
        assert_eq!(decode_key(z).unwrap().to_vec(), raw);
    }

    #[test]
    fn round_trips_and_refuses_bad_input() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(decode(&encode(&all).unwrap()).unwrap(), all);
        assert_eq!(encode(&[0xff; 4]).unwrap(), "%nSc0");
        assert_eq!(encode(&[1, 2, 3]), Err(Z85Error::OctetCount(3)));
        assert_eq!(decode("abcd"), Err(Z85Error::CharCount(4)));
        assert_eq!(decode("ab\"cd"), Err(Z85Error::BadChar { position: 2 }));
        assert_eq!(decode("%nSc1"), Err(Z85Error::Overflow { position: 0 }));
        assert_eq!(decode("#####"), Err(Z85Error::Overflow { position: 0 }));
        assert!(decode_key("HelloWorld").is_err());
        assert!(decode("héllo").is_err());
    }
}
