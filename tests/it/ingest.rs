//! XADD → typed rows: every column type ClickHouse 18.16 has, payload
//! fields in JSON and MessagePack, and metadata columns.

use crate::common::*;
use crate::harness::{unique_name, wait_for, Worker};

#[tokio::test]
async fn all_types_land_as_typed_rows() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("types"), unique_name("types"));
    s.ch.client()
        .with_setting("allow_experimental_low_cardinality_type", "1")
        .query(&format!(
            "CREATE TABLE {table} (
                i8 Int8, i16 Int16, i32 Int32, i64 Int64,
                u8 UInt8, u16 UInt16, u32 UInt32, u64 UInt64,
                f32 Float32, f64 Float64, s String, fs FixedString(4),
                d Date, dt DateTime, uuid UUID,
                e8 Enum8('a' = 1, 'b' = 2), e16 Enum16('x' = 1000, 'y' = 2000),
                dec Decimal(18, 4), flag UInt8,
                n Nullable(Int32), ns Nullable(String), lc LowCardinality(String),
                arr Array(Int32), arrs Array(Nullable(String)),
                _id String, _stream String, _ts DateTime, _deliveries UInt32
            ) ENGINE = MergeTree ORDER BY i32"
        ))
        .execute()
        .await
        .unwrap();
    let full = [
        ("i8", "-8"),
        ("i16", "-1600"),
        ("i32", "1"),
        ("i64", "-6400000000"),
        ("u8", "255"),
        ("u16", "65535"),
        ("u32", "4000000000"),
        ("u64", "18446744073709551615"),
        ("f32", "1.5"),
        ("f64", "-2.25"),
        ("s", "héllo\ttab"),
        ("fs", "ab"),
        ("d", "2024-02-29"),
        ("dt", "2024-02-29 12:34:56"),
        ("uuid", "61f0c404-5cb3-11e7-907b-a6006ad3dba0"),
        ("e8", "b"),
        ("e16", "2000"),
        ("dec", "12345.6789"),
        ("flag", "true"),
        ("n", "42"),
        ("ns", "x"),
        ("lc", "low"),
        ("arr", "[1,-2,3]"),
        ("arrs", r#"["p",null,"q"]"#),
        ("unknown_field", "ignored"),
    ];
    let id1 = xadd(&s.rc, &stream, &full).await;
    // Missing fields take their column's default; Nullable ones become NULL.
    let id2 = xadd(&s.rc, &stream, &[("i32", "2")]).await;

    let config = s.config(
        &s.ch.url(),
        "types",
        &stream,
        &table,
        r#"batch = { max_rows = 100, max_wait = "100ms" }
metadata = { id = "_id", stream = "_stream", enqueued_at = "_ts", deliveries = "_deliveries" }"#,
    );
    let worker = Worker::spawn(&config);
    wait_for(LONG, "2 rows", || async { s.ch.count(&table).await == 2 }).await;

    let rows = s.ch.query_tsv(&format!(
        "SELECT i8, i16, i32, i64, u8, u16, u32, u64, f32, f64, s, fs = toFixedString('ab', 4), d, dt, uuid, e8, e16, dec, flag,
                n, ns, lc, arr, arrs, _id, _stream, toUnixTimestamp(_ts), _deliveries
         FROM {table} ORDER BY i32 FORMAT TSV")).await;
    // 18.16 prints the zero Date/DateTime as 0000-00-00; newer servers as 1970-01-01.
    let rows = rows
        .replace("0000-00-00 00:00:00", "1970-01-01 00:00:00")
        .replace("0000-00-00", "1970-01-01");
    let lines: Vec<&str> = rows.lines().collect();
    let ts1 = id1.split('-').next().unwrap().parse::<u64>().unwrap() / 1000;
    let ts2 = id2.split('-').next().unwrap().parse::<u64>().unwrap() / 1000;
    assert_eq!(
        lines[0],
        format!("-8\t-1600\t1\t-6400000000\t255\t65535\t4000000000\t18446744073709551615\t1.5\t-2.25\théllo\\ttab\t1\t2024-02-29\t2024-02-29 12:34:56\t61f0c404-5cb3-11e7-907b-a6006ad3dba0\tb\ty\t12345.6789\t1\t42\tx\tlow\t[1,-2,3]\t['p',NULL,'q']\t{id1}\t{stream}\t{ts1}\t1")
    );
    assert_eq!(
        lines[1],
        format!("0\t0\t2\t0\t0\t0\t0\t0\t0\t0\t\t0\t1970-01-01\t1970-01-01 00:00:00\t00000000-0000-0000-0000-000000000000\ta\tx\t0.0000\t0\t\\N\t\\N\t\t[]\t[]\t{id2}\t{stream}\t{ts2}\t1")
    );
    assert_eq!(
        pending(&s.rc, &stream, "g").await,
        0,
        "{}",
        worker.log_contents()
    );
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 0);
}

#[tokio::test]
async fn json_and_msgpack_payloads_expand_into_columns() {
    let s = Stack::start().await;
    for format in ["json", "msgpack"] {
        let (stream, table) = (unique_name(format), unique_name(format));
        s.ch.exec(&format!(
            "CREATE TABLE {table} (id UInt64, name String, score Float64, tags Array(String), n Nullable(Int32), source String)
             ENGINE = MergeTree ORDER BY id"
        ))
        .await;
        let object = serde_json::json!({"id": 7, "name": "seven", "score": 1.25, "tags": ["a", "b"], "n": null, "extra": {"x": 1}});
        let encoded: Vec<u8> = match format {
            "json" => serde_json::to_vec(&object).unwrap(),
            _ => rmp_serde::to_vec_named(&object).unwrap(),
        };
        // Plain fields and the payload combine; the payload's keys win.
        xadd_many(&s.rc, &stream, 1, |_| {
            vec![
                ("payload".into(), encoded.clone()),
                ("source".into(), b"web".to_vec()),
            ]
        })
        .await;
        // A payload that is not an object is dead-lettered with the reason.
        xadd(&s.rc, &stream, &[("payload", "[1,2]")]).await;
        let config = s.config(&s.ch.url(), format, &stream, &table, &format!(
            "batch = {{ max_rows = 10, max_wait = \"100ms\" }}\npayload = {{ field = \"payload\", format = \"{format}\" }}"));
        let worker = Worker::spawn(&config);
        wait_for(LONG, "payload row", || async {
            s.ch.count(&table).await == 1
        })
        .await;
        let row =
            s.ch.query_tsv(&format!(
                "SELECT id, name, score, tags, n, source FROM {table} FORMAT TSV"
            ))
            .await;
        assert_eq!(
            row.trim_end(),
            "7\tseven\t1.25\t['a','b']\t\\N\tweb",
            "{format}"
        );
        let dead_stream = format!("{stream}:dead");
        wait_for(LONG, "dead letter", || async {
            xlen(&s.rc, &dead_stream).await == 1
        })
        .await;
        let dead = entries(&s.rc, &dead_stream).await;
        let reason = field(&dead[0].1, "sluice.reason").unwrap();
        assert!(
            reason.contains("payload") && reason.contains("object"),
            "{format}: {reason}"
        );
        drop(worker);
    }
}

#[tokio::test]
async fn missing_fields_get_the_columns_default_expressions() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("dflt"), unique_name("dflt"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt32, n UInt32 DEFAULT 42, note String DEFAULT concat('row-', toString(id)), plain Int32,
                               twice UInt32 MATERIALIZED id * 2)
         ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    // One batch mixing rows with and without the defaulted fields.
    xadd(&s.rc, &stream, &[("id", "1")]).await;
    xadd(&s.rc, &stream, &[("id", "2"), ("n", "7")]).await;
    xadd(
        &s.rc,
        &stream,
        &[("id", "3"), ("note", "given"), ("plain", "-1")],
    )
    .await;
    xadd(&s.rc, &stream, &[("id", "4"), ("n", "8"), ("note", "both")]).await;
    let w = Worker::spawn(&s.config(
        &s.ch.url(),
        "dflt",
        &stream,
        &table,
        r#"batch = { max_rows = 100, max_wait = "300ms" }"#,
    ));
    wait_for(LONG, "4 rows", || async { s.ch.count(&table).await == 4 }).await;
    let rows =
        s.ch.query_tsv(&format!(
            "SELECT id, n, note, plain, twice FROM {table} ORDER BY id FORMAT TSV"
        ))
        .await;
    assert_eq!(
        rows,
        "1\t42\trow-1\t0\t2\n2\t7\trow-2\t0\t4\n3\t42\tgiven\t-1\t6\n4\t8\tboth\t0\t8\n",
        "{}",
        w.log_contents()
    );
}
