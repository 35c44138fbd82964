//! The stream sink (the original s2s): each message is XADDed to its target
//! stream(s), then XACKed (and XDELed with `ack_del`) at the source.
//! At-least-once: the ack follows the confirmed XADDs.
//!
//! Routing ([`Router`]) picks a message's targets from `routes[route_by]`,
//! a template (`"jobs.{task_for}"`), or `default`; a message none of them
//! places is dead-lettered (kind `route`).
//!
//! A target that is a sharded stream (`[streams."name"] shards = N`) is
//! resolved per message to one of its shards ([`crate::redis::sharder::Sharder`]):
//! by the hash of its `shard_by` field, or round-robin; each shard has the
//! stream's cap.
//!
//! Backpressure: a target may have a `max_len`. What counts toward it is
//! set by `capacity` ([`Capacity`]): by default the entries still to be
//! processed downstream (the slowest target group's lag + pending, or XLEN
//! for a target without a group), else XLEN. The committer writes only as
//! many entries as fit under each cap; when a target is full the flow
//! pauses ([`Pause`]: the reader stops issuing XREADGROUP, the claim loop
//! stops claiming, nothing is acked) and resumes once the target has
//! drained below its cap. Nothing is trimmed: sluice never XADDs with MAXLEN.
//! While paused, the entries held stay pending under this consumer, whose
//! claim loop keeps refreshing them so no other replica takes them over.
//!
//! The cap holds across replicas: entries for a capped target are added by
//! a script ([`ADD_UNDER_CAP`]) that counts the target and adds only what
//! fits, in one step on the target's node, so replicas that find room at
//! the same moment cannot together pass the cap (overshoot: none). A
//! replica that finds the room taken waits `check_every` and tries again.
//!
//! Templated targets are remembered in the router's registry, at most
//! `max_targets` of them: at the limit, targets that no batch in flight
//! uses are forgotten (metric `sluice_stream_sink_targets_evicted_total`)
//! and built again when a message names them; nothing is lost.

pub mod once;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{CustomCommand, Key, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::{BatchConfig, Capacity, Config, OnSuccess, StreamSinkConfig, Targets};
use crate::obs::metrics::FlowMetrics;
use crate::redis::dead_letter::{dead_letter_and_ack, DeadLetter};
use crate::redis::{commands, Message};
use crate::sink::clickhouse::commit::Abandoned;
use crate::template::{self, Syntax};

/// Longest value a template placeholder may take.
const MAX_ROUTE_VALUE: usize = 128;
/// Most cached template expansions (cleared when reached).
const ROUTE_CACHE: usize = 10_000;
/// Most entries one [`ADD_UNDER_CAP`] call adds (a script holds Redis while
/// it runs: 500 XADDs take about a millisecond).
const SCRIPT_ENTRIES: usize = 500;
/// Fields past which an entry is added by a script call of its own: Lua
/// unpacks at most about 8,000 values into one XADD.
const SCRIPT_MAX_FIELDS: usize = 3_900;

/// Counts a capped target's entries toward its cap and adds, in order, as
/// many of the given entries as fit, in one step on the target's node.
/// KEYS[1]: the target. ARGV[1]: the cap; ARGV[2]: `lag` or `length`
/// ([`Capacity`]); then per entry its field count n and n field/value pairs.
/// Returns {entries added, count before adding}.
///
/// `lag`: for each consumer group of the target, lag + pending (capped at
/// XLEN: Redis's lag can still count trimmed entries; XLEN when Redis
/// reports no lag, after an XDEL among unread entries); the largest wins.
/// A target without a group counts XLEN.
pub const ADD_UNDER_CAP: &str = r#"
local len = redis.call('XLEN', KEYS[1])
local used = len
if ARGV[2] == 'lag' and len > 0 then
  local worst = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local lag, pending = nil, 0
    for i = 1, #g, 2 do
      if g[i] == 'lag' then lag = g[i + 1] elseif g[i] == 'pending' then pending = g[i + 1] end
    end
    local n = len
    if lag then n = math.min(len, lag + pending) end
    if not worst or n > worst then worst = n end
  end
  if worst then used = worst end
end
local room = tonumber(ARGV[1]) - used
local added, i = 0, 3
while i <= #ARGV and added < room do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * n))
  added = added + 1
  i = i + 1 + 2 * n
end
return {added, used}
"#;
static ADD_UNDER_CAP_S: OnceLock<Script> = OnceLock::new();

/// Adds the given entries to an uncapped target, in order. KEYS[1]: the
/// target; ARGV: per entry its field count n and n field/value pairs.
pub const ADD_ALL: &str = r#"
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * n))
  i = i + 1 + 2 * n
end
return 0
"#;
static ADD_ALL_S: OnceLock<Script> = OnceLock::new();

/// The flow-wide pause switch: set while a target is full.
#[derive(Default)]
pub struct Pause {
    paused: AtomicBool,
    resumed: Notify,
}

impl Pause {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn set(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Returns once not paused.
    pub async fn wait_resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }
}

/// A target stream and its cap.
#[derive(Debug)]
pub struct Target {
    pub name: Arc<str>,
    key: Bytes,
    pub max_len: Option<u64>,
}

/// The targets of one message.
pub type RouteSet = Arc<[Arc<Target>]>;

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Field(usize),
}

#[derive(Debug, Clone)]
struct Template {
    pieces: Vec<Piece>,
    max_len: Option<u64>,
}

#[derive(Debug, Clone)]
enum ToRule {
    Static(RouteSet),
    Templates {
        templates: Vec<Template>,
        /// Distinct placeholder field names, in first-use order.
        fields: Vec<Bytes>,
    },
}

/// A flow's stream sink: its routing rules, resolved at start-up.
pub struct StreamSink {
    route_by: Option<Bytes>,
    routes: HashMap<Bytes, RouteSet>,
    to: Option<ToRule>,
    default: Option<RouteSet>,
    /// Caps from `[streams."name"]`, then the sink's `max_len`.
    stream_caps: BTreeMap<String, u64>,
    sink_cap: Option<u64>,
    /// Names a template may not produce: the flow's own and dead-letter streams.
    forbidden: Vec<String>,
    pub check_every: Duration,
    /// What counts toward a cap.
    pub capacity: Capacity,
    /// Most targets the router remembers (see the module docs).
    max_targets: usize,
    /// Which target streams are sharded, and how to pick a shard.
    sharder: crate::redis::sharder::Sharder,
    /// `redis = "<name>"`: the targets' Redis and its name; None = the
    /// flow's own Redis.
    pub target: Option<(Client, String)>,
    /// `delivery = "exactly_once"`: the dedup script on the target.
    pub exactly_once: Option<Arc<crate::sink::stream::once::StreamOnce>>,
}

impl StreamSink {
    pub fn new(
        cfg: &StreamSinkConfig,
        stream_caps: BTreeMap<String, u64>,
        forbidden: Vec<String>,
    ) -> StreamSink {
        let mut sink = StreamSink {
            route_by: cfg
                .route_by
                .as_ref()
                .map(|f| Bytes::copy_from_slice(f.as_bytes())),
            routes: HashMap::new(),
            to: None,
            default: None,
            stream_caps,
            sink_cap: cfg.max_len,
            forbidden,
            check_every: cfg.check_every,
            capacity: cfg.capacity,
            max_targets: cfg.max_targets,
            sharder: crate::redis::sharder::Sharder::default(),
            target: None,
            exactly_once: None,
        };
        let mut registry = HashMap::new();
        for (value, targets) in &cfg.routes {
            let set = sink.static_set(targets, &mut registry);
            sink.routes
                .insert(Bytes::copy_from_slice(value.as_bytes()), set);
        }
        sink.default = cfg
            .default
            .as_ref()
            .map(|t| sink.static_set(t, &mut registry));
        sink.to = cfg.to.as_ref().map(|targets| {
            let templated = targets.0.iter().any(|t| {
                !template::placeholders(&t.stream, Syntax::FIELDS)
                    .unwrap_or_default()
                    .is_empty()
            });
            if !templated {
                return ToRule::Static(sink.static_set(targets, &mut registry));
            }
            let mut fields: Vec<Bytes> = Vec::new();
            let templates = targets
                .0
                .iter()
                .map(|t| Template {
                    pieces: parse_template(&t.stream, &mut fields),
                    max_len: t.max_len,
                })
                .collect();
            ToRule::Templates { templates, fields }
        });
        sink
    }

    /// Writes to sharded targets go to their shards.
    pub fn with_sharder(mut self, sharder: crate::redis::sharder::Sharder) -> StreamSink {
        self.sharder = sharder;
        self
    }

    /// Targets on another Redis (`redis = "<name>"`): XADDs and capacity
    /// checks go to `client`, acks stay on the flow's own.
    pub fn with_target(mut self, client: Client, connection: &str) -> StreamSink {
        self.target = Some((client, connection.to_string()));
        self
    }

    /// Exactly-once writes (see `sink::stream_once`).
    pub fn with_exactly_once(mut self, once: crate::sink::stream::once::StreamOnce) -> StreamSink {
        self.exactly_once = Some(Arc::new(once));
        self
    }

    /// The cap of `name`: the target's own, then `[streams]` (a shard's
    /// from its base stream), then the sink's.
    fn cap(&self, name: &str, own: Option<u64>) -> Option<u64> {
        own.or_else(|| self.stream_caps.get(name).copied())
            .or_else(|| {
                let base =
                    crate::redis::sharder::base_of(name).filter(|b| self.sharder.is_sharded(b))?;
                self.stream_caps.get(base).copied()
            })
            .or(self.sink_cap)
    }

    fn target(
        &self,
        name: &str,
        own_cap: Option<u64>,
        registry: &mut HashMap<String, Arc<Target>>,
    ) -> Arc<Target> {
        registry
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Target {
                    name: Arc::from(name),
                    key: Bytes::copy_from_slice(name.as_bytes()),
                    max_len: self.cap(name, own_cap),
                })
            })
            .clone()
    }

    fn static_set(
        &self,
        targets: &Targets,
        registry: &mut HashMap<String, Arc<Target>>,
    ) -> RouteSet {
        let mut set: Vec<Arc<Target>> = Vec::new();
        for t in &targets.0 {
            let target = self.target(&t.stream, t.max_len, registry);
            if !set.iter().any(|s| Arc::ptr_eq(s, &target)) {
                set.push(target);
            }
        }
        set.into()
    }

    /// A router for one batch loop (it caches template expansions).
    pub fn router(self: &Arc<Self>) -> Router {
        let mut registry = HashMap::new();
        // Share Target objects with the static sets so caps are counted per stream.
        for set in self.routes.values().chain(self.default.iter()) {
            for t in set.iter() {
                registry.insert(t.name.to_string(), t.clone());
            }
        }
        if let Some(ToRule::Static(set)) = &self.to {
            for t in set.iter() {
                registry.insert(t.name.to_string(), t.clone());
            }
        }
        Router {
            sink: self.clone(),
            registry,
            cache: HashMap::new(),
            key: Vec::new(),
            metrics: FlowMetrics::disabled(),
        }
    }
}

/// `text`'s pieces, each placeholder as its index in `fields` (added there
/// on first use).
fn parse_template(text: &str, fields: &mut Vec<Bytes>) -> Vec<Piece> {
    let pieces = template::parse(text, Syntax::FIELDS).expect("validated template");
    pieces
        .into_iter()
        .map(|piece| match piece {
            template::Piece::Literal(s) => Piece::Lit(s.to_string()),
            template::Piece::Placeholder(name) => {
                let index = match fields.iter().position(|f| f.as_ref() == name.as_bytes()) {
                    Some(i) => i,
                    None => {
                        fields.push(Bytes::copy_from_slice(name.as_bytes()));
                        fields.len() - 1
                    }
                };
                Piece::Field(index)
            }
        })
        .collect()
}

/// Why a value cannot be put into a stream name, if it cannot.
fn check_route_value(field: &[u8], value: &[u8]) -> Result<(), String> {
    let field = String::from_utf8_lossy(field);
    let text = std::str::from_utf8(value)
        .map_err(|_| format!("field `{field}` is not UTF-8 and cannot name a stream"))?;
    if text.is_empty() {
        return Err(format!("field `{field}` is empty"));
    }
    if text.len() > MAX_ROUTE_VALUE {
        return Err(format!(
            "field `{field}` is longer than {MAX_ROUTE_VALUE} bytes"
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '{' || c == '}')
    {
        return Err(format!(
            "field `{field}` = {text:?} contains whitespace, braces or control characters"
        ));
    }
    Ok(())
}

/// Picks each message's targets; owned by one batch loop.
pub struct Router {
    sink: Arc<StreamSink>,
    /// One shared [`Target`] per stream name (caps are counted per object),
    /// at most `max_targets` beyond those in use (see [`Router::target`]).
    registry: HashMap<String, Arc<Target>>,
    /// Template expansions keyed by the placeholder values.
    cache: HashMap<Bytes, Result<RouteSet, String>>,
    key: Vec<u8>,
    metrics: FlowMetrics,
}

impl Router {
    /// Reports the registry's size and evictions to `metrics`.
    pub fn with_metrics(mut self, metrics: FlowMetrics) -> Router {
        metrics.stream_sink_targets(self.registry.len(), 0);
        self.metrics = metrics;
        self
    }

    /// How many targets the registry holds.
    pub fn targets(&self) -> usize {
        self.registry.len()
    }

    /// The target object of `name`. A new name at `max_targets` first makes
    /// the router forget the targets nothing else holds: not in a batch
    /// being built or committed, not a static route (a forgotten one is
    /// built again when a message names it). Those in use stay, so one name
    /// never has two objects at once and the registry holds at most
    /// `max_targets` plus the targets of the batches in flight.
    fn target(&mut self, name: &str, own_cap: Option<u64>) -> Arc<Target> {
        if let Some(t) = self.registry.get(name) {
            return t.clone();
        }
        if self.registry.len() >= self.sink.max_targets {
            // Cached expansions hold targets too.
            self.cache.clear();
            let before = self.registry.len();
            self.registry.retain(|_, t| Arc::strong_count(t) > 1);
            let evicted = before - self.registry.len();
            self.metrics
                .stream_sink_targets(self.registry.len(), evicted);
        }
        let sink = self.sink.clone();
        let target = sink.target(name, own_cap, &mut self.registry);
        self.metrics.stream_sink_targets(self.registry.len(), 0);
        target
    }

    /// The targets of `m` (sharded ones resolved to a shard), or why it has none.
    pub fn route(&mut self, m: &Message) -> Result<RouteSet, String> {
        let set = self.route_streams(m)?;
        let sharder = &self.sink.sharder;
        if !set.iter().any(|t| sharder.is_sharded(&t.name)) {
            return Ok(set);
        }
        let sink = self.sink.clone();
        let mut out: Vec<Arc<Target>> = Vec::with_capacity(set.len());
        for t in set.iter() {
            let target = if sink.sharder.is_sharded(&t.name) {
                // Exactly-once: a retry must land on the shard holding its
                // dedup record, so no round-robin.
                let shard = match sink.exactly_once {
                    Some(_) => sink.sharder.pick_by_id(&t.name, &m.fields, &m.id),
                    None => sink.sharder.pick(&t.name, &m.fields),
                };
                self.target(shard, t.max_len)
            } else {
                t.clone()
            };
            out.push(target);
        }
        Ok(out.into())
    }

    /// The target streams of `m` as the rules name them.
    fn route_streams(&mut self, m: &Message) -> Result<RouteSet, String> {
        let sink = &self.sink;
        let mut why = None;
        if let Some(field) = &sink.route_by {
            match m.field(field) {
                Some(v) => {
                    if let Some(set) = sink.routes.get(v.as_ref()) {
                        return Ok(set.clone());
                    }
                    if !sink.routes.is_empty() {
                        why = Some(format!(
                            "`{}` = {:?} matches no route",
                            String::from_utf8_lossy(field),
                            String::from_utf8_lossy(v)
                        ));
                    }
                }
                None => {
                    why = Some(format!(
                        "field `{}` is missing",
                        String::from_utf8_lossy(field)
                    ))
                }
            }
        }
        match &sink.to {
            Some(ToRule::Static(set)) => return Ok(set.clone()),
            Some(ToRule::Templates { .. }) => match self.expand(m) {
                Ok(set) => return Ok(set),
                Err(e) => why = Some(e),
            },
            None => {}
        }
        if let Some(set) = &self.sink.default {
            return Ok(set.clone());
        }
        Err(why.unwrap_or_else(|| "no rule places it".into()) + " and there is no default")
    }

    fn expand(&mut self, m: &Message) -> Result<RouteSet, String> {
        let Some(ToRule::Templates { fields, .. }) = &self.sink.to else {
            unreachable!("called for templates only")
        };
        // The cache key: the placeholder values (0xff-separated; 0xff never
        // occurs in UTF-8, and non-UTF-8 values are refused anyway).
        let single = fields.len() == 1;
        self.key.clear();
        let mut only: Option<&Bytes> = None;
        for f in fields {
            let v = m
                .field(f)
                .ok_or_else(|| format!("field `{}` is missing", String::from_utf8_lossy(f)))?;
            if single {
                only = Some(v);
            } else {
                self.key.extend_from_slice(v);
                self.key.push(0xff);
            }
        }
        let key: &[u8] = match only {
            Some(v) => v,
            None => &self.key,
        };
        if let Some(hit) = self.cache.get(key) {
            return hit.clone();
        }
        let key = Bytes::copy_from_slice(key);
        let result = self.build(m);
        if self.cache.len() >= ROUTE_CACHE {
            self.cache.clear();
        }
        self.cache.insert(key, result.clone());
        result
    }

    fn build(&mut self, m: &Message) -> Result<RouteSet, String> {
        let sink = self.sink.clone();
        let Some(ToRule::Templates { templates, fields }) = &sink.to else {
            unreachable!("called for templates only")
        };
        let mut values = Vec::with_capacity(fields.len());
        for f in fields {
            let v = m.field(f).expect("checked by expand");
            check_route_value(f, v)?;
            values.push(std::str::from_utf8(v).expect("checked"));
        }
        let mut set: Vec<Arc<Target>> = Vec::with_capacity(templates.len());
        for t in templates {
            let mut name = String::new();
            for p in &t.pieces {
                match p {
                    Piece::Lit(s) => name.push_str(s),
                    Piece::Field(i) => name.push_str(values[*i]),
                }
            }
            if sink.forbidden.contains(&name) {
                return Err(format!(
                    "target `{name}` is the flow's own or dead-letter stream"
                ));
            }
            let target = self.target(&name, t.max_len);
            if !set.iter().any(|s| Arc::ptr_eq(s, &target)) {
                set.push(target);
            }
        }
        Ok(set.into())
    }
}

/// A batch being filled: messages and their targets, in read order.
#[derive(Default)]
pub struct StreamBatch {
    messages: Vec<Message>,
    routes: Vec<RouteSet>,
    dead: Vec<DeadLetter>,
    opened: Option<Instant>,
    bytes: usize,
}

/// A batch ready to write.
pub struct SealedStreamBatch {
    pub messages: Vec<Message>,
    pub routes: Vec<RouteSet>,
    pub dead: Vec<DeadLetter>,
}

impl StreamBatch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }

    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    pub fn add(&mut self, router: &mut Router, m: Message) {
        self.opened.get_or_insert_with(Instant::now);
        match router.route(&m) {
            Ok(set) => {
                self.bytes += m.approx_size();
                self.messages.push(m);
                self.routes.push(set);
            }
            Err(why) => self.dead.push(DeadLetter {
                message: m,
                reason: format!("no route: {why}"),
                kind: "route",
            }),
        }
    }

    pub fn add_dead(&mut self, dead: DeadLetter) {
        self.opened.get_or_insert_with(Instant::now);
        self.dead.push(dead);
    }

    pub fn is_full(&self, limits: &BatchConfig) -> bool {
        self.messages.len() + self.dead.len() >= limits.max_rows
            || self.bytes as u64 >= limits.max_bytes.as_u64()
    }

    pub fn seal(&mut self) -> SealedStreamBatch {
        self.opened = None;
        self.bytes = 0;
        SealedStreamBatch {
            messages: std::mem::take(&mut self.messages),
            routes: std::mem::take(&mut self.routes),
            dead: std::mem::take(&mut self.dead),
        }
    }
}

/// The plan lines `sluice check` prints for a stream sink.
pub fn describe(cfg: &StreamSinkConfig, config: &Config) -> Vec<String> {
    let list = |t: &Targets| {
        t.0.iter()
            .map(|t| {
                let cap = t
                    .max_len
                    .or_else(|| config.stream_max_len(&t.stream))
                    .or(cfg.max_len);
                match cap {
                    Some(c) => format!("`{}` (max_len {c})", t.stream),
                    None => format!("`{}`", t.stream),
                }
            })
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut out = Vec::new();
    if let Some(field) = &cfg.route_by {
        out.push(format!("routes by field `{field}`:"));
        for (value, t) in &cfg.routes {
            out.push(format!("  {value:?} → {}", list(t)));
        }
    }
    if let Some(t) = &cfg.to {
        out.push(format!("XADDs to {}", list(t)));
    }
    match &cfg.default {
        Some(t) => out.push(format!("otherwise to {}", list(t))),
        None => out.push("messages no rule places are dead-lettered".into()),
    }
    let counted = match cfg.capacity {
        Capacity::Lag => {
            "entries its groups have not processed (lag + pending; XLEN without a group)"
        }
        Capacity::Length => "XLEN",
    };
    if let Some(name) = cfg
        .redis
        .as_deref()
        .filter(|n| *n != crate::connections::DEFAULT)
    {
        let url = crate::config::redact_url(&config.redis_for(Some(name)).url);
        out.push(format!(
            "targets on redis `{name}` ({url}): XADDs and max_len checks there, acks at the source"
        ));
    }
    out.push(format!(
        "then XACKs at the source; pauses while a target is at its max_len, counting {counted} (re-checked every {:?})",
        cfg.check_every
    ));
    out
}

/// Whether an XADD error is about this message's target (dead-letter) or
/// about Redis (retry). Only a key of the wrong type is the former; OOM,
/// LOADING, connection trouble and anything unknown are retried.
pub fn xadd_error_is_permanent(text: &str) -> bool {
    text.contains("WRONGTYPE")
}

/// The script's error for an entry with too many fields for one Lua call
/// (such an entry is sent alone, so only it is refused).
fn too_many_fields(text: &str) -> bool {
    text.contains("too many results to unpack")
}

/// What one write round left to do.
#[derive(Default)]
struct Round {
    /// Failed (Redis trouble): retried after a backoff.
    failed: Vec<(usize, Arc<Target>)>,
    /// Not added: the target had no room left.
    full: Vec<(usize, Arc<Target>)>,
    /// Refused for good, with the reason.
    refused: Vec<(usize, String)>,
    last_error: String,
}

impl Round {
    fn error(&mut self, i: usize, t: &Arc<Target>, text: String) {
        if xadd_error_is_permanent(&text) {
            self.refused
                .push((i, format!("target `{}`: {text}", t.name)));
        } else {
            self.last_error = text;
            self.failed.push((i, t.clone()));
        }
    }
}

/// A batch on its targets, not yet acked at the source.
pub struct Written {
    landed: Vec<Message>,
    routes: Vec<RouteSet>,
    dead: Vec<DeadLetter>,
    total: usize,
}

/// Writes sealed batches: waits for room, XADDs, then acks.
pub struct StreamCommitter {
    pub flow: String,
    pub group: String,
    pub dead_letter_stream: String,
    pub on_success: OnSuccess,
    /// The source's Redis: acks and dead letters.
    pub redis: Client,
    /// The targets' Redis: XADDs and capacity checks (the same client
    /// unless the sink names another connection).
    pub target: Client,
    pub exactly_once: Option<Arc<crate::sink::stream::once::StreamOnce>>,
    pub metrics: FlowMetrics,
    pub pause: Arc<Pause>,
    pub check_every: Duration,
    /// What counts toward a target's cap.
    pub capacity: Capacity,
    pub hard_stop: CancellationToken,
    /// Whether [`ADD_ALL`] was loaded on the targets' Redis.
    pub add_all_loaded: AtomicBool,
}

/// Stream names compare by pointer first (messages share their flow's `Arc`).
pub fn same_stream(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Consecutive messages with the same source entry: the outputs of one
/// handled message. They are written (and acked) together.
fn group_end(messages: &[Message], start: usize) -> usize {
    let first = &messages[start];
    let mut end = start + 1;
    while end < messages.len()
        && messages[end].id == first.id
        && same_stream(&messages[end].stream, &first.stream)
    {
        end += 1;
    }
    end
}

/// How many messages from `start` fit under the caps, given the targets'
/// current lengths. The first group passes if every capped target it uses
/// has any room at all, so a fan-out wider than a cap cannot stall the flow.
pub fn fit(
    messages: &[Message],
    routes: &[RouteSet],
    start: usize,
    room: &mut [(Arc<Target>, u64)],
) -> usize {
    let mut i = start;
    while i < messages.len() {
        let end = group_end(messages, i);
        let first = i == start;
        let mut need: Vec<(usize, u64)> = Vec::new();
        for set in &routes[i..end] {
            for t in set.iter().filter(|t| t.max_len.is_some()) {
                let slot = room
                    .iter()
                    .position(|(r, _)| Arc::ptr_eq(r, t))
                    .expect("every capped target has a room slot");
                match need.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, n)) => *n += 1,
                    None => need.push((slot, 1)),
                }
            }
        }
        let fits = need.iter().all(|&(slot, n)| {
            let left = room[slot].1;
            if first {
                left > 0
            } else {
                left >= n
            }
        });
        if !fits {
            break;
        }
        for (slot, n) in need {
            room[slot].1 = room[slot].1.saturating_sub(n);
        }
        i = end;
    }
    i
}

impl StreamCommitter {
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.hard_stop.cancelled() => false,
        }
    }

    /// Writes a batch to its targets (waiting for room under caps); what
    /// is left to do is [`Self::settle`]: ack the landed messages and
    /// dead-letter the refused ones.
    pub async fn write_batch(&self, batch: SealedStreamBatch) -> Result<Written, Abandoned> {
        let total = batch.messages.len() + batch.dead.len();
        let mut dead = batch.dead;
        let mut refused = vec![false; batch.messages.len()];
        let mut start = 0;
        while start < batch.messages.len() {
            let end = self
                .wait_for_room(&batch.messages, &batch.routes, start)
                .await
                .map_err(|_| Abandoned(total))?;
            let bad = self
                .write(&batch.messages[start..end], &batch.routes[start..end])
                .await
                .map_err(|_| Abandoned(total))?;
            for (i, reason) in bad {
                refused[start + i] = true;
                dead.push(DeadLetter {
                    message: batch.messages[start + i].clone(),
                    reason,
                    kind: "route",
                });
            }
            start = end;
        }
        // A refused message is acked through its dead letter.
        let (landed, routes): (Vec<Message>, Vec<RouteSet>) = batch
            .messages
            .into_iter()
            .zip(batch.routes)
            .zip(refused)
            .filter_map(|(m, r)| (!r).then_some(m))
            .unzip();
        // Routes are needed after the ack only to forget exactly-once
        // records; kept otherwise they would pin templated targets in the
        // router's registry while the batch settles.
        let routes = if self.exactly_once.is_some() {
            routes
        } else {
            Vec::new()
        };
        Ok(Written {
            landed,
            routes,
            dead,
            total,
        })
    }

    /// Dead-letters and acks a written batch at the source.
    pub async fn settle(&self, written: Written) -> Result<(), Abandoned> {
        let Written {
            landed,
            routes,
            dead,
            total,
        } = written;
        let landed = self
            .finish(landed, dead)
            .await
            .map_err(|_| Abandoned(total))?;
        if let Some(once) = &self.exactly_once {
            // Acked: no retry will look for these records again.
            once.forget(&self.target, &landed, &routes).await;
        }
        Ok(())
    }

    /// Waits until at least one message from `start` fits; returns the end
    /// of the run that fits. Pauses the flow while a target is full.
    async fn wait_for_room(
        &self,
        messages: &[Message],
        routes: &[RouteSet],
        start: usize,
    ) -> Result<usize, ()> {
        let mut capped: Vec<(Arc<Target>, u64)> = Vec::new();
        for set in &routes[start..] {
            for t in set.iter() {
                if t.max_len.is_some() && !capped.iter().any(|(c, _)| Arc::ptr_eq(c, t)) {
                    capped.push((t.clone(), 0));
                }
            }
        }
        if capped.is_empty() {
            return Ok(messages.len());
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut paused_at: Option<Instant> = None;
        loop {
            let lens = match self.counted(&capped).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(flow = %self.flow, %error, "counting the entries of capped targets failed; retrying");
                    if !self.wait(backoff.next_delay()).await {
                        return Err(());
                    }
                    continue;
                }
            };
            let mut room: Vec<(Arc<Target>, u64)> = capped
                .iter()
                .zip(&lens)
                .map(|((t, _), len)| (t.clone(), t.max_len.expect("capped").saturating_sub(*len)))
                .collect();
            let end = fit(messages, routes, start, &mut room);
            if end > start {
                if let Some(since) = paused_at {
                    self.pause.set(false);
                    tracing::info!(flow = %self.flow, paused_for = ?since.elapsed(), "target drained below max_len; flow resumed");
                }
                return Ok(end);
            }
            if paused_at.is_none() {
                paused_at = Some(Instant::now());
                self.pause.set(true);
                let full: Vec<String> = capped
                    .iter()
                    .zip(&lens)
                    .filter(|((t, _), len)| **len >= t.max_len.expect("capped"))
                    .map(|((t, _), len)| {
                        format!("{} ({len}/{})", t.name, t.max_len.expect("capped"))
                    })
                    .collect();
                tracing::warn!(flow = %self.flow, targets = ?full, capacity = self.capacity.as_str(), held = messages.len() - start, "target stream full (count at max_len); flow paused: no reads, no acks until it drains");
            }
            if !self.wait(self.check_every).await {
                self.pause.set(false);
                return Err(());
            }
        }
    }

    /// What counts toward each target's cap now ([`ADD_UNDER_CAP`] adding
    /// nothing), all targets at once. A key of the wrong type counts 0: the
    /// write then refuses its messages (dead letters) instead of waiting.
    async fn counted(&self, targets: &[(Arc<Target>, u64)]) -> Result<Vec<u64>, String> {
        let counts =
            futures_util::future::join_all(targets.iter().map(|(t, _)| self.add_under_cap(t, &[])))
                .await;
        counts
            .into_iter()
            .map(|r| match r {
                Ok((_, used)) => Ok(used),
                Err(e) if xadd_error_is_permanent(&e) => Ok(0),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// One [`ADD_UNDER_CAP`] call: adds as many of `messages` to `target`
    /// as fit under its cap; returns (added, counted before adding).
    async fn add_under_cap(
        &self,
        target: &Target,
        messages: &[&Message],
    ) -> Result<(usize, u64), String> {
        let cap = target.max_len.expect("only capped targets");
        let head = vec![
            Value::Integer(cap.min(i64::MAX as u64) as i64),
            self.capacity.as_str().into(),
        ];
        let args = entry_args(messages.iter().copied(), head);
        let script = ADD_UNDER_CAP_S.get_or_init(|| Script::from_lua(ADD_UNDER_CAP));
        let reply: Value = script
            .evalsha_with_reload(&self.target, vec![Key::from(target.key.clone())], args)
            .await
            .map_err(|e| e.to_string())?;
        let (added, used) = match &reply {
            Value::Array(v) if v.len() == 2 => (v[0].as_u64(), v[1].as_u64()),
            _ => (None, None),
        };
        match (added, used) {
            (Some(added), Some(used)) => Ok((added as usize, used)),
            _ => Err(format!(
                "unexpected reply from the capacity script: {reply:?}"
            )),
        }
    }

    /// XADDs every (message, target) pair, retrying failed pairs only (so a
    /// retry does not duplicate what landed). Returns the messages refused
    /// for good (target of the wrong type), with the reason.
    ///
    /// Pairs for capped targets go through [`ADD_UNDER_CAP`]; one whose
    /// room another replica took since [`Self::wait_for_room`] counted is
    /// written once the target has room again (the flow pauses meanwhile).
    async fn write(
        &self,
        messages: &[Message],
        routes: &[RouteSet],
    ) -> Result<Vec<(usize, String)>, ()> {
        let mut todo: Vec<(usize, Arc<Target>)> = Vec::with_capacity(messages.len());
        for (i, set) in routes.iter().enumerate() {
            for t in set.iter() {
                todo.push((i, t.clone()));
            }
        }
        if let Some(once) = &self.exactly_once {
            return once
                .write(&self.target, messages, routes, &self.hard_stop)
                .await;
        }
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut paused = false;
        while !todo.is_empty() {
            let mut round = Round::default();
            let (plain, capped): (Vec<_>, Vec<_>) =
                todo.into_iter().partition(|(_, t)| t.max_len.is_none());
            self.write_plain(messages, plain, &mut round).await;
            self.write_capped(messages, capped, &mut round).await;
            refused.append(&mut round.refused);
            let waited = if !round.failed.is_empty() {
                tracing::warn!(flow = %self.flow, pending_writes = round.failed.len(), error = %round.last_error, "XADD to target streams failed; retrying those (nothing acked)");
                self.wait(backoff.next_delay()).await
            } else if !round.full.is_empty() {
                if !paused {
                    paused = true;
                    self.pause.set(true);
                    tracing::info!(flow = %self.flow, waiting = round.full.len(), "another replica took the room left in a capped target; flow paused until it has room again");
                }
                self.wait(self.check_every).await
            } else {
                true
            };
            if !waited {
                self.pause.set(false);
                return Err(());
            }
            todo = round.failed;
            todo.append(&mut round.full);
            // Entries keep their order within each target.
            todo.sort_by_key(|(i, _)| *i);
        }
        if paused {
            self.pause.set(false);
        }
        refused.sort_by_key(|(i, _)| *i);
        refused.dedup_by_key(|(i, _)| *i);
        Ok(refused)
    }

    /// Targets without a cap: each target's entries in order, in calls of
    /// [`ADD_ALL`] of at most [`SCRIPT_ENTRIES`] entries, all in one
    /// pipeline. One call per 500 entries instead of one XADD each: the
    /// client's cost per command (building, encoding and answering it) was
    /// half the worker's CPU per forwarded entry (`benches/dataflow.rs`).
    /// A call adds all its entries or, failing on its first XADD (a key of
    /// the wrong type, out of memory), none.
    async fn write_plain(
        &self,
        messages: &[Message],
        pairs: Vec<(usize, Arc<Target>)>,
        round: &mut Round,
    ) {
        let script = ADD_ALL_S.get_or_init(|| Script::from_lua(ADD_ALL));
        if !self.add_all_loaded.load(Ordering::Acquire) {
            match script.load(&self.target).await {
                Ok(()) => self.add_all_loaded.store(true, Ordering::Release),
                Err(e) => round.last_error = e.to_string(),
            }
        }
        let pipeline = self.target.pipeline();
        let mut calls: Vec<(Arc<Target>, Vec<usize>)> = Vec::new();
        for (t, ids) in by_target(pairs) {
            let mut done = 0;
            while done < ids.len() {
                let n = chunk_len(messages, &ids[done..]);
                let chunk = ids[done..done + n].to_vec();
                done += n;
                let head = vec![
                    Value::String(script.sha1().clone()),
                    Value::Integer(1),
                    Value::Bytes(t.key.clone()),
                ];
                let all = entry_args(chunk.iter().map(|&i| &messages[i]), head);
                let slot = fred::util::redis_keyslot(&t.key);
                let evalsha = CustomCommand::new_static(
                    "EVALSHA",
                    fred::types::ClusterHash::Custom(slot),
                    false,
                );
                if let Err(e) = pipeline.custom::<Value, _>(evalsha, all).await {
                    round.last_error = e.to_string();
                }
                calls.push((t.clone(), chunk));
            }
        }
        let replies = pipeline.try_all::<Value>().await;
        let mut reload = false;
        for (k, (t, chunk)) in calls.iter().enumerate() {
            let error = match replies.get(k) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => e.to_string(),
                None => round.last_error.clone(),
            };
            reload |= error.contains("NOSCRIPT");
            if too_many_fields(&error) && chunk.len() == 1 {
                round
                    .refused
                    .push((chunk[0], format!("target `{}`: {error}", t.name)));
                continue;
            }
            for &i in chunk {
                round.error(i, t, error.clone());
            }
        }
        if reload {
            // Flushed from Redis's script cache: loaded again for the retry.
            if let Err(e) = script.load(&self.target).await {
                round.last_error = e.to_string();
            }
        }
    }

    /// Capped targets, all at once; each target's entries in order, in
    /// script calls of at most [`SCRIPT_ENTRIES`], stopping at the first
    /// call that finds no more room.
    async fn write_capped(
        &self,
        messages: &[Message],
        pairs: Vec<(usize, Arc<Target>)>,
        round: &mut Round,
    ) {
        let by_target = by_target(pairs);
        let outcomes = futures_util::future::join_all(
            by_target
                .iter()
                .map(|(t, ids)| self.add_all_under_cap(messages, t, ids)),
        )
        .await;
        for ((t, ids), (added, error)) in by_target.iter().zip(outcomes) {
            let mut rest = ids[added..].iter();
            match error {
                None => round.full.extend(rest.map(|&i| (i, t.clone()))),
                Some(e) => {
                    // Too many fields: that entry was sent alone; only it is refused.
                    if too_many_fields(&e) {
                        if let Some(&i) = rest.next() {
                            round.refused.push((i, format!("target `{}`: {e}", t.name)));
                        }
                    }
                    for &i in rest {
                        round.error(i, t, e.clone());
                    }
                }
            }
        }
    }

    /// Adds `ids` (in order) to `target` until it is full or a call fails;
    /// returns how many were added and the error, if any.
    async fn add_all_under_cap(
        &self,
        messages: &[Message],
        target: &Target,
        ids: &[usize],
    ) -> (usize, Option<String>) {
        let mut done = 0;
        while done < ids.len() {
            let n = chunk_len(messages, &ids[done..]);
            let chunk: Vec<&Message> = ids[done..done + n].iter().map(|&i| &messages[i]).collect();
            match self.add_under_cap(target, &chunk).await {
                Ok((added, _)) => {
                    done += added;
                    if added < chunk.len() {
                        break;
                    }
                }
                Err(e) => return (done, Some(e)),
            }
        }
        (done, None)
    }

    /// Dead-letters refused messages, then acks the rest, retrying Redis
    /// errors until the hard stop. Returns the acked messages.
    async fn finish(
        &self,
        landed: Vec<Message>,
        dead: Vec<DeadLetter>,
    ) -> Result<Vec<Message>, ()> {
        let delete = self.on_success == OnSuccess::AckDel;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while let Err(error) = dead_letter_and_ack(
            &self.redis,
            &self.dead_letter_stream,
            &self.group,
            &dead,
            delete,
        )
        .await
        {
            tracing::warn!(flow = %self.flow, %error, "writing dead letters failed; retrying");
            if !self.wait(backoff.next_delay()).await {
                return Err(());
            }
        }
        for d in &dead {
            tracing::warn!(flow = %self.flow, stream = %d.message.stream, id = %String::from_utf8_lossy(&d.message.id), reason = %d.reason, "dead-lettered");
            self.metrics.dead_lettered(d.kind);
        }
        let mut by_stream: Vec<(Arc<str>, Vec<Bytes>)> = Vec::new();
        for m in &landed {
            match by_stream
                .iter_mut()
                .find(|(s, _)| same_stream(s, &m.stream))
            {
                Some((_, ids)) => {
                    // Outputs of one source share its id: ack it once.
                    if ids.last() != Some(&m.id) {
                        ids.push(m.id.clone())
                    }
                }
                None => by_stream.push((m.stream.clone(), vec![m.id.clone()])),
            }
        }
        for (stream, ids) in &by_stream {
            backoff.reset();
            while let Err(error) =
                commands::ack(&self.redis, stream, &self.group, ids, delete).await
            {
                tracing::warn!(flow = %self.flow, %stream, %error, "XACK failed; retrying");
                if !self.wait(backoff.next_delay()).await {
                    return Err(());
                }
            }
            self.metrics.acked(stream, ids.len());
        }
        self.metrics.end_to_end(&landed);
        Ok(landed)
    }
}

/// (message, target) pairs grouped by target, each target's in order
/// (keyed by the target object's address: one object per name).
fn by_target(pairs: Vec<(usize, Arc<Target>)>) -> Vec<(Arc<Target>, Vec<usize>)> {
    let mut slot: HashMap<usize, usize> = HashMap::new();
    let mut out: Vec<(Arc<Target>, Vec<usize>)> = Vec::new();
    for (i, t) in pairs {
        let n = *slot.entry(Arc::as_ptr(&t) as usize).or_insert_with(|| {
            out.push((t.clone(), Vec::new()));
            out.len() - 1
        });
        out[n].1.push(i);
    }
    out
}

/// How many of `ids` (at least one) the next script call takes: at most
/// [`SCRIPT_ENTRIES`], and an entry over [`SCRIPT_MAX_FIELDS`] alone.
fn chunk_len(messages: &[Message], ids: &[usize]) -> usize {
    let mut n = 0;
    for &i in ids {
        let alone = messages[i].fields.len() > SCRIPT_MAX_FIELDS;
        if n == SCRIPT_ENTRIES || (alone && n > 0) {
            break;
        }
        n += 1;
        if alone {
            break;
        }
    }
    n
}

/// `args` followed by each message's field count and field/value pairs
/// (the scripts' per-entry layout).
fn entry_args<'a>(
    messages: impl Iterator<Item = &'a Message> + Clone,
    mut args: Vec<Value>,
) -> Vec<Value> {
    let values: usize = messages.clone().map(|m| 1 + 2 * m.fields.len()).sum();
    args.reserve(values);
    for m in messages {
        args.push(Value::Integer(m.fields.len() as i64));
        for (k, v) in &m.fields {
            args.push(Value::Bytes(k.clone()));
            args.push(Value::Bytes(v.clone()));
        }
    }
    args
}

/// A flow's batch and commit loops for a stream sink. Returns false if a
/// batch had to be abandoned at the hard stop.
pub async fn run(
    flow: Arc<crate::flow::Flow>,
    sink: Arc<StreamSink>,
    mut chunks: mpsc::Receiver<Vec<Message>>,
    hard_stop: CancellationToken,
) -> bool {
    let (batch_tx, mut batch_rx) = mpsc::channel::<SealedStreamBatch>(1);
    let committer = StreamCommitter {
        flow: flow.cfg.name.clone(),
        group: flow.cfg.group.clone(),
        dead_letter_stream: flow.cfg.dead_letter_stream(),
        on_success: flow.cfg.on_success,
        redis: flow.command_client.clone(),
        target: match &sink.target {
            Some((client, _)) => client.clone(),
            None => flow.command_client.clone(),
        },
        exactly_once: sink.exactly_once.clone(),
        metrics: flow.metrics.clone(),
        pause: flow.pause.clone(),
        check_every: sink.check_every,
        capacity: sink.capacity,
        hard_stop,
        add_all_loaded: AtomicBool::new(false),
    };
    // A batch's acks run while the next batch is written (one batch
    // settling at a time): a batch is acked only after its own XADDs, and
    // the source round trip no longer sits between two batches' writes.
    let committer = Arc::new(committer);
    let commit_task = tokio::spawn(async move {
        let mut all_committed = true;
        let mut settling: Option<tokio::task::JoinHandle<Result<(), Abandoned>>> = None;
        let flow_name = committer.flow.clone();
        let settled = |r: Option<Result<Result<(), Abandoned>, tokio::task::JoinError>>| match r {
            None | Some(Ok(Ok(()))) => true,
            Some(Ok(Err(e))) => {
                tracing::error!(flow = %flow_name, error = %e);
                false
            }
            Some(Err(e)) => {
                tracing::error!(flow = %flow_name, error = %e, "acking a batch failed");
                false
            }
        };
        while let Some(batch) = batch_rx.recv().await {
            if batch.messages.is_empty() && batch.dead.is_empty() {
                continue;
            }
            let span = tracing::info_span!(
                "batch",
                flow = %committer.flow,
                rows = batch.messages.len(),
                dead = batch.dead.len(),
            );
            crate::obs::telemetry::continue_producer_traces(&span, &batch.messages);
            let written = committer.write_batch(batch).instrument(span.clone()).await;
            let previous = match settling.take() {
                Some(task) => Some(task.await),
                None => None,
            };
            all_committed &= settled(previous);
            match written {
                Ok(written) => {
                    let c = committer.clone();
                    settling = Some(tokio::spawn(
                        async move { c.settle(written).await }.instrument(span),
                    ));
                }
                Err(e) => {
                    tracing::error!(flow = %committer.flow, error = %e);
                    all_committed = false;
                }
            }
        }
        let last = match settling.take() {
            Some(task) => Some(task.await),
            None => None,
        };
        all_committed &= settled(last);
        // Nothing is in flight any more: the kept exactly-once records go.
        if let (Some(once), true) = (&committer.exactly_once, all_committed) {
            once.flush(&committer.target).await;
        }
        all_committed
    });

    let mut router = sink.router().with_metrics(flow.metrics.clone());
    let mut open = StreamBatch::default();
    let limits = &flow.cfg.batch;
    'outer: loop {
        let deadline = open
            .opened()
            .map(|t| tokio::time::Instant::from_std(t + limits.max_wait));
        let chunk = match deadline {
            Some(deadline) => tokio::select! {
                c = chunks.recv() => c,
                _ = tokio::time::sleep_until(deadline) => {
                    if batch_tx.send(open.seal()).await.is_err() { break; }
                    continue;
                }
            },
            None => chunks.recv().await,
        };
        let Some(chunk) = chunk else { break };
        let mut chunk = chunk.into_iter().peekable();
        while let Some(m) = chunk.next() {
            let source = (m.stream.clone(), m.id.clone());
            match crate::flow::over_max_deliveries(&m, flow.cfg.max_deliveries) {
                Some(reason) => open.add_dead(DeadLetter {
                    message: m,
                    reason,
                    kind: "max_deliveries",
                }),
                None => open.add(&mut router, m),
            }
            // Never seal between outputs of one source entry.
            let boundary = chunk
                .peek()
                .is_none_or(|n| n.id != source.1 || !same_stream(&n.stream, &source.0));
            if boundary && open.is_full(limits) && batch_tx.send(open.seal()).await.is_err() {
                break 'outer;
            }
        }
    }
    if !open.is_empty() {
        let _ = batch_tx.send(open.seal()).await;
    }
    drop(batch_tx);
    commit_task.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetSpec;

    fn msg(id: &str, fields: &[(&str, &str)]) -> Message {
        Message {
            stream: Arc::from("src"),
            id: Bytes::copy_from_slice(id.as_bytes()),
            fields: fields
                .iter()
                .map(|(k, v)| {
                    (
                        Bytes::copy_from_slice(k.as_bytes()),
                        Bytes::copy_from_slice(v.as_bytes()),
                    )
                })
                .collect(),
            deliveries: 1,
        }
    }

    fn targets(names: &[&str]) -> Targets {
        Targets(
            names
                .iter()
                .map(|n| TargetSpec {
                    stream: n.to_string(),
                    max_len: None,
                })
                .collect(),
        )
    }

    fn sink_cfg(text: &str) -> StreamSinkConfig {
        toml::from_str(text).unwrap()
    }

    fn names(set: &RouteSet) -> Vec<&str> {
        set.iter().map(|t| &*t.name).collect()
    }

    fn router(cfg: &StreamSinkConfig) -> Router {
        Arc::new(StreamSink::new(
            cfg,
            BTreeMap::from([("jobs.b".to_string(), 7)]),
            vec!["src".into(), "src:dead".into()],
        ))
        .router()
    }

    #[test]
    fn map_then_template_then_default() {
        let cfg = sink_cfg(
            r#"route_by = "task_for"
to = "jobs.{task_for}"
routes = { a = ["jobs.a", "audit"] }
default = "jobs.other"
max_len = 100"#,
        );
        let mut r = router(&cfg);
        let a = r.route(&msg("1-0", &[("task_for", "a")])).unwrap();
        assert_eq!(names(&a), ["jobs.a", "audit"]);
        let b = r.route(&msg("2-0", &[("task_for", "b")])).unwrap();
        assert_eq!(names(&b), ["jobs.b"]);
        assert_eq!(b[0].max_len, Some(7), "[streams] cap wins over the sink's");
        assert_eq!(a[0].max_len, Some(100));
        let missing = r.route(&msg("3-0", &[("x", "1")])).unwrap();
        assert_eq!(names(&missing), ["jobs.other"]);
        let bad = r.route(&msg("4-0", &[("task_for", "a b")])).unwrap();
        assert_eq!(names(&bad), ["jobs.other"]);
        // Same target object for the same name, so caps are counted together.
        let b2 = r.route(&msg("5-0", &[("task_for", "b")])).unwrap();
        assert!(Arc::ptr_eq(&b[0], &b2[0]));
    }

    #[test]
    fn unroutable_messages_say_why() {
        let cfg = sink_cfg(
            r#"route_by = "task_for"
routes = { a = "jobs.a" }"#,
        );
        let mut r = router(&cfg);
        let e = r.route(&msg("1-0", &[("task_for", "z")])).unwrap_err();
        assert!(
            e.contains("\"z\" matches no route") && e.contains("no default"),
            "{e}"
        );
        let e = r.route(&msg("1-0", &[("other", "z")])).unwrap_err();
        assert!(e.contains("`task_for` is missing"), "{e}");
        let cfg = sink_cfg(r#"to = "{t}""#);
        let mut r = router(&cfg);
        let e = r.route(&msg("1-0", &[("t", "src")])).unwrap_err();
        assert!(e.contains("own or dead-letter"), "{e}");
        let e = r.route(&msg("1-0", &[("t", "")])).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn templates_with_several_fields_and_fan_out() {
        let cfg = StreamSinkConfig {
            to: Some(targets(&["{region}.{kind}", "all.{kind}"])),
            route_by: None,
            routes: Default::default(),
            default: None,
            max_len: None,
            check_every: Duration::from_millis(10),
            capacity: Capacity::Lag,
            max_targets: 10_000,
            redis: None,
        };
        let mut r = router(&cfg);
        let set = r
            .route(&msg("1-0", &[("kind", "click"), ("region", "eu")]))
            .unwrap();
        assert_eq!(names(&set), ["eu.click", "all.click"]);
        let set = r
            .route(&msg("2-0", &[("kind", "view"), ("region", "eu")]))
            .unwrap();
        assert_eq!(names(&set), ["eu.view", "all.view"]);
        assert!(r.route(&msg("3-0", &[("kind", "view")])).is_err());
    }

    #[test]
    fn router_forgets_idle_targets_at_max_targets() {
        let mut cfg = sink_cfg("to = \"out.{k}\"\nmax_len = 10");
        cfg.max_targets = 3;
        let mut r = router(&cfg);
        // Routed and dropped (no batch holds them): idle, forgotten at the cap.
        for i in 0..20 {
            r.route(&msg("1-0", &[("k", &i.to_string())])).unwrap();
            assert!(r.targets() <= 3, "{} targets", r.targets());
        }
        // Held by a batch in flight: kept, one object per name.
        let held: Vec<RouteSet> = (0..5)
            .map(|i| r.route(&msg("2-0", &[("k", &format!("h{i}"))])).unwrap())
            .collect();
        assert_eq!(r.targets(), 5, "targets in use are never forgotten");
        let again = r.route(&msg("3-0", &[("k", "h0")])).unwrap();
        assert!(Arc::ptr_eq(&again[0], &held[0][0]));
        drop(held);
        drop(again);
        r.route(&msg("4-0", &[("k", "new")])).unwrap();
        assert_eq!(r.targets(), 1, "idle ones go once the batches are done");
    }

    #[test]
    fn fit_respects_caps_and_keeps_output_groups_together() {
        let cfg = sink_cfg("to = \"t\"\nmax_len = 3");
        let mut r = router(&cfg);
        let ms = vec![
            msg("1-0", &[("a", "1")]),
            msg("2-0", &[("a", "2")]),
            msg("2-0", &[("a", "2b")]),
            msg("3-0", &[("a", "3")]),
        ];
        let routes: Vec<RouteSet> = ms.iter().map(|m| r.route(m).unwrap()).collect();
        let t = routes[0][0].clone();
        // Room for 2: message 1 fits, the group of two outputs of 2-0 does not.
        assert_eq!(fit(&ms, &routes, 0, &mut [(t.clone(), 2)]), 1);
        assert_eq!(fit(&ms, &routes, 0, &mut [(t.clone(), 3)]), 3);
        assert_eq!(fit(&ms, &routes, 0, &mut [(t.clone(), 0)]), 0);
        // A group at the start needs only some room.
        assert_eq!(fit(&ms, &routes, 1, &mut [(t.clone(), 1)]), 3);
        assert_eq!(fit(&ms, &routes, 0, &mut [(t, 100)]), 4);
    }

    #[test]
    fn only_wrong_type_is_permanent() {
        assert!(xadd_error_is_permanent(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
        assert!(!xadd_error_is_permanent(
            "OOM command not allowed when used memory > 'maxmemory'"
        ));
        assert!(!xadd_error_is_permanent("connection closed"));
    }

    #[tokio::test]
    async fn pause_wakes_waiters() {
        let p = Arc::new(Pause::default());
        p.set(true);
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait_resumed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        p.set(false);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
