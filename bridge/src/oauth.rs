//! `auth.oauth`: FrameX's OAuth 2.0 login in front of the docs pages.
//!
//! With `[auth.oauth]` configured, `/docs`, `/redoc` and the OpenAPI document need a session:
//! without one the browser is sent to the provider's authorization page (authorization-code
//! flow with PKCE, a random `state` bound to an HttpOnly cookie). The callback
//! (`redirect_uri`, a path under `app_url`) checks the `state`, exchanges the code, reads the
//! user from `user_info_url` and sets a signed (HS256 JWT) HttpOnly session cookie, `Secure`
//! when `app_url` is https; `/logout` clears it. The keys are FrameX's: `provider`,
//! `client_id`, `client_secret`, `base_url` (from which `authorization_url`, `token_url` and
//! `user_info_url` default to `/oauth/authorize`, `/oauth/token` and `/api/v4/user`, GitLab's
//! paths), `redirect_uri`, `app_url`, `jwt_secret` (at least 32 bytes; random, so sessions end
//! with the process, when not given) and `jwt_algorithm` (HS256, HS384 or HS512).

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::envelope;
use crate::error::{ApiError, Error, Result};

/// `[auth.oauth]`, with FrameX's keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OauthSettings {
    /// A label for the provider (logs, the session's claims).
    pub provider: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The provider's base URL, from which the three URLs below default.
    pub base_url: String,
    /// Where the browser logs in (`<base_url>/oauth/authorize`).
    pub authorization_url: String,
    /// Where a code is exchanged for a token (`<base_url>/oauth/token`).
    pub token_url: String,
    /// Where the user is read with the token (`<base_url>/api/v4/user`).
    pub user_info_url: String,
    /// The callback's path on the bridge (`/oauth/callback`); registered with the provider as
    /// `<app_url><redirect_uri>`.
    pub redirect_uri: String,
    /// The bridge's public base URL (`https://docs.example.org`); https makes the cookie
    /// `Secure`.
    pub app_url: String,
    /// The session signing secret: at least 32 bytes (random when empty).
    pub jwt_secret: String,
    /// HS256 (default), HS384 or HS512.
    pub jwt_algorithm: String,
    /// How long a session lasts, in seconds (86400).
    pub session_ttl_s: Option<u64>,
}

const SESSION_COOKIE: &str = "sf_session";
const STATE_COOKIE: &str = "sf_oauth_state";
/// How long a login may take between the redirect and the callback.
const STATE_TTL_S: u64 = 600;
/// The logout route.
pub const LOGOUT_PATH: &str = "/logout";

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The configured login.
pub(crate) struct OAuth {
    client: Client,
    http: reqwest::Client,
    provider: String,
    user_info_url: String,
    /// The callback's path.
    pub callback_path: String,
    secure: bool,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("provider", &self.provider)
            .field("callback_path", &self.callback_path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    provider: String,
    iat: u64,
    exp: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateClaims {
    state: String,
    verifier: String,
    back: String,
    exp: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn or_default(given: &str, base: &str, path: &str, key: &str) -> Result<String> {
    if !given.is_empty() {
        return Ok(given.to_owned());
    }
    if base.is_empty() {
        return Err(Error::Config(format!(
            "auth.oauth.{key}: give it, or auth.oauth.base_url to derive it from"
        )));
    }
    Ok(format!("{}{path}", base.trim_end_matches('/')))
}

impl OAuth {
    /// Checks `[auth.oauth]` and builds the client.
    pub fn new(s: &OauthSettings) -> Result<OAuth> {
        let bad = |key: &str, why: String| Error::Config(format!("auth.oauth.{key}: {why}"));
        if s.client_id.is_empty() {
            return Err(bad(
                "client_id",
                "the provider's client id is required".into(),
            ));
        }
        if s.app_url.is_empty() {
            return Err(bad(
                "app_url",
                "the bridge's public base URL is required (the callback is under it)".into(),
            ));
        }
        let app = reqwest::Url::parse(&s.app_url)
            .map_err(|e| bad("app_url", format!("{:?} is not a URL: {e}", s.app_url)))?;
        let secure = app.scheme() == "https";
        let callback_path = if s.redirect_uri.is_empty() {
            "/oauth/callback".to_owned()
        } else if s.redirect_uri.starts_with('/') && !s.redirect_uri.starts_with("//") {
            s.redirect_uri.clone()
        } else {
            return Err(bad(
                "redirect_uri",
                format!(
                    "{:?} must be a path on the bridge (/oauth/callback)",
                    s.redirect_uri
                ),
            ));
        };
        let authorization_url = or_default(
            &s.authorization_url,
            &s.base_url,
            "/oauth/authorize",
            "authorization_url",
        )?;
        let token_url = or_default(&s.token_url, &s.base_url, "/oauth/token", "token_url")?;
        let user_info_url = or_default(
            &s.user_info_url,
            &s.base_url,
            "/api/v4/user",
            "user_info_url",
        )?;
        reqwest::Url::parse(&user_info_url)
            .map_err(|e| bad("user_info_url", format!("{user_info_url:?}: {e}")))?;
        let algorithm = match s.jwt_algorithm.as_str() {
            "" | "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            other => {
                return Err(bad(
                    "jwt_algorithm",
                    format!("{other:?}: one of HS256, HS384, HS512"),
                ))
            }
        };
        let secret: Vec<u8> = if s.jwt_secret.is_empty() {
            tracing::warn!("auth.oauth.jwt_secret is not set: a random one is used, so sessions end when the bridge stops");
            let mut b = vec![0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut b[..]);
            b
        } else if s.jwt_secret.len() < 32 {
            return Err(bad(
                "jwt_secret",
                format!(
                    "must be at least 32 bytes, got {} (it signs the session cookie)",
                    s.jwt_secret.len()
                ),
            ));
        } else {
            s.jwt_secret.as_bytes().to_vec()
        };
        let redirect = format!("{}{callback_path}", s.app_url.trim_end_matches('/'));
        let mut client = BasicClient::new(ClientId::new(s.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(authorization_url.clone())
                    .map_err(|e| bad("authorization_url", format!("{authorization_url:?}: {e}")))?,
            )
            .set_token_uri(
                TokenUrl::new(token_url.clone())
                    .map_err(|e| bad("token_url", format!("{token_url:?}: {e}")))?,
            )
            .set_redirect_uri(
                RedirectUrl::new(redirect.clone())
                    .map_err(|e| bad("redirect_uri", format!("{redirect:?}: {e}")))?,
            )
            .set_auth_type(AuthType::RequestBody);
        if !s.client_secret.is_empty() {
            client = client.set_client_secret(ClientSecret::new(s.client_secret.clone()));
        }
        // The token endpoint must not redirect the code elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Server(format!("cannot build the OAuth HTTP client: {e}")))?;
        Ok(OAuth {
            client,
            http,
            provider: if s.provider.is_empty() {
                "oauth".into()
            } else {
                s.provider.clone()
            },
            user_info_url,
            callback_path,
            secure,
            algorithm,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            ttl: Duration::from_secs(s.session_ttl_s.unwrap_or(86_400).max(60)),
        })
    }

    /// True for the pages the login protects.
    pub fn protects(path: &str) -> bool {
        path == "/docs"
            || path.starts_with("/docs/")
            || path == "/redoc"
            || path == crate::OPENAPI_PATH
    }

    /// The signed-in user, if the request carries a valid session.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let mut v = Validation::new(self.algorithm);
        v.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<SessionClaims>(&token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims.sub)
    }

    /// Lets a protected page through with a session, else sends the browser to log in.
    pub fn guard(&self, req: &Request) -> Option<Response> {
        if !Self::protects(req.uri().path()) || self.session(req.headers()).is_some() {
            return None;
        }
        let back = req
            .uri()
            .path_and_query()
            .map_or("/docs", |pq| pq.as_str())
            .to_owned();
        Some(self.login_redirect(back))
    }

    fn login_redirect(&self, back: String) -> Response {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = self
            .client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge)
            .url();
        let claims = StateClaims {
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            back,
            exp: now() + STATE_TTL_S,
        };
        let token =
            match jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding) {
                Ok(t) => t,
                Err(e) => {
                    return envelope::failure(&ApiError::internal(format!(
                        "cannot sign the login state: {e}"
                    )))
                }
            };
        let mut r = (StatusCode::FOUND, [(header::LOCATION, url.to_string())], "").into_response();
        self.set_cookie(&mut r, STATE_COOKIE, &token, STATE_TTL_S);
        r
    }

    fn set_cookie(&self, r: &mut Response, name: &str, value: &str, max_age: u64) {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
        if self.secure {
            c.push_str("; Secure");
        }
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// The provider's redirect back: checks the state, exchanges the code, reads the user,
    /// sets the session cookie and goes back to the page that asked for the login.
    pub async fn callback(&self, query: Option<String>, headers: HeaderMap) -> Response {
        match self.finish_login(query.as_deref(), &headers).await {
            Ok((user, back)) => {
                let claims = SessionClaims {
                    sub: user.clone(),
                    provider: self.provider.clone(),
                    iat: now(),
                    exp: now() + self.ttl.as_secs(),
                };
                let token = match jsonwebtoken::encode(
                    &Header::new(self.algorithm),
                    &claims,
                    &self.encoding,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        return envelope::failure(&ApiError::internal(format!(
                            "cannot sign the session: {e}"
                        )))
                    }
                };
                tracing::info!(provider = %self.provider, %user, "signed in to the docs");
                let mut r = (StatusCode::FOUND, [(header::LOCATION, back)], "").into_response();
                self.set_cookie(&mut r, SESSION_COOKIE, &token, self.ttl.as_secs());
                self.set_cookie(&mut r, STATE_COOKIE, "", 0);
                r
            }
            Err(e) => {
                tracing::warn!(provider = %self.provider, "login refused: {}", e.message);
                let mut r = envelope::failure(&e);
                self.set_cookie(&mut r, STATE_COOKIE, "", 0);
                r
            }
        }
    }

    async fn finish_login(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(String, String), ApiError> {
        let query: Vec<(String, String)> = query.map(url_pairs).unwrap_or_default();
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(err) = get("error") {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("the provider refused the login: {err}"),
            ));
        }
        let (Some(code), Some(state)) = (get("code"), get("state")) else {
            return Err(ApiError::bad_request(
                "the callback needs the provider's code and state",
            ));
        };
        let stored = cookie(headers, STATE_COOKIE).ok_or_else(|| {
            ApiError::bad_request(
                "no login in progress in this browser (the state cookie is missing)",
            )
        })?;
        let mut v = Validation::new(self.algorithm);
        v.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<StateClaims>(&stored, &self.decoding, &v)
            .map_err(|_| ApiError::bad_request("the login state is invalid or expired"))?
            .claims;
        if !bool::from(claims.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(ApiError::bad_request(
                "the state does not match the login this browser started",
            ));
        }
        let token = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(claims.verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %self.provider, "token exchange failed: {e}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the provider {} did not exchange the code", self.provider),
                )
            })?;
        let user: Value = self
            .http
            .get(&self.user_info_url)
            .bearer_auth(token.access_token().secret())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| {
                tracing::warn!(provider = %self.provider, "reading the user failed: {e}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the provider {} did not tell who signed in", self.provider),
                )
            })?
            .json()
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the provider {}'s user is not JSON", self.provider),
                )
            })?;
        let name = [
            "username",
            "preferred_username",
            "login",
            "email",
            "name",
            "sub",
            "id",
        ]
        .iter()
        .find_map(|k| match user.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the provider {}'s user has no name or id", self.provider),
            )
        })?;
        Ok((name, safe_back(&claims.back)))
    }

    /// Clears the session cookie.
    pub fn logout(&self) -> Response {
        let mut r = axum::Json("logged out").into_response();
        self.set_cookie(&mut r, SESSION_COOKIE, "", 0);
        r
    }
}

/// Only a path on this bridge, never another site.
fn safe_back(back: &str) -> String {
    if back.starts_with('/') && !back.starts_with("//") && !back.contains('\\') {
        back.to_owned()
    } else {
        "/docs".to_owned()
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{q}").parse().unwrap_or_default(),
    )
    .map(|q| q.0)
    .unwrap_or_default()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(safe_back("/docs/?x=1"), "/docs/?x=1");
        assert_eq!(safe_back("//evil.example/"), "/docs");
        assert_eq!(safe_back("https://evil.example/"), "/docs");
        assert_eq!(safe_back("/\\evil"), "/docs");
    }
}
