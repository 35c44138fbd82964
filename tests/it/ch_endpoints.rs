//! Several ClickHouse endpoints (`clickhouse.urls`): two private servers
//! with the same table. One stopped mid-run: inserts fail over to the
//! other and nothing is lost; restarted: round-robin uses it again. A data
//! error does not fail over. With `shard_by`, every row lands on the shard
//! its key hashes to, and a down shard holds back only its own rows.
//! Exactly-once recovery finds a batch on whichever endpoint holds it. A
//! Distributed table over both servers takes inserts through either node.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::harness::{
    free_port, unique_name, wait_for, ClickHouseServer, ProxyMode, RedisServer, TcpProxy, Worker,
};
use crate::probe::metric;

struct Cluster {
    redis: RedisServer,
    a: ClickHouseServer,
    b: ClickHouseServer,
    rc: fred::prelude::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let (redis, a, b) = tokio::join!(
            RedisServer::start(),
            ClickHouseServer::start(),
            ClickHouseServer::start()
        );
        let rc = redis.client().await;
        Cluster { redis, a, b, rc }
    }

    /// The same DDL on both servers.
    async fn exec_both(&self, sql: &str) {
        tokio::join!(self.a.exec(sql), self.b.exec(sql));
    }

    fn config(&self, clickhouse_extra: &str, flow_extra: &str, metrics_port: u16) -> String {
        format!(
            r#"
[redis]
url = "{redis}"
[clickhouse]
urls = ["{a}", "{b}"]
health_check_every = "300ms"
insert_timeout = "10s"
{clickhouse_extra}
[worker]
shutdown_timeout = "10s"
block = "200ms"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[flow]]
name = "f"
group = "g"
batch = {{ max_rows = 200, max_wait = "50ms" }}
claim = {{ min_idle = "5s", every = "1s" }}
metadata = {{ id = "_id" }}
{flow_extra}
"#,
            redis = self.redis.url(),
            a = self.a.url(),
            b = self.b.url()
        )
    }
}

/// `_id`s in `table` on `ch`.
async fn ids(ch: &ClickHouseServer, table: &str) -> Vec<String> {
    ch.query_tsv(&format!("SELECT _id FROM {table}"))
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

/// Adds `seed_job` messages in small steps until stopped; returns the ids.
fn produce(
    rc: fred::prelude::Client,
    stream: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut all = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let base = all.len();
            let ids = xadd_many(&rc, &stream, 50, |i| seed_job(base + i)).await;
            all.extend(ids);
            sent.store(all.len(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        all
    })
}

fn sluice_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

#[tokio::test]
async fn stopped_endpoint_fails_over_loses_nothing_and_rejoins_round_robin() {
    let mut c = Cluster::start().await;
    let (stream, table) = (unique_name("chep"), unique_name("chep"));
    c.exec_both(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let port = free_port();
    let config = c.config(
        "endpoints = \"round_robin\"",
        &format!(
            "streams = [\"{stream}\"]\nsink = {{ type = \"clickhouse\", table = \"{table}\" }}"
        ),
        port,
    );
    let w = Worker::spawn(&config);
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let producer = produce(c.rc.clone(), stream.clone(), stop.clone(), sent.clone());
    let (a_label, b_label) = (c.a.url(), c.b.url());
    let up = |label: String| async move {
        metric(
            port,
            "sluice_clickhouse_endpoint_up",
            &[("endpoint", &label)],
        )
        .await
    };

    // Round-robin: both servers take batches.
    wait_for(LONG, "rows on both servers", || async {
        c.a.count(&table).await > 0 && c.b.count(&table).await > 0
    })
    .await;
    assert_eq!(up(a_label.clone()).await, Some(1.0));

    // A stops mid-run: its batches move to B; nothing is acked unconfirmed.
    c.a.stop().await;
    let sent_at_stop = sent.load(Ordering::Relaxed);
    wait_for(LONG, "A marked down", || async {
        up(a_label.clone()).await == Some(0.0)
    })
    .await;
    let b_at_down = c.b.count(&table).await;
    // Rows keep coming (produced after the stop) and keep landing on B.
    wait_for(LONG, "B takes every batch while A is down", || async {
        c.b.count(&table).await >= b_at_down + 1000
            && sent.load(Ordering::Relaxed) > sent_at_stop + 1000
    })
    .await;
    assert_eq!(up(b_label.clone()).await, Some(1.0));
    // `sluice check` names the down endpoint and still passes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &config).unwrap();
    let out = sluice_cli(&["check", "--config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("clickhouse.urls[0] {a_label} DOWN"))
            && text.contains(&format!("clickhouse.urls[1] {b_label} (version")),
        "{text}"
    );
    let out = sluice_cli(&["status", "--config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(&a_label) && l.contains("DOWN"))
            && text
                .lines()
                .any(|l| l.contains(&b_label) && l.contains(" up ")),
        "{text}"
    );

    // A is back: the health checks bring it in and round-robin uses it again.
    c.a.start_again().await;
    let a_at_restart = c.a.count(&table).await;
    wait_for(LONG, "A takes batches again", || async {
        c.a.count(&table).await >= a_at_restart + 200
    })
    .await;
    assert_eq!(up(a_label.clone()).await, Some(1.0));

    stop.store(true, Ordering::Relaxed);
    let produced = producer.await.unwrap();
    wait_for(LONG, "nothing pending or unread", || async {
        pending(&c.rc, &stream, "g").await == 0
            && c.a.count(&table).await + c.b.count(&table).await >= produced.len() as u64
    })
    .await;
    // Nothing lost, nothing twice: the two servers together hold each id once.
    let (on_a, on_b) = (ids(&c.a, &table).await, ids(&c.b, &table).await);
    assert_eq!(
        on_a.len() + on_b.len(),
        produced.len(),
        "duplicates or losses"
    );
    let union: HashSet<&String> = on_a.iter().chain(&on_b).collect();
    assert_eq!(union.len(), produced.len());
    assert!(produced.iter().all(|id| union.contains(id)));
    assert_eq!(xlen(&c.rc, &format!("{stream}:dead")).await, 0);
    assert!(
        metric(
            port,
            "sluice_clickhouse_endpoint_errors_total",
            &[("endpoint", &a_label), ("kind", "retry")]
        )
        .await
        .unwrap_or(0.0)
            + metric(
                port,
                "sluice_clickhouse_endpoint_errors_total",
                &[("endpoint", &a_label), ("kind", "health_check")]
            )
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    drop(w);
}

/// A worker inserting into `table` over A and B (failover), and 20 rows of
/// which only row 7 has `x = 13`.
async fn failover_worker_with_one_bad_row(
    c: &Cluster,
    stream: &str,
    table: &str,
    metrics_port: u16,
) -> Worker {
    let w = Worker::spawn(&c.config(
        "endpoints = \"failover\"",
        &format!(
            "streams = [\"{stream}\"]\nsink = {{ type = \"clickhouse\", table = \"{table}\" }}"
        ),
        metrics_port,
    ));
    for i in 0..20 {
        let x = if i == 7 { 13 } else { 100 + i }.to_string();
        xadd(&c.rc, stream, &[("id", &i.to_string()), ("x", &x)]).await;
    }
    w
}

#[tokio::test]
async fn data_error_is_not_retried_on_another_endpoint() {
    let c = Cluster::start().await;
    let (stream, table) = (unique_name("chep_bad"), unique_name("chep_bad"));
    // throwIf in a MATERIALIZED column: converts fine, refused by the server.
    c.exec_both(&format!(
        "CREATE TABLE {table} (id UInt64, x Int32, _id String, chk UInt8 MATERIALIZED throwIf(x = 13)) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let port = free_port();
    let w = failover_worker_with_one_bad_row(&c, &stream, &table, port).await;
    wait_for(LONG, "good rows landed, bad one dead-lettered", || async {
        c.a.count(&table).await == 19 && xlen(&c.rc, &format!("{stream}:dead")).await == 1
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&c.rc, &stream, "g").await == 0
    })
    .await;
    // Failover mode: A is healthy, so B never saw an insert, not even the refused rows.
    assert_eq!(c.b.count(&table).await, 0);
    assert!(!w.log_contents().contains("trying the next endpoint"));
    assert_eq!(
        metric(
            port,
            "sluice_clickhouse_endpoint_up",
            &[("endpoint", &c.a.url())]
        )
        .await,
        Some(1.0),
        "a data error does not mark the endpoint down"
    );
    assert!(
        metric(
            port,
            "sluice_clickhouse_endpoint_errors_total",
            &[("endpoint", &c.a.url()), ("kind", "bisect")]
        )
        .await
        .unwrap_or(0.0)
            > 0.0
    );
    let dead = entries(&c.rc, &format!("{stream}:dead")).await;
    let reason = field(&dead[0].1, "sluice.reason")
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("rejected by ClickHouse"), "{dead:?}");
}

/// A row a materialized view refuses with an error code no list names
/// (division by zero) is poison, not an outage: the endpoint stays up, the
/// insert is not walked across the endpoints, the row is dead-lettered.
#[tokio::test]
async fn a_row_a_view_refuses_neither_marks_the_endpoint_down_nor_walks_endpoints() {
    let c = Cluster::start().await;
    let (stream, table) = (unique_name("chep_view"), unique_name("chep_view"));
    c.exec_both(&format!(
        "CREATE TABLE {table} (id UInt64, x Int32, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    c.exec_both(&format!(
        "CREATE MATERIALIZED VIEW {table}_mv ENGINE = MergeTree ORDER BY id AS SELECT id, intDiv(100, x - 13) AS q FROM {table}"
    ))
    .await;
    let port = free_port();
    let w = failover_worker_with_one_bad_row(&c, &stream, &table, port).await;
    let dead_stream = format!("{stream}:dead");
    wait_for(
        LONG,
        "the bad row dead-lettered, or the batch walking endpoints",
        || async {
            xlen(&c.rc, &dead_stream).await == 1
                || w.log_contents().contains("trying the next endpoint")
        },
    )
    .await;
    assert!(
        !w.log_contents().contains("trying the next endpoint"),
        "a view's refusal was treated as an outage:\n{}",
        w.log_contents()
    );
    assert!(!w.log_contents().contains("endpoint marked down"));
    wait_for(LONG, "good rows in A's view, nothing pending", || async {
        c.a.count(&format!("{table}_mv")).await == 19 && pending(&c.rc, &stream, "g").await == 0
    })
    .await;
    assert_eq!(c.b.count(&table).await, 0, "B never saw an insert");
    for endpoint in [c.a.url(), c.b.url()] {
        assert_eq!(
            metric(
                port,
                "sluice_clickhouse_endpoint_up",
                &[("endpoint", &endpoint)]
            )
            .await,
            Some(1.0),
            "{endpoint}"
        );
    }
    let dead = entries(&c.rc, &dead_stream).await;
    let reason = field(&dead[0].1, "sluice.reason").unwrap_or_default();
    assert!(reason.contains("Division by zero"), "{dead:?}");
}

#[tokio::test]
async fn shard_by_places_rows_by_key_and_a_down_shard_holds_back_only_its_rows() {
    let mut c = Cluster::start().await;
    let (stream, table) = (unique_name("chep_shard"), unique_name("chep_shard"));
    c.exec_both(&format!(
        "CREATE TABLE {table} (user_id String, n UInt64, _id String) ENGINE = MergeTree ORDER BY n"
    ))
    .await;
    let port = free_port();
    let _w = Worker::spawn(&c.config(
        "",
        &format!(
            "streams = [\"{stream}\"]\nsink = {{ type = \"clickhouse\", table = \"{table}\", shard_by = \"user_id\" }}"
        ),
        port,
    ));
    let job = |i: usize| {
        vec![
            (
                "user_id".to_string(),
                format!("user-{}", i % 37).into_bytes(),
            ),
            ("n".to_string(), i.to_string().into_bytes()),
        ]
    };
    let shard_of =
        |i: usize| (sluice::testing::city_hash64(format!("user-{}", i % 37).as_bytes()) % 2) as u64;
    const N: usize = 1000;
    let mut sent = xadd_many(&c.rc, &stream, N, job).await;
    wait_for(LONG, "first rows on both shards", || async {
        c.a.count(&table).await + c.b.count(&table).await == N as u64
    })
    .await;

    // Shard B stops: A's part of each batch lands and is acked; B's waits.
    c.b.stop().await;
    let a_before = c.a.count(&table).await;
    sent.extend(xadd_many(&c.rc, &stream, N, |i| job(N + i)).await);
    wait_for(LONG, "A's rows of the stalled batch landed", || async {
        c.a.count(&table).await > a_before
    })
    .await;
    wait_for(LONG, "A's rows acked while B is down", || async {
        pending(&c.rc, &stream, "g").await < N as u64
    })
    .await;
    assert!(
        pending(&c.rc, &stream, "g").await > 0,
        "B's rows must stay pending while B is down"
    );

    c.b.start_again().await;
    wait_for(LONG, "everything landed after B is back", || async {
        pending(&c.rc, &stream, "g").await == 0
            && c.a.count(&table).await + c.b.count(&table).await == 2 * N as u64
    })
    .await;
    let expect_b = (0..2 * N).filter(|&i| shard_of(i) == 1).count() as u64;
    assert!(expect_b > 0 && expect_b < 2 * N as u64);
    assert_eq!(c.b.count(&table).await, expect_b);
    assert_eq!(c.a.count(&table).await, 2 * N as u64 - expect_b);
    // Each shard holds only its keys, by ClickHouse's own cityHash64.
    for (shard, ch) in [(0, &c.a), (1, &c.b)] {
        let wrong = ch
            .query_u64(&format!(
                "SELECT count() FROM {table} WHERE cityHash64(user_id) % 2 != {shard}"
            ))
            .await;
        assert_eq!(wrong, 0, "shard {shard} holds rows of the other shard");
    }
    let (on_a, on_b) = (ids(&c.a, &table).await, ids(&c.b, &table).await);
    let union: HashSet<&String> = on_a.iter().chain(&on_b).collect();
    assert_eq!(union.len(), sent.len());
}

/// An exactly-once worker's config over two endpoints: `ch_extra` goes
/// into `[clickhouse]`, `sink_extra` into the sink table.
fn eo_config(
    [redis_url, a_url, b_url]: [&str; 3],
    [flow, stream, table]: [&str; 3],
    ch_extra: &str,
    sink_extra: &str,
) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
[clickhouse]
urls = ["{a_url}", "{b_url}"]
{ch_extra}health_check_every = "300ms"
insert_timeout = "3s"
[worker]
shutdown_timeout = "10s"
block = "200ms"
[[flow]]
name = "{flow}"
streams = ["{stream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}"{sink_extra} }}
delivery = "exactly_once"
batch_id_column = "_batch"
metadata = {{ id = "_id" }}
batch = {{ max_rows = 5000, max_wait = "1s" }}
claim = {{ min_idle = "1s", every = "300ms" }}
"#
    )
}

/// Worker 1 on `config` (its ClickHouse endpoints behind `proxies`, set to
/// `held` once it runs) records `records` batches of `N_EO` seed jobs; then
/// XACK is taken away, the stalled proxies pass (a refused one stays
/// refused), and worker 1 is killed once `landed` says its rows are in.
/// Returns the ids sent, every one still pending.
async fn land_then_die_before_ack<F, Fut>(
    c: &Cluster,
    [flow, stream]: [&str; 2],
    config: &str,
    proxies: [&TcpProxy; 2],
    held: [ProxyMode; 2],
    records: u64,
    landed: F,
) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut w1 = Worker::spawn(config);
    wait_for(LONG, "worker 1 running", || async {
        w1.log_contents().contains("flow running")
    })
    .await;
    for (proxy, mode) in proxies.iter().zip(held) {
        proxy.set_mode(mode);
    }
    let sent = xadd_many(&c.rc, stream, N_EO, seed_job).await;
    wait_for(LONG, "batches recorded in the ledger", || async {
        open_batches(&c.rc, flow).await == records
    })
    .await;
    deny_acks(&c.rc, true).await;
    for proxy in proxies.iter().filter(|p| p.mode() == ProxyMode::Stall) {
        proxy.pass();
    }
    wait_for(LONG, "rows inserted", landed).await;
    w1.kill();
    w1.wait_exit(LONG).await.expect("worker 1 exited");
    deny_acks(&c.rc, false).await;
    assert_eq!(
        pending(&c.rc, stream, "g").await,
        N_EO as u64,
        "acked before dying"
    );
    sent
}

/// Seed jobs per exactly-once test.
const N_EO: usize = 2000;

/// Exactly-once recovery counts a batch on every healthy endpoint: a batch
/// that worker A inserted on B (A failing over from a refused endpoint) and
/// died before acking is found there by worker C, whose preferred endpoint
/// never saw it, and is only acked, not inserted again.
#[tokio::test]
async fn exactly_once_recovery_finds_a_batch_on_any_endpoint() {
    let c = Cluster::start().await;
    let (flow, stream, table) = (
        unique_name("chep_eo"),
        unique_name("chep_eo"),
        unique_name("chep_eo"),
    );
    c.exec_both(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _batch String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let config = |redis_url: &str, a_url: &str, b_url: &str| {
        eo_config(
            [redis_url, a_url, b_url],
            [&flow, &stream, &table],
            "endpoints = \"failover\"\n",
            "",
        )
    };
    let open_batches = || crate::common::open_batches(&c.rc, &flow);
    let (proxy_a, proxy_b) = (
        TcpProxy::start(c.a.http_addr()),
        TcpProxy::start(c.b.http_addr()),
    );
    // A refuses (the insert fails over to B); B holds the insert until the
    // batch is recorded; then XACK is taken away, and worker 1 killed once
    // the rows are in (its acks fail until it dies).
    const N: usize = N_EO;
    let sent = land_then_die_before_ack(
        &c,
        [&flow, &stream],
        &config(&c.redis.url(), &proxy_a.url(), &proxy_b.url()),
        [&proxy_a, &proxy_b],
        [ProxyMode::Refuse, ProxyMode::Stall],
        1,
        || async { c.b.count(&table).await == N as u64 },
    )
    .await;

    // Worker 2 prefers A, which never saw the batch.
    let w2 = Worker::spawn(&config(&c.redis.url(), &c.a.url(), &c.b.url()));
    wait_for(LONG, "worker 2 settled the batch", || async {
        pending(&c.rc, &stream, "g").await == 0 && open_batches().await == 0
    })
    .await;
    assert!(
        w2.log_contents()
            .contains("ClickHouse holds the whole batch"),
        "{}",
        w2.log_contents()
    );
    assert_eq!(c.a.count(&table).await, 0, "inserted again on A");
    assert_eq!(c.b.count(&table).await, N as u64);
    let on_b: HashSet<String> = ids(&c.b, &table).await.into_iter().collect();
    assert_eq!(on_b.len(), N);
    assert!(sent.iter().all(|id| on_b.contains(id)));
}

/// Defines cluster `sluice_test` (one shard per server) on both servers
/// through `config.d`, and waits until both have loaded it.
async fn define_cluster(c: &Cluster) {
    let xml = format!(
        r#"<?xml version="1.0"?>
<yandex>
    <remote_servers>
        <sluice_test>
            <shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>
            <shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>
        </sluice_test>
    </remote_servers>
</yandex>
"#,
        c.a.tcp_port(),
        c.b.tcp_port()
    );
    for ch in [&c.a, &c.b] {
        let dir = ch.dir().join("config.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sluice_test_cluster.xml"), &xml).unwrap();
    }
    // ClickHouse reloads remote_servers from config.d while running.
    let sql = "SELECT count() FROM system.clusters WHERE cluster = 'sluice_test'";
    wait_for(LONG, "cluster loaded on both servers", || async {
        c.a.query_u64(sql).await == 2 && c.b.query_u64(sql).await == 2
    })
    .await;
}

/// A Distributed table on both nodes, inserted through either
/// (round-robin); a node stopped mid-run: the other takes the inserts (and
/// queues the stopped shard's rows), and once it is back every row is in
/// exactly one shard.
#[tokio::test]
async fn distributed_table_through_either_node_survives_a_stopped_node() {
    let mut c = Cluster::start().await;
    define_cluster(&c).await;
    let (stream, table) = (unique_name("chep_dist"), unique_name("chep_dist"));
    let local = format!("{table}_local");
    c.exec_both(&format!(
        "CREATE TABLE {local} ({SEED_TABLE_COLUMNS}) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    c.exec_both(&format!(
        "CREATE TABLE {table} AS {local} ENGINE = Distributed(sluice_test, default, {local}, rec_id)"
    ))
    .await;
    let port = free_port();
    let _w = Worker::spawn(&c.config(
        "endpoints = \"round_robin\"",
        &format!(
            "streams = [\"{stream}\"]\nsink = {{ type = \"clickhouse\", table = \"{table}\" }}"
        ),
        port,
    ));
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let producer = produce(c.rc.clone(), stream.clone(), stop.clone(), sent.clone());
    wait_for(LONG, "rows on both shards", || async {
        c.a.count(&local).await > 0 && c.b.count(&local).await > 0
    })
    .await;

    c.a.stop().await;
    let a_label = c.a.url();
    wait_for(LONG, "node A marked down", || async {
        metric(
            port,
            "sluice_clickhouse_endpoint_up",
            &[("endpoint", &a_label)],
        )
        .await
            == Some(0.0)
    })
    .await;
    let b_at_stop = c.b.count(&local).await;
    wait_for(LONG, "node B takes the inserts", || async {
        c.b.count(&local).await >= b_at_stop + 500
    })
    .await;

    c.a.start_again().await;
    stop.store(true, Ordering::Relaxed);
    let produced = producer.await.unwrap();
    wait_for(LONG, "every row in its shard", || async {
        pending(&c.rc, &stream, "g").await == 0
            && c.a.count(&local).await + c.b.count(&local).await == produced.len() as u64
    })
    .await;
    let (on_a, on_b) = (ids(&c.a, &local).await, ids(&c.b, &local).await);
    let union: HashSet<&String> = on_a.iter().chain(&on_b).collect();
    assert_eq!(union.len(), produced.len());
    // The sharding key placed each row: A holds even rec_ids, B odd ones.
    assert_eq!(
        c.a.query_u64(&format!("SELECT countIf(rec_id % 2 != 0) FROM {local}"))
            .await,
        0
    );
    assert_eq!(
        c.b.query_u64(&format!("SELECT countIf(rec_id % 2 != 1) FROM {local}"))
            .await,
        0
    );
}

/// Exactly-once with `shard_by`: each shard's part of a batch is recorded
/// under its own batch id. A worker killed after both shards confirmed
/// their parts but before the acks leaves nothing to insert again: the next
/// worker counts each part on the shards and only acks.
#[tokio::test]
async fn exactly_once_with_shard_by_recovers_each_part_once() {
    let c = Cluster::start().await;
    let (flow, stream, table) = (
        unique_name("chep_eos"),
        unique_name("chep_eos"),
        unique_name("chep_eos"),
    );
    c.exec_both(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _batch String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let config = |redis_url: &str, a_url: &str, b_url: &str| {
        eo_config(
            [redis_url, a_url, b_url],
            [&flow, &stream, &table],
            "",
            ", shard_by = \"task_for\"",
        )
    };
    let open_batches = || crate::common::open_batches(&c.rc, &flow);
    let (proxy_a, proxy_b) = (
        TcpProxy::start(c.a.http_addr()),
        TcpProxy::start(c.b.http_addr()),
    );
    // task_for is a, b or c: both shards get a part, each its own record;
    // both parts land, neither is acked.
    const N: usize = N_EO;
    let sent = land_then_die_before_ack(
        &c,
        [&flow, &stream],
        &config(&c.redis.url(), &proxy_a.url(), &proxy_b.url()),
        [&proxy_a, &proxy_b],
        [ProxyMode::Stall, ProxyMode::Stall],
        2,
        || async { c.a.count(&table).await + c.b.count(&table).await == N as u64 },
    )
    .await;
    let (a_rows, b_rows) = (c.a.count(&table).await, c.b.count(&table).await);

    let w2 = Worker::spawn(&config(&c.redis.url(), &c.a.url(), &c.b.url()));
    wait_for(LONG, "worker 2 settled both parts", || async {
        pending(&c.rc, &stream, "g").await == 0 && open_batches().await == 0
    })
    .await;
    assert_eq!(
        w2.log_contents()
            .matches("ClickHouse holds the whole batch")
            .count(),
        2,
        "{}",
        w2.log_contents()
    );
    assert_eq!(c.a.count(&table).await, a_rows, "inserted again on A");
    assert_eq!(c.b.count(&table).await, b_rows, "inserted again on B");
    let (on_a, on_b) = (ids(&c.a, &table).await, ids(&c.b, &table).await);
    let union: HashSet<&String> = on_a.iter().chain(&on_b).collect();
    assert_eq!(union.len(), N);
    assert!(sent.iter().all(|id| union.contains(id)));
    for (shard, ch) in [(0, &c.a), (1, &c.b)] {
        let wrong = ch
            .query_u64(&format!(
                "SELECT count() FROM {table} WHERE cityHash64(task_for) % 2 != {shard}"
            ))
            .await;
        assert_eq!(wrong, 0, "shard {shard} holds rows of the other shard");
    }
}

/// An exec handler giving two outputs per message: `key = "a"` (shard 0 by
/// `cityHash64`) and `key = "b"` (shard 1), both carrying the message's `n`.
const TWO_SHARD_OUTPUTS: &str = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    n = req["fields"].get("n", "")
    out = [{"key": "a", "n": n}, {"key": "b", "n": n}]
    sys.stdout.write(json.dumps({"id": req["id"], "outputs": out}) + "\n")
    sys.stdout.flush()
"#;

/// Item 8 of issue 11: with a handler and `shard_by`, a message's outputs go
/// to different shards. While shard B is down, shard A's outputs land — but
/// no source may be acked before its output on B has landed too. A worker
/// stopped then (B's part abandoned at the deadline) leaves every message
/// pending; with B back, another worker lands every output.
#[tokio::test]
async fn handler_outputs_on_two_shards_ack_their_source_only_when_both_landed() {
    let mut c = Cluster::start().await;
    let (stream, table) = (unique_name("chep_ho"), unique_name("chep_ho"));
    c.exec_both(&format!(
        "CREATE TABLE {table} (key String, n UInt64, _id String) ENGINE = MergeTree ORDER BY n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("two_shards.py");
    std::fs::write(&script, TWO_SHARD_OUTPUTS).unwrap();
    let config = c.config(
        "",
        &format!(
            "streams = [\"{stream}\"]\nsink = {{ type = \"clickhouse\", table = \"{table}\", shard_by = \"key\" }}\nhandler = {{ type = \"exec\", command = [\"python3\", \"{}\"], timeout = \"2s\" }}",
            script.display()
        ),
        free_port(),
    );
    let mut w = Worker::spawn(&config);
    wait_for(LONG, "worker running", || async {
        w.log_contents().contains("flow running")
    })
    .await;
    c.b.stop().await;
    const N: usize = 50;
    xadd_many(&c.rc, &stream, N, |i| {
        vec![("n".to_string(), i.to_string().into_bytes())]
    })
    .await;
    wait_for(LONG, "outputs for shard A landed", || async {
        c.a.count(&table).await == N as u64
    })
    .await;
    // Stopped with B still down: B's part is abandoned at the deadline; what
    // the worker acked by then, it acked with B's outputs missing.
    w.term();
    w.wait_exit(LONG).await.expect("worker exited");
    assert_eq!(
        pending(&c.rc, &stream, "g").await,
        N as u64,
        "sources acked before their outputs on shard B landed\n{}",
        w.log_contents()
    );

    c.b.start_again().await;
    // The same config (and metrics port): the first worker has exited.
    let _w2 = Worker::spawn(&config);
    wait_for(LONG, "every output on shard B", || async {
        pending(&c.rc, &stream, "g").await == 0 && c.b.count(&table).await >= N as u64
    })
    .await;
    assert_eq!(
        c.b.query_u64(&format!("SELECT uniqExact(n) FROM {table} WHERE key = 'b'"))
            .await,
        N as u64
    );
    assert_eq!(
        c.b.query_u64(&format!("SELECT countIf(key != 'b') FROM {table}"))
            .await,
        0
    );
}

/// Exactly-once through a Distributed table (item 6 of issue 11): start-up
/// checks the local table's engine and primary key, and a settle looks the
/// batch up through the Distributed table with literal key sets. Worker A
/// inserts a batch through it and dies before acking; worker B finds the
/// whole batch on the shards and only acks.
#[tokio::test]
async fn exactly_once_through_a_distributed_table_settles_by_key_sets() {
    let c = Cluster::start().await;
    define_cluster(&c).await;
    let (flow, stream, table) = (
        unique_name("chep_eod"),
        unique_name("chep_eod"),
        unique_name("chep_eod"),
    );
    let local = format!("{table}_local");
    c.exec_both(&format!(
        "CREATE TABLE {local} ({SEED_TABLE_COLUMNS}, _batch String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    c.exec_both(&format!(
        "CREATE TABLE {table} AS {local} ENGINE = Distributed(sluice_test, default, {local}, rec_id)"
    ))
    .await;
    let config = |redis_url: &str, a_url: &str, b_url: &str| {
        eo_config(
            [redis_url, a_url, b_url],
            [&flow, &stream, &table],
            "endpoints = \"failover\"\n",
            "",
        )
    };
    let (proxy_a, proxy_b) = (
        TcpProxy::start(c.a.http_addr()),
        TcpProxy::start(c.b.http_addr()),
    );
    const N: usize = N_EO;
    // Landed on the shards (the Distributed insert forwards asynchronously).
    let sent = land_then_die_before_ack(
        &c,
        [&flow, &stream],
        &config(&c.redis.url(), &proxy_a.url(), &proxy_b.url()),
        [&proxy_a, &proxy_b],
        [ProxyMode::Stall, ProxyMode::Stall],
        1,
        || async { c.a.count(&local).await + c.b.count(&local).await == N as u64 },
    )
    .await;

    let w2 = Worker::spawn(&config(&c.redis.url(), &c.a.url(), &c.b.url()));
    wait_for(LONG, "worker 2 settled the batch", || async {
        pending(&c.rc, &stream, "g").await == 0 && open_batches(&c.rc, &flow).await == 0
    })
    .await;
    assert!(
        w2.log_contents()
            .contains("ClickHouse holds the whole batch"),
        "{}",
        w2.log_contents()
    );
    let (on_a, on_b) = (ids(&c.a, &local).await, ids(&c.b, &local).await);
    assert_eq!(on_a.len() + on_b.len(), N, "inserted again");
    let union: HashSet<&String> = on_a.iter().chain(&on_b).collect();
    assert!(sent.iter().all(|id| union.contains(id)));
}
