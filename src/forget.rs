//! `forewarn forget --customer ID` (GDPR erasure): deletes what forewarn
//! holds about one customer. In the store: the profile, the cap entry,
//! the decision log, pending notifications and dead letters. In the
//! engine state: open episodes and fired ones whose trigger is theirs,
//! threshold windows of customer-keyed rules, cooldown and customer-only
//! once_per entries.
//!
//! With the daemon running, the request goes through its admin API to the
//! pipeline, which owns the engine state (`POST /api/customers/{id}/forget`);
//! with it stopped, the CLI opens the store and rewrites the state of every
//! partition that held something of theirs.
//!
//! A profile comes back if the profiles topic still carries it: erase it
//! upstream too (a tombstone for the customer's key).

use serde::{Deserialize, Serialize};

use crate::engine::Forgotten;
use crate::state::{Store, StoreError};

/// What was erased, for the operator's record.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    pub customer: String,
    pub profile: bool,
    pub cap_entries: bool,
    pub decisions: usize,
    pub pending_notifications: usize,
    pub dead_letters: usize,
    pub engine: Forgotten,
}

impl Erased {
    pub fn summary(&self) -> String {
        let e = &self.engine;
        format!(
            "erased customer {:?}: profile {}, cap entries {}, {} decision log entries, {} pending notifications, {} dead letters, {} open episodes, {} fired episodes awaiting delivery, {} threshold windows, {} cooldown/once_per entries",
            self.customer,
            if self.profile { "deleted" } else { "none" },
            if self.cap_entries { "deleted" } else { "none" },
            self.decisions,
            self.pending_notifications,
            self.dead_letters,
            e.episodes,
            e.fired,
            e.windows,
            e.ledger_entries
        )
    }
}

/// Erases the customer's rows outside the engine state, in the caller's
/// transaction. Returns the erased summary and the pending notification
/// ids (for the dispatcher's queue).
pub fn erase_stored(
    tx: &redb::WriteTransaction,
    customer: &str,
) -> Result<(Erased, Vec<String>), StoreError> {
    let f = crate::state::customers::forget_in(tx, customer)?;
    let decisions = crate::decisions::forget_in(tx, customer)?;
    let (pending, dead_letters) = crate::notify::outbox::Outbox::forget_in(tx, customer)?;
    Ok((
        Erased {
            customer: customer.to_string(),
            profile: f.profile,
            cap_entries: f.cap_entries,
            decisions,
            pending_notifications: pending.len(),
            dead_letters,
            engine: Forgotten::default(),
        },
        pending,
    ))
}

/// The daemon is stopped: erase in the store directly, restoring each
/// partition's engine state, erasing, and writing it back as a snapshot.
pub fn offline(
    store: &Store,
    rules: std::sync::Arc<crate::rules::RuleSet>,
    retain: &[crate::event::FieldPath],
    customer: &str,
) -> Result<Erased, StoreError> {
    use crate::engine::{Engine, EngineConfig};
    crate::state::engine::open(store)?;
    crate::state::customers::open(store)?;
    crate::decisions::open(store)?;
    crate::notify::outbox::Outbox::open(store.clone())?;
    let cfg = EngineConfig {
        send_time_guard: true,
        durable: true,
        ..EngineConfig::default()
    };
    let changelog = crate::state::engine::Changelog::new(0);
    let mut total = Forgotten::default();
    let mut snapshots = Vec::new();
    for p in crate::state::engine::stored_partitions(store)? {
        let (rows, meta) = crate::state::engine::load_partition(store, p)?;
        changelog.set(p, meta);
        let mut engine = Engine::new(std::sync::Arc::clone(&rules), cfg.clone(), retain);
        // Fired episodes stay guarded: their notifications may be pending.
        engine.restore(p, &rows, &|_| true);
        let f = engine.forget(customer);
        if f != Forgotten::default() {
            total.episodes += f.episodes;
            total.fired += f.fired;
            total.windows += f.windows;
            total.ledger_entries += f.ledger_entries;
            snapshots.push((p, engine.snapshot(p)));
        }
    }
    let tx = store.db().begin_write()?;
    crate::state::engine::commit(&tx, &changelog, &[], &snapshots)?;
    let (mut erased, _) = erase_stored(&tx, customer)?;
    tx.commit()?;
    erased.engine = total;
    Ok(erased)
}
