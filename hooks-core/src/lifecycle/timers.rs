//! The deadline queue: `(due, session sequence number, slot)` entries, earliest first.
//!
//! Idle deadlines are almost always queued in order (a deadline is the clock plus a fixed idle timeout,
//! or the first sweep instant after that, and the clock never moves back), so the queue is a FIFO ring
//! with a binary min-heap beside it for the few entries that arrive out of order (re-queued deadlines
//! that fell behind newer ones, restored sessions). Queueing in order and taking the earliest are then
//! `O(1)` with sequential memory access; the heap costs `O(log n)` only for what it holds. The earliest
//! entry is the smaller of the two fronts.
//!
//! Entries are never removed from the middle. A session that closes, or whose deadline moves, leaves
//! its entry behind; the entry is recognised as stale when it reaches the front (its slot no longer holds
//! the session with that sequence number, which acts as the generation number, or the session's due time
//! moved later) and is dropped or re-queued then. No update does a lookup that could fail.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// One queued deadline. Ordered by due time, then sequence number (ties close in opening order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    /// When the close is due, in nanoseconds since the Unix epoch.
    pub(crate) due: i128,
    /// The session's sequence number: ties at one instant close in opening order, and a slot reused by
    /// a later session makes this entry stale.
    pub(crate) seq: u64,
    /// Where the session lives in the engine's slab.
    pub(crate) slot: u32,
    /// The low half of the hash of the session's key: enough to find its group in the engine's index
    /// (which has fewer than 2^32 groups) without reading and hashing the key. It fills what would be
    /// padding, so an entry stays 32 bytes.
    pub(crate) hash: u32,
}

const _: () = assert!(std::mem::size_of::<Timer>() == 32);

/// How far from the back of the ring an entry may be inserted to keep it sorted (a tie at one instant
/// between sessions whose deadlines were queued out of opening order) before it goes to the heap.
const TAIL_INSERT: usize = 8;

/// A min-queue of [`Timer`]s: a sorted FIFO ring for in-order entries, a heap for the rest.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Sorted ascending: every push keeps it so, or goes to `heap`.
    fifo: VecDeque<Timer>,
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(crate) fn push(&mut self, timer: Timer) {
        match self.fifo.back() {
            None => self.fifo.push_back(timer),
            Some(back) if *back <= timer => self.fifo.push_back(timer),
            Some(_) => {
                // Find the first of the last few entries that is greater; insert before it if the one
                // before that is not.
                let len = self.fifo.len();
                let lowest = len.saturating_sub(TAIL_INSERT);
                let mut at = len - 1;
                while at > lowest && self.fifo[at - 1] > timer {
                    at -= 1;
                }
                if at == 0 || self.fifo[at - 1] <= timer {
                    self.fifo.insert(at, timer);
                } else {
                    self.heap.push(Reverse(timer));
                }
            }
        }
    }

    /// Whether the earliest entry is the ring's front (rather than the heap's top).
    #[inline]
    fn fifo_first(&self) -> Option<bool> {
        match (self.fifo.front(), self.heap.peek()) {
            (Some(f), Some(Reverse(h))) => Some(f <= h),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<Timer> {
        match self.fifo_first()? {
            true => self.fifo.front().copied(),
            false => self.heap.peek().map(|r| r.0),
        }
    }

    // Always inlined: `run_until_due` takes one entry per expiry, and a call costs ~25 instructions
    // more than the pop.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<Timer> {
        match self.fifo_first()? {
            true => self.fifo.pop_front(),
            false => self.heap.pop().map(|r| r.0),
        }
    }

    /// Up to `n` of the ring's first entries, earliest first: fewer if it holds fewer, or if the ring's
    /// buffer wraps around within them (cheaper than a walk across the wrap, and good enough for a
    /// look-ahead).
    #[inline]
    pub(crate) fn ring_ahead(&self, n: usize) -> &[Timer] {
        let front = self.fifo.as_slices().0;
        &front[..front.len().min(n)]
    }

    pub(crate) fn len(&self) -> usize {
        self.fifo.len() + self.heap.len()
    }

    pub(crate) fn clear(&mut self) {
        self.fifo.clear();
        self.heap.clear();
    }

    /// Drops every entry `keep` rejects (used to shed stale entries in bulk, `O(n)`).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Timer) -> bool) {
        self.fifo.retain(&mut keep);
        self.heap.retain(|r| keep(&r.0));
    }

    /// Bytes held by the ring's and the heap's buffers.
    pub(crate) fn allocated_bytes(&self) -> usize {
        (self.fifo.capacity() + self.heap.capacity()) * std::mem::size_of::<Timer>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(t: &mut Timers) -> Vec<(i128, u64)> {
        std::iter::from_fn(|| t.pop()).map(|x| (x.due, x.seq)).collect()
    }

    #[test]
    fn pops_in_due_then_sequence_order() {
        let mut t = Timers::default();
        t.push(Timer { due: 5, seq: 2, slot: 0, hash: 0 });
        t.push(Timer { due: 5, seq: 1, slot: 1, hash: 0 });
        t.push(Timer { due: 3, seq: 9, slot: 2, hash: 0 });
        assert_eq!(drain(&mut t), [(3, 9), (5, 1), (5, 2)]);
    }

    #[test]
    fn out_of_order_pushes_merge_with_the_in_order_ones() {
        let mut t = Timers::default();
        let mut want = Vec::new();
        // In order, then a tie inserted near the back, then entries far behind the back (heap).
        for (due, seq) in [(10, 1), (20, 2), (30, 3), (30, 5), (30, 4), (15, 6), (5, 7), (40, 8), (25, 9)] {
            t.push(Timer { due, seq, slot: 0, hash: 0 });
            want.push((due, seq));
        }
        want.sort();
        assert_eq!(t.len(), want.len());
        assert_eq!(t.peek().map(|x| (x.due, x.seq)), Some(want[0]));
        assert_eq!(drain(&mut t), want);
    }

    #[test]
    fn matches_a_sorted_reference_under_mixed_pushes_and_pops() {
        let mut t = Timers::default();
        let mut reference: Vec<(i128, u64)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let due = i128::from(i / 3) + i128::from(x % 4) - if x.is_multiple_of(11) { 50 } else { 0 };
            if x.is_multiple_of(5) {
                reference.sort();
                let want = (!reference.is_empty()).then(|| reference.remove(0));
                assert_eq!(t.pop().map(|x| (x.due, x.seq)), want);
            } else {
                t.push(Timer { due, seq: i, slot: 0, hash: 0 });
                reference.push((due, i));
            }
        }
        reference.sort();
        assert_eq!(drain(&mut t), reference);
    }
}
