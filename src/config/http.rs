//! `[http]`: the HTTP entry (listen address, limits, bearer tokens), and
//! the checks of it.

use std::collections::HashSet;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{key_error, Result};

/// `[http]`: the HTTP entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// Largest request body; larger ones get 413.
    #[serde(default = "default_body_limit")]
    pub body_limit: ByteSize,
    /// Most items in one request; more get 413.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Length cap of streams without `[streams."name"].max_len`; a request
    /// that would pass it gets 429. Unset = no cap.
    #[serde(default)]
    pub max_len: Option<u64>,
    /// The `Retry-After` sent with 429 and 503.
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    /// Bearer tokens, each limited to a list of streams.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Accept requests without a token (only when `tokens` is empty).
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    /// Stream names this token may write and read; `prefix*` matches by prefix.
    pub streams: Vec<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"***")
            .field("streams", &self.streams)
            .finish()
    }
}

impl HttpConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let http = self;
        if http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(key_error(
                "http.listen",
                "must be host:port, e.g. 0.0.0.0:8080",
            ));
        }
        if http.body_limit.as_u64() == 0 {
            return Err(key_error("http.body_limit", "must be > 0"));
        }
        if http.max_items == 0 {
            return Err(key_error("http.max_items", "must be > 0"));
        }
        if http.max_len == Some(0) {
            return Err(key_error("http.max_len", "must be >= 1"));
        }
        if http.tokens.is_empty() && !http.allow_unauthenticated {
            return Err(key_error(
                "http.tokens",
                "needs at least one token (or allow_unauthenticated = true)",
            ));
        }
        if !http.tokens.is_empty() && http.allow_unauthenticated {
            return Err(key_error(
                "http.allow_unauthenticated",
                "cannot be combined with tokens",
            ));
        }
        let mut seen = HashSet::new();
        for (i, t) in http.tokens.iter().enumerate() {
            let k = format!("http.tokens[{i}]");
            if t.token.len() < 16 {
                return Err(key_error(
                    &format!("{k}.token"),
                    "must be at least 16 characters",
                ));
            }
            if t.token.len() > 512 || t.token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(key_error(
                    &format!("{k}.token"),
                    "must be at most 512 visible ASCII characters",
                ));
            }
            if !seen.insert(t.token.as_str()) {
                return Err(key_error(&format!("{k}.token"), "is listed twice"));
            }
            if t.streams.is_empty() || t.streams.iter().any(|s| s.is_empty()) {
                return Err(key_error(
                    &format!("{k}.streams"),
                    "must list stream names or `prefix*` patterns",
                ));
            }
        }
        Ok(())
    }
}

fn default_body_limit() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_items() -> usize {
    10_000
}
fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}
