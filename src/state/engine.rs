//! The engine's state and the consumer positions in the store.
//!
//! Engine state is kept as a changelog with snapshots, per partition, the
//! way Kafka Streams and Flink keep operator state. Each commit appends
//! one log entry per partition: the rows the engine changed in that batch
//! ([`Write`]s, coalesced by the engine), as one value. A commit therefore
//! writes a few sequential values instead of thousands of rows at random
//! places in a B-tree, which is what lets durable progress keep up with the
//! engine (see the `engine` benchmark, part 3). When a partition's log has
//! grown past its last snapshot (and [`SNAPSHOT_MIN_BYTES`]), the commit
//! writes a fresh snapshot of the partition's whole state instead and drops
//! its log, so a restore reads at most about twice the state's size.
//!
//! Positions are the next offset to read per (partition, topic). They are
//! written in the same transaction as the engine's log entries and the
//! batch's outbox entries (see `daemon::Pipeline::flush`), so after a crash
//! the state and the positions always agree.
//!
//! Every key starts with the partition, so a partition's state can be
//! handed to another instance on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError};
use crate::engine::persist::{Row, StateTable, Write};
use crate::engine::PartitionId;

/// (partition, seq) → the rows one commit changed.
const LOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("engine_log_v1");
/// (partition, chunk) → part of the partition's last snapshot.
const SNAPSHOT: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("engine_snapshot_v1");
/// partition → its [`LogMeta`].
const META: TableDefinition<u32, (u64, u64, u64)> = TableDefinition::new("engine_meta_v1");
/// (partition, topic) → the next offset to read.
const POSITIONS: TableDefinition<(i32, &str), i64> = TableDefinition::new("positions_v1");

/// By default, a partition's log is replaced by a snapshot once it is
/// larger than this and than the last snapshot (`state.snapshot_min_bytes`).
pub const SNAPSHOT_MIN_BYTES: u64 = 16 << 20;
/// Snapshots are stored in values of about this size.
const CHUNK_BYTES: usize = 1 << 20;

/// Where a partition's changelog stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogMeta {
    /// Sequence number of the next log entry.
    pub next_seq: u64,
    /// Bytes logged since the last snapshot.
    pub log_bytes: u64,
    /// Size of the last snapshot.
    pub snapshot_bytes: u64,
}

impl LogMeta {
    /// The log has outgrown both `min_bytes` and the last snapshot.
    pub fn snapshot_due(&self, min_bytes: u64) -> bool {
        self.log_bytes > min_bytes.max(self.snapshot_bytes)
    }
}

/// The changelog positions of the partitions this process writes; shared
/// between the consumer (which decides when to snapshot) and the blocking
/// commit task.
#[derive(Debug, Clone)]
pub struct Changelog {
    metas: Arc<Mutex<HashMap<PartitionId, LogMeta>>>,
    snapshot_min_bytes: u64,
}

impl Default for Changelog {
    fn default() -> Self {
        Changelog::new(SNAPSHOT_MIN_BYTES)
    }
}

impl Changelog {
    pub fn new(snapshot_min_bytes: u64) -> Changelog {
        Changelog {
            metas: Arc::default(),
            snapshot_min_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionId, LogMeta>> {
        self.metas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether partition `p`'s next commit should be a snapshot.
    pub fn snapshot_due(&self, p: PartitionId) -> bool {
        let min = self.snapshot_min_bytes;
        self.lock().get(&p).is_some_and(|m| m.snapshot_due(min))
    }

    /// Records where a restored partition's log stands.
    pub fn set(&self, p: PartitionId, meta: LogMeta) {
        self.lock().insert(p, meta);
    }
}

/// Creates the tables on first use.
pub fn open(store: &Store) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(SNAPSHOT)?;
    tx.open_table(META)?;
    tx.open_table(POSITIONS)?;
    tx.commit()?;
    Ok(())
}

fn partition_of(key: &[u8]) -> Option<PartitionId> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as PartitionId)
}

/// Row framing inside log entries and snapshot chunks:
/// table id, key length (u16), key, then 0 (delete) or 1 + value length
/// (u32) + value.
fn encode_row(buf: &mut Vec<u8>, table: StateTable, key: &[u8], value: Option<&[u8]>) {
    buf.push(table.id());
    buf.extend_from_slice(&(key.len() as u16).to_be_bytes());
    buf.extend_from_slice(key);
    match value {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
            buf.extend_from_slice(v);
        }
    }
}

fn decode_rows(
    bytes: &[u8],
    mut f: impl FnMut(StateTable, &[u8], Option<&[u8]>),
) -> Result<(), StoreError> {
    fn take<'a>(n: usize, bytes: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        if bytes.len() < n {
            return Err(StoreError::Db("an engine state record is truncated".into()));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut bytes = bytes;
    while !bytes.is_empty() {
        let id = take(1, &mut bytes)?[0];
        let table = StateTable::from_id(id)
            .ok_or_else(|| StoreError::Db(format!("unknown engine state table {id}")))?;
        let klen = u16::from_be_bytes([take(1, &mut bytes)?[0], take(1, &mut bytes)?[0]]);
        let key = take(klen as usize, &mut bytes)?;
        let value = match take(1, &mut bytes)?[0] {
            0 => None,
            _ => {
                let mut len = [0u8; 4];
                len.copy_from_slice(take(4, &mut bytes)?);
                Some(take(u32::from_be_bytes(len) as usize, &mut bytes)?)
            }
        };
        f(table, key, value);
    }
    Ok(())
}

/// Appends the engine's changes to the partitions' logs, or writes the
/// given snapshots in their place, inside the caller's transaction. A
/// snapshot must have been taken after the changes were (it includes
/// them). Returns the bytes written.
pub fn commit(
    tx: &WriteTransaction,
    changelog: &Changelog,
    writes: &[Write],
    snapshots: &[(PartitionId, Vec<Write>)],
) -> Result<u64, StoreError> {
    let mut logs: BTreeMap<PartitionId, Vec<u8>> = BTreeMap::new();
    for w in writes {
        let Some(p) = partition_of(&w.key) else {
            continue;
        };
        if snapshots.iter().any(|(s, _)| *s == p) {
            continue;
        }
        encode_row(
            logs.entry(p).or_default(),
            w.table,
            &w.key,
            w.value.as_deref(),
        );
    }
    let mut metas = changelog.lock();
    let mut written = 0u64;
    let mut log = tx.open_table(LOG)?;
    let mut meta_table = tx.open_table(META)?;
    for (p, entry) in &logs {
        let m = metas.entry(*p).or_default();
        log.insert((*p as u32, m.next_seq), entry.as_slice())?;
        m.next_seq += 1;
        m.log_bytes += entry.len() as u64;
        written += entry.len() as u64;
        meta_table.insert(*p as u32, (m.next_seq, m.log_bytes, m.snapshot_bytes))?;
    }
    let mut snap = tx.open_table(SNAPSHOT)?;
    for (p, rows) in snapshots {
        let p32 = *p as u32;
        // The snapshot replaces the old one and everything logged.
        snap.retain_in((p32, 0)..=(p32, u32::MAX), |_, _| false)?;
        log.retain_in((p32, 0)..=(p32, u64::MAX), |_, _| false)?;
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
        let mut n = 0u32;
        let mut size = 0u64;
        for w in rows.iter().filter(|w| w.value.is_some()) {
            encode_row(&mut chunk, w.table, &w.key, w.value.as_deref());
            if chunk.len() >= CHUNK_BYTES {
                snap.insert((p32, n), chunk.as_slice())?;
                size += chunk.len() as u64;
                n += 1;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            snap.insert((p32, n), chunk.as_slice())?;
            size += chunk.len() as u64;
        }
        let m = metas.entry(*p).or_default();
        m.log_bytes = 0;
        m.snapshot_bytes = size;
        written += size;
        meta_table.insert(p32, (m.next_seq, m.log_bytes, m.snapshot_bytes))?;
    }
    Ok(written)
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

/// Every partition with stored engine state.
pub fn stored_partitions(store: &Store) -> Result<Vec<PartitionId>, StoreError> {
    let tx = store.db().begin_read()?;
    let mut out = Vec::new();
    for row in tx.open_table(META)?.iter()? {
        out.push(row?.0.value() as PartitionId);
    }
    Ok(out)
}

/// Partition `p`'s state: its snapshot with its log applied in order, as
/// rows for `Engine::restore`, and where its log stands.
pub fn load_partition(store: &Store, p: PartitionId) -> Result<(Vec<Row>, LogMeta), StoreError> {
    let tx = store.db().begin_read()?;
    let p32 = p as u32;
    let mut state: BTreeMap<(StateTable, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let mut apply = |table: StateTable, key: &[u8], value: Option<&[u8]>| match value {
        Some(v) => {
            state.insert((table, key.to_vec()), v.to_vec());
        }
        None => {
            state.remove(&(table, key.to_vec()));
        }
    };
    for chunk in tx.open_table(SNAPSHOT)?.range((p32, 0)..=(p32, u32::MAX))? {
        decode_rows(chunk?.1.value(), &mut apply)?;
    }
    for entry in tx.open_table(LOG)?.range((p32, 0)..=(p32, u64::MAX))? {
        decode_rows(entry?.1.value(), &mut apply)?;
    }
    let meta = tx
        .open_table(META)?
        .get(p32)?
        .map(|v| {
            let (next_seq, log_bytes, snapshot_bytes) = v.value();
            LogMeta {
                next_seq,
                log_bytes,
                snapshot_bytes,
            }
        })
        .unwrap_or_default();
    let rows = state
        .into_iter()
        .map(|((table, key), value)| Row { table, key, value })
        .collect();
    Ok((rows, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::persist::partition_prefix;

    fn w(p: i32, tag: u8, value: Option<&[u8]>) -> Write {
        Write {
            table: StateTable::Ledger,
            key: [partition_prefix(p).as_slice(), &[tag]].concat(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn values(rows: &[Row]) -> Vec<&[u8]> {
        rows.iter().map(|r| r.value.as_slice()).collect()
    }

    #[test]
    fn logged_changes_and_positions_commit_together_and_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        open(&store).unwrap();
        let log = Changelog::default();
        let tx = store.db().begin_write().unwrap();
        commit(
            &tx,
            &log,
            &[
                w(1, 1, Some(b"a")),
                w(2, 1, Some(b"b")),
                w(1, 2, Some(b"c")),
            ],
            &[],
        )
        .unwrap();
        put_positions(&tx, &HashMap::from([(("events".to_string(), 1), 42)])).unwrap();
        tx.commit().unwrap();

        let tx = store.db().begin_write().unwrap();
        commit(&tx, &log, &[w(1, 2, None), w(1, 1, Some(b"a2"))], &[]).unwrap();
        tx.commit().unwrap();

        let (rows, meta) = load_partition(&store, 1).unwrap();
        assert_eq!(
            values(&rows),
            [b"a2".as_slice()],
            "put, then overwrite; put, then delete"
        );
        assert_eq!(meta.next_seq, 2);
        assert_eq!(
            values(&load_partition(&store, 2).unwrap().0),
            [b"b".as_slice()]
        );
        assert_eq!(position(&store, "events", 1).unwrap(), Some(42));
        assert_eq!(position(&store, "events", 2).unwrap(), None);
        assert_eq!(positions(&store).unwrap().len(), 1);
    }

    #[test]
    fn a_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        open(&store).unwrap();
        let log = Changelog::default();
        for i in 0..3u8 {
            let tx = store.db().begin_write().unwrap();
            commit(&tx, &log, &[w(1, i, Some(&[i]))], &[]).unwrap();
            tx.commit().unwrap();
        }
        // Snapshot: the state is now just rows 0 and 2 (row 1 was deleted
        // by the batch the snapshot follows).
        let tx = store.db().begin_write().unwrap();
        let snapshot = vec![w(1, 0, Some(&[0])), w(1, 2, Some(&[2]))];
        commit(&tx, &log, &[w(1, 1, None)], &[(1, snapshot)]).unwrap();
        tx.commit().unwrap();
        let (rows, meta) = load_partition(&store, 1).unwrap();
        assert_eq!(values(&rows), [[0u8].as_slice(), [2u8].as_slice()]);
        assert_eq!(meta.log_bytes, 0);
        assert!(meta.snapshot_bytes > 0);
        let tx = store.db().begin_read().unwrap();
        assert_eq!(
            tx.open_table(LOG).unwrap().iter().unwrap().count(),
            0,
            "log dropped"
        );

        // Later changes log on top of the snapshot.
        let tx = store.db().begin_write().unwrap();
        commit(&tx, &log, &[w(1, 0, None)], &[]).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            values(&load_partition(&store, 1).unwrap().0),
            [[2u8].as_slice()]
        );
    }

    #[test]
    fn a_log_is_snapshotted_once_it_outgrows_the_snapshot() {
        let m = LogMeta {
            next_seq: 9,
            log_bytes: SNAPSHOT_MIN_BYTES + 1,
            snapshot_bytes: 0,
        };
        assert!(m.snapshot_due(SNAPSHOT_MIN_BYTES));
        let big = LogMeta {
            snapshot_bytes: SNAPSHOT_MIN_BYTES * 4,
            ..m
        };
        assert!(!big.snapshot_due(SNAPSHOT_MIN_BYTES));
        assert!(big.snapshot_due(SNAPSHOT_MIN_BYTES * 8) == (m.log_bytes > SNAPSHOT_MIN_BYTES * 8));
    }
}
