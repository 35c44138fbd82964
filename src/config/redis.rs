//! `[redis]` and each `[redis.remote.<name>]`: how to reach a Redis server
//! or cluster, and the checks of its URL and seed nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::redact_url;
use super::{key_error, Result};

/// Secrets (`password`, the URL's password) never appear in its `Debug`
/// output: see [`redact_url`].
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// ACL user name; overrides the URL's.
    #[serde(default)]
    pub username: Option<String>,
    /// Overrides the URL's password. Prefer `password_file` or the
    /// `SLUICE_REDIS__PASSWORD` variable to a password in the file.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (one trailing newline is dropped), e.g. a
    /// mounted secret; read at start-up into `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Timeout for every non-blocking command.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Redis Cluster: `url` is one seed node and the client discovers the
    /// others (MOVED/ASK and failover are followed by the client). Also on
    /// when `url` is `redis-cluster://…` or `nodes` is set.
    #[serde(default)]
    pub cluster: bool,
    /// More cluster seed nodes, `host:port`, tried when `url`'s is down.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Named connections to other Redis servers (`[redis.remote.<name>]`,
    /// same keys); moved to [`super::Config::redis_remote`] at load.
    #[serde(default)]
    pub remote: BTreeMap<String, RedisConfig>,
}

impl RedisConfig {
    /// A config for `url` with every other key at its default.
    pub fn from_url(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            username: None,
            password: None,
            password_file: None,
            command_timeout: default_redis_timeout(),
            cluster: false,
            nodes: Vec::new(),
            remote: BTreeMap::new(),
        }
    }

    /// Whether to talk to Redis Cluster (see [`RedisConfig::cluster`]).
    pub fn is_cluster(&self) -> bool {
        self.cluster
            || !self.nodes.is_empty()
            || self.url.starts_with("redis-cluster://")
            || self.url.starts_with("rediss-cluster://")
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("command_timeout", &self.command_timeout)
            .field("cluster", &self.cluster)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl RedisConfig {
    /// `url` and `nodes` of the section `section` (`redis` or
    /// `redis.remote.<name>`).
    pub(crate) fn validate(&self, section: &str) -> Result<()> {
        let schemes = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
        ];
        if !schemes.iter().any(|s| self.url.starts_with(s)) {
            return Err(key_error(
                &format!("{section}.url"),
                "must start with redis://, rediss://, redis-cluster:// or rediss-cluster://",
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let port = node.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(_))) if !h.is_empty()) {
                return Err(key_error(
                    &format!("{section}.nodes[{i}]"),
                    "must be host:port",
                ));
            }
        }
        Ok(())
    }
}

fn default_redis_timeout() -> Duration {
    Duration::from_secs(10)
}
