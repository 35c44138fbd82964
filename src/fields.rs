//! Flat objects → stream fields: the one set of rules for what a producer
//! may send through the HTTP entry or `sluice enqueue`, and the reasons
//! (item index, field) given when something is refused.
//!
//! A flat object maps field names to strings, numbers, booleans or null.
//! Numbers keep their JSON text exactly as sent (no digit lost, however
//! long), booleans become `true` / `false`, and a
//! null field is left out of the entry. Field names must be non-empty, at
//! most [`MAX_FIELD_NAME`] bytes, without control characters.
//!
//! Parsing borrows from the request body: unescaped strings become
//! `Bytes` slices of it, so a request costs about one allocation per item.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One entry's field/value pairs, in the producer's order.
pub type Fields = Vec<(Bytes, Bytes)>;

/// Field/value pairs in order, however they are held: a producer's
/// [`Fields`] or a read message's [`crate::redis::MessageFields`].
pub trait FieldPairs {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone;

    /// The value of the first field called `name`.
    fn value_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.pairs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

impl FieldPairs for [(Bytes, Bytes)] {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

impl FieldPairs for Fields {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.as_slice().pairs()
    }
}

/// Longest field name accepted.
pub(crate) const MAX_FIELD_NAME: usize = 256;
/// Most fields in one item (each XADD carries them all).
pub(crate) const MAX_FIELDS: usize = 1000;

/// Why a body, a line or an item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body must be a JSON array of objects, got {0}")]
    NotArray(&'static str),
    #[error("{count} items is more than the limit of {max}")]
    TooManyItems { count: usize, max: usize },
    #[error("item {index}: must be an object, got {kind}")]
    NotObject { index: usize, kind: &'static str },
    #[error("item {index}, field `{field}`: nested {kind} values are not allowed (string, number, bool or null only)")]
    Nested {
        index: usize,
        field: String,
        kind: &'static str,
    },
    #[error("item {index}: empty field name")]
    EmptyFieldName { index: usize },
    #[error("item {index}, field {field:?}: {why}")]
    BadFieldName {
        index: usize,
        field: String,
        why: &'static str,
    },
    #[error("item {index}: has no fields (an entry needs at least one non-null field)")]
    NoFields { index: usize },
    #[error("item {index}: more than {MAX_FIELDS} fields")]
    TooManyFields { index: usize },
}

impl Refusal {
    /// The item the refusal is about, if it is about one.
    pub(crate) fn index(&self) -> Option<usize> {
        match self {
            Refusal::NotObject { index, .. }
            | Refusal::Nested { index, .. }
            | Refusal::EmptyFieldName { index }
            | Refusal::BadFieldName { index, .. }
            | Refusal::NoFields { index }
            | Refusal::TooManyFields { index } => Some(*index),
            _ => None,
        }
    }

    /// The field the refusal is about, if it is about one.
    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            Refusal::Nested { field, .. } | Refusal::BadFieldName { field, .. } => Some(field),
            Refusal::EmptyFieldName { .. } => Some(""),
            _ => None,
        }
    }

    /// The same refusal about item `index` (for one object per line).
    #[cfg(test)]
    pub(crate) fn at(self, index: usize) -> Refusal {
        match self {
            Refusal::NotObject { kind, .. } => Refusal::NotObject { index, kind },
            Refusal::Nested { field, kind, .. } => Refusal::Nested { index, field, kind },
            Refusal::EmptyFieldName { .. } => Refusal::EmptyFieldName { index },
            Refusal::BadFieldName { field, why, .. } => Refusal::BadFieldName { index, field, why },
            Refusal::NoFields { .. } => Refusal::NoFields { index },
            Refusal::TooManyFields { .. } => Refusal::TooManyFields { index },
            other => other,
        }
    }
}

/// Checks a field name against the rules in the module docs.
pub(crate) fn check_field_name(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_FIELD_NAME {
        return Err("field name longer than 256 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("field name contains a control character");
    }
    Ok(())
}

/// Parses a JSON array of flat objects (the HTTP entry's body).
pub(crate) fn parse_items(body: &Bytes, max_items: usize) -> Result<Vec<Fields>, Refusal> {
    let raw: Top = serde_json::from_slice(body).map_err(|e| Refusal::NotJson(e.to_string()))?;
    let items = match raw {
        Top::Array(items) => items,
        Top::Other(kind) => return Err(Refusal::NotArray(kind)),
    };
    if items.len() > max_items {
        return Err(Refusal::TooManyItems {
            count: items.len(),
            max: max_items,
        });
    }
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        out.push(convert(body, index, item)?);
    }
    Ok(out)
}

/// Parses one flat object (a line of `sluice enqueue` input); refusals name item 0.
pub(crate) fn parse_object(line: &Bytes) -> Result<Fields, Refusal> {
    let item: RawItem =
        serde_json::from_slice(line).map_err(|e| Refusal::NotJson(e.to_string()))?;
    convert(line, 0, item)
}

/// Builds fields from already-split name/value text (CSV rows); empty
/// values are kept as empty strings.
pub(crate) fn from_pairs<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    index: usize,
) -> Result<Fields, Refusal> {
    let mut fields = Vec::new();
    for (name, value) in pairs {
        check_name(index, name)?;
        fields.push((
            Bytes::copy_from_slice(name.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    if fields.is_empty() {
        return Err(Refusal::NoFields { index });
    }
    Ok(fields)
}

fn check_name(index: usize, name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(Refusal::EmptyFieldName { index });
    }
    check_field_name(name).map_err(|why| Refusal::BadFieldName {
        index,
        field: name.to_string(),
        why,
    })
}

/// Text of `s`: a zero-copy slice of `body` when `s` points into it.
fn text(body: &Bytes, s: Cow<'_, str>) -> Bytes {
    match s {
        Cow::Borrowed(b) => {
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            let p = b.as_ptr() as usize;
            if p >= start && p + b.len() <= end {
                body.slice_ref(b.as_bytes())
            } else {
                Bytes::copy_from_slice(b.as_bytes())
            }
        }
        Cow::Owned(o) => Bytes::from(o),
    }
}

fn convert(body: &Bytes, index: usize, item: RawItem<'_>) -> Result<Fields, Refusal> {
    let pairs = match item {
        RawItem::Object(pairs) => pairs,
        RawItem::Other(kind) => return Err(Refusal::NotObject { index, kind }),
    };
    if pairs.len() > MAX_FIELDS {
        return Err(Refusal::TooManyFields { index });
    }
    let mut fields = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        check_name(index, &name)?;
        let value = match value {
            Flat::Str(s) => text(body, s),
            Flat::Static(s) => Bytes::from_static(s.as_bytes()),
            Flat::Null => continue,
            Flat::Nested(kind) => {
                return Err(Refusal::Nested {
                    index,
                    field: name.into_owned(),
                    kind,
                })
            }
        };
        fields.push((text(body, name), value));
    }
    if fields.is_empty() {
        return Err(Refusal::NoFields { index });
    }
    Ok(fields)
}

// ---- serde plumbing: borrow what can be borrowed, note what is refused ----

enum Top<'a> {
    Array(Vec<RawItem<'a>>),
    Other(&'static str),
}

enum RawItem<'a> {
    Object(Vec<(Cow<'a, str>, Flat<'a>)>),
    Other(&'static str),
}

enum Flat<'a> {
    Str(Cow<'a, str>),
    Static(&'static str),
    Null,
    Nested(&'static str),
}

/// A string that borrows from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Implements the visitor methods for non-container JSON values by
/// returning `$other(kind)`.
macro_rules! scalar_kinds {
    ($value:ty, $other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$value, E> {
            Ok($other("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<$value, E> {
            Ok($other("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<$value, E> {
            Ok($other("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<$value, E> {
            Ok($other("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<$value, E> {
            Ok($other("a string"))
        }
        fn visit_unit<E>(self) -> Result<$value, E> {
            Ok($other("null"))
        }
        fn visit_none<E>(self) -> Result<$value, E> {
            Ok($other("null"))
        }
    };
}

impl<'de> de::Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element::<RawItem<'de>>()? {
                    items.push(item);
                }
                Ok(Top::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Top::Other("an object"))
            }
            scalar_kinds!(Top<'de>, Top::Other);
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for RawItem<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawItem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawItem<'de>, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
                while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
                    let raw: &'de RawValue = map.next_value()?;
                    pairs.push((k, flat_of(raw).map_err(de::Error::custom)?));
                }
                Ok(RawItem::Object(pairs))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawItem<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawItem::Other("an array"))
            }
            scalar_kinds!(RawItem<'de>, RawItem::Other);
        }
        d.deserialize_any(V)
    }
}

/// A field's value from its raw JSON text. Numbers keep their text exactly
/// as sent (an integer past u64 or a long decimal loses no digit); strings
/// borrow from the input unless they have escapes.
fn flat_of<'de>(raw: &'de RawValue) -> Result<Flat<'de>, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') if !text.contains('\\') => Flat::Str(Cow::Borrowed(&text[1..text.len() - 1])),
        Some(b'"') => Flat::Str(Cow::Owned(serde_json::from_str::<String>(text)?)),
        Some(b'{') => Flat::Nested("object"),
        Some(b'[') => Flat::Nested("array"),
        Some(b't') => Flat::Static("true"),
        Some(b'f') => Flat::Static("false"),
        Some(b'n') => Flat::Null,
        _ => Flat::Str(Cow::Borrowed(text)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(json: &str) -> Result<Vec<Fields>, Refusal> {
        parse_items(&Bytes::copy_from_slice(json.as_bytes()), 100)
    }

    fn text_of(f: &Fields) -> Vec<(String, String)> {
        f.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn numbers_keep_every_digit_as_sent() {
        let got = items(
            r#"[{"big": 123456789012345678901234567890, "neg": -99999999999999999999, "dec": 0.1000000000000000055511151231257827, "exp": 1E+400, "z": 1.50}]"#,
        )
        .unwrap();
        assert_eq!(
            text_of(&got[0]),
            vec![
                ("big".into(), "123456789012345678901234567890".into()),
                ("neg".into(), "-99999999999999999999".into()),
                ("dec".into(), "0.1000000000000000055511151231257827".into()),
                ("exp".into(), "1E+400".into()),
                ("z".into(), "1.50".into()),
            ]
        );
    }

    #[test]
    fn flat_values_become_text_and_nulls_are_left_out() {
        let got = items(
            r#"[{"rec_id": 7, "task_for": "a", "ok": true, "x": -1.5, "gone": null, "esc": "a\"b"}]"#,
        )
        .unwrap();
        assert_eq!(
            text_of(&got[0]),
            vec![
                ("rec_id".into(), "7".into()),
                ("task_for".into(), "a".into()),
                ("ok".into(), "true".into()),
                ("x".into(), "-1.5".into()),
                ("esc".into(), "a\"b".into()),
            ]
        );
    }

    #[test]
    fn unescaped_strings_borrow_the_body() {
        let body = Bytes::from_static(br#"[{"k": "value"}]"#);
        let got = parse_items(&body, 10).unwrap();
        let v = &got[0][0].1;
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(v.as_ptr() as usize)));
    }

    #[test]
    fn refusals_name_item_and_field() {
        let e = items(r#"[{"a": 1}, {"a": 1, "data": {"x": 1}}]"#).unwrap_err();
        assert_eq!(e.index(), Some(1));
        assert_eq!(e.field(), Some("data"));
        assert!(e.to_string().contains("item 1, field `data`"), "{e}");
        let e = items(r#"[{"a": [1]}]"#).unwrap_err();
        assert!(matches!(e, Refusal::Nested { kind: "array", .. }), "{e}");
        let e = items(r#"[{"a": 1}, "x"]"#).unwrap_err();
        assert_eq!(
            e,
            Refusal::NotObject {
                index: 1,
                kind: "a string"
            }
        );
        let e = items(r#"[{"": 1}]"#).unwrap_err();
        assert_eq!(e, Refusal::EmptyFieldName { index: 0 });
        let e = items("[{\"a\\u0001\": 1}]").unwrap_err();
        assert!(matches!(e, Refusal::BadFieldName { index: 0, .. }), "{e}");
        let long = format!(r#"[{{"{}": 1}}]"#, "k".repeat(300));
        assert!(matches!(
            items(&long).unwrap_err(),
            Refusal::BadFieldName { .. }
        ));
        let e = items(r#"[{"a": null}]"#).unwrap_err();
        assert_eq!(e, Refusal::NoFields { index: 0 });
        let e = items(r#"[{}]"#).unwrap_err();
        assert_eq!(e, Refusal::NoFields { index: 0 });
    }

    #[test]
    fn body_level_refusals() {
        assert!(matches!(items("[{").unwrap_err(), Refusal::NotJson(_)));
        assert_eq!(
            items(r#"{"a": 1}"#).unwrap_err(),
            Refusal::NotArray("an object")
        );
        assert_eq!(items("3").unwrap_err(), Refusal::NotArray("a number"));
        let many = format!("[{}]", vec![r#"{"a":1}"#; 101].join(","));
        assert_eq!(
            items(&many).unwrap_err(),
            Refusal::TooManyItems {
                count: 101,
                max: 100
            }
        );
        assert!(items("[]").unwrap().is_empty());
    }

    #[test]
    fn single_objects_and_pairs() {
        let f = parse_object(&Bytes::from_static(br#"{"a": "b"}"#)).unwrap();
        assert_eq!(text_of(&f), vec![("a".into(), "b".into())]);
        let e = parse_object(&Bytes::from_static(b"[1]"))
            .unwrap_err()
            .at(41);
        assert_eq!(
            e,
            Refusal::NotObject {
                index: 41,
                kind: "an array"
            }
        );
        let f = from_pairs([("a", "1"), ("b", "")].into_iter(), 0).unwrap();
        assert_eq!(f.len(), 2);
        assert!(matches!(
            from_pairs([("", "1")].into_iter(), 3),
            Err(Refusal::EmptyFieldName { index: 3 })
        ));
    }
}
