//! Configuration, the ground floor of the crate: a TOML file, then
//! `SLUICE_…` environment overrides ([`env`](mod@env)), then secrets read from files
//! ([`secret`]), then validation. Every error names the key it is about.
//!
//! One file per section, each type checking itself beside its definition:
//! [`redis`], [`clickhouse`], [`connections`] (named ones), [`worker`]
//! (`[worker]`, `[metrics]`), [`flow`], [`sink`], [`handler`], [`retry`],
//! [`http`], [`streams`] (shard naming both ways), [`schedule`],
//! [`console`], [`source`]. This file holds [`Config`], loading, and the
//! checks that span sections. It imports only leaves (std, external crates,
//! `crate::template`) and its own children, so every other module may
//! depend on it without a cycle.

pub mod clickhouse;
pub mod connections;
pub mod console;
pub mod env;
pub mod flow;
pub mod handler;
pub mod http;
pub mod redis;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod sink;
pub mod source;
pub mod streams;
pub mod worker;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use self::env::{apply_env_override, env_key_path, parse_env_value, NOT_CONFIG};
use self::streams::{base_of, hash_tag};

pub use self::clickhouse::{ClickHouseConfig, EndpointMode};
pub use self::console::ConsoleConfig;
pub use self::env::ENV_PREFIX;
pub use self::flow::{
    BatchConfig, ClaimConfig, Delivery, FlowConfig, MetadataColumns, OnSuccess, PayloadConfig,
    PayloadFormat,
};
pub use self::handler::{ExecHandlerConfig, HandlerConfig, HttpHandlerConfig, RustHandlerConfig};
pub use self::http::{HttpConfig, TokenConfig};
pub use self::redis::RedisConfig;
pub use self::retry::{BackoffKind, RetryConfig};
pub use self::schedule::{ScheduleConfig, SchedulerConfig};
pub use self::secret::redact_url;
pub use self::sink::{Capacity, SinkConfig, StreamSinkConfig, TargetSpec, Targets};
pub use self::source::SourceConfig;
pub use self::streams::{shard_names, StreamSettings, MAX_SHARDS};
pub use self::worker::{MetricsConfig, WorkerConfig};

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
    pub scheduler: SchedulerConfig,
    /// Entries added to streams on a cron / interval / one-off trigger.
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<ScheduleConfig>,
    /// The operator console (`sluice console`, or inside `sluice run` when
    /// `listen` is set); off when absent.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// `[[source]]`: ClickHouse tables read into streams (`crate::source`).
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Named Redis connections, `[redis.remote.<name>]`: taken out of
    /// `redis.remote` at load (see [`connections`]).
    #[serde(skip)]
    pub redis_remote: BTreeMap<String, RedisConfig>,
    /// Named ClickHouse connections, `[clickhouse.remote.<name>]`.
    #[serde(skip)]
    pub clickhouse_remote: BTreeMap<String, ClickHouseConfig>,
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

    /// Checks every section, then what spans sections.
    fn validate(&self) -> Result<()> {
        self.redis.validate("redis")?;
        if let Some(ch) = &self.clickhouse {
            ch.validate()?;
        }
        // Named connections (`[redis.remote.*]`, `[clickhouse.remote.*]`)
        // and every reference to one.
        self.validate_connections()?;
        self.worker.validate()?;
        self.metrics.validate()?;
        let mut names = HashSet::new();
        for (i, flow) in self.flows.iter().enumerate() {
            let key = format!("flow[{i}].name");
            if flow.name.is_empty() {
                return Err(key_error(&key, "must not be empty"));
            }
            if !names.insert(flow.name.as_str()) {
                return Err(key_error(
                    &key,
                    format!("duplicate flow name {:?}", flow.name),
                ));
            }
            flow.validate(i, self)?;
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
                    self.streams.get(*s).is_none_or(|st| st.shards <= 1) && hash_tag(s).is_none()
                });
                if let Some(s) = untagged {
                    return Err(key_error(
                        &format!("flow[{i}].retry"),
                        format!("on Redis Cluster, retry needs sharded streams or hash-tagged names (e.g. `{{{s}}}`); `{s}` is neither"),
                    ));
                }
            }
        }
        schedule::validate(&self.scheduler, &self.schedules)?;
        source::validate(self)?;
        streams::validate(&self.streams)?;
        if let Some(http) = &self.http {
            http.validate()?;
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
                let base = self.streams.get(base_of(stream)?)?;
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

pub(crate) fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_string(),
        message: message.into(),
    }
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytesize::ByteSize;

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

    /// Loads `text` as if read from a file, with `env` as the environment.
    pub(super) fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config> {
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

    /// DATAFLOW with `from` replaced by `to` is refused with an error that
    /// names every one of `needles`.
    fn assert_refused(from: &str, to: &str, needles: &[&str]) {
        let err = dataflow_err(from, to);
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
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
        assert_refused(
            "to = \"jobs.out\"",
            "to = \"jobs.out\", max_lenn = 3",
            &["flow[0].sink", "max_lenn"],
        );
        assert_refused(
            "{ stream = \"audit\", max_len = 1000 }",
            "{ stream = \"audit\", cap = 1 }",
            &["flow[2].sink", "cap"],
        );
    }

    #[test]
    fn stream_sink_needs_a_target() {
        assert_refused(
            "sink = { type = \"stream\", to = \"jobs.out\" }",
            "sink = { type = \"stream\" }",
            &["flow[0].sink", "`to`"],
        );
    }

    #[test]
    fn routes_need_route_by() {
        assert_refused(
            "route_by = \"task_for\"\nroutes",
            "routes",
            &["flow[2].sink.routes", "route_by"],
        );
    }

    #[test]
    fn empty_route_by_is_refused() {
        assert_refused(
            "route_by = \"task_for\", to",
            "route_by = \"\", to",
            &["flow[1].sink.route_by"],
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_refused(
            "\"jobs.{task_for}\"",
            "\"jobs.{task_for\"",
            &["flow[1].sink.to", "unclosed"],
        );
        assert_refused("\"jobs.{task_for}\"", "\"jobs.{}\"", &["empty placeholder"]);
        assert_refused("\"jobs.{task_for}\"", "\"jobs.}x\"", &["unmatched"]);
        assert_refused(
            "default = \"jobs.other\"",
            "default = \"jobs.{x}\"",
            &["flow[2].sink.default"],
        );
        assert_eq!(
            crate::template::placeholders("a.{x}.{y}", crate::template::Syntax::FIELDS).unwrap(),
            vec!["x", "y"]
        );
    }

    #[test]
    fn target_may_not_loop_back() {
        assert_refused(
            "to = \"jobs.out\"",
            "to = \"jobs.raw\"",
            &["flow[0].sink.to", "own streams"],
        );
        assert_refused(
            "to = \"jobs.out\"",
            "to = \"jobs.raw:dead\"",
            &["flow[0].sink.to"],
        );
    }

    #[test]
    fn max_len_must_be_positive() {
        assert_refused("max_len = 20000", "max_len = 0", &["flow[2].sink.max_len"]);
        assert_refused(
            "max_len = 1000 }",
            "max_len = 0 }",
            &["flow[2].sink.routes.b"],
        );
        assert_refused(
            "max_len = 100000",
            "max_len = 0",
            &["streams.\"jobs.in\".max_len"],
        );
        assert_refused("max_len = 50000", "max_len = 0", &["http.max_len"]);
    }

    #[test]
    fn empty_target_list_is_refused() {
        assert_refused(
            "default = \"jobs.other\"",
            "default = []",
            &["flow[2].sink.default", "no target"],
        );
    }

    #[test]
    fn exec_handler_rules() {
        assert_refused(
            "command = [\"python3\", \"handler.py\"]",
            "command = []",
            &["flow[2].handler.command"],
        );
        assert_refused("workers = 4", "workers = 0", &["flow[2].handler.workers"]);
        assert_refused(
            "workers = 4",
            "workers = 4, shell = true",
            &["flow[2].handler", "shell"],
        );
    }

    #[test]
    fn handler_timeout_must_be_below_min_idle() {
        assert_refused(
            "timeout = \"5s\"",
            "timeout = \"60s\"",
            &["flow[2].handler.timeout", "min_idle"],
        );
        assert_refused(
            "timeout = \"5s\"",
            "timeout = \"0s\"",
            &["flow[2].handler.timeout"],
        );
    }

    #[test]
    fn http_handler_rules() {
        assert_refused(
            "\"http://127.0.0.1:9000/enrich\"",
            "\"https://x/enrich\"",
            &["flow[3].handler.url", "https"],
        );
        assert_refused(
            "\"http://127.0.0.1:9000/enrich\"",
            "\"ftp://x\"",
            &["flow[3].handler.url"],
        );
        assert_refused(
            "concurrency = 16",
            "concurrency = 0",
            &["flow[3].handler.concurrency"],
        );
        assert_refused(
            "concurrency = 16",
            "concurrency = 1, headers = { \"bad header\" = \"x\" }",
            &["flow[3].handler.headers"],
        );
    }

    #[test]
    fn check_every_must_be_positive() {
        assert_refused(
            "to = \"jobs.out\" }",
            "to = \"jobs.out\", check_every = \"0s\" }",
            &["flow[0].sink.check_every"],
        );
    }

    #[test]
    fn keys_that_would_be_ignored_are_refused() {
        assert_refused(
            "streams = [\"jobs.raw\"]\n",
            "streams = [\"jobs.raw\"]\nretry = { backoff = \"exponential\" }\n",
            &["flow[0].retry", "no handler"],
        );
        assert_refused(
            "streams = [\"jobs.raw\"]\n",
            "streams = [\"jobs.raw\"]\nmetadata = { id = \"_id\" }\n",
            &["flow[0].metadata", "clickhouse sinks"],
        );
        assert_refused(
            "streams = [\"jobs.in\"]\n",
            "streams = [\"jobs.in\"]\npayload = { field = \"p\" }\n",
            &["flow[1].payload"],
        );
    }

    #[test]
    fn handler_excludes_exactly_once() {
        assert_refused(
            "concurrency = 16 }",
            "concurrency = 16 }\ndelivery = \"exactly_once\"\nbatch_id_column = \"b\"",
            &["flow[3].handler", "exactly_once"],
        );
    }

    #[test]
    fn rust_handler_needs_a_name() {
        assert_refused(
            "{ type = \"http\", url = \"http://127.0.0.1:9000/enrich\", concurrency = 16 }",
            "{ type = \"rust\", name = \"\" }",
            &["flow[3].handler.name"],
        );
    }

    #[test]
    fn http_section_rules() {
        assert_refused(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"eight\"",
            &["http.listen"],
        );
        assert_refused(
            "body_limit = \"1MiB\"",
            "body_limit = \"1MiB\"\nport = 1",
            &["http", "port"],
        );
        assert_refused(
            "body_limit = \"1MiB\"",
            "body_limit = 0",
            &["http.body_limit"],
        );
        assert_refused(
            "body_limit = \"1MiB\"",
            "max_items = 0",
            &["http.max_items"],
        );
    }

    #[test]
    fn http_tokens_rules() {
        assert_refused(
            "\"0123456789abcdef-producer\"",
            "\"short\"",
            &["http.tokens[0].token", "16"],
        );
        assert_refused(
            "\"0123456789abcdef-producer\"",
            "\"0123456789abcdef producer\"",
            &["http.tokens[0].token"],
        );
        assert_refused(
            "streams = [\"jobs.in\", \"events.*\"]",
            "streams = []",
            &["http.tokens[0].streams"],
        );
        assert_refused("[[http.tokens]]\ntoken = \"0123456789abcdef-producer\"\nstreams = [\"jobs.in\", \"events.*\"]", "", &["http.tokens", "allow_unauthenticated"]);
        assert_refused(
            "max_len = 50000",
            "max_len = 50000\nallow_unauthenticated = true",
            &["http.allow_unauthenticated"],
        );
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
    use super::tests::parse;

    const BASE: &str = r#"
[redis]
url = "redis://sluice:url-secret@127.0.0.1:6379/0"
[clickhouse]
url = "http://127.0.0.1:8123"
user = "writer"
"#;

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
