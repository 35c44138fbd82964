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

use std::borrow::Cow;
use std::io::Write as _;

use serde_json::Value;

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

// ---------------------------------------------------------------- integers

enum IntText {
    Ok(i128),
    Overflow,
    Invalid,
}

/// Parses `[+-]digits` straight from bytes, without UTF-8 validation.
#[inline]
fn parse_int_text(b: &[u8]) -> IntText {
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return IntText::Invalid;
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return IntText::Invalid;
        }
        match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d))) {
            Some(n) => v = n,
            None => overflow = true,
        }
    }
    if overflow {
        return IntText::Overflow;
    }
    let v = i128::from(v);
    IntText::Ok(if neg { -v } else { v })
}

fn parse_bool_word(b: &[u8]) -> Option<bool> {
    if b.eq_ignore_ascii_case(b"true") || b == b"1" {
        Some(true)
    } else if b.eq_ignore_ascii_case(b"false") || b == b"0" {
        Some(false)
    } else {
        None
    }
}

/// An integral f64 as i128, if it is one.
fn integral(f: f64) -> Option<i128> {
    // 2^126 keeps the cast exact and far above every target range.
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 8.5e37).then_some(f as i128)
}

fn json_int(v: &Value) -> Res<i128> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                integral(f).ok_or_else(|| Reason::fixed("not an integer"))
            }
        }
        Value::Bool(b) => Ok(i128::from(*b)),
        other => Err(unexpected_json(other, "a number")),
    }
}

/// An integer for a column of type `ty` holding `lo..=hi`; `bool_words`
/// lets `UInt8` take `true`/`false`.
#[inline]
pub(crate) fn to_int(
    v: FieldValue<'_>,
    lo: i128,
    hi: i128,
    ty: &'static str,
    bool_words: bool,
) -> Res<i128> {
    let x = match v {
        FieldValue::Text(b) => match parse_int_text(b) {
            IntText::Ok(x) => x,
            IntText::Overflow => return Err(out_of_range(ty)),
            IntText::Invalid => match bool_words.then(|| parse_bool_word(b)).flatten() {
                Some(flag) => i128::from(flag),
                None => return Err(Reason::fixed("not an integer")),
            },
        },
        FieldValue::Json(j) => json_int(j)?,
        FieldValue::Int(i) => i128::from(i),
        FieldValue::UnixMillis(ms) => i128::from(ms),
    };
    if x < lo || x > hi {
        return Err(out_of_range(ty));
    }
    Ok(x)
}

fn out_of_range(ty: &str) -> Reason {
    format!("out of range for {ty}").into()
}

// ------------------------------------------------------------------ floats

pub(crate) fn to_f64(v: FieldValue<'_>) -> Res<f64> {
    match v {
        FieldValue::Text(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| Reason::fixed("not a number")),
        FieldValue::Json(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        FieldValue::Json(other) => Err(unexpected_json(other, "a number")),
        FieldValue::Int(i) => Ok(i as f64),
        FieldValue::UnixMillis(_) => {
            Err(Reason::fixed("a timestamp cannot go into a float column"))
        }
    }
}

pub(crate) fn to_f32(v: FieldValue<'_>) -> Res<f32> {
    match v {
        // Parse f32 directly: going through f64 could round twice.
        FieldValue::Text(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f32>().ok())
            .ok_or_else(|| Reason::fixed("not a number")),
        other => to_f64(other).map(|f| f as f32),
    }
}

// -------------------------------------------------------------------- bool

pub(crate) fn to_bool(v: FieldValue<'_>) -> Res<bool> {
    let bad = || Reason::fixed("expected true/false/1/0");
    match v {
        FieldValue::Text(b) => parse_bool_word(b).ok_or_else(bad),
        FieldValue::Json(Value::Bool(b)) => Ok(*b),
        FieldValue::Json(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(bad()),
        },
        FieldValue::Json(other) => Err(unexpected_json(other, "a bool")),
        FieldValue::Int(0) => Ok(false),
        FieldValue::Int(1) => Ok(true),
        FieldValue::Int(_) => Err(bad()),
        FieldValue::UnixMillis(_) => Err(Reason::fixed("a timestamp cannot go into a Bool column")),
    }
}

// ------------------------------------------------------------------- dates

const SECS_PER_DAY: i64 = 86_400;
/// Last day `Date` (UInt16) can hold: 2149-06-06.
const MAX_DATE_DAYS: i128 = u16::MAX as i128;
/// `DateTime64` bounds in unix seconds: 1900-01-01 and 2299-12-31 23:59:59.
const DT64_MIN_SECS: i128 = -2_208_988_800;
const DT64_MAX_SECS: i128 = 10_413_791_999;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// days_from_civil).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

#[inline]
fn digits_at(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    Some(v)
}

/// Whether text starts like `YYYY-MM-DD` rather than a plain number.
#[inline]
fn looks_like_date(b: &[u8]) -> bool {
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-'
}

/// `YYYY-MM-DD` at the start of `b` as days since the epoch.
fn parse_ymd(b: &[u8]) -> Option<i64> {
    let y = i64::from(digits_at(b, 0, 4)?);
    let m = digits_at(b, 5, 2)?;
    let d = digits_at(b, 8, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// A date-time string as unix seconds plus nanoseconds.
fn parse_datetime_text(b: &[u8]) -> Res<(i64, u32)> {
    let bad = || {
        Reason::fixed("not a date-time (expected YYYY-MM-DD hh:mm:ss, ISO 8601 or unix seconds)")
    };
    let days = parse_ymd(b).ok_or_else(bad)?;
    let mut secs = days * SECS_PER_DAY;
    if b.len() == 10 {
        return Ok((secs, 0));
    }
    if !matches!(b[10], b' ' | b'T' | b't') {
        return Err(bad());
    }
    let h = digits_at(b, 11, 2).ok_or_else(bad)?;
    let mi = digits_at(b, 14, 2)
        .filter(|_| b[13] == b':')
        .ok_or_else(bad)?;
    let mut at = 16;
    let mut s = 0;
    if b.get(at) == Some(&b':') {
        s = digits_at(b, at + 1, 2).ok_or_else(bad)?;
        at += 3;
    }
    if h > 23 || mi > 59 || s > 59 {
        return Err(bad());
    }
    secs += i64::from(h * 3600 + mi * 60 + s);
    let mut nanos = 0u32;
    if matches!(b.get(at), Some(b'.' | b',')) {
        at += 1;
        let start = at;
        while let Some(c) = b.get(at).filter(|c| c.is_ascii_digit()) {
            if at - start < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad());
        }
        for _ in (at - start)..9 {
            nanos *= 10;
        }
    }
    match b.get(at) {
        None => {}
        Some(b'Z' | b'z') if at + 1 == b.len() => {}
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits_at(b, at + 1, 2).ok_or_else(bad)?;
            let rest = &b[at + 3..];
            let om = match rest {
                [] => 0,
                [b':', ..] if rest.len() == 3 => digits_at(rest, 1, 2).ok_or_else(bad)?,
                _ if rest.len() == 2 => digits_at(rest, 0, 2).ok_or_else(bad)?,
                _ => return Err(bad()),
            };
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let offset = i64::from(oh * 3600 + om * 60);
            secs += if sign == b'+' { -offset } else { offset };
        }
        Some(_) => return Err(bad()),
    }
    Ok((secs, nanos))
}

/// `[+-]digits[.digits]` unix seconds as ticks of 10^-precision seconds;
/// sub-tick digits are truncated.
fn parse_unix_ticks(b: &[u8], precision: u32) -> Res<i128> {
    let bad = || {
        Reason::fixed("not a date-time (expected YYYY-MM-DD hh:mm:ss, ISO 8601 or unix seconds)")
    };
    let (neg, rest) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let (whole, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &rest[..0]),
    };
    if whole.is_empty() || whole.len() > 18 || !whole.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let mut ticks: i128 = 0;
    for &c in whole {
        ticks = ticks * 10 + i128::from(c - b'0');
    }
    for i in 0..precision as usize {
        ticks = ticks * 10 + frac.get(i).map_or(0, |&c| i128::from(c - b'0'));
    }
    Ok(if neg { -ticks } else { ticks })
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

pub(crate) fn to_date(v: FieldValue<'_>) -> Res<u16> {
    let days: i128 = match v {
        FieldValue::Text(b) if looks_like_date(b) && b.len() == 10 => i128::from(
            parse_ymd(b)
                .ok_or_else(|| Reason::fixed("not a date (expected YYYY-MM-DD or a day number)"))?,
        ),
        FieldValue::Text(b) => match parse_int_text(b) {
            IntText::Ok(d) => d,
            IntText::Overflow => return Err(date_range()),
            IntText::Invalid => {
                return Err(Reason::fixed(
                    "not a date (expected YYYY-MM-DD or a day number)",
                ))
            }
        },
        FieldValue::Json(j) => json_int(j)?,
        FieldValue::Int(i) => i128::from(i),
        FieldValue::UnixMillis(ms) => i128::from(ms / (SECS_PER_DAY as u64 * 1000)),
    };
    if !(0..=MAX_DATE_DAYS).contains(&days) {
        return Err(date_range());
    }
    Ok(days as u16)
}

fn date_range() -> Reason {
    Reason::fixed("out of range for Date (1970-01-01 to 2149-06-06)")
}

pub(crate) fn to_datetime(v: FieldValue<'_>) -> Res<u32> {
    let secs: i128 = match v {
        FieldValue::Text(b) if looks_like_date(b) => i128::from(parse_datetime_text(b)?.0),
        FieldValue::Text(b) => parse_unix_ticks(b, 0)?,
        FieldValue::Json(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i128::from(i),
            (None, Some(u)) => i128::from(u),
            _ => integral(n.as_f64().unwrap_or(f64::NAN).floor()).ok_or_else(datetime_range)?,
        },
        FieldValue::Json(other) => return Err(unexpected_json(other, "a date-time")),
        FieldValue::Int(i) => i128::from(i),
        FieldValue::UnixMillis(ms) => i128::from(ms / 1000),
    };
    if !(0..=i128::from(u32::MAX)).contains(&secs) {
        return Err(datetime_range());
    }
    Ok(secs as u32)
}

fn datetime_range() -> Reason {
    Reason::fixed("out of range for DateTime (1970-01-01 00:00:00 to 2106-02-07 06:28:15 UTC)")
}

pub(crate) fn to_datetime64(v: FieldValue<'_>, precision: u32) -> Res<i64> {
    let scale = 10i128.pow(precision);
    let ticks: i128 = match v {
        FieldValue::Text(b) if looks_like_date(b) => {
            let (secs, nanos) = parse_datetime_text(b)?;
            i128::from(secs) * scale + i128::from(nanos) / 10i128.pow(9 - precision)
        }
        FieldValue::Text(b) => parse_unix_ticks(b, precision)?,
        FieldValue::Json(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i128::from(i).saturating_mul(scale),
            (None, Some(u)) => i128::from(u).saturating_mul(scale),
            _ => with_number_text(n, |t| parse_unix_ticks(t, precision))?,
        },
        FieldValue::Json(other) => return Err(unexpected_json(other, "a date-time")),
        FieldValue::Int(i) => i128::from(i) * scale,
        FieldValue::UnixMillis(ms) => {
            if precision >= 3 {
                i128::from(ms) * 10i128.pow(precision - 3)
            } else {
                i128::from(ms) / 10i128.pow(3 - precision)
            }
        }
    };
    if ticks < DT64_MIN_SECS * scale || ticks > (DT64_MAX_SECS + 1) * scale - 1 {
        return Err(Reason::fixed(
            "out of range for DateTime64 (1900-01-01 to 2299-12-31)",
        ));
    }
    Ok(ticks as i64)
}

// -------------------------------------------------------------------- UUID

/// A UUID as the 128-bit number its canonical text spells.
pub(crate) fn to_uuid(v: FieldValue<'_>) -> Res<u128> {
    let bad = || Reason::fixed("not a UUID (expected 8-4-4-4-12 hex digits)");
    let b = match v {
        FieldValue::Text(b) => b,
        FieldValue::Json(other) => return Err(unexpected_json(other, "a UUID string")),
        _ => return Err(bad()),
    };
    let dashed = match b.len() {
        36 => true,
        32 => false,
        _ => return Err(bad()),
    };
    let mut x: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if dashed && matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return Err(bad());
            }
            continue;
        }
        let nibble = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(bad()),
        };
        x = (x << 4) | u128::from(nibble);
    }
    Ok(x)
}

// -------------------------------------------------------------------- enum

/// An enum member's number, by name first, then by number.
pub(crate) fn to_enum(v: FieldValue<'_>, members: &[(String, i16)]) -> Res<i16> {
    let number = match v {
        FieldValue::Text(b) => {
            if let Some((_, n)) = members.iter().find(|(name, _)| name.as_bytes() == b) {
                return Ok(*n);
            }
            match parse_int_text(b) {
                IntText::Ok(n) => n,
                _ => return Err(not_a_member(members)),
            }
        }
        FieldValue::Json(j) => json_int(j)?,
        FieldValue::Int(i) => i128::from(i),
        FieldValue::UnixMillis(_) => return Err(not_a_member(members)),
    };
    members
        .iter()
        .find(|(_, n)| i128::from(*n) == number)
        .map(|(_, n)| *n)
        .ok_or_else(|| not_a_member(members))
}

fn not_a_member(members: &[(String, i16)]) -> Reason {
    let mut names: Vec<String> = members
        .iter()
        .take(10)
        .map(|(name, _)| format!("'{name}'"))
        .collect();
    if members.len() > 10 {
        names.push("…".to_owned());
    }
    format!(
        "not a member of the enum (expected one of {})",
        names.join(", ")
    )
    .into()
}

// ----------------------------------------------------------------- decimal

/// Most significant digits kept while parsing; more than any P ≤ 38 needs,
/// plus the rounding digit.
const MAX_DECIMAL_DIGITS: usize = 64;

/// Decimal text parsed exactly into an integer scaled by 10^scale.
pub(crate) fn parse_decimal(b: &[u8], precision: u32, scale: u32) -> Res<i128> {
    let bad = || Reason::fixed("not a decimal number");
    let (neg, rest) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let mut digits = [0u8; MAX_DECIMAL_DIGITS];
    let mut n = 0usize;
    // Position of the decimal point relative to the first significant digit.
    let mut point: i64 = 0;
    let mut seen_digit = false;
    let mut seen_point = false;
    let mut exponent: i64 = 0;
    let mut i = 0;
    while i < rest.len() {
        let c = rest[i];
        match c {
            b'0'..=b'9' => {
                seen_digit = true;
                let d = c - b'0';
                if n == 0 && d == 0 {
                    // Leading zeros carry no digits; after the point they shift it.
                    if seen_point {
                        point -= 1;
                    }
                } else {
                    if n < MAX_DECIMAL_DIGITS {
                        digits[n] = d;
                        n += 1;
                    } else if !seen_point {
                        return Err(decimal_too_big(precision, scale));
                    }
                    if !seen_point {
                        point += 1;
                    }
                }
            }
            b'.' if !seen_point => seen_point = true,
            b'e' | b'E' if seen_digit => {
                exponent = match parse_int_text(&rest[i + 1..]) {
                    IntText::Ok(e) if e.abs() <= 1000 => e as i64,
                    IntText::Ok(_) | IntText::Overflow => {
                        return Err(decimal_too_big(precision, scale))
                    }
                    IntText::Invalid => return Err(bad()),
                };
                break;
            }
            _ => return Err(bad()),
        }
        i += 1;
    }
    if !seen_digit {
        return Err(bad());
    }
    if n == 0 {
        return Ok(0);
    }
    let point = point + exponent;
    if point > i64::from(precision - scale) {
        return Err(decimal_too_big(precision, scale));
    }
    // Digits of the scaled integer: all integer digits plus `scale` more.
    let keep = point + i64::from(scale);
    if keep < 0 {
        return Ok(0);
    }
    let keep = keep as usize;
    let mut v: i128 = 0;
    for &d in digits[..n.min(keep)].iter() {
        v = v * 10 + i128::from(d);
    }
    // Integer digits beyond the significant ones are zeros.
    for _ in n.min(keep)..keep {
        v *= 10;
    }
    if keep < n && digits[keep] >= 5 {
        v += 1; // half away from zero: the sign is applied afterwards
    }
    if v >= 10i128.pow(precision) {
        return Err(decimal_too_big(precision, scale));
    }
    Ok(if neg { -v } else { v })
}

fn decimal_too_big(precision: u32, scale: u32) -> Reason {
    format!("too many integer digits for Decimal({precision}, {scale})").into()
}

pub(crate) fn to_decimal(v: FieldValue<'_>, precision: u32, scale: u32) -> Res<i128> {
    let from_int = |i: i128| {
        i.checked_mul(10i128.pow(scale))
            .filter(|v| v.abs() < 10i128.pow(precision))
            .ok_or_else(|| decimal_too_big(precision, scale))
    };
    match v {
        FieldValue::Text(b) => parse_decimal(b, precision, scale),
        FieldValue::Json(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => from_int(i128::from(i)),
            (None, Some(u)) => from_int(i128::from(u)),
            _ => with_number_text(n, |t| parse_decimal(t, precision, scale)),
        },
        FieldValue::Json(other) => Err(unexpected_json(other, "a number")),
        FieldValue::Int(i) => from_int(i128::from(i)),
        FieldValue::UnixMillis(_) => {
            Err(Reason::fixed("a timestamp cannot go into a Decimal column"))
        }
    }
}

// ----------------------------------------------------------------- strings

/// The bytes a `String`/`FixedString` column stores for a value; non-text
/// values are rendered into `scratch`.
#[inline]
pub(crate) fn to_bytes<'a>(v: FieldValue<'a>, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    match v {
        FieldValue::Text(b) => b,
        FieldValue::Json(Value::String(s)) => s.as_bytes(),
        FieldValue::Json(Value::Bool(true)) => b"true",
        FieldValue::Json(Value::Bool(false)) => b"false",
        FieldValue::Json(Value::Null) => b"",
        FieldValue::Json(j) => {
            scratch.clear();
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *scratch, j);
            scratch
        }
        FieldValue::Int(i) => {
            scratch.clear();
            scratch.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            scratch
        }
        FieldValue::UnixMillis(ms) => {
            scratch.clear();
            scratch.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
            scratch
        }
    }
}

// ------------------------------------------------------------------ arrays

/// Runs `each` on the elements of a value bound for an `Array(T)` column.
pub(crate) fn for_each_element(
    v: FieldValue<'_>,
    mut each: impl FnMut(&Value) -> Res<()>,
) -> Res<()> {
    let run = |items: &[Value], each: &mut dyn FnMut(&Value) -> Res<()>| {
        items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| each(item).map_err(|r| r.in_element(i)))
    };
    match v {
        FieldValue::Json(Value::Array(items)) => run(items, &mut each),
        FieldValue::Json(other) => Err(unexpected_json(other, "an array")),
        FieldValue::Text(b) => match serde_json::from_slice::<Value>(b) {
            Ok(Value::Array(items)) => run(&items, &mut each),
            _ => Err(Reason::fixed("expected a JSON array")),
        },
        _ => Err(Reason::fixed("expected a JSON array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
    }

    fn int(s: &str, lo: i128, hi: i128) -> Res<i128> {
        to_int(t(s), lo, hi, "T", false)
    }

    #[test]
    fn integers_from_text() {
        assert_eq!(int("123", 0, 255), Ok(123));
        assert_eq!(int("+7", -128, 127), Ok(7));
        assert_eq!(int("-128", -128, 127), Ok(-128));
        assert_eq!(
            to_int(t("300"), 0, 255, "UInt8", false).unwrap_err().0,
            "out of range for UInt8"
        );
        assert_eq!(int("-1", 0, 255).unwrap_err().0, "out of range for T");
        assert_eq!(
            int("99999999999999999999999", 0, 255).unwrap_err().0,
            "out of range for T"
        );
        assert_eq!(
            int("18446744073709551615", 0, u64::MAX.into()),
            Ok(u64::MAX.into())
        );
        assert_eq!(
            int("-9223372036854775808", i64::MIN.into(), i64::MAX.into()),
            Ok(i64::MIN.into())
        );
        for bad in ["", "-", "1.5", "1e3", " 1", "0x10", "true"] {
            assert_eq!(int(bad, 0, 255).unwrap_err().0, "not an integer", "{bad:?}");
        }
        assert_eq!(to_int(t("TRUE"), 0, 255, "UInt8", true), Ok(1));
        assert_eq!(to_int(t("false"), 0, 255, "UInt8", true), Ok(0));
    }

    #[test]
    fn integers_from_json_and_metadata() {
        let j = |v: Value| to_int(FieldValue::Json(&v), -128, 127, "Int8", false);
        assert_eq!(j(json!(5)), Ok(5));
        assert_eq!(j(json!(-5.0)), Ok(-5));
        assert_eq!(j(json!(5.5)).unwrap_err().0, "not an integer");
        assert_eq!(j(json!(true)), Ok(1));
        assert_eq!(j(json!(1000)).unwrap_err().0, "out of range for Int8");
        assert_eq!(
            j(json!([1])).unwrap_err().0,
            "expected a number, got an array"
        );
        let u64max = json!(u64::MAX);
        assert_eq!(
            to_int(
                FieldValue::Json(&u64max),
                0,
                u64::MAX.into(),
                "UInt64",
                false
            ),
            Ok(u64::MAX.into())
        );
        assert_eq!(
            to_int(FieldValue::Int(-3), -128, 127, "Int8", false),
            Ok(-3)
        );
        assert_eq!(
            to_int(
                FieldValue::UnixMillis(1_700_000_000_123),
                0,
                u64::MAX.into(),
                "UInt64",
                false
            ),
            Ok(1_700_000_000_123)
        );
    }

    #[test]
    fn floats() {
        assert_eq!(to_f64(t("1.5")), Ok(1.5));
        assert_eq!(to_f64(t("-2e3")), Ok(-2000.0));
        assert!(to_f64(t("nan")).unwrap().is_nan());
        assert!(to_f64(t("NaN")).unwrap().is_nan());
        assert_eq!(to_f64(t("inf")), Ok(f64::INFINITY));
        assert_eq!(to_f64(t("-Infinity")), Ok(f64::NEG_INFINITY));
        assert_eq!(to_f32(t("0.1")), Ok(0.1f32));
        assert_eq!(to_f64(FieldValue::Json(&json!(3))), Ok(3.0));
        assert_eq!(to_f64(FieldValue::Int(-4)), Ok(-4.0));
        assert!(to_f64(t("abc")).is_err());
        assert!(to_f64(t("")).is_err());
        assert!(to_f64(FieldValue::UnixMillis(1)).is_err());
    }

    #[test]
    fn bools() {
        for (s, b) in [
            ("true", true),
            ("FALSE", false),
            ("1", true),
            ("0", false),
            ("True", true),
        ] {
            assert_eq!(to_bool(t(s)), Ok(b));
        }
        assert!(to_bool(t("yes")).is_err());
        assert_eq!(to_bool(FieldValue::Json(&json!(false))), Ok(false));
        assert_eq!(to_bool(FieldValue::Json(&json!(1))), Ok(true));
        assert_eq!(to_bool(FieldValue::Int(0)), Ok(false));
        assert!(to_bool(FieldValue::Int(2)).is_err());
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2149, 6, 6), 65_535);
        assert_eq!(days_from_civil(1900, 1, 1), -25_567);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn dates() {
        assert_eq!(to_date(t("1970-01-02")), Ok(1));
        assert_eq!(to_date(t("2149-06-06")), Ok(65_535));
        assert_eq!(to_date(t("2024-02-29")), Ok(19_782));
        assert!(to_date(t("2023-02-29")).is_err());
        assert!(to_date(t("2024-13-01")).is_err());
        assert_eq!(to_date(t("2149-06-07")).unwrap_err(), date_range());
        assert_eq!(to_date(t("1969-12-31")).unwrap_err(), date_range());
        assert_eq!(to_date(t("19782")), Ok(19_782));
        assert_eq!(to_date(t("65536")).unwrap_err(), date_range());
        assert!(to_date(t("2024-01-01 00:00:00")).is_err());
        assert_eq!(to_date(FieldValue::Int(3)), Ok(3));
        assert_eq!(to_date(FieldValue::UnixMillis(86_400_000 * 2 + 5)), Ok(2));
        assert_eq!(to_date(FieldValue::Json(&json!(7))), Ok(7));
    }

    #[test]
    fn datetimes() {
        let want = 1_700_000_000u32; // 2023-11-14 22:13:20 UTC
        for s in [
            "2023-11-14 22:13:20",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:20.999Z",
            "2023-11-15T00:13:20+02:00",
            "2023-11-15T00:13:20+0200",
            "2023-11-14T20:13:20-02",
            "1700000000",
            "1700000000.9",
        ] {
            assert_eq!(to_datetime(t(s)), Ok(want), "{s}");
        }
        assert_eq!(to_datetime(t("2023-11-14")), Ok(1_699_920_000));
        assert_eq!(to_datetime(t("2023-11-14T22:13")), Ok(want - 20));
        for bad in [
            "2023-11-14 25:00:00",
            "2023-11-14X22:13:20",
            "2023-11-14 22:13:20 ",
            "abc",
            "",
            "2023-11-14T22:13:20+2",
        ] {
            assert!(to_datetime(t(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            to_datetime(t("1969-12-31 23:59:59")).unwrap_err(),
            datetime_range()
        );
        assert_eq!(to_datetime(t("2106-02-07 06:28:15")), Ok(u32::MAX));
        assert_eq!(
            to_datetime(t("2106-02-07 06:28:16")).unwrap_err(),
            datetime_range()
        );
        assert_eq!(to_datetime(t("-5")).unwrap_err(), datetime_range());
        assert_eq!(
            to_datetime(FieldValue::Json(&json!(1_700_000_000.7))),
            Ok(want)
        );
        assert_eq!(
            to_datetime(FieldValue::Json(&json!(1_700_000_000))),
            Ok(want)
        );
        assert_eq!(to_datetime(FieldValue::Int(1_700_000_000)), Ok(want));
        assert_eq!(
            to_datetime(FieldValue::UnixMillis(1_700_000_000_999)),
            Ok(want)
        );
    }

    #[test]
    fn datetime64() {
        let base = 1_700_000_000i64;
        assert_eq!(
            to_datetime64(t("2023-11-14 22:13:20.123456"), 3),
            Ok(base * 1000 + 123)
        );
        assert_eq!(
            to_datetime64(t("2023-11-14T22:13:20.1Z"), 6),
            Ok(base * 1_000_000 + 100_000)
        );
        assert_eq!(
            to_datetime64(t("2023-11-14T22:13:20.123456789"), 9),
            Ok(base * 1_000_000_000 + 123_456_789)
        );
        assert_eq!(to_datetime64(t("2023-11-14T22:13:20.5"), 0), Ok(base));
        assert_eq!(to_datetime64(t("1700000000.25"), 2), Ok(base * 100 + 25));
        assert_eq!(to_datetime64(t("1700000000"), 3), Ok(base * 1000));
        assert_eq!(to_datetime64(t("-1.5"), 3), Ok(-1500));
        assert_eq!(
            to_datetime64(t("1900-01-01 00:00:00"), 3),
            Ok(-2_208_988_800_000)
        );
        assert!(to_datetime64(t("1899-12-31 23:59:59"), 3).is_err());
        assert!(to_datetime64(t("2300-01-01 00:00:00"), 3).is_err());
        assert_eq!(
            to_datetime64(FieldValue::Json(&json!(1_700_000_000.125)), 3),
            Ok(base * 1000 + 125)
        );
        assert_eq!(
            to_datetime64(FieldValue::Json(&json!(1_700_000_000)), 1),
            Ok(base * 10)
        );
        assert_eq!(to_datetime64(FieldValue::Int(base), 3), Ok(base * 1000));
        assert_eq!(
            to_datetime64(FieldValue::UnixMillis(1_700_000_000_123), 3),
            Ok(base * 1000 + 123)
        );
        assert_eq!(
            to_datetime64(FieldValue::UnixMillis(1_700_000_000_123), 6),
            Ok(base * 1_000_000 + 123_000)
        );
        assert_eq!(
            to_datetime64(FieldValue::UnixMillis(1_700_000_000_123), 1),
            Ok(base * 10 + 1)
        );
    }

    #[test]
    fn uuids() {
        let want = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128;
        assert_eq!(to_uuid(t("00112233-4455-6677-8899-aabbccddeeff")), Ok(want));
        assert_eq!(to_uuid(t("00112233-4455-6677-8899-AABBCCDDEEFF")), Ok(want));
        assert_eq!(to_uuid(t("00112233445566778899aabbccddeeff")), Ok(want));
        assert!(to_uuid(t("00112233-4455-6677-8899-aabbccddeef")).is_err());
        assert!(to_uuid(t("0011223344-55-6677-8899-aabbccddeeff")).is_err());
        assert!(to_uuid(t("g0112233-4455-6677-8899-aabbccddeeff")).is_err());
        assert!(to_uuid(FieldValue::Int(1)).is_err());
    }

    #[test]
    fn enums() {
        let m = vec![
            ("a".to_owned(), 1),
            ("b'c".to_owned(), 2),
            ("5".to_owned(), -3),
        ];
        assert_eq!(to_enum(t("a"), &m), Ok(1));
        assert_eq!(to_enum(t("b'c"), &m), Ok(2));
        assert_eq!(to_enum(t("5"), &m), Ok(-3), "names win over numbers");
        assert_eq!(to_enum(t("2"), &m), Ok(2));
        assert_eq!(to_enum(t("-3"), &m), Ok(-3));
        assert_eq!(
            to_enum(t("z"), &m).unwrap_err().0,
            "not a member of the enum (expected one of 'a', 'b'c', '5')"
        );
        assert!(to_enum(t("7"), &m).is_err());
        assert_eq!(to_enum(FieldValue::Json(&json!(1)), &m), Ok(1));
        assert_eq!(to_enum(FieldValue::Int(2), &m), Ok(2));
    }

    #[test]
    fn decimals() {
        let d = |s: &str| parse_decimal(s.as_bytes(), 18, 4);
        assert_eq!(d("1.5"), Ok(15_000));
        assert_eq!(d("-1.5"), Ok(-15_000));
        assert_eq!(d("+0.0001"), Ok(1));
        assert_eq!(d("0.00005"), Ok(1), "half rounds away from zero");
        assert_eq!(d("-0.00005"), Ok(-1));
        assert_eq!(d("0.000049999"), Ok(0));
        assert_eq!(d("12345678901234.5678"), Ok(123_456_789_012_345_678));
        assert_eq!(
            d("99999999999999.99995").unwrap_err(),
            decimal_too_big(18, 4),
            "rounding carries over P"
        );
        assert_eq!(d("123456789012345").unwrap_err(), decimal_too_big(18, 4));
        assert_eq!(
            d("000000000000000000001.5"),
            Ok(15_000),
            "leading zeros are not digits"
        );
        assert_eq!(d("1.5e3"), Ok(15_000_000));
        assert_eq!(d("15E-5"), Ok(2));
        assert_eq!(d("5"), Ok(50_000));
        assert_eq!(d(".5"), Ok(5_000));
        assert_eq!(d("5."), Ok(50_000));
        assert_eq!(d("0"), Ok(0));
        assert_eq!(d("-0.0"), Ok(0));
        for bad in ["", ".", "-", "1.2.3", "abc", "1e", "nan", "inf", "1 "] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        let p38 = "9".repeat(38);
        assert_eq!(parse_decimal(p38.as_bytes(), 38, 0), Ok(10i128.pow(38) - 1));
        assert!(parse_decimal(format!("1{p38}").as_bytes(), 38, 0).is_err());
        assert_eq!(to_decimal(FieldValue::Json(&json!(1.25)), 9, 2), Ok(125));
        assert_eq!(to_decimal(FieldValue::Json(&json!(0.00001)), 9, 5), Ok(1));
        assert_eq!(to_decimal(FieldValue::Json(&json!(12)), 9, 2), Ok(1200));
        assert!(to_decimal(FieldValue::Json(&json!(12_345_678)), 9, 2).is_err());
        assert_eq!(to_decimal(FieldValue::Int(-3), 9, 2), Ok(-300));
    }

    #[test]
    fn strings() {
        let mut s = Vec::new();
        assert_eq!(to_bytes(t("\u{ff}x"), &mut s), "\u{ff}x".as_bytes());
        assert_eq!(to_bytes(FieldValue::Text(b"\xff\xfe"), &mut s), b"\xff\xfe");
        assert_eq!(
            to_bytes(FieldValue::Json(&json!({"a": [1, 2]})), &mut s),
            br#"{"a":[1,2]}"#
        );
        assert_eq!(to_bytes(FieldValue::Json(&json!(1.5)), &mut s), b"1.5");
        assert_eq!(to_bytes(FieldValue::Json(&json!("x\"y")), &mut s), b"x\"y");
        assert_eq!(to_bytes(FieldValue::Json(&json!(true)), &mut s), b"true");
        assert_eq!(to_bytes(FieldValue::Int(-12), &mut s), b"-12");
        assert_eq!(to_bytes(FieldValue::UnixMillis(17), &mut s), b"17");
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
    fn arrays() {
        let mut seen = Vec::new();
        for_each_element(t("[1, null, \"x\"]"), |v| {
            seen.push(v.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![json!(1), json!(null), json!("x")]);
        assert_eq!(
            for_each_element(t("{}"), |_| Ok(())).unwrap_err().0,
            "expected a JSON array"
        );
        assert_eq!(
            for_each_element(t(""), |_| Ok(())).unwrap_err().0,
            "expected a JSON array"
        );
        let err = for_each_element(FieldValue::Json(&json!([1, 2])), |v| {
            if v == &json!(2) {
                Err(Reason::fixed("bad"))
            } else {
                Ok(())
            }
        });
        assert_eq!(err.unwrap_err().0, "element 1: bad");
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
