//! ClickHouse as a source (`[[source]]`): a table on ClickHouse A read in
//! cursor order into a stream, landed by a flow on ClickHouse B. Every type
//! 18.16 has round-trips unchanged (checksum), a source replica killed
//! mid-run is taken over without loss or (exactly-once) duplicates,
//! `follow` picks up later rows, ties of a non-unique cursor are read
//! whole, `max_len` pauses the source, rows that cannot be entries are
//! dead-lettered, and `sluice check` / `sluice status` describe it.

use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::harness::{unique_name, wait_for, ClickHouseServer, RedisServer, Worker};

/// Redis + ClickHouse A (the source) + ClickHouse B (the sink).
pub struct Hosts {
    pub redis: RedisServer,
    pub a: ClickHouseServer,
    pub b: ClickHouseServer,
    pub rc: Client,
}

impl Hosts {
    pub async fn start() -> Hosts {
        let (redis, a, b) = tokio::join!(
            RedisServer::start(),
            ClickHouseServer::start(),
            ClickHouseServer::start()
        );
        let rc = redis.client().await;
        Hosts { redis, a, b, rc }
    }

    /// `[redis]`, `[clickhouse.remote.a]`, `[clickhouse.remote.b]`, then `rest`.
    pub fn config(&self, rest: &str) -> String {
        format!(
            r#"
[redis]
url = "{}"
[clickhouse.remote.a]
url = "{}"
[clickhouse.remote.b]
url = "{}"
[worker]
shutdown_timeout = "20s"
block = "200ms"
{rest}
"#,
            self.redis.url(),
            self.a.url(),
            self.b.url()
        )
    }
}

/// A `[[source]]` reading `table` on A into `stream`; `extra` is appended.
pub fn source(name: &str, table: &str, stream: &str, extra: &str) -> String {
    format!(
        r#"
[[source]]
name = "{name}"
type = "clickhouse"
clickhouse = "a"
table = "{table}"
to = "{stream}"
lease = "2s"
{extra}
"#
    )
}

/// A flow landing `stream` in `table` on B.
pub fn land(stream: &str, table: &str) -> String {
    format!(
        r#"
[[flow]]
name = "land"
streams = ["{stream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}", clickhouse = "b" }}
batch = {{ max_rows = 20000, max_wait = "200ms" }}
"#
    )
}

/// Runs DDL with LowCardinality allowed (18.16 needs the setting).
pub async fn exec_lc(ch: &ClickHouseServer, sql: &str) {
    ch.client()
        .with_setting("allow_experimental_low_cardinality_type", "1")
        .query_raw(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
}

/// `count()` and a checksum of every column's text, NULL spelled `\N`.
/// (`groupBitXor(cityHash64(*))` would do on current servers; 18.16's
/// cityHash64 takes no Decimal, UUID or Nullable array.)
pub async fn checksum(
    ch: &ClickHouseServer,
    table: &str,
    columns: &[&str],
    filter: &str,
) -> String {
    let parts: Vec<String> = columns
        .iter()
        .map(|c| format!("ifNull(toString({c}), '\\\\N')"))
        .collect();
    ch.query_tsv(&format!(
        "SELECT count(), groupBitXor(cityHash64({})) FROM {table} {filter}",
        parts.join(", ")
    ))
    .await
    .trim()
    .to_string()
}

/// XADDs ever made to `stream` (XINFO STREAM `entries-added`, Redis 7).
pub async fn entries_added(client: &Client, stream: &str) -> u64 {
    let Value::Array(kv) = raw_or_nil(client, "XINFO", vec!["STREAM".into(), stream.into()]).await
    else {
        return 0;
    };
    kv.chunks(2)
        .find(|p| p[0].as_string().as_deref() == Some("entries-added"))
        .and_then(|p| p[1].as_u64())
        .unwrap_or(0)
}

/// The source's cursor hash field, if set.
pub async fn cursor_field(
    client: &Client,
    source: &str,
    stream: &str,
    field: &str,
) -> Option<String> {
    let key = format!("sluice:source:{{{stream}}}:{source}");
    match raw(client, "HGET", vec![key.into(), field.into()]).await {
        Value::Null => None,
        v => v.as_string(),
    }
}

/// Every column type ClickHouse 18.16 has that the sink supports.
const ALL_TYPES: &str = r#"(
  id UInt64,
  i8 Int8, i16 Int16, i32 Int32, i64 Int64,
  u8 UInt8, u16 UInt16, u32 UInt32, u64 UInt64,
  f32 Float32, f64 Float64,
  s String, fs FixedString(8),
  d Date, dt DateTime, u UUID,
  e8 Enum8('a' = 1, 'b' = 2, 'c' = -3), e16 Enum16('x' = 1000, 'y' = -1000),
  d9 Decimal(9, 2), d18 Decimal(18, 4), d38 Decimal(38, 10),
  ni Nullable(Int32), ns Nullable(String), ndt Nullable(DateTime), nd Nullable(Decimal(18, 4)),
  lc LowCardinality(String), lcn LowCardinality(Nullable(String)),
  ai Array(Int32), astr Array(String), anf Array(Nullable(Float64)), aa Array(Array(UInt8)),
  ad Array(Date), adec Array(Decimal(9, 2)), au Array(UUID), ae Array(Enum8('a' = 1, 'b' = 2)),
  afs Array(FixedString(3)), alc Array(LowCardinality(String))
) ENGINE = MergeTree ORDER BY id"#;

const ALL_COLUMNS: &[&str] = &[
    "id", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f32", "f64", "s", "fs", "d", "dt",
    "u", "e8", "e16", "d9", "d18", "d38", "ni", "ns", "ndt", "nd", "lc", "lcn", "ai", "astr",
    "anf", "aa", "ad", "adec", "au", "ae", "afs", "alc",
];

/// Rows covering edge values: day and second 0 (18.16 prints them
/// `0000-00-00`) and dates up to 2106 (18.16 prints days from 2106-02-07
/// as 1970), NaN and infinities, bytes that are not UTF-8 and
/// control characters in a String, quotes and backslashes in array strings,
/// NULLs at every level, empty and nested arrays, FixedString padding.
fn insert_all_types(table: &str, rows: usize) -> String {
    format!(
        r#"INSERT INTO {table} SELECT
  number,
  toInt8(number % 256 - 128), toInt16(number % 65536 - 32768), toInt32(number * 7919) - 1000000000,
  toInt64(number) * 30000000000000 - 9000000000000000000,
  toUInt8(number % 256), toUInt16(number % 65536), toUInt32(number * 14321), number * 61489000000000,
  toFloat32(number) / 7, if(number % 997 = 0, nan, if(number % 991 = 0, -inf, toFloat64(number) / 3 - 50000)),
  concat('s', toString(number), if(number % 101 = 0, unhex('00FF0A09'), '')), toFixedString(toString(number), 8),
  toDate(number % 60000), toDateTime(number * 14316), generateUUIDv4(),
  CAST(multiIf(number % 3 = 0, 'a', number % 3 = 1, 'b', 'c') AS Enum8('a' = 1, 'b' = 2, 'c' = -3)),
  CAST(if(number % 2 = 0, 'x', 'y') AS Enum16('x' = 1000, 'y' = -1000)),
  toDecimal32(toInt32(number % 2000000) - 1000000, 2) / 100, toDecimal64(toInt64(number) - 150000, 4) / 7,
  toDecimal128(number, 10) / 3,
  if(number % 5 = 0, NULL, toInt32(number)), if(number % 7 = 0, NULL, concat('n', toString(number))),
  if(number % 3 = 0, NULL, toDateTime(number)), if(number % 4 = 0, NULL, toDecimal64(number, 4)),
  toString(number % 100), if(number % 9 = 0, NULL, toString(number % 50)),
  arrayMap(x -> toInt32(x) - 2, range(number % 5)),
  arrayMap(x -> concat('a"\\', toString(x)), range(number % 3)),
  arrayMap(x -> if(x = 1, NULL, toFloat64(x) / 3), range(number % 4)),
  arrayMap(x -> range(x), range(number % 3)),
  arrayMap(x -> toDate(x * 1000), range(number % 3)),
  arrayMap(x -> toDecimal32(x, 2) / 3, range(number % 3)),
  arrayMap(x -> generateUUIDv4(), range(number % 2)),
  arrayMap(x -> CAST(if(x % 2 = 0, 'a', 'b') AS Enum8('a' = 1, 'b' = 2)), range(number % 3)),
  arrayMap(x -> toFixedString(toString(x), 3), range(number % 3)),
  arrayMap(x -> toString(x), range(number % 2))
FROM numbers({rows})"#
    )
}

/// 300,000 rows of every type from A through a stream into B, the source
/// replica SIGKILLed mid-run and another taking over from the cursor.
#[tokio::test]
async fn all_types_move_between_clickhouse_servers_and_a_killed_source_is_taken_over() {
    const N: u64 = 300_000;
    let h = Hosts::start().await;
    let (ta, tb, stream, name) = (
        unique_name("src_all"),
        unique_name("dst_all"),
        unique_name("all_types"),
        unique_name("all"),
    );
    exec_lc(&h.a, &format!("CREATE TABLE {ta} {ALL_TYPES}")).await;
    exec_lc(&h.b, &format!("CREATE TABLE {tb} {ALL_TYPES}")).await;
    h.a.exec(&insert_all_types(&ta, N as usize)).await;
    let sources = h.config(&source(
        &name,
        &ta,
        &stream,
        "cursor = \"id\"\ndelivery = \"exactly_once\"\npage = 5000",
    ));
    // The landing flow runs in a worker of its own, never killed: what is
    // checked here is the source.
    let _land = Worker::spawn(&h.config(&land(&stream, &tb)));
    let mut first = Worker::spawn(&sources);
    wait_for(
        LONG,
        "a part written by the first source replica",
        // Two pages: mid-run, and soon enough for a loaded machine (a debug
        // build writes these wide rows at a few thousand per second).
        || async { entries_added(&h.rc, &stream).await >= 10_000 },
    )
    .await;
    first.kill();
    let at_kill = entries_added(&h.rc, &stream).await;
    assert!(at_kill < N, "killed after the end");
    let second = Worker::spawn(&sources);
    wait_for(
        Duration::from_secs(600),
        "the source done and B holding every row",
        || async {
            cursor_field(&h.rc, &name, &stream, "done_ms")
                .await
                .is_some()
                && h.b.count(&tb).await >= N
        },
    )
    .await;
    assert!(second
        .log_contents()
        .contains("running source (lease held)"));
    assert!(second.log_contents().contains("source finished"));
    // Exactly once into the stream, across the takeover.
    assert_eq!(
        entries_added(&h.rc, &stream).await,
        N,
        "killed at {at_kill}"
    );
    assert_eq!(xlen(&h.rc, &format!("{stream}:dead")).await, 0);
    assert_eq!(
        cursor_field(&h.rc, &name, &stream, "rows").await.as_deref(),
        Some("300000")
    );
    // B equals A, row for row and value for value.
    wait_for(LONG, "the flow acked everything", || async {
        pending(&h.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(
        h.b.query_u64(&format!("SELECT uniqExact(id) FROM {tb}"))
            .await,
        N
    );
    let want = checksum(&h.a, &ta, ALL_COLUMNS, "").await;
    assert!(want.starts_with("300000\t"), "{want}");
    assert_eq!(checksum(&h.b, &tb, ALL_COLUMNS, "").await, want);
}

/// `follow`: rows inserted after the source caught up are picked up; a
/// time cursor with a key (`(ts, id)` positions).
#[tokio::test]
async fn follow_mode_picks_up_rows_inserted_later() {
    let h = Hosts::start().await;
    let (ta, stream, name) = (
        unique_name("follow"),
        unique_name("follow"),
        unique_name("f"),
    );
    h.a.exec(&format!(
        "CREATE TABLE {ta} (ts DateTime, id UInt32, v String) ENGINE = MergeTree ORDER BY (ts, id)"
    ))
    .await;
    // Many rows share a second: the key tells them apart at page edges.
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT toDateTime(1700000000 + intDiv(number, 37)), number, toString(number) FROM numbers(1000)"
    ))
    .await;
    let _w = Worker::spawn(&h.config(&source(
        &name,
        &ta,
        &stream,
        "cursor = \"ts\"\nkey = [\"id\"]\nmode = \"follow\"\npoll = \"100ms\"\npage = 64",
    )));
    wait_for(LONG, "the first 1000 rows", || async {
        xlen(&h.rc, &stream).await == 1000
    })
    .await;
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT toDateTime(1800000000 + intDiv(number, 37)), 1000 + number, toString(1000 + number) FROM numbers(500)"
    ))
    .await;
    wait_for(LONG, "the 500 rows inserted later", || async {
        xlen(&h.rc, &stream).await >= 1500
    })
    .await;
    let mut ids: Vec<u32> = entries(&h.rc, &stream)
        .await
        .iter()
        .map(|(_, f)| field(f, "id").unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1500).collect::<Vec<_>>());
    let first = &entries(&h.rc, &stream).await[0].1;
    assert_eq!(
        first,
        &vec![
            ("ts".to_string(), "2023-11-14 22:13:20".to_string()),
            ("id".to_string(), "0".to_string()),
            ("v".to_string(), "0".to_string()),
        ]
    );
    assert!(cursor_field(&h.rc, &name, &stream, "done_ms")
        .await
        .is_none());
}

/// Without a key, rows sharing a cursor value are never split across
/// pages, even when a value has more rows than a page.
#[tokio::test]
async fn ties_of_a_non_unique_cursor_are_read_whole() {
    let h = Hosts::start().await;
    let (ta, stream, name) = (unique_name("ties"), unique_name("ties"), unique_name("t"));
    h.a.exec(&format!(
        "CREATE TABLE {ta} (grp UInt32, n UInt32) ENGINE = MergeTree ORDER BY grp"
    ))
    .await;
    // Group g has g % 20 + 1 rows: 1 … 20, pages of 7.
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT g, n FROM (SELECT number AS g FROM numbers(60)) ARRAY JOIN range(toUInt32(g % 20 + 1)) AS n"
    ))
    .await;
    let total = h.a.count(&ta).await;
    let _w = Worker::spawn(&h.config(&source(
        &name,
        &ta,
        &stream,
        "cursor = \"grp\"\npage = 7\ndelivery = \"exactly_once\"",
    )));
    wait_for(LONG, "the source done", || async {
        cursor_field(&h.rc, &name, &stream, "done_ms")
            .await
            .is_some()
    })
    .await;
    let mut rows: Vec<(u32, u32)> = entries(&h.rc, &stream)
        .await
        .iter()
        .map(|(_, f)| {
            (
                field(f, "grp").unwrap().parse().unwrap(),
                field(f, "n").unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len() as u64, total);
    rows.sort_unstable();
    rows.dedup();
    assert_eq!(rows.len() as u64, total, "a row written twice");
}

/// The target stream's `max_len` pauses the source; nothing is trimmed.
#[tokio::test]
async fn a_full_stream_pauses_the_source() {
    const N: usize = 500;
    const CAP: u64 = 50;
    let h = Hosts::start().await;
    let (ta, stream, name) = (unique_name("cap"), unique_name("cap"), unique_name("c"));
    h.a.exec(&format!(
        "CREATE TABLE {ta} (id UInt64, v String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT number, toString(number) FROM numbers({N})"
    ))
    .await;
    let w = Worker::spawn(&h.config(&source(
        &name,
        &ta,
        &stream,
        &format!("cursor = \"id\"\npage = 20\nmax_len = {CAP}\ncheck_every = \"20ms\""),
    )));
    wait_for(LONG, "the stream full and the source paused", || async {
        xlen(&h.rc, &stream).await == CAP && w.log_contents().contains("source paused")
    })
    .await;
    let seen = drain_capped(&h.rc, &stream, CAP, N, "id").await;
    assert_eq!(seen, (0..N as u64).collect::<Vec<_>>());
    assert!(w.log_contents().contains("source resumed"));
}

/// A row whose array holds a string that is not UTF-8 (JSON cannot carry
/// it) goes to the dead-letter stream with the reason; the others land.
#[tokio::test]
async fn rows_that_cannot_be_entries_are_dead_lettered() {
    let h = Hosts::start().await;
    let (ta, stream, name) = (unique_name("bad"), unique_name("bad"), unique_name("b"));
    h.a.exec(&format!(
        "CREATE TABLE {ta} (id UInt32, tags Array(String)) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT number, [if(number = 3, unhex('FF'), 'ok')] FROM numbers(5)"
    ))
    .await;
    let _w = Worker::spawn(&h.config(&source(&name, &ta, &stream, "cursor = \"id\"")));
    let dead = format!("{stream}:dead");
    wait_for(LONG, "four rows written, one dead-lettered", || async {
        xlen(&h.rc, &stream).await == 4 && xlen(&h.rc, &dead).await == 1
    })
    .await;
    let d = &entries(&h.rc, &dead).await[0].1;
    assert_eq!(field(d, "sluice.source"), Some(name.as_str()));
    assert_eq!(field(d, "sluice.position"), Some("3"));
    let reason = field(d, "sluice.reason").unwrap();
    assert!(
        reason.contains("column `tags` (Array(String))") && reason.contains("UTF-8"),
        "{reason}"
    );
    assert_eq!(field(d, "id"), Some("3"));
}

#[tokio::test]
async fn check_and_status_describe_sources() {
    let h = Hosts::start().await;
    let (ta, stream, name) = (unique_name("cli"), unique_name("cli"), unique_name("cli"));
    h.a.exec(&format!(
        "CREATE TABLE {ta} (ts DateTime, id UInt64, v Nullable(String)) ENGINE = MergeTree ORDER BY (ts, id)"
    ))
    .await;
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT toDateTime(number), number, NULL FROM numbers(10)"
    ))
    .await;
    let text = h.config(&source(
        &name,
        &ta,
        &stream,
        "cursor = \"ts\"\nkey = [\"id\"]\nwhere = \"id < 5\"",
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &text).unwrap();
    let run = |cmd: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([cmd, "--config", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        format!("clickhouse `a`: {} (version", h.a.url().trim_end_matches('/')),
        format!("ClickHouse `a` table `default`.`{ta}` → stream `{stream}` on redis `default` (once, at-least-once)"),
        "fields: ts DateTime, id UInt64, v Nullable(String)".to_string(),
        "ordered by (ts, id), where id < 5".to_string(),
    ] {
        assert!(stdout.contains(&want), "{want:?} not in:\n{stdout}");
    }
    // The source runs; status shows it done with its position.
    let mut w = Worker::spawn(&text);
    wait_for(LONG, "done", || async {
        cursor_field(&h.rc, &name, &stream, "done_ms")
            .await
            .is_some()
    })
    .await;
    w.term();
    w.wait_exit(LONG).await;
    let out = run("status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains(&format!("a:{ta}")) && line.contains("done") && line.ends_with("4, 4"),
        "{line}"
    );
    // A column the table lacks fails the check, naming the key.
    std::fs::write(&path, text.replace("key = [\"id\"]", "key = [\"nope\"]")).unwrap();
    let out = run("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("source[0].key") && err.contains("nope"),
        "{err}"
    );
}
