//! `UUID` columns: the canonical dashed text or 32 hex digits, any case.

use super::{unexpected_json, FieldValue, Reason, Res};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
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
}
