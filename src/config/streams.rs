//! `[streams."name"]`: per-stream capacity and sharding, and shard naming
//! both ways — `jobs` with `shards = N` stands for `jobs:{0}` …
//! `jobs:{N-1}` ([`shard_names`]), and `jobs:{3}` is a shard of `jobs`
//! ([`base_of`]). The `{i}` is a Redis Cluster hash tag ([`hash_tag`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{key_error, Result};

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

/// The base stream of a shard stream name (`jobs` for `jobs:{3}`), or None
/// when `stream` is not shaped like one.
pub fn base_of(stream: &str) -> Option<&str> {
    let (base, tag) = stream.strip_suffix('}')?.rsplit_once(":{")?;
    (!base.is_empty() && !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// The hash tag of a key as Redis Cluster reads it: what is between the
/// first `{` and the next `}`, if that is not empty. Keys with the same tag
/// share a slot.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

/// Checks every `[streams."name"]`.
pub(crate) fn validate(streams: &BTreeMap<String, StreamSettings>) -> Result<()> {
    let bad = |key: String, message: &str| key_error(&key, message);
    for (name, s) in streams {
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
    Ok(())
}
