//! Routing: which target streams each message goes to, from
//! `routes[route_by]`, a template (`"jobs.{task_for}"`) or `default`; the
//! targets' caps; the [`Router`] that caches template expansions and
//! remembers at most `max_targets` templated targets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{StreamSinkConfig, Targets};
use crate::obs::metrics::FlowMetrics;
use crate::redis::sharder::{base_of, Sharder};
use crate::redis::Message;
use crate::sink::stream::StreamSink;
use crate::template::{self, Syntax};

/// Longest value a template placeholder may take.
const MAX_ROUTE_VALUE: usize = 128;
/// Most cached template expansions (cleared when reached).
const ROUTE_CACHE: usize = 10_000;

/// A target stream and its cap.
#[derive(Debug)]
pub struct Target {
    pub name: Arc<str>,
    pub(super) key: Bytes,
    pub max_len: Option<u64>,
}

/// The targets of one message.
pub(crate) type RouteSet = Arc<[Arc<Target>]>;

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Field(usize),
}

#[derive(Debug, Clone)]
pub(super) struct Template {
    pieces: Vec<Piece>,
    max_len: Option<u64>,
}

#[derive(Debug, Clone)]
pub(super) enum ToRule {
    Static(RouteSet),
    Templates {
        templates: Vec<Template>,
        /// Distinct placeholder field names, in first-use order.
        fields: Vec<Bytes>,
    },
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
            sharder: Sharder::default(),
            target: None,
            exactly_once: None,
            writes: None,
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

    /// The cap of `name`: the target's own, then `[streams]` (a shard's
    /// from its base stream), then the sink's.
    fn cap(&self, name: &str, own: Option<u64>) -> Option<u64> {
        own.or_else(|| self.stream_caps.get(name).copied())
            .or_else(|| {
                let base = base_of(name).filter(|b| self.sharder.is_sharded(b))?;
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
                    if let Some(set) = sink.routes.get(v) {
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
        let mut only: Option<&[u8]> = None;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Capacity, TargetSpec};
    use crate::sink::stream::commit::fit;

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
}
