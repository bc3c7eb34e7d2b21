//! The Raft state machine: walrus-core's [`ClusterState`] in memory, the
//! latest snapshot persisted in redb.
//!
//! `apply` does not write to disk: after a restart the state is rebuilt
//! from the persisted snapshot and openraft re-applies the log from there
//! (up to the persisted committed index). So every snapshot is persisted
//! before openraft may purge the log it covers.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use walrus_core::{ClusterState, CmdResult};

use super::log_store::write_txn;
use super::types::{
    decode, encode, read_err, write_err, Entry, LogId, Snapshot, SnapshotMeta, StorageResult,
    StoredMembership, TypeConfig,
};
use walrus_core::locks::MutexExt;

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
const KEY_CURRENT: &str = "current";

/// A snapshot as stored: its meta and the JSON of the [`ClusterState`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

struct Shared {
    db: Arc<Database>,
    applied: Mutex<Applied>,
    state_tx: watch::Sender<Arc<ClusterState>>,
    snapshot_seq: AtomicU64,
}

/// openraft's state machine over [`ClusterState::apply`]. Clones share state.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl StateMachineStore {
    /// Loads the persisted snapshot, if any, as the starting state.
    pub fn new(db: Arc<Database>) -> anyhow::Result<Self> {
        write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(SNAPSHOT)?;
            Ok(())
        })?;
        let stored = read_stored(&db)?;
        let applied = match &stored {
            Some(s) => Applied {
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                state: serde_json::from_slice(&s.data)?,
            },
            None => Applied {
                last_applied: None,
                membership: StoredMembership::default(),
                state: ClusterState::default(),
            },
        };
        let (state_tx, _) = watch::channel(Arc::new(applied.state.clone()));
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                db,
                applied: Mutex::new(applied),
                state_tx,
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    /// A receiver of every newly applied state.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.state_tx.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        // A panic while holding this lock is a bug in `apply`; the state
        // itself is still consistent (each field is replaced whole).
        self.shared.applied.lock_or_recover()
    }

    async fn persist(&self, stored: StoredSnapshot) -> StorageResult<()> {
        let bytes = encode(&stored).map_err(write_err)?;
        let db = self.shared.db.clone();
        let r = tokio::task::spawn_blocking(move || {
            write_txn(&db, Durability::Immediate, |txn| {
                txn.open_table(SNAPSHOT)?
                    .insert(KEY_CURRENT, bytes.as_slice())?;
                Ok(())
            })
        })
        .await;
        match r {
            Ok(r) => r.map_err(write_err),
            Err(e) => Err(write_err(format!("snapshot write task failed: {e}"))),
        }
    }
}

fn read_stored(db: &Database) -> Result<Option<StoredSnapshot>, anyhow::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    match table.get(KEY_CURRENT)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot> {
        // Clone under the lock, encode outside it: `apply` is not held up.
        let (last_applied, membership, state) = {
            let a = self.lock();
            (a.last_applied, a.membership.clone(), a.state.clone())
        };
        let data = serde_json::to_vec(&state).map_err(read_err)?;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.persist(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId>, StoredMembership)> {
        let a = self.lock();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<CmdResult>>>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut results = Vec::new();
        let snapshot = {
            let mut a = self.lock();
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(batch) => {
                        batch.0.iter().map(|cmd| a.state.apply(cmd)).collect()
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        Vec::new()
                    }
                };
                results.push(result);
            }
            Arc::new(a.state.clone())
        };
        self.shared.state_tx.send_replace(snapshot);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(read_err)?;
        // Persist first: once openraft sees the install done it may purge
        // the log this snapshot replaces.
        self.persist(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await?;
        let published = {
            let mut a = self.lock();
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.state = state;
            Arc::new(a.state.clone())
        };
        self.shared.state_tx.send_replace(published);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot>> {
        let stored = read_stored(&self.shared.db).map_err(read_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
