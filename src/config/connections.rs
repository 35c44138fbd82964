//! Named connections (the config half: sections, names, references): besides the default `[redis]` and `[clickhouse]`,
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

use super::clickhouse::ClickHouseConfig;
use super::redis::RedisConfig;
use super::sink::SinkConfig;
use super::{key_error, Config, ConfigError, Result};

/// The name that stands for the default `[redis]` / `[clickhouse]`.
pub const DEFAULT: &str = "default";

/// The `connection` label of an optional name.
pub fn label(name: Option<&str>) -> &str {
    name.unwrap_or(DEFAULT)
}

/// `None` for the default connection, whether unset or spelled `"default"`.
fn named(name: Option<&str>) -> Option<&str> {
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
    pub(super) fn take_remotes(&mut self) -> Result<()> {
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
            redis.validate(&format!("redis.remote.{name}"))?;
        }
        for (name, ch) in &self.clickhouse_remote {
            check_name("clickhouse", name)?;
            ch.validate()?;
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

/// A sink's kind and its connection's name.
pub fn sink_connection(sink: &SinkConfig) -> (&'static str, &str) {
    match sink {
        SinkConfig::Stream(s) => ("stream", label(s.redis.as_deref())),
        SinkConfig::Clickhouse { clickhouse, .. } => ("clickhouse", label(clickhouse.as_deref())),
    }
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
