//! Message lists handed back once used, for the next use: a read chunk's
//! once the batcher has taken its messages, a batch's once it is acked.
//!
//! A read chunk is 5,000 messages (840 KB), a full batch 50,000 (8 MiB).
//! With large blocks unmapped when freed ([`crate::memory`]), a new list
//! each time meant the kernel zeroing that many fresh pages, a visible
//! share of the worker's CPU; a list kept here keeps its pages.

use std::sync::Mutex;

use crate::redis::Message;

/// Empty lists with room, shared by the two ends of a pipeline.
pub(crate) struct MessageLists {
    kept: Mutex<Vec<Vec<Message>>>,
    /// Lists kept at most: about as many as the pipeline holds at once.
    keep: usize,
}

impl MessageLists {
    pub(crate) fn keeping(keep: usize) -> Self {
        MessageLists {
            kept: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// A kept list, or a new one with room for `capacity` messages.
    pub(crate) fn take(&self, capacity: usize) -> Vec<Message> {
        self.kept
            .lock()
            .expect("lists poisoned")
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Empties `list` and keeps it, unless enough are kept already.
    pub(crate) fn give_back(&self, mut list: Vec<Message>) {
        list.clear();
        let mut kept = self.kept.lock().expect("lists poisoned");
        if kept.len() < self.keep && list.capacity() > 0 {
            kept.push(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_given_back_is_taken_again_empty_with_its_room() {
        let lists = MessageLists::keeping(2);
        let mut list = lists.take(100);
        assert!(list.capacity() >= 100);
        list.push(Message {
            stream: "s".into(),
            id: "1-0".into(),
            fields: Default::default(),
            deliveries: 1,
        });
        let room = list.as_ptr();
        lists.give_back(list);
        let again = lists.take(10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), room, "the same allocation");
        for _ in 0..5 {
            lists.give_back(Vec::with_capacity(1));
        }
        assert_eq!(lists.kept.lock().unwrap().len(), 2);
    }
}
