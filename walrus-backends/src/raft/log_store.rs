//! The Raft log, vote, committed index and purge point in redb.
//!
//! The log since the last purge is also kept in memory (snapshots bound it:
//! see `RaftConfig::snapshot_every`), so reads never touch the disk and a
//! write is readable the moment its call returns. Every write goes, in call
//! order, to one writer thread, which applies everything queued since its
//! last round in ONE redb transaction with one fsync (group commit) and only
//! then reports the appends flushed and the votes saved. Commits never run
//! on the async runtime.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

use super::types::{decode, encode, write_err, Entry, LogId, StorageResult, TypeConfig, Vote};
use walrus_core::locks::MutexExt;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

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

/// A write for the writer thread, in the order the calls were made.
enum Op {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    Truncate(u64),
    Purge(u64, Vec<u8>),
    Vote(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Committed(Vec<u8>),
}

/// What the log holds, as of the last call (durable or not yet).
struct Mem {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// openraft's log storage on a redb database (shared with the state machine).
#[derive(Clone)]
pub struct RedbLogStore {
    mem: Arc<Mutex<Mem>>,
    writer: mpsc::Sender<Op>,
}

impl RedbLogStore {
    /// Loads the log from `db` (creating the tables if needed) and starts the
    /// writer thread, which ends when the last clone of this store is dropped.
    pub fn new(db: Arc<Database>) -> anyhow::Result<Self> {
        write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        let mem = load(&db)?;
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(db, rx))?;
        Ok(RedbLogStore {
            mem: Arc::new(Mutex::new(mem)),
            writer: tx,
        })
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        // Every update of `Mem` is a single map or field operation; a panic
        // elsewhere while holding the lock leaves it consistent.
        self.mem.lock_or_recover()
    }

    // StorageError is openraft's type; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn send(&self, op: Op) -> StorageResult<()> {
        self.writer
            .send(op)
            .map_err(|_| write_err("the raft log writer thread has stopped"))
    }
}

fn load(db: &Database) -> anyhow::Result<Mem> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let mut entries = BTreeMap::new();
    for item in log.iter()? {
        let (k, v) = item?;
        entries.insert(k.value(), decode::<Entry>(v.value())?);
    }
    let meta = txn.open_table(META)?;
    let get = |key: &str| -> anyhow::Result<Option<Vec<u8>>> {
        Ok(meta.get(key)?.map(|v| v.value().to_vec()))
    };
    Ok(Mem {
        entries,
        last_purged: get(KEY_LAST_PURGED)?.map(|b| decode(&b)).transpose()?,
        vote: get(KEY_VOTE)?.map(|b| decode(&b)).transpose()?,
        committed: get(KEY_COMMITTED)?
            .map(|b| decode::<Option<LogId>>(&b))
            .transpose()?
            .flatten(),
    })
}

/// Applies the queued writes in batches: one transaction and one fsync per
/// batch, then the batch's completions, in order.
fn write_loop(db: Arc<Database>, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = write_txn(&db, Durability::Immediate, |txn| {
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            for op in &batch {
                match op {
                    Op::Append(entries, _) => {
                        for (index, bytes) in entries {
                            log.insert(index, bytes.as_slice())?;
                        }
                    }
                    Op::Truncate(from) => log.retain_in(*from.., |_, _| false)?,
                    Op::Purge(upto, last_purged) => {
                        log.retain_in(..=*upto, |_, _| false)?;
                        meta.insert(KEY_LAST_PURGED, last_purged.as_slice())?;
                    }
                    Op::Vote(vote, _) => {
                        meta.insert(KEY_VOTE, vote.as_slice())?;
                    }
                    Op::Committed(committed) => {
                        meta.insert(KEY_COMMITTED, committed.as_slice())?;
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| format!("raft log write failed: {e}"));
        for op in batch {
            match op {
                Op::Append(_, callback) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                Op::Vote(_, done) => {
                    // The caller may have given up waiting; nothing to tell then.
                    let _ = done.send(result.clone());
                }
                Op::Truncate(_) | Op::Purge(..) | Op::Committed(_) => {}
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        Ok(self
            .mem()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let mem = self.mem();
        let last = mem.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            // An empty log (everything purged) ends where the purge ended.
            last_log_id: last.or(mem.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> StorageResult<()> {
        let bytes = encode(vote).map_err(write_err)?;
        let (done, saved) = oneshot::channel();
        self.mem().vote = Some(*vote);
        self.send(Op::Vote(bytes, done))?;
        // On disk before we return (and with it every earlier log write).
        match saved.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(e)),
            Err(_) => Err(write_err(
                "the raft log writer thread stopped before saving the vote",
            )),
        }
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote>> {
        Ok(self.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        let bytes = encode(&committed).map_err(write_err)?;
        self.mem().committed = committed;
        // Not waited for: losing it in a crash only means re-learning it.
        self.send(Op::Committed(bytes))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        Ok(self.mem().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|e| encode(e).map(|b| (e.log_id.index, b)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(write_err)?;
        {
            let mut mem = self.mem();
            for e in entries {
                mem.entries.insert(e.log_id.index, e);
            }
        }
        // Readable now; the callback fires when the writer has made it durable.
        self.send(Op::Append(encoded, callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        self.mem().entries.split_off(&log_id.index);
        // Durable no later than the appends that replace these entries.
        self.send(Op::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        let bytes = encode(&log_id).map_err(write_err)?;
        {
            let mut mem = self.mem();
            mem.entries = mem.entries.split_off(&(log_id.index + 1));
            mem.last_purged = Some(log_id);
        }
        self.send(Op::Purge(log_id.index, bytes))
    }
}
