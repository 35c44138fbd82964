//! Across hosts, with the `sluice` binary against private servers:
//!
//! 1. Redis A → Redis B: a backlog of seed-shaped 4-field jobs on A moved
//!    by one worker to a stream on B (`[redis.remote.b]`), at-least-once
//!    and exactly-once (the dedup script on B);
//! 2. ClickHouse → stream: a `[[source]]` reading a table into a stream,
//!    narrow rows (seed-shaped: UInt64 + 3 Strings + DateTime) and wide
//!    rows (20 columns of most types, arrays and nullables included),
//!    at-least-once and exactly-once.
//!
//! Rates are from the worker's start to the last entry on the target
//! (start-up included). Everything shares the machine's cores.
//! `cargo bench --bench hosts`; knobs: `SLUICE_BENCH_N` (Redis backlog,
//! default 500,000), `SLUICE_BENCH_ROWS` (narrow table, default 1,000,000;
//! the wide one has a fifth of it).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::time::{Duration, Instant};

use common::{cmd, commandstats, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{wait_for, ClickHouseServer, RedisServer, Worker};

async fn xlen(client: &Client, stream: &str) -> u64 {
    let v: Value = client
        .custom(cmd("XLEN", stream), vec![stream.to_string()])
        .await
        .unwrap();
    v.as_u64().unwrap_or(0)
}

async fn reset_stats(client: &Client) {
    let _: Value = client
        .custom(cmd("CONFIG", ""), vec!["RESETSTAT"])
        .await
        .unwrap();
}

/// Redis's own µs per entry for `commands`, from INFO commandstats.
async fn redis_us(client: &Client, commands: &[&str], n: u64) -> f64 {
    let stats = commandstats(client).await;
    let usec: u64 = commands
        .iter()
        .map(|c| stats.get(*c).map_or(0, |s| s.1))
        .sum();
    usec as f64 / n as f64
}

struct Run {
    label: String,
    rows: u64,
    secs: f64,
    note: String,
}

async fn redis_to_redis(n: usize, exactly_once: bool) -> Run {
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (ra, rb) = (a.client().await, b.client().await);
    let (src, dst) = ("jobs.out", "jobs.in");
    enqueue(&ra, &[src], 0, n).await;
    reset_stats(&ra).await;
    reset_stats(&rb).await;
    let delivery = if exactly_once {
        "delivery = \"exactly_once\""
    } else {
        ""
    };
    let config = format!(
        r#"[redis]
url = "{}"
[redis.remote.b]
url = "{}"
[[flow]]
name = "share"
streams = ["{src}"]
batch = {{ max_rows = 5000, max_wait = "100ms" }}
{delivery}
sink = {{ type = "stream", redis = "b", to = "{dst}" }}
"#,
        a.url(),
        b.url()
    );
    let started = Instant::now();
    let _worker = Worker::spawn(&config);
    wait_for(Duration::from_secs(900), "backlog moved to B", || async {
        xlen(&rb, dst).await >= n as u64
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let a_us = redis_us(&ra, &["xreadgroup", "xack"], n as u64).await;
    let b_us = redis_us(&rb, &["xadd", "evalsha", "hdel", "xlen"], n as u64).await;
    Run {
        label: format!(
            "Redis A → Redis B, {}",
            if exactly_once {
                "exactly-once"
            } else {
                "at-least-once"
            }
        ),
        rows: n as u64,
        secs,
        note: format!("A {a_us:.2} µs/entry (XREADGROUP+XACK), B {b_us:.2} µs/entry"),
    }
}

const NARROW: &str =
    "(rec_id UInt64, task_for String, function_type String, data String, ts DateTime) \
                      ENGINE = MergeTree ORDER BY rec_id";
const NARROW_ROWS: &str = "SELECT number, ['a', 'b', 'c'][number % 3 + 1], if(number % 2 = 0, 'sum', 'avg'), \
                           concat('{\"x\":', toString(number), '}'), toDateTime(1700000000 + number)";
const WIDE: &str = "(id UInt64, i8 Int8, i32 Int32, i64 Int64, u16 UInt16, f32 Float32, f64 Float64, s String, \
                    fs FixedString(8), d Date, dt DateTime, u UUID, e Enum8('a' = 1, 'b' = 2), d18 Decimal(18, 4), \
                    ni Nullable(Int32), ns Nullable(String), ai Array(Int32), astr Array(String), \
                    anf Array(Nullable(Float64)), ad Array(Date)) ENGINE = MergeTree ORDER BY id";
const WIDE_ROWS: &str = "SELECT number, toInt8(number % 100), toInt32(number) - 1000000, toInt64(number) * 1000003, \
                         toUInt16(number % 60000), toFloat32(number) / 7, toFloat64(number) / 3, concat('s', toString(number)), \
                         toFixedString(toString(number % 100000), 8), toDate(number % 50000), toDateTime(1600000000 + number), \
                         generateUUIDv4(), CAST(if(number % 2 = 0, 'a', 'b') AS Enum8('a' = 1, 'b' = 2)), \
                         toDecimal64(number, 4) / 7, if(number % 5 = 0, NULL, toInt32(number)), \
                         if(number % 7 = 0, NULL, toString(number)), arrayMap(x -> toInt32(x), range(number % 4)), \
                         arrayMap(x -> toString(x), range(number % 3)), arrayMap(x -> if(x = 1, NULL, x / 3), range(number % 3)), \
                         arrayMap(x -> toDate(x * 100), range(number % 2))";

async fn clickhouse_to_stream(
    redis: &RedisServer,
    ch: &ClickHouseServer,
    label: &str,
    (schema, rows_sql): (&str, &str),
    rows: usize,
    exactly_once: bool,
) -> Run {
    let rc = redis.client().await;
    let table = harness::unique_name("bench_src");
    let stream = harness::unique_name("bench_rows");
    ch.exec(&format!("CREATE TABLE {table} {schema}")).await;
    ch.exec(&format!(
        "INSERT INTO {table} {rows_sql} FROM numbers({rows})"
    ))
    .await;
    reset_stats(&rc).await;
    let delivery = if exactly_once {
        "exactly_once"
    } else {
        "at_least_once"
    };
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[[source]]
name = "bench"
type = "clickhouse"
table = "{table}"
cursor = "{}"
to = "{stream}"
page = 20000
delivery = "{delivery}"
"#,
        redis.url(),
        ch.url(),
        if schema.starts_with("(rec_id") {
            "rec_id"
        } else {
            "id"
        }
    );
    let started = Instant::now();
    let _worker = Worker::spawn(&config);
    wait_for(
        Duration::from_secs(900),
        "table written to the stream",
        || async { xlen(&rc, &stream).await >= rows as u64 },
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let us = redis_us(&rc, &["xadd", "evalsha"], rows as u64).await;
    let _: Value = rc.custom(cmd("DEL", ""), vec![stream]).await.unwrap();
    ch.exec(&format!("DROP TABLE {table}")).await;
    Run {
        label: format!("ClickHouse → stream, {label}, {delivery}"),
        rows: rows as u64,
        secs,
        note: format!("Redis {us:.2} µs/row"),
    }
}

fn main() {
    if !under_cargo_bench("hosts") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("SLUICE_BENCH_N", 500_000);
        let rows = env_usize("SLUICE_BENCH_ROWS", 1_000_000);
        let mut runs = vec![
            redis_to_redis(n, false).await,
            redis_to_redis(n, true).await,
        ];
        let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
        for eo in [false, true] {
            runs.push(
                clickhouse_to_stream(
                    &redis,
                    &ch,
                    "5 narrow columns",
                    (NARROW, NARROW_ROWS),
                    rows,
                    eo,
                )
                .await,
            );
        }
        for eo in [false, true] {
            runs.push(
                clickhouse_to_stream(
                    &redis,
                    &ch,
                    "20 wide columns",
                    (WIDE, WIDE_ROWS),
                    rows / 5,
                    eo,
                )
                .await,
            );
        }
        println!("\nsluice hosts bench (1 worker, private servers, same 2-core box)");
        println!(
            "  {:<58} {:>10} {:>9} {:>11}  server cost",
            "run", "rows", "secs", "rows/s"
        );
        for r in &runs {
            println!(
                "  {:<58} {:>10} {:>9.2} {:>11.0}  {}",
                r.label,
                r.rows,
                r.secs,
                r.rows as f64 / r.secs,
                r.note
            );
        }
    });
}
