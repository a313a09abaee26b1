//! The actors of one raftkv node and who sends what to whom. Every message
//! type is in `messages.rs`.
//!
//! ```text
//!                 Tick                          PersistBatch, Purge
//!  ElectionTimer ───────►┐          ┌──────────────────────────► Storage (own thread: WAL)
//!                        │          │ ◄────────── Persisted ─────┘
//!  HTTP front door ──────┤          │
//!   InboundRpc (/raft/*) ├─► Consensus ──── SendRpc ───────────► Replicator (one per peer)
//!   ClientWrite/ClientRead          │ ◄── PeerEvent ─────────────┘   (HTTP to the peer;
//!   GetStatus, TakeSnapshotNow      │                                 streams snapshot files)
//!                        │          └── Restore, Apply, ServeRead,
//!                        │              TakeSnapshot ──────────► StateMachine
//!                        │                                            │ WriteSnapshot
//!                        └◄──────── SnapshotSaved ─────────────── Snapshotter (own thread: snap/)
//!  HTTP front door ─── LocalRead, GetApplied ──────────────────► StateMachine
//!  HTTP /raft/install_snapshot ─── ReceiveChunk ───────────────► Snapshotter
//!  HTTP watch ─── StartWatch ──► StateMachine ── Register, Publish ──► WatchHub (own thread)
//!       ▲                                                              │
//!       └──────────── WatchItem (bounded channel per watcher) ─────────┘
//! ```
//!
//! * **Consensus** owns the pure Raft core (`crate::raft::Raft`) and is the
//!   only owner of term, vote, log and commit index. It feeds every input
//!   into the core and carries out the core's `Ready`; it also runs the
//!   snapshot policy (when to snapshot, how far to compact).
//! * **ElectionTimer** is the clock: it wakes Consensus every tick.
//! * **Replicator** (one per peer) does the HTTP requests to its peer and
//!   reports each answer or failure back.
//! * **Storage** writes and fsyncs the WAL on a dedicated thread; batches
//!   that arrive while it is busy share one fsync (group commit). It
//!   deletes WAL segments a snapshot covers.
//! * **StateMachine** applies committed entries to the key-value map,
//!   answers the clients waiting for them, and serves reads. It freezes
//!   its state for a snapshot in O(1) and restores installed snapshots.
//!   It keeps the window of recent changes watchers start from.
//! * **Lessor** looks for leases whose time is up every 100 ms and, on the
//!   leader, proposes their end (one log entry for all of them).
//! * **WatchHub** hands new changes to the watchers of their keys, each
//!   through a bounded buffer; a watcher that falls behind is cancelled,
//!   never waited for.
//! * **Snapshotter** writes snapshot files and stages the ones streamed
//!   from the leader, on its own thread, so neither the WAL's fsyncs nor
//!   applying wait for it.
//!
//! Actors exchange typed messages only. Client requests carry a one-shot
//! reply channel that travels with the request to whichever actor answers it.

pub mod consensus;
pub mod election_timer;
pub mod lessor;
pub mod messages;
pub mod replicator;
pub mod snapshotter;
pub mod state_machine;
pub mod storage;
pub mod watch_hub;

use std::sync::Arc;

use actix::prelude::*;

use crate::config::Settings;
use crate::kv::{CommandResult, KvStore, QueryResult};
use crate::metrics::Metrics;
use crate::raft::{Index, Membership, NodeId};
use crate::snapshot::SnapshotDir;
use crate::wal::WalWriter;

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

/// The cluster as this node sees it: published by Consensus on a watch
/// channel whenever the configuration in force changes, so the HTTP front
/// door can route to the leader and check peers without a round trip
/// through Consensus's mailbox on every request. Read-only for everyone
/// but Consensus.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The cluster's id (`crate::cluster::ClusterFile`); peer requests carry it.
    pub cluster_id: u64,
    /// Log index of the configuration in force (0: the bootstrap one).
    pub config_index: Index,
    pub membership: Membership,
    /// Whether that configuration has committed (a removal in an
    /// uncommitted one may still be undone, so it does not refuse anyone).
    pub config_committed: bool,
}

impl ClusterView {
    pub fn address_of(&self, id: NodeId) -> Option<&str> {
        self.membership.address_of(id)
    }
}

/// How often a node looks for leases whose time is up (as leader, it then
/// proposes their end): a lease ends at most this much after its deadline.
const LEASE_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Exit status of a node the cluster has told it was removed (EX_CONFIG):
/// a supervisor should not restart it (systemd: `RestartPreventExitStatus=78`).
pub const EXIT_REMOVED: i32 = 78;

pub type ClusterWatch = tokio::sync::watch::Receiver<Arc<ClusterView>>;

/// Addresses the HTTP front door sends to.
#[derive(Clone)]
pub struct NodeHandles {
    pub consensus: Addr<consensus::ConsensusActor>,
    pub cluster: ClusterWatch,
    pub state_machine: Addr<state_machine::StateMachineActor>,
    pub snapshotter: Addr<snapshotter::Snapshotter>,
    pub watch_hub: Addr<watch_hub::WatchHub>,
    pub metrics: Arc<Metrics>,
}

/// Starts the actors of one node inside the running actix system, from
/// what start-up recovered: the state machine restored from the latest
/// snapshot and the consensus state with the log after it.
pub fn spawn_node(
    settings: &Settings,
    identity: &crate::cluster::ClusterFile,
    boot: consensus::Boot,
    store: KvStore,
    snapshots: SnapshotDir,
    wal: WalWriter,
    metrics: Arc<Metrics>,
) -> NodeHandles {
    let (id, dir, snap_metrics) = (settings.id, snapshots.clone(), metrics.clone());
    let snapshotter =
        SyncArbiter::start(1, move || snapshotter::Snapshotter::new(id, dir.clone(), snap_metrics.clone()));
    // The watch hub has a thread of its own: fanning events out to
    // watchers never delays applying or consensus.
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hub = watch_hub::WatchHub::new(settings.id, count.clone(), settings.watch_progress, metrics.clone());
    let hub = watch_hub::WatchHub::start_in_arbiter(&Arbiter::new().handle(), move |_| hub);
    let watch = state_machine::WatchPlumbing {
        hub: hub.clone(),
        count,
        limits: settings.watch_history,
        max_watchers: settings.max_watchers,
        next_id: 0,
    };
    let state_machine = state_machine::StateMachineActor::new(
        settings.id,
        store,
        snapshots.clone(),
        snapshotter.clone(),
        watch,
        metrics.clone(),
    )
    .start();

    let wal = std::sync::Mutex::new(Some(wal));
    let storage_metrics = metrics.clone();
    let storage = SyncArbiter::start(1, move || {
        let wal = wal.lock().expect("wal handoff").take().expect("storage actor started once");
        storage::StorageActor::new(wal, storage_metrics.clone())
    });

    let (consensus, cluster) = consensus::ConsensusActor::start_with(
        settings,
        identity,
        boot,
        storage,
        state_machine.clone(),
        snapshots,
        metrics.clone(),
    );
    election_timer::ElectionTimer::new(settings.tick, consensus.clone().recipient()).start();
    lessor::Lessor::new(settings.id, LEASE_CHECK, state_machine.clone(), consensus.clone()).start();
    NodeHandles { consensus, state_machine, snapshotter, watch_hub: hub, metrics, cluster }
}
