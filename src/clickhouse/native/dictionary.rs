//! The dictionary of a `LowCardinality` column ([`super::low_card`]): an
//! insert-only hash set of serialized values whose storage is the
//! serialized dictionary itself, so a block writes it with one copy.

/// Insert-only hash set of byte strings numbered in insertion order, stored
/// back to back in `bytes` — which is then the serialized dictionary as is.
/// Open addressing with linear probing; no allocation per lookup.
pub(super) struct Dict {
    pub(super) bytes: Vec<u8>,
    /// End offset in `bytes` of each entry.
    ends: Vec<usize>,
    /// Entry index + 1, or 0 for an empty slot; length is a power of two.
    slots: Vec<u32>,
    /// 64 − log2(slots.len()): a hash's top bits pick the slot.
    shift: u32,
    /// The NULL placeholder (entry 0 of a nullable dictionary), never looked up.
    placeholder: Option<Vec<u8>>,
}

impl Dict {
    pub(super) fn new(placeholder: Vec<u8>, nullable: bool) -> Dict {
        let mut d = Dict {
            bytes: Vec::new(),
            ends: Vec::new(),
            slots: vec![0; 64],
            shift: 64 - 6,
            placeholder: nullable.then_some(placeholder),
        };
        d.clear();
        d
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes per key in the smallest index type that holds every entry.
    pub(super) fn key_width(&self) -> usize {
        match self.len() {
            0..=0x100 => 1,
            0x101..=0x1_0000 => 2,
            _ => 4,
        }
    }

    fn entry(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    #[inline]
    fn hash(v: &[u8]) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = v.len() as u64;
        let mut chunks = v.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        h
    }

    #[inline]
    pub(super) fn get_or_insert(&mut self, v: &[u8]) -> u32 {
        if (self.ends.len() + 1) * 2 > self.slots.len() {
            self.rehash(self.slots.len() * 2);
        }
        let mask = self.slots.len() - 1;
        let mut i = (Self::hash(v) >> self.shift) as usize;
        loop {
            match self.slots[i] {
                0 => {
                    let key = self.ends.len() as u32;
                    self.bytes.extend_from_slice(v);
                    self.ends.push(self.bytes.len());
                    self.slots[i] = key + 1;
                    return key;
                }
                s if self.entry(s as usize - 1) == v => return s - 1,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Rebuilds the slot table with `size` slots from the entries.
    fn rehash(&mut self, size: usize) {
        self.slots.clear();
        self.slots.resize(size, 0);
        self.shift = 64 - size.trailing_zeros();
        let mask = size - 1;
        let first = usize::from(self.placeholder.is_some());
        for key in first..self.ends.len() {
            let mut i = (Self::hash(self.entry(key)) >> self.shift) as usize;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = key as u32 + 1;
        }
    }

    /// Drops entries from `len` on (a rolled-back row's new values).
    pub(super) fn truncate(&mut self, len: usize) {
        if len < self.ends.len() {
            self.ends.truncate(len);
            self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
            self.rehash(self.slots.len());
        }
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.slots.fill(0);
        if let Some(p) = &self.placeholder {
            self.bytes.extend_from_slice(p);
            self.ends.push(self.bytes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_rollback_rehashes() {
        let mut d = Dict::new(Vec::new(), false);
        for i in 0..100u32 {
            assert_eq!(d.get_or_insert(&i.to_le_bytes()), i);
        }
        d.truncate(50);
        assert_eq!(d.get_or_insert(&70u32.to_le_bytes()), 50);
        assert_eq!(d.get_or_insert(&10u32.to_le_bytes()), 10);
    }
}
