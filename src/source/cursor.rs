//! A source's state in Redis (on the target stream's Redis, in the target
//! stream's Cluster slot): its cursor, its lease, and the scripts that move
//! the cursor.
//!
//! - `sluice:source:{T}:<name>` (hash): `pos` — the position of the last
//!   row written (see `query::encode_position`), `rows` — rows written so
//!   far, `updated_ms`, and `done_ms` once a `once` source read everything.
//! - `sluice:source:{T}:<name>:lease` (string): the consumer name of the
//!   replica running the source, expiring after `lease` unless renewed.
//!
//! Every cursor move is a compare-and-set on `pos`: a replica whose lease
//! expired (paused, cut off) and that then tries to write finds the cursor
//! moved and stops. With `exactly_once` the same script also XADDs the
//! chunk's rows, so the entries and the cursor move together or not at all.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::redis::lease;
use crate::redis::sharder;
use crate::time::now_ms;

/// KEYS: stream, cursor. ARGV: expected pos, new pos, now ms, max_len (-1 =
/// none), entry count, rows passed (entries + dead letters), then per
/// entry its field/value count and them.
/// Returns `{1, added}`, `{0, current pos}` when the cursor moved, `{2,
/// length}` when the stream is at `max_len`.
const ADVANCE: &str = r#"#!lua
local cur = redis.call('HGET', KEYS[2], 'pos') or ''
if cur ~= ARGV[1] then return {0, cur} end
local n = tonumber(ARGV[5])
if n > 0 then
  local t = redis.call('TYPE', KEYS[1])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE target `' .. KEYS[1] .. '` holds a ' .. t .. ', not a stream')
  end
  local max = tonumber(ARGV[4])
  if max >= 0 then
    local len = redis.call('XLEN', KEYS[1])
    if len >= max then return {2, len} end
  end
end
local i = 7
for e = 1, n do
  local c = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + c))
  i = i + 1 + c
end
redis.call('HSET', KEYS[2], 'pos', ARGV[2], 'updated_ms', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'rows', ARGV[6])
return {1, n}
"#;

static ADVANCE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ADVANCE));

/// The Redis keys of one source.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The stream `to` (for a sharded one, its base name: only its slot counts).
    pub stream: String,
    pub cursor: String,
    pub lease: String,
}

impl Keys {
    pub(crate) fn new(name: &str, to: &str) -> Keys {
        let tag = sharder::same_slot_tag(to);
        Keys {
            stream: to.to_string(),
            cursor: format!("sluice:source:{tag}:{name}"),
            lease: format!("sluice:source:{tag}:{name}:lease"),
        }
    }
}

/// What the cursor hash holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub pos: Bytes,
    pub rows: u64,
    pub updated_ms: Option<u64>,
    pub done_ms: Option<u64>,
}

pub(crate) async fn load(client: &Client, keys: &Keys) -> Result<State, fred::error::Error> {
    let map: std::collections::HashMap<String, Bytes> = client.hgetall(&keys.cursor).await?;
    let num = |k: &str| {
        map.get(k)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
    };
    Ok(State {
        pos: map.get("pos").cloned().unwrap_or_default(),
        rows: num("rows").unwrap_or(0),
        updated_ms: num("updated_ms"),
        done_ms: num("done_ms"),
    })
}

/// What an [`advance`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Advanced {
    /// Written (the entries, if any) and the cursor moved.
    Done,
    /// Another replica moved the cursor: we lost the source.
    Moved,
    /// The stream is at `max_len`: nothing written.
    Full,
}

/// Moves the cursor from `expected` to `new`, adding `rows` to `rows`, and
/// (when `entries` is not empty) XADDs them to the stream in the same
/// script, unless the stream is at `max_len`.
pub(crate) async fn advance(
    client: &Client,
    keys: &Keys,
    expected: &[u8],
    new: &[u8],
    rows: u64,
    max_len: Option<u64>,
    entries: &[&[(Bytes, Bytes)]],
) -> Result<Advanced, fred::error::Error> {
    let mut args: Vec<Value> = Vec::with_capacity(5 + entries.len() * 16);
    args.push(Value::Bytes(Bytes::copy_from_slice(expected)));
    args.push(Value::Bytes(Bytes::copy_from_slice(new)));
    args.push(now_ms().to_string().into());
    args.push(max_len.map_or(-1, |m| m as i64).into());
    args.push((entries.len() as i64).into());
    args.push((rows as i64).into());
    for fields in entries {
        args.push(((fields.len() * 2) as i64).into());
        for (k, v) in *fields {
            args.push(Value::Bytes(k.clone()));
            args.push(Value::Bytes(v.clone()));
        }
    }
    let keys_v = vec![keys.stream.clone(), keys.cursor.clone()];
    let reply: Value = ADVANCE_S.evalsha_with_reload(client, keys_v, args).await?;
    let flag = match &reply {
        Value::Array(v) => v.first().and_then(|f| f.as_i64()),
        _ => None,
    };
    match flag {
        Some(1) => Ok(Advanced::Done),
        Some(0) => Ok(Advanced::Moved),
        Some(2) => Ok(Advanced::Full),
        _ => Err(fred::error::Error::new(
            fred::error::ErrorKind::Parse,
            format!("unexpected reply from the source's advance script: {reply:?}"),
        )),
    }
}

/// Records that a `once` source read everything.
pub(crate) async fn mark_done(client: &Client, keys: &Keys) -> Result<(), fred::error::Error> {
    let _: Value = client
        .hset(&keys.cursor, ("done_ms", now_ms().to_string()))
        .await?;
    Ok(())
}

/// Takes or renews the lease for `lease_ms`; true if `me` holds it.
pub(crate) async fn hold(
    client: &Client,
    keys: &Keys,
    me: &str,
    lease_ms: u64,
) -> Result<bool, fred::error::Error> {
    lease::hold(client, &keys.lease, me, Duration::from_millis(lease_ms)).await
}

/// Gives the lease up if `me` holds it, so another replica takes over at once.
pub(crate) async fn release(
    client: &Client,
    keys: &Keys,
    me: &str,
) -> Result<(), fred::error::Error> {
    lease::release(client, &keys.lease, me).await
}

/// Who holds the lease, if anyone.
pub(crate) async fn holder(
    client: &Client,
    keys: &Keys,
) -> Result<Option<String>, fred::error::Error> {
    client.get(&keys.lease).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_target_slot() {
        let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        let k = Keys::new("cold", "events.cold");
        assert_eq!(k.cursor, "sluice:source:{events.cold}:cold");
        assert_eq!(slot(&k.cursor), slot("events.cold"));
        assert_eq!(slot(&k.lease), slot("events.cold"));
    }
}
