//! The column tree: a scalar column, or `Nullable` / `Array` /
//! `LowCardinality` around one, each with its data in final layout and a
//! mark per row so that a failed row can be rolled back.

use super::leaf::Leaf;
use super::low_card::LowCard;
use crate::clickhouse::convert::{self, FieldValue, Res};
use crate::clickhouse::schema::ColumnType;

/// One column, or a nested stream of one, with its data in final layout.
/// `mark`s remember lengths at the start of the current row for rollback.
pub(super) enum Node {
    Leaf {
        leaf: Leaf,
        data: Vec<u8>,
        mark: usize,
    },
    Nullable {
        nulls: Vec<u8>,
        inner: Box<Node>,
        /// `""` is a value, not NULL (String, FixedString).
        stringy: bool,
        mark: usize,
    },
    Array {
        offsets: Vec<u64>,
        inner: Box<Node>,
        mark: usize,
    },
    LowCard(Box<LowCard>),
}

impl Node {
    pub(super) fn new(ty: &ColumnType) -> Node {
        match ty {
            ColumnType::Nullable(t) => Node::Nullable {
                nulls: Vec::new(),
                inner: Box::new(Node::new(t)),
                stringy: t.is_stringy(),
                mark: 0,
            },
            ColumnType::Array(t) => Node::Array {
                offsets: Vec::new(),
                inner: Box::new(Node::new(t)),
                mark: 0,
            },
            ColumnType::LowCardinality(t) => {
                let (inner, nullable) = match &**t {
                    ColumnType::Nullable(u) => (&**u, true),
                    other => (other, false),
                };
                match Leaf::new(inner) {
                    Some(leaf) => {
                        Node::LowCard(Box::new(LowCard::new(leaf, nullable, inner.is_stringy())))
                    }
                    // Parsing rejects LowCardinality of wrappers; the server
                    // will reject such a hand-built one.
                    None => Node::new(t),
                }
            }
            leaf => Node::Leaf {
                leaf: Leaf::new(leaf).unwrap_or(Leaf::String),
                data: Vec::new(),
                mark: 0,
            },
        }
    }

    /// Appends one (normalized) value.
    pub(super) fn push(&mut self, v: Option<FieldValue<'_>>, scratch: &mut Vec<u8>) -> Res<()> {
        match self {
            Node::Leaf { leaf, data, .. } => leaf.encode(v, data, scratch),
            Node::Nullable {
                nulls,
                inner,
                stringy,
                ..
            } => {
                if convert::is_null(v, *stringy) {
                    inner.push(None, scratch)?;
                    nulls.push(1);
                } else {
                    inner.push(v, scratch)?;
                    nulls.push(0);
                }
                Ok(())
            }
            Node::Array { offsets, inner, .. } => {
                let mut len = 0u64;
                if let Some(v) = v {
                    convert::for_each_element(v, |item| {
                        len += 1;
                        inner.push(convert::normalize(Some(FieldValue::Json(item))), scratch)
                    })?;
                }
                let end = offsets.last().copied().unwrap_or(0) + len;
                offsets.push(end);
                Ok(())
            }
            Node::LowCard(lc) => lc.push(v, scratch),
        }
    }

    pub(super) fn save(&mut self) {
        match self {
            Node::Leaf { data, mark, .. } => *mark = data.len(),
            Node::Nullable {
                nulls, inner, mark, ..
            } => {
                *mark = nulls.len();
                inner.save();
            }
            Node::Array {
                offsets,
                inner,
                mark,
            } => {
                *mark = offsets.len();
                inner.save();
            }
            Node::LowCard(lc) => {
                lc.mark_keys = lc.keys.len();
                lc.mark_dict = lc.dict.len();
            }
        }
    }

    /// Truncates back to the last `save`.
    pub(super) fn restore(&mut self) {
        match self {
            Node::Leaf { data, mark, .. } => data.truncate(*mark),
            Node::Nullable {
                nulls, inner, mark, ..
            } => {
                nulls.truncate(*mark);
                inner.restore();
            }
            Node::Array {
                offsets,
                inner,
                mark,
            } => {
                offsets.truncate(*mark);
                inner.restore();
            }
            Node::LowCard(lc) => {
                lc.keys.truncate(lc.mark_keys);
                lc.dict.truncate(lc.mark_dict);
            }
        }
    }

    pub(super) fn encoded_len(&self) -> usize {
        match self {
            Node::Leaf { data, .. } => data.len(),
            Node::Nullable { nulls, inner, .. } => nulls.len() + inner.encoded_len(),
            Node::Array { offsets, inner, .. } => offsets.len() * 8 + inner.encoded_len(),
            Node::LowCard(lc) => 32 + lc.dict.bytes.len() + lc.keys.len() * lc.dict.key_width(),
        }
    }

    /// Serialization-state prefixes, written before any data of the column.
    pub(super) fn write_prefix(&self, out: &mut Vec<u8>) {
        match self {
            Node::Leaf { .. } => {}
            Node::Nullable { inner, .. } | Node::Array { inner, .. } => inner.write_prefix(out),
            // KeysSerializationVersion::SharedDictionariesWithAdditionalKeys
            Node::LowCard(_) => out.extend_from_slice(&1u64.to_le_bytes()),
        }
    }

    pub(super) fn write_data(&self, out: &mut Vec<u8>) {
        match self {
            Node::Leaf { data, .. } => out.extend_from_slice(data),
            Node::Nullable { nulls, inner, .. } => {
                out.extend_from_slice(nulls);
                inner.write_data(out);
            }
            Node::Array { offsets, inner, .. } => {
                for o in offsets {
                    out.extend_from_slice(&o.to_le_bytes());
                }
                inner.write_data(out);
            }
            Node::LowCard(lc) => lc.write_data(out),
        }
    }

    pub(super) fn clear(&mut self) {
        match self {
            Node::Leaf { data, .. } => data.clear(),
            Node::Nullable { nulls, inner, .. } => {
                nulls.clear();
                inner.clear();
            }
            Node::Array { offsets, inner, .. } => {
                offsets.clear();
                inner.clear();
            }
            Node::LowCard(lc) => {
                lc.keys.clear();
                lc.dict.clear();
            }
        }
    }
}
