//! The decision log (SPEC section 4): every decision about a customer, with
//! its reason and times, queryable by customer id. It answers "why did (or
//! didn't) this customer get a message?" for `forewarn explain`, the admin
//! API, and the holdout comparison of `forewarn report`.
//!
//! One redb table, `decisions_v1`, keyed (customer, time, notification id
//! and outcome), so a customer's history is one key range, oldest first.
//! Decide-time entries (`fired`, `deferred` and the suppressions) commit in
//! the same transaction as the batch that decided them; delivery outcomes
//! (`sent`, `resolved`, `dead_letter`) in the transaction that settles the
//! outbox entry. Entries older than `state.decision_log_retention` are
//! deleted by compaction; `forewarn forget` deletes a customer's at once.
//! Values are JSON, as in the outbox.

use serde::{Deserialize, Serialize};

use crate::event::{format_time, Millis};
use crate::state::{ReadableDatabase, ReadableTable, Store, StoreError, TableDefinition};

const DECISIONS: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("decisions_v1");

/// One decision about one notification for one customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub customer: String,
    /// When it was decided (wall clock; event time in replay), ms.
    pub at: Millis,
    pub rule: String,
    /// `fired`, `deferred`, `sent`, `cooldown`, `duplicate`, `capped`,
    /// `unsubscribed`, `stale`, `resolved`, `no_address`, `render_failed`,
    /// `shadow`, `holdout`, `dead_letter`.
    pub outcome: String,
    pub notification_id: String,
    pub channel: String,
    /// A sentence for people: why this outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Event time of the firing (the deadline, or the firing event's time).
    pub fired_at: Millis,
    pub episode_start: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Millis>,
    /// Deferred: when it is due to go out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<Millis>,
}

impl DecisionRecord {
    /// The same notification, a later outcome (delivery).
    pub fn then(&self, outcome: &str, at: Millis, reason: Option<String>) -> DecisionRecord {
        DecisionRecord {
            at,
            outcome: outcome.to_string(),
            reason,
            send_at: None,
            ..self.clone()
        }
    }

    /// A few lines for `forewarn explain`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}  {:<13} {}  via {}",
            wall(self.at),
            self.outcome,
            self.rule,
            self.channel
        );
        let what = match self.outcome.as_str() {
            "fired" => "decided to send now".to_string(),
            "deferred" => format!(
                "quiet hours: will be sent at {}",
                self.send_at.map_or("?".into(), wall)
            ),
            "sent" => "accepted by the channel".to_string(),
            "resolved" => {
                "not sent: the customer acted before it went out (send-time guard)".to_string()
            }
            "dead_letter" => "not sent: delivery failed for good (see dead letters)".to_string(),
            "cooldown" => "not sent: this rule messaged them within its cooldown".to_string(),
            "duplicate" => "not sent: once_per, this was notified before".to_string(),
            "stale" => "not sent: too late to be useful (stale_after)".to_string(),
            "capped" => "not sent: marketing frequency cap reached".to_string(),
            "unsubscribed" => "not sent: no consent for this class".to_string(),
            "no_address" => "not sent: no usable email address".to_string(),
            "render_failed" => "not sent: the template could not be rendered".to_string(),
            "shadow" => "not sent: the rule is in shadow mode".to_string(),
            "holdout" => "not sent: the customer is in the rule's holdout group".to_string(),
            other => other.to_string(),
        };
        s.push_str(&format!("\n    {what}"));
        if let Some(r) = &self.reason {
            s.push_str(&format!("\n    why: {r}"));
        }
        s.push_str(&format!(
            "\n    event time {}; episode started {}{}; notification {}",
            format_time(self.fired_at),
            format_time(self.episode_start),
            self.deadline
                .map(|d| format!(", deadline {}", format_time(d)))
                .unwrap_or_default(),
            self.notification_id
        ));
        s
    }
}

/// A wall-clock time with fixed millisecond precision, so lines align.
fn wall(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Creates the table on first use.
pub fn open(store: &Store) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    tx.open_table(DECISIONS)?;
    tx.commit()?;
    Ok(())
}

fn encode(r: &DecisionRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("decision records serialize")
}

fn key_suffix(r: &DecisionRecord) -> String {
    format!("{}/{}", r.notification_id, r.outcome)
}

/// Writes records inside the caller's transaction.
pub fn write_in(tx: &redb::WriteTransaction, records: &[DecisionRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(DECISIONS)?;
    for r in records {
        let suffix = key_suffix(r);
        t.insert(
            (r.customer.as_str(), r.at.max(0) as u64, suffix.as_str()),
            encode(r).as_slice(),
        )?;
    }
    Ok(())
}

/// Writes records in a transaction of their own.
pub fn write(store: &Store, records: &[DecisionRecord]) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    write_in(&tx, records)?;
    tx.commit()?;
    Ok(())
}

/// A customer's history, oldest first (at most `limit`, the newest ones).
pub fn for_customer(
    store: &Store,
    customer: &str,
    limit: usize,
) -> Result<Vec<DecisionRecord>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(DECISIONS)?;
    let mut out = Vec::new();
    for row in t
        .range((customer, 0u64, "")..=(customer, u64::MAX, "\u{10FFFF}"))?
        .rev()
    {
        let (_, v) = row?;
        if out.len() == limit {
            break;
        }
        out.push(decode(v.value())?);
    }
    out.reverse();
    Ok(out)
}

/// Every record of `rule` (for reports), in key order.
pub fn for_rule(store: &Store, rule: &str) -> Result<Vec<DecisionRecord>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(DECISIONS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        let r: DecisionRecord = decode(v.value())?;
        if r.rule == rule {
            out.push(r);
        }
    }
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<DecisionRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Db(format!("a decision log record cannot be read: {e}")))
}

/// Deletes records decided before `before` (ms). Returns how many.
pub fn prune(store: &Store, before: Millis) -> Result<usize, StoreError> {
    let tx = store.db().begin_write()?;
    let removed;
    {
        let mut t = tx.open_table(DECISIONS)?;
        let len = redb::ReadableTableMetadata::len(&t)?;
        let cut = before.max(0) as u64;
        t.retain(|(_, at, _), _| at >= cut)?;
        removed = (len - redb::ReadableTableMetadata::len(&t)?) as usize;
    }
    tx.commit()?;
    Ok(removed)
}

/// Deletes a customer's whole history inside the caller's transaction.
/// Returns how many records went.
pub fn forget_in(tx: &redb::WriteTransaction, customer: &str) -> Result<usize, StoreError> {
    let mut t = tx.open_table(DECISIONS)?;
    let keys: Vec<(u64, String)> = t
        .range((customer, 0u64, "")..=(customer, u64::MAX, "\u{10FFFF}"))?
        .map(|row| row.map(|(k, _)| (k.value().1, k.value().2.to_string())))
        .collect::<Result<_, _>>()?;
    for (at, s) in &keys {
        t.remove((customer, *at, s.as_str()))?;
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(customer: &str, at: Millis, outcome: &str) -> DecisionRecord {
        DecisionRecord {
            customer: customer.into(),
            at,
            rule: "checkout-dropoff".into(),
            outcome: outcome.into(),
            notification_id: format!("n{at}"),
            channel: "email".into(),
            reason: None,
            fired_at: at,
            episode_start: at - 1000,
            deadline: Some(at),
            send_at: None,
        }
    }

    #[test]
    fn explain_lines_say_what_happened_and_why() {
        let mut r = rec("c1", 1_767_225_600_000, "deferred");
        r.send_at = Some(1_767_254_400_000);
        r.reason = Some("marketing message inside the customer's quiet hours".into());
        let text = r.describe();
        assert!(
            text.starts_with("2026-01-01T00:00:00.000Z  deferred"),
            "{text}"
        );
        assert!(
            text.contains("will be sent at 2026-01-01T08:00:00.000Z"),
            "{text}"
        );
        assert!(text.contains("why: marketing message"), "{text}");
        assert!(text.contains("notification n1767225600000"), "{text}");
    }

    #[test]
    fn history_is_per_customer_in_time_order_and_forgettable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        open(&store).unwrap();
        write(
            &store,
            &[
                rec("c1", 3000, "sent"),
                rec("c1", 1000, "fired"),
                rec("c10", 2000, "capped"),
                rec("c2", 500, "holdout"),
            ],
        )
        .unwrap();
        let c1 = for_customer(&store, "c1", 100).unwrap();
        assert_eq!(
            c1.iter().map(|r| r.at).collect::<Vec<_>>(),
            vec![1000, 3000],
            "only c1's records (not c10's), oldest first"
        );
        assert_eq!(for_customer(&store, "c1", 1).unwrap()[0].at, 3000);
        assert_eq!(for_rule(&store, "checkout-dropoff").unwrap().len(), 4);
        let tx = store.db().begin_write().unwrap();
        assert_eq!(forget_in(&tx, "c1").unwrap(), 2);
        tx.commit().unwrap();
        assert!(for_customer(&store, "c1", 100).unwrap().is_empty());
        assert_eq!(for_customer(&store, "c10", 100).unwrap().len(), 1);
        assert_eq!(prune(&store, 1000).unwrap(), 1);
        assert!(for_customer(&store, "c2", 100).unwrap().is_empty());
    }
}
