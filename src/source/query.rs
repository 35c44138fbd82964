//! The page queries of a ClickHouse source: keyset pagination in cursor
//! order.
//!
//! A row's *position* is its cursor and key values, selected as text next
//! to its fields. A page is two queries: the position `page` rows ahead
//! (`ORDER BY cursor, key… LIMIT 1 OFFSET page-1`, reading only those
//! columns), then the rows from just after the last position written up
//! to it, in order: `WHERE (filter) AND (c > L0 OR (c = L0 AND (k1 > L1 OR
//! …))) AND (c < U0 OR (c = U0 AND …)) ORDER BY c, k…`. Bounding the range
//! instead of `LIMIT`ing the rows keeps the text expressions to the page's
//! rows: 18.16 computes them before it sorts. No row ahead: the page is the
//! rest, and the last one.
//!
//! Ties: with a `key`, `(cursor, key…)` identifies a row, so the position is
//! exact and a page may end anywhere. Without one, the page's bound is a
//! cursor value `U` and `c <= U` takes every row sharing it, however many,
//! so the next page (`c > U`) skips none of them. Skipping seen keys
//! instead (`c >= L`, remembering the keys read at L) would need memory for
//! every key sharing a value; this needs none.
//!
//! Cursor and key columns must be orderable scalars with exact text forms:
//! integers, `Decimal`, `Date`, `DateTime`, `DateTime64`, `String`,
//! `FixedString`, `UUID`, `Enum`, `Bool` (not `Nullable`: NULLs would never
//! pass `>`; not floats: `-0 = 0` and NaN break the order).

use bytes::Bytes;

use super::text::{FieldColumn, Shape};
use crate::clickhouse::schema::{ColumnType, TableSchema};
use crate::sink::clickhouse::quote_identifier;

/// How a position value is written back into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Literal {
    /// `CAST('<text>' AS <type>)`.
    Cast(String),
    /// `toDateTime(<unix seconds>)`.
    DateTime,
    /// `toDateTime64('<text>', P, 'UTC')`.
    DateTime64(u32),
    /// A quoted string (any bytes).
    Str,
}

impl Literal {
    pub(crate) fn sql(&self, text: &[u8]) -> String {
        match self {
            Literal::Cast(ty) => format!("CAST({} AS {ty})", quote_string(text)),
            // Unix seconds as a number (a string would be parsed as a date
            // in the server's time zone); anything else stays quoted and
            // fails in ClickHouse rather than in a surprising way.
            Literal::DateTime if !text.is_empty() && text.iter().all(u8::is_ascii_digit) => {
                format!("toDateTime({})", String::from_utf8_lossy(text))
            }
            Literal::DateTime => format!("toDateTime({})", quote_string(text)),
            Literal::DateTime64(p) => format!("toDateTime64({}, {p}, 'UTC')", quote_string(text)),
            Literal::Str => quote_string(text),
        }
    }
}

/// A ClickHouse string literal holding exactly `bytes`.
pub(crate) fn quote_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('\'');
    for &b in bytes {
        match b {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out.push('\'');
    out
}

/// A cursor or key column.
#[derive(Debug, Clone)]
pub(crate) struct PositionColumn {
    pub name: String,
    quoted: String,
    /// Its text as selected.
    expr: String,
    pub shape: Shape,
    literal: Literal,
}

impl PositionColumn {
    fn new(name: &str, type_name: &str, ty: &ColumnType) -> Result<PositionColumn, String> {
        use ColumnType as T;
        let quoted = quote_identifier(name);
        let text = Shape::Text { number: false };
        let cast = || Literal::Cast(type_name.to_string());
        let (expr, shape, literal) = match ty {
            T::LowCardinality(inner) => {
                let mut c = PositionColumn::new(name, type_name, inner)?;
                c.literal = match c.literal {
                    Literal::Cast(_) => Literal::Cast(inner.to_string()),
                    other => other,
                };
                return Ok(c);
            }
            T::String => (quoted.clone(), text, Literal::Str),
            // Untrimmed: a FixedString compares with its zero padding.
            T::FixedString(n) => (
                quoted.clone(),
                Shape::Fixed { len: *n, trim: false },
                Literal::Str,
            ),
            T::DateTime => (format!("toString(toUInt32({quoted}))"), text, Literal::DateTime),
            T::DateTime64 { precision } => (
                format!("toString({quoted}, 'UTC')"),
                text,
                Literal::DateTime64(*precision),
            ),
            T::Int8
            | T::Int16
            | T::Int32
            | T::Int64
            | T::UInt8
            | T::UInt16
            | T::UInt32
            | T::UInt64
            | T::Decimal { .. }
            | T::Date
            | T::Uuid
            | T::Bool
            | T::Enum8(_)
            | T::Enum16(_) => (format!("toString({quoted})"), text, cast()),
            T::Float32 | T::Float64 => {
                return Err(format!(
                    "has type {type_name}: floats cannot order pages (-0 = 0, NaN); use an integer, time, decimal or string column"
                ))
            }
            T::Nullable(_) => {
                return Err(format!(
                    "has type {type_name}: rows with NULL there would never be read"
                ))
            }
            T::Array(_) => return Err(format!("has type {type_name}: an array cannot order pages")),
        };
        Ok(PositionColumn {
            name: name.to_string(),
            quoted,
            expr,
            shape,
            literal,
        })
    }
}

/// Why a source's table does not fit its config.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct PlanError {
    pub key: String,
    pub message: String,
}

/// A source's queries, built once from the table's schema.
#[derive(Debug)]
pub(crate) struct Plan {
    pub table: String,
    pub fields: Vec<FieldColumn>,
    /// The cursor column, then the key columns.
    pub position: Vec<PositionColumn>,
    select: String,
    order_by: String,
    filter: Option<String>,
    pub page: usize,
}

impl Plan {
    /// `key_prefix` names the source in errors (`source[0]`).
    pub(crate) fn new(
        schema: &TableSchema,
        columns: &[String],
        cursor: &str,
        key: &[String],
        filter: Option<&str>,
        page: usize,
        key_prefix: &str,
    ) -> Result<Plan, PlanError> {
        let find = |name: &str, k: &str| {
            schema
                .columns
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| PlanError {
                    key: format!("{key_prefix}.{k}"),
                    message: format!(
                        "table `{}`.`{}` has no column `{name}`",
                        schema.database, schema.table
                    ),
                })
        };
        let fields: Vec<FieldColumn> = if columns.is_empty() {
            schema
                .insertable()
                .map(|c| FieldColumn::new(&c.name, &c.type_name, &c.ty))
                .collect()
        } else {
            columns
                .iter()
                .map(|n| find(n, "columns").map(|c| FieldColumn::new(&c.name, &c.type_name, &c.ty)))
                .collect::<Result<_, _>>()?
        };
        let mut position = Vec::new();
        for (name, k) in
            std::iter::once((cursor, "cursor")).chain(key.iter().map(|n| (n.as_str(), "key")))
        {
            let c = find(name, k)?;
            position.push(
                PositionColumn::new(&c.name, &c.type_name, &c.ty).map_err(|m| PlanError {
                    key: format!("{key_prefix}.{k}"),
                    message: format!("column `{name}` {m}"),
                })?,
            );
        }
        let select = fields
            .iter()
            .map(|f| f.expr.as_str())
            .chain(position.iter().map(|p| p.expr.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let order_by = position
            .iter()
            .map(|p| p.quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Plan {
            table: format!(
                "{}.{}",
                quote_identifier(&schema.database),
                quote_identifier(&schema.table)
            ),
            fields,
            position,
            select,
            order_by,
            filter: filter.map(str::to_string),
            page,
        })
    }

    /// Whether positions identify rows (a `key` is configured).
    pub(crate) fn keyed(&self) -> bool {
        self.position.len() > 1
    }

    fn select_where(&self, select: &str, conditions: Vec<String>) -> String {
        let conditions: Vec<String> = self
            .filter
            .iter()
            .cloned()
            .chain(conditions)
            .map(|c| format!("({c})"))
            .collect();
        let mut sql = format!("SELECT {select} FROM {}", self.table);
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql
    }

    /// The position of the last row of the next page after `after` (empty:
    /// from the start), if that many rows are left: reads only the cursor
    /// and key columns.
    pub(crate) fn bound_sql(&self, after: &[Bytes]) -> String {
        let select = self
            .position
            .iter()
            .map(|p| p.expr.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let condition = (!after.is_empty()).then(|| self.compare(after, ">"));
        format!(
            "{} ORDER BY {} LIMIT 1 OFFSET {}",
            self.select_where(&select, condition.into_iter().collect()),
            self.order_by,
            self.page - 1
        )
    }

    /// The rows after `after` up to `upto` inclusive (None: all the rest).
    /// Bounding the range rather than using LIMIT keeps the text
    /// expressions to the page's rows (18.16 computes them before sorting),
    /// and without a key `c <= L` takes every row sharing the last value.
    pub(crate) fn page_sql(&self, after: &[Bytes], upto: Option<&[Bytes]>) -> String {
        let mut conditions = Vec::new();
        if !after.is_empty() {
            conditions.push(self.compare(after, ">"));
        }
        if let Some(upto) = upto {
            conditions.push(self.compare(upto, "<"));
        }
        format!(
            "{} ORDER BY {}",
            self.select_where(&self.select, conditions),
            self.order_by
        )
    }

    /// `(c, k…) > (at…)` for `op` `>`, `(c, k…) <= (at…)` for `<`,
    /// spelled out: 18.16 cannot compare tuples of any type, and the OR
    /// form keeps the primary key index usable.
    fn compare(&self, at: &[Bytes], op: &str) -> String {
        let n = at.len().min(self.position.len());
        let mut sql = String::new();
        for i in (0..n).rev() {
            let c = &self.position[i];
            let lit = c.literal.sql(&at[i]);
            sql = if i == n - 1 {
                let last = if op == "<" { "<=" } else { op };
                format!("{} {last} {lit}", c.quoted)
            } else {
                format!("{q} {op} {lit} OR ({q} = {lit} AND ({sql}))", q = c.quoted)
            };
        }
        sql
    }
}

/// A position as stored in Redis: each part as `<len>:<bytes>`.
pub(crate) fn encode_position(parts: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(p);
    }
    out
}

/// The parts of an encoded position, or None if it is malformed.
pub(crate) fn decode_position(mut b: &[u8]) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let colon = b.iter().position(|&c| c == b':')?;
        let len: usize = std::str::from_utf8(&b[..colon]).ok()?.parse().ok()?;
        let rest = &b[colon + 1..];
        if rest.len() < len {
            return None;
        }
        out.push(Bytes::copy_from_slice(&rest[..len]));
        b = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::schema::{ColumnSpec, DefaultKind};

    fn schema(cols: &[(&str, &str)]) -> TableSchema {
        TableSchema {
            database: "db".into(),
            table: "t".into(),
            columns: cols
                .iter()
                .map(|(n, t)| ColumnSpec {
                    name: n.to_string(),
                    type_name: t.to_string(),
                    ty: ColumnType::parse(t).unwrap(),
                    default_kind: DefaultKind::None,
                })
                .collect(),
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn keyset_pages() {
        let s = schema(&[("ts", "DateTime"), ("id", "UInt64"), ("v", "String")]);
        let p = Plan::new(
            &s,
            &[],
            "ts",
            &["id".into()],
            Some("ts < now()"),
            100,
            "source[0]",
        )
        .unwrap();
        assert!(p.keyed());
        assert_eq!(
            p.bound_sql(&[]),
            "SELECT toString(toUInt32(`ts`)), toString(`id`) FROM `db`.`t` WHERE (ts < now()) \
             ORDER BY `ts`, `id` LIMIT 1 OFFSET 99"
        );
        assert_eq!(
            p.page_sql(&[], None),
            "SELECT if(toUInt32(`ts`) BETWEEN 1 AND 4102444799, toString(`ts`, 'UTC'), toString(toUInt32(`ts`))), toString(`id`), `v`, toString(toUInt32(`ts`)), toString(`id`) \
             FROM `db`.`t` WHERE (ts < now()) ORDER BY `ts`, `id`"
        );
        assert!(p.page_sql(&[b("5"), b("7")], Some(&[b("9"), b("1")])).contains(
            "WHERE (ts < now()) AND (`ts` > toDateTime(5) OR (`ts` = toDateTime(5) AND (`id` > CAST('7' AS UInt64)))) \
             AND (`ts` < toDateTime(9) OR (`ts` = toDateTime(9) AND (`id` <= CAST('1' AS UInt64)))) ORDER BY"
        ));
    }

    #[test]
    fn without_key_pages_end_at_value_changes() {
        let s = schema(&[("name", "FixedString(3)"), ("n", "Int8")]);
        let p = Plan::new(&s, &["n".into()], "name", &[], None, 10, "source[0]").unwrap();
        assert!(!p.keyed());
        assert_eq!(
            p.page_sql(&[b("a\0'")], Some(&[b("ab\\")])),
            "SELECT toString(`n`), `name` FROM `db`.`t` WHERE (`name` > 'a\\x00\\'') AND (`name` <= 'ab\\\\') ORDER BY `name`"
        );
    }

    #[test]
    fn bad_cursor_columns_are_named() {
        let s = schema(&[("f", "Float64"), ("n", "Nullable(Int32)"), ("x", "Int32")]);
        let err = |cursor: &str, key: &[String]| {
            Plan::new(&s, &[], cursor, key, None, 10, "source[2]")
                .unwrap_err()
                .to_string()
        };
        assert!(err("f", &[]).starts_with("source[2].cursor: column `f` has type Float64"));
        assert!(err("x", &["n".into()])
            .starts_with("source[2].key: column `n` has type Nullable(Int32)"));
        assert!(
            err("nope", &[]).starts_with("source[2].cursor: table `db`.`t` has no column `nope`")
        );
        let e = Plan::new(&s, &["zz".into()], "x", &[], None, 10, "source[2]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("source[2].columns:"), "{e}");
        let lc = schema(&[("c", "LowCardinality(String)"), ("e", "Enum8('a' = 1)")]);
        let p = Plan::new(&lc, &[], "e", &["c".into()], None, 1, "s").unwrap();
        assert!(p
            .page_sql(&[b("a"), b("x")], None)
            .contains("CAST('a' AS Enum8('a' = 1))"));
    }

    #[test]
    fn positions_round_trip() {
        let parts = vec![b("12:3"), Bytes::new(), Bytes::from_static(b"\0\xff")];
        let enc = encode_position(&parts);
        assert_eq!(decode_position(&enc).unwrap(), parts);
        assert_eq!(decode_position(b"").unwrap(), Vec::<Bytes>::new());
        assert!(decode_position(b"5:ab").is_none());
        assert!(decode_position(b"x:ab").is_none());
    }
}
