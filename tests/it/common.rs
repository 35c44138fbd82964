//! Shared setup for the worker tests: a private Redis + ClickHouse pair,
//! config text, and small Redis helpers.
#![allow(dead_code)]

use std::time::Duration;

use fred::prelude::*;
use fred::types::{CustomCommand, Value};

use crate::harness::{ClickHouseServer, RedisServer};

pub struct Stack {
    pub redis: RedisServer,
    pub ch: ClickHouseServer,
    pub rc: Client,
}

impl Stack {
    pub async fn start() -> Stack {
        let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
        let rc = redis.client().await;
        Stack { redis, ch, rc }
    }

    /// A config with one flow; `flow_extra` is appended inside `[[flow]]`.
    pub fn config(
        &self,
        ch_url: &str,
        flow: &str,
        stream: &str,
        table: &str,
        flow_extra: &str,
    ) -> String {
        config_text(&self.redis.url(), ch_url, flow, stream, table, flow_extra)
    }
}

pub fn config_text(
    redis_url: &str,
    ch_url: &str,
    flow: &str,
    stream: &str,
    table: &str,
    flow_extra: &str,
) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
[clickhouse]
url = "{ch_url}"
database = "default"
[worker]
shutdown_timeout = "20s"
block = "200ms"
[[flow]]
name = "{flow}"
streams = ["{stream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}" }}
dead_letter = "{stream}:dead"
{flow_extra}
"#
    )
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
}

pub async fn raw(client: &Client, name: &'static str, args: Vec<Value>) -> Value {
    client
        .custom::<Value, Value>(cmd(name), args)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Batches recorded in a flow's exactly-once ledger and not yet settled
/// (`SCARD sluice:eo:{flow}:open`).
pub async fn open_batches(client: &Client, flow: &str) -> u64 {
    let key = format!("sluice:eo:{{{flow}}}:open");
    match raw(client, "SCARD", vec![key.into()]).await {
        Value::Integer(n) => n as u64,
        _ => 0,
    }
}

/// Takes XACK away from (or gives it back to) the default user of a test's
/// private Redis: a worker then inserts but cannot ack, deterministically.
pub async fn deny_acks(client: &Client, deny: bool) {
    let rule = if deny { "-xack" } else { "+xack" };
    raw(
        client,
        "ACL",
        vec!["SETUSER".into(), "default".into(), rule.into()],
    )
    .await;
}

/// Like [`raw`], but a missing key or group reads as nil (the worker may
/// not have created them yet).
pub async fn raw_or_nil(client: &Client, name: &'static str, args: Vec<Value>) -> Value {
    match client.custom::<Value, Value>(cmd(name), args).await {
        Ok(v) => v,
        Err(e) if e.to_string().contains("NOGROUP") || e.to_string().contains("no such key") => {
            Value::Null
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// XADD with the given fields; returns the id.
pub async fn xadd(client: &Client, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut args: Vec<Value> = vec![stream.into(), "*".into()];
    for (k, v) in fields {
        args.push((*k).into());
        args.push((*v).into());
    }
    raw(client, "XADD", args).await.as_string().expect("id")
}

/// XADDs `n` messages built by `make(i)` in pipelined chunks; returns their ids.
pub async fn xadd_many(
    client: &Client,
    stream: &str,
    n: usize,
    make: impl Fn(usize) -> Vec<(String, Vec<u8>)>,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let pipeline = client.pipeline();
        let end = (i + 2000).min(n);
        for j in i..end {
            let mut args: Vec<Value> = vec![stream.into(), "*".into()];
            for (k, v) in make(j) {
                args.push(k.into());
                args.push(Value::Bytes(v.into()));
            }
            let _: Value = pipeline.custom(cmd("XADD"), args).await.unwrap();
        }
        let out: Vec<Value> = pipeline.all().await.unwrap();
        ids.extend(out.into_iter().map(|v| v.as_string().expect("id")));
        i = end;
    }
    ids
}

/// Seed-shaped job fields: rec_id, task_for, function_type, data.
pub fn seed_job(i: usize) -> Vec<(String, Vec<u8>)> {
    vec![
        ("rec_id".into(), i.to_string().into_bytes()),
        (
            "task_for".into(),
            ["a", "b", "c"][i % 3].as_bytes().to_vec(),
        ),
        (
            "function_type".into(),
            if i.is_multiple_of(2) {
                b"sum".to_vec()
            } else {
                b"avg".to_vec()
            },
        ),
        ("data".into(), format!("{{\"x\":{i}}}").into_bytes()),
    ]
}

pub const SEED_TABLE_COLUMNS: &str =
    "rec_id UInt64, task_for String, function_type String, data String, _id String";

pub async fn xlen(client: &Client, stream: &str) -> u64 {
    raw(client, "XLEN", vec![stream.into()])
        .await
        .as_u64()
        .unwrap_or(0)
}

/// The group's pending count (XPENDING summary).
pub async fn pending(client: &Client, stream: &str, group: &str) -> u64 {
    match raw_or_nil(client, "XPENDING", vec![stream.into(), group.into()]).await {
        Value::Array(items) => items.first().and_then(|v| v.as_u64()).unwrap_or(0),
        _ => 0,
    }
}

/// The ids in the group's pending list (at most `max`, oldest first).
pub async fn pending_ids(client: &Client, stream: &str, group: &str, max: usize) -> Vec<String> {
    pending_ids_where(client, stream, group, max, None).await
}

/// The ids pending for `consumer` (at most `max`, oldest first).
pub async fn consumer_pending_ids(
    client: &Client,
    stream: &str,
    group: &str,
    consumer: &str,
    max: usize,
) -> Vec<String> {
    pending_ids_where(client, stream, group, max, Some(consumer)).await
}

async fn pending_ids_where(
    client: &Client,
    stream: &str,
    group: &str,
    max: usize,
    consumer: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<Value> = vec![
        stream.into(),
        group.into(),
        "-".into(),
        "+".into(),
        (max as i64).into(),
    ];
    args.extend(consumer.map(Value::from));
    match raw_or_nil(client, "XPENDING", args).await {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(fields) => fields.first().and_then(|id| id.as_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Pending count per consumer name.
pub async fn pending_by_consumer(client: &Client, stream: &str, group: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Value::Array(items) =
        raw_or_nil(client, "XPENDING", vec![stream.into(), group.into()]).await
    {
        if let Some(Value::Array(consumers)) = items.get(3) {
            for c in consumers {
                if let Value::Array(pair) = c {
                    let name = pair[0].as_string().unwrap_or_default();
                    let n = pair[1]
                        .as_string()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    out.push((name, n));
                }
            }
        }
    }
    out
}

/// Consumer names of the group.
pub async fn consumer_names(client: &Client, stream: &str, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Array(items) = raw_or_nil(
        client,
        "XINFO",
        vec!["CONSUMERS".into(), stream.into(), group.into()],
    )
    .await
    {
        for item in items {
            if let Value::Array(kv) = item {
                for pair in kv.chunks(2) {
                    if pair[0].as_string().as_deref() == Some("name") {
                        out.push(pair[1].as_string().unwrap_or_default());
                    }
                }
            }
        }
    }
    out
}

/// All entries of a stream as (id, field map).
pub async fn entries(client: &Client, stream: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    if let Value::Array(items) = raw(
        client,
        "XRANGE",
        vec![stream.into(), "-".into(), "+".into()],
    )
    .await
    {
        for item in items {
            if let Value::Array(parts) = item {
                let id = parts[0].as_string().unwrap_or_default();
                let mut fields = Vec::new();
                if let Value::Array(flat) = &parts[1] {
                    for pair in flat.chunks(2) {
                        fields.push((
                            pair[0].as_string().unwrap_or_default(),
                            pair[1].as_string().unwrap_or_default(),
                        ));
                    }
                }
                out.push((id, fields));
            }
        }
    }
    out
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub const LONG: Duration = Duration::from_secs(60);

/// Drains `stream` as its consumer would (reads what is there, XDELs it)
/// until `n` entries were seen, asserting it never holds more than `cap`;
/// returns their `name` field values, sorted.
pub async fn drain_capped(
    client: &Client,
    stream: &str,
    cap: u64,
    n: usize,
    name: &str,
) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    let started = std::time::Instant::now();
    while seen.len() < n {
        assert!(started.elapsed() < LONG, "drain stalled at {}", seen.len());
        let batch = entries(client, stream).await;
        assert!(
            batch.len() as u64 <= cap,
            "`{stream}` passed max_len: {}",
            batch.len()
        );
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut args: Vec<Value> = vec![stream.into()];
        for (id, f) in &batch {
            seen.push(field(f, name).unwrap().parse().unwrap());
            args.push(id.as_str().into());
        }
        raw(client, "XDEL", args).await;
    }
    seen.sort_unstable();
    seen
}

/// One RESP command, binary-safe.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `XGROUP CREATE stream g 0 MKSTREAM`.
pub async fn create_group(client: &Client, stream: &str) {
    raw(
        client,
        "XGROUP",
        vec![
            "CREATE".into(),
            stream.into(),
            "g".into(),
            "0".into(),
            "MKSTREAM".into(),
        ],
    )
    .await;
}
