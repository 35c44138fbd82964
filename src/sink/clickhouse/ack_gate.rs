//! Acks across the shard parts of one batch (`shard_by`): a source message
//! is acked only once every part holding an output of it is done.
//!
//! A handler's outputs carry their source's stream and id, and the outputs
//! of one source can hash to different shards. Each shard's part lands (or
//! is refused) on its own schedule, and acking — or dead-lettering, which
//! acks too — a source when the first of its parts is done would drop the
//! outputs still pending on a down shard if the worker then stopped. The
//! gate holds such outputs back until the last part with the source is done.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;

/// A source message: (stream, entry id).
type Source = (Arc<str>, Bytes);

fn source(m: &Message) -> Source {
    (m.stream.clone(), m.id.clone())
}

/// The sources of `messages`.
pub(crate) fn sources(messages: &[Message]) -> HashSet<Source> {
    messages.iter().map(source).collect()
}

#[derive(Default)]
pub(crate) struct AckGate {
    /// Parts not yet done that hold an output of the source.
    open: HashMap<Source, usize>,
    held: Vec<Message>,
    held_dead: Vec<DeadLetter>,
}

impl AckGate {
    /// A gate for a batch split into `parts`.
    pub(crate) fn new<'a>(parts: impl IntoIterator<Item = &'a [Message]>) -> AckGate {
        let mut open: HashMap<Source, usize> = HashMap::new();
        for part in parts {
            for s in sources(part) {
                *open.entry(s).or_default() += 1;
            }
        }
        AckGate {
            open,
            ..AckGate::default()
        }
    }

    /// A part holding outputs of `done` is done with `landed` and `dead`
    /// (pass an empty `done` for outputs dead before any part ran). Returns
    /// the outputs that may be acked (and dead-lettered) now: those whose
    /// source no running part holds, including ones held back earlier.
    pub(crate) fn release(
        &mut self,
        done: &HashSet<Source>,
        landed: Vec<Message>,
        dead: Vec<DeadLetter>,
    ) -> (Vec<Message>, Vec<DeadLetter>) {
        for s in done {
            if let Some(n) = self.open.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.open.remove(s);
                }
            }
        }
        self.held.extend(landed);
        self.held_dead.extend(dead);
        let open = &self.open;
        let (ready, held): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|m| !open.contains_key(&source(m)));
        let (ready_dead, held_dead): (Vec<DeadLetter>, Vec<DeadLetter>) =
            std::mem::take(&mut self.held_dead)
                .into_iter()
                .partition(|d| !open.contains_key(&source(&d.message)));
        self.held = held;
        self.held_dead = held_dead;
        (ready, ready_dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: &str, n: u8) -> Message {
        Message {
            stream: Arc::from("s"),
            id: Bytes::from(id.to_string()),
            fields: vec![(Bytes::from_static(b"n"), Bytes::from(vec![n]))].into(),
            deliveries: 1,
        }
    }

    fn dead(m: Message) -> DeadLetter {
        DeadLetter {
            message: m,
            reason: "refused".into(),
            kind: "rejected",
        }
    }

    #[test]
    fn a_source_with_outputs_on_two_parts_waits_for_both() {
        // Source 1 has an output on each shard; source 2 only on shard A.
        let a = vec![out("1-0", 0), out("2-0", 1)];
        let b = vec![out("1-0", 2)];
        let mut gate = AckGate::new([a.as_slice(), b.as_slice()]);
        let (ready, ready_dead) = gate.release(&sources(&a), a.clone(), vec![]);
        assert_eq!(ready, vec![a[1].clone()], "source 1 waits for shard B");
        assert!(ready_dead.is_empty());
        let (ready, _) = gate.release(&sources(&b), b.clone(), vec![]);
        assert_eq!(ready, vec![a[0].clone(), b[0].clone()]);
    }

    #[test]
    fn dead_outputs_wait_for_their_sources_other_parts() {
        // Source 1: one output failed conversion, one refused on A, one on B.
        let a = vec![out("1-0", 0)];
        let b = vec![out("1-0", 1)];
        let mut gate = AckGate::new([a.as_slice(), b.as_slice()]);
        let (ready, ready_dead) = gate.release(&HashSet::new(), vec![], vec![dead(out("1-0", 9))]);
        assert!(ready.is_empty() && ready_dead.is_empty());
        let (ready, ready_dead) = gate.release(&sources(&a), vec![], vec![dead(a[0].clone())]);
        assert!(ready.is_empty() && ready_dead.is_empty());
        let (ready, ready_dead) = gate.release(&sources(&b), b.clone(), vec![]);
        assert_eq!(ready, b);
        assert_eq!(ready_dead.len(), 2);
        // A source in no part at all (every output dead) goes at once.
        let mut gate = AckGate::new([a.as_slice()]);
        let (_, ready_dead) = gate.release(&HashSet::new(), vec![], vec![dead(out("7-0", 0))]);
        assert_eq!(ready_dead.len(), 1);
    }
}
