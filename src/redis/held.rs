//! Which pending entries this process holds in memory: read or claimed, not
//! yet acked. The claim loop keeps these alive (resets their idle time) so
//! nobody takes them over while we work on them — and only these.
//!
//! An entry can be pending under our consumer name without our holding it:
//! when a connection is cut after Redis delivered an XREADGROUP or
//! XAUTOCLAIM reply but before we read it, the client retries the command
//! and the first reply's entries are never seen. Such an *orphan* must be
//! left to go idle, so that a claim pass (ours or another replica's) picks
//! it up again; refreshing it too would keep it pending for as long as the
//! process lives.
//!
//! Cheap enough for the read path: an XREADGROUP `>` reply delivers, per
//! stream, every entry between its first and last id (the group's
//! last-delivered id moves past all of them at once), so a read is recorded
//! as one id range, whatever its size. Claimed entries are not contiguous
//! and are recorded one by one (claims are the exception). Records are
//! forgotten lazily: one not seen pending for a few keep-alive passes has
//! been acked.
//!
//! A read range also keeps when its XREADGROUP was sent: no delivery of
//! its entries to us is older, which lets exactly-once skip its ownership
//! check for entries delivered too recently for anyone to have claimed
//! them ([`Held::delivered_since`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::redis::acks::same_stream;
use crate::redis::{parse_id, Message};

type Id = (u64, u64);

#[derive(Debug, Default)]
pub struct Held {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Completed keep-alive passes.
    pass: u64,
    streams: HashMap<Arc<str>, Stream>,
}

/// Each record carries the pass that last saw it (recorded, or one of its
/// entries listed as pending and idle).
#[derive(Debug, Default)]
struct Stream {
    /// Read ranges in the order read (ascending ids).
    ranges: Vec<ReadRange>,
    claimed: HashMap<Id, u64>,
    /// Claimed entries let go of because another batch owns them
    /// ([`Held::release`]), with the pass that released them: neither held
    /// nor orphans. Forgotten once claimed again or after a few passes.
    released: HashMap<Id, u64>,
}

/// The entries one XREADGROUP `>` reply delivered from one stream.
#[derive(Debug)]
struct ReadRange {
    /// First and last id, inclusive.
    from: Id,
    to: Id,
    /// The pass that last saw it.
    seen: u64,
    /// When the read was sent: before Redis delivered these entries.
    sent: Instant,
}

impl Stream {
    /// The read range holding `id`, if any.
    fn range_of(&mut self, id: Id) -> Option<&mut ReadRange> {
        // Ranges ascend; the last one not starting after `id` is the only
        // one that can hold it.
        let i = self.ranges.partition_point(|r| r.from <= id);
        i.checked_sub(1)
            .map(|i| &mut self.ranges[i])
            .filter(|r| id <= r.to)
    }

    /// Marks and reports whether `id` is held.
    fn see(&mut self, id: Id, pass: u64) -> bool {
        if let Some(seen) = self.claimed.get_mut(&id) {
            *seen = pass;
            return true;
        }
        match self.range_of(id) {
            Some(range) => {
                range.seen = pass;
                true
            }
            None => false,
        }
    }
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the entries of one XREADGROUP `>` reply, sent at `sent`.
    pub fn insert_read(&self, messages: &[Message], sent: Instant) {
        self.insert(messages, Some(sent));
    }

    /// Records entries claimed from other consumers (or ourselves).
    pub fn insert_claimed(&self, messages: &[Message]) {
        self.insert(messages, None);
    }

    /// `read`: the entries of one read, sent then; None: claimed entries.
    fn insert(&self, messages: &[Message], read: Option<Instant>) {
        let mut guard = self.lock();
        let Inner { pass, streams } = &mut *guard;
        let mut rest = messages;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|m| m.stream != first.stream)
                .unwrap_or(rest.len());
            let stream = streams.entry(first.stream.clone()).or_default();
            let ids = rest[..run].iter().filter_map(|m| parse_id(&m.id));
            if let Some(sent) = read {
                // A reply lists each stream's entries in id order.
                let (lo, hi) = (parse_id(&rest[0].id), parse_id(&rest[run - 1].id));
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    let (from, to) = (lo.min(hi), lo.max(hi));
                    let at = stream.ranges.partition_point(|r| r.from <= from);
                    let range = ReadRange {
                        from,
                        to,
                        seen: *pass,
                        sent,
                    };
                    stream.ranges.insert(at, range);
                }
            } else {
                for id in ids {
                    stream.released.remove(&id);
                    stream.claimed.insert(id, *pass);
                }
            }
            rest = &rest[run..];
        }
    }

    /// When the oldest read that delivered any of `messages` to us was
    /// sent: none of them was delivered to us earlier. None when one of
    /// them is not a recorded read's (claimed, or its record forgotten).
    pub fn delivered_since(&self, messages: &[Message]) -> Option<Instant> {
        let mut guard = self.lock();
        let mut oldest: Option<Instant> = None;
        // Consecutive members mostly share a stream and a read range.
        let mut last: Option<(&Arc<str>, Id, Id)> = None;
        for m in messages {
            let id = parse_id(&m.id)?;
            if let Some((stream, from, to)) = last {
                if same_stream(stream, &m.stream) && from <= id && id <= to {
                    continue;
                }
            }
            let range = guard.streams.get_mut(&m.stream)?.range_of(id)?;
            oldest = Some(oldest.map_or(range.sent, |o| o.min(range.sent)));
            last = Some((&m.stream, range.from, range.to));
        }
        oldest
    }

    /// Lets go of claimed entries of `stream` that another replica's batch
    /// owns: the keep-alive stops refreshing them, so they go idle and are
    /// claimed again once that batch is settled.
    pub fn release(&self, stream: &str, members: &[(Arc<str>, Bytes)]) {
        let mut guard = self.lock();
        let pass = guard.pass;
        let Some(s) = guard.streams.get_mut(stream) else {
            return;
        };
        for (member_stream, id) in members {
            if &**member_stream == stream {
                if let Some(id) = parse_id(id) {
                    if s.claimed.remove(&id).is_some() {
                        s.released.insert(id, pass);
                    }
                }
            }
        }
    }

    /// Splits `idle` (entries of `stream` pending under our consumer and
    /// idle past the keep-alive threshold) into those we hold — marked as
    /// seen — and orphans. Released entries are in neither.
    pub fn split(&self, stream: &str, idle: Vec<Bytes>) -> (Vec<Bytes>, Vec<Bytes>) {
        let mut guard = self.lock();
        let pass = guard.pass;
        let Some(s) = guard.streams.get_mut(stream) else {
            return (Vec::new(), idle);
        };
        let (mut held, mut orphans) = (Vec::with_capacity(idle.len()), Vec::new());
        for id in idle {
            match parse_id(&id) {
                Some(parsed) if s.see(parsed, pass) => held.push(id),
                Some(parsed) if s.released.contains_key(&parsed) => {}
                _ => orphans.push(id),
            }
        }
        (held, orphans)
    }

    /// Ends a keep-alive pass that listed every stream: forgets records not
    /// seen in the last `keep` passes. An entry we still hold is idle past
    /// the threshold again within `keep` passes (the caller picks `keep`
    /// so), and is then seen; a record not seen has been acked.
    pub fn end_pass(&self, keep: u64) {
        let mut guard = self.lock();
        guard.pass += 1;
        let oldest = guard.pass.saturating_sub(keep);
        for s in guard.streams.values_mut() {
            s.ranges.retain(|r| r.seen >= oldest);
            s.claimed.retain(|_, seen| *seen >= oldest);
            s.released.retain(|_, at| *at >= oldest);
        }
    }

    /// Records held now (read ranges and claimed entries), acked ones
    /// included until they are forgotten.
    pub fn len(&self) -> usize {
        self.lock()
            .streams
            .values()
            .map(|s| s.ranges.len() + s.claimed.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(stream: &Arc<str>, id: &str) -> Message {
        Message {
            stream: stream.clone(),
            id: Bytes::copy_from_slice(id.as_bytes()),
            fields: Default::default(),
            deliveries: 1,
        }
    }

    fn ids(list: &[&str]) -> Vec<Bytes> {
        list.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn reads_are_ranges_orphans_are_told_apart() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let held = Held::default();
        // One reply over two streams, then a later one; the reply between
        // them (5-0..6-0 on `a`) was lost.
        held.insert_read(
            &[
                msg(&a, "1-0"),
                msg(&a, "2-5"),
                msg(&a, "4-0"),
                msg(&b, "1-0"),
            ],
            Instant::now(),
        );
        held.insert_read(&[msg(&a, "7-0"), msg(&a, "9-0")], Instant::now());
        held.insert_claimed(&[msg(&a, "0-3")]);
        assert_eq!(held.len(), 4);
        let (ours, orphans) = held.split(
            "a",
            ids(&["0-3", "2-5", "3-9", "5-0", "6-0", "8-1", "10-0"]),
        );
        assert_eq!(ours, ids(&["0-3", "2-5", "3-9", "8-1"]));
        assert_eq!(orphans, ids(&["5-0", "6-0", "10-0"]));
        let (ours, orphans) = held.split("c", ids(&["1-0"]));
        assert!(ours.is_empty() && orphans.len() == 1);
    }

    #[test]
    fn delivered_since_is_the_oldest_read_holding_every_member() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let held = Held::default();
        let first = Instant::now();
        held.insert_read(&[msg(&a, "1-0"), msg(&a, "3-0"), msg(&b, "1-0")], first);
        let second = first + std::time::Duration::from_millis(5);
        held.insert_read(&[msg(&a, "5-0"), msg(&a, "6-0")], second);
        held.insert_claimed(&[msg(&a, "9-0")]);
        let since = |members: &[Message]| held.delivered_since(members);
        assert_eq!(since(&[msg(&a, "5-0"), msg(&a, "6-0")]), Some(second));
        assert_eq!(since(&[msg(&a, "5-0"), msg(&a, "2-0")]), Some(first));
        assert_eq!(since(&[msg(&b, "1-0"), msg(&a, "6-0")]), Some(first));
        // A claimed entry, one between two reads (a lost reply) and one of
        // a stream never read have no known delivery time.
        assert_eq!(since(&[msg(&a, "5-0"), msg(&a, "9-0")]), None);
        assert_eq!(since(&[msg(&a, "4-0")]), None);
        assert_eq!(since(&[msg(&b, "1-0"), msg(&Arc::from("c"), "1-0")]), None);
        // Nor has an entry whose read was forgotten (acked long ago).
        for _ in 0..3 {
            held.end_pass(2);
        }
        assert_eq!(since(&[msg(&a, "5-0")]), None);
    }

    #[test]
    fn records_not_seen_for_a_few_passes_are_forgotten() {
        let a: Arc<str> = Arc::from("a");
        let held = Held::default();
        held.insert_read(&[msg(&a, "1-0"), msg(&a, "2-0")], Instant::now());
        held.insert_read(&[msg(&a, "3-0")], Instant::now());
        held.insert_claimed(&[msg(&a, "0-1")]);
        // 1-0 keeps being listed (still pending); the rest were acked.
        for _ in 0..3 {
            held.end_pass(2);
            let (ours, _) = held.split("a", ids(&["1-0"]));
            assert_eq!(ours.len(), 1);
        }
        assert_eq!(held.len(), 1);
        for _ in 0..3 {
            held.end_pass(2);
        }
        assert!(held.is_empty());
    }

    #[test]
    fn released_claims_are_no_longer_refreshed() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let held = Held::default();
        held.insert_claimed(&[msg(&a, "1-0"), msg(&a, "2-0"), msg(&b, "1-0")]);
        let member = |s: &Arc<str>, id: &str| (s.clone(), Bytes::copy_from_slice(id.as_bytes()));
        // Another batch owns a:1-0 (and b:1-0, of another stream: untouched here).
        held.release("a", &[member(&a, "1-0"), member(&b, "1-0")]);
        let (ours, orphans) = held.split("a", ids(&["1-0", "2-0"]));
        assert_eq!(ours, ids(&["2-0"]));
        assert!(orphans.is_empty(), "a released entry is no orphan");
        let (ours, _) = held.split("b", ids(&["1-0"]));
        assert_eq!(ours, ids(&["1-0"]));
        // Forgotten after a few passes: then it would count as an orphan.
        for _ in 0..3 {
            held.end_pass(2);
        }
        let (_, orphans) = held.split("a", ids(&["1-0"]));
        assert_eq!(orphans, ids(&["1-0"]));
    }
}
