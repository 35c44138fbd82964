//! A flow's `handler`: the processing step between its source and its sink
//! (exec, http or rust), and the checks of it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{key_error, Result};

/// `handler = { type = "exec" | "http" | "rust", … }`: the processing step
/// between a flow's source and its sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HandlerConfig {
    /// Long-running child processes speaking JSON lines on stdin/stdout.
    Exec(ExecHandlerConfig),
    /// POST each message as JSON to a URL.
    Http(HttpHandlerConfig),
    /// A Rust `Handler` registered by name by the program embedding sluice.
    Rust(RustHandlerConfig),
}

impl HandlerConfig {
    /// Messages handled at once by this flow.
    pub fn concurrency(&self) -> usize {
        match self {
            HandlerConfig::Exec(e) => e.workers,
            HandlerConfig::Http(h) => h.concurrency,
            HandlerConfig::Rust(r) => r.concurrency,
        }
    }

    /// Upper bound for handling one message.
    pub fn timeout(&self) -> Duration {
        match self {
            HandlerConfig::Exec(e) => e.timeout,
            HandlerConfig::Http(h) => h.timeout,
            HandlerConfig::Rust(r) => r.timeout,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecHandlerConfig {
    /// Program and arguments, e.g. `["python3", "handler.py"]`.
    pub command: Vec<String>,
    /// Child processes in the pool (= messages handled at once).
    #[serde(default = "default_exec_workers")]
    pub workers: usize,
    /// Per message; a child that does not answer in time is killed and restarted.
    #[serde(default = "default_handler_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra environment variables for the children.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the children (default: the worker's).
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHandlerConfig {
    /// `http://host:port/path`.
    pub url: String,
    #[serde(default = "default_http_handler_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight at once.
    #[serde(default = "default_handler_concurrency")]
    pub concurrency: usize,
    /// Extra request headers, e.g. `{ authorization = "Bearer …" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustHandlerConfig {
    /// The name the embedding program registered its handler under.
    pub name: String,
    #[serde(default = "default_handler_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_handler_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl HandlerConfig {
    /// Checks the handler of `flow` (`key`: `flow[i].handler`).
    /// Checks the handler of a flow (`key`: `flow[i].handler`) that
    /// delivers exactly once or not and claims after `claim_min_idle`.
    pub(crate) fn validate(
        &self,
        key: &str,
        exactly_once: bool,
        claim_min_idle: Duration,
    ) -> Result<()> {
        let handler = self;
        let field = |k: &str| format!("{key}.{k}");
        if exactly_once {
            // Recovery re-inserts a batch from its source entries; a handler's
            // outputs are not in the source stream.
            return Err(key_error(
                key,
                "cannot be combined with delivery = \"exactly_once\"",
            ));
        }
        match handler {
            HandlerConfig::Exec(e) => {
                if e.command.is_empty() || e.command[0].is_empty() {
                    return Err(key_error(&field("command"), "must name a program"));
                }
                if e.workers == 0 {
                    return Err(key_error(&field("workers"), "must be >= 1"));
                }
            }
            HandlerConfig::Http(h) => {
                if h.url.starts_with("https://") {
                    return Err(key_error(
                    &field("url"),
                    "https is not supported by the http handler; use http:// (e.g. through a local proxy)",
                ));
                }
                if !h.url.starts_with("http://") || h.url.parse::<axum::http::Uri>().is_err() {
                    return Err(key_error(&field("url"), "must be an http:// URL"));
                }
                if h.concurrency == 0 {
                    return Err(key_error(&field("concurrency"), "must be >= 1"));
                }
                for (name, value) in &h.headers {
                    if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || axum::http::HeaderValue::from_str(value).is_err()
                    {
                        return Err(key_error(
                            &field("headers"),
                            format!("invalid header {name:?}"),
                        ));
                    }
                }
            }
            HandlerConfig::Rust(r) => {
                if r.name.is_empty() {
                    return Err(key_error(&field("name"), "must not be empty"));
                }
                if r.concurrency == 0 {
                    return Err(key_error(&field("concurrency"), "must be >= 1"));
                }
            }
        }
        let timeout = handler.timeout();
        if timeout.is_zero() {
            return Err(key_error(&field("timeout"), "must be > 0"));
        }
        // A message still being handled when min_idle passes could be claimed
        // and handled twice.
        if timeout >= claim_min_idle {
            return Err(key_error(
                &field("timeout"),
                format!("must be shorter than claim.min_idle ({:?})", claim_min_idle),
            ));
        }
        Ok(())
    }
}

fn default_exec_workers() -> usize {
    1
}
fn default_handler_concurrency() -> usize {
    8
}
fn default_handler_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_http_handler_timeout() -> Duration {
    Duration::from_secs(10)
}
