//! The outbox: every decided notification is written here, durably,
//! before its event's position may be committed, and stays until it is
//! sent, resolved by the send-time guard, or dead-lettered. A crash at any
//! moment loses nothing: pending notifications (with their attempt counts
//! and next-attempt times) are read back at start-up.
//!
//! Three tables in the state store, keyed by notification id:
//! - `outbox_pending`: waiting for a first attempt or a retry;
//! - `outbox_dead`: dead letters, listed and re-driven from the CLI;
//! - `outbox_done`: ids already settled (sent or resolved) with the time,
//!   so that a notification decided again after a restart (its event read
//!   again) is recognised as a duplicate instead of sent twice. Pruned
//!   after `state.ledger_retention`.
//!
//! Values are JSON: readable with any redb tool, and tolerant of new
//! optional fields.

use serde::{Deserialize, Serialize};

use super::Notification;
use crate::event::Millis;
use crate::state::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, Store, StoreError, TableDefinition,
};

const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_pending");
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_dead");
const DONE: TableDefinition<&str, u64> = TableDefinition::new("outbox_done");

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub notification: Notification,
    /// Wall-clock time it entered the outbox (ms); `max_age` counts from here.
    pub enqueued_at: Millis,
    pub attempts: u32,
    /// Not before this wall-clock time (ms).
    pub next_at: Millis,
    pub last_error: Option<String>,
}

/// A notification that will not be retried by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub notification: Notification,
    pub enqueued_at: Millis,
    pub attempts: u32,
    pub reason: String,
    pub dead_at: Millis,
}

/// What became of an enqueued notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Already pending, sent, resolved or dead-lettered: not queued again.
    Duplicate,
}

/// The end of a pending notification's life in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Sent,
    Resolved,
    /// Withdrawn at send time: the customer no longer consents.
    Unsubscribed(String),
    Dead(DeadLetter),
    /// Back to pending, for a later attempt.
    Retry(Pending),
}

#[derive(Clone)]
pub struct Outbox {
    store: Store,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("outbox records serialize")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Db(format!("an outbox record cannot be read: {e}")))
}

impl Outbox {
    /// Opens the outbox tables (creating them on first use).
    pub fn open(store: Store) -> Result<Outbox, StoreError> {
        let tx = store.db().begin_write()?;
        tx.open_table(PENDING)?;
        tx.open_table(DEAD)?;
        tx.open_table(DONE)?;
        tx.commit()?;
        Ok(Outbox { store })
    }

    /// Writes new notifications in one transaction. Each one already
    /// known (pending, done or dead) is reported as a duplicate and left
    /// as it is.
    pub fn enqueue(
        &self,
        notifications: Vec<Notification>,
        now: Millis,
    ) -> Result<Vec<(Enqueued, Pending)>, StoreError> {
        let tx = self.store.db().begin_write()?;
        let out = Outbox::enqueue_in(&tx, notifications, now)?;
        tx.commit()?;
        Ok(out)
    }

    /// [`Outbox::enqueue`] inside the caller's transaction, so that the
    /// entries commit together with the engine state and the positions
    /// of the events that decided them. Hand the result to the
    /// dispatcher only after the commit.
    pub fn enqueue_in(
        tx: &redb::WriteTransaction,
        notifications: Vec<Notification>,
        now: Millis,
    ) -> Result<Vec<(Enqueued, Pending)>, StoreError> {
        let mut out = Vec::with_capacity(notifications.len());
        if notifications.is_empty() {
            return Ok(out);
        }
        let mut pending = tx.open_table(PENDING)?;
        let dead = tx.open_table(DEAD)?;
        let done = tx.open_table(DONE)?;
        for n in notifications {
            let id = n.id.clone();
            let p = Pending {
                next_at: n.not_before.map_or(now, |t| t.max(now)),
                notification: n,
                enqueued_at: now,
                attempts: 0,
                last_error: None,
            };
            let known = pending.get(id.as_str())?.is_some()
                || done.get(id.as_str())?.is_some()
                || dead.get(id.as_str())?.is_some();
            if known {
                out.push((Enqueued::Duplicate, p));
                continue;
            }
            pending.insert(id.as_str(), encode(&p).as_slice())?;
            out.push((Enqueued::Queued, p));
        }
        Ok(out)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `id` waits in the outbox (not yet sent, resolved or dead).
    pub fn is_pending(&self, id: &str) -> Result<bool, StoreError> {
        let tx = self.store.db().begin_read()?;
        Ok(tx.open_table(PENDING)?.get(id)?.is_some())
    }

    /// Every pending notification, for the dispatcher at start-up.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Records how attempts on `id` ended, in one transaction for many.
    pub fn settle(&self, batch: &[(String, Settle)], now: Millis) -> Result<(), StoreError> {
        self.settle_with(batch, &[], now)
    }

    /// [`Outbox::settle`], writing the delivery outcomes' decision log
    /// entries in the same transaction.
    pub fn settle_with(
        &self,
        batch: &[(String, Settle)],
        decisions: &[crate::decisions::DecisionRecord],
        now: Millis,
    ) -> Result<(), StoreError> {
        if batch.is_empty() && decisions.is_empty() {
            return Ok(());
        }
        let tx = self.store.db().begin_write()?;
        crate::decisions::write_in(&tx, decisions)?;
        {
            let mut pending = tx.open_table(PENDING)?;
            let mut dead = tx.open_table(DEAD)?;
            let mut done = tx.open_table(DONE)?;
            for (id, how) in batch {
                let id = id.as_str();
                match how {
                    Settle::Sent | Settle::Resolved | Settle::Unsubscribed(_) => {
                        pending.remove(id)?;
                        done.insert(id, now as u64)?;
                    }
                    Settle::Dead(d) => {
                        pending.remove(id)?;
                        dead.insert(id, encode(d).as_slice())?;
                    }
                    Settle::Retry(p) => {
                        pending.insert(id, encode(p).as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(DEAD)?;
        let mut out: Vec<DeadLetter> = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        out.sort_by(|a, b| {
            a.dead_at
                .cmp(&b.dead_at)
                .then(a.notification.id.cmp(&b.notification.id))
        });
        Ok(out)
    }

    /// One dead letter by id.
    pub fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(DEAD)?;
        let found = table.get(id)?;
        found.map(|v| decode(v.value())).transpose()
    }

    /// How many dead letters there are.
    pub fn dead_count(&self) -> Result<u64, StoreError> {
        let tx = self.store.db().begin_read()?;
        Ok(tx.open_table(DEAD)?.len()?)
    }

    /// Moves dead letters back to pending, due now, with a fresh attempt
    /// count and age (`ids` empty: all of them). Returns what was moved.
    pub fn redrive(&self, ids: &[String], now: Millis) -> Result<Vec<Pending>, StoreError> {
        let tx = self.store.db().begin_write()?;
        let mut moved = Vec::new();
        {
            let mut pending = tx.open_table(PENDING)?;
            let mut dead = tx.open_table(DEAD)?;
            let wanted = given_or_all(&dead, ids)?;
            for id in wanted {
                let Some(d) = dead.remove(id.as_str())? else {
                    continue;
                };
                let d: DeadLetter = decode(d.value())?;
                let p = Pending {
                    notification: d.notification,
                    enqueued_at: now,
                    attempts: 0,
                    next_at: now,
                    last_error: Some(format!("re-driven after: {}", d.reason)),
                };
                pending.insert(id.as_str(), encode(&p).as_slice())?;
                moved.push(p);
            }
        }
        tx.commit()?;
        Ok(moved)
    }

    /// Deletes dead letters for good (`ids` empty: all). Returns the ids
    /// deleted.
    pub fn purge_dead(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let tx = self.store.db().begin_write()?;
        let mut gone = Vec::new();
        {
            let mut dead = tx.open_table(DEAD)?;
            let wanted = given_or_all(&dead, ids)?;
            for id in wanted {
                if dead.remove(id.as_str())?.is_some() {
                    gone.push(id);
                }
            }
        }
        tx.commit()?;
        Ok(gone)
    }

    /// Deletes dead letters that died before `before` (ms): the
    /// `state.dead_letter_retention` compaction. Returns how many.
    pub fn prune_dead(&self, before: Millis) -> Result<usize, StoreError> {
        let tx = self.store.db().begin_write()?;
        let removed;
        {
            let mut dead = tx.open_table(DEAD)?;
            let len = dead.len()?;
            dead.retain(|_, v| {
                serde_json::from_slice::<DeadLetter>(v).map_or(true, |d| d.dead_at >= before)
            })?;
            removed = (len - dead.len()?) as usize;
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Deletes every pending notification and dead letter addressed to
    /// `customer` (GDPR erasure) inside the caller's transaction. Returns
    /// the ids of the pending ones (for the dispatcher's queue) and how
    /// many dead letters went.
    pub fn forget_in(
        tx: &redb::WriteTransaction,
        customer: &str,
    ) -> Result<(Vec<String>, usize), StoreError> {
        let theirs = |v: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(v)
                .ok()
                .is_some_and(|r| r["notification"]["customer"] == customer)
        };
        let mut pending = tx.open_table(PENDING)?;
        let mut ids = Vec::new();
        for row in pending.iter()? {
            let (k, v) = row?;
            if theirs(v.value()) {
                ids.push(k.value().to_string());
            }
        }
        for id in &ids {
            pending.remove(id.as_str())?;
        }
        let mut dead = tx.open_table(DEAD)?;
        let len = dead.len()?;
        dead.retain(|_, v| !theirs(v))?;
        let dead_gone = (len - dead.len()?) as usize;
        Ok((ids, dead_gone))
    }

    /// Forgets settled ids older than `before` (ms). Returns how many.
    pub fn prune_done(&self, before: Millis) -> Result<usize, StoreError> {
        let tx = self.store.db().begin_write()?;
        let removed;
        {
            let mut done = tx.open_table(DONE)?;
            let len = done.len()?;
            done.retain(|_, at| (at as i64) >= before)?;
            removed = (len - done.len()?) as usize;
        }
        tx.commit()?;
        Ok(removed)
    }
}

/// `ids`, or every key of `table` when `ids` is empty.
fn given_or_all(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    ids: &[String],
) -> Result<Vec<String>, StoreError> {
    if !ids.is_empty() {
        return Ok(ids.to_vec());
    }
    let mut all = Vec::new();
    for row in table.iter()? {
        all.push(row?.0.value().to_string());
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::template::Rendered;
    use crate::notify::EpisodeInfo;
    use crate::rules::Class;

    pub(crate) fn sample(id: &str) -> Notification {
        Notification {
            id: id.into(),
            rule_id: "checkout-dropoff".into(),
            channel: "email".into(),
            class: Class::Marketing,
            customer: "c-1".into(),
            recipient: Some("ada@example.com".into()),
            message: Rendered {
                subject: "Your cart".into(),
                text: "Hi".into(),
                html: None,
            },
            episode: EpisodeInfo {
                key: vec!["c-1".into()],
                start: 1,
                deadline: Some(2),
                partition: 0,
            },
            event: serde_json::json!({"cart": {"total": 42.0}}),
            entry: None,
            unsubscribe_url: None,
            not_before: None,
        }
    }

    #[test]
    fn a_deferred_notification_waits_durably_and_forget_takes_a_customers_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
            let mut late = sample("late");
            late.not_before = Some(5_000);
            let mut other = sample("other");
            other.customer = "c-2".into();
            let r = outbox
                .enqueue(vec![late, sample("now"), other], 10)
                .unwrap();
            assert_eq!(r[0].1.next_at, 5_000, "due at the end of quiet hours");
            assert_eq!(r[1].1.next_at, 10);
        }
        // The deferral survives a restart.
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        let pending = outbox.pending().unwrap();
        let late = pending
            .iter()
            .find(|p| p.notification.id == "late")
            .unwrap();
        assert_eq!(
            (late.next_at, late.notification.not_before),
            (5_000, Some(5_000))
        );
        // forget: c-1's two entries go, c-2's stays.
        let tx = outbox.store().db().begin_write().unwrap();
        let (mut ids, dead) = Outbox::forget_in(&tx, "c-1").unwrap();
        tx.commit().unwrap();
        ids.sort();
        assert_eq!(
            (ids, dead),
            (vec!["late".to_string(), "now".to_string()], 0)
        );
        let left: Vec<String> = outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|p| p.notification.id)
            .collect();
        assert_eq!(left, vec!["other".to_string()]);
    }

    #[test]
    fn survives_reopen_and_never_queues_an_id_twice() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
            let r = outbox.enqueue(vec![sample("a"), sample("b")], 10).unwrap();
            assert!(r.iter().all(|(e, _)| *e == Enqueued::Queued));
            outbox.settle(&[("a".into(), Settle::Sent)], 11).unwrap();
        }
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].notification, sample("b"));
        // "a" was sent, "b" is pending: both are duplicates now.
        let again = outbox
            .enqueue(vec![sample("a"), sample("b"), sample("c")], 12)
            .unwrap();
        let kinds: Vec<Enqueued> = again.iter().map(|(e, _)| *e).collect();
        assert_eq!(
            kinds,
            [Enqueued::Duplicate, Enqueued::Duplicate, Enqueued::Queued]
        );
    }

    #[test]
    fn dead_letters_are_listed_redriven_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        outbox.enqueue(vec![sample("a"), sample("b")], 10).unwrap();
        let dead = |id: &str, at| DeadLetter {
            notification: sample(id),
            enqueued_at: 10,
            attempts: 3,
            reason: "HTTP 400".into(),
            dead_at: at,
        };
        outbox
            .settle(
                &[
                    ("b".into(), Settle::Dead(dead("b", 20))),
                    ("a".into(), Settle::Dead(dead("a", 30))),
                ],
                30,
            )
            .unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        let listed: Vec<String> = outbox
            .dead_letters()
            .unwrap()
            .iter()
            .map(|d| d.notification.id.clone())
            .collect();
        assert_eq!(listed, ["b", "a"], "oldest first");
        let moved = outbox.redrive(&["a".into()], 40).unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!((moved[0].attempts, moved[0].next_at), (0, 40));
        assert_eq!(outbox.pending().unwrap().len(), 1);
        assert_eq!(outbox.purge_dead(&[]).unwrap(), ["b"]);
        assert!(outbox.dead_letters().unwrap().is_empty());
    }

    #[test]
    fn settled_ids_are_pruned_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        outbox.enqueue(vec![sample("a"), sample("b")], 10).unwrap();
        outbox.settle(&[("a".into(), Settle::Sent)], 100).unwrap();
        outbox
            .settle(&[("b".into(), Settle::Resolved)], 200)
            .unwrap();
        assert_eq!(outbox.prune_done(150).unwrap(), 1);
        let again = outbox.enqueue(vec![sample("a"), sample("b")], 300).unwrap();
        assert_eq!(again[0].0, Enqueued::Queued, "forgotten after retention");
        assert_eq!(again[1].0, Enqueued::Duplicate);
    }

    #[test]
    fn dead_letters_are_deleted_after_their_retention() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        outbox
            .enqueue(vec![sample("old"), sample("new")], 10)
            .unwrap();
        let dead = |id: &str, at| {
            Settle::Dead(DeadLetter {
                notification: sample(id),
                enqueued_at: 10,
                attempts: 3,
                reason: "550 no such user".into(),
                dead_at: at,
            })
        };
        outbox
            .settle(
                &[
                    ("old".into(), dead("old", 100)),
                    ("new".into(), dead("new", 200)),
                ],
                200,
            )
            .unwrap();
        assert_eq!(outbox.prune_dead(150).unwrap(), 1);
        let left: Vec<String> = outbox
            .dead_letters()
            .unwrap()
            .into_iter()
            .map(|d| d.notification.id)
            .collect();
        assert_eq!(left, ["new"]);
    }

    #[test]
    fn a_second_process_is_told_the_store_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, opened twice"),
        }
    }
}
