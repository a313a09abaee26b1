//! WatchHub: hands new events to the watchers that follow their keys, on
//! its own thread, so that however many watchers there are and however
//! slow they read, applying entries never waits for them.
//!
//! A watcher registers through the StateMachine (which gives it the
//! history up to the index applied at that moment and forwards the
//! registration here before any later events), so what it gets from the
//! history and what it gets from here meet without a gap or an overlap.
//! Each watcher has a bounded buffer; one whose buffer is full when an
//! event for it comes is cancelled (told why, and where to resume), never
//! waited for. Every `progress` interval each watcher is told the revision
//! everything up to which it has been sent, so a quiet one can resume
//! after a reconnect without replaying or missing anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info};
use tokio::sync::{mpsc, oneshot};

use crate::kv::watch::{Event, Filter};
use crate::metrics::Metrics;
use crate::raft::{Index, NodeId};

const T_WATCH: &str = "raftkv::watch";

/// What travels to one watcher.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// The events of one applied batch that match the watcher's filter:
    /// whole revisions, in order.
    Events(Vec<Arc<Event>>),
    /// Everything up to this revision has been sent.
    Progress(Index),
}

/// Why a watcher was ended by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// Its buffer was full: it read more slowly than changes came.
    SlowWatcher,
    /// The node installed a snapshot from the leader that does not hold
    /// the history between its old state and the new one.
    HistoryGap { oldest: Index },
}

/// A watcher's sending half, registered with the hub.
pub struct Watcher {
    pub id: u64,
    pub filter: Filter,
    /// Events up to this revision came from the history.
    pub after: Index,
    pub tx: mpsc::Sender<WatchItem>,
    pub cancel: oneshot::Sender<Cancelled>,
}

/// StateMachine → WatchHub: a new watcher.
pub struct Register(pub Watcher);

impl Message for Register {
    type Result = ();
}

/// StateMachine → WatchHub: the events of entries just applied (in order),
/// and the index applied now.
pub struct Publish {
    pub events: Vec<Arc<Event>>,
    pub applied: Index,
}

impl Message for Publish {
    type Result = ();
}

/// HTTP → WatchHub: a watcher's client went away (its stream or blocking
/// read ended).
pub struct Unregister(pub u64);

impl Message for Unregister {
    type Result = ();
}

/// StateMachine → WatchHub: end every watcher (the history they follow
/// has a gap on this node).
pub struct CancelAll(pub Cancelled);

impl Message for CancelAll {
    type Result = ();
}

struct Entry {
    filter: Filter,
    after: Index,
    tx: mpsc::Sender<WatchItem>,
    cancel: Option<oneshot::Sender<Cancelled>>,
}

pub struct WatchHub {
    id: NodeId,
    watchers: HashMap<u64, Entry>,
    /// Watchers of one key, by key; the others (prefixes) are scanned.
    by_key: HashMap<String, Vec<u64>>,
    prefixed: Vec<u64>,
    applied: Index,
    /// Watchers registered and not yet ended (the StateMachine counts
    /// them up, this actor down).
    count: Arc<AtomicUsize>,
    progress: Duration,
    /// The slice of watchers the next progress tick is for.
    slice: u64,
    metrics: Arc<Metrics>,
}

const PROGRESS_SLICES: u64 = 20;

impl WatchHub {
    pub fn new(id: NodeId, count: Arc<AtomicUsize>, progress: Duration, metrics: Arc<Metrics>) -> Self {
        WatchHub {
            id,
            watchers: HashMap::new(),
            by_key: HashMap::new(),
            prefixed: Vec::new(),
            applied: 0,
            count,
            progress,
            slice: 0,
            metrics,
        }
    }

    fn remove(&mut self, id: u64, why: Option<Cancelled>) {
        let Some(mut w) = self.watchers.remove(&id) else { return };
        match &w.filter {
            Filter::Key(k) => {
                if let Some(ids) = self.by_key.get_mut(k) {
                    ids.retain(|&i| i != id);
                    if ids.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            Filter::Prefix(_) => self.prefixed.retain(|&i| i != id),
        }
        if let (Some(why), Some(cancel)) = (why, w.cancel.take()) {
            let _ = cancel.send(why);
            self.metrics.watchers_cancelled.fetch_add(1, Relaxed);
            debug!(target: T_WATCH, "node {} cancelled watcher {id}: {why:?}", self.id);
        }
        self.count.fetch_sub(1, Relaxed);
        self.metrics.watchers.store(self.watchers.len() as u64, Relaxed);
    }

    /// Sends a batch's events to a watcher; `Err` if it has to go.
    fn send(&self, id: u64, events: Vec<Arc<Event>>) -> Result<(), (u64, Option<Cancelled>)> {
        let Some(w) = self.watchers.get(&id) else { return Ok(()) };
        let n = events.len() as u64;
        match w.tx.try_send(WatchItem::Events(events)) {
            Ok(()) => {
                self.metrics.watch_events_sent.fetch_add(n, Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err((id, Some(Cancelled::SlowWatcher))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err((id, None)),
        }
    }

    fn publish(&mut self, events: &[Arc<Event>]) {
        // One item per watcher for the whole batch (whole revisions, in
        // order): one wake-up and one write per watcher, however many
        // entries the batch applied.
        let mut per: HashMap<u64, Vec<Arc<Event>>> = HashMap::new();
        for e in events {
            let keyed = self.by_key.get(e.key.as_str()).into_iter().flatten();
            let prefixed = self.prefixed.iter().filter(|id| self.watchers[id].filter.matches(&e.key));
            for &id in keyed.chain(prefixed) {
                if self.watchers[&id].after < e.revision {
                    per.entry(id).or_default().push(e.clone());
                }
            }
        }
        let gone: Vec<_> = per.into_iter().filter_map(|(id, evs)| self.send(id, evs).err()).collect();
        for (id, why) in gone {
            self.remove(id, why);
        }
    }

    /// Progress to one in `PROGRESS_SLICES` of the watchers (by id), so that
    /// each hears every `progress` interval and thousands of idle watchers
    /// do not all wake at once.
    fn tell_progress(&mut self) {
        self.slice = (self.slice + 1) % PROGRESS_SLICES;
        let slice = self.slice;
        let mut gone = Vec::new();
        for (&id, w) in self.watchers.iter().filter(|(id, _)| *id % PROGRESS_SLICES == slice) {
            // A full buffer is not cancelled for a progress note: it will
            // be when the next event for it comes.
            if let Err(mpsc::error::TrySendError::Closed(_)) =
                w.tx.try_send(WatchItem::Progress(self.applied.max(w.after)))
            {
                gone.push(id);
            }
        }
        for id in gone {
            self.remove(id, None);
        }
    }
}

impl Actor for WatchHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
        ctx.run_interval(self.progress / PROGRESS_SLICES as u32, |hub, _| hub.tell_progress());
    }
}

impl Handler<Register> for WatchHub {
    type Result = ();

    fn handle(&mut self, Register(w): Register, _: &mut Self::Context) {
        match &w.filter {
            Filter::Key(k) => self.by_key.entry(k.clone()).or_default().push(w.id),
            Filter::Prefix(_) => self.prefixed.push(w.id),
        }
        debug!(target: T_WATCH, "node {} watcher {} of {:?} from revision {}", self.id, w.id, w.filter, w.after + 1);
        self.watchers.insert(w.id, Entry { filter: w.filter, after: w.after, tx: w.tx, cancel: Some(w.cancel) });
        self.metrics.watchers.store(self.watchers.len() as u64, Relaxed);
    }
}

impl Handler<Publish> for WatchHub {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) {
        self.publish(&msg.events);
        self.applied = self.applied.max(msg.applied);
    }
}

impl Handler<Unregister> for WatchHub {
    type Result = ();

    fn handle(&mut self, Unregister(id): Unregister, _: &mut Self::Context) {
        self.remove(id, None);
    }
}

impl Handler<CancelAll> for WatchHub {
    type Result = ();

    fn handle(&mut self, CancelAll(why): CancelAll, _: &mut Self::Context) {
        let ids: Vec<u64> = self.watchers.keys().copied().collect();
        if !ids.is_empty() {
            info!(target: T_WATCH, "node {} ends its {} watchers: {why:?}", self.id, ids.len());
        }
        for id in ids {
            self.remove(id, Some(why));
        }
    }
}
