//! StateMachine: applies committed entries to the key-value map in log
//! order, answers the clients waiting for them, and serves reads.
//!
//! Consensus sends `Apply` for entries up to an index before it sends a
//! `ServeRead` at that index, and an actor's mailbox keeps one sender's
//! messages in order, so a read is always served after everything it must
//! observe has been applied.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;
use log::{debug, error, trace};

use super::{ClientOutcome, ClientReply};
use crate::kv::{Command, KvStore, Query, QueryResult};
use crate::metrics::Metrics;
use crate::raft::{Entry, EntryData, Index, NodeId};

const T_SM: &str = "raftkv::state_machine";

/// Consensus → StateMachine: committed entries, in order, and the clients
/// waiting for some of them (by log index).
pub struct Apply {
    pub entries: Vec<Entry>,
    pub waiting: Vec<(Index, ClientReply)>,
}

impl Message for Apply {
    type Result = ();
}

/// Consensus → StateMachine: a linearizable read confirmed at `index`.
pub struct ServeRead {
    pub index: Index,
    pub query: Query,
    pub reply: ClientReply,
}

impl Message for ServeRead {
    type Result = ();
}

/// HTTP → StateMachine: a read served from local state (`consistency=stale`).
pub struct LocalRead {
    pub query: Query,
}

impl Message for LocalRead {
    type Result = (QueryResult, Index);
}

/// HTTP → StateMachine: the index applied so far.
pub struct GetApplied;

impl Message for GetApplied {
    type Result = Index;
}

pub struct StateMachineActor {
    id: NodeId,
    store: KvStore,
    metrics: Arc<Metrics>,
}

impl StateMachineActor {
    pub fn new(id: NodeId, metrics: Arc<Metrics>) -> Self {
        StateMachineActor { id, store: KvStore::new(), metrics }
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
                EntryData::Noop => {
                    self.store.skip(e.index);
                    None
                }
                EntryData::Command(bytes) => match Command::decode(bytes) {
                    Ok(cmd) => {
                        trace!(target: T_SM, "node {} applies {} ({})", self.id, e.index, cmd.key());
                        Some(self.store.apply(e.index, cmd))
                    }
                    Err(err) => {
                        // Every node decodes the same bytes the same way, so
                        // skipping keeps replicas identical; it means a bug.
                        error!(target: T_SM, "node {} cannot decode entry {}: {err}; skipping it", self.id, e.index);
                        self.store.skip(e.index);
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
        self.metrics.applied_index.store(self.store.applied(), Relaxed);
        self.metrics.keys.store(self.store.len() as u64, Relaxed);
        debug!(target: T_SM, "node {} applied up to {}", self.id, self.store.applied());
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
