//! The Raft log, vote, committed index and purge point in redb.
//!
//! Appends are committed with `Durability::None` (readable at once, no
//! fsync) and their `LogFlushed` callbacks go to a flusher thread, which makes
//! every append since its last round durable with one `Immediate` commit and
//! only then reports them flushed: many appends share one fsync (group
//! commit). Every commit runs off the async runtime (`spawn_blocking` or the
//! flusher thread), because a redb commit may fsync.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::types::{
    decode, encode, read_err, write_err, Entry, LogId, StorageResult, TypeConfig, Vote,
};

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
/// Written by every flush so that the flush commit is never empty.
const KEY_FLUSH_SEQ: &str = "flush_seq";

/// Runs `f` in one write transaction and commits it with `durability`.
/// Blocking: call it from `spawn_blocking` or a thread of its own.
pub(crate) fn write_txn<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
) -> Result<T, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    if matches!(durability, Durability::Immediate) {
        txn.set_quick_repair(true);
    }
    let out = f(&txn)?;
    txn.commit()?;
    Ok(out)
}

/// Runs a blocking redb write on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, redb::Error> + Send + 'static,
) -> StorageResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(write_err),
        Err(join) => Err(write_err(format!("redb write task failed: {join}"))),
    }
}

/// openraft's log storage on a redb database (shared with the state machine).
#[derive(Clone)]
pub struct RedbLogStore {
    db: Arc<Database>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl RedbLogStore {
    /// Creates the log tables if needed and starts the flusher thread, which
    /// ends when the last clone of this store is dropped.
    pub fn new(db: Arc<Database>) -> anyhow::Result<Self> {
        write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(flush_db, rx))?;
        Ok(RedbLogStore { db, flusher: tx })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> StorageResult<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> StorageResult<()> {
        let bytes = encode(value).map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, durability, |txn| {
                txn.open_table(META)?.insert(key, bytes.as_slice())?;
                Ok(())
            })
        })
        .await
    }
}

/// Makes pending `Durability::None` commits durable in batches and reports
/// each batch's callbacks after its fsync, in order.
fn flush_loop(db: Arc<Database>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut seq: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        seq += 1;
        let result = write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(META)?
                .insert(KEY_FLUSH_SEQ, seq.to_le_bytes().as_slice())?;
            Ok(())
        });
        for callback in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(format!("raft log flush failed: {e}"))),
            };
            callback.log_io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        // A read transaction does no I/O beyond page reads: fine on the runtime.
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = table.last().map_err(read_err)?;
            match last {
                Some((_, v)) => Some(decode::<Entry>(v.value()).map_err(read_err)?.log_id),
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            // An empty log (everything purged) ends where the purge ended.
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> StorageResult<()> {
        // Immediate: the vote must be on disk before we answer; it also makes
        // every earlier log write durable, keeping vote and log in order.
        self.write_meta(KEY_VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote>> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        // Losing it in a crash only means re-learning it from the leader.
        self.write_meta(KEY_COMMITTED, &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| encode(&e).map(|b| (e.log_id.index, b)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, Durability::None, |txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(index, bytes.as_slice())?;
                }
                Ok(())
            })
        })
        .await?;
        // Readable now; durable when the flusher says so.
        self.flusher
            .send(callback)
            .map_err(|_| write_err("raft log flusher thread has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        let db = self.db.clone();
        // Durable with the next flush, which precedes any acknowledgement of
        // the entries that replace the truncated ones.
        blocking(move || {
            write_txn(&db, Durability::None, |txn| {
                txn.open_table(LOG)?
                    .retain_in(log_id.index.., |_, _| false)?;
                Ok(())
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        let bytes = encode(&log_id).map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, Durability::None, |txn| {
                txn.open_table(LOG)?
                    .retain_in(..=log_id.index, |_, _| false)?;
                txn.open_table(META)?
                    .insert(KEY_LAST_PURGED, bytes.as_slice())?;
                Ok(())
            })
        })
        .await
    }
}
