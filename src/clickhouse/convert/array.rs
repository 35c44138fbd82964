//! `Array(T)` columns: the elements of a JSON array, each converted to `T`
//! by the JSON rules.

use serde_json::Value;

use super::{unexpected_json, FieldValue, Reason, Res};

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
}
