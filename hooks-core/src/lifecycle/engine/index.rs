//! The index from a session key's hash to its slot: open addressing over 64-byte groups, each one cache
//! line holding seven `(hash tag, slot)` entries. A lookup reads its key's home group and, unless an
//! earlier insert overflowed it, nothing else; a general-purpose table keeps its control bytes and its
//! entries apart, which costs a second cache line (and, at 10^6 sessions, a second page) per lookup.
//!
//! Each group counts the entries that probed past it because it was full (its overflow count); a lookup
//! stops at the first group whose count is zero, and a removal undoes the counts its entry's insert
//! added. So nothing needs tombstones and a removal never leaves work behind.

/// Entries per group (the eighth word is the overflow count).
const WIDTH: usize = 7;

/// One cache line: seven entries, each `tag << 32 | (slot + 1)` (0 when empty: no tag is 0), and the
/// overflow count.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Group {
    entries: [u64; WIDTH],
    overflow: u64,
}

/// Open sessions' slots by the hash of their packed key.
#[derive(Default)]
pub(super) struct Index {
    groups: Vec<Group>,
    len: usize,
}

/// The high half of the hash, with its lowest bit set so that no tag is 0 and an empty entry (0) never
/// matches one.
fn tag(hash: u64) -> u64 {
    (hash >> 32) | 1
}

fn entry(hash: u64, slot: u32) -> u64 {
    tag(hash) << 32 | (u64::from(slot) + 1)
}

impl Index {
    fn home(&self, hash: u64) -> usize {
        // Fewer than 2^32 groups (see `remove`): the low half of the hash decides.
        hash as usize & (self.groups.len() - 1)
    }

    fn next(&self, g: usize) -> usize {
        (g + 1) & (self.groups.len() - 1)
    }

    /// The slot whose entry has `hash`'s tag and that `eq` accepts (it compares the full keys).
    #[inline(always)] // into `Engine::lookup`, with its key comparison: −48 instructions a replay record
    pub(super) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.groups.is_empty() {
            return None;
        }
        let tag = tag(hash);
        let mut g = self.home(hash);
        loop {
            let group = &self.groups[g];
            for &e in &group.entries {
                if e >> 32 == tag {
                    let slot = (e as u32).wrapping_sub(1);
                    if eq(slot) {
                        return Some(slot);
                    }
                }
            }
            if group.overflow == 0 {
                return None;
            }
            g = self.next(g);
        }
    }

    /// Adds `slot` under `hash` (no entry for the same key may exist); `rehash` gives an indexed slot's
    /// hash when the table grows.
    pub(super) fn insert(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        // Grow at a load of 7/8.
        if (self.len + 1) * 8 > self.groups.len() * WIDTH * 7 {
            self.grow(rehash);
        }
        self.len += 1;
        self.put(entry(hash, slot), hash);
    }

    fn put(&mut self, e: u64, hash: u64) {
        let mut g = self.home(hash);
        loop {
            let group = &mut self.groups[g];
            if let Some(free) = group.entries.iter_mut().find(|e| **e == 0) {
                *free = e;
                return;
            }
            group.overflow += 1;
            g = self.next(g);
        }
    }

    fn grow(&mut self, rehash: impl Fn(u32) -> u64) {
        let groups = (self.groups.len() * 2).max(4);
        let old = std::mem::replace(&mut self.groups, vec![Group::default(); groups]);
        for e in old.iter().flat_map(|g| g.entries).filter(|&e| e != 0) {
            let slot = (e as u32).wrapping_sub(1);
            let hash = rehash(slot);
            self.put(entry(hash, slot), hash);
        }
    }

    /// Removes `slot`'s entry, which was inserted under a hash whose low 32 bits are `hash`'s (only the
    /// home group matters, and a table of 2^32 groups would index more slots than a `u32` numbers: the
    /// slot alone tells its entry apart, as a slot is indexed at most once). Returns whether it was
    /// there.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        if self.groups.is_empty() {
            return false;
        }
        let want = u64::from(slot) + 1;
        let home = self.home(hash & u64::from(u32::MAX));
        let mut g = home;
        // Find it first, so that the overflow counts are only undone for an entry that is there.
        let (at, i) = loop {
            let group = &self.groups[g];
            if let Some(i) = group.entries.iter().position(|&x| x & u64::from(u32::MAX) == want) {
                break (g, i);
            }
            if group.overflow == 0 {
                return false;
            }
            g = self.next(g);
        };
        self.groups[at].entries[i] = 0;
        let mut g = home;
        while g != at {
            self.groups[g].overflow -= 1;
            g = self.next(g);
        }
        self.len -= 1;
        true
    }

    /// Reads the home group of `hash` (low 32 bits suffice, as for [`remove`](Self::remove)) and returns
    /// a word of it, so that a removal a few steps later finds it in cache: a prefetch in safe code.
    #[inline]
    pub(super) fn touch(&self, hash: u32) -> u64 {
        if self.groups.is_empty() {
            return 0;
        }
        self.groups[self.home(u64::from(hash))].overflow
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every indexed slot, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.iter().flat_map(|g| g.entries).filter(|&e| e != 0).map(|e| (e as u32).wrapping_sub(1))
    }

    /// Bytes held by the table.
    pub(super) fn allocation_size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Group>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poor hash (many equal tags and homes), so probing, overflow counts and tag collisions are
    /// all exercised.
    fn hash(slot: u32) -> u64 {
        let h = u64::from(slot % 37).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ u64::from(slot % 5)
    }

    #[test]
    fn finds_what_it_holds_after_inserts_and_removals() {
        let mut index = Index::default();
        let mut present = std::collections::BTreeSet::new();
        let mut x: u64 = 1;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = (x % 3_000) as u32;
            if present.contains(&slot) {
                assert!(index.remove(hash(slot), slot));
                present.remove(&slot);
            } else {
                index.insert(hash(slot), slot, hash);
                present.insert(slot);
            }
            assert_eq!(index.len(), present.len());
            if step % 997 == 0 {
                for s in 0..3_000 {
                    assert_eq!(index.find(hash(s), |f| f == s), present.contains(&s).then_some(s), "slot {s}");
                }
                let mut all: Vec<u32> = index.iter().collect();
                all.sort_unstable();
                assert!(all.iter().copied().eq(present.iter().copied()));
            }
        }
        assert!(!index.remove(hash(5_000), 5_000));
        // The low half of the hash is enough to remove (what a deadline-queue entry keeps).
        for s in present.clone() {
            assert!(index.remove(hash(s) & u64::from(u32::MAX), s));
        }
        assert!(index.is_empty());
        assert!(index.groups.iter().all(|g| g.overflow == 0 && g.entries == [0; WIDTH]));
    }
}
