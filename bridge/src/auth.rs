//! `auth.rules`: which keys a path needs.
//!
//! A rule is keyed by an exact path (`/api/v1/echo`) or a prefix (`/api/v1/secret/*`, matching
//! every path under `/api/v1/secret/`; `*` or `/*` match everything). The exact rule wins,
//! then the longest prefix; a path no rule matches is public. The key comes in
//! `Authorization`, bare or as `Bearer <key>`, and is compared in constant time against every
//! accepted key. A failure is HTTP 401 (FrameX answers 200 with 401 inside the body) and never
//! echoes the key.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Compiled rules.
#[derive(Debug, Clone, Default)]
pub struct AuthRules {
    exact: BTreeMap<String, Vec<String>>,
    prefixes: Vec<(String, Vec<String>)>,
}

impl AuthRules {
    /// From `auth.rules`.
    pub fn new(rules: &BTreeMap<String, Vec<String>>) -> Self {
        let mut out = AuthRules::default();
        for (k, keys) in rules {
            if k == "*" || k == "/*" {
                out.prefixes.push((String::new(), keys.clone()));
            } else if let Some(p) = k.strip_suffix("/*") {
                out.prefixes.push((format!("{p}/"), keys.clone()));
            } else {
                out.exact.insert(k.clone(), keys.clone());
            }
        }
        // Longest prefix first.
        out.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        out
    }

    /// True when no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The keys a request path needs (`None`: public). `template` is the route's declared
    /// path (`/items/{id}`), also tried for an exact match.
    pub fn keys_for(&self, path: &str, template: Option<&str>) -> Option<&[String]> {
        if let Some(k) = self.exact.get(path) {
            return Some(k);
        }
        if let Some(k) = template.and_then(|t| self.exact.get(t)) {
            return Some(k);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, k)| k.as_slice())
    }

    /// Checks a request; `Err` is the 401 to answer.
    pub fn check(
        &self,
        path: &str,
        template: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let Some(keys) = self.keys_for(path, template) else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let v = v.trim();
                match v.get(..7) {
                    Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                    _ => v,
                }
            });
        let Some(given) = given.filter(|g| !g.is_empty()) else {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                format!("{path} needs an API key in the Authorization header"),
            ));
        };
        // Every key is compared, so the time taken does not tell which one came close.
        let mut ok = subtle::Choice::from(0u8);
        for k in keys {
            ok |= given.as_bytes().ct_eq(k.as_bytes());
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                format!("invalid API key for {path}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(pairs: &[(&str, &[&str])]) -> AuthRules {
        AuthRules::new(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn exact_wins_then_longest_prefix() {
        let r = rules(&[
            ("/api/v1/*", &["a"]),
            ("/api/v1/admin/*", &["b"]),
            ("/api/v1/admin/open", &["c"]),
        ]);
        assert_eq!(r.keys_for("/api/v1/admin/open", None).unwrap(), ["c"]);
        assert_eq!(r.keys_for("/api/v1/admin/x", None).unwrap(), ["b"]);
        assert_eq!(r.keys_for("/api/v1/echo", None).unwrap(), ["a"]);
        assert!(r.keys_for("/health", None).is_none());
    }

    #[test]
    fn bare_and_bearer_keys() {
        let r = rules(&[("/x", &["k1", "k2"])]);
        let mut h = HeaderMap::new();
        assert!(r.check("/x", None, &h).is_err());
        h.insert("authorization", "k2".parse().unwrap());
        assert!(r.check("/x", None, &h).is_ok());
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert!(r.check("/x", None, &h).is_ok());
        h.insert("authorization", "Bearer k3".parse().unwrap());
        let e = r.check("/x", None, &h).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(!e.message.contains("k3"));
    }
}
