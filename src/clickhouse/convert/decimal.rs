//! `Decimal(P, S)` columns: exact decimal text (never through a float),
//! rounded half away from zero past S fractional digits.

use serde_json::Value;

use super::int::{parse_int_text, IntText};
use super::{unexpected_json, with_number_text, FieldValue, Reason, Res};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
