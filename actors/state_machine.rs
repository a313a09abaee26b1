//! StateMachine: applies committed entries to the key-value map in log
//! order, answers the clients waiting for them, and serves reads.
//!
//! Consensus sends `Apply` for entries up to an index before it sends a
//! `ServeRead` at that index, and an actor's mailbox keeps one sender's
//! messages in order, so a read is always served after everything it must
//! observe has been applied.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;
use log::{debug, error, info, trace};

use super::ClientOutcome;
use super::messages::{
    Apply, DueLeases, GetApplied, LocalRead, Restore, ServeRead, StartWatch, TakeSnapshot, WatchRefused, WatchStarted,
    WriteSnapshot,
};
use super::snapshotter::Snapshotter;
use super::watch_hub::{CancelAll, Cancelled, Publish, Register, WatchHub, Watcher};
use crate::kv::KvStore;
use crate::kv::watch::Limits;
use crate::metrics::Metrics;
use crate::raft::{EntryData, Index, NodeId};
use crate::snapshot::SnapshotDir;
use crate::state_machine::StateMachine;

const T_SM: &str = "raftkv::state_machine";

pub struct StateMachineActor {
    id: NodeId,
    store: KvStore,
    metrics: Arc<Metrics>,
    /// Where snapshots installed from the leader are read from.
    snapshots: SnapshotDir,
    snapshotter: Addr<Snapshotter>,
    watch: WatchPlumbing,
}

/// What the state machine needs to serve watchers: where new events go,
/// how many watchers there are (counted up here on registration, down by
/// the hub when one ends), the history window and the watcher limit.
pub struct WatchPlumbing {
    pub hub: Addr<WatchHub>,
    pub count: Arc<AtomicUsize>,
    pub limits: Limits,
    pub max_watchers: usize,
    pub next_id: u64,
}

impl StateMachineActor {
    /// `store` is the state recovered at start-up (from the latest snapshot).
    pub fn new(
        id: NodeId,
        store: KvStore,
        snapshots: SnapshotDir,
        snapshotter: Addr<Snapshotter>,
        watch: WatchPlumbing,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut store = store;
        let applied = store.applied();
        store.history_mut().set_limits(watch.limits, applied);
        metrics.applied_index.store(applied, Relaxed);
        metrics.keys.store(store.len() as u64, Relaxed);
        StateMachineActor { id, store, metrics, snapshots, snapshotter, watch }
    }

    /// Hands the events of what was just applied to the watchers (when
    /// there are any; with none, no events are collected at all).
    fn publish(&mut self) {
        let watching = self.watch.count.load(Relaxed) > 0;
        let history = self.store.history_mut();
        if watching {
            let events = history.take_fresh();
            self.watch.hub.do_send(Publish { events, applied: self.store.applied() });
        } else {
            history.set_publishing(false);
        }
    }
}

impl Actor for StateMachineActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
    }
}

impl Handler<Apply> for StateMachineActor {
    type Result = ();

    fn handle(&mut self, msg: Apply, _: &mut Self::Context) {
        let mut waiting = msg.waiting.into_iter().peekable();
        for e in msg.entries {
            let result = match e.data {
                // A configuration is the consensus core's; the store only
                // moves its applied index past it.
                EntryData::Noop | EntryData::Config(_) => {
                    self.store.skip(e.index);
                    None
                }
                EntryData::Command(bytes) => match StateMachine::apply(&mut self.store, e.index, bytes) {
                    Ok(result) => {
                        trace!(target: T_SM, "node {} applied {}: {result:?}", self.id, e.index);
                        Some(result)
                    }
                    Err(err) => {
                        // Every node decodes the same bytes the same way, so
                        // skipping keeps replicas identical; it means a bug.
                        error!(target: T_SM, "node {} cannot decode entry {}: {err}; skipped it", self.id, e.index);
                        None
                    }
                },
            };
            while let Some((idx, _)) = waiting.peek() {
                if *idx > e.index {
                    break;
                }
                let (idx, reply) = waiting.next().expect("peeked");
                if idx == e.index
                    && let Some(r) = &result
                {
                    let _ = reply.send(Ok(ClientOutcome::Write(r.clone())));
                }
            }
        }
        self.publish();
        self.metrics.applied_index.store(self.store.applied(), Relaxed);
        self.metrics.keys.store(self.store.len() as u64, Relaxed);
        debug!(target: T_SM, "node {} applied up to {}", self.id, self.store.applied());
    }
}

impl Handler<DueLeases> for StateMachineActor {
    type Result = MessageResult<DueLeases>;

    fn handle(&mut self, msg: DueLeases, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.store.leases().due(msg.now_ms, msg.max))
    }
}

impl Handler<StartWatch> for StateMachineActor {
    type Result = Result<WatchStarted, WatchRefused>;

    fn handle(&mut self, msg: StartWatch, _: &mut Self::Context) -> Self::Result {
        let applied = self.store.applied();
        let backlog = self
            .store
            .history()
            .since(msg.from.unwrap_or(applied + 1))
            .map_err(|c| WatchRefused::Compacted { oldest: c.oldest, current: applied })?;
        // Counted here, before any later Apply, so the events of those are
        // collected and published; the hub counts down when it ends.
        if self.watch.count.fetch_add(1, Relaxed) >= self.watch.max_watchers {
            self.watch.count.fetch_sub(1, Relaxed);
            return Err(WatchRefused::TooMany { limit: self.watch.max_watchers });
        }
        self.store.history_mut().set_publishing(true);
        self.watch.next_id += 1;
        let watcher =
            Watcher { id: self.watch.next_id, filter: msg.filter, after: applied, tx: msg.tx, cancel: msg.cancel };
        self.watch.hub.do_send(Register(watcher));
        Ok(WatchStarted { id: self.watch.next_id, backlog, after: applied })
    }
}

impl Handler<ServeRead> for StateMachineActor {
    type Result = ();

    fn handle(&mut self, msg: ServeRead, _: &mut Self::Context) {
        assert!(
            self.store.applied() >= msg.index,
            "read at {} served before apply reached it ({})",
            msg.index,
            self.store.applied()
        );
        let _ = msg.reply.send(Ok(ClientOutcome::Read(self.store.query(&msg.query))));
    }
}

impl Handler<LocalRead> for StateMachineActor {
    type Result = MessageResult<LocalRead>;

    fn handle(&mut self, msg: LocalRead, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.store.query(&msg.query), self.store.applied()))
    }
}

impl Handler<GetApplied> for StateMachineActor {
    type Result = Index;

    fn handle(&mut self, _: GetApplied, _: &mut Self::Context) -> Index {
        self.store.applied()
    }
}

impl Handler<TakeSnapshot> for StateMachineActor {
    type Result = ();

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Self::Context) {
        assert_eq!(
            self.store.applied(),
            msg.meta.index,
            "snapshot at {} requested with the state machine at {}",
            msg.meta.index,
            self.store.applied()
        );
        // O(1): the frozen copy shares the map; applying goes on.
        let frozen = Box::new(self.store.freeze());
        debug!(target: T_SM, "node {} froze its state at {} for a snapshot", self.id, msg.meta.index);
        self.snapshotter.do_send(WriteSnapshot { meta: msg.meta, frozen, reply_to: msg.reply_to });
    }
}

impl Handler<Restore> for StateMachineActor {
    type Result = ();

    fn handle(&mut self, msg: Restore, _: &mut Self::Context) {
        let meta = msg.meta;
        let path = self.snapshots.path_of(meta.index, meta.term);
        // The file was verified when it was received and the core only
        // installs what is in place: failing here is a broken invariant.
        let snap = match self.snapshots.load(&path) {
            Ok(s) => s,
            Err(e) => panic!("cannot restore the installed snapshot: {e}"),
        };
        let mut store = match KvStore::restore(meta.index, snap.data) {
            Ok(s) => s,
            Err(e) => panic!("cannot restore the installed snapshot {}: {e}", path.display()),
        };
        store.history_mut().set_limits(self.watch.limits, meta.index);
        // Watchers go on from the new state if its history covers the
        // changes between the old state and it; otherwise they are ended
        // (and told from where the history resumes).
        if self.watch.count.load(Relaxed) > 0 {
            store.history_mut().set_publishing(true);
            match store.history().since(self.store.applied() + 1) {
                Ok(missed) => {
                    let events = missed.into_iter().collect();
                    self.watch.hub.do_send(Publish { events, applied: meta.index });
                }
                Err(c) => {
                    self.watch.hub.do_send(CancelAll(Cancelled::HistoryGap { oldest: c.oldest }));
                }
            }
        }
        info!(
            target: T_SM,
            "node {} restored snapshot at {} (term {}): {} keys, replacing state at {}",
            self.id,
            meta.index,
            meta.term,
            store.len(),
            self.store.applied()
        );
        self.store = store;
        self.metrics.applied_index.store(self.store.applied(), Relaxed);
        self.metrics.keys.store(self.store.len() as u64, Relaxed);
    }
}
