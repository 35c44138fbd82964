//! Scalar columns: how one value of a plain (non-wrapper) ClickHouse type is
//! converted ([`crate::clickhouse::convert`]) and laid out in its final
//! Native bytes. The wrappers around it are [`super::node`]'s.

use super::wire::{put_bytes, put_int};
use crate::clickhouse::convert::{self, FieldValue, Reason, Res};
use crate::clickhouse::schema::ColumnType;

/// How one scalar is converted and laid out.
pub(super) enum Leaf {
    Int {
        width: u8,
        lo: i128,
        hi: i128,
        name: &'static str,
        /// `UInt8` doubles as a bool and takes `true`/`false`.
        bool_words: bool,
    },
    Float32,
    Float64,
    Bool,
    Date,
    DateTime,
    DateTime64 {
        precision: u32,
    },
    Uuid,
    Enum {
        width: u8,
        members: Vec<(String, i16)>,
        default: i16,
    },
    Decimal {
        precision: u32,
        scale: u32,
        width: u8,
    },
    FixedString(usize),
    String,
}

impl Leaf {
    /// `None` for the wrapper types.
    pub(super) fn new(ty: &ColumnType) -> Option<Leaf> {
        let int = |width, lo: i128, hi: i128, name| Leaf::Int {
            width,
            lo,
            hi,
            name,
            bool_words: false,
        };
        let enum_leaf = |width, members: Vec<(String, i16)>| {
            // ClickHouse orders members by value: the first, and default, is the smallest.
            let default = members.iter().map(|(_, n)| *n).min().unwrap_or(0);
            Leaf::Enum {
                width,
                members,
                default,
            }
        };
        Some(match ty {
            ColumnType::Int8 => int(1, i8::MIN.into(), i8::MAX.into(), "Int8"),
            ColumnType::Int16 => int(2, i16::MIN.into(), i16::MAX.into(), "Int16"),
            ColumnType::Int32 => int(4, i32::MIN.into(), i32::MAX.into(), "Int32"),
            ColumnType::Int64 => int(8, i64::MIN.into(), i64::MAX.into(), "Int64"),
            ColumnType::UInt8 => Leaf::Int {
                width: 1,
                lo: 0,
                hi: u8::MAX.into(),
                name: "UInt8",
                bool_words: true,
            },
            ColumnType::UInt16 => int(2, 0, u16::MAX.into(), "UInt16"),
            ColumnType::UInt32 => int(4, 0, u32::MAX.into(), "UInt32"),
            ColumnType::UInt64 => int(8, 0, u64::MAX.into(), "UInt64"),
            ColumnType::Float32 => Leaf::Float32,
            ColumnType::Float64 => Leaf::Float64,
            ColumnType::String => Leaf::String,
            ColumnType::FixedString(n) => Leaf::FixedString(*n),
            ColumnType::Date => Leaf::Date,
            ColumnType::DateTime => Leaf::DateTime,
            ColumnType::DateTime64 { precision } => Leaf::DateTime64 {
                precision: (*precision).min(9),
            },
            ColumnType::Uuid => Leaf::Uuid,
            ColumnType::Bool => Leaf::Bool,
            ColumnType::Enum8(m) => enum_leaf(
                1,
                m.iter().map(|(s, n)| (s.clone(), i16::from(*n))).collect(),
            ),
            ColumnType::Enum16(m) => enum_leaf(2, m.clone()),
            ColumnType::Decimal { precision, scale } => {
                let width = match precision {
                    0..=9 => 4,
                    10..=18 => 8,
                    _ => 16,
                };
                // Parsing rejects P > 38; clamp so a hand-built type cannot overflow i128.
                let precision = (*precision).clamp(1, 38);
                Leaf::Decimal {
                    precision,
                    scale: (*scale).min(precision),
                    width,
                }
            }
            ColumnType::Nullable(_) | ColumnType::LowCardinality(_) | ColumnType::Array(_) => {
                return None
            }
        })
    }

    /// Appends one value (`None` = the type's default) in its final layout.
    /// Writes nothing on error.
    #[inline]
    pub(super) fn encode(
        &self,
        v: Option<FieldValue<'_>>,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Res<()> {
        match self {
            Leaf::String => {
                let b = match v {
                    Some(v) => convert::to_bytes(v, scratch),
                    None => b"",
                };
                put_bytes(out, b);
            }
            Leaf::Int {
                width,
                lo,
                hi,
                name,
                bool_words,
            } => {
                let x = match v {
                    Some(v) => convert::to_int(v, *lo, *hi, name, *bool_words)?,
                    None => 0,
                };
                put_int(out, x, *width);
            }
            Leaf::Float32 => {
                let f = match v {
                    Some(v) => convert::to_f32(v)?,
                    None => 0.0,
                };
                out.extend_from_slice(&f.to_le_bytes());
            }
            Leaf::Float64 => {
                let f = match v {
                    Some(v) => convert::to_f64(v)?,
                    None => 0.0,
                };
                out.extend_from_slice(&f.to_le_bytes());
            }
            Leaf::Bool => {
                let b = match v {
                    Some(v) => convert::to_bool(v)?,
                    None => false,
                };
                out.push(u8::from(b));
            }
            Leaf::Date => {
                let d = match v {
                    Some(v) => convert::to_date(v)?,
                    None => 0,
                };
                out.extend_from_slice(&d.to_le_bytes());
            }
            Leaf::DateTime => {
                let s = match v {
                    Some(v) => convert::to_datetime(v)?,
                    None => 0,
                };
                out.extend_from_slice(&s.to_le_bytes());
            }
            Leaf::DateTime64 { precision } => {
                let t = match v {
                    Some(v) => convert::to_datetime64(v, *precision)?,
                    None => 0,
                };
                out.extend_from_slice(&t.to_le_bytes());
            }
            Leaf::Uuid => {
                let u = match v {
                    Some(v) => convert::to_uuid(v)?,
                    None => 0,
                };
                out.extend_from_slice(&((u >> 64) as u64).to_le_bytes());
                out.extend_from_slice(&(u as u64).to_le_bytes());
            }
            Leaf::Enum {
                width,
                members,
                default,
            } => {
                let n = match v {
                    Some(v) => convert::to_enum(v, members)?,
                    None => *default,
                };
                put_int(out, n.into(), *width);
            }
            Leaf::Decimal {
                precision,
                scale,
                width,
            } => {
                let d = match v {
                    Some(v) => convert::to_decimal(v, *precision, *scale)?,
                    None => 0,
                };
                put_int(out, d, *width);
            }
            Leaf::FixedString(n) => {
                let b = match v {
                    Some(v) => convert::to_bytes(v, scratch),
                    None => b"",
                };
                if b.len() > *n {
                    return Err(Reason(
                        format!("{} bytes do not fit FixedString({n})", b.len()).into(),
                    ));
                }
                out.extend_from_slice(b);
                out.resize(out.len() + (n - b.len()), 0);
            }
        }
        Ok(())
    }
}
