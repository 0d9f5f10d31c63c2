//! The engine's tables and the consumer positions in the store.
//!
//! The engine hands over its changes as rows ([`Write`]); this module only
//! stores bytes under the table each row names. Positions are the next
//! offset to read per (partition, topic); they are written in the same
//! transaction as the engine rows and outbox entries of the events before
//! them (see `daemon::Pipeline::flush`), so after a crash the state and
//! the positions always agree.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError};
use crate::engine::persist::{partition_prefix, Row, StateTable, Write};
use crate::engine::PartitionId;

/// (partition, topic) → the next offset to read.
const POSITIONS: TableDefinition<(i32, &str), i64> = TableDefinition::new("positions_v1");

fn table(t: StateTable) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

/// Creates the tables on first use.
pub fn open(store: &Store) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    for t in StateTable::ALL {
        tx.open_table(table(t))?;
    }
    tx.open_table(POSITIONS)?;
    tx.commit()?;
    Ok(())
}

/// Applies engine rows inside the caller's transaction.
pub fn apply(tx: &WriteTransaction, writes: &[Write]) -> Result<(), StoreError> {
    // Grouped by table, so each table is opened once.
    let mut by_table: Vec<&Write> = writes.iter().collect();
    by_table.sort_by_key(|w| w.table);
    for group in by_table.chunk_by(|a, b| a.table == b.table) {
        let mut t = tx.open_table(table(group[0].table))?;
        for w in group {
            match &w.value {
                Some(v) => {
                    t.insert(w.key.as_slice(), v.as_slice())?;
                }
                None => {
                    t.remove(w.key.as_slice())?;
                }
            }
        }
    }
    Ok(())
}

/// Records next offsets inside the caller's transaction.
pub fn put_positions(
    tx: &WriteTransaction,
    positions: &HashMap<(String, i32), i64>,
) -> Result<(), StoreError> {
    let mut t = tx.open_table(POSITIONS)?;
    for ((topic, partition), next) in positions {
        t.insert((*partition, topic.as_str()), *next)?;
    }
    Ok(())
}

/// Every stored position: (topic, partition) → next offset.
pub fn positions(store: &Store) -> Result<HashMap<(String, i32), i64>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(POSITIONS)?;
    let mut out = HashMap::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let (partition, topic) = k.value();
        out.insert((topic.to_string(), partition), v.value());
    }
    Ok(out)
}

/// The stored next offset of one (topic, partition).
pub fn position(store: &Store, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(POSITIONS)?;
    Ok(t.get((partition, topic))?.map(|v| v.value()))
}

/// Every engine row of partition `p`, over all tables.
pub fn load_partition(store: &Store, p: PartitionId) -> Result<Vec<Row>, StoreError> {
    let tx = store.db().begin_read()?;
    let prefix = partition_prefix(p);
    let mut out = Vec::new();
    for t in StateTable::ALL {
        let tbl = tx.open_table(table(t))?;
        for row in tbl.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(Row {
                table: t,
                key: k.value().to_vec(),
                value: v.value().to_vec(),
            });
        }
    }
    Ok(out)
}

/// Row counts per engine table, all partitions (for `forewarn state` and tests).
pub fn counts(store: &Store) -> Result<Vec<(StateTable, u64)>, StoreError> {
    use redb::ReadableTableMetadata;
    let tx = store.db().begin_read()?;
    let mut out = Vec::new();
    for t in StateTable::ALL {
        out.push((t, tx.open_table(table(t))?.len()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_positions_commit_together_and_load_by_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        open(&store).unwrap();
        let row = |p: i32, tag: u8, value: Option<&[u8]>| Write {
            table: StateTable::Ledger,
            key: [partition_prefix(p).as_slice(), &[tag]].concat(),
            value: value.map(<[u8]>::to_vec),
        };
        let tx = store.db().begin_write().unwrap();
        apply(
            &tx,
            &[
                row(1, 1, Some(b"a")),
                row(2, 1, Some(b"b")),
                row(1, 2, Some(b"c")),
            ],
        )
        .unwrap();
        put_positions(&tx, &HashMap::from([(("events".to_string(), 1), 42)])).unwrap();
        tx.commit().unwrap();

        let tx = store.db().begin_write().unwrap();
        apply(&tx, &[row(1, 2, None)]).unwrap();
        tx.commit().unwrap();

        let rows = load_partition(&store, 1).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, b"a");
        assert_eq!(load_partition(&store, 2).unwrap().len(), 1);
        assert_eq!(position(&store, "events", 1).unwrap(), Some(42));
        assert_eq!(position(&store, "events", 2).unwrap(), None);
        assert_eq!(positions(&store).unwrap().len(), 1);
    }
}
