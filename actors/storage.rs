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
use log::{debug, error, info};

use super::messages::{PersistBatch, Persisted, Purge};
use crate::metrics::Metrics;
use crate::wal::WalWriter;

const T_STORAGE: &str = "raftkv::storage";

pub struct StorageActor {
    wal: WalWriter,
    metrics: Arc<Metrics>,
}

impl StorageActor {
    pub fn new(wal: WalWriter, metrics: Arc<Metrics>) -> Self {
        let act = StorageActor { wal, metrics };
        act.observe();
        act
    }

    fn observe(&self) {
        self.metrics.wal_disk_bytes.store(self.wal.disk_bytes(), Relaxed);
        self.metrics.wal_segments.store(self.wal.segments() as u64, Relaxed);
    }

    /// After a failed write, fsync or delete the files' state is unknown
    /// (fsyncgate): the only safe move is to stop.
    fn fail(&self, what: &str, e: std::io::Error) -> ! {
        error!(target: T_STORAGE, "write-ahead log {}: {what}: {e}; stopping the node", self.wal.path().display());
        log::logger().flush();
        std::process::exit(70);
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
        let before = self.wal.disk_bytes();
        let started = Instant::now();
        if let Err(e) = self.wal.append(&batch.ops) {
            self.fail("append", e);
        }
        let took = started.elapsed();
        self.metrics.fsync_seconds.observe(took.as_secs_f64());
        self.metrics.batch_entries.observe(entries as f64);
        self.metrics.wal_bytes.fetch_add(self.wal.disk_bytes() - before, Relaxed);
        debug!(
            target: T_STORAGE,
            "persisted ops ..={last}: {} ops, {entries} entries, {} bytes in {:?}",
            batch.ops.len(),
            self.wal.disk_bytes() - before,
            took
        );
        self.observe();
        batch.reply_to.do_send(Persisted { seq: last });
    }
}

impl Handler<Purge> for StorageActor {
    type Result = ();

    fn handle(&mut self, msg: Purge, _: &mut Self::Context) {
        match self.wal.purge(msg.upto) {
            Ok(p) if p.segments > 0 => info!(
                target: T_STORAGE,
                "purged {} WAL segments ({} bytes) holding only entries up to {}; {} segments, {} bytes remain",
                p.segments,
                p.bytes,
                msg.upto,
                self.wal.segments(),
                self.wal.disk_bytes()
            ),
            Ok(_) => debug!(target: T_STORAGE, "purge up to {}: no whole segment to delete", msg.upto),
            Err(e) => self.fail("purge", e),
        }
        self.observe();
    }
}
