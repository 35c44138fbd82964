//! `[clickhouse]` and each `[clickhouse.remote.<name>]`: one server or a
//! set of endpoints serving the same tables, and the checks of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::redact_url;
use super::{key_error, Result};

/// Secrets (`password`, the URL's password) never appear in its `Debug`
/// output.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// One server's HTTP(S) interface. Exactly one of `url` and `urls`.
    #[serde(default)]
    pub url: String,
    /// Several endpoints serving the same table (replicas, or nodes holding
    /// a Distributed table), used as `endpoints` says; with a sink's
    /// `shard_by`, the shards in order. See docs/CLICKHOUSE_CLUSTER.md.
    #[serde(default)]
    pub urls: Vec<String>,
    /// How inserts pick among `urls`: `failover` (the first healthy one, in
    /// order) or `round_robin` (batches spread over the healthy ones).
    #[serde(default)]
    pub endpoints: EndpointMode,
    /// How often every endpoint is checked (`SELECT version()`); an endpoint
    /// marked down comes back only after such a check passes.
    #[serde(default = "default_health_check_every", with = "humantime_serde")]
    pub health_check_every: Duration,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    /// Prefer `password_file` or `SLUICE_CLICKHOUSE__PASSWORD`.
    #[serde(default)]
    pub password: String,
    /// A file holding the password (one trailing newline is dropped); read
    /// at start-up into `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// LZ4-compress insert bodies (ClickHouse's own block compression).
    #[serde(default = "yes")]
    pub compression: bool,
    /// Upper bound for one insert, from first byte sent to the server's answer.
    #[serde(default = "default_insert_timeout", with = "humantime_serde")]
    pub insert_timeout: Duration,
    /// A batch ClickHouse refuses the same way (same exception code) this
    /// many times in a row is bisected, whatever the code
    /// (`sink::escalation`).
    #[serde(default = "default_bisect_after")]
    pub bisect_after: u32,
    /// How often a running flow re-reads its table's columns (also re-read
    /// at once on an insert error that says they may have changed).
    #[serde(default = "default_schema_refresh", with = "humantime_serde")]
    pub schema_refresh: Duration,
    /// Named connections to other ClickHouse servers
    /// (`[clickhouse.remote.<name>]`, same keys); moved to
    /// [`super::Config::clickhouse_remote`] at load.
    #[serde(default)]
    pub remote: BTreeMap<String, ClickHouseConfig>,
    /// The connection's name (`None`: the default `[clickhouse]`); set at
    /// load, for config keys in messages and the `connection` label.
    #[serde(skip)]
    pub name: Option<String>,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &redact_url(&self.url))
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("endpoints", &self.endpoints)
            .field("health_check_every", &self.health_check_every)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("password_file", &self.password_file)
            .field("compression", &self.compression)
            .field("insert_timeout", &self.insert_timeout)
            .field("bisect_after", &self.bisect_after)
            .field("schema_refresh", &self.schema_refresh)
            .finish()
    }
}

impl ClickHouseConfig {
    /// The endpoint URLs: `urls`, or `url` alone.
    pub fn endpoint_urls(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }

    /// The key the endpoint at `index` came from, for error messages.
    pub fn endpoint_key(&self, index: usize) -> String {
        let section = self.key();
        if self.urls.is_empty() {
            format!("{section}.url")
        } else {
            format!("{section}.urls[{index}]")
        }
    }

    /// The config section: `clickhouse` or `clickhouse.remote.<name>`.
    pub fn key(&self) -> String {
        match &self.name {
            None => "clickhouse".into(),
            Some(name) => format!("clickhouse.remote.{name}"),
        }
    }
}

/// `clickhouse.endpoints`: how inserts choose among several URLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointMode {
    /// The first healthy endpoint in `urls` order takes every insert.
    #[default]
    Failover,
    /// Each batch goes to the next healthy endpoint in turn.
    RoundRobin,
}

impl ClickHouseConfig {
    /// Checks the section (`clickhouse` or `clickhouse.remote.<name>`).
    pub(crate) fn validate(&self) -> Result<()> {
        let ch = self;
        let section = ch.key();
        match (ch.url.is_empty(), ch.urls.is_empty()) {
            (false, false) => {
                return Err(key_error(
                    &format!("{section}.urls"),
                    format!("set either {section}.url or {section}.urls, not both"),
                ))
            }
            (true, true) => {
                return Err(key_error(
                    &format!("{section}.url"),
                    format!("missing: set {section}.url (one server) or {section}.urls (several)"),
                ))
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (i, url) in ch.endpoint_urls().into_iter().enumerate() {
            let key = ch.endpoint_key(i);
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(key_error(&key, "must start with http:// or https://"));
            }
            if !seen.insert(url.trim_end_matches('/')) {
                return Err(key_error(&key, "duplicate endpoint"));
            }
        }
        if ch.health_check_every < Duration::from_millis(100) {
            return Err(key_error(
                &format!("{section}.health_check_every"),
                "must be at least 100ms",
            ));
        }
        if ch.bisect_after == 0 {
            return Err(key_error("clickhouse.bisect_after", "must be at least 1"));
        }
        if ch.schema_refresh < Duration::from_millis(100) {
            return Err(key_error(
                "clickhouse.schema_refresh",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn default_database() -> String {
    "default".into()
}
fn default_user() -> String {
    "default".into()
}
fn default_health_check_every() -> Duration {
    Duration::from_secs(5)
}
fn default_bisect_after() -> u32 {
    3
}
fn default_schema_refresh() -> Duration {
    Duration::from_secs(60)
}
fn default_insert_timeout() -> Duration {
    Duration::from_secs(60)
}
