//! Configuration: a TOML file, then `SLUICE_…` environment overrides, then
//! validation. Every error names the key it is about.
//!
//! Environment overrides address keys by path with `__` between segments and
//! array indexes as numbers: `SLUICE_REDIS__URL`, `SLUICE_CLICKHOUSE__PASSWORD`,
//! `SLUICE_FLOW__0__BATCH__MAX_ROWS=1000`. A value is read as a TOML literal
//! when it parses as one (`1000`, `true`, `["a","b"]`), else as a string.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SLUICE_";

/// `SLUICE_…` variables that are not config keys.
const NOT_CONFIG: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_LOG_FORMAT",
    "SLUICE_TEST_",
    "SLUICE_DEMO_",
    "SLUICE_BENCH_",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole configuration of one worker process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub redis: RedisConfig,
    #[serde(default)]
    pub clickhouse: Option<ClickHouseConfig>,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default, rename = "flow")]
    pub flows: Vec<FlowConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Timeout for every non-blocking command.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// LZ4-compress insert bodies (ClickHouse's own block compression).
    #[serde(default = "yes")]
    pub compression: bool,
    /// Upper bound for one insert, from first byte sent to the server's answer.
    #[serde(default = "default_insert_timeout", with = "humantime_serde")]
    pub insert_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer name prefix; the full name is `{prefix}-{pid}-{random}`.
    /// Defaults to the host name.
    #[serde(default)]
    pub consumer_prefix: Option<String>,
    /// On SIGTERM/SIGINT: time allowed to finish and ack the batch in hand.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Longest single XREADGROUP BLOCK; bounds how long shutdown waits for a read.
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// Consumers idle this long with nothing pending are deleted from their group.
    #[serde(default = "default_prune_idle", with = "humantime_serde")]
    pub prune_idle: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            consumer_prefix: None,
            shutdown_timeout: default_shutdown_timeout(),
            block: default_block(),
            prune_idle: default_prune_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`; unset = no metrics endpoint, and no
    /// metrics recorded at all (the hot path skips them).
    #[serde(default)]
    pub listen: Option<String>,
    /// How often the replica holding the sampler lease reads every stream's
    /// length, lag, pending and consumers from Redis into the gauges.
    #[serde(default = "default_sample_every", with = "humantime_serde")]
    pub sample_every: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            sample_every: default_sample_every(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub name: String,
    /// One or more streams (shards) read by this flow.
    pub streams: Vec<String>,
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a new group starts reading when this worker creates it: `0`
    /// (everything already in the stream) or `$` (only new entries).
    #[serde(default = "default_start_id")]
    pub start_id: String,
    pub sink: SinkConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub claim: ClaimConfig,
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u64,
    /// Dead-letter stream; defaults to `{first stream}:dead`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    #[serde(default)]
    pub on_success: OnSuccess,
    /// Entries per XREADGROUP call.
    #[serde(default = "default_read_count")]
    pub read_count: usize,
    #[serde(default)]
    pub metadata: MetadataColumns,
    #[serde(default)]
    pub payload: Option<PayloadConfig>,
}

impl FlowConfig {
    pub fn dead_letter_stream(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}:dead", self.streams[0]))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Clickhouse { table: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_wait: default_max_wait(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConfig {
    /// Entries pending longer than this are taken over from their consumer.
    #[serde(default = "default_min_idle", with = "humantime_serde")]
    pub min_idle: Duration,
    /// How often the claim loop runs.
    #[serde(default = "default_claim_every", with = "humantime_serde")]
    pub every: Duration,
}

impl Default for ClaimConfig {
    fn default() -> Self {
        ClaimConfig {
            min_idle: default_min_idle(),
            every: default_claim_every(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSuccess {
    /// XACK only; the stream keeps the entry (trim it with MAXLEN on XADD).
    #[default]
    Ack,
    /// XACK then XDEL, as the original s2ch did.
    AckDel,
}

/// Column names that receive per-message metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataColumns {
    /// The entry id, e.g. `1700000000000-0`.
    pub id: Option<String>,
    /// The stream the entry was read from.
    pub stream: Option<String>,
    /// Enqueue time: the milliseconds part of the id.
    pub enqueued_at: Option<String>,
    /// How many times the entry has been delivered (1 on first read).
    pub deliveries: Option<String>,
}

impl MetadataColumns {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [&self.id, &self.stream, &self.enqueued_at, &self.deliveries]
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// The field holding the encoded object; its keys become columns.
    pub field: String,
    pub format: PayloadFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    Json,
    Msgpack,
}

fn yes() -> bool {
    true
}
fn default_redis_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_database() -> String {
    "default".into()
}
fn default_user() -> String {
    "default".into()
}
fn default_insert_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_block() -> Duration {
    Duration::from_millis(500)
}
fn default_prune_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_sample_every() -> Duration {
    Duration::from_secs(5)
}
fn default_group() -> String {
    "sluice".into()
}
fn default_start_id() -> String {
    "0".into()
}
fn default_max_deliveries() -> u64 {
    5
}
fn default_read_count() -> usize {
    5000
}
fn default_max_rows() -> usize {
    50_000
}
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(16)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_min_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_claim_every() -> Duration {
    Duration::from_secs(5)
}

impl Config {
    /// Reads `path`, applies `SLUICE_…` overrides from the process environment
    /// and validates the result.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text`, applies the given environment (only `SLUICE_…` variables
    /// are looked at) and validates.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut doc: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with(ENV_PREFIX) && !NOT_CONFIG.iter().any(|p| k.starts_with(p))
            })
            .collect();
        for (var, value) in &overrides {
            apply_env_override(&mut doc, var, parse_env_value(value))?;
        }
        loop {
            let err = match serde_path_to_error::deserialize::<_, Config>(doc.clone()) {
                Ok(config) => {
                    config.validate()?;
                    return Ok(config);
                }
                Err(err) => err,
            };
            let key = err.path().to_string();
            // `SLUICE_CLICKHOUSE__PASSWORD=123` reads as a number; where the key
            // wants a string, take the variable's text as it is and try again.
            let retry_as_string = overrides
                .iter()
                .find(|(var, raw)| {
                    env_key_path(var) == key
                        && !matches!(parse_env_value(raw), toml::Value::String(_))
                })
                .map(|(var, raw)| (var.clone(), raw.clone()));
            match retry_as_string {
                Some((var, raw)) => {
                    apply_env_override(&mut doc, &var, toml::Value::String(raw))?;
                    overrides.remove(&var); // at most one retry per variable
                }
                None => {
                    return Err(ConfigError::Key {
                        key: if key == "." {
                            "(top level)".into()
                        } else {
                            key
                        },
                        message: err.into_inner().to_string(),
                    })
                }
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: String, message: &str| ConfigError::Key {
            key,
            message: message.to_string(),
        };
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return Err(bad(
                "redis.url".into(),
                "must start with redis:// or rediss://",
            ));
        }
        if let Some(ch) = &self.clickhouse {
            if !ch.url.starts_with("http://") && !ch.url.starts_with("https://") {
                return Err(bad(
                    "clickhouse.url".into(),
                    "must start with http:// or https://",
                ));
            }
        }
        if self.worker.block.is_zero() {
            return Err(bad(
                "worker.block".into(),
                "must be > 0 (0 would block forever)",
            ));
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(
                    "metrics.listen".into(),
                    "must be host:port, e.g. 0.0.0.0:9464",
                ));
            }
        }
        if self.metrics.sample_every < Duration::from_millis(100) {
            return Err(bad("metrics.sample_every".into(), "must be at least 100ms"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, flow) in self.flows.iter().enumerate() {
            let key = |k: &str| format!("flow[{i}].{k}");
            if flow.name.is_empty() {
                return Err(bad(key("name"), "must not be empty"));
            }
            if !names.insert(flow.name.as_str()) {
                return Err(bad(
                    key("name"),
                    &format!("duplicate flow name {:?}", flow.name),
                ));
            }
            if flow.streams.is_empty() {
                return Err(bad(key("streams"), "needs at least one stream"));
            }
            if let Some(s) = flow.streams.iter().find(|s| s.is_empty()) {
                return Err(bad(key("streams"), &format!("empty stream name {s:?}")));
            }
            if flow.group.is_empty() {
                return Err(bad(key("group"), "must not be empty"));
            }
            if flow.start_id != "0" && flow.start_id != "$" {
                return Err(bad(key("start_id"), "must be \"0\" or \"$\""));
            }
            if flow.batch.max_rows == 0 {
                return Err(bad(key("batch.max_rows"), "must be > 0"));
            }
            if flow.batch.max_bytes.as_u64() == 0 {
                return Err(bad(key("batch.max_bytes"), "must be > 0"));
            }
            if flow.read_count == 0 {
                return Err(bad(key("read_count"), "must be > 0"));
            }
            if flow.max_deliveries == 0 {
                return Err(bad(key("max_deliveries"), "must be >= 1"));
            }
            if flow.claim.every.is_zero() {
                return Err(bad(key("claim.every"), "must be > 0"));
            }
            if flow.streams.contains(&flow.dead_letter_stream()) {
                return Err(bad(
                    key("dead_letter"),
                    "must differ from the flow's own streams",
                ));
            }
            match &flow.sink {
                SinkConfig::Clickhouse { table } => {
                    if self.clickhouse.is_none() {
                        return Err(bad(
                            key("sink"),
                            "a clickhouse sink needs a [clickhouse] section",
                        ));
                    }
                    if table.is_empty() {
                        return Err(bad(key("sink.table"), "must not be empty"));
                    }
                }
            }
            let mut seen = std::collections::HashSet::new();
            for column in flow.metadata.names() {
                if column.is_empty() || !seen.insert(column) {
                    return Err(bad(
                        key("metadata"),
                        &format!("column {column:?} is empty or used twice"),
                    ));
                }
            }
            if let Some(p) = &flow.payload {
                if p.field.is_empty() {
                    return Err(bad(key("payload.field"), "must not be empty"));
                }
            }
        }
        Ok(())
    }
}

/// Sets the key addressed by `SLUICE_A__B__0__C` inside `doc`, creating
/// tables on the way; array indexes must already exist.
fn apply_env_override(doc: &mut toml::Value, var: &str, value: toml::Value) -> Result<()> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_err("empty path segment (use `__` between keys)".into()));
    }
    let mut node = doc;
    for (depth, segment) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        node = match node {
            toml::Value::Table(table) => {
                if last {
                    table.insert(segment.clone(), value);
                    return Ok(());
                }
                table
                    .entry(segment.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(items) => {
                let index: usize = segment
                    .parse()
                    .map_err(|_| env_err(format!("`{segment}` must be an array index here")))?;
                let len = items.len();
                let slot = items.get_mut(index).ok_or_else(|| {
                    env_err(format!("index {index} is out of range (array has {len})"))
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => {
                return Err(env_err(format!(
                    "`{}` is not a table or array",
                    path[..depth].join(".")
                )))
            }
        };
    }
    Ok(())
}

/// The key path of an override as serde_path_to_error prints it:
/// `SLUICE_FLOW__0__BATCH__MAX_ROWS` → `flow[0].batch.max_rows`.
fn env_key_path(var: &str) -> String {
    let mut out = String::new();
    for segment in var[ENV_PREFIX.len()..].split("__") {
        let segment = segment.to_ascii_lowercase();
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML assignment; fall back to a string.
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[clickhouse]
url = "http://127.0.0.1:8123"
database = "default"
user = "default"
password = ""
[[flow]]
name = "events"
streams = ["events"]            # one or more (shards)
group = "sluice"
sink = { type = "clickhouse", table = "events" }
batch = { max_rows = 50000, max_bytes = "16MiB", max_wait = "1s" }
claim = { min_idle = "60s", every = "5s" }
max_deliveries = 5
dead_letter = "events:dead"
on_success = "ack"              # or "ack_del": XACK then XDEL, as the original did
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        Config::from_toml_with_env(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn readme_example_parses() {
        let c = parse(EXAMPLE, &[]).unwrap();
        let f = &c.flows[0];
        assert_eq!(f.batch.max_rows, 50_000);
        assert_eq!(f.batch.max_bytes, ByteSize::mib(16));
        assert_eq!(f.batch.max_wait, Duration::from_secs(1));
        assert_eq!(f.claim.min_idle, Duration::from_secs(60));
        assert_eq!(f.dead_letter_stream(), "events:dead");
        assert_eq!(f.on_success, OnSuccess::Ack);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = EXAMPLE.replace("max_deliveries = 5", "max_delivery = 5");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("flow[0]") && err.contains("max_delivery"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_names_nested_key() {
        let text = EXAMPLE.replace("max_wait = \"1s\"", "max_wait = \"soon\"");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("flow[0].batch.max_wait"), "{err}");
    }

    #[test]
    fn env_overrides_nested_and_indexed_keys() {
        let c = parse(
            EXAMPLE,
            &[
                ("SLUICE_REDIS__URL", "redis://10.0.0.1:6380"),
                ("SLUICE_FLOW__0__BATCH__MAX_ROWS", "1000"),
                ("SLUICE_FLOW__0__STREAMS", r#"["a","b"]"#),
                ("SLUICE_CLICKHOUSE__PASSWORD", "123"),
                ("OTHER", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.redis.url, "redis://10.0.0.1:6380");
        assert_eq!(c.flows[0].batch.max_rows, 1000);
        assert_eq!(c.flows[0].streams, vec!["a", "b"]);
        // a numeric-looking password must stay usable as a string
        assert_eq!(c.clickhouse.unwrap().password, "123");
    }

    #[test]
    fn env_override_errors_name_the_variable() {
        let err = parse(EXAMPLE, &[("SLUICE_FLOW__3__NAME", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SLUICE_FLOW__3__NAME") && err.contains("out of range"),
            "{err}"
        );
        let err = parse(EXAMPLE, &[("SLUICE_FLOW__0__BATCH__MAX_ROWS", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("flow[0].batch.max_rows"), "{err}");
    }

    #[test]
    fn validation_names_key() {
        let text = EXAMPLE.replace("max_rows = 50000", "max_rows = 0");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("flow[0].batch.max_rows"), "{err}");
        let text = EXAMPLE.replace("dead_letter = \"events:dead\"", "dead_letter = \"events\"");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("flow[0].dead_letter"), "{err}");
    }

    #[test]
    fn clickhouse_sink_requires_section() {
        let text = EXAMPLE.replace("[clickhouse]", "[unused]");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("unused"), "{err}");
    }
}
