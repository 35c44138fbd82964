//! `Enum8` / `Enum16` columns: a member's name first, then its number.

use super::int::{json_int, parse_int_text, IntText};
use super::{FieldValue, Reason, Res};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> FieldValue<'_> {
        FieldValue::Text(s.as_bytes())
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
}
