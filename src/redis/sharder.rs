//! Sharded streams: `[streams."jobs"] shards = N` splits `jobs` into
//! `jobs:{0}` … `jobs:{N-1}`. The `{i}` is a Redis Cluster hash tag, so each
//! shard (and every key derived from it by adding a prefix or suffix, such
//! as `sluice:delayed:jobs:{1}`) lives in one slot, and the shards spread
//! over the cluster's nodes.
//!
//! Consumers read every shard (the flow's streams are expanded at config
//! load); producers (`sluice enqueue`, the HTTP entry, stream sinks) ask a
//! [`Sharder`] which shard an entry goes to: by the hash of its `shard_by`
//! field, or round-robin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::config::streams::shard_names;
pub(crate) use crate::config::streams::{base_of, hash_tag};
use crate::config::Config;
use crate::fields::{FieldPairs, Fields};

/// A hash tag (braces included) that puts a key in the same Redis Cluster
/// slot as `key`: `key`'s own tag, else `{key}` when that hashes as the
/// whole name does, else the shortest number with that slot.
pub(crate) fn same_slot_tag(key: &str) -> String {
    if let Some(tag) = hash_tag(key) {
        return format!("{{{tag}}}");
    }
    if !key.is_empty() && !key.contains('}') {
        return format!("{{{key}}}");
    }
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let tag = (0u32..)
        .map(|i| i.to_string())
        .find(|t| fred::util::redis_keyslot(t.as_bytes()) == slot)
        .expect("some number hashes to every slot");
    format!("{{{tag}}}")
}

/// FNV-1a, 64 bits: stable across processes, versions and platforms, so
/// every producer puts a given key on the same shard.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One sharded stream's settings.
#[derive(Debug)]
struct Sharded {
    shards: Vec<String>,
    shard_by: Option<Bytes>,
    next: AtomicUsize,
}

/// Picks the shard stream for an entry written to a (possibly sharded) stream.
#[derive(Debug, Default)]
pub struct Sharder {
    streams: HashMap<String, Sharded>,
}

impl Sharder {
    pub fn new(config: &Config) -> Sharder {
        let streams = config
            .streams
            .iter()
            .filter(|(_, s)| s.shards > 1)
            .map(|(name, s)| {
                let sharded = Sharded {
                    shards: shard_names(name, s.shards),
                    shard_by: s.shard_by.as_ref().map(|f| Bytes::from(f.clone())),
                    // Producers started together should not all begin on shard 0.
                    next: AtomicUsize::new(rand::random_range(0..s.shards)),
                };
                (name.clone(), sharded)
            })
            .collect();
        Sharder { streams }
    }

    /// Whether `stream` is sharded.
    pub fn is_sharded(&self, stream: &str) -> bool {
        self.streams.contains_key(stream)
    }

    /// The streams `stream` stands for: its shards, or itself.
    pub fn shards_of(&self, stream: &str) -> Vec<String> {
        match self.streams.get(stream) {
            Some(s) => s.shards.clone(),
            None => vec![stream.to_string()],
        }
    }

    /// The stream an entry with `fields` goes to when written to `stream`:
    /// `stream` itself unless it is sharded; else the shard its `shard_by`
    /// value hashes to, or the next one round-robin.
    pub fn pick<'a>(&'a self, stream: &'a str, fields: &(impl FieldPairs + ?Sized)) -> &'a str {
        self.pick_keyed(stream, fields, None)
    }

    /// Like [`Sharder::pick`], but where `pick` would go round-robin the
    /// hash of `id` (the source entry's id) picks the shard, so a retried
    /// entry lands on the shard it went to before: exactly-once stream
    /// sinks find their dedup record there.
    pub fn pick_by_id<'a>(
        &'a self,
        stream: &'a str,
        fields: &(impl FieldPairs + ?Sized),
        id: &[u8],
    ) -> &'a str {
        self.pick_keyed(stream, fields, Some(id))
    }

    fn pick_keyed<'a>(
        &'a self,
        stream: &'a str,
        fields: &(impl FieldPairs + ?Sized),
        id: Option<&[u8]>,
    ) -> &'a str {
        let Some(s) = self.streams.get(stream) else {
            return stream;
        };
        let n = s.shards.len();
        let keyed = s.shard_by.as_ref().and_then(|name| {
            fields
                .value_of(name)
                .map(|v| (fnv1a(v) % n as u64) as usize)
        });
        let i = keyed
            .or_else(|| id.map(|id| (fnv1a(id) % n as u64) as usize))
            .unwrap_or_else(|| s.next.fetch_add(1, Ordering::Relaxed) % n);
        &s.shards[i]
    }

    /// `items` grouped by the shard each goes to ([`Sharder::pick`]), in
    /// first-seen order; items keep their order within a shard.
    pub fn split<'a>(
        &'a self,
        stream: &'a str,
        items: impl IntoIterator<Item = Fields>,
    ) -> Vec<(&'a str, Vec<Fields>)> {
        let mut groups: Vec<(&str, Vec<Fields>)> = Vec::new();
        for fields in items {
            let shard = self.pick(stream, &fields);
            match groups.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, g)) => g.push(fields),
                None => groups.push((shard, vec![fields])),
            }
        }
        groups
    }

    /// Like [`Sharder::pick`] for a whole group of entries that must stay
    /// together (one all-or-nothing request): round-robin only.
    pub fn pick_one<'a>(&'a self, stream: &'a str) -> &'a str {
        self.pick(stream, &Fields::new())
    }

    /// The `shard_by` field of `stream`, if it is sharded by one.
    pub fn shard_by(&self, stream: &str) -> Option<&[u8]> {
        self.streams.get(stream)?.shard_by.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharder(extra: &str) -> Sharder {
        let text = format!(
            "[redis]\nurl = \"redis://h:1\"\n[streams.jobs]\nshards = 4\n{extra}\n[streams.plain]\nmax_len = 5\n"
        );
        Sharder::new(&Config::from_toml_with_env(&text, "t.toml", std::iter::empty()).unwrap())
    }

    #[test]
    fn base_of_recognises_shard_names_only() {
        assert_eq!(base_of("jobs:{3}"), Some("jobs"));
        assert_eq!(base_of("a:b:{12}"), Some("a:b"));
        assert_eq!(base_of("jobs"), None);
        assert_eq!(base_of("jobs:{x}"), None);
        assert_eq!(base_of(":{1}"), None);
        assert_eq!(base_of("jobs:{}"), None);
    }

    #[test]
    fn hash_tags_as_redis_reads_them() {
        assert_eq!(hash_tag("jobs:{3}"), Some("3"));
        assert_eq!(hash_tag("sluice:delayed:jobs:{3}"), Some("3"));
        assert_eq!(hash_tag("{jobs}.a"), Some("jobs"));
        assert_eq!(hash_tag("jobs"), None);
        assert_eq!(hash_tag("a{}b{c}"), None);
        assert_eq!(hash_tag("a{b"), None);
    }

    #[test]
    fn round_robin_visits_every_shard() {
        let s = sharder("");
        let mut seen: Vec<&str> = (0..8).map(|_| s.pick("jobs", &Fields::new())).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, ["jobs:{0}", "jobs:{1}", "jobs:{2}", "jobs:{3}"]);
        assert_eq!(s.pick("plain", &Fields::new()), "plain");
        assert_eq!(s.shards_of("plain"), ["plain"]);
        assert!(s.is_sharded("jobs") && !s.is_sharded("plain"));
    }

    #[test]
    fn shard_by_is_stable_and_falls_back_to_round_robin() {
        let s = sharder("shard_by = \"user\"");
        let f = |u: &str| vec![(Bytes::from("user"), Bytes::from(u.to_string()))];
        let a = s.pick("jobs", &f("alice")).to_string();
        for _ in 0..5 {
            assert_eq!(s.pick("jobs", &f("alice")), a);
        }
        // FNV-1a is fixed: this mapping must never change between versions.
        assert_eq!(fnv1a(b"alice") % 4, 3);
        assert_eq!(a, "jobs:{3}");
        let mut spread: Vec<&str> = (0..64)
            .map(|i| s.pick("jobs", &f(&format!("u{i}"))))
            .collect();
        spread.sort();
        spread.dedup();
        assert_eq!(spread.len(), 4, "keys spread over all shards");
        let other = vec![(Bytes::from("x"), Bytes::from("1"))];
        let mut rr: Vec<&str> = (0..4).map(|_| s.pick("jobs", &other)).collect();
        rr.sort();
        rr.dedup();
        assert_eq!(rr.len(), 4, "no shard_by field: round-robin");
    }

    #[test]
    fn same_slot_tags_share_the_slot() {
        let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        for key in ["jobs", "jobs:{3}", "{a}.b", "a{b", "a}b", "x{}y", "", "é"] {
            let tag = same_slot_tag(key);
            assert_eq!(
                slot(&format!("sluice:x:{tag}:flow")),
                slot(key),
                "{key:?} → {tag}"
            );
        }
        assert_eq!(same_slot_tag("jobs"), "{jobs}");
        assert_eq!(same_slot_tag("jobs:{3}"), "{3}");
    }

    #[test]
    fn pick_by_id_is_repeatable_where_pick_goes_round_robin() {
        let s = sharder("");
        let a = s.pick_by_id("jobs", &Fields::new(), b"1-0").to_string();
        for _ in 0..5 {
            assert_eq!(s.pick_by_id("jobs", &Fields::new(), b"1-0"), a);
        }
        let mut spread: Vec<&str> = (0..64)
            .map(|i| s.pick_by_id("jobs", &Fields::new(), format!("{i}-0").as_bytes()))
            .collect();
        spread.sort();
        spread.dedup();
        assert_eq!(spread.len(), 4);
        let keyed = sharder("shard_by = \"user\"");
        let f = vec![(Bytes::from("user"), Bytes::from("alice"))];
        assert_eq!(
            keyed.pick_by_id("jobs", &f, b"9-9"),
            "jobs:{3}",
            "shard_by still wins"
        );
    }
}
