//! `String` / `FixedString` columns: the bytes a value stores; non-text
//! values rendered as their decimal or JSON text.

use serde_json::Value;

use super::FieldValue;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
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
}
