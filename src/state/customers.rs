//! What the store keeps per customer besides the engine state and the
//! decision log: the profiles read from the profiles topic, and the
//! marketing sends the frequency cap counts. Both keyed by customer id, so
//! `forewarn forget` deletes one row in each.

use serde_json::Value;

use super::{ReadableDatabase, ReadableTable, Store, StoreError, TableDefinition};
use crate::event::Millis;

/// customer id → the profile's JSON, as the profiles topic carried it.
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles_v1");
/// customer id → decision times (i64 LE) of recent marketing messages.
const CAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("policy_caps_v1");

/// Creates the tables on first use.
pub fn open(store: &Store) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    tx.open_table(PROFILES)?;
    tx.open_table(CAPS)?;
    tx.commit()?;
    Ok(())
}

/// A customer's profile, if the profiles topic has one (an unreadable
/// stored profile counts as none: the event's own fields apply).
pub fn profile(store: &Store, customer: &str) -> Result<Option<Value>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(PROFILES)?;
    Ok(t.get(customer)?
        .and_then(|v| serde_json::from_slice(v.value()).ok()))
}

/// Upserts (`Some`) and deletes (`None`, a tombstone) profiles.
pub fn put_profiles_in(
    tx: &redb::WriteTransaction,
    rows: &[(String, Option<Vec<u8>>)],
) -> Result<(), StoreError> {
    let mut t = tx.open_table(PROFILES)?;
    for (customer, value) in rows {
        match value {
            Some(v) => {
                t.insert(customer.as_str(), v.as_slice())?;
            }
            None => {
                t.remove(customer.as_str())?;
            }
        }
    }
    Ok(())
}

/// How many profiles are stored.
pub fn profile_count(store: &Store) -> Result<u64, StoreError> {
    let tx = store.db().begin_read()?;
    Ok(redb::ReadableTableMetadata::len(&tx.open_table(PROFILES)?)?)
}

/// Writes the cap ledger's changes (empty times: delete).
pub fn put_caps_in(
    tx: &redb::WriteTransaction,
    rows: &[(String, Vec<Millis>)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(CAPS)?;
    for (customer, times) in rows {
        if times.is_empty() {
            t.remove(customer.as_str())?;
        } else {
            let bytes: Vec<u8> = times.iter().flat_map(|t| t.to_le_bytes()).collect();
            t.insert(customer.as_str(), bytes.as_slice())?;
        }
    }
    Ok(())
}

/// Every stored cap entry, to fill the ledger at start-up.
pub fn caps(store: &Store) -> Result<Vec<(String, Vec<Millis>)>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(CAPS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let times = v
            .value()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        out.push((k.value().to_string(), times));
    }
    Ok(out)
}

/// What `forget` found and deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    pub profile: bool,
    pub cap_entries: bool,
}

/// Deletes a customer's profile and cap entry inside the caller's transaction.
pub fn forget_in(tx: &redb::WriteTransaction, customer: &str) -> Result<Forgotten, StoreError> {
    let profile = tx.open_table(PROFILES)?.remove(customer)?.is_some();
    let cap_entries = tx.open_table(CAPS)?.remove(customer)?.is_some();
    Ok(Forgotten {
        profile,
        cap_entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_caps_round_trip_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        open(&store).unwrap();
        let tx = store.db().begin_write().unwrap();
        put_profiles_in(
            &tx,
            &[
                ("c1".into(), Some(br#"{"email":"a@example.com"}"#.to_vec())),
                ("c2".into(), Some(b"{}".to_vec())),
            ],
        )
        .unwrap();
        put_caps_in(&tx, &[("c1".into(), vec![5, -7])]).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            profile(&store, "c1").unwrap().unwrap()["email"],
            "a@example.com"
        );
        assert_eq!(caps(&store).unwrap(), vec![("c1".to_string(), vec![5, -7])]);
        // A tombstone removes the profile.
        let tx = store.db().begin_write().unwrap();
        put_profiles_in(&tx, &[("c2".into(), None)]).unwrap();
        tx.commit().unwrap();
        assert!(profile(&store, "c2").unwrap().is_none());
        let tx = store.db().begin_write().unwrap();
        let f = forget_in(&tx, "c1").unwrap();
        tx.commit().unwrap();
        assert_eq!(
            f,
            Forgotten {
                profile: true,
                cap_entries: true
            }
        );
        assert!(profile(&store, "c1").unwrap().is_none());
        assert!(caps(&store).unwrap().is_empty());
    }
}
