//! Claiming under a backlog: a pending list of 1M entries held by ten
//! replicas, one of which dies. `cargo bench --bench claim`.
//!
//! Nine live replicas are simulated with sluice's own keep-alive
//! ([`sluice::testing::KeepAlive`], their reads recorded in a
//! `Held` each); the tenth consumer stops. One real `sluice` worker (a
//! live replica with nothing of its own pending) then has to find the dead
//! replica's entries behind the live ones and land them in ClickHouse.
//!
//! Prints: the cost of one XAUTOCLAIM page on the long list with nothing
//! idle (Redis ms per call and µs per entry inspected, from `INFO
//! commandstats`), the worker's claim-pass cost per tick while nothing is
//! due, the keep-alive pass of a replica holding its share (wall ms, Redis
//! µs per entry), and how long after its death the dead replica's entries
//! were all claimed by the worker and landed, against the bound
//! `2 × min_idle + claim.every`.
//!
//! Knobs: `SLUICE_BENCH_PENDING` (default 1,000,000), `SLUICE_BENCH_REPLICAS`
//! (default 10, one of them dead), `SLUICE_BENCH_MIN_IDLE_SECS` (default 10;
//! `claim.every` is a fifth of it).

mod common;
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cmd, commandstats, enqueue, env_usize, under_cargo_bench};
use fred::prelude::*;
use fred::types::Value;
use harness::{wait_for, ClickHouseServer, RedisServer, Worker};
use sluice::testing::Held;
use sluice::testing::KeepAlive;
use sluice::{testing::commands, Message};

const GROUP: &str = "g";

/// A consumer's pending count (XPENDING summary).
async fn pending_of(rc: &Client, stream: &str, consumer: &str) -> u64 {
    let v: Value = rc
        .custom(cmd("XPENDING", stream), vec![stream, GROUP])
        .await
        .unwrap();
    let Value::Array(items) = v else { return 0 };
    let Some(Value::Array(consumers)) = items.get(3) else {
        return 0;
    };
    for c in consumers {
        if let Value::Array(pair) = c {
            if pair[0].as_string().as_deref() == Some(consumer) {
                return pair[1]
                    .as_string()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    0
}

/// Redis time (µs) and calls of `commands` since the last reset.
fn spent(stats: &std::collections::HashMap<String, (u64, u64)>, commands: &[&str]) -> (u64, u64) {
    commands.iter().fold((0, 0), |(calls, us), c| {
        let (n, u) = stats.get(*c).copied().unwrap_or((0, 0));
        (calls + n, us + u)
    })
}

async fn reset_stats(rc: &Client) {
    let _: Value = rc
        .custom(cmd("CONFIG", ""), vec!["RESETSTAT"])
        .await
        .unwrap();
}

fn main() {
    if !under_cargo_bench("claim") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn run() {
    let n = env_usize("SLUICE_BENCH_PENDING", 1_000_000);
    let replicas = env_usize("SLUICE_BENCH_REPLICAS", 10).max(2);
    let min_idle = Duration::from_secs(env_usize("SLUICE_BENCH_MIN_IDLE_SECS", 10) as u64);
    let every = min_idle / 5;
    let (redis, ch) = tokio::join!(RedisServer::start(), ClickHouseServer::start());
    let rc = redis.client().await;
    let stream = harness::unique_name("claim");
    let table = harness::unique_name("claim");
    ch.exec(&format!("CREATE TABLE {table} (rec_id UInt64, task_for String, function_type String, data String, _id String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let _: Value = rc
        .custom(
            cmd("XGROUP", &stream),
            vec!["CREATE", &stream, GROUP, "0", "MKSTREAM"],
        )
        .await
        .unwrap();

    // The pending list: reads of 1,000 entries taken in turn by the
    // replicas, as a fleet reading one stream does.
    let t = Instant::now();
    enqueue(&rc, &[&stream], 0, n).await;
    let names: Vec<String> = (0..replicas)
        .map(|i| {
            if i == replicas - 1 {
                "dead".to_string()
            } else {
                format!("live-{i}")
            }
        })
        .collect();
    let helds: Vec<Arc<Held>> = (0..replicas).map(|_| Arc::new(Held::default())).collect();
    let streams: Vec<Arc<str>> = vec![Arc::from(stream.as_str())];
    let reader = redis.client().await;
    let mut dead_ids: Vec<bytes::Bytes> = Vec::new();
    for round in 0..n.div_ceil(1000) {
        let i = round % replicas;
        let mut out: Vec<Message> = Vec::new();
        commands::read_group(
            &reader,
            GROUP,
            &names[i],
            1000,
            Duration::from_millis(1),
            &streams,
            &mut out,
        )
        .await
        .unwrap();
        helds[i].insert_read(&out, std::time::Instant::now());
        if i == replicas - 1 {
            dead_ids.extend(out.into_iter().map(|m| m.id));
        }
    }
    eprintln!(
        "[claim] {n} pending over {replicas} consumers ({} dead) built in {:.1}s",
        dead_ids.len(),
        t.elapsed().as_secs_f64()
    );

    // One XAUTOCLAIM page on the long list, nothing idle.
    reset_stats(&rc).await;
    let mut cursor = bytes::Bytes::from_static(b"0-0");
    for _ in 0..20 {
        let page =
            commands::auto_claim(&reader, &streams[0], GROUP, "probe", min_idle, &cursor, 100)
                .await
                .unwrap();
        cursor = page.cursor;
    }
    let (calls, us) = spent(&commandstats(&rc).await, &["xautoclaim"]);
    let autoclaim_ms = us as f64 / calls as f64 / 1000.0;
    let autoclaim_us_entry = us as f64 / (calls * 1000) as f64;

    // The live replicas' keep-alive, every `every`, as sluice runs it.
    let keep_alive: Vec<KeepAlive> = (0..replicas - 1)
        .map(|i| KeepAlive {
            flow: "bench".into(),
            client: reader.clone(),
            streams: streams.clone(),
            group: GROUP.into(),
            consumer: names[i].clone(),
            held: helds[i].clone(),
            min_idle,
            every,
        })
        .collect();
    // One keep-alive pass per live replica, alone (every entry is idle
    // past min_idle / 4 by now).
    reset_stats(&rc).await;
    let t = Instant::now();
    let mut refreshed = 0;
    for ka in &keep_alive {
        refreshed += ka.pass(&streams[0]).await.unwrap().refreshed;
    }
    let ka_ms = t.elapsed().as_secs_f64() * 1000.0 / keep_alive.len() as f64;
    let (_, ka_us) = spent(&commandstats(&rc).await, &["xpending", "xclaim"]);
    let ka_us_entry = ka_us as f64 / refreshed.max(1) as f64;
    let stop = tokio_util::sync::CancellationToken::new();
    let ka_task = {
        let (stop, stream) = (stop.clone(), streams[0].clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while !stop.is_cancelled() {
                tick.tick().await;
                for ka in &keep_alive {
                    ka.pass(&stream).await.unwrap();
                }
            }
        })
    };

    // The dead replica's last keep-alive, then it stops.
    for chunk in dead_ids.chunks(10_000) {
        commands::touch(&reader, &stream, GROUP, "dead", Duration::ZERO, chunk)
            .await
            .unwrap();
    }
    let died = Instant::now();
    // The worker: a live replica with nothing of its own.
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[[flow]]
name = "bench"
streams = ["{stream}"]
group = "{GROUP}"
sink = {{ type = "clickhouse", table = "{table}" }}
batch = {{ max_rows = 50000, max_bytes = "16MiB", max_wait = "1s" }}
claim = {{ min_idle = "{}ms", every = "{}ms" }}
metadata = {{ id = "_id" }}
"#,
        redis.url(),
        ch.url(),
        min_idle.as_millis(),
        every.as_millis()
    );
    let worker = Worker::spawn(&config);
    wait_for(Duration::from_secs(60), "worker running", || async {
        worker.log_contents().contains("flow running")
    })
    .await;
    // While nothing is due: the claim pass's cost per tick.
    reset_stats(&rc).await;
    let idle_from = Instant::now();
    tokio::time::sleep(min_idle.saturating_sub(died.elapsed() + Duration::from_secs(1))).await;
    let ticks = (idle_from.elapsed().as_secs_f64() / every.as_secs_f64()).max(1.0);
    let (_, pass_us) = spent(&commandstats(&rc).await, &["xinfo", "xautoclaim"]);

    let mut claimed_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while claimed_at.is_none() && Instant::now() < deadline {
        if pending_of(&rc, &stream, "dead").await == 0 {
            claimed_at = Some(died.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let dead_n = dead_ids.len() as u64;
    wait_for(
        Duration::from_secs(600),
        "dead replica's rows landed",
        || async { ch.count(&table).await >= dead_n },
    )
    .await;
    let landed_at = died.elapsed();
    stop.cancel();
    let _ = ka_task.await;
    drop(worker);

    let live_each = (n - dead_ids.len()) / (replicas - 1);
    println!("\nsluice claim bench: {n} pending over {replicas} consumers, one dead ({} entries); min_idle {:?}, claim.every {:?}", dead_ids.len(), min_idle, every);
    println!("XAUTOCLAIM COUNT 100 on the list, nothing idle: {autoclaim_ms:.2} ms of Redis per call, {autoclaim_us_entry:.3} µs per entry inspected (10 × COUNT)");
    println!(
        "worker claim pass while nothing is due: {:.2} ms of Redis per tick (XINFO CONSUMERS, oldest-entry probes, one XAUTOCLAIM page)",
        (pass_us as f64 / ticks) / 1000.0
    );
    println!(
        "keep-alive pass of a replica holding {live_each}: {ka_ms:.0} ms wall; Redis {ka_us_entry:.3} µs per entry refreshed (XPENDING IDLE pages + XCLAIM JUSTID)"
    );
    match claimed_at {
        Some(at) => println!(
            "dead replica's entries all claimed {:.1} s after its death (bound 2 × min_idle + claim.every = {:.1} s); all landed after {:.1} s",
            at.as_secs_f64(),
            (2 * min_idle + every).as_secs_f64(),
            landed_at.as_secs_f64()
        ),
        None => println!("dead replica's entries NOT all claimed within 600 s"),
    }
}
