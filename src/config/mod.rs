//! Configuration: a TOML file, then `SLUICE_…` environment overrides, then
//! validation. Every error names the key it is about.
//!
//! Environment overrides address keys by path with `__` between segments and
//! array indexes as numbers: `SLUICE_REDIS__URL`, `SLUICE_CLICKHOUSE__PASSWORD`,
//! `SLUICE_FLOW__0__BATCH__MAX_ROWS=1000`. A value is read as a TOML literal
//! when it parses as one (`1000`, `true`, `["a","b"]`), else as a string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// The HTTP entry (`POST /v1/streams/{stream}/messages`); off when absent.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Per-stream settings honoured by everything in sluice that writes to
    /// the stream: the HTTP entry, `sluice enqueue` and stream sinks.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamSettings>,
    /// The schedule loop and delayed-job promoter every worker runs.
    #[serde(default)]
    pub scheduler: crate::schedule::SchedulerConfig,
    /// Entries added to streams on a cron / interval / one-off trigger.
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<crate::schedule::ScheduleConfig>,
    /// The operator console (`sluice console`, or inside `sluice run` when
    /// `listen` is set); off when absent.
    #[serde(default)]
    pub console: Option<crate::console::ConsoleConfig>,
    /// `[[source]]`: ClickHouse tables read into streams (`crate::source`).
    #[serde(default, rename = "source")]
    pub sources: Vec<crate::source::config::SourceConfig>,
    /// Named Redis connections, `[redis.remote.<name>]`: taken out of
    /// `redis.remote` at load (see `crate::connections`).
    #[serde(skip)]
    pub redis_remote: BTreeMap<String, RedisConfig>,
    /// Named ClickHouse connections, `[clickhouse.remote.<name>]`.
    #[serde(skip)]
    pub clickhouse_remote: BTreeMap<String, ClickHouseConfig>,
}

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
    /// same keys); moved to [`Config::redis_remote`] at load.
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
    /// [`Config::clickhouse_remote`] at load.
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

/// Hides the password of a `scheme://user:pass@host…` URL, for logs and
/// `sluice check`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last `@` before any query; err towards
    // hiding (a password may hold an unescaped `/`).
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..query].rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{}", &rest[query..]),
            None => url.to_string(), // a user name alone
        },
        None => url.to_string(),
    }
}

/// Reads a secret file: its text, without one trailing newline. Errors
/// name the key and the path, never the content.
fn read_secret(key: &str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
        key: key.to_string(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_string())
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
    /// One or more streams read by this flow. After loading, a stream with
    /// `[streams."name"].shards = N` is replaced by its N shard streams
    /// (`name:{0}` … `name:{N-1}`); the names as written stay in
    /// [`FlowConfig::base_streams`].
    pub streams: Vec<String>,
    /// `streams` as the config file wrote them (before shard expansion).
    #[serde(skip)]
    pub base_streams: Vec<String>,
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
    /// `at_least_once` (default) or `exactly_once` (ClickHouse sinks; needs
    /// `batch_id_column`): see docs/EXACTLY_ONCE.md.
    #[serde(default)]
    pub delivery: Delivery,
    /// Column receiving each row's batch id (String, FixedString(36) or UUID).
    #[serde(default)]
    pub batch_id_column: Option<String>,
    /// How long a batch's ledger record outlives a crash (exactly-once).
    #[serde(default = "default_ledger_ttl", with = "humantime_serde")]
    pub ledger_ttl: Duration,
    /// Entries per XREADGROUP call.
    #[serde(default = "default_read_count")]
    pub read_count: usize,
    /// A message with a field name or value longer than this is
    /// dead-lettered with the reason, before any handler or sink sees it.
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: ByteSize,
    #[serde(default)]
    pub metadata: MetadataColumns,
    #[serde(default)]
    pub payload: Option<PayloadConfig>,
    /// Runs each message through a handler before the sink (exec, http, rust).
    #[serde(default)]
    pub handler: Option<HandlerConfig>,
    /// Retry failed messages later through the delayed set, with backoff
    /// (`{ backoff = "exponential", base = "1s", max = "5m" }`); unset =
    /// retry by redelivery after `claim.min_idle`.
    #[serde(default)]
    pub retry: Option<crate::flow::retry::RetryConfig>,
}

impl FlowConfig {
    /// The dead-letter stream: one per flow, also when its streams are
    /// sharded (`jobs:dead` for `jobs:{0}` … `jobs:{N-1}`).
    pub fn dead_letter_stream(&self) -> String {
        let first = self.base_streams.first().unwrap_or(&self.streams[0]);
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{first}:dead"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Clickhouse {
        table: String,
        /// Per-shard local tables: each row goes to shard
        /// `cityHash64(value of this field) % len(clickhouse.urls)`, the
        /// shards being `clickhouse.urls` in order (no failover between
        /// them). Unset: every endpoint serves the whole table.
        #[serde(default)]
        shard_by: Option<String>,
        /// A named ClickHouse connection (`[clickhouse.remote.<name>]`);
        /// unset = `[clickhouse]`.
        #[serde(default)]
        clickhouse: Option<String>,
        /// Fleet-wide insert budget: at most this many inserts per second
        /// into the table, shared by every replica (and every flow into the
        /// same table) through Redis ([`crate::sink::clickhouse::budget`]). Unset: no
        /// budget.
        #[serde(default)]
        max_inserts_per_second: Option<f64>,
        /// Adaptive batches: how far `batch.max_rows`, `max_bytes` and
        /// `max_wait` may grow while ClickHouse signals pressure
        /// ([`crate::sink::clickhouse::pressure`]). 1 (the default) = off.
        #[serde(default = "default_max_batch_scale")]
        max_batch_scale: f64,
    },
    /// XADD to other streams, then XACK at the source (the original s2s).
    Stream(StreamSinkConfig),
}

/// `sink = { type = "stream", … }`: where each message goes. A message's
/// targets are, in order of precedence: `routes[value of route_by]`, then
/// `to` (a name, or a template such as `"jobs.{task_for}"` whose
/// placeholders name fields), then `default`. A message no rule places is
/// dead-lettered. Any of them may list several targets (fan-out).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSinkConfig {
    #[serde(default)]
    pub to: Option<Targets>,
    /// The field whose value selects an entry of `routes`.
    #[serde(default)]
    pub route_by: Option<String>,
    /// Value of `route_by` → target(s).
    #[serde(default)]
    pub routes: BTreeMap<String, Targets>,
    /// Target(s) for messages no route or template places.
    #[serde(default)]
    pub default: Option<Targets>,
    /// Length cap of every target that has none of its own (a target's
    /// `max_len`, then `[streams."name"].max_len`, win over this). A full
    /// target pauses the flow until it drains below the cap.
    #[serde(default)]
    pub max_len: Option<u64>,
    /// How often a paused flow re-reads the length of a full target.
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
    /// What counts toward a target's `max_len` (see [`Capacity`]).
    #[serde(default)]
    pub capacity: Capacity,
    /// Most templated targets the router remembers; past it, targets no
    /// batch in flight uses are forgotten (and re-resolved when used again).
    #[serde(default = "default_max_targets")]
    pub max_targets: usize,
    /// The targets live on this named Redis (`[redis.remote.<name>]`);
    /// unset = the flow's own `[redis]`. XADDs and the `max_len` checks go
    /// there, acks to the source.
    #[serde(default)]
    pub redis: Option<String>,
}

/// What a stream sink counts against a target's `max_len`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// The entries still to be processed downstream: for the slowest of the
    /// target's consumer groups, its lag plus its pending entries (at most
    /// XLEN; XLEN when Redis cannot tell the lag); XLEN for a target
    /// without a group. A downstream that acks without deleting frees room.
    #[default]
    Lag,
    /// XLEN: room frees only when entries leave the stream (XDEL, trimming).
    Length,
}

impl Capacity {
    pub fn as_str(self) -> &'static str {
        match self {
            Capacity::Lag => "lag",
            Capacity::Length => "length",
        }
    }
}

/// One or more target streams: `"name"`, `{ stream = "name", max_len = N }`,
/// or a list of those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<TargetSpec>);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// A stream name, or a template with `{field}` placeholders.
    pub stream: String,
    #[serde(default)]
    pub max_len: Option<u64>,
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Targets;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a stream name, { stream = \"name\", max_len = N }, or a list of those")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Targets, E> {
                Ok(Targets(vec![TargetSpec {
                    stream: v.to_string(),
                    max_len: None,
                }]))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Targets, A::Error> {
                let t = TargetSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Targets(vec![t]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Targets, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = seq.next_element::<Targets>()? {
                    out.extend(t.0);
                }
                Ok(Targets(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `{field}` placeholders of a target template, or why it is malformed.
pub fn template_fields(template: &str) -> std::result::Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("unmatched `}}` in {template:?}"));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&i| after.as_bytes()[i] == b'}')
            .ok_or_else(|| format!("unclosed `{{` in {template:?}"))?;
        let name = &after[..close];
        if name.is_empty() {
            return Err(format!("empty placeholder `{{}}` in {template:?}"));
        }
        out.push(name);
        rest = &after[close + 1..];
    }
    Ok(out)
}

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

/// `[streams."name"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// The stream's capacity: the HTTP entry refuses (429), `sluice enqueue`
    /// waits and stream sinks pause while it is full.
    #[serde(default)]
    pub max_len: Option<u64>,
    /// Split the stream into this many shard streams, `name:{0}` …
    /// `name:{N-1}` (the `{…}` is a Redis Cluster hash tag: each shard is one
    /// slot, so shards spread over the cluster's nodes). Flows reading
    /// `name` read every shard; producers pick one per entry. With a
    /// capacity (`max_len`), each shard holds up to `max_len`. Default 1:
    /// the plain stream.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// The field whose value picks an entry's shard (FNV-1a hash modulo
    /// `shards`), so entries with the same value stay in order on one
    /// shard. Unset, or the field missing: round-robin.
    #[serde(default)]
    pub shard_by: Option<String>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_len: None,
            shards: default_shards(),
            shard_by: None,
        }
    }
}

/// Most shards one stream may have.
pub const MAX_SHARDS: usize = 1024;

fn default_shards() -> usize {
    1
}

/// The streams `base` stands for: itself when `shards <= 1`, else
/// `base:{0}` … `base:{shards-1}`.
pub fn shard_names(base: &str, shards: usize) -> Vec<String> {
    if shards <= 1 {
        return vec![base.to_string()];
    }
    (0..shards).map(|i| format!("{base}:{{{i}}}")).collect()
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    /// Batch ledger in Redis + batch id in every row: a recovered batch is
    /// re-inserted only if ClickHouse does not hold it already.
    ExactlyOnce,
}

fn default_ledger_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
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
fn default_max_field_bytes() -> ByteSize {
    ByteSize::mib(1)
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
fn default_max_batch_scale() -> f64 {
    1.0
}
fn default_min_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_claim_every() -> Duration {
    Duration::from_secs(5)
}
fn default_check_every() -> Duration {
    Duration::from_millis(200)
}
fn default_max_targets() -> usize {
    10_000
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
fn default_body_limit() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_items() -> usize {
    10_000
}
fn default_retry_after() -> Duration {
    Duration::from_secs(1)
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
                Ok(mut config) => {
                    config.take_remotes()?;
                    config.load_secrets()?;
                    config.validate()?;
                    config.expand_shards();
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

    /// Reads `*.password_file`s into the passwords (named connections too).
    fn load_secrets(&mut self) -> Result<()> {
        let both = |key: &str| ConfigError::Key {
            key: key.to_string(),
            message: "set either password or password_file, not both".into(),
        };
        let remotes = self
            .redis_remote
            .iter_mut()
            .map(|(name, r)| (format!("redis.remote.{name}"), r));
        for (section, redis) in
            std::iter::once(("redis".to_string(), &mut self.redis)).chain(remotes)
        {
            if let Some(path) = &redis.password_file {
                let key = format!("{section}.password_file");
                if redis.password.is_some() {
                    return Err(both(&key));
                }
                redis.password = Some(read_secret(&key, path)?);
            }
        }
        for ch in self
            .clickhouse
            .iter_mut()
            .chain(self.clickhouse_remote.values_mut())
        {
            if let Some(path) = &ch.password_file {
                let key = format!("{}.password_file", ch.key());
                if !ch.password.is_empty() {
                    return Err(both(&key));
                }
                ch.password = read_secret(&key, path)?;
            }
        }
        if let Some(console) = &mut self.console {
            for (i, t) in console.tokens.iter_mut().enumerate() {
                if let Some(path) = &t.token_file {
                    let key = format!("console.tokens[{i}].token_file");
                    if !t.token.is_empty() {
                        return Err(ConfigError::Key {
                            key,
                            message: "set either token or token_file, not both".into(),
                        });
                    }
                    t.token = read_secret(&key, path)?;
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: String, message: &str| ConfigError::Key {
            key,
            message: message.to_string(),
        };
        validate_redis("redis", &self.redis)?;
        if let Some(ch) = &self.clickhouse {
            validate_clickhouse(ch)?;
        }
        // Named connections (`[redis.remote.*]`, `[clickhouse.remote.*]`)
        // and every reference to one.
        self.validate_connections()?;
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
            if flow.max_field_bytes.as_u64() == 0 {
                return Err(bad(key("max_field_bytes"), "must be > 0"));
            }
            if flow.max_deliveries == 0 {
                return Err(bad(key("max_deliveries"), "must be >= 1"));
            }
            if flow.claim.every.is_zero() {
                return Err(bad(key("claim.every"), "must be > 0"));
            }
            // Live replicas refresh entries idle past min_idle/4 on every
            // claim tick; a slower tick would let others steal live work.
            if flow.claim.every * 2 > flow.claim.min_idle {
                return Err(bad(
                    key("claim.every"),
                    "must be at most half of claim.min_idle",
                ));
            }
            if flow.streams.contains(&flow.dead_letter_stream()) {
                return Err(bad(
                    key("dead_letter"),
                    "must differ from the flow's own streams",
                ));
            }
            match &flow.sink {
                SinkConfig::Clickhouse {
                    table,
                    shard_by,
                    clickhouse,
                    max_inserts_per_second,
                    max_batch_scale,
                } => {
                    if let Some(rate) = max_inserts_per_second {
                        if !(rate.is_finite() && *rate > 0.0 && *rate <= 100_000.0) {
                            return Err(bad(
                                key("sink.max_inserts_per_second"),
                                "must be a number > 0 and <= 100000",
                            ));
                        }
                    }
                    if !(max_batch_scale.is_finite() && (1.0..=64.0).contains(max_batch_scale)) {
                        return Err(bad(
                            key("sink.max_batch_scale"),
                            "must be between 1 (off) and 64",
                        ));
                    }
                    // A named connection is checked by validate_connections.
                    let Some(ch) = self.clickhouse_for(clickhouse.as_deref()) else {
                        return Err(bad(
                            key("sink"),
                            "a clickhouse sink needs a [clickhouse] section",
                        ));
                    };
                    if table.is_empty() {
                        return Err(bad(key("sink.table"), "must not be empty"));
                    }
                    if let Some(field) = shard_by {
                        if field.is_empty() {
                            return Err(bad(key("sink.shard_by"), "must not be empty"));
                        }
                        if ch.urls.is_empty() {
                            return Err(bad(
                                key("sink.shard_by"),
                                &format!("needs {}.urls: the shards, in order", ch.key()),
                            ));
                        }
                    }
                }
                SinkConfig::Stream(sink) => validate_stream_sink(flow, sink, &key("sink"))?,
            }
            if let Some(handler) = &flow.handler {
                validate_handler(flow, handler, &key("handler"))?;
            }
            // A stream sink's exactly-once needs no column: the target
            // records what it was sent (crate::sink::stream::once).
            if flow.delivery == Delivery::ExactlyOnce
                && matches!(flow.sink, SinkConfig::Clickhouse { .. })
                && flow.batch_id_column.as_deref().unwrap_or("").is_empty()
            {
                return Err(bad(
                    key("batch_id_column"),
                    "exactly_once needs a column for the batch id",
                ));
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
            if let Some(r) = &flow.retry {
                r.validate().map_err(|m| bad(key("retry"), &m))?;
                if flow.handler.is_none() {
                    return Err(bad(
                        key("retry"),
                        "retries handler failures; this flow has no handler",
                    ));
                }
            }
            if let SinkConfig::Stream(_) = &flow.sink {
                // Column mapping keys mean nothing to a stream sink: say so
                // rather than ignore them.
                let column_keys = [
                    ("payload", flow.payload.is_some()),
                    ("metadata", flow.metadata.names().next().is_some()),
                    ("batch_id_column", flow.batch_id_column.is_some()),
                ];
                if let Some((name, _)) = column_keys.iter().find(|(_, set)| *set) {
                    return Err(bad(
                        key(name),
                        "only applies to clickhouse sinks (a stream sink forwards the fields as they are)",
                    ));
                }
            }
        }
        // The retry script changes keys of several slots at once (delayed
        // set + stream), which Redis Cluster refuses: say so at start-up
        // rather than fail on every retry.
        if self.redis.is_cluster() {
            // The retry script moves a message from its stream to the
            // stream's delayed set: one slot only if the name has a hash tag.
            for (i, flow) in self
                .flows
                .iter()
                .enumerate()
                .filter(|(_, f)| f.retry.is_some())
            {
                let untagged = flow.streams.iter().find(|s| {
                    self.streams.get(*s).is_none_or(|st| st.shards <= 1)
                        && crate::redis::sharder::hash_tag(s).is_none()
                });
                if let Some(s) = untagged {
                    return Err(bad(
                        format!("flow[{i}].retry"),
                        &format!("on Redis Cluster, retry needs sharded streams or hash-tagged names (e.g. `{{{s}}}`); `{s}` is neither"),
                    ));
                }
            }
        }
        crate::schedule::validate(&self.scheduler, &self.schedules)
            .map_err(|(key, message)| ConfigError::Key { key, message })?;
        crate::source::config::validate(self)?;
        for (name, s) in &self.streams {
            if name.is_empty() {
                return Err(bad("streams".into(), "stream name must not be empty"));
            }
            if s.max_len == Some(0) {
                return Err(bad(format!("streams.{name:?}.max_len"), "must be >= 1"));
            }
            if s.shards == 0 || s.shards > MAX_SHARDS {
                return Err(bad(
                    format!("streams.{name:?}.shards"),
                    &format!("must be between 1 and {MAX_SHARDS}"),
                ));
            }
            // A brace in the name would change which part Redis Cluster hashes.
            if s.shards > 1 && name.contains(['{', '}']) {
                return Err(bad(
                    format!("streams.{name:?}.shards"),
                    "a sharded stream's name must not contain `{` or `}`",
                ));
            }
            if let Some(field) = &s.shard_by {
                if field.is_empty() {
                    return Err(bad(
                        format!("streams.{name:?}.shard_by"),
                        "must not be empty",
                    ));
                }
                if s.shards <= 1 {
                    return Err(bad(
                        format!("streams.{name:?}.shard_by"),
                        "needs shards > 1",
                    ));
                }
            }
        }
        if let Some(http) = &self.http {
            validate_http(http)?;
        }
        if let Some(console) = &self.console {
            console
                .validate()
                .map_err(|(key, message)| ConfigError::Key { key, message })?;
        }
        Ok(())
    }

    /// The capacity of `stream` from `[streams."name"]`, if it has one. A
    /// shard stream (`name:{i}`) has its base stream's capacity.
    pub fn stream_max_len(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .or_else(|| {
                let base = self.streams.get(crate::redis::sharder::base_of(stream)?)?;
                (base.shards > 1).then_some(base)
            })
            .and_then(|s| s.max_len)
    }

    /// Replaces each flow's sharded streams by their shards (after
    /// validation, so errors name the streams as written).
    fn expand_shards(&mut self) {
        for flow in &mut self.flows {
            flow.base_streams = flow.streams.clone();
            flow.streams = flow
                .base_streams
                .iter()
                .flat_map(|s| shard_names(s, self.streams.get(s).map_or(1, |st| st.shards)))
                .collect();
        }
    }
}

/// `redis.url` and `redis.nodes` of the section `section` (`redis` or
/// `redis.remote.<name>`).
pub(crate) fn validate_redis(section: &str, redis: &RedisConfig) -> Result<()> {
    let schemes = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ];
    if !schemes.iter().any(|s| redis.url.starts_with(s)) {
        return Err(key_error(
            &format!("{section}.url"),
            "must start with redis://, rediss://, redis-cluster:// or rediss-cluster://",
        ));
    }
    for (i, node) in redis.nodes.iter().enumerate() {
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

pub(crate) fn validate_clickhouse(ch: &ClickHouseConfig) -> Result<()> {
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

pub(crate) fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_string(),
        message: message.into(),
    }
}

fn validate_stream_sink(flow: &FlowConfig, sink: &StreamSinkConfig, key: &str) -> Result<()> {
    if sink.to.is_none() && sink.routes.is_empty() && sink.default.is_none() {
        return Err(key_error(
            key,
            "a stream sink needs `to`, `routes` or `default`",
        ));
    }
    if !sink.routes.is_empty() && sink.route_by.is_none() {
        return Err(key_error(
            &format!("{key}.routes"),
            "needs `route_by` (the field whose value picks a route)",
        ));
    }
    if sink.route_by.as_deref() == Some("") {
        return Err(key_error(&format!("{key}.route_by"), "must not be empty"));
    }
    if sink.max_len == Some(0) {
        return Err(key_error(&format!("{key}.max_len"), "must be >= 1"));
    }
    if sink.check_every.is_zero() {
        return Err(key_error(&format!("{key}.check_every"), "must be > 0"));
    }
    if sink.max_targets == 0 {
        return Err(key_error(&format!("{key}.max_targets"), "must be >= 1"));
    }
    let dead = flow.dead_letter_stream();
    let mut lists: Vec<(String, &Targets)> = Vec::new();
    if let Some(t) = &sink.to {
        lists.push((format!("{key}.to"), t));
    }
    for (value, t) in &sink.routes {
        lists.push((format!("{key}.routes.{value}"), t));
    }
    if let Some(t) = &sink.default {
        lists.push((format!("{key}.default"), t));
    }
    for (k, targets) in lists {
        if targets.0.is_empty() {
            return Err(key_error(&k, "names no target stream"));
        }
        for t in &targets.0 {
            if t.stream.is_empty() {
                return Err(key_error(&k, "target stream name must not be empty"));
            }
            if t.max_len == Some(0) {
                return Err(key_error(&k, "max_len must be >= 1"));
            }
            let fields = template_fields(&t.stream).map_err(|m| key_error(&k, m))?;
            if fields.is_empty() && (flow.streams.contains(&t.stream) || t.stream == dead) {
                return Err(key_error(
                    &k,
                    format!(
                        "target {:?} is one of the flow's own streams or its dead-letter stream",
                        t.stream
                    ),
                ));
            }
            if !fields.is_empty() && k.ends_with(".default") {
                return Err(key_error(
                    &k,
                    "the default target must be a plain name (it is used when fields are missing)",
                ));
            }
        }
    }
    Ok(())
}

fn validate_handler(flow: &FlowConfig, handler: &HandlerConfig, key: &str) -> Result<()> {
    let field = |k: &str| format!("{key}.{k}");
    if flow.delivery == Delivery::ExactlyOnce {
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
    if timeout >= flow.claim.min_idle {
        return Err(key_error(
            &field("timeout"),
            format!(
                "must be shorter than claim.min_idle ({:?})",
                flow.claim.min_idle
            ),
        ));
    }
    Ok(())
}

fn validate_http(http: &HttpConfig) -> Result<()> {
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
    let mut seen = std::collections::HashSet::new();
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
    fn insert_budget_and_batch_scale_are_checked() {
        let with = |extra: &str| {
            EXAMPLE.replace(
                r#"table = "events" }"#,
                &format!(r#"table = "events", {extra} }}"#),
            )
        };
        let c = parse(&with("max_inserts_per_second = 0.5"), &[]).unwrap();
        assert!(matches!(
            c.flows[0].sink,
            SinkConfig::Clickhouse {
                max_inserts_per_second: Some(r),
                max_batch_scale,
                ..
            } if r == 0.5 && max_batch_scale == 1.0
        ));
        for (bad, key) in [
            ("max_inserts_per_second = 0", "sink.max_inserts_per_second"),
            ("max_inserts_per_second = -2", "sink.max_inserts_per_second"),
            ("max_batch_scale = 0.5", "sink.max_batch_scale"),
            ("max_batch_scale = 1000", "sink.max_batch_scale"),
        ] {
            let err = parse(&with(bad), &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("flow[0].{key}")), "{bad}: {err}");
        }
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
    fn exactly_once_needs_a_batch_id_column() {
        let text = EXAMPLE.replace(
            "on_success = \"ack\"",
            "on_success = \"ack\"\ndelivery = \"exactly_once\"",
        );
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("flow[0].batch_id_column"), "{err}");
        let text = text.replace("delivery = ", "batch_id_column = \"_batch\"\ndelivery = ");
        let c = parse(&text, &[]).unwrap();
        assert_eq!(c.flows[0].delivery, Delivery::ExactlyOnce);
        assert_eq!(c.flows[0].ledger_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn clickhouse_url_or_urls() {
        let two = EXAMPLE.replace(
            "url = \"http://127.0.0.1:8123\"",
            "urls = [\"http://a:8123\", \"http://u:pw@b:8123\"]\nendpoints = \"round_robin\"",
        );
        let c = parse(&two, &[]).unwrap();
        let ch = c.clickhouse.as_ref().unwrap();
        assert_eq!(ch.endpoint_urls(), ["http://a:8123", "http://u:pw@b:8123"]);
        assert_eq!(ch.endpoints, EndpointMode::RoundRobin);
        assert_eq!(ch.health_check_every, Duration::from_secs(5));
        assert_eq!(ch.bisect_after, 3);
        assert_eq!(ch.schema_refresh, Duration::from_secs(60));
        assert!(!format!("{ch:?}").contains("pw"), "{ch:?}");
        for (bad, key) in [
            ("bisect_after = 0", "clickhouse.bisect_after"),
            ("schema_refresh = \"10ms\"", "clickhouse.schema_refresh"),
        ] {
            let text = EXAMPLE.replace(
                "database = \"default\"",
                &format!("{bad}\ndatabase = \"default\""),
            );
            let err = parse(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }

        let both = EXAMPLE.replace(
            "database = \"default\"",
            "urls = [\"http://a:8123\"]\ndatabase = \"default\"",
        );
        let err = parse(&both, &[]).unwrap_err().to_string();
        assert!(
            err.contains("clickhouse.urls") && err.contains("not both"),
            "{err}"
        );

        let none = EXAMPLE.replace("url = \"http://127.0.0.1:8123\"\n", "");
        let err = parse(&none, &[]).unwrap_err().to_string();
        assert!(err.contains("clickhouse.url"), "{err}");

        let bad = two.replace("http://u:pw@b", "tcp://b");
        let err = parse(&bad, &[]).unwrap_err().to_string();
        assert!(err.contains("clickhouse.urls[1]"), "{err}");

        let dup = two.replace("http://u:pw@b:8123", "http://a:8123/");
        let err = parse(&dup, &[]).unwrap_err().to_string();
        assert!(
            err.contains("clickhouse.urls[1]") && err.contains("duplicate"),
            "{err}"
        );

        let mode = two.replace("round_robin", "random");
        let err = parse(&mode, &[]).unwrap_err().to_string();
        assert!(err.contains("clickhouse.endpoints"), "{err}");

        let env = parse(
            EXAMPLE,
            &[
                ("SLUICE_CLICKHOUSE__URL", ""),
                (
                    "SLUICE_CLICKHOUSE__URLS",
                    "[\"http://x:1\", \"http://y:2\"]",
                ),
            ],
        )
        .unwrap();
        assert_eq!(env.clickhouse.unwrap().endpoint_urls().len(), 2);
    }

    #[test]
    fn shard_by_needs_urls() {
        let sharded = EXAMPLE.replace(
            "table = \"events\" }",
            "table = \"events_local\", shard_by = \"user_id\" }",
        );
        let err = parse(&sharded, &[]).unwrap_err().to_string();
        assert!(
            err.contains("flow[0].sink.shard_by") && err.contains("urls"),
            "{err}"
        );
        let sharded = sharded.replace(
            "url = \"http://127.0.0.1:8123\"",
            "urls = [\"http://a:8123\", \"http://b:8123\"]",
        );
        let c = parse(&sharded, &[]).unwrap();
        assert!(matches!(
            &c.flows[0].sink,
            SinkConfig::Clickhouse { shard_by: Some(f), .. } if f == "user_id"
        ));
        let eo = sharded.replace(
            "on_success = \"ack\"",
            "batch_id_column = \"_batch\"\ndelivery = \"exactly_once\"",
        );
        assert_eq!(
            parse(&eo, &[]).unwrap().flows[0].delivery,
            Delivery::ExactlyOnce
        );
    }

    #[test]
    fn cluster_and_shards() {
        let text = EXAMPLE.replace(
            "[clickhouse]",
            "cluster = true\nnodes = [\"10.0.0.2:6379\"]\n[streams.events]\nshards = 3\nshard_by = \"user\"\n[clickhouse]",
        );
        let c = parse(&text, &[]).unwrap();
        assert!(c.redis.is_cluster());
        assert_eq!(
            c.flows[0].streams,
            ["events:{0}", "events:{1}", "events:{2}"]
        );
        assert_eq!(c.flows[0].base_streams, ["events"]);
        assert_eq!(c.flows[0].dead_letter_stream(), "events:dead");
        let text = text.replace("dead_letter = \"events:dead\"\n", "");
        let c = parse(&text, &[]).unwrap();
        assert_eq!(c.flows[0].dead_letter_stream(), "events:dead");
        // A cluster:// URL alone turns cluster mode on.
        let c = parse(&EXAMPLE.replace("redis://", "redis-cluster://"), &[]).unwrap();
        assert!(c.redis.is_cluster());
        let err = |from: &str, to: &str| {
            let t = text.replace(from, to);
            assert_ne!(t, text, "{from:?} did not apply");
            parse(&t, &[]).unwrap_err().to_string()
        };
        let e = err("shards = 3", "shards = 0");
        assert!(e.contains("streams.\"events\".shards"), "{e}");
        let e = err("shards = 3", "shards = 1");
        assert!(e.contains("streams.\"events\".shard_by"), "{e}");
        let e = err("shard_by = \"user\"", "shard_by = \"\"");
        assert!(e.contains("streams.\"events\".shard_by"), "{e}");
        let e = err("10.0.0.2:6379", "10.0.0.2");
        assert!(e.contains("redis.nodes[0]"), "{e}");
        // Retry on a cluster: fine for a sharded stream or a hash-tagged
        // name, refused for a plain one.
        let retry = text.replace(
            "on_success = \"ack\"",
            "on_success = \"ack\"\nhandler = { type = \"exec\", command = [\"./h\"] }\nretry = { backoff = \"exponential\", base = \"1s\", max = \"5m\" }",
        );
        parse(&retry, &[]).unwrap();
        let plain = retry
            .replace("shards = 3", "shards = 1")
            .replace("shard_by = \"user\"\n", "");
        let e = parse(&plain, &[]).unwrap_err().to_string();
        assert!(e.contains("flow[0].retry") && e.contains("Cluster"), "{e}");
        parse(
            &plain.replace("streams = [\"events\"]", "streams = [\"{events}\"]"),
            &[],
        )
        .unwrap();
        let e = parse(
            &text.replace(
                "[streams.events]",
                "[streams.\"ev{x}\"]\nshards = 2\n[streams.events]",
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("streams.\"ev{x}\".shards"), "{e}");
        // A shard has its base stream's capacity.
        let c = parse(&text.replace("shards = 3", "shards = 3\nmax_len = 7"), &[]).unwrap();
        assert_eq!(c.stream_max_len("events:{2}"), Some(7));
    }

    #[test]
    fn clickhouse_sink_requires_section() {
        let text = EXAMPLE.replace("[clickhouse]", "[unused]");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("unused"), "{err}");
    }

    const DATAFLOW: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[clickhouse]
url = "http://127.0.0.1:8123"

[streams."jobs.in"]
max_len = 100000

[http]
listen = "127.0.0.1:8080"
body_limit = "1MiB"
max_len = 50000
[[http.tokens]]
token = "0123456789abcdef-producer"
streams = ["jobs.in", "events.*"]

[[flow]]
name = "move"
streams = ["jobs.raw"]
sink = { type = "stream", to = "jobs.out" }

[[flow]]
name = "route"
streams = ["jobs.in"]
sink = { type = "stream", route_by = "task_for", to = "jobs.{task_for}" }

[[flow]]
name = "map"
streams = ["jobs.mixed"]
max_deliveries = 3
handler = { type = "exec", command = ["python3", "handler.py"], workers = 4, timeout = "5s" }
[flow.sink]
type = "stream"
route_by = "task_for"
routes = { a = "jobs.a", b = ["jobs.b", { stream = "audit", max_len = 1000 }] }
default = "jobs.other"
max_len = 20000

[[flow]]
name = "enrich"
streams = ["jobs.b"]
handler = { type = "http", url = "http://127.0.0.1:9000/enrich", concurrency = 16 }
sink = { type = "clickhouse", table = "jobs" }
"#;

    fn stream_sink(c: &Config, i: usize) -> &StreamSinkConfig {
        match &c.flows[i].sink {
            SinkConfig::Stream(s) => s,
            other => panic!("not a stream sink: {other:?}"),
        }
    }

    fn dataflow_err(from: &str, to: &str) -> String {
        let text = DATAFLOW.replace(from, to);
        assert_ne!(text, DATAFLOW, "replacement {from:?} did not apply");
        parse(&text, &[]).unwrap_err().to_string()
    }

    #[test]
    fn dataflow_examples_parse() {
        let c = parse(DATAFLOW, &[]).unwrap();
        let to = |s: &str| TargetSpec {
            stream: s.into(),
            max_len: None,
        };
        assert_eq!(stream_sink(&c, 0).to, Some(Targets(vec![to("jobs.out")])));
        let route = stream_sink(&c, 1);
        assert_eq!(route.route_by.as_deref(), Some("task_for"));
        assert_eq!(route.to, Some(Targets(vec![to("jobs.{task_for}")])));
        let map = stream_sink(&c, 2);
        assert_eq!(map.routes["a"], Targets(vec![to("jobs.a")]));
        assert_eq!(
            map.routes["b"],
            Targets(vec![
                to("jobs.b"),
                TargetSpec {
                    stream: "audit".into(),
                    max_len: Some(1000)
                }
            ])
        );
        assert_eq!(map.default, Some(Targets(vec![to("jobs.other")])));
        assert_eq!(map.max_len, Some(20000));
        assert_eq!(map.check_every, Duration::from_millis(200));
        match &c.flows[2].handler {
            Some(HandlerConfig::Exec(e)) => {
                assert_eq!(e.command, ["python3", "handler.py"]);
                assert_eq!(e.workers, 4);
                assert_eq!(e.timeout, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &c.flows[3].handler,
            Some(HandlerConfig::Http(h)) if h.concurrency == 16 && h.timeout == Duration::from_secs(10)
        ));
        let http = c.http.as_ref().unwrap();
        assert_eq!(http.max_len, Some(50000));
        assert_eq!(http.tokens[0].streams, ["jobs.in", "events.*"]);
        assert!(
            !format!("{http:?}").contains("producer"),
            "tokens are redacted"
        );
        assert_eq!(c.stream_max_len("jobs.in"), Some(100000));
        assert_eq!(c.stream_max_len("jobs.out"), None);
    }

    #[test]
    fn stream_sink_needs_no_clickhouse_section() {
        let text = "[redis]\nurl = \"redis://h:1\"\n[[flow]]\nname = \"m\"\nstreams = [\"a\"]\nsink = { type = \"stream\", to = \"b\" }\n";
        parse(text, &[]).unwrap();
    }

    #[test]
    fn stream_sink_unknown_key_is_named() {
        let err = dataflow_err("to = \"jobs.out\"", "to = \"jobs.out\", max_lenn = 3");
        assert!(
            err.contains("flow[0].sink") && err.contains("max_lenn"),
            "{err}"
        );
        let err = dataflow_err(
            "{ stream = \"audit\", max_len = 1000 }",
            "{ stream = \"audit\", cap = 1 }",
        );
        assert!(err.contains("flow[2].sink") && err.contains("cap"), "{err}");
    }

    #[test]
    fn stream_sink_needs_a_target() {
        let err = dataflow_err(
            "sink = { type = \"stream\", to = \"jobs.out\" }",
            "sink = { type = \"stream\" }",
        );
        assert!(
            err.contains("flow[0].sink") && err.contains("`to`"),
            "{err}"
        );
    }

    #[test]
    fn routes_need_route_by() {
        let err = dataflow_err("route_by = \"task_for\"\nroutes", "routes");
        assert!(
            err.contains("flow[2].sink.routes") && err.contains("route_by"),
            "{err}"
        );
    }

    #[test]
    fn empty_route_by_is_refused() {
        let err = dataflow_err("route_by = \"task_for\", to", "route_by = \"\", to");
        assert!(err.contains("flow[1].sink.route_by"), "{err}");
    }

    #[test]
    fn bad_templates_are_refused() {
        let err = dataflow_err("\"jobs.{task_for}\"", "\"jobs.{task_for\"");
        assert!(
            err.contains("flow[1].sink.to") && err.contains("unclosed"),
            "{err}"
        );
        let err = dataflow_err("\"jobs.{task_for}\"", "\"jobs.{}\"");
        assert!(err.contains("empty placeholder"), "{err}");
        let err = dataflow_err("\"jobs.{task_for}\"", "\"jobs.}x\"");
        assert!(err.contains("unmatched"), "{err}");
        let err = dataflow_err("default = \"jobs.other\"", "default = \"jobs.{x}\"");
        assert!(err.contains("flow[2].sink.default"), "{err}");
        assert_eq!(template_fields("a.{x}.{y}").unwrap(), vec!["x", "y"]);
    }

    #[test]
    fn target_may_not_loop_back() {
        let err = dataflow_err("to = \"jobs.out\"", "to = \"jobs.raw\"");
        assert!(
            err.contains("flow[0].sink.to") && err.contains("own streams"),
            "{err}"
        );
        let err = dataflow_err("to = \"jobs.out\"", "to = \"jobs.raw:dead\"");
        assert!(err.contains("flow[0].sink.to"), "{err}");
    }

    #[test]
    fn max_len_must_be_positive() {
        let err = dataflow_err("max_len = 20000", "max_len = 0");
        assert!(err.contains("flow[2].sink.max_len"), "{err}");
        let err = dataflow_err("max_len = 1000 }", "max_len = 0 }");
        assert!(err.contains("flow[2].sink.routes.b"), "{err}");
        let err = dataflow_err("max_len = 100000", "max_len = 0");
        assert!(err.contains("streams.\"jobs.in\".max_len"), "{err}");
        let err = dataflow_err("max_len = 50000", "max_len = 0");
        assert!(err.contains("http.max_len"), "{err}");
    }

    #[test]
    fn empty_target_list_is_refused() {
        let err = dataflow_err("default = \"jobs.other\"", "default = []");
        assert!(
            err.contains("flow[2].sink.default") && err.contains("no target"),
            "{err}"
        );
    }

    #[test]
    fn exec_handler_rules() {
        let err = dataflow_err("command = [\"python3\", \"handler.py\"]", "command = []");
        assert!(err.contains("flow[2].handler.command"), "{err}");
        let err = dataflow_err("workers = 4", "workers = 0");
        assert!(err.contains("flow[2].handler.workers"), "{err}");
        let err = dataflow_err("workers = 4", "workers = 4, shell = true");
        assert!(
            err.contains("flow[2].handler") && err.contains("shell"),
            "{err}"
        );
    }

    #[test]
    fn handler_timeout_must_be_below_min_idle() {
        let err = dataflow_err("timeout = \"5s\"", "timeout = \"60s\"");
        assert!(
            err.contains("flow[2].handler.timeout") && err.contains("min_idle"),
            "{err}"
        );
        let err = dataflow_err("timeout = \"5s\"", "timeout = \"0s\"");
        assert!(err.contains("flow[2].handler.timeout"), "{err}");
    }

    #[test]
    fn http_handler_rules() {
        let err = dataflow_err("\"http://127.0.0.1:9000/enrich\"", "\"https://x/enrich\"");
        assert!(
            err.contains("flow[3].handler.url") && err.contains("https"),
            "{err}"
        );
        let err = dataflow_err("\"http://127.0.0.1:9000/enrich\"", "\"ftp://x\"");
        assert!(err.contains("flow[3].handler.url"), "{err}");
        let err = dataflow_err("concurrency = 16", "concurrency = 0");
        assert!(err.contains("flow[3].handler.concurrency"), "{err}");
        let err = dataflow_err(
            "concurrency = 16",
            "concurrency = 1, headers = { \"bad header\" = \"x\" }",
        );
        assert!(err.contains("flow[3].handler.headers"), "{err}");
    }

    #[test]
    fn check_every_must_be_positive() {
        let err = dataflow_err(
            "to = \"jobs.out\" }",
            "to = \"jobs.out\", check_every = \"0s\" }",
        );
        assert!(err.contains("flow[0].sink.check_every"), "{err}");
    }

    #[test]
    fn keys_that_would_be_ignored_are_refused() {
        let err = dataflow_err(
            "streams = [\"jobs.raw\"]\n",
            "streams = [\"jobs.raw\"]\nretry = { backoff = \"exponential\" }\n",
        );
        assert!(
            err.contains("flow[0].retry") && err.contains("no handler"),
            "{err}"
        );
        let err = dataflow_err(
            "streams = [\"jobs.raw\"]\n",
            "streams = [\"jobs.raw\"]\nmetadata = { id = \"_id\" }\n",
        );
        assert!(
            err.contains("flow[0].metadata") && err.contains("clickhouse sinks"),
            "{err}"
        );
        let err = dataflow_err(
            "streams = [\"jobs.in\"]\n",
            "streams = [\"jobs.in\"]\npayload = { field = \"p\" }\n",
        );
        assert!(err.contains("flow[1].payload"), "{err}");
    }

    #[test]
    fn handler_excludes_exactly_once() {
        let err = dataflow_err(
            "concurrency = 16 }",
            "concurrency = 16 }\ndelivery = \"exactly_once\"\nbatch_id_column = \"b\"",
        );
        assert!(
            err.contains("flow[3].handler") && err.contains("exactly_once"),
            "{err}"
        );
    }

    #[test]
    fn rust_handler_needs_a_name() {
        let err = dataflow_err(
            "{ type = \"http\", url = \"http://127.0.0.1:9000/enrich\", concurrency = 16 }",
            "{ type = \"rust\", name = \"\" }",
        );
        assert!(err.contains("flow[3].handler.name"), "{err}");
    }

    #[test]
    fn http_section_rules() {
        let err = dataflow_err("listen = \"127.0.0.1:8080\"", "listen = \"eight\"");
        assert!(err.contains("http.listen"), "{err}");
        let err = dataflow_err("body_limit = \"1MiB\"", "body_limit = \"1MiB\"\nport = 1");
        assert!(err.contains("http") && err.contains("port"), "{err}");
        let err = dataflow_err("body_limit = \"1MiB\"", "body_limit = 0");
        assert!(err.contains("http.body_limit"), "{err}");
        let err = dataflow_err("body_limit = \"1MiB\"", "max_items = 0");
        assert!(err.contains("http.max_items"), "{err}");
    }

    #[test]
    fn http_tokens_rules() {
        let err = dataflow_err("\"0123456789abcdef-producer\"", "\"short\"");
        assert!(
            err.contains("http.tokens[0].token") && err.contains("16"),
            "{err}"
        );
        let err = dataflow_err(
            "\"0123456789abcdef-producer\"",
            "\"0123456789abcdef producer\"",
        );
        assert!(err.contains("http.tokens[0].token"), "{err}");
        let err = dataflow_err("streams = [\"jobs.in\", \"events.*\"]", "streams = []");
        assert!(err.contains("http.tokens[0].streams"), "{err}");
        let err = dataflow_err(
            "[[http.tokens]]\ntoken = \"0123456789abcdef-producer\"\nstreams = [\"jobs.in\", \"events.*\"]",
            "",
        );
        assert!(
            err.contains("http.tokens") && err.contains("allow_unauthenticated"),
            "{err}"
        );
        let err = dataflow_err(
            "max_len = 50000",
            "max_len = 50000\nallow_unauthenticated = true",
        );
        assert!(err.contains("http.allow_unauthenticated"), "{err}");
        let twice = "[[http.tokens]]\ntoken = \"0123456789abcdef-producer\"\nstreams = [\"x\"]\n[[flow]]\nname = \"move\"";
        let err = dataflow_err("[[flow]]\nname = \"move\"", twice);
        assert!(
            err.contains("http.tokens[1].token") && err.contains("twice"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    const BASE: &str = r#"
[redis]
url = "redis://sluice:url-secret@127.0.0.1:6379/0"
[clickhouse]
url = "http://127.0.0.1:8123"
user = "writer"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        Config::from_toml_with_env(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn password_files_are_read_and_never_debug_printed() {
        let dir = tempfile::tempdir().unwrap();
        let (r, c) = (dir.path().join("redis"), dir.path().join("ch"));
        std::fs::write(&r, "redis-file-secret\n").unwrap();
        std::fs::write(&c, "ch-file-secret\r\n").unwrap();
        let text = BASE.replace("[redis]\n", &format!("[redis]\npassword_file = {r:?}\n"))
            + &format!("password_file = {c:?}\n");
        let cfg = parse(&text, &[]).unwrap();
        assert_eq!(cfg.redis.password.as_deref(), Some("redis-file-secret"));
        let ch = cfg.clickhouse.as_ref().unwrap();
        assert_eq!(ch.password, "ch-file-secret");
        let debug = format!("{cfg:?}");
        for secret in ["redis-file-secret", "ch-file-secret", "url-secret"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(
            debug.contains("redis://sluice:***@127.0.0.1:6379/0"),
            "{debug}"
        );
    }

    #[test]
    fn password_from_env_and_conflicts_name_the_key() {
        let cfg = parse(BASE, &[("SLUICE_REDIS__PASSWORD", "12345")]).unwrap();
        assert_eq!(cfg.redis.password.as_deref(), Some("12345"));
        let err = parse(
            BASE,
            &[
                ("SLUICE_REDIS__PASSWORD", "x"),
                ("SLUICE_REDIS__PASSWORD_FILE", "/nonexistent"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("redis.password_file") && err.contains("not both"),
            "{err}"
        );
        let err = parse(
            BASE,
            &[("SLUICE_CLICKHOUSE__PASSWORD_FILE", "/nonexistent/pw")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("clickhouse.password_file") && err.contains("/nonexistent/pw"),
            "{err}"
        );
    }
}
