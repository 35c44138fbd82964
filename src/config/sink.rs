//! A flow's `sink`: a ClickHouse table, or other streams (routing, fan-out,
//! capacity), and the checks of each kind.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{key_error, Config, Result};
use crate::template::{self, Syntax};

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
        /// same table) through Redis (`crate::sink::clickhouse::budget`). Unset: no
        /// budget.
        #[serde(default)]
        max_inserts_per_second: Option<f64>,
        /// Adaptive batches: how far `batch.max_rows`, `max_bytes` and
        /// `max_wait` may grow while ClickHouse signals pressure
        /// (`crate::sink::clickhouse::pressure`). 1 (the default) = off.
        #[serde(default = "default_max_batch_scale")]
        max_batch_scale: f64,
    },
    /// XADD to other streams, then XACK at the source.
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
/// The streams a stream sink must not write to: its flow's own and the
/// flow's dead-letter stream (a loop).
pub(crate) struct LoopBack<'a> {
    pub streams: &'a [String],
    pub dead_letter: String,
}

impl LoopBack<'_> {
    fn is_own(&self, stream: &str) -> bool {
        self.streams.iter().any(|s| s == stream) || stream == self.dead_letter
    }
}

impl SinkConfig {
    /// Checks the sink of a flow (`key`: `flow[i].sink`); `config` resolves
    /// the ClickHouse connection it names (whether the name exists is
    /// checked with the other connection references).
    pub(crate) fn validate(&self, key: &str, config: &Config, loop_back: &LoopBack) -> Result<()> {
        let field = |k: &str| format!("{key}.{k}");
        let bad = |key: String, message: &str| key_error(&key, message);
        match self {
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
                            field("max_inserts_per_second"),
                            "must be a number > 0 and <= 100000",
                        ));
                    }
                }
                if !(max_batch_scale.is_finite() && (1.0..=64.0).contains(max_batch_scale)) {
                    return Err(bad(
                        field("max_batch_scale"),
                        "must be between 1 (off) and 64",
                    ));
                }
                // A named connection is checked by Config::validate_connections.
                let Some(ch) = config.clickhouse_for(clickhouse.as_deref()) else {
                    return Err(bad(
                        key.to_string(),
                        "a clickhouse sink needs a [clickhouse] section",
                    ));
                };
                if table.is_empty() {
                    return Err(bad(field("table"), "must not be empty"));
                }
                if let Some(shard_field) = shard_by {
                    if shard_field.is_empty() {
                        return Err(bad(field("shard_by"), "must not be empty"));
                    }
                    if ch.urls.is_empty() {
                        return Err(bad(
                            field("shard_by"),
                            &format!("needs {}.urls: the shards, in order", ch.key()),
                        ));
                    }
                }
                Ok(())
            }
            SinkConfig::Stream(sink) => sink.validate(key, loop_back),
        }
    }
}

impl StreamSinkConfig {
    fn validate(&self, key: &str, loop_back: &LoopBack) -> Result<()> {
        let sink = self;
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
                let fields = template::placeholders(&t.stream, Syntax::FIELDS)
                    .map_err(|m| key_error(&k, m))?;
                if fields.is_empty() && loop_back.is_own(&t.stream) {
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
}

fn default_max_batch_scale() -> f64 {
    1.0
}
fn default_check_every() -> Duration {
    Duration::from_millis(200)
}
fn default_max_targets() -> usize {
    10_000
}
