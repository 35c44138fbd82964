//! Who is asking, and may they: tokens with a role, sign-in sessions,
//! CSRF protection of actions, and the guard every request passes.
//!
//! - A **script** sends `Authorization: Bearer <token>`; no session, no
//!   CSRF token (a browser never adds that header by itself).
//! - A **browser** signs in once through the login form: the token is
//!   exchanged for a random session id in an `HttpOnly; SameSite=Strict`
//!   cookie (the token itself is never stored in the browser). Each session
//!   has its own CSRF token, written into every page; an action (any
//!   request but GET/HEAD) through a session must carry it in the
//!   `X-CSRF-Token` header.
//! - **Without tokens** (loopback only, see the config) everyone is the
//!   operator `local`; a session is made on the first visit so the CSRF
//!   check still applies, and the `Host` header must be a loopback name so
//!   that a DNS-rebinding page cannot talk to the console.
//!
//! Actions need the `operator` role; a viewer gets 403.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::Console;
use crate::config::console::{ConsoleConfig, Role};
use crate::http_entry::auth;

pub(crate) const SESSION_COOKIE: &str = "sluice_session";
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Most sessions held at once; the oldest goes first past this.
const MAX_SESSIONS: usize = 10_000;

/// The name actions are logged under when the console has no tokens.
pub(crate) const OPEN_USER: &str = "local";

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Bearer,
    Session,
}

/// The person or script behind a request (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token (None for bearer requests).
    pub csrf: Option<String>,
    pub via: Via,
}

struct Token {
    name: String,
    secret: Vec<u8>,
    role: Role,
}

struct Session {
    name: String,
    role: Role,
    csrf: String,
    expires: Instant,
}

pub(crate) struct Auth {
    tokens: Vec<Token>,
    ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

impl Auth {
    pub(crate) fn new(cfg: &ConsoleConfig) -> Auth {
        Auth {
            tokens: cfg
                .tokens
                .iter()
                .map(|t| Token {
                    name: t.name.clone(),
                    secret: t.token.as_bytes().to_vec(),
                    role: t.role,
                })
                .collect(),
            ttl: cfg.session_ttl,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// No tokens configured: everyone is the operator `local`.
    pub(crate) fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token's name and role. Compares with every token whatever
    /// matched, so the time taken does not tell which one did.
    pub(crate) fn check_token(&self, presented: &[u8]) -> Option<(String, Role)> {
        let mut found = None;
        for t in &self.tokens {
            if eq(presented, &t.secret) {
                found = Some((t.name.clone(), t.role));
            }
        }
        found
    }

    /// A new session for `name`; returns its id (the cookie value).
    pub(crate) fn start_session(&self, name: &str, role: Role) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                name: name.to_string(),
                role,
                csrf: random_hex(),
                expires: now + self.ttl,
            },
        );
        id
    }

    pub(crate) fn end_session(&self, id: &str) {
        self.sessions().remove(id);
    }

    fn session(&self, id: &str) -> Option<Who> {
        let sessions = self.sessions();
        let s = sessions.get(id).filter(|s| s.expires > Instant::now())?;
        Some(Who {
            name: s.name.clone(),
            role: s.role,
            csrf: Some(s.csrf.clone()),
            via: Via::Session,
        })
    }

    /// Who the headers say this is: Ok(None) when they say nothing,
    /// Err when a bearer token is given and unknown.
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<Option<Who>, &'static str> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let presented = auth::bearer(value.as_bytes())
                .ok_or("malformed Authorization header (expected `Bearer <token>`)")?;
            let (name, role) = self.check_token(presented).ok_or("unknown bearer token")?;
            return Ok(Some(Who {
                name,
                role,
                csrf: None,
                via: Via::Bearer,
            }));
        }
        Ok(session_cookie(headers).and_then(|id| self.session(id)))
    }

    /// The `Set-Cookie` value for a session.
    pub(crate) fn cookie(&self, id: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.ttl.as_secs()
        ))
        .expect("hex id")
    }
}

/// A `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("sluice_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id from the `Cookie` header(s).
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == SESSION_COOKIE && !v.is_empty()).then_some(v)
        })
}

/// Whether the `Host` header names this machine's loopback interface.
pub(crate) fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/")
}

/// Paths anyone may fetch: the sign-in page, the assets, the health check.
fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/") || path == "/healthz"
}

/// Every request passes here: identify, check CSRF and role, and for the
/// open console hand out the session cookie.
pub(crate) async fn guard(
    State(console): State<Arc<Console>>,
    mut req: Request,
    next: Next,
) -> Response {
    let auth = &console.auth;
    let path = req.uri().path().to_string();
    if auth.is_open() && !host_is_loopback(req.headers()) {
        return super::error(
            StatusCode::FORBIDDEN,
            "this console has no tokens: it answers only requests to a loopback host name",
            Some("Host"),
        );
    }
    if is_public(&path) {
        return next.run(req).await;
    }
    let mut new_session = None;
    let who = match auth.identify(req.headers()) {
        Err(why) => return super::error(StatusCode::UNAUTHORIZED, why, Some("Authorization")),
        Ok(Some(who)) => who,
        Ok(None) if auth.is_open() => {
            let id = auth.start_session(OPEN_USER, Role::Operator);
            let who = auth.session_of(&id);
            new_session = Some(id);
            who
        }
        Ok(None) if is_api(&path) => {
            return super::error(
                StatusCode::UNAUTHORIZED,
                "sign in at /login, or send Authorization: Bearer <token>",
                Some("Authorization"),
            )
        }
        Ok(None) => {
            let next_page = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let target = format!("/login?{}", super::params::encode(&[("next", next_page)]));
            return Redirect::to(&target).into_response();
        }
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if who.via == Via::Session {
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            let expected = who.csrf.as_deref().unwrap_or_default().as_bytes();
            if sent.is_empty() || !eq(sent, expected) {
                tracing::warn!(who = %who.name, %path, "console: action refused: missing or wrong CSRF token");
                return super::error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token (send the page's token in the X-CSRF-Token header)",
                    Some("X-CSRF-Token"),
                );
            }
        }
        if who.role != Role::Operator && path != "/logout" {
            tracing::warn!(who = %who.name, %path, "console: action refused: viewer role");
            return super::error(
                StatusCode::FORBIDDEN,
                &format!(
                    "`{}` has the viewer role: actions need an operator token",
                    who.name
                ),
                None,
            );
        }
    }
    req.extensions_mut().insert(who);
    let mut resp = next.run(req).await;
    if let Some(id) = new_session {
        resp.headers_mut()
            .append(header::SET_COOKIE, auth.cookie(&id));
    }
    resp
}

impl Auth {
    /// The `Who` of a session just started.
    fn session_of(&self, id: &str) -> Who {
        self.session(id).expect("session just started")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::console::ConsoleToken;

    fn auth() -> Auth {
        Auth::new(&ConsoleConfig {
            tokens: vec![
                ConsoleToken {
                    name: "ann".into(),
                    token: "viewer-token-0123456789".into(),
                    token_file: None,
                    role: Role::Viewer,
                },
                ConsoleToken {
                    name: "bob".into(),
                    token: "operator-token-0123456789".into(),
                    token_file: None,
                    role: Role::Operator,
                },
            ],
            ..ConsoleConfig::default()
        })
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_carry_name_and_role() {
        let a = auth();
        let who = a
            .identify(&headers(&[(
                header::AUTHORIZATION,
                "Bearer operator-token-0123456789",
            )]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (who.name.as_str(), who.role, who.via),
            ("bob", Role::Operator, Via::Bearer)
        );
        assert!(a
            .identify(&headers(&[(
                header::AUTHORIZATION,
                "Bearer nope-nope-nope-nope"
            )]))
            .is_err());
        assert!(a.identify(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn sessions_have_their_own_csrf_token_and_end() {
        let a = auth();
        let id = a.start_session("ann", Role::Viewer);
        let cookie = format!("other=1; {SESSION_COOKIE}={id}");
        let who = a
            .identify(&headers(&[(header::COOKIE, &cookie)]))
            .unwrap()
            .unwrap();
        assert_eq!((who.name.as_str(), who.via), ("ann", Via::Session));
        let other = a.session_of(&a.start_session("ann", Role::Viewer));
        assert_ne!(who.csrf, other.csrf);
        a.end_session(&id);
        assert!(a
            .identify(&headers(&[(header::COOKIE, &cookie)]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn loopback_host_names() {
        for ok in [
            "127.0.0.1:9400",
            "localhost:9400",
            "[::1]:9400",
            "localhost",
            "127.0.0.2",
        ] {
            assert!(host_is_loopback(&headers(&[(header::HOST, ok)])), "{ok}");
        }
        for bad in [
            "evil.example:9400",
            "10.0.0.1:9400",
            "[::2]:1",
            "localhost.evil.example",
        ] {
            assert!(!host_is_loopback(&headers(&[(header::HOST, bad)])), "{bad}");
        }
        assert!(!host_is_loopback(&HeaderMap::new()));
    }
}
