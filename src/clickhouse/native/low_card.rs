//! `LowCardinality(T)` columns: one key per row into a per-block dictionary
//! ([`super::dictionary`]) of the values in their `T` layout, written as the
//! Native format's keys-with-additional-dictionary encoding.

use super::dictionary::Dict;
use super::leaf::Leaf;
use crate::clickhouse::convert::{self, FieldValue, Res};

/// A `LowCardinality(T)` column: a per-block dictionary of serialized
/// values and one key per row.
pub(super) struct LowCard {
    pub(super) leaf: Leaf,
    pub(super) nullable: bool,
    pub(super) stringy: bool,
    pub(super) dict: Dict,
    pub(super) keys: Vec<u32>,
    /// One value in serialized form, the dictionary's lookup key.
    pub(super) value: Vec<u8>,
    pub(super) mark_keys: usize,
    pub(super) mark_dict: usize,
}

/// `IndexesSerializationType::HasAdditionalKeysBit`: the dictionary travels
/// with the keys (Native format has no shared dictionary).
pub(super) const HAS_ADDITIONAL_KEYS: u64 = 1 << 9;

impl LowCard {
    pub(super) fn new(leaf: Leaf, nullable: bool, stringy: bool) -> LowCard {
        let mut placeholder = Vec::new();
        if nullable {
            // Key 0 of a nullable dictionary is NULL; its value is never read.
            let _ = leaf.encode(None, &mut placeholder, &mut Vec::new());
        }
        LowCard {
            leaf,
            nullable,
            stringy,
            dict: Dict::new(placeholder, nullable),
            keys: Vec::new(),
            value: Vec::new(),
            mark_keys: 0,
            mark_dict: 0,
        }
    }

    pub(super) fn push(&mut self, v: Option<FieldValue<'_>>, scratch: &mut Vec<u8>) -> Res<()> {
        if self.nullable && convert::is_null(v, self.stringy) {
            self.keys.push(0);
            return Ok(());
        }
        self.value.clear();
        self.leaf.encode(v, &mut self.value, scratch)?;
        let key = self.dict.get_or_insert(&self.value);
        self.keys.push(key);
        Ok(())
    }

    pub(super) fn write_data(&self, out: &mut Vec<u8>) {
        // An empty column (only empty arrays around it) writes nothing, as
        // the server's own serializer does.
        if self.keys.is_empty() {
            return;
        }
        let width = self.dict.key_width();
        let index_type = match width {
            1 => 0,
            2 => 1,
            _ => 2,
        };
        out.extend_from_slice(&(index_type | HAS_ADDITIONAL_KEYS).to_le_bytes());
        out.extend_from_slice(&(self.dict.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.dict.bytes);
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        match width {
            1 => out.extend(self.keys.iter().map(|&k| k as u8)),
            2 => self
                .keys
                .iter()
                .for_each(|&k| out.extend_from_slice(&(k as u16).to_le_bytes())),
            _ => self
                .keys
                .iter()
                .for_each(|&k| out.extend_from_slice(&k.to_le_bytes())),
        }
    }
}
