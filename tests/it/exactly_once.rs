//! Exactly-once delivery: a replica killed after ClickHouse confirmed its
//! batch but before the ack leaves nothing to re-insert; one killed before
//! the insert has its identical batch inserted once by another replica.

use crate::common::*;
use crate::harness::{unique_name, wait_for, TcpProxy, Worker};

const N: usize = 2000;

fn config(redis_url: &str, ch_url: &str, flow: &str, stream: &str, table: &str) -> String {
    config_text(
        redis_url,
        ch_url,
        flow,
        stream,
        table,
        r#"delivery = "exactly_once"
batch_id_column = "_batch"
metadata = { id = "_id" }
batch = { max_rows = 5000, max_wait = "1s" }
claim = { min_idle = "1s", every = "300ms" }"#,
    )
    // A short insert timeout keeps the batch lease (timeout + 5 s) short.
    .replace(
        "database = \"default\"",
        "database = \"default\"\ninsert_timeout = \"3s\"",
    )
}

async fn setup(s: &Stack) -> (String, String, String) {
    let (flow, stream, table) = (unique_name("eo"), unique_name("eo"), unique_name("eo"));
    s.ch.exec(&format!("CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _batch String) ENGINE = MergeTree ORDER BY rec_id")).await;
    (flow, stream, table)
}

async fn assert_exactly_once(s: &Stack, table: &str, ids: &[String]) {
    assert_eq!(
        s.ch.count(table).await,
        ids.len() as u64,
        "duplicates or losses"
    );
    assert_eq!(
        s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await,
        ids.len() as u64
    );
    // Every row carries a batch id.
    assert_eq!(
        s.ch.query_u64(&format!("SELECT countIf(_batch = '') FROM {table}"))
            .await,
        0
    );
}

#[tokio::test]
async fn killed_between_insert_and_ack_is_acked_without_reinsert() {
    let s = Stack::start().await;
    let (flow, stream, table) = setup(&s).await;
    let ch_proxy = TcpProxy::start(s.ch.http_addr());
    let mut a = Worker::spawn(&config(
        &s.redis.url(),
        &ch_proxy.url(),
        &flow,
        &stream,
        &table,
    ));
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    ch_proxy.stall();
    let ids = xadd_many(&s.rc, &stream, N, seed_job).await;
    wait_for(LONG, "batch recorded in the ledger", || async {
        open_batches(&s.rc, &flow).await == 1
    })
    .await;
    // Take XACK away, let the insert through, and kill A once the rows are
    // in: its acks fail until it dies.
    deny_acks(&s.rc, true).await;
    ch_proxy.pass();
    wait_for(LONG, "rows inserted", || async {
        s.ch.count(&table).await == N as u64
    })
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");
    deny_acks(&s.rc, false).await;
    assert_eq!(
        pending(&s.rc, &stream, "g").await,
        N as u64,
        "A acked before dying"
    );

    let b = Worker::spawn(&config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table));
    wait_for(LONG, "B settled A's batch", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    wait_for(LONG, "ledger emptied", || async {
        open_batches(&s.rc, &flow).await == 0
    })
    .await;
    assert_exactly_once(&s, &table, &ids).await;
    assert!(
        b.log_contents()
            .contains("ClickHouse holds the whole batch"),
        "{}",
        b.log_contents()
    );
}

#[tokio::test]
async fn killed_before_insert_has_its_batch_inserted_once() {
    let s = Stack::start().await;
    let (flow, stream, table) = setup(&s).await;
    let ch_proxy = TcpProxy::start(s.ch.http_addr());
    let mut a = Worker::spawn(&config(
        &s.redis.url(),
        &ch_proxy.url(),
        &flow,
        &stream,
        &table,
    ));
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    ch_proxy.refuse();
    let ids = xadd_many(&s.rc, &stream, N, seed_job).await;
    wait_for(LONG, "batch recorded in the ledger", || async {
        open_batches(&s.rc, &flow).await == 1
    })
    .await;
    wait_for(LONG, "A retrying the insert", || async {
        a.log_contents().contains("insert failed; settling")
    })
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");
    assert_eq!(s.ch.count(&table).await, 0);

    let b = Worker::spawn(&config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table));
    wait_for(LONG, "B settled A's batch", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    wait_for(LONG, "ledger emptied", || async {
        open_batches(&s.rc, &flow).await == 0
    })
    .await;
    assert_exactly_once(&s, &table, &ids).await;
    assert!(
        b.log_contents()
            .contains("no earlier attempt had landed it"),
        "{}",
        b.log_contents()
    );
}

/// The open batch ids of a flow's ledger (`SMEMBERS sluice:eo:{flow}:open`).
async fn open_batch_ids(s: &Stack, flow: &str) -> Vec<String> {
    let key = format!("sluice:eo:{{{flow}}}:open");
    match raw(&s.rc, "SMEMBERS", vec![key.into()]).await {
        fred::types::Value::Array(ids) => ids.iter().filter_map(|v| v.as_string()).collect(),
        _ => Vec::new(),
    }
}

/// Item 5 of issue 11: a partly landed batch is completed per (stream, id),
/// not per id. The two shards of one stream hold the same entry ids; a
/// batch holding both is recorded, its worker dies, and only shard 0's rows
/// landed (a move cut between partitions). The recovering worker must insert
/// shard 1's rows, although rows with their ids are already in the table.
#[tokio::test]
async fn partly_landed_batch_is_completed_per_stream_not_by_id_alone() {
    const PER_SHARD: usize = 20;
    let s = Stack::start().await;
    let (flow, stream, table) = (unique_name("eo5"), unique_name("eo5"), unique_name("eo5"));
    s.ch.exec(&format!("CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _stream String, _batch String) ENGINE = MergeTree ORDER BY rec_id")).await;
    let config = |ch_url: &str| {
        config(&s.redis.url(), ch_url, &flow, &stream, &table)
            .replace(
                "metadata = { id = \"_id\" }",
                "metadata = { id = \"_id\", stream = \"_stream\" }",
            )
            + &format!("\n[streams.\"{stream}\"]\nshards = 2\n")
    };
    let shards = [format!("{stream}:{{0}}"), format!("{stream}:{{1}}")];
    let ch_proxy = TcpProxy::start(s.ch.http_addr());
    let mut a = Worker::spawn(&config(&ch_proxy.url()));
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    ch_proxy.refuse();
    // The same ids in both shards.
    for i in 0..PER_SHARD {
        for shard in &shards {
            let id = format!("{}-0", i + 1);
            let mut args: Vec<fred::types::Value> = vec![shard.as_str().into(), id.into()];
            for (k, v) in seed_job(i) {
                args.push(k.into());
                args.push(fred::types::Value::Bytes(v.into()));
            }
            raw(&s.rc, "XADD", args).await;
        }
    }
    wait_for(LONG, "one batch of both shards recorded", || async {
        open_batches(&s.rc, &flow).await == 1
    })
    .await;
    wait_for(LONG, "A retrying the insert", || async {
        a.log_contents().contains("insert failed; settling")
    })
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");
    let batch = open_batch_ids(&s, &flow).await.remove(0);
    // Shard 0's rows of the batch land; shard 1's do not.
    let rows: Vec<String> = (0..PER_SHARD)
        .map(|i| {
            let f: Vec<String> = seed_job(i)
                .into_iter()
                .map(|(_, v)| String::from_utf8(v).unwrap())
                .collect();
            format!(
                "({}, '{}', '{}', '{}', '{}-0', '{}', '{batch}')",
                f[0],
                f[1],
                f[2],
                f[3],
                i + 1,
                shards[0]
            )
        })
        .collect();
    s.ch.exec(&format!(
        "INSERT INTO {table} (rec_id, task_for, function_type, data, _id, _stream, _batch) VALUES {}",
        rows.join(", ")
    ))
    .await;

    let b = Worker::spawn(&config(&s.ch.url()));
    wait_for(LONG, "B settled A's batch", || async {
        pending(&s.rc, &shards[0], "g").await == 0
            && pending(&s.rc, &shards[1], "g").await == 0
            && open_batches(&s.rc, &flow).await == 0
    })
    .await;
    assert!(
        b.log_contents().contains("completing a partly landed batch"),
        "{}",
        b.log_contents()
    );
    assert_eq!(
        s.ch.query_u64(&format!(
            "SELECT count() FROM {table} WHERE _stream = '{}'",
            shards[1]
        ))
        .await,
        PER_SHARD as u64,
        "shard 1's rows were taken for landed (same ids as shard 0's) and acked: lost"
    );
    assert_eq!(s.ch.count(&table).await, 2 * PER_SHARD as u64, "duplicates");
    assert_eq!(
        s.ch.query_u64(&format!("SELECT uniqExact(_stream, _id) FROM {table}"))
            .await,
        2 * PER_SHARD as u64
    );
}
