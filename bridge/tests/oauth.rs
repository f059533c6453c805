//! `auth.oauth` end to end against a real OAuth 2.0 / OpenID provider on loopback
//! (oauth2-mock-server from the npm registry, installed by this test into
//! tests/oauth_provider): the redirect to the provider, its redirect back, the state check,
//! the code exchange, the user read with the token, the signed session cookie, the docs served
//! with it, a tampered cookie refused, and logout; and the cookies' Secure flag for an https
//! app URL.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sf_bridge::oauth::OauthSettings;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Provider {
    url: String,
    _child: tokio::process::Child,
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_provider")
}

/// Installs the provider's package (once, from package-lock.json) and starts it. Tests run
/// at once: one installs while the others wait, so none starts `node` on a half-written
/// `node_modules` (or has it deleted under it by a second `npm ci`).
async fn provider() -> Provider {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED.get_or_init(install).await;
    start_provider().await
}

async fn install() {
    let dir = provider_dir();
    if !dir
        .join("node_modules/oauth2-mock-server/package.json")
        .is_file()
    {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .output(),
        )
        .await
        .expect("npm ci finishes within 300 s")
        .expect("npm runs (Node.js and npm are on the machine)");
        assert!(
            out.status.success(),
            "npm ci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn start_provider() -> Provider {
    let dir = provider_dir();
    let mut child = tokio::process::Command::new("node")
        .arg("server.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the provider announces itself within 30 s")
        .unwrap()
        .expect("a READY line");
    let url = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .trim()
        .to_owned();
    Provider { url, _child: child }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `name=value` of a Set-Cookie header, and its attributes.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            (pair.to_owned(), attrs.to_owned())
        })
}

/// The docs login against the mock provider at `provider`, for a bridge reached at `app_url`.
fn oauth_settings(provider: &str, app_url: &str) -> OauthSettings {
    OauthSettings {
        provider: "mock".into(),
        client_id: "bridge-docs".into(),
        client_secret: "s3cret".into(),
        authorization_url: format!("{provider}/authorize"),
        token_url: format!("{provider}/token"),
        user_info_url: format!("{provider}/userinfo"),
        redirect_uri: "/oauth/callback".into(),
        app_url: app_url.into(),
        jwt_secret: "0123456789abcdef0123456789abcdef-test".into(),
        ..Default::default()
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn docs_login_end_to_end_against_a_real_provider() {
    let p = provider().await;
    // The bridge's own port must be known for app_url: bind, note it, and serve there.
    let port = FastApi::free_port();
    let mut s = settings(&["echo"], &[]);
    s.server.port = port;
    let app_url = format!("http://127.0.0.1:{port}");
    s.auth.oauth = Some(oauth_settings(&p.url, &app_url));
    let b = start(s, vec![]).await;
    let u = b.url();
    let c = no_redirects();

    // The API itself is not behind the login.
    let (st, _) = get(&format!("{u}/api/v1/echo?message=x")).await;
    assert_eq!(st, 200);

    // 1. The docs send the browser to the provider, with a state bound to a cookie.
    let r = c.get(format!("{u}/docs/?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let to_provider = location(&r);
    assert!(
        to_provider.starts_with(&format!("{}/authorize?", p.url)),
        "{to_provider}"
    );
    let auth_url = reqwest::Url::parse(&to_provider).unwrap();
    let q: std::collections::HashMap<_, _> = auth_url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "bridge-docs");
    assert_eq!(q["redirect_uri"], format!("{app_url}/oauth/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    let state = q["state"].clone();
    assert!(state.len() >= 16);
    let (state_cookie, attrs) = set_cookie(&r, "sf_oauth_state").expect("the state cookie");
    assert!(attrs.contains("HttpOnly"), "{attrs}");
    assert!(
        !attrs.contains("Secure"),
        "http app_url: no Secure flag ({attrs})"
    );
    // The document and ReDoc are behind it too.
    for path in ["/api/v1/openapi.json", "/redoc", "/docs"] {
        let r = c.get(format!("{u}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 302, "{path}");
    }

    // 2. The provider answers with a code, back to the callback.
    let r = c.get(&to_provider).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = location(&r);
    assert!(
        back.starts_with(&format!("{app_url}/oauth/callback?")),
        "{back}"
    );
    assert!(back.contains(&format!("state={state}")), "{back}");

    // A callback whose state was not started by this browser is refused.
    let r = c.get(&back).send().await.unwrap();
    assert_eq!(r.status(), 400, "no state cookie");
    let forged = back.replace(&format!("state={state}"), "state=forged");
    let r = c
        .get(&forged)
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a forged state");

    // 3. The callback exchanges the code, reads the user and sets the session.
    let r = c
        .get(&back)
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    assert_eq!(location(&r), "/docs/?x=1");
    let (session, attrs) = set_cookie(&r, "sf_session").expect("the session cookie");
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax"),
        "{attrs}"
    );
    assert!(
        !attrs.contains("Secure"),
        "http app_url: no Secure flag ({attrs})"
    );
    let jwt = session.strip_prefix("sf_session=").unwrap().to_owned();
    assert_eq!(jwt.split('.').count(), 3, "a signed token");

    // 4. With it, the docs are served.
    for path in ["/docs/", "/redoc", "/api/v1/openapi.json"] {
        let r = c
            .get(format!("{u}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = c
        .get(format!("{u}/api/v1/openapi.json"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"].get("/api/v1/echo").is_some());

    // 5. A tampered cookie (payload or signature) is refused: back to the login.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let sig = parts[2].clone();
    let flipped = if sig.ends_with('A') { 'B' } else { 'A' };
    parts[2] = format!("{}{flipped}", &sig[..sig.len() - 1]);
    let bad_sig = parts.join(".");
    let other_user = {
        use base64_payload::*;
        let mut p: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        p[1] = replace_sub(&p[1], "admin");
        p.join(".")
    };
    for bad in [bad_sig, other_user, "garbage".to_owned()] {
        let r = c
            .get(format!("{u}/docs/"))
            .header("cookie", format!("sf_session={bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{bad}");
    }

    // 6. Logout clears the session cookie.
    let r = c
        .get(format!("{u}/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (cleared, attrs) = set_cookie(&r, "sf_session").expect("a clearing cookie");
    assert_eq!(cleared, "sf_session=");
    assert!(attrs.contains("Max-Age=0"), "{attrs}");
    b.stop().await;
}

#[tokio::test]
async fn cookies_are_secure_when_the_app_url_is_https() {
    let p = provider().await;
    // The bridge behind a TLS-terminating proxy: its public URL is https, it serves plain
    // HTTP on loopback, where the test plays the proxy and hands the callback on.
    let app_url = "https://docs.example.invalid";
    let mut s = settings(&["echo"], &[]);
    s.auth.oauth = Some(oauth_settings(&p.url, app_url));
    let b = start(s, vec![]).await;
    let u = b.url();
    let c = no_redirects();

    let r = c.get(format!("{u}/docs/")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let (state_cookie, attrs) = set_cookie(&r, "sf_oauth_state").expect("the state cookie");
    assert!(
        attrs.contains("Secure") && attrs.contains("HttpOnly"),
        "https app_url: {attrs}"
    );
    let to_provider = location(&r);
    assert!(
        to_provider.contains(&format!(
            "redirect_uri={}",
            urlencode(&format!("{app_url}/oauth/callback"))
        )),
        "{to_provider}"
    );
    // The provider sends the browser to the public callback; the proxy forwards its query.
    let r = c.get(&to_provider).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = reqwest::Url::parse(&location(&r)).unwrap();
    assert_eq!(
        back.as_str().split('?').next(),
        Some(format!("{app_url}/oauth/callback").as_str())
    );
    let r = c
        .get(format!("{u}/oauth/callback?{}", back.query().unwrap()))
        .header("cookie", &state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let (session, attrs) = set_cookie(&r, "sf_session").expect("the session cookie");
    assert!(
        attrs.contains("Secure") && attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax"),
        "https app_url: {attrs}"
    );
    let (_, attrs) = set_cookie(&r, "sf_oauth_state").expect("the state cookie cleared");
    assert!(
        attrs.contains("Secure") && attrs.contains("Max-Age=0"),
        "{attrs}"
    );
    // The session works, and logout clears it with the same flags.
    let r = c
        .get(format!("{u}/docs/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{u}/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (cleared, attrs) = set_cookie(&r, "sf_session").expect("a clearing cookie");
    assert_eq!(cleared, "sf_session=");
    assert!(
        attrs.contains("Secure") && attrs.contains("Max-Age=0"),
        "{attrs}"
    );
    b.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Rewrites a JWT payload's `sub` (what a forger would try), keeping the old signature.
mod base64_payload {
    pub fn replace_sub(payload: &str, sub: &str) -> String {
        let json = decode(payload);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["sub"] = sub.into();
        encode(&serde_json::to_vec(&v).unwrap())
    }

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn decode(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for c in s.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    fn encode(b: &[u8]) -> String {
        let mut out = String::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for &x in b {
            acc = (acc << 8) | x as u32;
            bits += 8;
            while bits >= 6 {
                bits -= 6;
                out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
        }
        out
    }
}

#[tokio::test]
async fn oauth_config_mistakes_are_named() {
    let base = OauthSettings {
        client_id: "c".into(),
        base_url: "http://127.0.0.1:1".into(),
        app_url: "http://127.0.0.1:2".into(),
        ..Default::default()
    };
    for (o, needle) in [
        (
            OauthSettings {
                jwt_secret: "too short".into(),
                ..base.clone()
            },
            "jwt_secret",
        ),
        (
            OauthSettings {
                app_url: String::new(),
                ..base.clone()
            },
            "app_url",
        ),
        (
            OauthSettings {
                base_url: String::new(),
                ..base.clone()
            },
            "authorization_url",
        ),
        (
            OauthSettings {
                jwt_algorithm: "RS256".into(),
                ..base.clone()
            },
            "jwt_algorithm",
        ),
        (
            OauthSettings {
                redirect_uri: "https://elsewhere/cb".into(),
                ..base.clone()
            },
            "redirect_uri",
        ),
    ] {
        let mut s = settings(&[], &[]);
        s.auth.oauth = Some(o);
        let e = sf_bridge::Bridge::new(s)
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
    // FrameX's defaults from base_url are accepted.
    let mut s = settings(&[], &[]);
    s.auth.oauth = Some(base);
    sf_bridge::Bridge::new(s)
        .build()
        .await
        .expect("a valid login config");
}
