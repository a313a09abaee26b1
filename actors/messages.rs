//! Every message the actors exchange, in one place, so that the actor map
//! (see `mod.rs`) reads from here and no actor imports another to talk to
//! it. Grouped by receiver.

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;

use super::ClientReply;
use crate::kv::{Query, QueryResult};
use crate::raft::{
    ConfChange, ConfChangeError, Entry, Index, Message as RaftMessage, NodeId, PersistOp, SnapshotMeta, Term,
};
use crate::state_machine::Frozen;

// --- to Consensus ------------------------------------------------------------

/// ElectionTimer → Consensus: the clock moved on (Consensus reads the
/// clock itself, before every input).
pub struct Tick;

impl Message for Tick {
    type Result = ();
}

/// HTTP (`/raft/*`) → Consensus: a request from a peer. The core's answer
/// goes back on `reply` (once durable, where the rules require it).
pub struct InboundRpc {
    pub msg: RaftMessage,
    pub reply: oneshot::Sender<RaftMessage>,
}

impl Message for InboundRpc {
    type Result = ();
}

/// Replicator → Consensus: what became of a request sent to a peer.
pub enum PeerEvent {
    Replied(RaftMessage),
    Unreachable {
        peer: NodeId,
    },
    /// The peer answered `410 removed_member`: the cluster has committed
    /// this node's removal.
    Removed {
        peer: NodeId,
        reason: String,
    },
}

impl Message for PeerEvent {
    type Result = ();
}

/// Storage → Consensus: every persist op up to `seq` is durable.
pub struct Persisted {
    pub seq: u64,
}

impl Message for Persisted {
    type Result = ();
}

/// HTTP → Consensus: a client write to propose. The command is opaque to
/// consensus; the state machine gives it meaning.
pub struct ClientWrite {
    pub command: Bytes,
    pub reply: ClientReply,
}

impl Message for ClientWrite {
    type Result = ();
}

/// HTTP → Consensus: a linearizable (ReadIndex) or lease read.
pub struct ClientRead {
    pub query: Query,
    pub lease: bool,
    pub reply: ClientReply,
}

impl Message for ClientRead {
    type Result = ();
}

/// HTTP → Consensus: a view of the node's consensus state.
pub struct GetStatus;

impl Message for GetStatus {
    type Result = Status;
}

/// HTTP (`POST /admin/snapshot`) → Consensus: take a snapshot of
/// everything applied so far, now; answered once it is durable.
pub struct TakeSnapshotNow {
    pub reply: oneshot::Sender<Result<SnapshotInfo, String>>,
}

impl Message for TakeSnapshotNow {
    type Result = ();
}

/// HTTP (`POST /admin/transfer-leader`, or SIGTERM on a leader) →
/// Consensus: hand leadership to `to` (or to the most up-to-date voter);
/// answered once another node leads, or when the transfer fails.
pub struct TransferLeader {
    pub to: Option<NodeId>,
    pub reply: oneshot::Sender<Result<TransferDone, TransferFailed>>,
}

impl Message for TransferLeader {
    type Result = ();
}

/// HTTP (`/cluster/members`) → Consensus: one configuration change;
/// answered when its entry commits, or at once when the leader refuses it.
pub struct ChangeMembers {
    pub change: ConfChange,
    pub reply: oneshot::Sender<Result<MembersChanged, ChangeFailed>>,
}

impl Message for ChangeMembers {
    type Result = ();
}

/// A configuration change that committed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MembersChanged {
    /// Log index of the configuration entry.
    pub index: Index,
}

/// Why a configuration change did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeFailed {
    /// The leader refused it; nothing was appended.
    Refused(ConfChangeError),
    /// Appended, but a new leader committed another entry in its place.
    Dropped,
}

/// A finished leadership transfer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TransferDone {
    /// The node that leads now.
    pub leader: NodeId,
    /// The node that led when the transfer was asked for.
    pub previous_leader: NodeId,
    /// The new leader's term.
    pub term: Term,
}

/// Why a leadership transfer did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferFailed {
    /// This node does not lead; the one it knows of, if any.
    NotLeader(Option<NodeId>),
    /// `to` is not a voter of the cluster.
    NotAVoter(NodeId),
    /// A cluster of one: nobody to hand over to.
    NoOtherVoter,
    /// The target did not take over within an election timeout; this node
    /// still leads.
    TimedOut(NodeId),
}

/// Snapshotter → Consensus: a snapshot file is durable (or could not be
/// written).
pub struct SnapshotSaved {
    pub meta: SnapshotMeta,
    pub result: Result<SnapshotInfo, String>,
}

impl Message for SnapshotSaved {
    type Result = ();
}

/// A snapshot file as `/status` and `POST /admin/snapshot` describe it.
#[derive(Serialize, Clone, Debug, Default)]
pub struct SnapshotInfo {
    pub index: Index,
    pub term: Term,
    pub bytes: u64,
    pub duration_ms: f64,
    pub path: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct PeerStatus {
    pub id: NodeId,
    pub address: String,
    /// "voter" or "learner".
    pub role: &'static str,
    /// Leader only: the peer answered within the last election timeout.
    pub reachable: Option<bool>,
    /// Leader only: highest index known replicated on the peer.
    pub match_index: Option<u64>,
    /// Leader only: next index to send.
    pub next_index: Option<u64>,
    /// Leader only: "probe", "replicate" or "snapshot".
    pub state: Option<&'static str>,
    pub inflight: Option<usize>,
}

/// The log and its compaction, as `/status` shows them.
#[derive(Serialize, Clone, Debug)]
pub struct LogStatus {
    /// First index held in memory (entries before it are in the snapshot).
    pub first_index: Index,
    pub entries_in_memory: u64,
    pub bytes_in_memory: u64,
    pub wal_bytes_on_disk: u64,
    pub wal_segments: u64,
    /// Index and term of the latest snapshot (0: none).
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// The last snapshot this node wrote itself.
    pub last_snapshot: Option<SnapshotInfo>,
    pub snapshot_bytes_on_disk: u64,
    pub snapshots_taken: u64,
    pub snapshots_sent: u64,
    pub snapshots_received: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub address: String,
    pub role: &'static str,
    pub term: Term,
    pub voted_for: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub leader_address: Option<String>,
    pub commit_index: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub stable_index: u64,
    /// The cluster's id (16 hex digits).
    pub cluster_id: String,
    /// Log index of the configuration in force (0: the bootstrap one) and
    /// whether it has committed.
    pub config_index: Index,
    pub config_committed: bool,
    /// The other members, voters and learners.
    pub peers: Vec<PeerStatus>,
    pub pending_proposals: usize,
    pub pending_reads: usize,
    pub log: LogStatus,
    /// Elections, leader and term changes, membership changes and
    /// snapshots seen here, oldest first (the last `timeline::KEEP`).
    pub events: Vec<crate::timeline::ClusterEvent>,
}

// --- to Replicator -------------------------------------------------------------

/// Consensus → Replicator: deliver this request to the peer. An
/// InstallSnapshot is streamed from the snapshot file its metadata names.
pub struct SendRpc(pub RaftMessage);

impl Message for SendRpc {
    type Result = ();
}

/// Consensus → Replicator: the peer left the configuration; stop.
pub struct StopReplicator;

impl Message for StopReplicator {
    type Result = ();
}

// --- to Storage ----------------------------------------------------------------

/// Consensus → Storage: make these ops durable in order, then answer
/// `Persisted` with the last op's sequence number.
pub struct PersistBatch {
    pub ops: Vec<PersistOp>,
    pub reply_to: Recipient<Persisted>,
}

impl Message for PersistBatch {
    type Result = ();
}

/// Consensus → Storage: log entries up to `upto` are covered by a durable
/// snapshot; delete the WAL segments that hold nothing else.
pub struct Purge {
    pub upto: Index,
}

impl Message for Purge {
    type Result = ();
}

// --- to Snapshotter --------------------------------------------------------------

/// StateMachine → Snapshotter: write this frozen state as the snapshot
/// `meta`, then tell `reply_to`.
pub struct WriteSnapshot {
    pub meta: SnapshotMeta,
    pub frozen: Box<dyn Frozen>,
    pub reply_to: Recipient<SnapshotSaved>,
}

impl Message for WriteSnapshot {
    type Result = ();
}

/// HTTP (`/raft/install_snapshot`) → Snapshotter: one chunk of a snapshot
/// file streamed by the leader `from`. Answers whether the file is now
/// complete, verified and in place (`Ok(true)`), or still incomplete.
pub struct ReceiveChunk {
    pub from: NodeId,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
}

impl Message for ReceiveChunk {
    type Result = Result<bool, String>;
}

// --- to StateMachine ---------------------------------------------------------------

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

/// Consensus → StateMachine: freeze the state (everything sent in `Apply`
/// before this, which ends at `meta.index`) and have it written out.
pub struct TakeSnapshot {
    pub meta: SnapshotMeta,
    pub reply_to: Recipient<SnapshotSaved>,
}

impl Message for TakeSnapshot {
    type Result = ();
}

/// Consensus → StateMachine: the core installed the snapshot `meta` from
/// the leader (its file is in place): replace the state with it.
pub struct Restore {
    pub meta: SnapshotMeta,
}

impl Message for Restore {
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

/// HTTP → StateMachine: start a watch of `filter` from revision `from`
/// (`None`: from the next change). Answers with the history from `from`
/// up to the index applied now (`after`); what comes later reaches
/// `tx` through the WatchHub.
pub struct StartWatch {
    pub filter: crate::kv::watch::Filter,
    pub from: Option<Index>,
    pub tx: tokio::sync::mpsc::Sender<super::watch_hub::WatchItem>,
    pub cancel: tokio::sync::oneshot::Sender<super::watch_hub::Cancelled>,
}

/// The history a new watcher starts with.
pub struct WatchStarted {
    /// The watcher's id at the hub.
    pub id: u64,
    pub backlog: imbl::Vector<std::sync::Arc<crate::kv::watch::Event>>,
    pub after: Index,
}

/// Why a watch was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchRefused {
    /// The revision asked for is older than the history kept.
    Compacted { oldest: Index, current: Index },
    /// The node has `limit` watchers already.
    TooMany { limit: usize },
}

impl Message for StartWatch {
    type Result = Result<WatchStarted, WatchRefused>;
}

/// Lessor → StateMachine: the leases whose deadline is at or before
/// `now_ms` (at most `max`).
pub struct DueLeases {
    pub now_ms: u64,
    pub max: usize,
}

impl Message for DueLeases {
    type Result = Vec<u64>;
}
