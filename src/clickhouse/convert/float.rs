//! `Float32` / `Float64` columns: Rust float syntax from text, any JSON
//! number, integers converted.

use serde_json::Value;

use super::{unexpected_json, FieldValue, Reason, Res};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
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
}
