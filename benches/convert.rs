//! Codec hot path: `BlockEncoder::push_row` for every row of a batch, then
//! `finish_into` for the Native block, on seed-shaped text rows
//! (`rec_id, task_for, function_type, data`) in batches of 10,000.
//! Throughput is rows per second.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::convert::FieldValue;
use sluice::native::BlockEncoder;
use sluice::schema::{ColumnSpec, ColumnType, DefaultKind};

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

criterion_group!(benches, seed);
criterion_main!(benches);
