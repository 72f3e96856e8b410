//! The deadline queue: a binary min-heap of `(due, session sequence number, slot)`.
//!
//! Entries are never removed from the middle. A session that closes, or whose deadline moves, leaves
//! its entry behind; the entry is recognised as stale when it reaches the top (its slot no longer holds
//! the session with that sequence number, which acts as the generation number, or the session's due time
//! moved later) and is dropped or re-queued then. That keeps every update `O(log n)` or `O(1)` with no
//! lookup that could fail.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One queued deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    /// When the close is due, in nanoseconds since the Unix epoch.
    pub(crate) due: i128,
    /// The session's sequence number: ties at one instant close in opening order, and a slot reused by
    /// a later session makes this entry stale.
    pub(crate) seq: u64,
    /// Where the session lives in the engine's slab.
    pub(crate) slot: u32,
}

/// A min-heap of [`Timer`]s.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(crate) fn push(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    pub(crate) fn peek(&self) -> Option<Timer> {
        self.heap.peek().map(|r| r.0)
    }

    pub(crate) fn pop(&mut self) -> Option<Timer> {
        self.heap.pop().map(|r| r.0)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }

    /// Drops every entry `keep` rejects (used to shed stale entries in bulk, `O(n)`).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Timer) -> bool) {
        self.heap.retain(|r| keep(&r.0));
    }

    /// Bytes held by the heap's buffer.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<Reverse<Timer>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_due_then_sequence_order() {
        let mut t = Timers::default();
        t.push(Timer { due: 5, seq: 2, slot: 0 });
        t.push(Timer { due: 5, seq: 1, slot: 1 });
        t.push(Timer { due: 3, seq: 9, slot: 2 });
        let order: Vec<_> = std::iter::from_fn(|| t.pop()).map(|x| (x.due, x.seq)).collect();
        assert_eq!(order, [(3, 9), (5, 1), (5, 2)]);
    }
}
