//! Exactly-once delivery: a replica killed after ClickHouse confirmed its
//! batch but before the ack leaves nothing to re-insert; one killed before
//! the insert has its identical batch inserted once by another replica.

use crate::common::*;
use crate::harness::{unique_name, wait_for, TcpProxy, Worker};

const N: usize = 2000;

pub(crate) fn config(
    redis_url: &str,
    ch_url: &str,
    flow: &str,
    stream: &str,
    table: &str,
) -> String {
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

/// Starts worker A on `config`, makes its ClickHouse (`ch_proxy`) refuse
/// connections, adds messages with `produce`, and returns A (and what
/// `produce` returned) once their batch is recorded and its insert failing.
async fn worker_with_failing_batch<T>(
    s: &Stack,
    flow: &str,
    config: &str,
    ch_proxy: &TcpProxy,
    produce: impl std::future::Future<Output = T>,
) -> (Worker, T) {
    let a = Worker::spawn(config);
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    ch_proxy.refuse();
    let produced = produce.await;
    wait_for(LONG, "A's batch recorded in the ledger", || async {
        open_batches(&s.rc, flow).await == 1
    })
    .await;
    wait_for(LONG, "A retrying the insert", || async {
        a.log_contents().contains("insert failed; settling")
    })
    .await;
    (a, produced)
}

/// Waits until nothing of `streams` is pending in group `g` and the flow's
/// ledger is empty: every batch settled, acked and dropped.
async fn wait_settled(s: &Stack, flow: &str, streams: &[&str]) {
    wait_for(LONG, "every batch settled, acked and dropped", || async {
        for stream in streams {
            if pending(&s.rc, stream, "g").await != 0 {
                return false;
            }
        }
        open_batches(&s.rc, flow).await == 0
    })
    .await;
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
    wait_settled(&s, &flow, &[&stream]).await;
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
    let config_a = config(&s.redis.url(), &ch_proxy.url(), &flow, &stream, &table);
    let (mut a, ids) = worker_with_failing_batch(
        &s,
        &flow,
        &config_a,
        &ch_proxy,
        xadd_many(&s.rc, &stream, N, seed_job),
    )
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");
    assert_eq!(s.ch.count(&table).await, 0);

    let b = Worker::spawn(&config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table));
    wait_settled(&s, &flow, &[&stream]).await;
    assert_exactly_once(&s, &table, &ids).await;
    assert!(
        b.log_contents()
            .contains("no earlier attempt had landed it"),
        "{}",
        b.log_contents()
    );
}

/// A batch recorded long enough after its read for a claim to have come
/// first (here: sealed 3 s after the read, `claim.min_idle` 4 s) is checked
/// against the pending list, so entries another consumer took before the
/// record are left to it; fresh batches skip that check
/// (`ExactlyOnce::too_recent_to_be_claimed`), and must never skip it here:
/// the taken entries would land twice, once in this batch and once after
/// the worker claims them back from the dead consumer.
#[tokio::test]
async fn entries_taken_before_a_late_record_are_left_to_their_new_owner() {
    let s = Stack::start().await;
    let (flow, stream, table) = setup(&s).await;
    let config = config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table)
        .replace(r#"max_wait = "1s""#, r#"max_wait = "3s""#)
        .replace(
            r#"claim = { min_idle = "1s", every = "300ms" }"#,
            r#"claim = { min_idle = "4s", every = "1s" }"#,
        );
    let a = Worker::spawn(&config);
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    const ROWS: usize = 200;
    let ids = xadd_many(&s.rc, &stream, ROWS, seed_job).await;
    wait_for(LONG, "every entry read by A", || async {
        pending(&s.rc, &stream, "g").await == ROWS as u64
    })
    .await;
    assert_eq!(
        open_batches(&s.rc, &flow).await,
        0,
        "recorded before max_wait"
    );
    // Another consumer takes 20 entries while A's batch is still open.
    use fred::types::Value;
    let taken: Vec<Value> = ids[..20]
        .iter()
        .map(|id| Value::from(id.as_str()))
        .collect();
    let mut args: Vec<Value> = vec![
        stream.as_str().into(),
        "g".into(),
        "thief".into(),
        "0".into(),
    ];
    args.extend(taken);
    args.push("JUSTID".into());
    raw(&s.rc, "XCLAIM", args).await;
    wait_for(
        LONG,
        "A leaving the taken entries out of its batch",
        || async {
            let log = a.log_contents();
            log.lines().any(|line| {
                line.contains("claimed by another replica before the batch was recorded")
                    && line.contains("taken=20")
            })
        },
    )
    .await;
    // The thief never acks: A claims its entries once idle and inserts them.
    wait_settled(&s, &flow, &[&stream]).await;
    assert_exactly_once(&s, &table, &ids).await;
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
        config(&s.redis.url(), ch_url, &flow, &stream, &table).replace(
            "metadata = { id = \"_id\" }",
            "metadata = { id = \"_id\", stream = \"_stream\" }",
        ) + &format!("\n[streams.\"{stream}\"]\nshards = 2\n")
    };
    let shards = [format!("{stream}:{{0}}"), format!("{stream}:{{1}}")];
    let ch_proxy = TcpProxy::start(s.ch.http_addr());
    // The same ids in both shards.
    let produce = async {
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
    };
    let (mut a, ()) =
        worker_with_failing_batch(&s, &flow, &config(&ch_proxy.url()), &ch_proxy, produce).await;
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
    wait_settled(&s, &flow, &[&shards[0], &shards[1]]).await;
    assert!(
        b.log_contents()
            .contains("completing a partly landed batch"),
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

/// Every open record of a flow's ledger: (batch id, [(stream, entry id)]).
async fn open_records(s: &Stack, flow: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for id in open_batch_ids(s, flow).await {
        let key = format!("sluice:eo:{{{flow}}}:batch:{id}");
        if let Some(text) = raw(&s.rc, "GET", vec![key.into()]).await.as_string() {
            out.push((id, serde_json::from_str(&text).expect("record is JSON")));
        }
    }
    out
}

/// Item 7 of issue 11 (crash mid-bisect): a batch holding a row the server
/// refuses is bisected, each part recorded under its own id. Killed after
/// every good row landed but before any ack, the worker leaves the ledger
/// with each entry in exactly one open record, so the replica that takes
/// over settles each entry against the part that may hold it: the good rows
/// are acked, not inserted again, and the bad one is dead-lettered.
#[tokio::test]
async fn killed_mid_bisect_leaves_each_entry_in_one_record_and_nothing_twice() {
    const N: usize = 16;
    let s = Stack::start().await;
    let (flow, stream, table) = (
        unique_name("eo7b"),
        unique_name("eo7b"),
        unique_name("eo7b"),
    );
    // throwIf in a MATERIALIZED column: converts fine, refused by the
    // server when staged (the stage copies the column).
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _batch String, chk UInt8 MATERIALIZED throwIf(rec_id = 1000)) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let config = config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table);
    // No XACK: rows land, nothing is acked (nor dead-lettered and acked).
    deny_acks(&s.rc, true).await;
    let mut a = Worker::spawn(&config);
    wait_for(LONG, "A running", || async {
        a.log_contents().contains("flow running")
    })
    .await;
    let ids = xadd_many(&s.rc, &stream, N, |i| {
        seed_job(if i == 0 { 1000 } else { i })
    })
    .await;
    wait_for(LONG, "every good row landed", || async {
        s.ch.count(&table).await == N as u64 - 1
    })
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");
    deny_acks(&s.rc, false).await;
    assert_eq!(pending(&s.rc, &stream, "g").await, N as u64);

    let records = open_records(&s, &flow).await;
    for id in &ids {
        let holders: Vec<&str> = records
            .iter()
            .filter(|(_, members)| members.iter().any(|(_, m)| m == id))
            .map(|(b, _)| b.as_str())
            .collect();
        assert!(
            holders.len() <= 1,
            "entry {id} is in {} open records: {records:?}",
            holders.len()
        );
    }

    let b = Worker::spawn(&config);
    wait_settled(&s, &flow, &[&stream]).await;
    assert_eq!(s.ch.count(&table).await, N as u64 - 1, "a good row twice");
    assert_eq!(
        s.ch.query_u64(&format!("SELECT uniqExact(_id) FROM {table}"))
            .await,
        N as u64 - 1
    );
    let dead = entries(&s.rc, &format!("{stream}:dead")).await;
    assert!(
        !dead.is_empty() && dead.iter().all(|(_, f)| field(f, "rec_id") == Some("1000")),
        "{dead:?}\n{}",
        b.log_contents()
    );
}

/// Item 7 of issue 11 (stale forget): worker A, cut off from Redis while its
/// insert fails, loses its batch to worker B, which takes the lapsed lease
/// and recovers the batch. When A reaches Redis again it finds the lease
/// taken and gives the batch up — without dropping the record B is working
/// from. B then lands the rows and dies before its ack; C, taking over from
/// B, finds the record and only acks: nothing is inserted twice.
#[tokio::test]
async fn replica_that_lost_its_lease_leaves_the_record_to_the_new_holder() {
    let s = Stack::start().await;
    let (flow, stream, table) = setup(&s).await;
    let (redis_a, ch_a, ch_b) = (
        TcpProxy::start(s.redis.addr()),
        TcpProxy::start(s.ch.http_addr()),
        TcpProxy::start(s.ch.http_addr()),
    );
    let config_via =
        |redis_url: &str, ch_url: &str| config(redis_url, ch_url, &flow, &stream, &table);
    let (mut a, ids) = worker_with_failing_batch(
        &s,
        &flow,
        &config_via(&redis_a.redis_url(), &ch_a.url()),
        &ch_a,
        xadd_many(&s.rc, &stream, N, seed_job),
    )
    .await;
    let batch = open_batch_ids(&s, &flow).await.remove(0);
    let record_key = format!("sluice:eo:{{{flow}}}:batch:{batch}");
    // A is cut off from Redis: it cannot renew its lease nor keep its
    // entries alive. B claims them and, once the lease lapsed, recovers the
    // batch — and stays in the middle of it (its ClickHouse holds requests).
    redis_a.refuse();
    let mut b = Worker::spawn(&config_via(&s.redis.url(), &ch_b.url()));
    wait_for(LONG, "B running", || async {
        b.log_contents().contains("flow running")
    })
    .await;
    // Well within A's lease (insert_timeout + 5 s): B cannot have taken
    // the batch yet.
    ch_b.stall();
    wait_for(LONG, "B recovering A's batch", || async {
        b.log_contents()
            .contains("recovering a dead replica's batch")
    })
    .await;
    // A is back: its next try finds the lease taken.
    redis_a.pass();
    wait_for(LONG, "A gave the batch up", || async {
        a.log_contents()
            .contains("another replica took over the batch")
    })
    .await;
    a.term();
    a.wait_exit(LONG).await.expect("A exited");
    assert!(
        raw(&s.rc, "EXISTS", vec![record_key.clone().into()])
            .await
            .as_u64()
            == Some(1),
        "A dropped the record B is recovering\n{}",
        a.log_contents()
    );
    // B lands the batch but cannot ack it, and dies.
    deny_acks(&s.rc, true).await;
    ch_b.pass();
    wait_for(LONG, "B inserted the batch", || async {
        s.ch.count(&table).await == N as u64
    })
    .await;
    b.kill();
    b.wait_exit(LONG).await.expect("B exited");
    deny_acks(&s.rc, false).await;

    let c = Worker::spawn(&config_via(&s.redis.url(), &s.ch.url()));
    wait_settled(&s, &flow, &[&stream]).await;
    assert_exactly_once(&s, &table, &ids).await;
    assert!(
        c.log_contents()
            .contains("ClickHouse holds the whole batch"),
        "{}",
        c.log_contents()
    );
}

/// Item 6 of issue 11: exactly-once counts a batch's rows to settle it, so
/// `sluice check` and start-up refuse tables where the count cannot equal
/// the rows inserted (or cannot be read through an index), naming why.
#[tokio::test]
async fn exactly_once_is_refused_on_tables_whose_count_cannot_hold() {
    let s = Stack::start().await;
    let cases = [
        ("ENGINE = Null", "engine Null: it stores nothing"),
        (
            "ENGINE = SummingMergeTree ORDER BY rec_id",
            "engine SummingMergeTree: merges fold rows",
        ),
        (
            "ENGINE = ReplacingMergeTree ORDER BY rec_id",
            "engine ReplacingMergeTree: merges fold rows",
        ),
        (
            "ENGINE = CollapsingMergeTree(sign) ORDER BY rec_id",
            "engine CollapsingMergeTree: merges fold rows",
        ),
        (
            "ENGINE = Buffer(default, x, 1, 10, 100, 10000, 1000000, 10000000, 100000000)",
            "engine Buffer",
        ),
        ("ENGINE = Memory", "engine Memory"),
        ("ENGINE = MergeTree ORDER BY tuple()", "no primary key"),
    ];
    for (engine, reason) in cases {
        let (flow, stream, table) = (unique_name("eo6"), unique_name("eo6"), unique_name("eo6"));
        s.ch.exec(&format!(
            "CREATE TABLE {table} ({SEED_TABLE_COLUMNS}, _batch String, sign Int8 DEFAULT 1) {engine}"
        ))
        .await;
        let text = config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains(&format!("cannot be used with table `default.{table}`"))
                && stderr.contains(reason),
            "{engine}: check must refuse with {reason:?}; got {}:\n{}{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        let mut w = Worker::spawn(&text);
        let status = w.wait_exit(LONG).await.expect("run refuses to start");
        assert!(!status.success());
        assert!(w.log_contents().contains(reason), "{}", w.log_contents());
    }
}

/// Item 6 of issue 11: settling a batch reads a bounded part of a large
/// table. A table of 4M rows; a recovered batch of 2000 is settled (the
/// fence, then the count) by reading a few granules — ClickHouse's
/// `SelectedMarks` grows by far less than the table's 488 marks (a
/// `WHERE _batch = …` scan reads them all).
#[tokio::test]
async fn settle_reads_a_bounded_part_of_a_large_table() {
    const ROWS: u64 = 4_000_000;
    let s = Stack::start().await;
    let (flow, stream, table) = setup(&s).await;
    s.ch.exec(&format!(
        // rec_ids from 0, like the batch's: its key values are in the
        // table's granules, which the lookup must read.
        "INSERT INTO {table} SELECT number, 'x', 'y', 'z', '', '' FROM numbers({ROWS})"
    ))
    .await;
    let ch_proxy = TcpProxy::start(s.ch.http_addr());
    let config_a = config(&s.redis.url(), &ch_proxy.url(), &flow, &stream, &table);
    let (mut a, ids) = worker_with_failing_batch(
        &s,
        &flow,
        &config_a,
        &ch_proxy,
        xadd_many(&s.rc, &stream, N, seed_job),
    )
    .await;
    a.kill();
    a.wait_exit(LONG).await.expect("A exited");

    let marks = || {
        s.ch.query_u64(
            "SELECT toUInt64(sum(value)) FROM system.events WHERE event = 'SelectedMarks'",
        )
    };
    let before = marks().await;
    let b = Worker::spawn(&config(&s.redis.url(), &s.ch.url(), &flow, &stream, &table));
    wait_settled(&s, &flow, &[&stream]).await;
    let read = marks().await - before;
    assert!(
        b.log_contents()
            .contains("no earlier attempt had landed it"),
        "{}",
        b.log_contents()
    );
    let table_marks = ROWS.div_ceil(8192);
    println!("settling read {read} marks of a {table_marks}-mark table");
    assert!(
        read < table_marks / 10,
        "settling read {read} marks of a {table_marks}-mark table"
    );
    assert_eq!(s.ch.count(&table).await, ROWS + N as u64);
    assert_eq!(
        s.ch.query_u64(&format!(
            "SELECT uniqExact(_id) FROM {table} WHERE _batch != ''"
        ))
        .await,
        ids.len() as u64
    );
}
