//! The actors of one raftkv node and who sends what to whom.
//!
//! ```text
//!                 Tick                          PersistBatch
//!  ElectionTimer ───────►┐          ┌──────────────────────────► Storage (own thread)
//!                        │          │ ◄────────── Persisted ─────┘
//!  HTTP front door ──────┤          │
//!   InboundRpc (/raft/*) ├─► Consensus ──── SendRpc ───────────► Replicator (one per peer)
//!   ClientWrite/ClientRead          │ ◄── PeerReply / PeerUnreachable ┘   (HTTP to the peer)
//!   GetStatus            │          │
//!                        │          └──── Apply, ServeRead ────► StateMachine
//!  HTTP front door ─── LocalRead, GetApplied ──────────────────► StateMachine
//! ```
//!
//! * **Consensus** owns the pure Raft core (`crate::raft::Raft`) and is the
//!   only owner of term, vote, log and commit index. It feeds every input
//!   into the core and carries out the core's `Ready`.
//! * **ElectionTimer** is the clock: it wakes Consensus every tick.
//! * **Replicator** (one per peer) does the HTTP requests to its peer and
//!   reports each answer or failure back.
//! * **Storage** writes and fsyncs the WAL on a dedicated thread; batches
//!   that arrive while it is busy share one fsync (group commit).
//! * **StateMachine** applies committed entries to the key-value map,
//!   answers the clients waiting for them, and serves reads.
//!
//! Actors exchange typed messages only. Client requests carry a one-shot
//! reply channel that travels with the request to whichever actor answers it.

pub mod consensus;
pub mod election_timer;
pub mod replicator;
pub mod state_machine;
pub mod storage;

use std::sync::Arc;

use actix::prelude::*;

use crate::config::Settings;
use crate::kv::{CommandResult, QueryResult};
use crate::metrics::Metrics;
use crate::raft::NodeId;
use crate::wal::{Recovered, WalWriter};

/// Why a client request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// This node is not the leader; `leader` is the one it knows, if any.
    /// The request was not proposed.
    NotLeader { leader: Option<NodeId> },
    /// The write was proposed, but a different entry was committed at its
    /// log index: it was not applied and never will be.
    Dropped,
    /// The node is shutting down.
    Unavailable,
}

/// What a client request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutcome {
    Write(CommandResult),
    Read(QueryResult),
}

pub type ClientResult = Result<ClientOutcome, ClientError>;
/// The channel a client request's answer travels back on.
pub type ClientReply = tokio::sync::oneshot::Sender<ClientResult>;

/// Addresses the HTTP front door sends to.
#[derive(Clone)]
pub struct NodeHandles {
    pub consensus: Addr<consensus::ConsensusActor>,
    pub state_machine: Addr<state_machine::StateMachineActor>,
    pub metrics: Arc<Metrics>,
}

/// Starts the actors of one node inside the running actix system.
pub fn spawn_node(settings: &Settings, recovered: Recovered, wal: WalWriter, metrics: Arc<Metrics>) -> NodeHandles {
    let state_machine = state_machine::StateMachineActor::new(settings.id, metrics.clone()).start();

    let wal = std::sync::Mutex::new(Some(wal));
    let storage_metrics = metrics.clone();
    let storage = SyncArbiter::start(1, move || {
        let wal = wal.lock().expect("wal handoff").take().expect("storage actor started once");
        storage::StorageActor::new(wal, storage_metrics.clone())
    });

    let consensus =
        consensus::ConsensusActor::start_with(settings, recovered, storage, state_machine.clone(), metrics.clone());
    election_timer::ElectionTimer::new(settings.tick, consensus.clone().recipient()).start();
    NodeHandles { consensus, state_machine, metrics }
}
