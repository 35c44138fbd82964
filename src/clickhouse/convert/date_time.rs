//! `Date`, `DateTime` and `DateTime64(P)` columns: calendar text (naive
//! times read as UTC), ISO 8601 with offsets, or unix seconds; range-checked
//! against what each type can hold.

use serde_json::Value;

use super::int::{integral, json_int, parse_int_text, IntText};
use super::{unexpected_json, with_number_text, FieldValue, Reason, Res};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
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
}
