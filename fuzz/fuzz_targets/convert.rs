//! Field conversion + Native encoding: arbitrary field values (raw bytes,
//! or JSON as a payload field would give) pushed as rows into a block of
//! several column types. Must never panic; a refused row must leave the
//! block exactly as it was; the finished block must hold every row.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::testing::BlockEncoder;
use sluice::testing::FieldValue;
use sluice::testing::{ColumnSpec, ColumnType, DefaultKind};

const TYPES: &[&str] = &[
    "UInt8",
    "Int16",
    "UInt32",
    "Int64",
    "UInt64",
    "Float32",
    "Float64",
    "Bool",
    "Date",
    "DateTime",
    "DateTime('Europe/Berlin')",
    "DateTime64(3)",
    "DateTime64(9, 'UTC')",
    "UUID",
    "Enum8('a' = 1, 'b' = -2)",
    "Enum16('x' = 1000, 'y' = -1000)",
    "Decimal(9, 2)",
    "Decimal(18, 0)",
    "Decimal(38, 10)",
    "String",
    "FixedString(4)",
    "Nullable(Int32)",
    "Nullable(String)",
    "Array(UInt16)",
    "Array(Nullable(String))",
    "Array(Array(Int8))",
    "LowCardinality(String)",
    "LowCardinality(Nullable(String))",
    "Array(LowCardinality(String))",
];

#[derive(Arbitrary, Debug)]
enum Value<'a> {
    Absent,
    Text(&'a [u8]),
    /// Parsed as JSON when it is JSON (a payload field's value), else text.
    Json(&'a str),
    Int(i64),
    UnixMillis(u64),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Indexes into TYPES: the block's columns (1–4 of them).
    columns: Vec<u8>,
    rows: Vec<Vec<Value<'a>>>,
}

fuzz_target!(|input: Input<'_>| {
    let specs: Vec<ColumnSpec> = input
        .columns
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, t)| {
            let type_name = TYPES[*t as usize % TYPES.len()];
            ColumnSpec {
                name: format!("c{i}"),
                type_name: type_name.to_string(),
                ty: ColumnType::parse(type_name).expect("listed types parse"),
                default_kind: DefaultKind::None,
            }
        })
        .collect();
    if specs.is_empty() {
        return;
    }
    let mut block = BlockEncoder::new(&specs);
    let mut accepted = 0;
    for row in input.rows.iter().take(64) {
        let json: Vec<Option<serde_json::Value>> = row
            .iter()
            .map(|v| match v {
                Value::Json(s) => serde_json::from_str(s).ok(),
                _ => None,
            })
            .collect();
        let values: Vec<Option<FieldValue<'_>>> = (0..specs.len())
            .map(|i| match row.get(i) {
                None | Some(Value::Absent) => None,
                Some(Value::Text(b)) => Some(FieldValue::Text(b)),
                Some(Value::Json(s)) => Some(match &json[i] {
                    Some(j) => FieldValue::Json(j),
                    None => FieldValue::Text(s.as_bytes()),
                }),
                Some(Value::Int(n)) => Some(FieldValue::Int(*n)),
                Some(Value::UnixMillis(ms)) => Some(FieldValue::UnixMillis(*ms)),
            })
            .collect();
        let before = block.encoded_len();
        match block.push_row(&values) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert_eq!(block.encoded_len(), before, "a refused row left bytes: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
        assert_eq!(block.rows(), accepted);
    }
    let mut out = Vec::new();
    block.finish_into(&mut out);
    assert_eq!(out.is_empty(), accepted == 0);
    assert_eq!(block.rows(), 0);
});
