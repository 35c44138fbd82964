//! Value conversion: turns one incoming field value into the value a
//! ClickHouse column stores.
//!
//! Values arrive as [`FieldValue`]s: raw bytes of a Redis stream field, a JSON
//! value (from a JSON or MessagePack payload), or a metadata value (an integer,
//! or a stream id's unix milliseconds). [`crate::clickhouse::native`] calls the functions
//! here and lays the results out in Native format; on failure it wraps the
//! reason into a [`ConvertError`] naming the column, its type and the value.
//!
//! # Conversion rules
//!
//! A JSON string is treated exactly like the same bytes given as text, and a
//! JSON `null` like an absent field. An absent field becomes the type's
//! default: 0, `""`, 1970-01-01, the zero UUID, the enum's smallest value (the
//! one ClickHouse lists first), an empty array, and NULL for `Nullable`.
//!
//! | column type | text | JSON (besides strings) | `Int` | `UnixMillis` |
//! |---|---|---|---|---|
//! | `Int*`, `UInt*` | decimal digits, optional `+`, `-` (only a value in range is accepted, so `-1` is out of range for unsigned); `UInt8` also takes `true`/`false` (any case) | integer numbers; a float only if it is integral; `true`/`false` as 1/0 | range-checked | milliseconds, range-checked |
//! | `Float32/64` | Rust float syntax, also `nan`, `inf`, `-inf`, `infinity` (any case) | any number | converted | error |
//! | `Bool` | `true`/`false`/`1`/`0`, any case | bool, 0, 1 | 0 or 1 | error |
//! | `Date` | `YYYY-MM-DD`, or an integer day number | integer day number | day number | the UTC day |
//! | `DateTime` | `YYYY-MM-DD hh:mm:ss`, ISO 8601 `YYYY-MM-DDThh:mm[:ss][.f][Z\|±hh[:mm]]`, `YYYY-MM-DD` (midnight), or unix seconds (integer or fractional; the fraction is dropped) | unix seconds | unix seconds | seconds |
//! | `DateTime64(P)` | as `DateTime`, keeping up to P sub-second digits (further digits are truncated); numbers are unix **seconds**, never ticks | unix seconds, fraction kept | unix seconds | scaled to P |
//! | `UUID` | `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` or the same 32 hex digits without dashes, any case | — | error | error |
//! | `Enum8/16` | a member's name (exact bytes), else a member's number | a member's number | a member's number | error |
//! | `Decimal(P, S)` | exact decimal text, optional sign and exponent (`1.5e3`); never through a float. More than P−S integer digits is an error; extra fractional digits are rounded half away from zero | via the number's shortest text | scaled, range-checked | error |
//! | `String` | bytes as they are (need not be UTF-8) | numbers, bools, arrays and objects as their JSON text | decimal text | decimal text |
//! | `FixedString(N)` | as `String`, zero-padded to N; longer than N is an error | as `String` | as `String` | as `String` |
//! | `Array(T)` | must be a JSON array; each element converts to T by the JSON rules | an array | error | error |
//!
//! Naive date-times (without `Z` or an offset) are read as **UTC**, whatever
//! time zone the column declares. Out-of-range dates are errors: `Date` holds
//! 1970-01-01..=2149-06-06, `DateTime` 1970-01-01 00:00:00..=2106-02-07
//! 06:28:15 UTC, `DateTime64` 1900-01-01..=2299-12-31.
//!
//! `Nullable(T)`: absent, JSON `null` and the text `\N` are NULL; for a T
//! other than `String`/`FixedString` an empty string is NULL as well, while
//! `Nullable(String)` keeps `""` as an empty string. `LowCardinality(T)`
//! converts exactly like T.
//!
//! The rules live one type family per file ([`int`] for integers and
//! `Bool`, [`float`], [`date_time`], [`uuid`], [`enums`], [`decimal`],
//! [`text`], [`array`]); this file holds the value and error types and the
//! rules every family shares (absent, NULL, JSON shapes).

mod array;
mod date_time;
mod decimal;
mod enums;
mod float;
mod int;
mod text;
mod uuid;

use std::borrow::Cow;
use std::io::Write as _;

use serde_json::Value;

pub(crate) use array::for_each_element;
pub(crate) use date_time::{to_date, to_datetime, to_datetime64};
pub(crate) use decimal::to_decimal;
pub(crate) use enums::to_enum;
pub(crate) use float::{to_f32, to_f64};
pub(crate) use int::{to_bool, to_int};
pub(crate) use text::to_bytes;
pub(crate) use uuid::to_uuid;

/// One field value as it arrives: raw bytes from a Redis stream field, a JSON
/// value (from a JSON or MessagePack payload field — MessagePack is decoded
/// into `serde_json::Value` by another module), or a metadata value.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Text(&'a [u8]),
    Json(&'a serde_json::Value),
    Int(i64),
    UnixMillis(u64),
}

/// A value that does not fit its column; the message names both.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column `{column}` ({column_type}): cannot convert {value}: {reason}")]
pub struct ConvertError {
    pub column: String,
    pub column_type: String,
    /// The offending value: text quoted (Rust string escapes, lossy UTF-8),
    /// JSON as JSON text, truncated to ~100 chars.
    pub value: String,
    pub reason: String,
}

impl ConvertError {
    pub(crate) fn new(
        column: &str,
        column_type: &str,
        value: Option<FieldValue<'_>>,
        reason: Reason,
    ) -> Self {
        ConvertError {
            column: column.to_owned(),
            column_type: column_type.to_owned(),
            value: describe(value),
            reason: reason.0.into_owned(),
        }
    }
}

/// Why a value was rejected; built only on the error path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reason(pub Cow<'static, str>);

impl Reason {
    fn fixed(s: &'static str) -> Self {
        Reason(Cow::Borrowed(s))
    }

    /// Prefixes the position of an array element.
    pub(crate) fn in_element(self, index: usize) -> Self {
        Reason(format!("element {index}: {}", self.0).into())
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Reason(Cow::Owned(s))
    }
}

pub(crate) type Res<T> = Result<T, Reason>;

const MAX_SHOWN_CHARS: usize = 100;

/// Renders a value for an error message: text quoted, JSON as JSON text.
pub(crate) fn describe(value: Option<FieldValue<'_>>) -> String {
    fn cut(s: &str) -> Cow<'_, str> {
        match s.char_indices().nth(MAX_SHOWN_CHARS) {
            Some((at, _)) => format!("{}…", &s[..at]).into(),
            None => s.into(),
        }
    }
    match value {
        None => "an absent field".to_owned(),
        Some(FieldValue::Text(b)) => format!("{:?}", cut(&String::from_utf8_lossy(b))),
        Some(FieldValue::Json(v)) => cut(&v.to_string()).into_owned(),
        Some(FieldValue::Int(i)) => i.to_string(),
        Some(FieldValue::UnixMillis(ms)) => format!("{ms} (unix ms)"),
    }
}

/// JSON `null` is an absent field and a JSON string is text: every rule
/// below then only deals with the remaining shapes.
#[inline]
pub(crate) fn normalize(value: Option<FieldValue<'_>>) -> Option<FieldValue<'_>> {
    match value {
        Some(FieldValue::Json(Value::Null)) => None,
        Some(FieldValue::Json(Value::String(s))) => Some(FieldValue::Text(s.as_bytes())),
        v => v,
    }
}

/// Whether a (normalized) value means NULL for `Nullable(T)`; `stringy` is
/// true when T is `String` or `FixedString`, where `""` is a value.
#[inline]
pub(crate) fn is_null(value: Option<FieldValue<'_>>, stringy: bool) -> bool {
    match value {
        None => true,
        Some(FieldValue::Text(b)) => b == b"\\N" || (!stringy && b.is_empty()),
        _ => false,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn unexpected_json(v: &Value, wanted: &str) -> Reason {
    format!("expected {wanted}, got {}", json_kind(v)).into()
}

/// Writes a JSON number's shortest text into a stack buffer so decimal
/// rules apply to it without a heap allocation.
fn with_number_text<T>(n: &serde_json::Number, f: impl FnOnce(&[u8]) -> T) -> T {
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // A JSON number never needs more than 64 bytes in its shortest form.
    let _ = write!(cursor, "{n}");
    let len = cursor.position() as usize;
    f(&buf[..len])
}

#[cfg(test)]
mod tests {
    use super::int::out_of_range;
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
    }

    #[test]
    fn nulls() {
        assert!(is_null(None, true));
        assert!(is_null(Some(t("\\N")), true));
        assert!(is_null(Some(t("")), false));
        assert!(!is_null(Some(t("")), true));
        assert!(!is_null(Some(t("0")), false));
        let null = json!(null);
        assert!(normalize(Some(FieldValue::Json(&null))).is_none());
        let s = json!("");
        assert!(is_null(normalize(Some(FieldValue::Json(&s))), false));
    }

    #[test]
    fn describing_values() {
        assert_eq!(describe(Some(t("a\"b"))), r#""a\"b""#);
        assert_eq!(describe(Some(FieldValue::Text(b"\xffz"))), "\"\u{fffd}z\"");
        let long = "x".repeat(300);
        assert_eq!(
            describe(Some(t(&long))),
            format!("\"{}…\"", "x".repeat(100))
        );
        assert_eq!(
            describe(Some(FieldValue::Json(&json!({"k": 1})))),
            r#"{"k":1}"#
        );
        assert_eq!(describe(Some(FieldValue::Int(5))), "5");
        assert_eq!(describe(Some(FieldValue::UnixMillis(5))), "5 (unix ms)");
    }

    #[test]
    fn error_message() {
        let e = ConvertError::new("age", "UInt8", Some(t("300")), out_of_range("UInt8"));
        assert_eq!(
            e.to_string(),
            r#"column `age` (UInt8): cannot convert "300": out of range for UInt8"#
        );
    }
}
