//! Rows → entry fields in the text forms the ClickHouse sink accepts
//! (`crate::clickhouse::convert`), so a row read by a source and landed by a sink
//! arrives unchanged.
//!
//! ClickHouse renders each value: the query selects, per column, an
//! expression producing `String` (or the raw `String` / `FixedString`
//! column), nested in the column's `Nullable` / `Array` structure, and the
//! page comes back as RowBinary. Per type:
//!
//! | column type | expression | field text |
//! |---|---|---|
//! | `String`, `FixedString(N)` | the column | its bytes; `FixedString`'s trailing zero bytes (padding) dropped |
//! | `Int*`, `UInt*`, `Float*`, `Decimal`, `UUID`, `Enum*`, `Bool` | `toString(x)` | `-12`, `0.1`, `nan`, `1.5000`, `…-…`, the member's name, `true` |
//! | `Date` | `toString(x)` | `YYYY-MM-DD`; day 0 and days from 2100 on as the day number (18.16 prints day 0 as `0000-00-00` and days from 2106-02-07 as 1970) |
//! | `DateTime` | `toString(x, 'UTC')` | `YYYY-MM-DD hh:mm:ss` in UTC; second 0 and times from 2100 on as unix seconds (same reason) |
//! | `DateTime64(P)` | `toString(x, 'UTC')` | `YYYY-MM-DD hh:mm:ss.fff…` in UTC |
//! | `Nullable(T)` | `if(isNull(x), NULL, …)` | NULL: the field is left out (the sink reads an absent field as NULL) |
//! | `LowCardinality(T)` | as `T` | as `T` |
//! | `Array(T)` | `arrayMap(e -> …, x)` | a JSON array: integers as numbers, NULL as `null`, everything else as JSON strings of the text above |
//!
//! Limits (a row that hits one is dead-lettered with the reason, never
//! changed): a string inside an array must be UTF-8 to go into JSON. A
//! `Nullable(String)` holding the two characters `\N` reads back as NULL (the
//! sink's NULL spelling). A row whose every column is NULL gets its first
//! column as `\N`, since an entry needs a field.

use bytes::Bytes;

use crate::clickhouse::schema::ColumnType;
use crate::sink::clickhouse::quote_identifier;

/// The last day (2099-12-31) and second (2099-12-31 23:59:59) written as
/// text; later ones go as numbers (18.16 prints them wrong).
const LAST_TEXT_DAY: u32 = 47_481;
const LAST_TEXT_SECOND: u32 = 4_102_444_799;

/// How a selected expression comes back in RowBinary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `String`: VarUInt length, bytes. `number`: an integer's text, written
    /// into JSON arrays as a number.
    Text { number: bool },
    /// `FixedString(N)`: N bytes; `trim` drops trailing zero bytes.
    Fixed { len: usize, trim: bool },
    /// One byte (1 = NULL), then the value unless NULL.
    Nullable(Box<Shape>),
    /// VarUInt count, then the elements.
    Array(Box<Shape>),
}

/// A column of the table as the source selects it.
#[derive(Debug, Clone)]
pub(crate) struct FieldColumn {
    pub name: Bytes,
    /// The SQL expression rendering it.
    pub expr: String,
    pub shape: Shape,
    /// The column's type as the server prints it (for reasons).
    pub type_name: String,
}

impl FieldColumn {
    pub(crate) fn new(name: &str, type_name: &str, ty: &ColumnType) -> FieldColumn {
        let quoted = quote_identifier(name);
        let (expr, shape) = text_expr(ty, &quoted, 0);
        FieldColumn {
            name: Bytes::copy_from_slice(name.as_bytes()),
            expr,
            shape,
            type_name: type_name.to_string(),
        }
    }
}

/// `String` or `FixedString`, possibly inside `LowCardinality`: selected as is.
fn raw_shape(ty: &ColumnType) -> Option<Shape> {
    match ty {
        ColumnType::String => Some(Shape::Text { number: false }),
        ColumnType::FixedString(n) => Some(Shape::Fixed {
            len: *n,
            trim: true,
        }),
        ColumnType::LowCardinality(t) => raw_shape(t),
        _ => None,
    }
}

/// The expression rendering `x` (of type `ty`) as text, and its shape.
/// `depth` names the lambda variables of nested arrays.
fn text_expr(ty: &ColumnType, x: &str, depth: usize) -> (String, Shape) {
    use ColumnType as T;
    if let Some(shape) = raw_shape(ty) {
        return (x.to_string(), shape);
    }
    let text = |number| Shape::Text { number };
    match ty {
        T::LowCardinality(t) => text_expr(t, x, depth),
        T::Nullable(t) => match raw_shape(t) {
            Some(shape) => (x.to_string(), Shape::Nullable(Box::new(shape))),
            None => {
                let (e, shape) = text_expr(t, &format!("assumeNotNull({x})"), depth);
                (
                    format!("if(isNull({x}), NULL, {e})"),
                    Shape::Nullable(Box::new(shape)),
                )
            }
        },
        T::Array(t) => {
            let var = format!("_sluice_e{depth}");
            let (e, shape) = text_expr(t, &var, depth + 1);
            let expr = if e == var {
                x.to_string()
            } else {
                format!("arrayMap({var} -> {e}, {x})")
            };
            (expr, Shape::Array(Box::new(shape)))
        }
        // 18.16 prints day 0 and second 0 as `0000-00-00 …` (no parser,
        // ours included, takes that back) and days from 2106-02-07 on as
        // 1970: outside 1970-01-02 … 2099-12-31 the number goes out (day
        // number, unix seconds), which the sink takes as well.
        T::Date => (
            format!(
                "if(toUInt16({x}) BETWEEN 1 AND {LAST_TEXT_DAY}, toString({x}), toString(toUInt16({x})))"
            ),
            text(false),
        ),
        T::DateTime => (
            format!(
                "if(toUInt32({x}) BETWEEN 1 AND {LAST_TEXT_SECOND}, toString({x}, 'UTC'), toString(toUInt32({x})))"
            ),
            text(false),
        ),
        T::DateTime64 { .. } => (format!("toString({x}, 'UTC')"), text(false)),
        T::Int8 | T::Int16 | T::Int32 | T::Int64 | T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 => {
            (format!("toString({x})"), text(true))
        }
        _ => (format!("toString({x})"), text(false)),
    }
}

/// A malformed or short RowBinary page.
#[derive(Debug, thiserror::Error)]
#[error("RowBinary page ends early or is malformed at byte {at}: {what}")]
pub(crate) struct DecodeError {
    pub at: usize,
    pub what: &'static str,
}

/// Reads RowBinary values out of one page.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn fail(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.pos, what }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.fail("a byte"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.fail("a VarUInt of at most 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.fail("as many bytes as the length says"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.fail("a string length"))?;
        self.take(n)
    }

    /// One value of `shape` as field text (None = NULL). Arrays become JSON;
    /// `problem` gets the first reason the value cannot be written.
    pub(crate) fn value(
        &mut self,
        shape: &Shape,
        problem: &mut Option<String>,
    ) -> Result<Option<Bytes>, DecodeError> {
        match shape {
            Shape::Text { .. } => self.string().map(Some),
            Shape::Fixed { len, trim } => {
                let b = self.take(*len)?;
                let keep = if *trim {
                    b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1)
                } else {
                    b.len()
                };
                Ok(Some(b.slice(..keep)))
            }
            Shape::Nullable(inner) => match self.byte()? {
                0 => self.value(inner, problem),
                _ => Ok(None),
            },
            Shape::Array(inner) => {
                let mut json = Vec::new();
                self.json_array(inner, &mut json, problem)?;
                Ok(Some(Bytes::from(json)))
            }
        }
    }

    fn json_array(
        &mut self,
        inner: &Shape,
        out: &mut Vec<u8>,
        problem: &mut Option<String>,
    ) -> Result<(), DecodeError> {
        let n = self.varint()?;
        out.push(b'[');
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            self.json_element(inner, out, problem, i)?;
        }
        out.push(b']');
        Ok(())
    }

    fn json_element(
        &mut self,
        shape: &Shape,
        out: &mut Vec<u8>,
        problem: &mut Option<String>,
        index: u64,
    ) -> Result<(), DecodeError> {
        match shape {
            Shape::Array(inner) => self.json_array(inner, out, problem),
            Shape::Nullable(inner) => match self.byte()? {
                0 => self.json_element(inner, out, problem, index),
                _ => {
                    out.extend_from_slice(b"null");
                    Ok(())
                }
            },
            Shape::Text { number: true } => {
                out.extend_from_slice(&self.string()?);
                Ok(())
            }
            Shape::Text { number: false } | Shape::Fixed { .. } => {
                let text = self
                    .value(shape, problem)?
                    .expect("a plain shape is never NULL");
                let s = match std::str::from_utf8(&text) {
                    Ok(s) => std::borrow::Cow::Borrowed(s),
                    Err(_) => {
                        problem.get_or_insert_with(|| {
                            format!("array element {index} is not UTF-8, which JSON cannot carry")
                        });
                        String::from_utf8_lossy(&text)
                    }
                };
                // Writing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &*s);
                Ok(())
            }
        }
    }
}

/// A row's fields (name, text) in column order.
pub(crate) type Fields = Vec<(Bytes, Bytes)>;

/// One row's fields, in column order (NULLs left out), and why it cannot
/// be written, if it cannot.
pub(crate) fn row_fields(
    reader: &mut Reader,
    columns: &[FieldColumn],
) -> Result<(Fields, Option<String>), DecodeError> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut problem = None;
    for c in columns {
        let mut column_problem = None;
        if let Some(v) = reader.value(&c.shape, &mut column_problem)? {
            fields.push((c.name.clone(), v));
        }
        if let (None, Some(p)) = (&problem, column_problem) {
            problem = Some(format!(
                "column `{}` ({}): {p}",
                String::from_utf8_lossy(&c.name),
                c.type_name
            ));
        }
    }
    if fields.is_empty() {
        if let Some(c) = columns.first() {
            // An entry needs a field: NULL spelled as the sink reads it.
            fields.push((c.name.clone(), Bytes::from_static(b"\\N")));
        }
    }
    Ok((fields, problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: &str) -> FieldColumn {
        FieldColumn::new("c", ty, &ColumnType::parse(ty).unwrap())
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.push(s.len() as u8);
        out.extend_from_slice(s);
    }

    #[test]
    fn expressions_per_type() {
        assert_eq!(col("String").expr, "`c`");
        assert_eq!(col("LowCardinality(Nullable(String))").expr, "`c`");
        assert_eq!(col("Int64").expr, "toString(`c`)");
        assert_eq!(col("Int64").shape, Shape::Text { number: true });
        assert_eq!(
            col("DateTime('Europe/Berlin')").expr,
            "if(toUInt32(`c`) BETWEEN 1 AND 4102444799, toString(`c`, 'UTC'), toString(toUInt32(`c`)))"
        );
        assert_eq!(col("DateTime64(3)").expr, "toString(`c`, 'UTC')");
        assert_eq!(
            col("Nullable(Date)").expr,
            "if(isNull(`c`), NULL, if(toUInt16(assumeNotNull(`c`)) BETWEEN 1 AND 47481, toString(assumeNotNull(`c`)), toString(toUInt16(assumeNotNull(`c`)))))"
        );
        assert_eq!(col("Array(String)").expr, "`c`");
        assert_eq!(
            col("Array(Array(Nullable(Int8)))").expr,
            "arrayMap(_sluice_e0 -> arrayMap(_sluice_e1 -> if(isNull(_sluice_e1), NULL, toString(assumeNotNull(_sluice_e1))), _sluice_e0), `c`)"
        );
        assert_eq!(
            col("Array(FixedString(2))").shape,
            Shape::Array(Box::new(Shape::Fixed { len: 2, trim: true }))
        );
        for ty in [
            "Bool",
            "UUID",
            "Decimal(18, 4)",
            "Enum8('a' = 1)",
            "Float32",
        ] {
            assert_eq!(col(ty).expr, "toString(`c`)", "{ty}");
            assert_eq!(col(ty).shape, Shape::Text { number: false }, "{ty}");
        }
    }

    #[test]
    fn decodes_rowbinary_into_field_texts() {
        let columns = [
            col("String"),
            col("FixedString(4)"),
            col("Nullable(Int32)"),
            col("Array(Nullable(Int32))"),
            col("Array(Array(String))"),
        ];
        let mut page = Vec::new();
        string(&mut page, b"a\xffb");
        page.extend_from_slice(b"ab\0\0");
        page.push(1); // NULL
        page.extend_from_slice(&[2, 0]);
        string(&mut page, b"-7");
        page.push(1);
        page.extend_from_slice(&[2, 1]);
        string(&mut page, b"x\"y");
        page.push(0);
        let mut r = Reader::new(Bytes::from(page));
        let (fields, problem) = row_fields(&mut r, &columns).unwrap();
        assert!(r.is_done());
        assert_eq!(problem, None);
        let texts: Vec<&[u8]> = fields.iter().map(|(_, v)| v.as_ref()).collect();
        assert_eq!(
            texts,
            [b"a\xffb".as_ref(), b"ab", b"[-7,null]", br#"[["x\"y"],[]]"#]
        );
        // The NULL column is left out.
        assert_eq!(fields.len(), 4);
    }

    #[test]
    fn non_utf8_array_elements_are_a_problem_and_all_null_rows_keep_a_field() {
        let columns = [col("Array(String)")];
        let mut page = vec![1];
        string(&mut page, b"\xff");
        let mut r = Reader::new(Bytes::from(page));
        let (_, problem) = row_fields(&mut r, &columns).unwrap();
        let problem = problem.unwrap();
        assert!(
            problem.contains("column `c` (Array(String))") && problem.contains("UTF-8"),
            "{problem}"
        );

        let columns = [col("Nullable(UInt8)"), col("Nullable(String)")];
        let mut r = Reader::new(Bytes::from_static(&[1, 1]));
        let (fields, _) = row_fields(&mut r, &columns).unwrap();
        assert_eq!(fields, vec![(Bytes::from("c"), Bytes::from_static(b"\\N"))]);
    }

    #[test]
    fn truncated_pages_are_errors() {
        let columns = [col("String")];
        let mut r = Reader::new(Bytes::from_static(&[5, b'a']));
        assert!(row_fields(&mut r, &columns).is_err());
        let mut r = Reader::new(Bytes::from_static(&[0xff; 11]));
        assert!(row_fields(&mut r, &columns).is_err());
    }

    /// Every text this module produces goes back through the sink's
    /// encoder into the same value (the forms ClickHouse prints, per type).
    #[test]
    fn texts_are_what_the_sink_accepts() {
        use crate::clickhouse::convert::FieldValue;
        use crate::clickhouse::native::BlockEncoder;
        use crate::clickhouse::schema::{ColumnSpec, DefaultKind};
        let cases: &[(&str, &[&str])] = &[
            ("Int64", &["-9223372036854775808", "0"]),
            ("UInt64", &["18446744073709551615"]),
            (
                "Float32",
                &["0.1", "nan", "-inf", "1e-45", "3.4028235e38", "-0"],
            ),
            (
                "Float64",
                &["0.30000000000000004", "1e100", "2.2250738585072014e-308"],
            ),
            ("Decimal(18, 4)", &["-1.5000", "0.0000"]),
            ("Decimal(38, 10)", &["-123.4500000000"]),
            ("Date", &["0", "1970-01-02", "2099-12-31", "47482", "65535"]),
            (
                "DateTime",
                &[
                    "0",
                    "1970-01-01 00:00:01",
                    "2099-12-31 23:59:59",
                    "4294967295",
                ],
            ),
            (
                "DateTime64(3)",
                &["1900-01-01 00:00:00.000", "2024-05-06 07:08:09.123"],
            ),
            ("UUID", &["01234567-89ab-cdef-0123-456789abcdef"]),
            ("Bool", &["true", "false"]),
            ("Enum8('a' = 1, 'b' = -2)", &["b"]),
            ("Array(Nullable(Int32))", &["[1,null]"]),
            ("Array(Decimal(9, 2))", &["[\"1.50\"]"]),
            ("Array(Float64)", &["[\"nan\",\"1e100\"]"]),
            (
                "Array(Array(Date))",
                &["[[\"2020-01-01\",\"0\",\"65535\"],[]]"],
            ),
            (
                "Array(DateTime64(6))",
                &["[\"2024-01-01 00:00:00.000001\"]"],
            ),
            ("Array(Bool)", &["[\"true\"]"]),
            (
                "Array(UUID)",
                &["[\"01234567-89ab-cdef-0123-456789abcdef\"]"],
            ),
        ];
        let spec = |ty: &str| ColumnSpec {
            name: "c".into(),
            type_name: ty.to_string(),
            ty: ColumnType::parse(ty).unwrap(),
            default_kind: DefaultKind::Default,
        };
        for (ty, texts) in cases {
            let mut enc = BlockEncoder::new(&[spec(ty)]);
            for t in *texts {
                enc.push_row(&[Some(FieldValue::Text(t.as_bytes()))])
                    .unwrap_or_else(|e| panic!("{ty} {t}: {e}"));
            }
        }
        // The value itself, for types 18.16 lacks (the integration test
        // compares the others on a real server): the block ends with it.
        let last = |ty: &str, text: &str| {
            let mut enc = BlockEncoder::new(&[spec(ty)]);
            enc.push_row(&[Some(FieldValue::Text(text.as_bytes()))])
                .unwrap();
            let mut out = Vec::new();
            enc.finish_into(&mut out);
            out
        };
        let ticks: i64 = 1_714_979_289_123;
        assert!(last("DateTime64(3)", "2024-05-06 07:08:09.123").ends_with(&ticks.to_le_bytes()));
        let before_1970: i64 = -2_208_988_800_000;
        assert!(
            last("DateTime64(3)", "1900-01-01 00:00:00.000").ends_with(&before_1970.to_le_bytes())
        );
        assert!(last("Bool", "true").ends_with(&[1]));
        assert!(last("Float32", "0.1").ends_with(&0.1f32.to_le_bytes()));
        assert!(last("Float32", "1e-45").ends_with(&f32::from_bits(1).to_le_bytes()));
    }
}
