//! Start-up: the latest snapshot file, then the write-ahead log after it.
//!
//! 1. The newest file in `<data>/snap/` is loaded and verified. If it is
//!    corrupt the node refuses to start, naming the file. The older file is
//!    not used in its place: the WAL was purged up to the newer snapshot's
//!    compaction point, so the entries between the two are gone, and
//!    starting from the older one would silently lose committed writes.
//! 2. The WAL is replayed (segments after the last purge).
//! 3. The log is cut to continue after the snapshot
//!    (`raft::log_after_snapshot`). When what the WAL holds does not
//!    continue the snapshot (a snapshot installed from the leader whose
//!    WAL record was not yet written, or a WAL that ends before it), a
//!    record saying "the log starts after the snapshot" is appended first,
//!    so the WAL and the snapshot agree before anything else is written.
//!
//! Restart time is therefore bounded by the state's size plus the log
//! after the last snapshot, not by the history's length.

use std::path::Path;
use std::time::Instant;

use log::info;

use crate::actors::consensus::Boot;
use crate::kv::KvStore;
use crate::raft::{PersistOp, log_after_snapshot};
use crate::snapshot::SnapshotDir;
use crate::state_machine::StateMachine;
use crate::wal::{self, WalWriter};

const T_STORAGE: &str = "raftkv::storage";

/// What a node starts from.
pub struct Recovered {
    pub boot: Boot,
    pub store: KvStore,
    pub snapshots: SnapshotDir,
    pub wal: WalWriter,
}

/// Loads `data_dir`. Errors are complete sentences for the operator.
pub fn recover(data_dir: &Path, segment_bytes: u64) -> Result<Recovered, String> {
    let started = Instant::now();
    // The WAL first: it takes the data directory's lock.
    let (rec, mut writer) = wal::open(data_dir, segment_bytes).map_err(|e| e.to_string())?;
    let snapshots = SnapshotDir::open(data_dir).map_err(|e| e.to_string())?;
    let latest = snapshots.latest().map_err(|e| e.to_string())?;
    let Some(snap) = latest else {
        if rec.base > 0 {
            return Err(format!(
                "the write-ahead log in {} starts after entry {}, but {} holds no snapshot: the entries before \
                 it are gone. Restore the data directory from a backup, or rebuild this node from the cluster",
                data_dir.display(),
                rec.base,
                snapshots.path().display()
            ));
        }
        let boot = Boot { hard_state: rec.hard_state, snapshot: None, snapshot_bytes: 0, entries: rec.entries };
        return Ok(Recovered { boot, store: KvStore::new(), snapshots, wal: writer });
    };
    let meta = snap.meta.clone();
    let store = KvStore::restore(meta.index, snap.data).map_err(|e| {
        format!("snapshot file {} does not hold a valid state: {e}; refusing to start", snap.path.display())
    })?;
    let wal_entries = rec.entries.len();
    let after = log_after_snapshot(meta.index, meta.term, rec.base, rec.entries).map_err(|e| {
        format!(
            "the write-ahead log in {} does not fit snapshot {}: {e}; refusing to start",
            data_dir.display(),
            snap.path.display()
        )
    })?;
    if after.reset_wal {
        let op = PersistOp { snapshot: Some(meta.clone()), ..Default::default() };
        writer
            .append(std::slice::from_ref(&op))
            .map_err(|e| format!("write-ahead log {}: {e}", writer.path().display()))?;
        info!(
            target: T_STORAGE,
            "the write-ahead log did not continue snapshot {}; it now starts after it",
            meta.index
        );
    }
    info!(
        target: T_STORAGE,
        "restored snapshot {} (index {}, term {}, {} keys, {} bytes) and {} of {wal_entries} WAL entries after it in {:?}",
        snap.path.display(),
        meta.index,
        meta.term,
        store.len(),
        snap.file_bytes,
        after.entries.len(),
        started.elapsed()
    );
    let snapshot_bytes = snap.file_bytes;
    let boot = Boot { hard_state: rec.hard_state, snapshot: Some(meta), snapshot_bytes, entries: after.entries };
    Ok(Recovered { boot, store, snapshots, wal: writer })
}
