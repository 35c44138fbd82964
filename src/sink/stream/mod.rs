//! The stream sink: each message is XADDed to its target
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
//!
//! The parts: routing ([`route`]), the batch being filled ([`batch`]), the
//! committer that writes and settles it ([`commit`]), its pipelined plain
//! XADDs on a direct connection ([`plain`]), the pause switch ([`pause`])
//! and exactly-once writes ([`once`]). The loop around them is
//! the flow's ([`crate::flow::batcher`]).

mod batch;
mod commit;
pub(crate) mod once;
mod pause;
mod plain;
mod route;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::Client;

use crate::config::{redact_url, Capacity, Config, StreamSinkConfig, Targets};
use crate::connections::DEFAULT;
use crate::redis::direct::StreamConnection;
use crate::redis::sharder::Sharder;
use crate::sink::stream::once::StreamOnce;
use crate::sink::stream::route::ToRule;

pub(crate) use commit::xadd_error_is_permanent;
pub(crate) use pause::Pause;
pub(crate) use route::RouteSet;

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
    sharder: Sharder,
    /// `redis = "<name>"`: the targets' Redis and its name; None = the
    /// flow's own Redis.
    pub target: Option<(Client, String)>,
    /// `delivery = "exactly_once"`: the dedup script on the target.
    pub exactly_once: Option<Arc<StreamOnce>>,
    /// The connection uncapped at-least-once XADDs go on ([`commit`]).
    pub(crate) writes: Option<Arc<StreamConnection>>,
}

impl StreamSink {
    /// Writes to sharded targets go to their shards.
    pub fn with_sharder(mut self, sharder: Sharder) -> StreamSink {
        self.sharder = sharder;
        self
    }

    /// Targets on another Redis (`redis = "<name>"`): XADDs and capacity
    /// checks go to `client`, acks stay on the flow's own.
    pub fn with_target(mut self, client: Client, connection: &str) -> StreamSink {
        self.target = Some((client, connection.to_string()));
        self
    }

    /// Uncapped at-least-once XADDs go on `writes` (pipelined plain XADDs
    /// when it is a direct connection).
    pub(crate) fn with_writes(mut self, writes: StreamConnection) -> StreamSink {
        self.writes = Some(Arc::new(writes));
        self
    }

    /// Exactly-once writes ([`once`]).
    pub fn with_exactly_once(mut self, once: StreamOnce) -> StreamSink {
        self.exactly_once = Some(Arc::new(once));
        self
    }
}

/// The plan lines `sluice check` prints for a stream sink.
pub(crate) fn describe(cfg: &StreamSinkConfig, config: &Config) -> Vec<String> {
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
    if let Some(name) = cfg.redis.as_deref().filter(|n| *n != DEFAULT) {
        let url = redact_url(&config.redis_for(Some(name)).url);
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
