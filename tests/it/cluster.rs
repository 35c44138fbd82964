//! Redis Cluster: a flow's stream sharded over a 3-master cluster
//! (`[streams."x"] shards = N`), several worker replicas reading every
//! shard into ClickHouse, producers spreading entries over the shards, and
//! a master restarted mid-run without losing an entry.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use crate::common::LONG;
use crate::harness::{secs, unique_name, wait_for, ClickHouseServer, RedisCluster, Worker};

fn cmd(name: &'static str, key: &str) -> CustomCommand {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

fn shard(base: &str, i: usize) -> String {
    format!("{base}:{{{i}}}")
}

/// XADDs rec_id = `from..to` round-robin over `shards` shard streams of
/// `base`, pipelined; each entry is retried until Redis confirms it (a
/// retry after a lost reply may add it twice; ClickHouse checks count ids).
async fn produce(rc: &Client, base: &str, shards: usize, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let end = (i + 500).min(to);
        let pipeline = rc.pipeline();
        for j in i..end {
            let stream = shard(base, j % shards);
            let args: Vec<Value> = vec![
                stream.as_str().into(),
                "*".into(),
                "rec_id".into(),
                j.to_string().into(),
                "data".into(),
                format!("payload-{j}").into(),
            ];
            let _: Value = pipeline
                .custom(cmd("XADD", &stream), args)
                .await
                .expect("queue XADD");
        }
        match pipeline.try_all::<Value>().await {
            results if results.iter().all(Result::is_ok) => i = end,
            // A node is down or moving: resend the whole chunk.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Produces rec_id `0..n` in chunks of 1,000 in the background, pausing
/// `pause` between chunks; the counter tells how many are confirmed.
fn spawn_producer(
    rc: &Client,
    base: &str,
    shards: usize,
    n: usize,
    pause: Duration,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let produced = Arc::new(AtomicUsize::new(0));
    let (rc, base, counter) = (rc.clone(), base.to_string(), produced.clone());
    let task = tokio::spawn(async move {
        let mut i = 0;
        while i < n {
            let end = (i + 1000).min(n);
            produce(&rc, &base, shards, i, end).await;
            counter.store(end, Ordering::SeqCst);
            i = end;
            tokio::time::sleep(pause).await;
        }
    });
    (task, produced)
}

async fn xpending_total(rc: &Client, stream: &str, group: &str) -> u64 {
    let reply: Result<Value, _> = rc
        .custom(
            cmd("XPENDING", stream),
            vec![Value::from(stream), Value::from(group)],
        )
        .await;
    match reply {
        Ok(Value::Array(items)) => items.first().and_then(Value::as_u64).unwrap_or(0),
        _ => u64::MAX, // no group yet, or unreachable: not done
    }
}

fn config(redis_url: &str, ch_url: &str, base: &str, shards: usize, table: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
[clickhouse]
url = "{ch_url}"
[worker]
shutdown_timeout = "20s"
block = "200ms"
[streams."{base}"]
shards = {shards}
[[flow]]
name = "cluster"
streams = ["{base}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}" }}
batch = {{ max_rows = 2000, max_wait = "100ms" }}
claim = {{ min_idle = "4s", every = "1s" }}
metadata = {{ id = "_id", stream = "_stream" }}
"#
    )
}

async fn create_table(ch: &ClickHouseServer, table: &str) {
    ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, data String, _id String, _stream String)
         ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
}

/// Waits until ClickHouse holds every rec_id in 0..n and nothing is pending.
async fn wait_all_landed(
    ch: &ClickHouseServer,
    rc: &Client,
    table: &str,
    base: &str,
    shards: usize,
    n: usize,
    workers: &[Worker],
) {
    let sql = format!("SELECT uniqExact(rec_id) FROM {table} WHERE rec_id < {n}");
    let logs = || {
        workers
            .iter()
            .map(|w| w.log_contents())
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    wait_for(LONG * 2, "every id in ClickHouse", || async {
        ch.query_u64(&sql).await == n as u64
    })
    .await;
    wait_for(LONG, "nothing pending on any shard", || async {
        let mut total = 0;
        for i in 0..shards {
            total += xpending_total(rc, &shard(base, i), "g").await;
        }
        total == 0
    })
    .await;
    let rows = ch.query_u64(&format!("SELECT count() FROM {table}")).await as usize;
    assert!(rows >= n, "{rows} rows < {n}\n{}", logs());
}

#[tokio::test]
async fn sharded_stream_on_three_masters_lands_every_id_with_three_workers() {
    let (cluster, ch) = tokio::join!(RedisCluster::start(3), ClickHouseServer::start());
    let rc = cluster.client().await;
    let (base, table) = (unique_name("cl"), unique_name("cl"));
    let shards = 6;
    create_table(&ch, &table).await;
    // The shards really are spread over all three masters.
    let mut owners: Vec<usize> = Vec::new();
    for i in 0..shards {
        owners.push(cluster.owner_of(&shard(&base, i)).await);
    }
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 3, "6 shards over 3 masters: {owners:?}");

    let n = 30_000;
    produce(&rc, &base, shards, 0, n / 2).await;
    let cfg = config(&cluster.url(), &ch.url(), &base, shards, &table);
    let workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&cfg)).collect();
    produce(&rc, &base, shards, n / 2, n).await;
    wait_all_landed(&ch, &rc, &table, &base, shards, n, &workers).await;

    // Every shard's entries came through, each tagged with its shard.
    let per_shard = ch
        .query_tsv(&format!(
            "SELECT _stream, count() FROM {table} GROUP BY _stream ORDER BY _stream FORMAT TSV"
        ))
        .await;
    assert_eq!(per_shard.lines().count(), shards, "{per_shard}");
    for line in per_shard.lines() {
        let count: usize = line.split('\t').nth(1).unwrap().parse().unwrap();
        assert!(count >= n / shards, "{per_shard}");
    }
    // All three replicas took part (each is a consumer of the group).
    let consumers: Vec<String> = {
        let mut names = Vec::new();
        for i in 0..shards {
            let s = shard(&base, i);
            let v: Value = rc
                .custom(
                    cmd("XINFO", &s),
                    vec![
                        Value::from("CONSUMERS"),
                        Value::from(s.as_str()),
                        "g".into(),
                    ],
                )
                .await
                .unwrap();
            if let Value::Array(items) = v {
                for item in items {
                    if let Value::Array(kv) = item {
                        names.push(kv[1].as_string().unwrap_or_default());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(consumers.len(), 3, "{consumers:?}");
    // `sluice status` has a row per shard, each fully consumed.
    let status = crate::schedule::Cli::new(&cfg).ok(&["status"]);
    for i in 0..shards {
        let row = status
            .lines()
            .find(|l| l.contains(&shard(&base, i)))
            .unwrap_or_else(|| panic!("no row for shard {i}:\n{status}"));
        assert!(row.contains("cluster"), "{row}");
    }
}

#[tokio::test]
async fn master_restarted_mid_run_loses_nothing() {
    restart_mid_run(false).await;
}

/// The same with SIGKILL: AOF with `appendfsync always` keeps every write
/// Redis acknowledged.
#[tokio::test]
async fn master_crashed_mid_run_loses_nothing() {
    restart_mid_run(true).await;
}

async fn restart_mid_run(crash: bool) {
    let (mut cluster, ch) = tokio::join!(RedisCluster::start(3), ClickHouseServer::start());
    let rc = cluster.client().await;
    let (base, table) = (unique_name("clr"), unique_name("clr"));
    let shards = 6;
    create_table(&ch, &table).await;
    let cfg = config(&cluster.url(), &ch.url(), &base, shards, &table);
    let workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&cfg)).collect();

    // Produce continuously in the background while a master restarts.
    let n = 40_000;
    let (producer, produced) = spawn_producer(&rc, &base, shards, n, Duration::from_millis(20));
    // Mid-run: some entries produced and some landed.
    wait_for(LONG, "a quarter produced and some rows landed", || async {
        produced.load(Ordering::SeqCst) >= n / 4 && ch.count(&table).await > 0
    })
    .await;
    let victim = cluster.owner_of(&shard(&base, 0)).await;
    let before = ch.count(&table).await;
    if crash {
        cluster.crash_node(victim).await;
    } else {
        cluster.restart_node(victim).await;
    }
    let produced_at_restart = produced.load(Ordering::SeqCst);
    assert!(
        produced_at_restart < n,
        "producer finished before the restart; make n larger"
    );
    tokio::time::timeout(secs(120), producer)
        .await
        .expect("producer finishes")
        .unwrap();
    assert_eq!(produced.load(Ordering::SeqCst), n, "producer finished");
    wait_all_landed(&ch, &rc, &table, &base, shards, n, &workers).await;
    let after = ch.count(&table).await;
    assert!(after >= n as u64 && before < n as u64);
    // The restarted master kept its shard's entries (AOF, fsync always).
    let restarted_len: Value = rc
        .custom(
            cmd("XLEN", &shard(&base, 0)),
            vec![Value::from(shard(&base, 0))],
        )
        .await
        .unwrap();
    assert!(restarted_len.as_u64().unwrap() >= (n / shards) as u64);
}

async fn xrange_field(rc: &Client, stream: &str, field: &str) -> Vec<String> {
    let v: Value = rc
        .custom(
            cmd("XRANGE", stream),
            vec![Value::from(stream), "-".into(), "+".into()],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    if let Value::Array(items) = v {
        for item in items {
            if let Value::Array(parts) = item {
                if let Some(Value::Array(flat)) = parts.get(1) {
                    for pair in flat.chunks(2) {
                        if pair[0].as_string().as_deref() == Some(field) {
                            out.push(pair[1].as_string().unwrap_or_default());
                        }
                    }
                }
            }
        }
    }
    out
}

/// `sluice enqueue` into a stream with `shard_by`: every entry lands on the
/// shard its key hashes to (same key, same shard), and a stream sink
/// forwarding into another sharded stream spreads round-robin.
#[tokio::test]
async fn producers_pick_shards_by_key_or_round_robin() {
    let cluster = RedisCluster::start(3).await;
    let rc = cluster.client().await;
    let (src, out) = (unique_name("src"), unique_name("out"));
    let cfg = format!(
        r#"
[redis]
url = "{url}"
[worker]
block = "200ms"
[streams."{src}"]
shards = 3
shard_by = "user"
[streams."{out}"]
shards = 4
[[flow]]
name = "fwd"
streams = ["{src}"]
group = "g"
sink = {{ type = "stream", to = "{out}" }}
batch = {{ max_rows = 100, max_wait = "50ms" }}
"#,
        url = cluster.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, &cfg).unwrap();
    let n = 600;
    let lines: String = (0..n)
        .map(|i| format!("{{\"rec_id\": {i}, \"user\": \"u{}\"}}\n", i % 20))
        .collect();
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, lines).unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "enqueue",
            &src,
            file.to_str().unwrap(),
            "--quiet",
            "--config",
        ])
        .arg(&config_path)
        .env_remove("SLUICE_CONFIG")
        .env_remove("REDIS_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LONG, status).await.unwrap().unwrap();
    assert!(output.status.success(), "{output:?}");

    // Each user's entries are all on one shard, and every shard has some.
    let mut owner: std::collections::HashMap<String, usize> = Default::default();
    let mut total = 0;
    for i in 0..3 {
        let users = xrange_field(&rc, &shard(&src, i), "user").await;
        assert!(!users.is_empty(), "shard {i} is empty");
        total += users.len();
        for u in users {
            assert_eq!(*owner.entry(u.clone()).or_insert(i), i, "{u} on two shards");
        }
    }
    assert_eq!(total, n);

    // The forwarding flow reads all 3 source shards and writes all 4 target shards.
    let worker = Worker::spawn(&cfg);
    wait_for(LONG, "every entry forwarded", || {
        let rc = rc.clone();
        let out = out.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..4 {
                ids.extend(xrange_field(&rc, &shard(&out, i), "rec_id").await);
            }
            ids.sort();
            ids.dedup();
            ids.len() == n
        }
    })
    .await;
    for i in 0..4 {
        let got = xrange_field(&rc, &shard(&out, i), "rec_id").await.len();
        assert!(
            got >= n / 4 - 1,
            "round-robin: shard {i} got {got}; {}",
            worker.log_contents()
        );
    }
}

/// The HTTP entry on a cluster: round-robin sends each request whole to one
/// shard (consecutive requests to different shards); with `shard_by` the
/// items of one request split by key; a full shard answers 429.
#[tokio::test]
async fn http_entry_writes_requests_to_shards() {
    use crate::harness::{free_port, port_open};
    use crate::http_entry::{http_section, post, TOKEN};
    let cluster = RedisCluster::start(3).await;
    let rc = cluster.client().await;
    let (rr, keyed) = (unique_name("rr"), unique_name("keyed"));
    let port = free_port();
    let cfg = format!(
        r#"
[redis]
url = "{url}"
[streams."{rr}"]
shards = 3
max_len = 4
[streams."{keyed}"]
shards = 3
shard_by = "user"
{http}
"#,
        url = cluster.url(),
        http = http_section(port, &[&rr, &keyed])
    );
    let _worker = Worker::spawn(&cfg);
    wait_for(LONG, "HTTP entry listening", || async {
        port_open(port).await
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let two = serde_json::json!([{"n": 1}, {"n": 2}]);
    for _ in 0..3 {
        let r = post(&base, &rr, Some(TOKEN), &two).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["ids"].as_array().unwrap().len(), 2);
    }
    for i in 0..3 {
        assert_eq!(
            xrange_field(&rc, &shard(&rr, i), "n").await,
            ["1", "2"],
            "shard {i}"
        );
    }
    // The stream's state adds up its shards.
    let state =
        crate::http_entry::request("GET", &format!("{base}/v1/streams/{rr}"), Some(TOKEN), None)
            .await
            .json();
    assert_eq!(state["length"], 6, "{state}");
    assert_eq!(state["max_len"], 4, "{state}");
    assert_eq!(state["shards"].as_array().unwrap().len(), 3, "{state}");
    assert_eq!(state["shards"][1]["stream"], shard(&rr, 1), "{state}");
    assert_eq!(state["shards"][1]["length"], 2, "{state}");
    // Each shard holds 2 of max_len 4: three more items do not fit anywhere.
    let three = serde_json::json!([{"n": 1}, {"n": 2}, {"n": 3}]);
    let r = post(&base, &rr, Some(TOKEN), &three).await;
    assert_eq!(r.status, 429, "{}", r.body);

    let items: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"user": format!("u{}", i % 6), "i": i}))
        .collect();
    let r = post(&base, &keyed, Some(TOKEN), &serde_json::Value::Array(items)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ids"].as_array().unwrap().len(), 30);
    let mut owner: std::collections::HashMap<String, usize> = Default::default();
    let mut total = 0;
    for i in 0..3 {
        for u in xrange_field(&rc, &shard(&keyed, i), "user").await {
            total += 1;
            assert_eq!(*owner.entry(u.clone()).or_insert(i), i, "{u} on two shards");
        }
    }
    assert_eq!(total, 30);
}

/// Retry with backoff through the shards' delayed sets, dead letters in the
/// flow's one dead-letter stream, `sluice dead replay` back into the shards
/// (two slots: add, then delete) and `sluice enqueue --delay`, all on a
/// cluster.
#[tokio::test]
async fn retry_dead_letters_replay_and_delayed_jobs_on_a_cluster() {
    const FLAKY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/flaky_handler.py"
    );
    let (cluster, ch) = tokio::join!(RedisCluster::start(3), ClickHouseServer::start());
    let rc = cluster.client().await;
    let (base, table) = (unique_name("rt"), unique_name("rt"));
    ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, data String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (log, marker) = (dir.path().join("calls.log"), dir.path().join("fail"));
    std::fs::write(&marker, "").unwrap();
    let cfg = format!(
        r#"
[redis]
url = "{url}"
[clickhouse]
url = "{ch}"
[worker]
block = "200ms"
[scheduler]
promote_every = "50ms"
[streams."{base}"]
shards = 3
[[flow]]
name = "flaky"
streams = ["{base}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}" }}
handler = {{ type = "exec", command = ["python3", "{FLAKY}"], workers = 2, timeout = "10s", env = {{ FLAKY_LOG = "{log}", FLAKY_FAIL_WHILE = "{marker}" }} }}
retry = {{ backoff = "exponential", base = "100ms", max = "200ms" }}
max_deliveries = 3
batch = {{ max_rows = 100, max_wait = "100ms" }}
claim = {{ min_idle = "60s", every = "1s" }}
"#,
        url = cluster.url(),
        ch = ch.url(),
        log = log.display(),
        marker = marker.display(),
    );
    let worker = Worker::spawn(&cfg);
    wait_for(LONG, "flow running", || async {
        worker.log_contents().contains("flow running")
    })
    .await;
    for i in 1..=6usize {
        let s = shard(&base, i % 3);
        let args: Vec<Value> = vec![
            s.as_str().into(),
            "*".into(),
            "rec_id".into(),
            i.to_string().into(),
            "data".into(),
            format!("d{i}").into(),
        ];
        let _: Value = rc.custom(cmd("XADD", &s), args).await.unwrap();
    }
    let dead_stream = format!("{base}:dead");
    let dead_len = || async {
        let v: Value = rc
            .custom(
                cmd("XLEN", &dead_stream),
                vec![Value::from(dead_stream.as_str())],
            )
            .await
            .unwrap();
        v.as_u64().unwrap_or(0)
    };
    wait_for(LONG, "six dead letters after their retries", || async {
        dead_len().await == 6
    })
    .await;
    // Every message was tried max_deliveries times (the first + 2 retries
    // through its shard's delayed set).
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().count(),
        18,
        "{calls}\n{}",
        worker.log_contents()
    );

    std::fs::remove_file(&marker).unwrap();
    let cli = crate::schedule::Cli::new(&cfg);
    let out = cli.ok(&["dead", "replay"]);
    assert!(out.contains("replayed 6 entries"), "{out}");
    wait_for(LONG, "replayed rows", || async {
        ch.count(&table).await == 6
    })
    .await;
    assert_eq!(dead_len().await, 0);

    // Delayed jobs into a sharded stream: held in the shards' sets, then in.
    let file = dir.path().join("later.jsonl");
    std::fs::write(
        &file,
        (7..=12)
            .map(|i| format!("{{\"rec_id\": {i}, \"data\": \"d{i}\"}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out = cli.ok(&[
        "enqueue",
        &base,
        file.to_str().unwrap(),
        "--delay",
        "300ms",
        "--quiet",
    ]);
    assert!(out.contains("held back"), "{out}");
    wait_for(LONG, "delayed rows", || async {
        ch.count(&table).await == 12
    })
    .await;
    let rows = ch
        .query_u64(&format!("SELECT uniqExact(rec_id) FROM {table}"))
        .await;
    assert_eq!(rows, 12);
}

/// Like [`produce`], but each chunk counts as produced only once every
/// master it went to has it on its replica (`WAIT 1`): replication is
/// asynchronous, and a failover may drop writes the old master confirmed.
/// Once `failed_over` is set, no node is expected to fail again (and the
/// promoted replica has no replica of its own), so that check stops.
async fn produce_replicated(
    rc: &Client,
    base: &str,
    shards: usize,
    (from, to): (usize, usize),
    failed_over: &AtomicBool,
) {
    let mut i = from;
    while i < to {
        let end = (i + 500).min(to);
        produce(rc, base, shards, i, end).await;
        if failed_over.load(Ordering::SeqCst) {
            i = end;
            continue;
        }
        let mut replicated = true;
        for s in 0..shards {
            let reply: Result<Value, _> = rc
                .custom(
                    cmd("WAIT", &shard(base, s)),
                    vec![Value::from(1), 2000.into()],
                )
                .await;
            replicated &= matches!(reply, Ok(Value::Integer(n)) if n >= 1);
        }
        if replicated {
            i = end;
        }
    }
}

/// A master killed for good: its replica takes over its slots, the
/// clients follow the new slot map, and every entry that reached the
/// replica lands in ClickHouse (duplicates allowed: acks the old master
/// confirmed may not have reached the replica, so some entries come again).
#[tokio::test]
async fn failover_to_a_replica_mid_run_keeps_every_replicated_entry() {
    let (mut cluster, ch) = tokio::join!(
        RedisCluster::start_with_replicas(3),
        ClickHouseServer::start()
    );
    let rc = cluster.client().await;
    let (base, table) = (unique_name("clf"), unique_name("clf"));
    let shards = 6;
    create_table(&ch, &table).await;
    let cfg = config(&cluster.url(), &ch.url(), &base, shards, &table);
    let workers: Vec<Worker> = (0..2).map(|_| Worker::spawn(&cfg)).collect();
    let n = 20_000;
    let produced = Arc::new(AtomicUsize::new(0));
    let failed_over = Arc::new(AtomicBool::new(false));
    let producer = {
        let (rc, base, produced) = (rc.clone(), base.clone(), produced.clone());
        let failed_over = failed_over.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while i < n {
                let end = (i + 1000).min(n);
                produce_replicated(&rc, &base, shards, (i, end), &failed_over).await;
                produced.store(end, Ordering::SeqCst);
                i = end;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_for(LONG, "a quarter produced and some rows landed", || async {
        produced.load(Ordering::SeqCst) >= n / 4 && ch.count(&table).await > 0
    })
    .await;
    let victim = cluster.owner_of(&shard(&base, 0)).await;
    cluster.fail_over(victim).await;
    failed_over.store(true, Ordering::SeqCst);
    assert_eq!(
        cluster.owner_of(&shard(&base, 0)).await,
        victim + 3,
        "the replica now serves shard 0"
    );
    assert!(
        produced.load(Ordering::SeqCst) < n,
        "failover after the producer finished"
    );
    tokio::time::timeout(secs(120), producer)
        .await
        .expect("producer finishes")
        .unwrap();
    wait_all_landed(&ch, &rc, &table, &base, shards, n, &workers).await;
}

/// Schedules on a cluster: three replicas fire a 200 ms schedule into a
/// stream sharded over the masters (round-robin). The tick's guard and the
/// entry are in different slots, so each tick fires in steps; still every
/// tick lands exactly once, with no gaps, and the shards share the ticks.
#[tokio::test]
async fn schedule_fires_each_tick_once_into_shards_with_three_replicas() {
    let cluster = RedisCluster::start(3).await;
    let rc = cluster.client().await;
    let (name, out) = (unique_name("sched"), unique_name("ticks"));
    let cfg = format!(
        r#"
[redis]
url = "{url}"
[worker]
block = "200ms"
[streams."{out}"]
shards = 3
[[schedule]]
name = "{name}"
every = "200ms"
stream = "{out}"
fields = {{ tick = "{{tick}}" }}
"#,
        url = cluster.url()
    );
    let mut fleet: Vec<Worker> = (0..3).map(|_| Worker::spawn(&cfg)).collect();
    let ticks = || async {
        let mut all = Vec::new();
        for i in 0..3 {
            all.push(xrange_field(&rc, &shard(&out, i), "tick").await);
        }
        all
    };
    wait_for(LONG, "30 ticks fired", || async {
        ticks().await.iter().map(Vec::len).sum::<usize>() >= 30
    })
    .await;
    for w in &fleet {
        w.term();
    }
    for w in &mut fleet {
        let status = w.wait_exit(LONG).await.expect("worker exited");
        assert!(status.success(), "{}", w.log_contents());
        assert!(
            !w.log_contents().contains("firing a tick failed"),
            "{}",
            w.log_contents()
        );
    }
    let per_shard = ticks().await;
    assert!(
        per_shard.iter().all(|s| s.len() >= 5),
        "round-robin should reach every shard: {per_shard:?}"
    );
    let mut all: Vec<u64> = per_shard
        .iter()
        .flatten()
        .map(|t| t.parse().expect("numeric tick"))
        .collect();
    all.sort_unstable();
    let fired = all.len();
    all.dedup();
    assert_eq!(all.len(), fired, "a tick fired twice");
    assert!(
        all.windows(2).all(|w| w[1] - w[0] == 200),
        "a tick is missing: {all:?}"
    );
    let key = format!("sluice:schedule:{{{name}}}");
    let counted: Option<String> = rc.hget(&key, "fired").await.unwrap();
    assert_eq!(counted.as_deref(), Some(fired.to_string().as_str()));
}

/// Exactly-once on a cluster: the ledger (one slot per flow), the ownership
/// check and recovery work across shards on three masters. A replica is
/// SIGKILLed mid-run and replaced; every id lands exactly once.
#[tokio::test]
async fn exactly_once_on_a_cluster_with_a_replica_killed_mid_run() {
    let (cluster, ch) = tokio::join!(RedisCluster::start(3), ClickHouseServer::start());
    let rc = cluster.client().await;
    let (base, table) = (unique_name("cleo"), unique_name("cleo"));
    let shards = 3;
    ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, data String, _id String, _stream String, _batch String)
         ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let cfg = config(&cluster.url(), &ch.url(), &base, shards, &table)
        .replace(
            "claim = { min_idle = \"4s\", every = \"1s\" }",
            "claim = { min_idle = \"2s\", every = \"500ms\" }\ndelivery = \"exactly_once\"\nbatch_id_column = \"_batch\"",
        )
        .replace("url = \"http", "insert_timeout = \"3s\"\nurl = \"http");
    assert!(
        cfg.contains("exactly_once") && cfg.contains("insert_timeout"),
        "{cfg}"
    );
    // Worker 0 reaches ClickHouse through a proxy that will hold its
    // insert, so it dies with a recorded batch in flight.
    let proxy = crate::harness::TcpProxy::start(ch.http_addr());
    let mut workers = vec![Worker::spawn(&cfg.replace(&ch.url(), &proxy.url()))];
    workers.extend((0..2).map(|_| Worker::spawn(&cfg)));

    let n = 20_000;
    let (producer, _produced) = spawn_producer(&rc, &base, shards, n, Duration::from_millis(150));
    wait_for(LONG, "rows landing", || async {
        ch.count(&table).await > 0
    })
    .await;
    proxy.stall();
    wait_for(LONG, "worker 0 holding a recorded batch", || async {
        workers[0]
            .log_contents()
            .contains("insert failed; settling")
    })
    .await;
    workers[0].kill();
    workers[0]
        .wait_exit(LONG)
        .await
        .expect("killed worker exited");
    workers.push(Worker::spawn(&cfg));
    tokio::time::timeout(secs(120), producer)
        .await
        .expect("producer finishes")
        .unwrap();
    wait_all_landed(&ch, &rc, &table, &base, shards, n, &workers[1..]).await;
    let rows = ch.count(&table).await;
    let unique = ch
        .query_u64(&format!("SELECT uniqExact(rec_id) FROM {table}"))
        .await;
    assert_eq!(
        (rows, unique),
        (n as u64, n as u64),
        "duplicates or loss in exactly-once mode"
    );
    assert_eq!(
        crate::common::open_batches(&rc, "cluster").await,
        0,
        "ledger records left open"
    );
    let logs: String = workers[1..].iter().map(|w| w.log_contents()).collect();
    assert!(
        logs.contains("recovering a dead replica's batch"),
        "no recovery seen:\n{logs}"
    );
    for w in &workers[1..] {
        let log = w.log_contents();
        assert!(
            !log.contains("CROSSSLOT") && !log.contains("ledger failed"),
            "{log}"
        );
    }
}
