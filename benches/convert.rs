//! Codec hot path: `BlockEncoder::push_row` for every row of a batch, then
//! `finish_into` for the Native block, on seed-shaped text rows
//! (`rec_id, task_for, function_type, data`) in batches of 10,000.
//! Throughput is rows per second.
//!
//! `worker_path` measures what the worker does per message end to end
//! inside the process: parse the raw XREADGROUP reply frame into messages,
//! map fields to columns, convert, encode, and seal the Native block.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::testing::BlockEncoder;
use sluice::testing::FieldValue;
use sluice::testing::{ColumnSpec, ColumnType, DefaultKind};

const ROWS: usize = 10_000;

fn spec(name: &str, type_name: &str) -> ColumnSpec {
    ColumnSpec {
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        ty: ColumnType::parse(type_name).expect("valid type"),
        default_kind: DefaultKind::None,
    }
}

fn text(s: &str) -> Option<FieldValue<'_>> {
    Some(FieldValue::Text(s.as_bytes()))
}

/// Encodes `rows` as one block per iteration, reusing encoder and buffer.
fn bench_rows(
    c: &mut Criterion,
    name: &str,
    columns: &[ColumnSpec],
    rows: &[Vec<Option<FieldValue<'_>>>],
) {
    let mut group = c.benchmark_group("convert");
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function(name, |b| {
        let mut encoder = BlockEncoder::new(columns);
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            for row in rows {
                encoder.push_row(row).expect("row converts");
            }
            encoder.finish_into(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn seed(c: &mut Criterion) {
    let ids: Vec<String> = (0..ROWS).map(|i| (123_456 + i).to_string()).collect();
    let tasks = ["job_a", "job_b", "job_c"];
    let functions = ["sum", "avg", "max", "min", "count"];
    let data = ["{\"x\":1}", "{\"x\":2,\"y\":[1,2,3]}", "{}"];
    let times: Vec<String> = (0..ROWS)
        .map(|i| format!("2024-05-01 12:{:02}:{:02}", i / 60 % 60, i % 60))
        .collect();
    let scores: Vec<String> = (0..ROWS).map(|i| format!("{}.{}", i, i % 100)).collect();

    let base = |i: usize| {
        vec![
            text(&ids[i]),
            text(tasks[i % 3]),
            text(functions[i % 5]),
            text(data[i % 3]),
        ]
    };

    let columns = [
        spec("rec_id", "UInt64"),
        spec("task_for", "String"),
        spec("function_type", "LowCardinality(String)"),
        spec("data", "String"),
    ];
    let rows: Vec<_> = (0..ROWS).map(base).collect();
    bench_rows(c, "seed_4_columns", &columns, &rows);

    let mut wider = columns.to_vec();
    wider.push(spec("created_at", "DateTime"));
    wider.push(spec("score", "Nullable(Float64)"));
    let rows: Vec<_> = (0..ROWS)
        .map(|i| {
            let mut row = base(i);
            row.push(text(&times[i]));
            // Every tenth score is absent: NULL.
            row.push(if i % 10 == 0 { None } else { text(&scores[i]) });
            row
        })
        .collect();
    bench_rows(c, "seed_6_columns_datetime_nullable_f64", &wider, &rows);
}

/// Raw reply → messages → batch → sealed Native block, 10,000 messages.
fn worker_path(c: &mut Criterion) {
    use bytes::Bytes;
    use fred::types::Resp3Frame as Frame;
    use sluice::config::MetadataColumns;
    use sluice::testing::TableSchema;
    use sluice::testing::{OpenBatch, RowMapper};
    use std::sync::Arc;

    let blob = |s: String| Frame::BlobString {
        data: Bytes::from(s),
        attributes: None,
    };
    let array = |data: Vec<Frame>| Frame::Array {
        data,
        attributes: None,
    };
    let entries: Vec<Frame> = (0..ROWS)
        .map(|i| {
            array(vec![
                blob(format!("1700000000000-{i}")),
                array(vec![
                    blob("rec_id".into()),
                    blob((123_456 + i).to_string()),
                    blob("task_for".into()),
                    blob(["a", "b", "c"][i % 3].into()),
                    blob("function_type".into()),
                    blob(["sum", "avg"][i % 2].into()),
                    blob("data".into()),
                    blob(format!("{{\"x\":{i}}}")),
                ]),
            ])
        })
        .collect();
    let reply = array(vec![array(vec![blob("events".into()), array(entries)])]);
    let streams: Vec<Arc<str>> = vec![Arc::from("events")];
    let schema = TableSchema {
        database: "default".into(),
        table: "events".into(),
        columns: vec![
            spec("rec_id", "UInt64"),
            spec("task_for", "String"),
            spec("function_type", "String"),
            spec("data", "String"),
        ],
    };
    let mapper = RowMapper::new(&schema, &MetadataColumns::default(), None).expect("mapper");

    let mut group = c.benchmark_group("worker_path");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("decode_convert_encode_seed_4_fields", |b| {
        b.iter_batched(
            || reply.clone(),
            |frame| {
                let mut messages = Vec::with_capacity(ROWS);
                sluice::testing::reply::read_group(frame, &streams, &mut messages).expect("parse");
                let mut batch = OpenBatch::new();
                for m in messages {
                    batch.add(&mapper, m);
                }
                black_box(batch.seal(&mapper).block.len())
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // The direct connection's path: the reply's bytes as Redis sends them,
    // its end found (`Scan`), then parsed into messages and batched.
    let bytes = {
        let mut out = Vec::new();
        resp2(&reply, &mut out);
        Bytes::from(out)
    };
    group.bench_function("scan_parse_convert_encode_seed_4_fields", |b| {
        b.iter(|| {
            let mut scan = sluice::testing::reply::Scan::default();
            let len = scan.complete(&bytes).expect("scan").expect("whole");
            let mut messages = Vec::with_capacity(ROWS);
            sluice::testing::reply::read_group_reply(bytes.slice(..len), &streams, &mut messages)
                .expect("parse");
            let mut batch = OpenBatch::new();
            for m in messages {
                batch.add(&mapper, m);
            }
            black_box(batch.seal(&mapper).block.len())
        })
    });
    // A landed batch's ids, encoded for XACK (as the committer does), then
    // walked for the end-to-end latency of each (as the metrics do).
    let parsed = {
        let mut scan = sluice::testing::reply::Scan::default();
        let len = scan.complete(&bytes).expect("scan").expect("whole");
        let mut messages = Vec::with_capacity(ROWS);
        sluice::testing::reply::read_group_reply(bytes.slice(..len), &streams, &mut messages)
            .expect("parse");
        messages
    };
    group.bench_function("ack_ids_encode_and_walk", |b| {
        b.iter(|| {
            let acks = sluice::testing::Acks::of(&parsed);
            black_box(acks.id_millis().sum::<u64>())
        })
    });
    group.finish();
}

/// A frame as RESP2 bytes (arrays and bulk strings only, as above).
fn resp2(frame: &fred::types::Resp3Frame, out: &mut Vec<u8>) {
    use fred::types::Resp3Frame as Frame;
    match frame {
        Frame::Array { data, .. } => {
            out.extend_from_slice(format!("*{}\r\n", data.len()).as_bytes());
            for f in data {
                resp2(f, out);
            }
        }
        Frame::BlobString { data, .. } => {
            out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        other => panic!("not in this reply: {other:?}"),
    }
}

criterion_group!(benches, seed, worker_path);
criterion_main!(benches);
