//! The engine's state as rows for the durable store, and back.
//!
//! The engine stays pure: it never touches the store. With
//! [`EngineConfig::durable`](super::EngineConfig) on, every state structure
//! (episodes, fired-awaiting-delivery, threshold windows, ledgers) notes
//! the keys it changes in a [`Journal`]. [`Engine::take_changes`] turns the
//! noted keys into [`Write`]s (the current value, or a delete), coalesced:
//! a window touched a thousand times in a batch is written once. The caller
//! commits them in the same store transaction as the batch's outbox entries
//! and consumer positions, so state and positions never disagree.
//! [`Engine::restore`] rebuilds a partition from the rows the store holds.
//!
//! Every key starts with the partition (4 bytes, big-endian), so one
//! partition's state is one key range and can move with its partition.
//! Values are a small fixed binary layout, versioned by the table name.
//!
//! [`Engine::take_changes`]: super::Engine::take_changes
//! [`Engine::restore`]: super::Engine::restore

use std::collections::HashSet;
use std::hash::Hash;

use super::PartitionId;
use crate::event::Millis;

/// The store tables holding engine state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateTable {
    /// Per partition: watermark inputs (highest event time, idle floor).
    Partitions,
    /// Open absence episodes: key, start, deadline → rule, stored trigger.
    Episodes,
    /// Fired absence episodes whose notification is not yet settled (the
    /// send-time guard): notification id → key, start, rule, trigger.
    Fired,
    /// Threshold windows: key → until, event times.
    Windows,
    /// Cooldown and once_per entries: key → until.
    Ledger,
}

impl StateTable {
    pub const ALL: [StateTable; 5] = [
        StateTable::Partitions,
        StateTable::Episodes,
        StateTable::Fired,
        StateTable::Windows,
        StateTable::Ledger,
    ];

    /// A short name, for figures and logs.
    pub fn name(self) -> &'static str {
        match self {
            StateTable::Partitions => "partitions",
            StateTable::Episodes => "episodes",
            StateTable::Fired => "fired",
            StateTable::Windows => "windows",
            StateTable::Ledger => "ledger",
        }
    }

    /// The table's tag in stored rows (never reuse a number).
    pub fn id(self) -> u8 {
        match self {
            StateTable::Partitions => 1,
            StateTable::Episodes => 2,
            StateTable::Fired => 3,
            StateTable::Windows => 4,
            StateTable::Ledger => 5,
        }
    }

    pub fn from_id(id: u8) -> Option<StateTable> {
        StateTable::ALL.into_iter().find(|t| t.id() == id)
    }
}

/// One row to put (`Some`) or delete (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub table: StateTable,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Write {
    /// The row a put leaves in the store, as a restore reads it back
    /// (`None` for a delete).
    pub fn into_row(self) -> Option<Row> {
        Some(Row {
            table: self.table,
            key: self.key,
            value: self.value?,
        })
    }
}

/// One stored row, as [`Engine::restore`](super::Engine::restore) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub table: StateTable,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What a restore found, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub episodes: usize,
    pub fired: usize,
    pub windows: usize,
    pub ledger: usize,
    /// Rows dropped: their rule is gone, disabled or of another kind now,
    /// their notification is settled, or they could not be read. Their
    /// deletion is part of the next [`Engine::take_changes`](super::Engine::take_changes).
    pub dropped: usize,
}

/// The keys a state structure changed since the last flush; `None` when
/// the engine is not durable (replay, tests), so nothing is noted.
#[derive(Debug)]
pub(crate) struct Journal<K>(Option<HashSet<K>>);

impl<K> Default for Journal<K> {
    fn default() -> Self {
        Journal(None)
    }
}

impl<K: Eq + Hash> Journal<K> {
    pub(crate) fn on() -> Self {
        Journal(Some(HashSet::new()))
    }

    #[inline]
    pub(crate) fn note(&mut self, key: K) {
        if let Some(set) = &mut self.0 {
            set.insert(key);
        }
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = K> + '_ {
        self.0.iter_mut().flat_map(|s| s.drain())
    }
}

/// The notification id of a [`StateTable::Fired`] row (other rows: `None`).
pub fn fired_id(row: &Row) -> Option<&str> {
    if row.table != StateTable::Fired {
        return None;
    }
    std::str::from_utf8(row.key.get(4..)?).ok()
}

/// The 4-byte prefix of every key of partition `p`.
pub fn partition_prefix(p: PartitionId) -> [u8; 4] {
    (p as u32).to_be_bytes()
}

/// Builds keys and values: big-endian integers, length-prefixed strings.
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub(crate) fn key(p: PartitionId) -> Enc {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&partition_prefix(p));
        Enc(v)
    }

    pub(crate) fn value() -> Enc {
        Enc(Vec::with_capacity(64))
    }

    pub(crate) fn u128(mut self, x: u128) -> Enc {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }

    pub(crate) fn millis(mut self, x: Millis) -> Enc {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }

    pub(crate) fn opt_millis(self, x: Option<Millis>) -> Enc {
        match x {
            Some(m) => self.byte(1).millis(m),
            None => self.byte(0),
        }
    }

    pub(crate) fn byte(mut self, b: u8) -> Enc {
        self.0.push(b);
        self
    }

    pub(crate) fn str(mut self, s: &str) -> Enc {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..len as usize]);
        self
    }

    pub(crate) fn bytes(mut self, b: &[u8]) -> Enc {
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Reads what [`Enc`] wrote; `None` on a short or malformed row.
pub(crate) struct Dec<'a>(pub &'a [u8]);

impl<'a> Dec<'a> {
    /// A key, past its partition prefix.
    pub(crate) fn key(bytes: &'a [u8]) -> Option<Dec<'a>> {
        bytes.get(4..).map(Dec)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn u128(&mut self) -> Option<u128> {
        Some(u128::from_be_bytes(self.take(16)?.try_into().ok()?))
    }

    pub(crate) fn millis(&mut self) -> Option<Millis> {
        Some(Millis::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn opt_millis(&mut self) -> Option<Option<Millis>> {
        match self.byte()? {
            0 => Some(None),
            _ => Some(Some(self.millis()?)),
        }
    }

    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let v = Enc::value()
            .u128(u128::MAX - 7)
            .millis(-5)
            .opt_millis(None)
            .opt_millis(Some(42))
            .str("checkout-dropoff")
            .bytes(b"tail")
            .done();
        let mut d = Dec(&v);
        assert_eq!(d.u128(), Some(u128::MAX - 7));
        assert_eq!(d.millis(), Some(-5));
        assert_eq!(d.opt_millis(), Some(None));
        assert_eq!(d.opt_millis(), Some(Some(42)));
        assert_eq!(d.str(), Some("checkout-dropoff"));
        assert_eq!(d.rest(), b"tail");
    }

    #[test]
    fn short_rows_are_refused_not_misread() {
        let v = Enc::value().str("abc").done();
        assert_eq!(Dec(&v[..3]).str(), None);
        assert_eq!(Dec(&[0u8; 7]).millis(), None);
    }

    #[test]
    fn keys_sort_by_partition_first() {
        let a = Enc::key(1).u128(u128::MAX).done();
        let b = Enc::key(2).u128(0).done();
        assert!(a < b);
        assert_eq!(&a[..4], &partition_prefix(1));
    }

    #[test]
    fn a_journal_that_is_off_notes_nothing() {
        let mut off: Journal<u32> = Journal::default();
        off.note(1);
        assert_eq!(off.drain().count(), 0);
        let mut on: Journal<u32> = Journal::on();
        on.note(1);
        on.note(1);
        on.note(2);
        let mut got: Vec<u32> = on.drain().collect();
        got.sort();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(on.drain().count(), 0);
    }
}
