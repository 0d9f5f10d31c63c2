//! The deadline queue of one partition's absence episodes: (deadline,
//! slot) pairs, earliest first, as a calendar of buckets rather than a
//! heap.
//!
//! A heap of a few hundred thousand deadlines pays for every firing with a
//! sift-down through some seventeen levels, nearly each one a cache miss
//! once the heap outgrows the cache; in a running daemon, where episodes
//! fire as fast as they open, that was a twentieth of the engine's time.
//! Here a deadline goes into the bucket of the 2^[`SHIFT`] ms of event
//! time it falls in: a push appends to a `Vec` (found among the last few
//! buckets pushed to, since most deadlines are an event's time plus a
//! rule's fixed `within`), and the earliest bucket is sorted once, when
//! it comes to the front, and then popped from its start. Memory is
//! walked in order.
//!
//! A deadline for the front bucket or an earlier one that is not the
//! front's latest (a parcel whose promised time has already passed, say)
//! goes into a heap beside it, `early`, and a pop takes the lesser of the
//! two heads. It used to be inserted in its place in the sorted front,
//! shifting every entry on one side of it. That mattered most when the
//! front was far ahead: the earliest deadline at an engine's first look
//! becomes the front, and when that is a day or more out (a big basket's
//! follow-up, a parcel's promised time) every nearer deadline after it
//! belonged to the front too, each shifting the later ones (in the
//! benchmark's fresh engines, 2.4% of the time went to the queue). Now
//! when `early` outgrows the front (and [`DEMOTE_AT`]), the front goes
//! back among the later buckets with `early`'s entries, and the earliest
//! bucket comes to the front: the calendar again, rather than a heap of
//! every nearer deadline. The move handles fewer than twice as many
//! entries as were pushed into `early` since the last one, so it costs
//! those pushes a constant each.
//!
//! The order is exactly a min-heap's on (deadline, slot): ties on the
//! deadline go to the lower slot (the property test below checks it
//! against `BinaryHeap`), so firings come out as they always have.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::event::Millis;

/// Deadlines share a bucket when they fall in the same 2^14 ms (16.4 s) of
/// event time.
const SHIFT: u32 = 14;

type Entry = (Millis, u32);

fn bucket(deadline: Millis) -> i64 {
    // Arithmetic shift: floor division, so negative times order too.
    deadline >> SHIFT
}

/// How many recently pushed-to buckets [`Deadlines`] finds without a
/// look-up: deadlines come from a few horizons (each rule's `within`, a
/// field's date plus `grace`), each filling one bucket at a time.
const HOT: usize = 4;
/// How many entries `early` holds, at the least, before it and the front
/// go back among the later buckets (see the module's notes): a few late
/// deadlines wait in the heap rather than re-sort their bucket.
const DEMOTE_AT: usize = 64;
/// No bucket: a bucket number no deadline has (they are at least
/// `Millis::MIN >> SHIFT`).
const NONE: i64 = i64::MIN;

#[derive(Debug)]
pub(crate) struct Deadlines {
    /// The earliest bucket's entries, sorted, and the bucket they are
    /// from. Entries elsewhere are all in later buckets, or in `early`; a
    /// deadline pushed for this bucket or an earlier one joins the back
    /// when it is the latest yet (nearly always).
    front: VecDeque<Entry>,
    /// Deadlines pushed for the front bucket or an earlier one that were
    /// not the latest: a min-heap, merged with `front` as they are popped.
    early: BinaryHeap<Reverse<Entry>>,
    front_bucket: Option<i64>,
    /// The later buckets, by number: where each one's entries are in
    /// `lists` (unsorted). Lists no bucket uses are empty, and in `free`.
    later: BTreeMap<i64, u32>,
    lists: Vec<Vec<Entry>>,
    free: Vec<u32>,
    /// (bucket, list) of the later buckets pushed to last, latest first.
    hot: [(i64, u32); HOT],
    len: usize,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            front: VecDeque::new(),
            early: BinaryHeap::new(),
            front_bucket: None,
            later: BTreeMap::new(),
            lists: Vec::new(),
            free: Vec::new(),
            hot: [(NONE, 0); HOT],
            len: 0,
        }
    }
}

impl Deadlines {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, deadline: Millis, at: u32) {
        let entry = (deadline, at);
        let b = bucket(deadline);
        self.len += 1;
        if self.front_bucket.is_some_and(|f| b <= f) {
            // Mostly the latest yet: no search.
            match self.front.back() {
                Some(last) if *last > entry => {
                    self.early.push(Reverse(entry));
                    if self.early.len() > self.front.len().max(DEMOTE_AT) {
                        self.demote();
                    }
                }
                _ => self.front.push_back(entry),
            }
            return;
        }
        let list = match self.hot.iter().position(|&(h, _)| h == b) {
            Some(i) => {
                let list = self.hot[i].1;
                self.hot.copy_within(0..i, 1);
                list
            }
            None => {
                let list = match self.later.get(&b) {
                    Some(&list) => list,
                    None => self.open(b),
                };
                self.hot.copy_within(0..HOT - 1, 1);
                list
            }
        };
        self.hot[0] = (b, list);
        self.lists[list as usize].push(entry);
    }

    /// Puts the front's entries and `early`'s back among the later buckets:
    /// the next look brings the earliest bucket to the front.
    #[cold]
    fn demote(&mut self) {
        let front = std::mem::take(&mut self.front);
        let early = std::mem::take(&mut self.early);
        self.front_bucket = None;
        self.len -= front.len() + early.len();
        for (deadline, at) in front
            .into_iter()
            .chain(early.into_iter().map(|Reverse(e)| e))
        {
            self.push(deadline, at);
        }
    }

    /// A list for the new bucket `b`, sized as the bucket before it of the
    /// same horizon (the nearest earlier one among the hot) ended up, with
    /// an eighth more: buckets of a steady stream are alike, and a `Vec`
    /// left to double would carry a third spare on average.
    fn open(&mut self, b: i64) -> u32 {
        let size = self
            .hot
            .iter()
            .filter(|&&(h, _)| h != NONE && h < b)
            .max_by_key(|&&(h, _)| h)
            .map_or(0, |&(_, list)| {
                let n = self.lists[list as usize].len();
                n + n / 8
            });
        let list = match self.free.pop() {
            Some(list) => {
                self.lists[list as usize].reserve_exact(size);
                list
            }
            None => {
                self.lists.push(Vec::with_capacity(size));
                (self.lists.len() - 1) as u32
            }
        };
        self.later.insert(b, list);
        list
    }

    /// The earliest entry. (Asked for on nearly every event, per
    /// partition: inlined, the next bucket's loading apart.)
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<Entry> {
        self.head().map(|(entry, _)| entry)
    }

    /// The earliest entry, and whether it is `early`'s rather than
    /// `front`'s.
    #[inline]
    fn head(&mut self) -> Option<(Entry, bool)> {
        if let Some(&Reverse(e)) = self.early.peek() {
            // `early` holds only entries of the front bucket or before,
            // so it is never behind a later bucket's.
            return Some(match self.front.front() {
                Some(&f) if f < e => (f, false),
                _ => (e, true),
            });
        }
        if self.front.is_empty() {
            self.load_next()?;
        }
        self.front.front().map(|&f| (f, false))
    }

    /// Brings the earliest later bucket to the front, sorted; `None` when
    /// there is none.
    #[inline(never)]
    fn load_next(&mut self) -> Option<()> {
        let (b, list) = self.later.pop_first()?;
        let mut entries = std::mem::take(&mut self.lists[list as usize]);
        self.free.push(list);
        for h in &mut self.hot {
            if h.0 == b {
                *h = (NONE, 0);
            }
        }
        entries.sort_unstable();
        self.front = entries.into();
        self.front_bucket = Some(b);
        Some(())
    }

    /// Takes the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let (_, early) = self.head()?;
        self.len -= 1;
        if early {
            self.early.pop().map(|Reverse(e)| e)
        } else {
            self.front.pop_front()
        }
    }
}

impl FromIterator<Entry> for Deadlines {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        let mut d = Deadlines::default();
        for (deadline, at) in iter {
            d.push(deadline, at);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Millis, u32),
        Pop,
        Peek,
    }

    /// Deadlines near one another (several to a bucket, ties, negative
    /// times) and far apart (buckets between them left empty).
    fn deadline() -> impl Strategy<Value = Millis> {
        prop_oneof![
            -40_000i64..200_000,
            (0i64..20).prop_map(|k| k << SHIFT),
            any::<i64>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (deadline(), 0u32..50).prop_map(|(d, at)| Op::Push(d, at)),
            2 => Just(Op::Pop),
            1 => Just(Op::Peek),
        ]
    }

    /// Runs `ops` on a `Deadlines` and on a min-heap on (deadline, slot),
    /// and checks that every pop, peek and length agrees, then drains both.
    fn agrees(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut d = Deadlines::default();
        let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
        for op in ops {
            match op {
                Op::Push(deadline, at) => {
                    d.push(deadline, at);
                    heap.push(Reverse((deadline, at)));
                }
                Op::Pop => prop_assert_eq!(d.pop(), heap.pop().map(|Reverse(e)| e)),
                Op::Peek => prop_assert_eq!(d.peek(), heap.peek().map(|Reverse(e)| *e)),
            }
            prop_assert_eq!(d.len(), heap.len());
        }
        while let Some(Reverse(e)) = heap.pop() {
            prop_assert_eq!(d.pop(), Some(e));
        }
        prop_assert_eq!(d.pop(), None);
        Ok(())
    }

    proptest! {
        /// Pops, peeks and lengths agree with a min-heap on (deadline,
        /// slot), whatever the order of pushes and pops.
        #[test]
        fn agrees_with_a_min_heap(ops in prop::collection::vec(op(), 1..400)) {
            agrees(ops)?;
        }

        /// The same when a far deadline comes first and hundreds of nearer
        /// ones follow, out of order, with pops between: `early` fills,
        /// and the front goes back among the later buckets, many times.
        #[test]
        fn agrees_with_a_min_heap_after_a_far_front(
            near in prop::collection::vec(
                prop_oneof![
                    8 => (0i64..(4 << SHIFT), 0u32..50).prop_map(|(d, at)| Op::Push(d, at)),
                    1 => Just(Op::Pop),
                    1 => Just(Op::Peek),
                ],
                1..1500,
            ),
        ) {
            let mut ops = vec![Op::Push(1 << 40, 7), Op::Peek];
            ops.extend(near);
            agrees(ops)?;
        }
    }

    /// A far deadline first, then nearer ones: once `early` outgrows the
    /// front, the front goes back and the nearest bucket takes its place.
    #[test]
    fn a_far_front_gives_way_to_the_nearest_bucket() {
        let mut d = Deadlines::default();
        d.push(1 << 40, 0);
        assert_eq!(d.peek(), Some((1 << 40, 0)));
        let near: Vec<Entry> = (0..=DEMOTE_AT as i64).rev().map(|i| (i * 10, 1)).collect();
        for &(deadline, at) in &near {
            d.push(deadline, at);
        }
        assert!(d.early.is_empty() && d.front.is_empty(), "demoted");
        assert_eq!(d.peek(), Some((0, 1)));
        assert_eq!(d.front_bucket, Some(0));
        let mut want = near;
        want.sort_unstable();
        want.push((1 << 40, 0));
        let all: Vec<Entry> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(all, want);
    }

    /// Deadlines pushed into the front bucket out of order (each earlier
    /// than the last, some before the bucket itself) wait in `early` and
    /// still come out first, merged with the front's.
    #[test]
    fn out_of_order_deadlines_in_the_front_bucket_merge_in_order() {
        let mut d: Deadlines = [(100, 0), (200, 0), (1 << 20, 0)].into_iter().collect();
        assert_eq!(d.pop(), Some((100, 0)));
        for (deadline, at) in [(150, 3), (-5, 1), (150, 2), (300, 4), (250, 5)] {
            d.push(deadline, at);
        }
        assert_eq!(d.early.len(), 4, "all but the latest wait in `early`");
        let all: Vec<Entry> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(
            all,
            vec![
                (-5, 1),
                (150, 2),
                (150, 3),
                (200, 0),
                (250, 5),
                (300, 4),
                (1 << 20, 0)
            ]
        );
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn collects_and_drains_in_order() {
        let d: Deadlines = [(5 << SHIFT, 1), (3, 2), (3, 1), (-7, 9), (1 << 40, 0)]
            .into_iter()
            .collect();
        let mut d = d;
        let all: Vec<Entry> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(
            all,
            vec![(-7, 9), (3, 1), (3, 2), (5 << SHIFT, 1), (1 << 40, 0)]
        );
    }
}
