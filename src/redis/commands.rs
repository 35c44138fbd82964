//! The stream commands sluice sends, as thin typed wrappers over raw frames.
//!
//! Every command is routed by the slot of the stream it is about, given
//! explicitly: fred's default (`ClusterHash::FirstKey`) hashes the first
//! string argument, which for XREADGROUP, XGROUP and XINFO is a sub-command
//! word (`GROUP`, `CREATE`, `CONSUMERS`), not the key. Outside a cluster
//! the slot is ignored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{CustomCommand, Value};

use crate::redis::reply::{self, AutoClaim, PendingEntry};
use crate::redis::{Message, Result, StreamError};

/// `name`, routed to the node serving `key`'s slot.
pub(crate) fn command(name: &'static str, key: &str, blocking: bool) -> CustomCommand {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    CustomCommand::new_static(name, fred::types::ClusterHash::Custom(slot), blocking)
}

fn key_arg(s: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

/// XREADGROUP's arguments after its name: `GROUP g c COUNT n BLOCK ms
/// STREAMS s… > …` (BLOCK at least 1 ms: 0 would block forever). fred and
/// the direct connection ([`crate::redis::direct`]) both send these.
pub(crate) fn read_group_args(
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
    streams: &[Arc<str>],
) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(8 + streams.len() * 2);
    args.extend([
        Bytes::from_static(b"GROUP"),
        Bytes::copy_from_slice(group.as_bytes()),
        Bytes::copy_from_slice(consumer.as_bytes()),
        Bytes::from_static(b"COUNT"),
        Bytes::from(count.to_string()),
        Bytes::from_static(b"BLOCK"),
        Bytes::from(block.as_millis().max(1).to_string()),
        Bytes::from_static(b"STREAMS"),
    ]);
    args.extend(streams.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())));
    args.extend(streams.iter().map(|_| Bytes::from_static(b">")));
    args
}

/// XREADGROUP … COUNT n BLOCK ms STREAMS s… > …, appending to `out`.
pub async fn read_group(
    client: &Client,
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
    streams: &[Arc<str>],
    out: &mut Vec<Message>,
) -> Result<()> {
    let args = read_group_args(group, consumer, count, block, streams);
    let frame = client
        .custom_raw(
            command("XREADGROUP", &streams[0], true),
            args.into_iter().map(Value::Bytes).collect::<Vec<_>>(),
        )
        .await?;
    reply::read_group(frame, streams, out)
}

/// Acks `ids` (and deletes them when `delete`), in one pipelined round trip,
/// chunked so no single command grows unbounded.
pub(crate) async fn ack(
    client: &Client,
    stream: &str,
    group: &str,
    ids: &[Bytes],
    delete: bool,
) -> Result<()> {
    const CHUNK: usize = 10_000;
    if ids.is_empty() {
        return Ok(());
    }
    let pipeline = client.pipeline();
    for chunk in ids.chunks(CHUNK) {
        let mut args: Vec<Value> = Vec::with_capacity(chunk.len() + 2);
        args.push(key_arg(stream));
        args.push(key_arg(group));
        args.extend(chunk.iter().map(|id| Value::Bytes(id.clone())));
        let _: Value = pipeline
            .custom(command("XACK", stream, false), args)
            .await?;
        if delete {
            let mut args: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
            args.push(key_arg(stream));
            args.extend(chunk.iter().map(|id| Value::Bytes(id.clone())));
            let _: Value = pipeline
                .custom(command("XDEL", stream, false), args)
                .await?;
        }
    }
    for result in pipeline.try_all::<Value>().await {
        result?;
    }
    Ok(())
}

/// XGROUP CREATE … MKSTREAM; an existing group is fine.
pub(crate) async fn create_group(
    client: &Client,
    stream: &str,
    group: &str,
    start_id: &str,
) -> Result<bool> {
    let args: Vec<Value> = vec![
        "CREATE".into(),
        key_arg(stream),
        key_arg(group),
        key_arg(start_id),
        "MKSTREAM".into(),
    ];
    let frame = client
        .custom_raw(command("XGROUP", stream, false), args)
        .await?;
    match reply::check(frame) {
        Ok(_) => Ok(true),
        Err(StreamError::Reply(msg)) if msg.starts_with("BUSYGROUP") => Ok(false),
        // At `maxmemory` Redis refuses XGROUP CREATE before it looks for the
        // group: a replica (re)starting then must still start when the group
        // is there (XINFO is a read, always answered).
        Err(StreamError::Reply(msg)) if msg.starts_with("OOM") => {
            if group_exists(client, stream, group).await? {
                Ok(false)
            } else {
                Err(StreamError::Reply(msg))
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether `stream` has the consumer group `group` (XINFO GROUPS).
async fn group_exists(client: &Client, stream: &str, group: &str) -> Result<bool> {
    let frame = match info(client, "GROUPS", &[stream]).await {
        Ok(f) => f,
        Err(StreamError::Reply(m)) if m.contains("no such key") => return Ok(false),
        Err(e) => return Err(e),
    };
    for item in reply::array_of(frame, "XINFO GROUPS")? {
        for (k, v) in reply::key_values(item, "XINFO GROUPS")? {
            if k == "name" && reply::bytes_of(v, "XINFO GROUPS")?.as_ref() == group.as_bytes() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// XAUTOCLAIM stream group consumer min-idle cursor COUNT n.
pub async fn auto_claim(
    client: &Client,
    stream: &Arc<str>,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    cursor: &[u8],
    count: usize,
) -> Result<AutoClaim> {
    let args: Vec<Value> = vec![
        key_arg(stream),
        key_arg(group),
        key_arg(consumer),
        Value::Integer(min_idle.as_millis() as i64),
        Value::Bytes(Bytes::copy_from_slice(cursor)),
        "COUNT".into(),
        Value::Integer(count as i64),
    ];
    let frame = client
        .custom_raw(command("XAUTOCLAIM", stream, false), args)
        .await?;
    reply::auto_claim(frame, stream)
}

/// Extended XPENDING's arguments after its name: `stream group start end
/// count [consumer]`. fred and the direct connection both send these.
pub(crate) fn pending_args(
    stream: &str,
    group: &str,
    start: &[u8],
    end: &[u8],
    count: usize,
    consumer: Option<&str>,
) -> Vec<Bytes> {
    let mut args = vec![
        Bytes::copy_from_slice(stream.as_bytes()),
        Bytes::copy_from_slice(group.as_bytes()),
        Bytes::copy_from_slice(start),
        Bytes::copy_from_slice(end),
        Bytes::from(count.to_string()),
    ];
    args.extend(consumer.map(|c| Bytes::copy_from_slice(c.as_bytes())));
    args
}

/// Extended XPENDING: entries between `start` and `end`, optionally of one consumer.
pub(crate) async fn pending(
    client: &Client,
    stream: &str,
    group: &str,
    start: &[u8],
    end: &[u8],
    count: usize,
    consumer: Option<&str>,
) -> Result<Vec<PendingEntry>> {
    let args = pending_args(stream, group, start, end, count, consumer);
    let frame = client
        .custom_raw(
            command("XPENDING", stream, false),
            args.into_iter().map(Value::Bytes).collect::<Vec<_>>(),
        )
        .await?;
    reply::pending_entries(frame)
}

/// `consumer`'s pending entries idle at least `min_idle`, from `start`
/// (`-`, an id, or `(id` for after it) on, up to `count`.
pub(crate) async fn pending_idle(
    client: &Client,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    start: &[u8],
    count: usize,
) -> Result<Vec<PendingEntry>> {
    let args: Vec<Value> = vec![
        key_arg(stream),
        key_arg(group),
        "IDLE".into(),
        Value::Integer(min_idle.as_millis() as i64),
        Value::Bytes(Bytes::copy_from_slice(start)),
        "+".into(),
        Value::Integer(count as i64),
        key_arg(consumer),
    ];
    let frame = client
        .custom_raw(command("XPENDING", stream, false), args)
        .await?;
    reply::pending_entries(frame)
}

/// `XCLAIM … min_idle ids`: takes entries still idle at least `min_idle`
/// for `consumer` (a delivery each) and returns them, deliveries unset.
/// Entries deleted from the stream are left out (Redis 7 unlists them).
pub(crate) async fn claim(
    client: &Client,
    stream: &Arc<str>,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    ids: &[Bytes],
) -> Result<Vec<Message>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let args = xclaim_args(stream, group, consumer, min_idle, ids);
    let frame = client
        .custom_raw(command("XCLAIM", stream, false), args)
        .await?;
    reply::entries(frame, stream, "XCLAIM")
}

/// `stream group consumer min_idle id…`: XCLAIM's arguments (room for one
/// option more).
fn xclaim_args(
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    ids: &[Bytes],
) -> Vec<Value> {
    let mut args: Vec<Value> = Vec::with_capacity(ids.len() + 5);
    args.extend([
        key_arg(stream),
        key_arg(group),
        key_arg(consumer),
        Value::Integer(min_idle.as_millis() as i64),
    ]);
    args.extend(ids.iter().map(|id| Value::Bytes(id.clone())));
    args
}

/// `XCLAIM … min_idle ids JUSTID` to ourselves: resets the entries' idle
/// time without counting a delivery. Returns how many were claimed. An entry
/// idle less than `min_idle` was just claimed by another replica (the
/// caller listed it idle longer): it is left to that replica.
pub async fn touch(
    client: &Client,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    ids: &[Bytes],
) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut args = xclaim_args(stream, group, consumer, min_idle, ids);
    args.push("JUSTID".into());
    let frame = reply::check(
        client
            .custom_raw(command("XCLAIM", stream, false), args)
            .await?,
    )?;
    Ok(reply::array_of(frame, "XCLAIM")?.len())
}

/// XRANGE start end COUNT n.
pub async fn range(
    client: &Client,
    stream: &Arc<str>,
    start: &[u8],
    end: &[u8],
    count: usize,
) -> Result<Vec<Message>> {
    range_cmd("XRANGE", client, stream, start, end, count).await
}

/// XREVRANGE end start COUNT n: newest first.
pub(crate) async fn rev_range(
    client: &Client,
    stream: &Arc<str>,
    end: &[u8],
    start: &[u8],
    count: usize,
) -> Result<Vec<Message>> {
    range_cmd("XREVRANGE", client, stream, end, start, count).await
}

async fn range_cmd(
    name: &'static str,
    client: &Client,
    stream: &Arc<str>,
    first: &[u8],
    second: &[u8],
    count: usize,
) -> Result<Vec<Message>> {
    let args: Vec<Value> = vec![
        key_arg(stream),
        Value::Bytes(Bytes::copy_from_slice(first)),
        Value::Bytes(Bytes::copy_from_slice(second)),
        "COUNT".into(),
        Value::Integer(count as i64),
    ];
    let frame = reply::check(
        client
            .custom_raw(command(name, stream, false), args)
            .await?,
    )?;
    let mut out = Vec::new();
    for e in reply::array_of(frame, name)? {
        let mut parts = reply::array_of(e, name)?.into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            continue;
        };
        let flat = reply::array_of(fields, name)?;
        let mut it = flat.into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((reply::bytes_of(k, name)?, reply::bytes_of(v, name)?));
        }
        out.push(Message {
            stream: stream.clone(),
            id: reply::bytes_of(id, name)?,
            fields: pairs.into(),
            deliveries: 0,
        });
    }
    Ok(out)
}

/// Runs XINFO `sub` (GROUPS, CONSUMERS, STREAM) and returns one key/value list per item.
pub(crate) async fn info(
    client: &Client,
    sub: &'static str,
    args: &[&str],
) -> Result<fred::types::Resp3Frame> {
    let mut all: Vec<Value> = vec![sub.into()];
    all.extend(args.iter().map(|a| key_arg(a)));
    let key = args.first().copied().unwrap_or_default();
    let frame = client.custom_raw(command("XINFO", key, false), all).await?;
    reply::check(frame)
}
pub async fn len(client: &Client, stream: &str) -> Result<u64> {
    let frame = reply::check(
        client
            .custom_raw(command("XLEN", stream, false), vec![key_arg(stream)])
            .await?,
    )?;
    Ok(reply::int_of(&frame, "XLEN")?.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_group_args_name_every_stream_then_a_cursor_each_and_never_block_forever() {
        let streams = [Arc::from("a"), Arc::from("b")];
        let args = read_group_args("g", "c", 5000, Duration::ZERO, &streams);
        let words: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
        assert_eq!(
            words,
            [
                &b"GROUP"[..],
                b"g",
                b"c",
                b"COUNT",
                b"5000",
                b"BLOCK",
                b"1",
                b"STREAMS",
                b"a",
                b"b",
                b">",
                b">"
            ]
        );
    }

    #[test]
    fn pending_args_end_with_the_consumer_when_given() {
        let args = pending_args("s", "g", b"-", b"+", 10, Some("c"));
        assert_eq!(args.last().unwrap(), "c");
        assert_eq!(pending_args("s", "g", b"-", b"+", 10, None).len(), 5);
    }
}
