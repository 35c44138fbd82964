//! `[[flow]]`: one consumer group reading streams into a sink, with its
//! batching, claiming, dead-lettering and column mapping, and the checks of
//! one flow (the sink and handler sections check themselves).

use std::collections::HashSet;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::handler::HandlerConfig;
use super::retry::RetryConfig;
use super::sink::{LoopBack, SinkConfig};
use super::{key_error, Config, Result};

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
    /// Column receiving each row's batch id: UUID (recommended, 16 bytes a
    /// row), String or FixedString(36).
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
    pub retry: Option<RetryConfig>,
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

impl FlowConfig {
    /// Checks `flow[index]`, all but its name (unique across flows: see
    /// [`Config`]); `config` resolves the connections its sink names.
    pub(crate) fn validate(&self, index: usize, config: &Config) -> Result<()> {
        let flow = self;
        let key = |k: &str| format!("flow[{index}].{k}");
        let bad = |key: String, message: &str| key_error(&key, message);
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
        let loop_back = LoopBack {
            streams: &flow.streams,
            dead_letter: flow.dead_letter_stream(),
        };
        flow.sink.validate(&key("sink"), config, &loop_back)?;
        if let Some(handler) = &flow.handler {
            handler.validate(
                &key("handler"),
                flow.delivery == Delivery::ExactlyOnce,
                flow.claim.min_idle,
            )?;
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
        let mut seen = HashSet::new();
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
        Ok(())
    }
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
fn default_min_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_claim_every() -> Duration {
    Duration::from_secs(5)
}
