//! Storage: owns the write-ahead log file and makes the consensus core's
//! persist ops durable, in order, on its own thread (`SyncArbiter(1)`), so
//! fsync never blocks the actors that talk to the network.
//!
//! Group commit: Consensus hands over everything that accumulated while
//! the previous batch was being written; each batch costs one fdatasync.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use actix::prelude::*;
use log::{debug, error};

use super::consensus::Persisted;
use crate::metrics::Metrics;
use crate::raft::PersistOp;
use crate::wal::WalWriter;

const T_STORAGE: &str = "raftkv::storage";

/// Consensus → Storage: make these ops durable in order, then answer
/// `Persisted` with the last op's sequence number.
pub struct PersistBatch {
    pub ops: Vec<PersistOp>,
    pub reply_to: Recipient<Persisted>,
}

impl Message for PersistBatch {
    type Result = ();
}

pub struct StorageActor {
    wal: WalWriter,
    metrics: Arc<Metrics>,
}

impl StorageActor {
    pub fn new(wal: WalWriter, metrics: Arc<Metrics>) -> Self {
        StorageActor { wal, metrics }
    }
}

impl Actor for StorageActor {
    type Context = SyncContext<Self>;
}

impl Handler<PersistBatch> for StorageActor {
    type Result = ();

    fn handle(&mut self, batch: PersistBatch, _: &mut Self::Context) {
        let Some(last) = batch.ops.last().map(|op| op.seq) else { return };
        let entries: usize = batch.ops.iter().map(|op| op.entries.len()).sum();
        let before = self.wal.size();
        let started = Instant::now();
        if let Err(e) = self.wal.append(&batch.ops) {
            // After a failed write or fsync the file's contents are unknown
            // (fsyncgate): the only safe move is to stop.
            error!(target: T_STORAGE, "write-ahead log {}: {e}; stopping the node", self.wal.path().display());
            log::logger().flush();
            std::process::exit(70);
        }
        let took = started.elapsed();
        self.metrics.fsync_seconds.observe(took.as_secs_f64());
        self.metrics.batch_entries.observe(entries as f64);
        self.metrics.wal_bytes.fetch_add(self.wal.size() - before, Relaxed);
        debug!(
            target: T_STORAGE,
            "persisted ops ..={last}: {} ops, {entries} entries, {} bytes in {:?}",
            batch.ops.len(),
            self.wal.size() - before,
            took
        );
        batch.reply_to.do_send(Persisted { seq: last });
    }
}
