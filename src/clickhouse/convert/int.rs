//! Integral columns: `Int*`, `UInt*` (range-checked; `UInt8` also takes
//! `true`/`false`) and `Bool`. The integer text parser is shared by the
//! date, enum and decimal rules.

use serde_json::Value;

use super::{unexpected_json, FieldValue, Reason, Res};

pub(super) enum IntText {
    Ok(i128),
    Overflow,
    Invalid,
}

/// Parses `[+-]digits` straight from bytes, without UTF-8 validation.
#[inline]
pub(super) fn parse_int_text(b: &[u8]) -> IntText {
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
pub(super) fn integral(f: f64) -> Option<i128> {
    // 2^126 keeps the cast exact and far above every target range.
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 8.5e37).then_some(f as i128)
}

pub(super) fn json_int(v: &Value) -> Res<i128> {
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

pub(super) fn out_of_range(ty: &str) -> Reason {
    format!("out of range for {ty}").into()
}

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
}
