//! Payload fields: one field holding a JSON or MessagePack object whose keys
//! become columns.

use crate::config::PayloadFormat;

/// Decodes a payload into a JSON object, or says why it cannot.
pub(crate) fn decode(
    format: PayloadFormat,
    raw: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let value: serde_json::Value = match format {
        PayloadFormat::Json => {
            serde_json::from_slice(raw).map_err(|e| format!("invalid JSON: {e}"))?
        }
        PayloadFormat::Msgpack => {
            rmp_serde::from_slice(raw).map_err(|e| format!("invalid MessagePack: {e}"))?
        }
    };
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(format!(
            "payload must be an object, got {}",
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => unreachable!(),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_msgpack_objects_decode() {
        let j = decode(PayloadFormat::Json, br#"{"a":1,"b":"x"}"#).unwrap();
        assert_eq!(j["a"], 1);
        let mut buf = Vec::new();
        let mut m = std::collections::BTreeMap::new();
        m.insert("a", 7);
        rmp_serde::encode::write_named(&mut buf, &m).unwrap();
        let d = decode(PayloadFormat::Msgpack, &buf).unwrap();
        assert_eq!(d["a"], 7);
    }

    #[test]
    fn non_objects_are_refused_with_reason() {
        assert!(decode(PayloadFormat::Json, b"[1]")
            .unwrap_err()
            .contains("an array"));
        assert!(decode(PayloadFormat::Json, b"{")
            .unwrap_err()
            .contains("invalid JSON"));
        assert!(decode(PayloadFormat::Msgpack, b"\xc1")
            .unwrap_err()
            .contains("MessagePack"));
    }
}
