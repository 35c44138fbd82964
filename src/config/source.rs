//! `[[source]]`: a ClickHouse table read into a stream. Validated with the
//! rest of the config; every error names its key (`source[0].cursor`).

use std::time::Duration;

use serde::Deserialize;

use super::flow::Delivery;
use super::{key_error, Config, Result};

/// `[[source]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique; names the cursor and lease keys in Redis, and the metrics.
    pub name: String,
    /// `clickhouse`: the only kind so far.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// A named ClickHouse connection (`[clickhouse.remote.<name>]`); unset =
    /// `[clickhouse]`.
    #[serde(default)]
    pub clickhouse: Option<String>,
    /// The table read (`db.table`, or a table of the connection's database).
    pub table: String,
    /// Columns written into each entry, in this order; empty = all columns
    /// but MATERIALIZED / ALIAS ones, in table order.
    #[serde(default)]
    pub columns: Vec<String>,
    /// An SQL condition rows must meet (e.g. a cold-data cutoff).
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// The column pages are ordered by (an insert time, an increasing id).
    pub cursor: String,
    /// Columns that, with `cursor`, identify a row: pages then continue
    /// after the last `(cursor, key…)` read. Empty: a page ends only where
    /// the cursor value changes (rows sharing a value are read together).
    #[serde(default)]
    pub key: Vec<String>,
    /// The stream rows are written to.
    pub to: String,
    /// A named Redis connection for `to` and the source's cursor and lease;
    /// unset = `[redis]`.
    #[serde(default)]
    pub redis: Option<String>,
    /// `once`: read to the end, then go idle; `follow`: poll for new rows.
    #[serde(default)]
    pub mode: SourceMode,
    /// `follow`: the pause after a short page before asking again.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// Rows per query.
    #[serde(default = "default_page")]
    pub page: usize,
    /// `at_least_once`: XADDs, then the cursor; `exactly_once`: one script
    /// writes a chunk's entries and its cursor together.
    #[serde(default)]
    pub delivery: Delivery,
    /// Cap of `to` (else `[streams."to"].max_len`): the source pauses while
    /// the stream is full.
    #[serde(default)]
    pub max_len: Option<u64>,
    /// How often a paused source re-reads the stream's length.
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
    /// Only the replica holding this lease runs the source; it renews it
    /// every third of it, and another replica takes over once it expires.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Stream for rows that cannot be written as entries (with the reason);
    /// default `{to}:dead`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Upper bound on one page query.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Clickhouse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    /// A backfill: read everything the query matches, then stop.
    #[default]
    Once,
    /// Keep polling for rows past the cursor.
    Follow,
}

impl SourceConfig {
    pub fn dead_letter_stream(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}:dead", self.to))
    }
}

/// Most rows one page may ask for.
pub const MAX_PAGE: usize = 1_000_000;

fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_page() -> usize {
    10_000
}
fn default_check_every() -> Duration {
    Duration::from_millis(200)
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Checks every `[[source]]` of `config`.
pub(crate) fn validate(config: &Config) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, s) in config.sources.iter().enumerate() {
        let key = |k: &str| format!("source[{i}].{k}");
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 200
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(key_error(
                &key("name"),
                "1-200 characters of [A-Za-z0-9_.-] (it names Redis keys)",
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err(key_error(
                &key("name"),
                format!("duplicate source name {:?}", s.name),
            ));
        }
        config.check_clickhouse_ref(&key("clickhouse"), s.clickhouse.as_deref())?;
        config.check_redis_ref(&key("redis"), s.redis.as_deref())?;
        for (k, v) in [("table", &s.table), ("cursor", &s.cursor), ("to", &s.to)] {
            if v.is_empty() {
                return Err(key_error(&key(k), "must not be empty"));
            }
        }
        if s.dead_letter_stream() == s.to {
            return Err(key_error(&key("dead_letter"), "must differ from `to`"));
        }
        let mut seen = std::collections::HashSet::new();
        for c in s.columns.iter().chain(s.key.iter()) {
            if c.is_empty() {
                return Err(key_error(&key("columns"), "column names must not be empty"));
            }
        }
        for c in &s.columns {
            if !seen.insert(c) {
                return Err(key_error(
                    &key("columns"),
                    format!("column {c:?} listed twice"),
                ));
            }
        }
        if s.key.contains(&s.cursor) {
            return Err(key_error(&key("key"), "must not repeat the cursor column"));
        }
        if s.page == 0 || s.page > MAX_PAGE {
            return Err(key_error(
                &key("page"),
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        if s.poll.is_zero() {
            return Err(key_error(&key("poll"), "must be > 0"));
        }
        if s.check_every.is_zero() {
            return Err(key_error(&key("check_every"), "must be > 0"));
        }
        if s.lease < Duration::from_secs(1) {
            return Err(key_error(&key("lease"), "must be at least 1s"));
        }
        if s.query_timeout.is_zero() {
            return Err(key_error(&key("query_timeout"), "must be > 0"));
        }
        if s.max_len == Some(0) {
            return Err(key_error(&key("max_len"), "must be >= 1"));
        }
        let sharded = config.streams.get(&s.to).is_some_and(|st| st.shards > 1);
        if sharded && s.delivery == Delivery::ExactlyOnce {
            // One script writes the entries and the cursor: one slot.
            return Err(key_error(
                &key("delivery"),
                "exactly_once needs an unsharded target stream (the entries and the cursor are written by one script)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[clickhouse]
url = "http://127.0.0.1:8123"
[clickhouse.remote.hot]
url = "http://10.0.0.5:8123"
[[source]]
name = "cold"
type = "clickhouse"
clickhouse = "hot"
table = "logs.events"
where = "ts < toDateTime('2024-01-01 00:00:00')"
cursor = "ts"
key = ["id"]
to = "events.cold"
mode = "once"
delivery = "exactly_once"
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::from_toml_with_env(text, "test.toml", std::iter::empty())
    }

    fn err(from: &str, to: &str) -> String {
        let text = BASE.replace(from, to);
        assert_ne!(text, BASE, "{from:?} did not apply");
        parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn example_parses_with_defaults() {
        let c = parse(BASE).unwrap();
        let s = &c.sources[0];
        assert_eq!(s.kind, SourceKind::Clickhouse);
        assert_eq!(s.mode, SourceMode::Once);
        assert_eq!(s.page, 10_000);
        assert_eq!(s.lease, Duration::from_secs(30));
        assert_eq!(s.dead_letter_stream(), "events.cold:dead");
        assert_eq!(
            s.filter.as_deref(),
            Some("ts < toDateTime('2024-01-01 00:00:00')")
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err("clickhouse = \"hot\"", "clickhouse = \"cold\"").contains("source[0].clickhouse")
        );
        assert!(err(
            "to = \"events.cold\"",
            "to = \"events.cold\"\nredis = \"x\""
        )
        .contains("source[0].redis"));
        assert!(err("cursor = \"ts\"", "cursor = \"\"").contains("source[0].cursor"));
        assert!(err("key = [\"id\"]", "key = [\"ts\"]").contains("source[0].key"));
        assert!(err("mode = \"once\"", "mode = \"sometimes\"").contains("source[0].mode"));
        assert!(err("mode = \"once\"", "page = 0").contains("source[0].page"));
        assert!(err("mode = \"once\"", "lease = \"10ms\"").contains("source[0].lease"));
        assert!(err("name = \"cold\"", "name = \"a b\"").contains("source[0].name"));
        assert!(err("mode = \"once\"", "colums = [\"a\"]").contains("colums"));
        let sharded = BASE.to_string() + "[streams.\"events.cold\"]\nshards = 2\n";
        let e = parse(&sharded).unwrap_err().to_string();
        assert!(e.contains("source[0].delivery"), "{e}");
        parse(&sharded.replace("delivery = \"exactly_once\"", "")).unwrap();
    }
}
