//! Snapshotter: owns the snapshot directory and does its slow IO on its
//! own thread (`SyncArbiter(1)`), so that neither the WAL's fsyncs
//! (Storage) nor applying (StateMachine) wait for a snapshot to be
//! written (etcd #2370: snapshot IO competing with the WAL caused leader
//! churn).
//!
//! * `WriteSnapshot`: a frozen state machine → `<data>/snap/<index>-<term>.snap`
//!   (temp file, fsync, rename, directory fsync, the newest two kept); then
//!   `SnapshotSaved` to Consensus.
//! * `ReceiveChunk`: a snapshot streamed by the leader, staged as
//!   `*.partial` and moved into place only once complete and verified. A
//!   crash meanwhile leaves the node with its old state; the partial file
//!   is removed at the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use actix::prelude::*;
use log::{debug, info, warn};

use super::messages::{ReceiveChunk, SnapshotInfo, SnapshotSaved, WriteSnapshot};
use crate::metrics::Metrics;
use crate::raft::NodeId;
use crate::snapshot::{SnapshotDir, Staging};

pub const T_SNAPSHOT: &str = "raftkv::snapshot";
/// Snapshot files kept: the newest and the one before it.
pub const KEEP_SNAPSHOTS: usize = 2;

pub struct Snapshotter {
    id: NodeId,
    dir: SnapshotDir,
    /// Transfers being received, by sending leader.
    staging: HashMap<NodeId, Staging>,
    metrics: Arc<Metrics>,
}

impl Snapshotter {
    pub fn new(id: NodeId, dir: SnapshotDir, metrics: Arc<Metrics>) -> Self {
        metrics.snapshot_disk_bytes.store(dir.disk_bytes(), Relaxed);
        Snapshotter { id, dir, staging: HashMap::new(), metrics }
    }
}

impl Actor for Snapshotter {
    type Context = SyncContext<Self>;
}

impl Handler<WriteSnapshot> for Snapshotter {
    type Result = ();

    fn handle(&mut self, msg: WriteSnapshot, _: &mut Self::Context) {
        let started = Instant::now();
        let meta = msg.meta;
        let result = self
            .dir
            .write(&meta, KEEP_SNAPSHOTS, |out| msg.frozen.write_to(out))
            .map(|saved| SnapshotInfo {
                index: meta.index,
                term: meta.term,
                bytes: saved.bytes,
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                path: saved.path.display().to_string(),
            })
            .map_err(|e| e.to_string());
        match &result {
            Ok(info) => debug!(
                target: T_SNAPSHOT,
                "node {} wrote snapshot at {} (term {}): {} bytes in {:.1} ms, {}",
                self.id,
                meta.index,
                meta.term,
                info.bytes,
                info.duration_ms,
                info.path
            ),
            Err(e) => warn!(target: T_SNAPSHOT, "node {} could not write snapshot at {}: {e}", self.id, meta.index),
        }
        self.metrics.snapshot_disk_bytes.store(self.dir.disk_bytes(), Relaxed);
        msg.reply_to.do_send(SnapshotSaved { meta, result });
    }
}

impl Handler<ReceiveChunk> for Snapshotter {
    type Result = Result<bool, String>;

    fn handle(&mut self, msg: ReceiveChunk, _: &mut Self::Context) -> Self::Result {
        let from = msg.from;
        if msg.offset == 0 {
            // A new transfer from this leader replaces any earlier one.
            self.staging.remove(&from);
            let staging = self.dir.receive(&msg.meta).map_err(|e| e.to_string())?;
            info!(
                target: T_SNAPSHOT,
                "node {} receiving snapshot at {} (term {}) from {from}: {} bytes",
                self.id,
                msg.meta.index,
                msg.meta.term,
                msg.total
            );
            self.staging.insert(from, staging);
        }
        let Some(staging) = self.staging.get_mut(&from) else {
            return Err(format!("no transfer from node {from} is in progress; start again at offset 0"));
        };
        if *staging.meta() != msg.meta {
            return Err(format!(
                "chunk of snapshot {} while receiving snapshot {} from node {from}",
                msg.meta.index,
                staging.meta().index
            ));
        }
        let res = staging.write_chunk(msg.offset, &msg.data).map_err(|e| e.to_string());
        if let Err(e) = res {
            self.staging.remove(&from);
            return Err(e);
        }
        let have = staging.len();
        debug!(target: T_SNAPSHOT, "node {} snapshot from {from}: {have}/{} bytes", self.id, msg.total);
        if have < msg.total {
            return Ok(false);
        }
        let staging = self.staging.remove(&from).expect("present");
        if have > msg.total {
            return Err(format!("received {have} bytes of a {}-byte snapshot", msg.total));
        }
        let snap = staging.finish(KEEP_SNAPSHOTS).map_err(|e| e.to_string());
        self.metrics.snapshot_disk_bytes.store(self.dir.disk_bytes(), Relaxed);
        let snap = snap?;
        info!(
            target: T_SNAPSHOT,
            "node {} received snapshot at {} (term {}) from {from}: {} bytes, verified, {}",
            self.id,
            snap.meta.index,
            snap.meta.term,
            snap.file_bytes,
            snap.path.display()
        );
        Ok(true)
    }
}
