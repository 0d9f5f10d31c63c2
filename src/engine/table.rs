//! A hash table of small values keyed by 128-bit key hashes, each entry in
//! one cache line, for state that millions of keys reach at random.
//!
//! `std`'s map (hashbrown) keeps its control bytes apart from its entries:
//! a look-up touches two cache lines in two places, and its address is not
//! known to the caller beforehand. Here the key sits in the entry's own
//! line, found by linear probing from its home slot, so a look-up touches
//! one line, or the next few after it, and
//! [`Table::prefetch`] can ask for that line while other work goes on: an
//! event's look-ups then wait for memory together rather than one by one.
//!
//! Where a key starts its probe is [`spread`] of it: the key's two words
//! mixed with a secret drawn once per process. The keys are
//! hashes of event fields (customer ids, order numbers, page paths) and
//! the hash is a fixed public function, so without the secret anyone who
//! can send events could search offline for keys that share their low
//! bits, and pile them into one probe chain: every look-up there would
//! then walk thousands of slots (a "hash flooding" attack). With it, which
//! keys share a home cannot be known outside the process. The keys
//! themselves, which the store keeps, do not change.
//!
//! The table grows (doubles) when an insert would fill more than three
//! quarters of it ([`MAX_LOAD`]), so its load stays between three eighths
//! and three quarters. At the fullest, a look-up of an absent key reads 8.5
//! slots on average and a present one 2.5 (1.8 and 1.3 at the emptiest);
//! the slots after a home are read in order, from the same page, which
//! the processor fetches ahead. Growing at one half instead takes half as
//! much memory again for the same keys: for the windows (a 64-byte line
//! each) that was 8% of the benchmark's peak resident set, and every byte
//! of it is new memory the kernel zeroes while the state grows. Removal
//! shifts the following entries back (no tombstones), so probes stay short
//! however many keys come and go.

/// One entry: its key and value, aligned as `A` says (see [`Line`]).
#[derive(Debug, Default, Clone)]
#[repr(C)]
struct Slot<V, A> {
    /// Takes no room; gives the slot `A`'s alignment.
    align: [A; 0],
    /// [0, 0] marks an empty slot; the key 0 itself lives in [`Table::zero`].
    /// Two words rather than a `u128`, so that small values make small
    /// slots (24 bytes with a `u32`) rather than 16-aligned ones.
    key: [u64; 2],
    value: V,
}

/// Aligns each slot to a cache line: for values of 33 to 48 bytes, whose
/// slot then fills exactly one line and never straddles two.
#[derive(Debug, Default, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct Line;

fn split(key: u128) -> [u64; 2] {
    [key as u64, (key >> 64) as u64]
}

fn join(key: [u64; 2]) -> u128 {
    (u128::from(key[1]) << 64) | u128::from(key[0])
}

const EMPTY: [u64; 2] = [0, 0];

/// The most of its slots a table fills before it doubles: (numerator,
/// denominator), three quarters.
const MAX_LOAD: (usize, usize) = (3, 4);

/// The secret [`spread`] mixes with: random, drawn on first use and the
/// same for the rest of the process (like std's `RandomState`).
pub(crate) fn process_seed() -> [u64; 2] {
    static SEED: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random)
}

/// Mixes a 128-bit key (two words) with `seed` into 64 bits whose every
/// bit, low ones included, depends on every bit of the key: each word is
/// masked with a secret word, and the two multiplied into 128 bits whose
/// halves are folded together; the result is folded once more with a
/// fixed odd constant. Two keys then share their low bits, and a home
/// slot, only by chance.
///
/// The second fold is needed: after one, keys whose two words agree in
/// their low bits (4,096 such keys, in the test
/// `key_maps_spread_keys_an_attacker_could_have_lined_up`) filled as few
/// as 1,081 of 4,096 buckets under some seeds, and under one seed in
/// twenty fewer than 2,300, where random keys fill about 2,590. The low
/// bits of one fold are then little more than a product of the keys' low
/// bits; the second brings the high bits down into them.
#[inline]
pub(crate) fn spread(key: [u64; 2], seed: [u64; 2]) -> u64 {
    let fold = |a: u64, b: u64| {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    };
    // 2^64 / φ, odd: the usual multiplicative-hashing constant.
    fold(
        fold(key[0] ^ seed[0], key[1] ^ seed[1]),
        0x9e37_79b9_7f4a_7c15,
    )
}

/// `A` is the slots' alignment: `u64` packs small values densely, [`Line`]
/// keeps each slot in one cache line.
#[derive(Debug, Clone)]
pub(crate) struct Table<V, A = u64> {
    slots: Vec<Slot<V, A>>,
    /// The value under key 0 (which marks empty slots in `slots`).
    zero: Option<V>,
    /// Entries in `slots` (not counting `zero`).
    len: usize,
    /// [`process_seed`], kept here so that a probe reads no shared state.
    seed: [u64; 2],
}

impl<V, A> Default for Table<V, A> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            zero: None,
            len: 0,
            seed: process_seed(),
        }
    }
}

impl<V: Default, A: Default> Table<V, A> {
    pub(crate) fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, key: [u64; 2]) -> usize {
        spread(key, self.seed) as usize & self.mask()
    }

    /// The slot holding `key`, or the empty slot where it would go.
    /// Requires a non-empty table and a key other than 0.
    fn probe(&self, key: u128) -> (usize, bool) {
        let key = split(key);
        let mask = self.mask();
        let mut at = self.home(key);
        loop {
            match self.slots[at].key {
                EMPTY => return (at, false),
                k if k == key => return (at, true),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Asks the processor for the line where `key`'s look-up starts, so
    /// that a look-up soon after finds it in cache. A hint only.
    #[inline]
    pub(crate) fn prefetch(&self, key: u128) {
        if self.slots.is_empty() {
            return;
        }
        let line = &self.slots[self.home(split(key))] as *const Slot<V, A>;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching has no effect on memory or on the program's
        // behaviour; the address is that of an element of `slots`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
    }

    pub(crate) fn get(&self, key: u128) -> Option<&V> {
        if key == 0 {
            return self.zero.as_ref();
        }
        if self.len == 0 {
            return None;
        }
        match self.probe(key) {
            (at, true) => Some(&self.slots[at].value),
            _ => None,
        }
    }

    /// The value under `key`, inserted as `V::default()` if absent.
    pub(crate) fn get_or_default(&mut self, key: u128) -> &mut V {
        self.entry(key).0
    }

    /// Sets `key`'s value, returning the one it replaces.
    pub(crate) fn insert(&mut self, key: u128, value: V) -> Option<V> {
        let (slot, found) = self.entry(key);
        let was = std::mem::replace(slot, value);
        found.then_some(was)
    }

    /// The value under `key` (`V::default()` if it was absent: false), in
    /// one probe.
    fn entry(&mut self, key: u128) -> (&mut V, bool) {
        if key == 0 {
            let found = self.zero.is_some();
            return (self.zero.get_or_insert_with(V::default), found);
        }
        if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            self.grow();
        }
        let (at, found) = self.probe(key);
        if !found {
            self.slots[at].key = split(key);
            self.len += 1;
        }
        (&mut self.slots[at].value, found)
    }

    pub(crate) fn remove(&mut self, key: u128) -> Option<V> {
        if key == 0 {
            return self.zero.take();
        }
        if self.len == 0 {
            return None;
        }
        let (at, true) = self.probe(key) else {
            return None;
        };
        let value = std::mem::take(&mut self.slots[at].value);
        self.vacate(at);
        Some(value)
    }

    /// Empties slot `hole` (its value already taken) and shifts back the
    /// entries after it that probed past it, so that no probe stops early.
    fn vacate(&mut self, mut hole: usize) {
        let mask = self.mask();
        self.slots[hole].key = EMPTY;
        self.len -= 1;
        let mut at = (hole + 1) & mask;
        while self.slots[at].key != EMPTY {
            let home = self.home(self.slots[at].key);
            // The entry may move to `hole` when `hole` lies on its probe
            // path: cyclically within [home, at).
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.slots.swap(hole, at);
                hole = at;
            }
            at = (at + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, Vec::with_capacity(size));
        self.slots.resize_with(size, Slot::default);
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| s.key != EMPTY) {
            let mut at = self.home(slot.key);
            while self.slots[at].key != EMPTY {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }

    /// Every (key, value), in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, &V)> + '_ {
        let zero = self.zero.as_ref().map(|v| (0, v));
        zero.into_iter().chain(
            self.slots
                .iter()
                .filter(|s| s.key != EMPTY)
                .map(|s| (join(s.key), &s.value)),
        )
    }

    /// Keeps the entries for which `keep` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u128, &mut V) -> bool) {
        if let Some(v) = self.zero.as_mut() {
            if !keep(0, v) {
                self.zero = None;
            }
        }
        // Removal shifts later entries back into the hole, possibly from
        // past the wrap: visit a slot again when something moved into it,
        // and start after an empty slot so that every entry is seen once.
        let Some(start) = self.slots.iter().position(|s| s.key == EMPTY) else {
            return;
        };
        let n = self.slots.len();
        let mut seen = 0;
        let mut at = (start + 1) % n;
        while seen < n {
            let key = self.slots[at].key;
            if key != EMPTY && !keep(join(key), &mut self.slots[at].value) {
                self.slots[at].value = V::default();
                self.vacate(at);
                // The slot may now hold an entry not yet visited.
                if self.slots[at].key != EMPTY {
                    continue;
                }
            }
            at = (at + 1) % n;
            seen += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u32),
        Bump(u128),
        Remove(u128),
        Retain(u32),
    }

    /// Keys from a small pool, and 0 among them. Under the all-zero seed
    /// (see [`behaves_as_a_map`]) a fifth of the pool's keys share the
    /// home slot 0 and the rest crowd few others, so probes collide and
    /// wrap whatever the process's secret is.
    fn key() -> impl Strategy<Value = u128> {
        prop_oneof![
            Just(0u128),
            (0u128..40).prop_map(|k| k << 64 | (k % 5)),
            any::<u128>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            key().prop_map(Op::Bump),
            key().prop_map(Op::Remove),
            (1u32..5).prop_map(Op::Retain),
        ]
    }

    /// Runs `ops` on a table and on a `HashMap`, checking they agree.
    fn agrees_with_a_map<A: Default>(ops: &[Op], seed: [u64; 2]) -> Result<(), TestCaseError> {
        let mut t: Table<u32, A> = Table {
            seed,
            ..Table::default()
        };
        let mut m: HashMap<u128, u32> = HashMap::new();
        for op in ops {
            match *op {
                Op::Insert(k, v) => prop_assert_eq!(t.insert(k, v), m.insert(k, v)),
                Op::Bump(k) => {
                    *t.get_or_default(k) += 1;
                    *m.entry(k).or_default() += 1;
                }
                Op::Remove(k) => prop_assert_eq!(t.remove(k), m.remove(&k)),
                Op::Retain(d) => {
                    let mut visits = HashMap::new();
                    t.retain(|k, v| {
                        *visits.entry(k).or_insert(0) += 1;
                        *v % d != 0
                    });
                    prop_assert!(
                        visits.values().all(|&n| n == 1),
                        "visited twice: {visits:?}"
                    );
                    prop_assert_eq!(visits.len(), m.len());
                    m.retain(|_, v| *v % d != 0);
                }
            }
            prop_assert_eq!(t.len(), m.len());
            for (k, v) in &m {
                prop_assert_eq!(t.get(*k), Some(v));
            }
            let mut all: Vec<_> = t.iter().map(|(k, v)| (k, *v)).collect();
            all.sort();
            let mut want: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
            want.sort();
            prop_assert_eq!(all, want);
        }
        Ok(())
    }

    proptest! {
        /// The table behaves as a `HashMap` under any sequence of
        /// operations, including keys that collide, wrap and are 0, in
        /// either slot layout, with the process's secret and with the
        /// all-zero one (under which [`spread`] is the product of the key's
        /// two words: many keys of the pool share a home).
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec(op(), 1..300)) {
            for seed in [process_seed(), [0, 0]] {
                agrees_with_a_map::<u64>(&ops, seed)?;
                agrees_with_a_map::<Line>(&ops, seed)?;
            }
        }
    }

    /// How far each entry sits from its home slot.
    fn displacements<V: Default, A: Default>(t: &Table<V, A>) -> Vec<usize> {
        let mask = t.mask();
        t.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.key != EMPTY)
            .map(|(at, s)| at.wrapping_sub(t.home(s.key)) & mask)
            .collect()
    }

    /// A flooding attack's keys: the low 32 bits of both words alike (0),
    /// so that a table homing keys by those bits (as this one did before
    /// [`spread`]) puts all 20,000 in one probe chain, 10,000 slots long
    /// on average. Mixed with the secret, they spread as random keys do.
    #[test]
    fn keys_sharing_their_low_bits_do_not_share_a_probe_chain() {
        let keys: Vec<u128> = (1..=20_000u128).map(|i| i << 96 | i << 32).collect();
        let mut t: Table<u32> = Table::default();
        for (i, &k) in keys.iter().enumerate() {
            t.insert(k, i as u32);
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(t.get(k), Some(&(i as u32)));
        }
        let d = displacements(&t);
        let max = d.iter().copied().max().unwrap_or(0);
        let mean = d.iter().sum::<usize>() as f64 / d.len() as f64;
        // Linear probing at a load of at most three quarters (20,000 keys
        // in 32,768 slots: 0.61): under one slot from home on average, a
        // few dozen at the worst.
        assert!(max < 100 && mean < 1.5, "max {max}, mean {mean:.2}");

        // And where they land depends on the secret: another one puts
        // nearly every key elsewhere.
        let other = [t.seed[0] ^ 0x9e37_79b9_7f4a_7c15, t.seed[1].wrapping_add(1)];
        let moved = keys
            .iter()
            .filter(|&&k| t.home(split(k)) != spread(split(k), other) as usize & t.mask())
            .count();
        assert!(
            moved > keys.len() * 9 / 10,
            "{moved} of {} moved",
            keys.len()
        );
    }

    #[test]
    fn slots_are_as_large_and_aligned_as_documented() {
        assert_eq!(std::mem::size_of::<Slot<[u64; 6], Line>>(), 64);
        assert_eq!(std::mem::align_of::<Slot<[u64; 6], Line>>(), 64);
        assert_eq!(std::mem::size_of::<Slot<u32, u64>>(), 24);
    }
}
