//! Delayed jobs: entries that join their stream at a given time. They wait
//! in a sorted set per stream, scored by due time (Unix ms), and whichever
//! replica sees them due moves them into the stream with one Lua script
//! (XADD + ZREM together), so each is delivered exactly once however many
//! replicas promote. Due times are judged by the Redis server's clock.
//!
//! ```text
//! sluice:delayed             SET   streams that have delayed jobs
//! sluice:delayed:{stream}    ZSET  score = due (Unix ms), member = one job
//! sluice:delayed:{stream}:invalid  ZSET  members that could not be decoded
//! ```
//! On Redis Cluster a script may only touch keys of one slot, so the set and
//! the stream must share a hash tag: delayed jobs there need a stream whose
//! name has one (every shard `name:{i}` of a sharded stream does; so does
//! e.g. `{jobs}`). The index lives in its own slot: it is updated by a
//! separate SADD before the script, and never shrunk (a promotion pass
//! costs one script call per stream ever used).
//!
//! A member is MessagePack: an array `[job id, field, value, field, value, …]`
//! of strings (binary-safe); the random job id keeps identical jobs apart.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;
use tokio_util::sync::CancellationToken;

use crate::config::schedule;
use crate::redis::sharder;
use crate::time::now_ms;
use crate::time::Ticker;

pub const INDEX_KEY: &str = "sluice:delayed";

pub fn set_key(stream: &str) -> String {
    format!("sluice:delayed:{stream}")
}

pub fn invalid_key(stream: &str) -> String {
    format!("sluice:delayed:{stream}:invalid")
}

#[derive(Debug, thiserror::Error)]
pub enum DelayedError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("a delayed job needs at least one field")]
    NoFields,
    /// On Redis Cluster the delayed set and the stream must share a slot.
    #[error("delayed jobs on Redis Cluster need a stream name with a hash tag (a sharded stream's shards `name:{{i}}`, or e.g. `{{jobs}}`); `{0}` has none")]
    Cluster(String),
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

pub(crate) type Result<T, E = DelayedError> = std::result::Result<T, E>;

/// Encodes one job as a sorted-set member.
pub(crate) fn encode_member(fields: &[(Bytes, Bytes)]) -> Vec<u8> {
    let id = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let items = 1 + fields.len() * 2;
    let mut out = Vec::with_capacity(
        8 + id.len()
            + fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 10)
                .sum::<usize>(),
    );
    if items < 16 {
        out.push(0x90 | items as u8);
    } else if items <= u16::MAX as usize {
        out.push(0xdc);
        out.extend_from_slice(&(items as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(items as u32).to_be_bytes());
    }
    put_str(&mut out, id.as_bytes());
    for (k, v) in fields {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= u8::MAX as usize {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

/// Decodes a member: the job id and its fields. None if it is not one.
pub(crate) fn decode_member(member: &[u8]) -> Option<(String, Vec<(Bytes, Bytes)>)> {
    let mut r = Reader { buf: member, at: 0 };
    let items = match r.byte()? {
        b @ 0x90..=0x9f => (b & 0x0f) as usize,
        0xdc => r.u16()? as usize,
        0xdd => r.u32()? as usize,
        _ => return None,
    };
    if items < 3 || items % 2 == 0 {
        return None;
    }
    let id = String::from_utf8_lossy(r.str()?).into_owned();
    let mut fields = Vec::with_capacity(items / 2);
    for _ in 0..items / 2 {
        let k = Bytes::copy_from_slice(r.str()?);
        let v = Bytes::copy_from_slice(r.str()?);
        fields.push((k, v));
    }
    (r.at == member.len()).then_some((id, fields))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => (b & 0x1f) as usize,
            0xd9 | 0xc4 => self.byte()? as usize,
            0xda | 0xc5 => self.u16()? as usize,
            0xdb | 0xc6 => self.u32()? as usize,
            _ => return None,
        };
        self.take(n)
    }
}

/// Adds jobs due at ARGV[3] (`at`, Unix ms) or ARGV[3] ms after the server's
/// clock (`after`). KEYS: set[, index]. ARGV: stream, mode, ms, members….
/// Returns the due time.
const ENQUEUE: &str = r#"
local due = tonumber(ARGV[3])
if ARGV[2] == 'after' then
  local t = redis.call('TIME')
  due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + due
end
local score = string.format('%.0f', due)
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], score, ARGV[i])
end
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[1]) end
return score
"#;

/// Moves due jobs into the stream. KEYS: set, stream, invalid set[, index].
/// ARGV: stream name, limit. Returns {moved, invalid, next due or -1}.
const PROMOTE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now), 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local moved, invalid = 0, 0
for i = 1, #due, 2 do
  local m = due[i]
  local ok, job = pcall(cmsgpack.unpack, m)
  if ok and type(job) == 'table' and #job >= 3 and #job % 2 == 1 and #job < 7999 then
    redis.call('XADD', KEYS[2], '*', unpack(job, 2))
    moved = moved + 1
  else
    redis.call('ZADD', KEYS[3], due[i + 1], m)
    invalid = invalid + 1
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then
  if KEYS[4] then redis.call('SREM', KEYS[4], ARGV[1]) end
  return {moved, invalid, -1}
end
return {moved, invalid, tonumber(nxt[2])}
"#;

static ENQUEUE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ENQUEUE));
static PROMOTE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(PROMOTE));

/// When a delayed job is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// At this Unix time (ms).
    At(u64),
    /// This long after now, by the Redis server's clock.
    After(Duration),
}

/// Adds jobs to `stream`'s delayed set; they join the stream when due.
/// Returns the due time (Unix ms, server clock for [`Due::After`]).
pub async fn enqueue(
    client: &Client,
    stream: &str,
    jobs: &[Vec<(Bytes, Bytes)>],
    due: Due,
) -> Result<u64> {
    if jobs.iter().any(|f| f.is_empty()) {
        return Err(DelayedError::NoFields);
    }
    let keys = index_keys(client, stream, set_key(stream)).await?;
    let (mode, ms) = match due {
        Due::At(ms) => ("at", ms),
        Due::After(d) => ("after", d.as_millis() as u64),
    };
    let mut args: Vec<Value> = vec![stream.into(), mode.into(), ms.to_string().into()];
    args.extend(
        jobs.iter()
            .map(|f| Value::Bytes(Bytes::from(encode_member(f)))),
    );
    let reply: Value = ENQUEUE_S.evalsha_with_reload(client, keys, args).await?;
    reply
        .as_string()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| DelayedError::Reply(format!("{reply:?}")))
}

/// The KEYS of a script that adds to `set` (of `stream`) and the index:
/// both outside a cluster; in one, just `set`, after adding `stream` to the
/// index with its own SADD (another slot), and only when `stream` has a hash
/// tag, so that the set and the stream share a slot.
pub(crate) async fn index_keys(client: &Client, stream: &str, set: String) -> Result<Vec<String>> {
    if !client.is_clustered() {
        return Ok(vec![set, INDEX_KEY.to_string()]);
    }
    if sharder::hash_tag(stream).is_none() {
        return Err(DelayedError::Cluster(stream.to_string()));
    }
    let _: i64 = client.sadd(INDEX_KEY, stream).await?;
    Ok(vec![set])
}

/// One job due at `due_ms` (Unix ms).
pub async fn enqueue_at(
    client: &Client,
    stream: &str,
    fields: Vec<(Bytes, Bytes)>,
    due_ms: u64,
) -> Result<u64> {
    enqueue(client, stream, &[fields], Due::At(due_ms)).await
}
/// The `not_before` query parameter of an HTTP entry request
/// (`?not_before=2026-01-01T00:00:00Z` or Unix ms): the due time when it
/// is in the future, None when absent or already past (append now).
pub(crate) fn not_before(query: Option<&str>) -> std::result::Result<Option<u64>, String> {
    let Some(raw) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("not_before="))
    else {
        return Ok(None);
    };
    let text = percent_decode(raw);
    let due = schedule::parse_time(&text).map_err(|e| format!("not_before: {e}"))?;
    Ok((due > now_ms()).then_some(due))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one promotion pass over a stream did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Promoted {
    pub moved: u64,
    pub invalid: u64,
    /// The next due time left in the set, if any.
    pub next_due: Option<u64>,
}

/// Moves up to `limit` due jobs of `stream` into it, atomically.
pub async fn promote(client: &Client, stream: &str, limit: usize) -> Result<Promoted> {
    let reply: Value = PROMOTE_S
        .evalsha_with_reload(
            client,
            {
                let mut keys = vec![set_key(stream), stream.to_string(), invalid_key(stream)];
                // In a cluster the index is in another slot: it keeps the name.
                if !client.is_clustered() {
                    keys.push(INDEX_KEY.to_string());
                }
                keys
            },
            vec![stream.to_string(), limit.to_string()],
        )
        .await?;
    let items = match reply {
        Value::Array(items) if items.len() == 3 => items,
        other => return Err(DelayedError::Reply(format!("{other:?}"))),
    };
    let int = |v: &Value| v.as_i64().unwrap_or(-1);
    Ok(Promoted {
        moved: int(&items[0]).max(0) as u64,
        invalid: int(&items[1]).max(0) as u64,
        next_due: u64::try_from(int(&items[2])).ok(),
    })
}

/// The streams that have delayed jobs.
pub(crate) async fn streams(client: &Client) -> Result<Vec<String>> {
    let mut s: Vec<String> = client.smembers(INDEX_KEY).await?;
    s.sort();
    Ok(s)
}

/// A waiting job.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub due_ms: u64,
    pub job_id: String,
    pub fields: Vec<(Bytes, Bytes)>,
    /// The sorted-set member itself (for [`move_now`]).
    pub member: Bytes,
}

/// Up to `count` waiting jobs of `stream`, soonest first.
pub async fn waiting(client: &Client, stream: &str, count: usize) -> Result<Vec<Waiting>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let raw: Value = client
        .zrange(
            set_key(stream),
            0,
            count as i64 - 1,
            None,
            false,
            None,
            true,
        )
        .await?;
    let flat = match raw {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        let [member, score] = pair else { continue };
        let (Some(member), Some(score)) = (member.as_bytes(), score.as_f64()) else {
            continue;
        };
        if let Some((job_id, fields)) = decode_member(member) {
            out.push(Waiting {
                due_ms: score as u64,
                job_id,
                fields,
                member: Bytes::copy_from_slice(member),
            });
        }
    }
    Ok(out)
}

/// Takes one job out of the delayed set and adds it to the stream now.
/// KEYS: set, stream. ARGV: member, fields…. Nil when it was gone.
const MOVE_NOW: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"#;

static MOVE_NOW_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(MOVE_NOW));

/// Moves the waiting job `member` of `stream` into the stream at once,
/// atomically; returns the new entry id, or None when the job was no
/// longer waiting (promoted or moved meanwhile).
pub(crate) async fn move_now(
    client: &Client,
    stream: &str,
    member: &[u8],
) -> Result<Option<String>> {
    let Some((_, fields)) = decode_member(member) else {
        return Err(DelayedError::Reply("not a delayed job".into()));
    };
    let mut args: Vec<Value> = vec![Value::Bytes(Bytes::copy_from_slice(member))];
    for (k, v) in fields {
        args.push(Value::Bytes(k));
        args.push(Value::Bytes(v));
    }
    let reply: Value = MOVE_NOW_S
        .evalsha_with_reload(client, vec![set_key(stream), stream.to_string()], args)
        .await?;
    Ok(reply.as_string())
}

/// The promotion loop every replica runs: every `every`, move what is due
/// in every stream listed in the index.
pub(crate) struct Promoter {
    pub client: Client,
    pub every: Duration,
    pub batch: usize,
}

impl Promoter {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut tick = Ticker::every(self.every);
        let mut failing = false;
        while tick.tick_until(&shutdown).await {
            match self.pass().await {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "moving due delayed jobs failed; will retry");
                    }
                    failing = true;
                }
            }
        }
    }

    /// One pass over every stream with delayed jobs.
    pub(crate) async fn pass(&self) -> Result<()> {
        for stream in streams(&self.client).await? {
            loop {
                let p = promote(&self.client, &stream, self.batch).await?;
                if p.moved > 0 {
                    tracing::debug!(%stream, moved = p.moved, "delayed jobs are due; added to the stream");
                }
                if p.invalid > 0 {
                    tracing::warn!(%stream, count = p.invalid, key = %invalid_key(&stream), "undecodable delayed jobs set aside");
                }
                if ((p.moved + p.invalid) as usize) < self.batch {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_before_parses_rfc3339_and_millis_and_ignores_the_past() {
        assert_eq!(not_before(None), Ok(None));
        assert_eq!(not_before(Some("x=1")), Ok(None));
        assert_eq!(not_before(Some("not_before=1000")), Ok(None)); // 1970: now
        assert_eq!(
            not_before(Some("a=b&not_before=4102444800000")),
            Ok(Some(4_102_444_800_000))
        );
        assert_eq!(
            not_before(Some("not_before=2100-01-01T01:00:00%2B01:00")),
            Ok(Some(4_102_444_800_000))
        );
        assert!(not_before(Some("not_before=soon")).is_err());
    }

    #[test]
    fn member_round_trips_binary_fields_of_any_size() {
        let big = vec![0xffu8; 70_000];
        let fields = vec![
            (Bytes::from("k"), Bytes::from_static(b"\x00\xc1binary")),
            (Bytes::from("a".repeat(40)), Bytes::from(big.clone())),
            (Bytes::from("m"), Bytes::from("x".repeat(300))),
        ];
        let m = encode_member(&fields);
        let (id, back) = decode_member(&m).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(back, fields);
        // Identical jobs get distinct members.
        assert_ne!(encode_member(&fields), m);
        // Many fields use the array16 header.
        let many: Vec<_> = (0..20)
            .map(|i| (Bytes::from(format!("f{i}")), Bytes::from("v")))
            .collect();
        assert_eq!(decode_member(&encode_member(&many)).unwrap().1, many);
        assert!(decode_member(b"garbage").is_none());
        assert!(decode_member(&m[..m.len() - 1]).is_none());
    }
}
