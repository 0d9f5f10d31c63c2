//! The deadline queue of one partition's absence episodes: (deadline,
//! slot) pairs, earliest first, as a calendar of buckets rather than a
//! heap.
//!
//! A heap of a few hundred thousand deadlines pays for every firing with a
//! sift-down through some seventeen levels, nearly each one a cache miss
//! once the heap outgrows the cache; in a running daemon, where episodes
//! fire as fast as they open, that was a twentieth of the engine's time.
//! Here a deadline goes into the bucket of the 2^[`SHIFT`] ms of event
//! time it falls in: a push appends to a `Vec` (nearly always the newest
//! bucket, since most deadlines are an event's time plus a fixed
//! `within`), and the earliest bucket is sorted once, when it comes to
//! the front, and then popped from its end. Memory is walked in order.
//!
//! The order is exactly a min-heap's on (deadline, slot): ties on the
//! deadline go to the lower slot (the property test below checks it
//! against `BinaryHeap`), so firings come out as they always have.

use std::collections::BTreeMap;

use crate::event::Millis;

/// Deadlines share a bucket when they fall in the same 2^14 ms (16.4 s) of
/// event time.
const SHIFT: u32 = 14;

type Entry = (Millis, u32);

fn bucket(deadline: Millis) -> i64 {
    // Arithmetic shift: floor division, so negative times order too.
    deadline >> SHIFT
}

#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    /// The earliest bucket's entries, sorted latest first (popped from the
    /// end), and the bucket they are from. Entries elsewhere are all in
    /// later buckets; a deadline pushed for this bucket or an earlier one
    /// is put in its place here.
    front: Vec<Entry>,
    front_bucket: Option<i64>,
    /// Later buckets, unsorted, except the newest.
    later: BTreeMap<i64, Vec<Entry>>,
    /// The newest bucket, kept out of the map: most pushes land here.
    tail: Option<(i64, Vec<Entry>)>,
    len: usize,
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
            // Latest first: before the first entry not later than this one.
            let i = self.front.partition_point(|e| *e > entry);
            self.front.insert(i, entry);
            return;
        }
        match &mut self.tail {
            Some((t, list)) if *t == b => list.push(entry),
            Some((t, _)) if *t > b => self.later.entry(b).or_default().push(entry),
            tail => {
                // A new newest bucket, sized as the last one ended up (with
                // an eighth more): buckets of a steady stream are alike, and
                // a `Vec` left to double would carry a third spare on average.
                let mut list = Vec::with_capacity(match tail {
                    Some((_, last)) => last.len() + last.len() / 8,
                    None => 0,
                });
                list.push(entry);
                if let Some((t, last)) = tail.replace((b, list)) {
                    self.later.insert(t, last);
                }
            }
        }
    }

    /// The earliest entry.
    pub(crate) fn peek(&mut self) -> Option<Entry> {
        if self.front.is_empty() {
            let (b, mut list) = match self.later.pop_first() {
                Some(first) => first,
                None => self.tail.take()?,
            };
            list.sort_unstable_by(|x, y| y.cmp(x));
            self.front = list;
            self.front_bucket = Some(b);
        }
        self.front.last().copied()
    }

    /// Takes the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        self.peek()?;
        self.len -= 1;
        self.front.pop()
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
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

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

    proptest! {
        /// Pops, peeks and lengths agree with a min-heap on (deadline,
        /// slot), whatever the order of pushes and pops.
        #[test]
        fn agrees_with_a_min_heap(ops in prop::collection::vec(op(), 1..400)) {
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
        }
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
