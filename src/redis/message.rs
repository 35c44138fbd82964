//! One stream entry as delivered ([`Message`]) and its field/value pairs
//! ([`MessageFields`]).
//!
//! The pairs are offsets into one shared buffer (the reply they arrived in)
//! rather than a `Bytes` per name and value: a seed-shaped message then
//! holds two reference counts instead of nine and no allocation of its own,
//! which was about a sixth of the worker's CPU (taking and dropping the
//! counts) and a third of a batch's memory (`cargo bench --bench e2e`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::fields::FieldPairs;

/// One stream entry as delivered to this consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub stream: Arc<str>,
    /// The entry id, e.g. `1700000000000-0`.
    pub id: Bytes,
    /// Field/value pairs in the order the producer wrote them.
    pub fields: MessageFields,
    /// Times delivered so far, this delivery included.
    pub deliveries: u64,
}

impl Message {
    /// The milliseconds part of the id: when the entry was added.
    pub fn id_millis(&self) -> Option<u64> {
        super::id_millis(&self.id)
    }

    /// The value of the first field called `name`.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields.value_of(name)
    }

    /// Rough in-memory size, for the batch byte limit.
    pub fn approx_size(&self) -> usize {
        self.id.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>()
    }
}

/// Where one pair lies in the buffer: name start and end, value start and
/// end. `u32` keeps four pairs inline in 64 bytes; a buffer past 4 GiB is
/// copied per message instead (see [`MessageFields::in_buffer`]).
#[derive(Clone, Copy)]
struct PairSpan([u32; 4]);

/// A message's field/value pairs, in order, as slices of one buffer.
#[derive(Clone, Default)]
pub struct MessageFields {
    buf: Bytes,
    spans: SmallVec<[PairSpan; 4]>,
}

impl MessageFields {
    /// Pairs lying in `buf` at `spans` (name range, value range), sharing
    /// it. Ranges must lie inside `buf`.
    pub(crate) fn in_buffer(
        buf: &Bytes,
        spans: impl ExactSizeIterator<Item = (Range<usize>, Range<usize>)>,
    ) -> Self {
        if buf.len() > u32::MAX as usize {
            return spans.map(|(k, v)| (&buf[k], &buf[v])).collect();
        }
        let spans = spans
            .map(|(k, v)| PairSpan([k.start, k.end, v.start, v.end].map(|x| x as u32)))
            .collect();
        MessageFields {
            buf: buf.clone(),
            spans,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn slice(&self, start: u32, end: u32) -> &[u8] {
        &self.buf[start as usize..end as usize]
    }

    /// The `i`th pair.
    pub fn pair(&self, i: usize) -> (&[u8], &[u8]) {
        let [ks, ke, vs, ve] = self.spans[i].0;
        (self.slice(ks, ke), self.slice(vs, ve))
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            fields: self,
            next: 0,
        }
    }

    /// The pairs as `Bytes` sharing the buffer (no copy), e.g. for XADD
    /// arguments.
    pub fn shared(&self) -> impl ExactSizeIterator<Item = (Bytes, Bytes)> + '_ {
        self.spans.iter().map(|PairSpan([ks, ke, vs, ve])| {
            (
                self.buf.slice(*ks as usize..*ke as usize),
                self.buf.slice(*vs as usize..*ve as usize),
            )
        })
    }

    /// The pairs as a list of `Bytes` (sharing the buffer).
    pub fn to_vec(&self) -> Vec<(Bytes, Bytes)> {
        self.shared().collect()
    }
}

impl FieldPairs for MessageFields {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.iter()
    }
}

/// The pairs of a [`MessageFields`], in order.
#[derive(Clone)]
pub struct Iter<'a> {
    fields: &'a MessageFields,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        (self.next < self.fields.len()).then(|| {
            self.next += 1;
            self.fields.pair(self.next - 1)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.fields.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a MessageFields {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Pairs copied into one buffer of their own.
impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for MessageFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let pairs: SmallVec<[(K, V); 4]> = pairs.into_iter().collect();
        let total: usize = pairs
            .iter()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
            .sum();
        let mut buf = BytesMut::with_capacity(total);
        let mut ranges: SmallVec<[(Range<usize>, Range<usize>); 4]> = SmallVec::new();
        for (k, v) in &pairs {
            let k_start = buf.len();
            buf.extend_from_slice(k.as_ref());
            let v_start = buf.len();
            buf.extend_from_slice(v.as_ref());
            ranges.push((k_start..v_start, v_start..buf.len()));
        }
        MessageFields::in_buffer(&buf.freeze(), ranges.into_iter())
    }
}

impl From<Vec<(Bytes, Bytes)>> for MessageFields {
    fn from(pairs: Vec<(Bytes, Bytes)>) -> Self {
        pairs.into_iter().collect()
    }
}

impl PartialEq for MessageFields {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for MessageFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_in_a_shared_buffer_read_back_in_order() {
        let reply = Bytes::from_static(b"xxnameAvalueAnameB");
        let f = MessageFields::in_buffer(&reply, [(2..7, 7..13), (13..18, 18..18)].into_iter());
        assert_eq!(f.len(), 2);
        assert_eq!(f.pair(0), (&b"nameA"[..], &b"valueA"[..]));
        assert_eq!(f.value_of(b"nameB"), Some(&b""[..]));
        assert_eq!(f.value_of(b"nope"), None);
        let shared = f.to_vec();
        assert_eq!(shared[0].1, "valueA");
        // Shared, not copied: the slices point into the reply.
        assert_eq!(shared[0].1.as_ptr(), reply[7..].as_ptr());
    }

    #[test]
    fn collected_pairs_equal_the_same_pairs_in_a_reply() {
        let copied: MessageFields = [("a", "1"), ("bb", "")].into_iter().collect();
        let reply = Bytes::from_static(b"a1bb");
        let shared = MessageFields::in_buffer(&reply, [(0..1, 1..2), (2..4, 4..4)].into_iter());
        assert_eq!(copied, shared);
        assert_eq!(format!("{copied:?}"), r#"[("a", "1"), ("bb", "")]"#);
        let other: MessageFields = [("a", "2")].into_iter().collect();
        assert_ne!(copied, other);
        assert!(MessageFields::default().is_empty());
    }

    #[test]
    fn a_message_holds_its_pairs_inline() {
        // Four pairs (the seed's jobs) need no allocation of their own.
        let f: MessageFields = (0..4).map(|i| (format!("k{i}"), "v")).collect();
        assert!(!f.spans.spilled());
        assert!(std::mem::size_of::<Message>() <= 176);
    }
}
