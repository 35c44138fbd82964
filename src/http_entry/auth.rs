//! Bearer tokens for the HTTP entry: each token is limited to a list of
//! streams (`name`, or `prefix*`), and compared in constant time.

use axum::http::HeaderValue;
use subtle::ConstantTimeEq;

use crate::config::HttpConfig;

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `Authorization: Bearer …` header (401).
    Missing,
    /// A token that is not configured (401).
    Unknown,
    /// A valid token that does not cover this stream (403).
    Forbidden,
}

struct Token {
    secret: Vec<u8>,
    streams: Vec<String>,
}

pub(crate) struct Auth {
    tokens: Vec<Token>,
    open: bool,
}

/// Whether `pattern` (`name` or `prefix*`) covers `stream`.
pub(crate) fn covers(pattern: &str, stream: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => stream.starts_with(prefix),
        None => pattern == stream,
    }
}

impl Auth {
    pub(crate) fn new(cfg: &HttpConfig) -> Auth {
        Auth {
            tokens: cfg
                .tokens
                .iter()
                .map(|t| Token {
                    secret: t.token.as_bytes().to_vec(),
                    streams: t.streams.clone(),
                })
                .collect(),
            open: cfg.allow_unauthenticated,
        }
    }

    /// Checks the `Authorization` header for `stream`.
    pub(crate) fn check(&self, header: Option<&HeaderValue>, stream: &str) -> Result<(), Denied> {
        if self.open {
            return Ok(());
        }
        let presented = header
            .map(HeaderValue::as_bytes)
            .and_then(bearer)
            .ok_or(Denied::Missing)?;
        // Compare with every token, whatever matched before: the time taken
        // does not depend on which token (if any) matches, nor where a
        // wrong token first differs.
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if bool::from(presented.ct_eq(t.secret.as_slice())) {
                found = Some(t);
            }
        }
        let token = found.ok_or(Denied::Unknown)?;
        if token.streams.iter().any(|p| covers(p, stream)) {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub(crate) fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn auth() -> Auth {
        Auth::new(&HttpConfig {
            listen: "127.0.0.1:1".into(),
            body_limit: bytesize::ByteSize::mib(1),
            max_items: 10,
            max_len: None,
            retry_after: std::time::Duration::from_secs(1),
            tokens: vec![
                TokenConfig {
                    token: "aaaaaaaaaaaaaaaa-one".into(),
                    streams: vec!["jobs.in".into(), "events.*".into()],
                },
                TokenConfig {
                    token: "bbbbbbbbbbbbbbbb-two".into(),
                    streams: vec!["other".into()],
                },
            ],
            allow_unauthenticated: false,
        })
    }

    fn h(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn tokens_are_limited_to_their_streams() {
        let a = auth();
        let one = h("Bearer aaaaaaaaaaaaaaaa-one");
        assert_eq!(a.check(Some(&one), "jobs.in"), Ok(()));
        assert_eq!(a.check(Some(&one), "events.click"), Ok(()));
        assert_eq!(a.check(Some(&one), "other"), Err(Denied::Forbidden));
        assert_eq!(
            a.check(Some(&h("bearer bbbbbbbbbbbbbbbb-two")), "other"),
            Ok(())
        );
    }

    #[test]
    fn missing_malformed_and_wrong_tokens() {
        let a = auth();
        assert_eq!(a.check(None, "jobs.in"), Err(Denied::Missing));
        assert_eq!(
            a.check(Some(&h("Basic aaaaaaaaaaaaaaaa-one")), "jobs.in"),
            Err(Denied::Missing)
        );
        assert_eq!(
            a.check(Some(&h("Bearer ")), "jobs.in"),
            Err(Denied::Missing)
        );
        assert_eq!(
            a.check(Some(&h("Bearer aaaaaaaaaaaaaaaa-onf")), "jobs.in"),
            Err(Denied::Unknown)
        );
        assert_eq!(
            a.check(Some(&h("Bearer aaaaaaaaaaaaaaaa-on")), "jobs.in"),
            Err(Denied::Unknown)
        );
    }

    #[test]
    fn prefix_patterns() {
        assert!(covers("events.*", "events."));
        assert!(covers("*", "anything"));
        assert!(!covers("events.*", "event"));
        assert!(!covers("jobs.in", "jobs.in2"));
    }
}
