//! The cold-data recipe (README, "Moving cold data to another ClickHouse"):
//! rows older than a cutoff go from ClickHouse A through a stream into
//! ClickHouse B; once B holds them all (counts and checksums compared), they
//! are deleted from A — and nothing else is touched.

use crate::ch_source::{checksum, cursor_field, source, Hosts};
use crate::common::*;
use crate::harness::{unique_name, wait_for, Worker};

const COLUMNS: &[&str] = &["ts", "id", "user", "amount", "tags"];
const CUTOFF: &str = "toDateTime('2023-07-01 00:00:00')";

#[tokio::test]
async fn cold_rows_move_to_another_clickhouse_and_only_they_are_deleted() {
    let h = Hosts::start().await;
    let (ta, tb, stream, name) = (
        unique_name("events"),
        unique_name("archive"),
        unique_name("cold"),
        unique_name("cold"),
    );
    let schema =
        "(ts DateTime, id UInt64, user String, amount Decimal(18, 2), tags Array(String)) \
                  ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (ts, id)";
    h.a.exec(&format!("CREATE TABLE {ta} {schema}")).await;
    h.b.exec(&format!("CREATE TABLE {tb} {schema}")).await;
    // A year of events, 2023-01-01 … 2023-12-31.
    h.a.exec(&format!(
        "INSERT INTO {ta} SELECT toDateTime(1672531200 + number * 1577), number, concat('u', toString(number % 97)), \
         toDecimal64(number % 100000, 2) / 7, arrayMap(x -> toString(x), range(number % 3)) FROM numbers(20000)"
    ))
    .await;
    let cold = format!("WHERE ts < {CUTOFF}");
    let hot = format!("WHERE ts >= {CUTOFF}");
    let cold_before = checksum(&h.a, &ta, COLUMNS, &cold).await;
    let hot_before = checksum(&h.a, &ta, COLUMNS, &hot).await;
    let cold_rows: u64 = cold_before.split('\t').next().unwrap().parse().unwrap();
    assert!(cold_rows > 5_000 && cold_rows < 15_000, "{cold_before}");

    // 1. Move: a once source reading the cold rows in (ts, id) order,
    //    exactly-once into the stream; a flow landing them on B.
    let config = h.config(&format!(
        "{}\n[[flow]]\nname = \"archive\"\nstreams = [\"{stream}\"]\ngroup = \"g\"\non_success = \"ack_del\"\n\
         sink = {{ type = \"clickhouse\", table = \"{tb}\", clickhouse = \"b\" }}\n",
        source(
            &name,
            &ta,
            &stream,
            &format!(
                "where = \"ts < {CUTOFF}\"\ncursor = \"ts\"\nkey = [\"id\"]\ndelivery = \"exactly_once\"\npage = 2000"
            ),
        )
    ));
    let mut w = Worker::spawn(&config);
    // 2. Wait: the source read everything, the stream is drained and acked.
    wait_for(LONG, "the source done and the stream landed", || async {
        cursor_field(&h.rc, &name, &stream, "done_ms")
            .await
            .is_some()
            && pending(&h.rc, &stream, "g").await == 0
            && xlen(&h.rc, &stream).await == 0
            && h.b.count(&tb).await >= cold_rows
    })
    .await;
    w.term();
    assert!(w.wait_exit(LONG).await.is_some_and(|s| s.success()));

    // 3. Compare before any delete: B holds exactly the cold rows of A.
    assert_eq!(checksum(&h.b, &tb, COLUMNS, "").await, cold_before);
    assert_eq!(h.b.count(&tb).await, cold_rows);

    // 4. Delete the cold rows from A (a mutation; 18.16 runs it in the
    //    background) and wait for it.
    h.a.exec(&format!("ALTER TABLE {ta} DELETE {cold}")).await;
    wait_for(LONG, "the cold rows gone from A", || async {
        h.a.query_u64(&format!("SELECT count() FROM {ta} {cold}"))
            .await
            == 0
    })
    .await;
    // Nothing else touched: A's hot rows and B as they were.
    assert_eq!(checksum(&h.a, &ta, COLUMNS, "").await, hot_before);
    assert_eq!(checksum(&h.b, &tb, COLUMNS, "").await, cold_before);
}
