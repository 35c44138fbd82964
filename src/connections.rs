//! Named connections: besides the default `[redis]` and `[clickhouse]`,
//! any number of `[redis.remote.<name>]` and `[clickhouse.remote.<name>]`
//! sections (same keys as the defaults: cluster, TLS, password files). A
//! stream sink writes to another Redis with `redis = "<name>"`, a
//! ClickHouse sink inserts into another server set with
//! `clickhouse = "<name>"`, a `[[source]]` reads from / writes to them the
//! same way. `"default"` names the default section.
//!
//! At load the named sections are moved out of `redis.remote` /
//! `clickhouse.remote` into [`Config::redis_remote`] /
//! [`Config::clickhouse_remote`] (a `[clickhouse]` that holds only named
//! connections is then no default connection at all), and every reference
//! to a name is checked: an unknown one is refused naming the key.

use std::fmt::Write;

use crate::config::{
    key_error, validate_clickhouse, validate_redis, ClickHouseConfig, Config, ConfigError,
    RedisConfig, Result, SinkConfig,
};
use crate::obs::metrics::Metrics;

/// The name that stands for the default `[redis]` / `[clickhouse]`.
pub const DEFAULT: &str = "default";

/// The `connection` label of an optional name.
pub fn label(name: Option<&str>) -> &str {
    name.unwrap_or(DEFAULT)
}

/// `None` for the default connection, whether unset or spelled `"default"`.
pub(crate) fn named(name: Option<&str>) -> Option<&str> {
    name.filter(|n| *n != DEFAULT)
}

fn check_name(section: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(key_error(
            &format!("{section}.remote.{name}"),
            "a connection name is 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    if name == DEFAULT {
        return Err(key_error(
            &format!("{section}.remote.{name}"),
            "`default` names the [redis] / [clickhouse] section itself; pick another name",
        ));
    }
    Ok(())
}

fn nested(key: String) -> ConfigError {
    key_error(&key, "named connections do not nest")
}

impl Config {
    /// Moves the named sections out of `redis.remote` / `clickhouse.remote`.
    pub(crate) fn take_remotes(&mut self) -> Result<()> {
        self.redis_remote = std::mem::take(&mut self.redis.remote);
        if let Some((name, _)) = self.redis_remote.iter().find(|(_, r)| !r.remote.is_empty()) {
            return Err(nested(format!("redis.remote.{name}.remote")));
        }
        if let Some(ch) = &mut self.clickhouse {
            self.clickhouse_remote = std::mem::take(&mut ch.remote);
            // `[clickhouse.remote.x]` alone makes serde create an empty
            // `[clickhouse]`: that is no default connection.
            if ch.url.is_empty() && ch.urls.is_empty() && !self.clickhouse_remote.is_empty() {
                self.clickhouse = None;
            }
        }
        for (name, ch) in &mut self.clickhouse_remote {
            if !ch.remote.is_empty() {
                return Err(nested(format!("clickhouse.remote.{name}.remote")));
            }
            ch.name = Some(name.clone());
        }
        Ok(())
    }

    /// The Redis connection `name` refers to (None or `"default"`: `[redis]`).
    /// Names are checked at load; an unknown one falls back to the default.
    pub fn redis_for(&self, name: Option<&str>) -> &RedisConfig {
        named(name)
            .and_then(|n| self.redis_remote.get(n))
            .unwrap_or(&self.redis)
    }

    /// The ClickHouse connection `name` refers to, if there is one.
    pub fn clickhouse_for(&self, name: Option<&str>) -> Option<&ClickHouseConfig> {
        match named(name) {
            Some(n) => self.clickhouse_remote.get(n),
            None => self.clickhouse.as_ref(),
        }
    }

    /// Whether `name` is a known Redis connection.
    pub fn has_redis(&self, name: Option<&str>) -> bool {
        named(name).is_none_or(|n| self.redis_remote.contains_key(n))
    }

    /// Checks `key = name` refers to a known Redis connection.
    pub(crate) fn check_redis_ref(&self, key: &str, name: Option<&str>) -> Result<()> {
        if self.has_redis(name) {
            return Ok(());
        }
        let known: Vec<&str> = std::iter::once(DEFAULT)
            .chain(self.redis_remote.keys().map(String::as_str))
            .collect();
        Err(key_error(
            key,
            format!(
                "unknown Redis connection {:?} (known: {}; add a [redis.remote.{}] section)",
                name.unwrap_or_default(),
                known.join(", "),
                name.unwrap_or_default()
            ),
        ))
    }

    /// Checks `key = name` refers to a ClickHouse connection that exists.
    pub(crate) fn check_clickhouse_ref(&self, key: &str, name: Option<&str>) -> Result<()> {
        if self.clickhouse_for(name).is_some() {
            return Ok(());
        }
        let message = match named(name) {
            None => "needs a [clickhouse] section".to_string(),
            Some(n) => {
                let mut known: Vec<&str> =
                    self.clickhouse_remote.keys().map(String::as_str).collect();
                if self.clickhouse.is_some() {
                    known.insert(0, DEFAULT);
                }
                format!(
                    "unknown ClickHouse connection {n:?} (known: {}; add a [clickhouse.remote.{n}] section)",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )
            }
        };
        Err(key_error(key, message))
    }

    /// The named sections themselves and the flows' references to them.
    pub(crate) fn validate_connections(&self) -> Result<()> {
        for (name, redis) in &self.redis_remote {
            check_name("redis", name)?;
            validate_redis(&format!("redis.remote.{name}"), redis)?;
        }
        for (name, ch) in &self.clickhouse_remote {
            check_name("clickhouse", name)?;
            validate_clickhouse(ch)?;
        }
        for (i, flow) in self.flows.iter().enumerate() {
            match &flow.sink {
                SinkConfig::Stream(s) => {
                    self.check_redis_ref(&format!("flow[{i}].sink.redis"), s.redis.as_deref())?
                }
                SinkConfig::Clickhouse { clickhouse, .. } => self.check_clickhouse_ref(
                    &format!("flow[{i}].sink.clickhouse"),
                    clickhouse.as_deref(),
                )?,
            }
        }
        Ok(())
    }
}

/// `sluice_flow_sink_info{flow, sink, connection} 1`: which connection each
/// flow writes to, for dashboards to join on `flow`.
pub fn export_info(metrics: &Metrics, config: &Config) {
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "sluice_flow_sink_info",
            "Always 1: the sink kind and the named connection each flow writes to.",
        ),
        &["flow", "sink", "connection"],
    )
    .expect("valid metric");
    // Registered once per process (a second worker run in the same process
    // keeps the first registration's series).
    if metrics.registry.register(Box::new(gauge.clone())).is_err() {
        return;
    }
    for f in &config.flows {
        let (sink, connection) = sink_connection(&f.sink);
        gauge.with_label_values(&[&f.name, sink, connection]).set(1);
    }
}

/// A sink's kind and its connection's name.
pub fn sink_connection(sink: &SinkConfig) -> (&'static str, &str) {
    match sink {
        SinkConfig::Stream(s) => ("stream", label(s.redis.as_deref())),
        SinkConfig::Clickhouse { clickhouse, .. } => ("clickhouse", label(clickhouse.as_deref())),
    }
}

/// One flow's path with its connections, e.g. ``stream `jobs.out` on redis
/// `default` → stream sink on redis `edge` (exactly-once)``.
pub fn describe_flow(config: &Config, flow: &crate::config::FlowConfig) -> String {
    let streams = flow
        .base_streams
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let sink = match &flow.sink {
        SinkConfig::Stream(s) => format!("stream sink on redis `{}`", label(s.redis.as_deref())),
        SinkConfig::Clickhouse {
            table, clickhouse, ..
        } => {
            let db = config
                .clickhouse_for(clickhouse.as_deref())
                .map_or("default", |c| c.database.as_str());
            let (db, table) = crate::sink::clickhouse::split_table(db, table);
            format!(
                "ClickHouse `{}` table `{db}`.`{table}`",
                label(clickhouse.as_deref())
            )
        }
    };
    let delivery = match flow.delivery {
        crate::config::Delivery::AtLeastOnce => "at-least-once",
        crate::config::Delivery::ExactlyOnce => "exactly-once",
    };
    format!("stream {streams} on redis `{DEFAULT}` → {sink} ({delivery})")
}

/// `sluice status`'s table of each flow's sink and connection.
pub fn render_sinks(config: &Config) -> String {
    if config.flows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
{:<16} {:<10} {:<12} TARGET",
        "FLOW", "SINK", "CONNECTION"
    );
    for f in &config.flows {
        let (sink, connection) = sink_connection(&f.sink);
        let target = match &f.sink {
            SinkConfig::Clickhouse { table, .. } => table.clone(),
            SinkConfig::Stream(s) => {
                let mut names: Vec<&str> = Vec::new();
                for t in s.to.iter().chain(s.routes.values()).chain(s.default.iter()) {
                    names.extend(t.0.iter().map(|t| t.stream.as_str()));
                }
                names.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:<12} {target}",
            f.name, sink, connection
        );
    }
    out
}

/// `sluice check`'s lines for the named connections: connects to each
/// Redis (PING + version) and asks each ClickHouse endpoint its version.
/// Err names the first connection that cannot be reached.
pub async fn check_named(config: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    for (name, redis) in &config.redis_remote {
        let client = crate::redis::client::connect(redis)
            .await
            .map_err(|e| anyhow::anyhow!("redis.remote.{name}.url: cannot connect: {e}"))?;
        let version = redis_version(&client).await;
        let kind = if redis.is_cluster() {
            "redis cluster"
        } else {
            "redis"
        };
        writeln!(
            out,
            "{kind} `{name}`: {} (version {version}) ok",
            crate::config::redact_url(&redis.url)
        )?;
    }
    for (name, ch) in &config.clickhouse_remote {
        let endpoints = crate::sink::clickhouse::endpoints::probe(ch).await;
        out.push_str(&endpoint_lines(
            &format!("clickhouse `{name}`"),
            ch,
            &endpoints,
        )?);
    }
    Ok(out)
}

/// `sluice check`'s lines for one ClickHouse connection's endpoints
/// (`label`: `clickhouse`, or ``clickhouse `name` ``). One endpoint down of
/// several is a warning (the others take its inserts); all down is the
/// error.
pub fn endpoint_lines(
    label: &str,
    ch: &ClickHouseConfig,
    endpoints: &[crate::sink::clickhouse::endpoints::EndpointStatus],
) -> anyhow::Result<String> {
    let mut out = String::new();
    let several = endpoints.len() > 1;
    for e in endpoints {
        match (&e.version, &e.error) {
            (Some(v), _) => writeln!(
                out,
                "{label}: {}{} (version {v}) as user `{}` ok",
                if several {
                    format!("{} ", e.key)
                } else {
                    String::new()
                },
                e.endpoint,
                ch.user
            )?,
            (None, error) => writeln!(
                out,
                "{label}: {} {} DOWN: {}",
                e.key,
                e.endpoint,
                error.as_deref().unwrap_or("?")
            )?,
        }
    }
    if !endpoints.iter().any(|e| e.up) {
        let e = &endpoints[0];
        anyhow::bail!(
            "{}: cannot query {}: {}",
            e.key,
            e.endpoint,
            e.error.as_deref().unwrap_or("?")
        );
    }
    Ok(out)
}

/// `redis_version` from INFO server, or `?`.
pub async fn redis_version(client: &fred::prelude::Client) -> String {
    use fred::prelude::*;
    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::from_toml_with_env(text, "test.toml", std::iter::empty())
    }

    const BASE: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[redis.remote.edge]
url = "redis://10.0.0.2:6379"
password = "s3cret"
[redis.remote.ring]
url = "redis://10.0.0.3:7000"
cluster = true
[clickhouse]
url = "http://127.0.0.1:8123"
[clickhouse.remote.archive]
urls = ["http://ch-a:8123", "http://ch-b:8123"]
user = "mover"
[[flow]]
name = "share"
streams = ["jobs.out"]
sink = { type = "stream", redis = "edge", to = "jobs.in" }
[[flow]]
name = "land"
streams = ["events"]
sink = { type = "clickhouse", table = "events", clickhouse = "archive" }
"#;

    #[test]
    fn named_connections_parse_and_resolve() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.redis_for(Some("edge")).url, "redis://10.0.0.2:6379");
        assert_eq!(
            c.redis_for(Some("edge")).password.as_deref(),
            Some("s3cret")
        );
        assert!(c.redis_for(Some("ring")).is_cluster());
        assert_eq!(c.redis_for(None).url, "redis://127.0.0.1:6379");
        assert_eq!(c.redis_for(Some("default")).url, "redis://127.0.0.1:6379");
        assert!(c.redis.remote.is_empty(), "moved to redis_remote");
        let archive = c.clickhouse_for(Some("archive")).unwrap();
        assert_eq!(archive.user, "mover");
        assert_eq!(archive.endpoint_key(1), "clickhouse.remote.archive.urls[1]");
        assert_eq!(
            c.clickhouse_for(None).unwrap().endpoint_key(0),
            "clickhouse.url"
        );
        assert_eq!(sink_connection(&c.flows[0].sink), ("stream", "edge"));
        assert_eq!(sink_connection(&c.flows[1].sink), ("clickhouse", "archive"));
    }

    #[test]
    fn unknown_names_are_refused_naming_the_key() {
        let err = parse(&BASE.replace("redis = \"edge\"", "redis = \"edgy\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flow[0].sink.redis")
                && err.contains("\"edgy\"")
                && err.contains("edge, ring"),
            "{err}"
        );
        let err = parse(&BASE.replace("clickhouse = \"archive\"", "clickhouse = \"arch\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flow[1].sink.clickhouse") && err.contains("\"arch\""),
            "{err}"
        );
    }

    #[test]
    fn named_sections_are_validated_like_the_defaults() {
        let err = parse(&BASE.replace("redis://10.0.0.2:6379", "tcp://x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis.remote.edge.url"), "{err}");
        let err = parse(&BASE.replace("urls = [\"http://ch-a:8123\", \"http://ch-b:8123\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clickhouse.remote.archive.url"), "{err}");
        let err = parse(&BASE.replace("[redis.remote.ring]", "[redis.remote.default]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis.remote.default"), "{err}");
        let err = parse(&BASE.replace(
            "cluster = true",
            "cluster = true\n[redis.remote.ring.remote.x]\nurl = \"redis://y\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("redis.remote.ring.remote") && err.contains("nest"),
            "{err}"
        );
        let err = parse(&BASE.replace(
            "password = \"s3cret\"",
            "password = \"s\"\npassword_file = \"/nonexistent\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis.remote.edge.password_file"), "{err}");
    }

    #[test]
    fn only_named_clickhouse_connections_is_no_default() {
        let text = BASE
            .replace("[clickhouse]\nurl = \"http://127.0.0.1:8123\"\n", "")
            .replace(
                "sink = { type = \"clickhouse\", table = \"events\", clickhouse = \"archive\" }",
                "sink = { type = \"clickhouse\", table = \"events\" }",
            );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("flow[1].sink") && err.contains("[clickhouse]"),
            "{err}"
        );
        let c = parse(&text.replace(
            "table = \"events\" }",
            "table = \"events\", clickhouse = \"archive\" }",
        ))
        .unwrap();
        assert!(c.clickhouse.is_none());
        assert!(c.clickhouse_for(Some("archive")).is_some());
    }

    #[test]
    fn env_overrides_reach_named_connections() {
        let c = Config::from_toml_with_env(
            BASE,
            "t",
            [(
                "SLUICE_CLICKHOUSE__REMOTE__ARCHIVE__PASSWORD".to_string(),
                "123".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(c.clickhouse_for(Some("archive")).unwrap().password, "123");
    }
}
