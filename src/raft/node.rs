//! The Raft rules: figure 2 of the paper, with pre-vote and check-quorum
//! from the dissertation (§9.6, §6.2), ReadIndex reads (§6.4) and
//! leadership transfer (§3.10).
//!
//! `Raft` does no IO, reads no clock and draws no randomness of its own:
//! time arrives as `tick()`, messages as `step()`, storage acknowledgements
//! as `on_persisted()`, and the randomized election timeout comes from a
//! seeded generator the caller provides. Everything the node must *do* is
//! collected and handed out by `ready()`.
//!
//! Persist before you speak: every message except a leader's AppendEntries
//! and heartbeats is held back until storage has made durable all state
//! changes that preceded it (a granted vote waits for `votedFor`, a
//! successful AppendEntries response waits for the entries). A leader's own
//! log write runs in parallel with replication, and counts towards the
//! commit majority only once it is durable.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use log::{debug, info, trace, warn};

use super::log::{Durability, RaftLog};
use super::message::{Body, Message, MessageKind};
use super::progress::{Progress, ProgressState};
use super::quorum::{MajorityConfig, VoteResult};
use super::read_only::ReadOnly;
use super::types::{
    ConfChange, Entry, EntryData, HardState, Index, Member, Membership, NodeId, RequestId, Role, SnapshotMeta, Term,
};

const T_ELECTION: &str = "raftkv::election";
const T_CONSENSUS: &str = "raftkv::consensus";

/// Settings of the consensus core. Durations are in ticks.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The bootstrap configuration: every voter, including `id`. Used only
    /// until the log or a snapshot holds a configuration of its own. Empty
    /// on a node that joins a running cluster: it has no configuration (and
    /// never campaigns) until the leader sends it one.
    pub voters: Vec<NodeId>,
    /// Addresses of the bootstrap voters, carried into the configuration
    /// entries and snapshots, so that members which joined later (and have
    /// no `--peers`) know where everyone is. Also fills in addresses a
    /// configuration from an older snapshot lacks.
    pub addresses: BTreeMap<NodeId, String>,
    /// A learner is promoted to voter only if its log is within this many
    /// entries of the leader's.
    pub promote_max_lag: Index,
    /// Base election timeout; each wait is drawn from `[e, 2e)`.
    pub election_ticks: u64,
    /// A leader sends heartbeats this often. Must be < `election_ticks`.
    pub heartbeat_ticks: u64,
    /// At most this many unanswered AppendEntries per follower (pipelining).
    pub max_inflight: usize,
    /// Soft cap on the entry bytes in one AppendEntries.
    pub max_append_bytes: usize,
    /// Campaign with a pre-vote first (§9.6), so a node that was cut off
    /// cannot depose a healthy leader when it comes back.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election
    /// timeout steps down; followers ignore vote requests while they hear
    /// from a leader (§6.2, §9.6).
    pub check_quorum: bool,
    /// Seed for the randomized election timeout.
    pub seed: u64,
    /// Soft cap on the entry bytes handed to the state machine by one
    /// `ready()` (at least one entry goes out), so that a node catching up
    /// on a long log keeps ticking and voting between chunks.
    pub max_apply_bytes: usize,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id must be positive".into());
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err("heartbeat interval must be positive and shorter than the election timeout".into());
        }
        if self.max_inflight == 0 {
            return Err("max_inflight must be at least 1".into());
        }
        Ok(())
    }
}

/// A proposal or read the leader could not take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLeader {
    /// The leader this node knows of, if any.
    Leader(Option<NodeId>),
    /// This node is the leader but is handing leadership to the given
    /// node: new proposals are refused (never appended) until the transfer
    /// ends, so the target's log can catch up with a log that stands still.
    Transferring(NodeId),
}

/// A leadership transfer that could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader transfers; the one this node knows of, if any.
    NotLeader(Option<NodeId>),
    /// The target is not a voter of the cluster.
    NotAVoter(NodeId),
}

/// A configuration change the leader refused. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    NotLeader(NotLeader),
    /// Another change (appended at this index) has not committed yet: one
    /// change at a time.
    InProgress {
        index: Index,
    },
    /// This leader has not yet committed an entry of its own term, so it
    /// may not know the latest committed configuration (the known bug of
    /// single-server changes, fixed as in the dissertation's erratum).
    NotReady,
    /// Adding an id that is already a member.
    AlreadyMember(NodeId),
    /// The id is not a member.
    UnknownMember(NodeId),
    /// Promoting a voter.
    NotALearner(NodeId),
    /// Promoting a learner whose log is too far behind the leader's.
    LearnerBehind {
        id: NodeId,
        matched: Index,
        last: Index,
        max_lag: Index,
    },
    /// After the change, fewer voters than a majority of the new
    /// configuration would be reachable: the cluster would stop.
    WouldLoseQuorum {
        reachable: usize,
        needed: usize,
    },
    /// Removing the only voter.
    LastVoter(NodeId),
}

impl std::fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfChangeError::NotLeader(NotLeader::Leader(l)) => write!(f, "not the leader (leader: {})", fmt_opt(*l)),
            ConfChangeError::NotLeader(NotLeader::Transferring(t)) => {
                write!(f, "the leader is handing leadership to {t}")
            }
            ConfChangeError::InProgress { index } => {
                write!(f, "a configuration change (log index {index}) is still in progress")
            }
            ConfChangeError::NotReady => write!(f, "the new leader has not committed an entry of its term yet"),
            ConfChangeError::AlreadyMember(id) => write!(f, "node {id} is already a member"),
            ConfChangeError::UnknownMember(id) => write!(f, "node {id} is not a member"),
            ConfChangeError::NotALearner(id) => write!(f, "node {id} is a voter already"),
            ConfChangeError::LearnerBehind { id, matched, last, max_lag } => write!(
                f,
                "learner {id} has the log up to {matched} of {last}; it is promoted only within {max_lag} entries"
            ),
            ConfChangeError::WouldLoseQuorum { reachable, needed } => {
                write!(f, "after the change only {reachable} voters would be reachable, a majority needs {needed}")
            }
            ConfChangeError::LastVoter(id) => write!(f, "node {id} is the only voter"),
        }
    }
}

/// A leadership transfer under way (leader only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub target: NodeId,
    /// Ticks since it began; it is abandoned after an election timeout.
    pub elapsed: u64,
    /// TimeoutNow has gone out to the target.
    pub timeout_now_sent: bool,
}

/// Storage must make these changes durable, in this order, then call
/// `Raft::on_persisted(seq)`: hard state, then install the snapshot staged
/// for `snapshot` (the log then holds nothing up to and including its
/// index), then truncate the log at `truncate_from` (remove it and
/// everything after), then append `entries`.
///
/// An op is self-consistent against the log that the ops before it
/// describe (ending at `L`): with a snapshot, there is no truncation and
/// `entries` start right after the snapshot; otherwise `truncate_from`,
/// when set, is at most `L`, and `entries` start at `truncate_from`, or at
/// `L + 1` when there is no truncation. So replaying the ops in order never
/// truncates beyond the log or appends out of place, however many inputs
/// one `ready()` covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistOp {
    pub seq: u64,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub truncate_from: Option<Index>,
    pub entries: Vec<Entry>,
}

/// What the node must do now. The shell handles the parts in this order:
/// `persist` (asynchronously; may overlap with the rest), `messages`,
/// `snapshot` (restore the state machine from it), `committed` (apply in
/// order), then `reads` (after the applies before them), then the failures.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    pub persist: Option<PersistOp>,
    pub messages: Vec<Message>,
    /// A snapshot from the leader replaced the log: the state machine must
    /// restore it (the one staged for this metadata) before applying
    /// `committed`, which continue after it.
    pub snapshot: Option<SnapshotMeta>,
    /// Newly committed entries, to apply in order.
    pub committed: Vec<Entry>,
    /// Local proposals among `committed`, as (index, request id).
    pub proposals: Vec<(Index, RequestId)>,
    /// Reads that may be served once every entry up to `index` is applied.
    pub reads: Vec<(RequestId, Index)>,
    /// Reads that will never be confirmed (leadership lost).
    pub failed_reads: Vec<RequestId>,
    /// Proposals that will never take effect: a different entry was
    /// committed at their index. (A proposal whose entry was only removed
    /// from this node's log is not here: another node may still hold it and
    /// commit it, as in figure 8. Its fate is known once its index commits.)
    pub dropped_proposals: Vec<RequestId>,
    /// Proposals whose fate this node can no longer learn: their entries
    /// were replaced by a snapshot, which says what was committed but not
    /// by whom. The client must be told the outcome is unknown.
    pub unknown_proposals: Vec<RequestId>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_none()
            && self.snapshot.is_none()
            && self.unknown_proposals.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.dropped_proposals.is_empty()
            && self.proposals.is_empty()
    }
}

/// SplitMix64: a tiny seeded generator, so the core's only randomness is
/// the seed it is given. (The simulation draws its faults from it too.)
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A Raft server's consensus state and rules.
pub struct Raft {
    id: NodeId,
    cfg: Config,
    /// The configurations in the log, by the index of the entry that set
    /// them, and (first) the one the log starts with: the snapshot's or the
    /// bootstrap one. The latest is in force (§4.1: a configuration takes
    /// effect when appended); removing entries reverts to an earlier one.
    confs: BTreeMap<Index, Membership>,
    /// The voters of the configuration in force.
    voters: MajorityConfig,

    // --- Persistent state on all servers (figure 2) ---
    /// Latest term this server has seen.
    current_term: Term,
    /// Candidate that received this server's vote in `current_term`.
    voted_for: Option<NodeId>,
    /// The log, with `commitIndex`.
    log: RaftLog,

    // --- Volatile state ---
    role: Role,
    leader_id: Option<NodeId>,
    /// Highest index handed to the state machine (`lastApplied` of figure 2,
    /// from the core's side). Invariant: `applied <= commit_index`.
    applied: Index,
    /// Ticks since this node last heard from a leader (or, as leader, since
    /// the last check-quorum).
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    /// True until the first election timeout after start: a node that has
    /// just restarted may have forgotten a leader it heard from.
    booting: bool,
    now: u64,
    rng: SplitMix64,

    /// Candidate and pre-candidate: votes received in this campaign.
    votes: BTreeMap<NodeId, bool>,

    // --- Volatile state on leaders ---
    /// `nextIndex` and `matchIndex` of figure 2 with flow control, per peer.
    progress: BTreeMap<NodeId, Progress>,
    /// Log target per peer (`raftkv::replication::<peer>`), built once so
    /// the replication path does not format a string per response.
    replication_targets: BTreeMap<NodeId, String>,
    read_only: ReadOnly,
    /// Entries proposed through this node that are still in the log and not
    /// yet applied: index -> request id.
    proposals: BTreeMap<Index, RequestId>,
    /// Proposals whose entry was removed from this node's log before it
    /// committed, by (index, term of the entry). The entry may survive on
    /// another node and still commit; once the entry at that index is
    /// committed, its term tells: the same term means it is this proposal
    /// (Log Matching), another term means it never will be.
    orphans: BTreeMap<(Index, Term), RequestId>,
    /// New entries need to go out to the followers in `ready()`.
    broadcast_pending: bool,
    /// The latest snapshot this node has saved or installed (index 0: none).
    /// A leader sends it to followers that need compacted entries; the log
    /// is never compacted past it.
    snapshot: SnapshotMeta,
    /// A snapshot installed since the last `ready()`, for the state machine.
    installed: Option<SnapshotMeta>,
    /// Leader: the leadership transfer under way, if any.
    transfer: Option<Transfer>,
    /// Leader: TimeoutNow went out in this term, so another leader may be
    /// elected at any moment without waiting out an election timeout (its
    /// voters disregard this leader on purpose). The lease is void for the
    /// rest of the term, even if the transfer is abandoned: a TimeoutNow
    /// still on the wire can start that election later.
    lease_void: bool,

    // --- Output ---
    durability: Durability,
    msgs: Vec<Message>,
    /// Messages waiting for a persist op to complete: (op seq, message).
    gated: VecDeque<(u64, Message)>,
    released_reads: Vec<(RequestId, Index)>,
    failed_reads: Vec<RequestId>,
    dropped_proposals: Vec<RequestId>,
    unknown_proposals: Vec<RequestId>,
}

/// A follower in snapshot state that has not answered for this many
/// election timeouts is probed again (the transport normally reports a
/// failed transfer long before).
const SNAPSHOT_TIMEOUT_ELECTIONS: u64 = 10;

impl Raft {
    /// A server restarting from what storage holds: its hard state and log.
    pub fn new(cfg: Config, hard_state: HardState, entries: Vec<Entry>) -> Self {
        Raft::restart(cfg, hard_state, None, entries)
    }

    /// A server restarting from a snapshot (its state machine restored from
    /// it) and the log entries after it (see `log_after_snapshot`).
    pub fn restart(cfg: Config, hard_state: HardState, snapshot: Option<SnapshotMeta>, entries: Vec<Entry>) -> Self {
        cfg.validate().expect("invalid raft config");
        let snapshot = snapshot.unwrap_or_default();
        let mut base = if snapshot.membership.voters().next().is_some() {
            snapshot.membership.clone()
        } else {
            Membership::from_voters(cfg.voters.iter().copied())
        };
        for (id, m) in base.members.iter_mut() {
            if m.address.is_empty()
                && let Some(a) = cfg.addresses.get(id)
            {
                m.address = a.clone();
            }
        }
        let mut confs = BTreeMap::from([(snapshot.index, base)]);
        for e in &entries {
            if let EntryData::Config(m) = &e.data {
                confs.insert(e.index, m.clone());
            }
        }
        let log = RaftLog::after_snapshot(snapshot.index, snapshot.term, entries);
        let stable = log.last_index();
        let mut raft = Raft {
            id: cfg.id,
            voters: MajorityConfig::new(cfg.voters.iter().copied()),
            confs,
            rng: SplitMix64(cfg.seed),
            cfg,
            current_term: hard_state.current_term,
            voted_for: hard_state.voted_for,
            log,
            role: Role::Follower,
            leader_id: None,
            applied: snapshot.index,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            // A node that has never seen a term has never heard of a leader.
            booting: hard_state.current_term > 0,
            now: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            replication_targets: BTreeMap::new(),
            read_only: ReadOnly::default(),
            proposals: BTreeMap::new(),
            orphans: BTreeMap::new(),
            broadcast_pending: false,
            snapshot,
            installed: None,
            transfer: None,
            lease_void: false,
            durability: Durability::new(stable),
            msgs: Vec::new(),
            gated: VecDeque::new(),
            released_reads: Vec::new(),
            failed_reads: Vec::new(),
            dropped_proposals: Vec::new(),
            unknown_proposals: Vec::new(),
        };
        raft.on_membership_changed();
        raft.reset_election_timer();
        info!(
            target: T_ELECTION,
            "node {} starting as follower at term {} with log {}..={} (last term {}, snapshot at {})",
            raft.id,
            raft.current_term,
            raft.log.offset() + 1,
            raft.log.last_index(),
            raft.log.last_term(),
            raft.snapshot.index
        );
        raft
    }

    // ------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn current_term(&self) -> Term {
        self.current_term
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    pub fn commit_index(&self) -> Index {
        self.log.commit_index()
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// Highest index known durable on this node's own storage.
    pub fn stable_index(&self) -> Index {
        self.durability.stable_index
    }
    pub fn applied(&self) -> Index {
        self.applied
    }
    pub fn hard_state(&self) -> HardState {
        HardState { current_term: self.current_term, voted_for: self.voted_for }
    }
    pub fn voters(&self) -> &std::collections::BTreeSet<NodeId> {
        self.voters.voters()
    }
    /// The configuration in force (the latest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        self.confs.last_key_value().expect("always a configuration").1
    }
    /// The index of the entry that set the configuration in force (the
    /// snapshot's index, or 0, when it is the one the log starts with).
    pub fn config_index(&self) -> Index {
        *self.confs.last_key_value().expect("always a configuration").0
    }
    /// Per-peer replication progress; only a leader has it.
    pub fn progress(&self) -> &BTreeMap<NodeId, Progress> {
        &self.progress
    }
    pub fn pending_reads(&self) -> usize {
        self.read_only.pending_len()
    }
    /// The leadership transfer under way, if this node is a leader handing over.
    pub fn transfer(&self) -> Option<Transfer> {
        self.transfer
    }

    pub fn pending_proposals(&self) -> usize {
        self.proposals.len() + self.orphans.len()
    }
    /// Committed entries not yet handed out by `ready()` (it hands them out
    /// in chunks of `max_apply_bytes`).
    pub fn has_unapplied(&self) -> bool {
        self.log.commit_index() > self.applied
    }
    pub fn now(&self) -> u64 {
        self.now
    }
    /// The latest snapshot saved or installed (index 0: none).
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The metadata of a snapshot of the state machine after applying
    /// `index`, if the log still knows that entry's term.
    pub fn snapshot_meta(&self, index: Index) -> Option<SnapshotMeta> {
        let term = self.log.term(index)?;
        let (_, membership) = self.confs.range(..=index).next_back()?;
        Some(SnapshotMeta { index, term, membership: membership.clone() })
    }

    /// The shell made a snapshot of its state machine durable. From now on
    /// it is what a follower behind the log's start is sent, and the log
    /// may be compacted up to it.
    pub fn on_snapshot_saved(&mut self, meta: SnapshotMeta) {
        assert!(meta.index <= self.applied, "snapshot at {} beyond applied {}", meta.index, self.applied);
        if meta.index > self.snapshot.index {
            info!(target: T_CONSENSUS, "node {} saved a snapshot at {} (term {})", self.id, meta.index, meta.term);
            self.snapshot = meta;
        }
    }

    /// Drops log entries up to `index` from memory, but never past the
    /// latest saved snapshot, nor past a snapshot still being sent to a
    /// follower (which will need the entries after that one next: etcd's
    /// "snapshot loop", #4055). Returns the log's new compaction point;
    /// storage may purge up to it.
    pub fn compact(&mut self, index: Index) -> Index {
        let in_transfer = self
            .progress
            .values()
            .filter(|p| p.state == ProgressState::Snapshot)
            .map(|p| p.pending_snapshot)
            .min()
            .unwrap_or(Index::MAX);
        let upto = index.min(self.snapshot.index).min(self.applied).min(in_transfer);
        if upto > self.log.offset() {
            self.log.compact_to(upto);
            // The configuration at the new start of the log, and later ones.
            let first = *self.confs.range(..=upto).next_back().expect("a configuration at the log's start").0;
            self.confs = self.confs.split_off(&first);
            debug!(target: T_CONSENSUS, "node {} compacted its log up to {}", self.id, upto);
        }
        self.log.offset()
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    /// One unit of time has passed.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.role == Role::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    /// Followers and candidates: "If election timeout elapses without
    /// receiving AppendEntries RPC from current leader or granting vote to
    /// candidate: convert to candidate."
    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.booting && self.election_elapsed >= self.cfg.election_ticks {
            self.booting = false;
        }
        if self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            if self.promotable() {
                info!(
                    target: T_ELECTION,
                    "node {} election timeout at term {} (leader {})",
                    self.id,
                    self.current_term,
                    fmt_opt(self.leader_id)
                );
                self.campaign(self.cfg.pre_vote, false);
            }
        }
    }

    /// Leaders: heartbeats every `heartbeat_ticks`, check-quorum every
    /// election timeout.
    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.election_ticks {
                warn!(
                    target: T_ELECTION,
                    "node {} abandons the leadership transfer to {} at term {}: not done within an election timeout",
                    self.id,
                    t.target,
                    self.current_term
                );
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let id = self.id;
                let active = |v: NodeId| v == id || self.progress.get(&v).is_some_and(|p| p.recent_active);
                if !self.voters.has_quorum(active) {
                    warn!(
                        target: T_ELECTION,
                        "node {} stepping down at term {}: has not heard from a majority within an election timeout",
                        self.id,
                        self.current_term
                    );
                    self.become_follower(self.current_term, None);
                    return;
                }
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
            }
        }
        // Safety net for AppendEntries lost without the transport noticing.
        let now = self.now;
        let stall = 2 * self.cfg.election_ticks;
        let snapshot_timeout = SNAPSHOT_TIMEOUT_ELECTIONS * self.cfg.election_ticks;
        for (&peer, p) in self.progress.iter_mut() {
            if p.state == ProgressState::Replicate
                && !p.inflight.is_empty()
                && now - p.last_append_response_tick >= stall
            {
                debug!(target: T_CONSENSUS, "replication to {peer} stalled; probing from {}", p.match_index + 1);
                p.become_probe();
            }
            if p.state == ProgressState::Snapshot && now - p.snapshot_sent_tick >= snapshot_timeout {
                warn!(target: T_CONSENSUS, "snapshot {} to {peer} got no answer; probing again", p.pending_snapshot);
                p.become_probe();
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.start_read_round();
        }
    }

    /// Starts an election now, as if the election timeout had elapsed.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader && self.promotable() {
            self.election_elapsed = 0;
            self.campaign(self.cfg.pre_vote, false);
        }
    }

    /// Leadership transfer (§3.10): hands leadership to `target`, a voter.
    /// New proposals are refused from now on; the target's log is brought
    /// up to this leader's, then it gets TimeoutNow and starts an election
    /// it wins without waiting out a timeout. Abandoned after an election
    /// timeout (proposals are taken again). Transferring to oneself, or to
    /// the target of the transfer already under way, changes nothing.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader(self.leader_id));
        }
        if !self.voters.contains(target) {
            return Err(TransferError::NotAVoter(target));
        }
        if target == self.id || self.transfer.is_some_and(|t| t.target == target) {
            return Ok(());
        }
        if let Some(t) = self.transfer {
            info!(target: T_ELECTION, "node {} drops the leadership transfer to {} for one to {target}", self.id, t.target);
        }
        let matched = self.progress.get(&target).map_or(0, |p| p.match_index);
        info!(
            target: T_ELECTION,
            "node {} transferring leadership to {target} at term {} (its log matches up to {matched} of {})",
            self.id,
            self.current_term,
            self.log.last_index()
        );
        self.transfer = Some(Transfer { target, elapsed: 0, timeout_now_sent: false });
        if !self.maybe_send_timeout_now() {
            self.send_append(target);
        }
        Ok(())
    }

    /// Sends TimeoutNow to the transfer's target once its log (durably)
    /// matches this leader's. Returns whether it went out now.
    fn maybe_send_timeout_now(&mut self) -> bool {
        let Some(t) = self.transfer else { return false };
        let caught_up = self.progress.get(&t.target).is_some_and(|p| p.match_index >= self.log.last_index());
        if t.timeout_now_sent || !caught_up {
            return false;
        }
        info!(
            target: T_ELECTION,
            "node {} sends TimeoutNow to {} at term {}: its log matches up to {}",
            self.id,
            t.target,
            self.current_term,
            self.log.last_index()
        );
        self.transfer = Some(Transfer { timeout_now_sent: true, ..t });
        self.lease_void = true;
        let m = Message { from: self.id, to: t.target, term: self.current_term, rpc_id: 0, body: Body::TimeoutNow };
        self.send(m);
        true
    }

    /// Ends the boot lease at once (tests that build nodes from saved state).
    #[cfg(test)]
    pub(crate) fn end_boot_lease(&mut self) {
        self.booting = false;
    }

    /// A client proposal. Only a leader takes it; it is appended to the log
    /// now and sent to the followers with the next `ready()`, together with
    /// every other proposal that arrived before it (batching).
    pub fn propose(&mut self, id: RequestId, data: Bytes) -> Result<Index, NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Leader(self.leader_id));
        }
        if let Some(t) = self.transfer {
            return Err(NotLeader::Transferring(t.target));
        }
        let index = self.append_entry(EntryData::Command(data));
        self.proposals.insert(index, id);
        Ok(index)
    }

    /// A configuration change (one server at a time, §4.1 and §4.3 of the
    /// dissertation). Only a leader takes it, and only when no other change
    /// is pending and it has committed an entry of its own term. The new
    /// configuration is appended as one entry and takes effect at once;
    /// `id` is answered like a proposal when the entry commits.
    pub fn propose_conf_change(&mut self, id: RequestId, change: ConfChange) -> Result<Index, ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader(NotLeader::Leader(self.leader_id)));
        }
        if let Some(t) = self.transfer {
            return Err(ConfChangeError::NotLeader(NotLeader::Transferring(t.target)));
        }
        let pending = self.config_index();
        if pending > self.log.commit_index() {
            return Err(ConfChangeError::InProgress { index: pending });
        }
        if !self.committed_in_current_term() {
            return Err(ConfChangeError::NotReady);
        }
        let mut next = self.membership().clone();
        match &change {
            ConfChange::AddLearner { id, address } => {
                if next.contains(*id) {
                    return Err(ConfChangeError::AlreadyMember(*id));
                }
                // Safe in Raft when the node kept its state; the node refuses
                // ids that were removed (a node with that id may have lost its
                // state, and would then vote twice in a term): `http::cluster`.
                next.removed.remove(id);
                next.members.insert(*id, Member { address: address.clone(), voter: false });
            }
            ConfChange::Promote { id } => {
                let Some(m) = next.members.get_mut(id) else { return Err(ConfChangeError::UnknownMember(*id)) };
                if m.voter {
                    return Err(ConfChangeError::NotALearner(*id));
                }
                let matched = self.progress.get(id).map_or(0, |p| p.match_index);
                let last = self.log.last_index();
                let max_lag = self.cfg.promote_max_lag;
                if matched + max_lag < last {
                    return Err(ConfChangeError::LearnerBehind { id: *id, matched, last, max_lag });
                }
                m.voter = true;
            }
            ConfChange::Remove { id } => {
                if next.members.remove(id).is_none() {
                    return Err(ConfChangeError::UnknownMember(*id));
                }
                next.removed.insert(*id);
                if next.voters().next().is_none() {
                    return Err(ConfChangeError::LastVoter(*id));
                }
            }
        }
        // Would the new voters still have a reachable majority?
        if !matches!(change, ConfChange::AddLearner { .. }) {
            let voters: Vec<NodeId> = next.voters().collect();
            let reachable = voters.iter().filter(|&&v| self.reachable(v)).count();
            let needed = voters.len() / 2 + 1;
            if reachable < needed {
                return Err(ConfChangeError::WouldLoseQuorum { reachable, needed });
            }
        }
        info!(target: T_ELECTION, "node {} proposes {:?} at term {}: {}", self.id, change, self.current_term, next);
        let index = self.append_entry(EntryData::Config(next));
        self.proposals.insert(index, id);
        Ok(index)
    }

    /// May this node start an election? A voter may. So may a node whose
    /// latest configuration removes it while that change has not committed
    /// and it was a voter before: it may hold the change that only it can
    /// finish (the other voters' logs are behind it, so none of them can
    /// win). Elected by the new configuration's voters, it commits the
    /// change and steps down, as a leader that removed itself does.
    fn promotable(&self) -> bool {
        if self.voters.contains(self.id) {
            return true;
        }
        let latest = self.config_index();
        latest > self.log.commit_index()
            && self.confs.range(..latest).next_back().is_some_and(|(_, before)| before.is_voter(self.id))
    }

    /// Leader: has this member (or this node) answered within an election timeout?
    pub fn reachable(&self, id: NodeId) -> bool {
        id == self.id || self.progress.get(&id).is_some_and(|p| self.now - p.last_active_tick < self.cfg.election_ticks)
    }

    /// A configuration entry was appended at `index`: it is in force now.
    fn note_config(&mut self, index: Index, m: &Membership) {
        self.confs.insert(index, m.clone());
        self.on_membership_changed();
    }

    /// The configuration in force changed (or was set at start): voters,
    /// and on a leader the followers it replicates to.
    fn on_membership_changed(&mut self) {
        let m = self.membership().clone();
        let voters: Vec<NodeId> = m.voters().collect();
        if !voters.is_empty() {
            self.voters = MajorityConfig::new(voters);
        }
        self.replication_targets = m.members.keys().map(|&id| (id, replication_target(id))).collect();
        info!(
            target: T_ELECTION,
            "node {} configuration (index {}): {}{}",
            self.id,
            self.config_index(),
            m,
            if m.contains(self.id) { "" } else { "; this node is not a member" }
        );
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let now = self.now;
            self.progress.retain(|id, _| m.contains(*id));
            for &id in m.members.keys() {
                if id != self.id {
                    self.progress.entry(id).or_insert_with(|| Progress::new(next, now));
                }
            }
            if let Some(t) = self.transfer
                && !m.is_voter(t.target)
            {
                info!(target: T_ELECTION, "node {} drops the leadership transfer to {}: not a voter now", self.id, t.target);
                self.transfer = None;
            }
        }
    }

    /// A linearizable read (ReadIndex). The read comes back in a later
    /// `Ready::reads` with the index it must be served at, or in
    /// `Ready::failed_reads` if leadership is lost first.
    pub fn read_index(&mut self, id: RequestId) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Leader(self.leader_id));
        }
        if !self.committed_in_current_term() {
            // Until its no-op commits, a new leader's commit index may be
            // behind entries that earlier leaders committed.
            self.read_only.waiting_for_commit.push(id);
            return Ok(());
        }
        self.add_read(id);
        Ok(())
    }

    /// A read under the leader lease: served at once if a majority has
    /// confirmed this leader within the last election timeout (less two
    /// ticks for clock granularity), which no new leader can be elected in.
    /// Otherwise falls back to a ReadIndex round.
    pub fn read_lease(&mut self, id: RequestId) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Leader(self.leader_id));
        }
        let lease = self.cfg.election_ticks.saturating_sub(2);
        let valid = self.cfg.check_quorum
            && !self.lease_void
            && self.transfer.is_none()
            && self.committed_in_current_term()
            && self.read_only.lease_from.is_some_and(|from| self.now - from < lease);
        if valid {
            self.released_reads.push((id, self.log.commit_index()));
            return Ok(());
        }
        self.read_index(id)
    }

    /// The transport could not deliver a request to `peer` (connection
    /// refused, timeout). A leader stops streaming to it until a heartbeat
    /// gets through.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(p) = self.progress.get_mut(&peer) {
            if p.state != ProgressState::Probe {
                // After a snapshot whose fate is unknown, the probe starts
                // right after it; a follower without it says so.
                p.become_probe();
                debug!(target: T_CONSENSUS, "replication to {peer} failed; probing from {}", p.next_index);
            }
            p.paused = true;
        }
    }

    /// Storage has made every op up to `seq` durable.
    pub fn on_persisted(&mut self, seq: u64) {
        let stable_changed = self.durability.ack(seq, self.log.last_index());
        // Release the messages that were waiting for this write.
        while self.gated.front().is_some_and(|(gate, _)| *gate <= self.durability.acked) {
            let (_, msg) = self.gated.pop_front().expect("checked non-empty");
            if msg.to == self.id {
                self.step(msg);
            } else {
                self.msgs.push(msg);
            }
        }
        if stable_changed && self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// An incoming message. Requests always get exactly one response.
    pub fn step(&mut self, m: Message) {
        trace!(target: T_CONSENSUS, "node {} <- {}: {:?} term {}", self.id, m.from, m.body.kind(), m.term);
        // --- "All servers: if RPC request or response contains term T >
        // currentTerm: set currentTerm = T, convert to follower" (§5.1),
        // refined by pre-vote and check-quorum. ---
        if m.term > self.current_term {
            match &m.body {
                Body::RequestVote { pre_vote, transfer, .. } => {
                    if !*transfer && self.in_lease() {
                        // We hear from a leader: this candidate cannot win
                        // and must not disrupt it (§6.2 of the dissertation).
                        info!(
                            target: T_ELECTION,
                            "node {} ignores {} from {} at term {}: leader {} is alive",
                            self.id,
                            if *pre_vote { "pre-vote" } else { "vote request" },
                            m.from,
                            m.term,
                            fmt_opt(self.leader_id)
                        );
                        self.respond_vote(&m, false);
                        return;
                    }
                    if !*pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                // A granted pre-vote carries the term the candidate will use.
                Body::RequestVoteResponse { pre_vote: true, vote_granted: true } => {}
                Body::AppendEntries { .. }
                | Body::Heartbeat { .. }
                | Body::InstallSnapshot { .. }
                | Body::TimeoutNow => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.current_term {
            // Stale sender. Answer requests so it learns the newer term
            // (figure 2: "Reply false if term < currentTerm"); drop responses.
            match &m.body {
                Body::AppendEntries { prev_log_index, .. } => {
                    let prev = *prev_log_index;
                    self.respond_append(&m, false, prev, 0, 0, None, 0);
                }
                Body::Heartbeat { .. } => self.respond(&m, Body::HeartbeatResponse { ctx: 0 }),
                Body::InstallSnapshot { .. } => self.respond(&m, Body::InstallSnapshotResponse { match_index: 0 }),
                Body::RequestVote { .. } => self.respond_vote(&m, false),
                Body::TimeoutNow => self.respond(&m, Body::TimeoutNowResponse { campaigned: false }),
                _ => trace!(target: T_CONSENSUS, "node {} drops stale {:?} from {}", self.id, m.body.kind(), m.from),
            }
            return;
        }

        match m.body.kind() {
            MessageKind::PreVote | MessageKind::RequestVote => self.handle_request_vote(m),
            MessageKind::PreVoteResponse | MessageKind::RequestVoteResponse => self.handle_vote_response(m),
            MessageKind::AppendEntries => self.handle_append_entries(m),
            MessageKind::Heartbeat => self.handle_heartbeat(m),
            MessageKind::AppendEntriesResponse => self.handle_append_response(m),
            MessageKind::HeartbeatResponse => self.handle_heartbeat_response(m),
            MessageKind::InstallSnapshot => self.handle_install_snapshot(m),
            MessageKind::InstallSnapshotResponse => self.handle_install_snapshot_response(m),
            MessageKind::TimeoutNow => self.handle_timeout_now(m),
            MessageKind::TimeoutNowResponse => {
                debug!(target: T_ELECTION, "node {} <- {}: {:?}", self.id, m.from, m.body);
            }
        }
    }

    /// Everything the node must do now; see `Ready` for the order.
    pub fn ready(&mut self) -> Ready {
        if self.broadcast_pending {
            self.broadcast_pending = false;
            if self.role == Role::Leader {
                self.broadcast_append();
            }
        }
        self.maybe_start_read_round();
        let mut rd = Ready::default();
        if self.durability.has_unissued() {
            let hard_state = self.durability.hard_state_dirty.then(|| self.hard_state());
            let last = self.log.last_index();
            let op = if let Some(meta) = &self.installed {
                debug_assert_eq!(self.durability.snapshot, Some(meta.index));
                // The log was replaced: the snapshot, then all that follows it.
                let entries = self.log.slice(self.log.offset() + 1, last).to_vec();
                let seq = self.durability.issue(None, last);
                PersistOp { seq, hard_state, snapshot: Some(meta.clone()), truncate_from: None, entries }
            } else {
                let (truncate_from, append_from) = self.durability.unissued_range(last);
                let entries = match append_from {
                    Some(from) => self.log.slice(from, last).to_vec(),
                    None => Vec::new(),
                };
                let seq = self.durability.issue(truncate_from, last);
                PersistOp { seq, hard_state, snapshot: None, truncate_from, entries }
            };
            rd.persist = Some(op);
        }
        rd.snapshot = self.installed.take();
        if self.log.commit_index() > self.applied {
            let commit = self.log.commit_index();
            rd.committed = self.log.entries_between(self.applied + 1, commit, self.cfg.max_apply_bytes);
            let upto = self.applied + rd.committed.len() as Index;
            let rest = self.proposals.split_off(&(upto + 1));
            rd.proposals = std::mem::replace(&mut self.proposals, rest).into_iter().collect();
            self.resolve_orphans(upto, &mut rd.proposals);
            self.applied = upto;
        }
        rd.messages = std::mem::take(&mut self.msgs);
        // A read goes out with (or after) the entries it must observe.
        let applied = self.applied;
        let (now, later) = std::mem::take(&mut self.released_reads).into_iter().partition(|&(_, i)| i <= applied);
        rd.reads = now;
        self.released_reads = later;
        rd.failed_reads = std::mem::take(&mut self.failed_reads);
        rd.dropped_proposals = std::mem::take(&mut self.dropped_proposals);
        rd.unknown_proposals = std::mem::take(&mut self.unknown_proposals);
        debug_assert!(rd.reads.iter().all(|&(_, i)| i <= self.applied));
        rd
    }

    // ------------------------------------------------------------------
    // Role transitions (figure 4)
    // ------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let e = self.cfg.election_ticks;
        self.randomized_election_timeout = e + self.rng.next_u64() % e;
    }

    fn set_term(&mut self, term: Term) {
        if term != self.current_term {
            info!(target: T_ELECTION, "node {} term {} -> {}", self.id, self.current_term, term);
            self.current_term = term;
            self.voted_for = None;
            self.durability.hard_state_dirty = true;
        }
    }

    fn set_role(&mut self, role: Role) {
        if role != self.role {
            info!(
                target: T_ELECTION,
                "node {} became {} at term {} (was {})",
                self.id,
                role,
                self.current_term,
                self.role
            );
            if self.role == Role::Leader {
                self.progress.clear();
                self.transfer = None;
                let failed = self.read_only.reset();
                self.failed_reads.extend(failed);
            }
            self.role = role;
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.set_term(term);
        self.set_role(Role::Follower);
        self.set_leader(leader);
        self.votes.clear();
        self.reset_election_timer();
    }

    fn set_leader(&mut self, leader: Option<NodeId>) {
        if leader != self.leader_id {
            if let Some(l) = leader {
                info!(target: T_ELECTION, "node {} follows leader {} at term {}", self.id, l, self.current_term);
            }
            self.leader_id = leader;
        }
    }

    /// Start an election, or a pre-vote round that asks whether one could
    /// be won. `transfer`: the leader asked for it (TimeoutNow).
    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        let term = if pre_vote {
            self.set_role(Role::PreCandidate);
            self.current_term + 1
        } else {
            // "On conversion to candidate: increment currentTerm, vote for
            // self, reset election timer, send RequestVote RPCs."
            self.set_term(self.current_term + 1);
            self.voted_for = Some(self.id);
            self.durability.hard_state_dirty = true;
            self.set_role(Role::Candidate);
            self.current_term
        };
        self.set_leader(None);
        self.votes.clear();
        self.reset_election_timer();
        info!(
            target: T_ELECTION,
            "node {} starts {} for term {} (last log {}/{})",
            self.id,
            if pre_vote {
                "pre-vote"
            } else if transfer {
                "election (leadership transfer)"
            } else {
                "election"
            },
            term,
            self.log.last_index(),
            self.log.last_term()
        );
        let body = Body::RequestVote {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        let voters: Vec<NodeId> = self.voters.voters().iter().copied().collect();
        for v in voters {
            if v == self.id {
                // Our own vote counts only once it is durable: it goes
                // through the same gate as a vote granted to anyone else.
                let own = Message {
                    from: self.id,
                    to: self.id,
                    term,
                    rpc_id: 0,
                    body: Body::RequestVoteResponse { pre_vote, vote_granted: true },
                };
                if pre_vote {
                    self.step(own);
                } else {
                    self.send(own);
                }
            } else {
                self.send(Message { from: self.id, to: v, term, rpc_id: 0, body: body.clone() });
            }
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        self.set_role(Role::Leader);
        self.set_leader(Some(self.id));
        self.reset_election_timer();
        self.booting = false;
        let next = self.log.last_index() + 1;
        let now = self.now;
        let members: Vec<NodeId> = self.membership().members.keys().copied().filter(|&v| v != self.id).collect();
        self.progress = members.into_iter().map(|v| (v, Progress::new(next, now))).collect();
        self.read_only = ReadOnly::default();
        self.lease_void = false;
        // §5.4.2 / §8: a new leader commits an entry of its own term.
        self.append_entry(EntryData::Noop);
        // Announce ourselves at once rather than at the next heartbeat.
        self.broadcast_append();
        self.start_read_round();
    }

    fn append_entry(&mut self, data: EntryData) -> Index {
        let index = self.log.last_index() + 1;
        let conf = if let EntryData::Config(m) = &data { Some(m.clone()) } else { None };
        self.log.push(Entry { index, term: self.current_term, data });
        self.durability.note_append(index);
        if let Some(m) = conf {
            self.note_config(index, &m);
        }
        self.broadcast_pending = true;
        index
    }

    // ------------------------------------------------------------------
    // RequestVote (figure 2, §5.2, §5.4.1, §9.6)
    // ------------------------------------------------------------------

    fn handle_request_vote(&mut self, m: Message) {
        let Body::RequestVote { pre_vote, last_log_index, last_log_term, .. } = m.body else { unreachable!() };
        let can_vote = if pre_vote {
            // A pre-vote is granted for a future term only; it changes nothing here.
            m.term > self.current_term
        } else {
            // "If votedFor is null or candidateId ..."; a follower that
            // knows this term's leader has nobody else to vote for.
            self.voted_for == Some(m.from) || (self.voted_for.is_none() && self.leader_id.is_none())
        };
        // "... and candidate's log is at least as up-to-date as receiver's
        // log, grant vote" (§5.4.1, the election restriction).
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term);
        let granted = can_vote && up_to_date;
        info!(
            target: T_ELECTION,
            "node {} {} {} to {} for term {} (its log {}/{}, ours {}/{})",
            self.id,
            if granted { "grants" } else { "rejects" },
            if pre_vote { "pre-vote" } else { "vote" },
            m.from,
            m.term,
            last_log_index,
            last_log_term,
            self.log.last_index(),
            self.log.last_term()
        );
        if granted && !pre_vote {
            self.voted_for = Some(m.from);
            self.durability.hard_state_dirty = true;
            self.election_elapsed = 0;
        }
        self.respond_vote(&m, granted);
    }

    fn respond_vote(&mut self, req: &Message, granted: bool) {
        let Body::RequestVote { pre_vote, .. } = req.body else { unreachable!() };
        // A granted pre-vote answers in the candidate's future term.
        let term = if pre_vote && granted { req.term } else { self.current_term };
        let resp = Message {
            from: self.id,
            to: req.from,
            term,
            rpc_id: req.rpc_id,
            body: Body::RequestVoteResponse { pre_vote, vote_granted: granted },
        };
        self.send(resp);
    }

    fn handle_vote_response(&mut self, m: Message) {
        let Body::RequestVoteResponse { pre_vote, vote_granted } = m.body else { unreachable!() };
        let expected = match (self.role, pre_vote) {
            (Role::PreCandidate, true) => {
                (vote_granted && m.term == self.current_term + 1) || (!vote_granted && m.term == self.current_term)
            }
            (Role::Candidate, false) => m.term == self.current_term,
            _ => false,
        };
        if !expected {
            return;
        }
        self.votes.insert(m.from, vote_granted);
        match self.voters.vote_result(&self.votes) {
            VoteResult::Pending => {}
            VoteResult::Won => {
                let from: Vec<NodeId> = self.votes.iter().filter(|&(_, &g)| g).map(|(&id, _)| id).collect();
                if pre_vote {
                    info!(target: T_ELECTION, "node {} won pre-vote for term {} with {:?}", self.id, self.current_term + 1, from);
                    self.campaign(false, false);
                } else {
                    info!(target: T_ELECTION, "node {} won election at term {} with votes from {:?}", self.id, self.current_term, from);
                    self.become_leader();
                }
            }
            VoteResult::Lost => {
                info!(
                    target: T_ELECTION,
                    "node {} lost {} for term {}",
                    self.id,
                    if pre_vote { "pre-vote" } else { "election" },
                    if pre_vote { self.current_term + 1 } else { self.current_term }
                );
                self.become_follower(self.current_term, None);
            }
        }
    }

    // ------------------------------------------------------------------
    // AppendEntries, receiver side (figure 2)
    // ------------------------------------------------------------------

    /// A message from the leader of our term: follow it.
    fn heard_from_leader(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            self.become_follower(self.current_term, Some(leader));
        }
        self.set_leader(Some(leader));
        self.election_elapsed = 0;
        self.booting = false;
    }

    fn handle_append_entries(&mut self, m: Message) {
        assert_ne!(self.role, Role::Leader, "two leaders at term {}", self.current_term);
        self.heard_from_leader(m.from);
        let Body::AppendEntries { prev_log_index, prev_log_term, ref entries, leader_commit, ctx } = m.body else {
            unreachable!()
        };
        if prev_log_index < self.log.offset() {
            // Behind our snapshot, which holds only committed entries, so
            // they match the leader's: say how far we match (etcd does the
            // same for anything below the commit index).
            let commit = self.log.commit_index();
            self.respond_append(&m, true, prev_log_index, commit, 0, None, ctx);
            return;
        }
        // "Reply false if log doesn't contain an entry at prevLogIndex whose
        // term matches prevLogTerm."
        match self.log.term(prev_log_index) {
            Some(t) if t == prev_log_term => {}
            found => {
                let (conflict_index, conflict_term) = match found {
                    None => (self.log.last_index() + 1, None),
                    Some(t) => (self.log.first_index_of_term_at(prev_log_index, t), Some(t)),
                };
                debug!(
                    target: T_CONSENSUS,
                    "node {} rejects append at {}/{} from {}: hint {}/{:?}",
                    self.id,
                    prev_log_index,
                    prev_log_term,
                    m.from,
                    conflict_index,
                    conflict_term
                );
                self.respond_append(&m, false, prev_log_index, 0, conflict_index, conflict_term, ctx);
                return;
            }
        }
        let last_new = prev_log_index + entries.len() as Index;
        for e in entries {
            match self.log.term(e.index) {
                // "If an existing entry conflicts with a new one (same
                // index but different terms), delete the existing entry
                // and all that follow it."
                Some(t) if t != e.term => {
                    self.truncate_log(e.index);
                    self.push_entry(e);
                }
                Some(_) => {} // already have it
                // "Append any new entries not already in the log."
                None => self.push_entry(e),
            }
        }
        // "If leaderCommit > commitIndex, set commitIndex =
        // min(leaderCommit, index of last new entry)."
        self.commit_to(leader_commit.min(last_new));
        self.respond_append(&m, true, prev_log_index, last_new, 0, None, ctx);
    }

    /// Follower: appends an entry from the leader (a configuration takes effect now).
    fn push_entry(&mut self, e: &Entry) {
        self.log.push(e.clone());
        self.durability.note_append(e.index);
        if let EntryData::Config(m) = &e.data {
            self.note_config(e.index, m);
        }
    }

    fn truncate_log(&mut self, from: Index) {
        warn!(
            target: T_CONSENSUS,
            "node {} removes conflicting log entries {}..={} at term {}",
            self.id,
            from,
            self.log.last_index(),
            self.current_term
        );
        self.orphan_proposals_from(from);
        self.log.truncate_from(from);
        self.durability.note_truncate(from);
        if !self.confs.split_off(&from).is_empty() {
            // The configuration entries removed were in force: back to the last one left.
            self.on_membership_changed();
        }
    }

    /// The entries of local proposals from `from` on are about to leave the
    /// log: each proposal waits, by (index, term), for its index to commit.
    fn orphan_proposals_from(&mut self, from: Index) {
        let removed = self.proposals.split_off(&from);
        for (index, id) in removed {
            let term = self.log.term(index).expect("a proposal's entry is in the log");
            self.orphans.insert((index, term), id);
        }
    }

    /// Decides the fate of orphaned proposals at indexes up to `upto`, which
    /// are committed and about to be applied: the proposal's own entry was
    /// committed (it goes to `proposals`, answered like any other) or
    /// another one was (it is dropped: it will never take effect).
    fn resolve_orphans(&mut self, upto: Index, proposals: &mut Vec<(Index, RequestId)>) {
        if self.orphans.first_key_value().is_none_or(|(&(i, _), _)| i > upto) {
            return;
        }
        let rest = self.orphans.split_off(&(upto + 1, 0));
        let decided = std::mem::replace(&mut self.orphans, rest);
        for ((index, term), id) in decided {
            if self.log.term(index) == Some(term) {
                debug!(target: T_CONSENSUS, "node {}: orphaned proposal at {index}@{term} committed after all", self.id);
                proposals.push((index, id));
            } else {
                self.dropped_proposals.push(id);
            }
        }
        proposals.sort_unstable();
    }

    /// InstallSnapshot, receiver side (figure 13, as etcd's `restore`). The
    /// transport has the snapshot's state staged.
    fn handle_install_snapshot(&mut self, m: Message) {
        assert_ne!(self.role, Role::Leader, "two leaders at term {}", self.current_term);
        self.heard_from_leader(m.from);
        let Body::InstallSnapshot { ref meta } = m.body else { unreachable!() };
        let commit = self.log.commit_index();
        if meta.index <= commit {
            // Nothing new: we have committed that far already.
            debug!(target: T_CONSENSUS, "node {} ignores snapshot {} from {}: committed to {commit}", self.id, meta.index, m.from);
            self.respond(&m, Body::InstallSnapshotResponse { match_index: commit });
            return;
        }
        if self.log.term(meta.index) == Some(meta.term) {
            // "If existing log entry has same index and term as snapshot's
            // last included entry, retain log entries following it": the
            // snapshot's entries are ours, only now known committed.
            info!(target: T_CONSENSUS, "node {} has snapshot {}'s entries; commits up to it", self.id, meta.index);
            self.commit_to(meta.index);
            self.respond(&m, Body::InstallSnapshotResponse { match_index: meta.index });
            return;
        }
        // "Discard the entire log"; the state machine restores the snapshot.
        info!(
            target: T_CONSENSUS,
            "node {} installs snapshot at {} (term {}) from {}, replacing log {}..={}",
            self.id,
            meta.index,
            meta.term,
            m.from,
            self.log.offset() + 1,
            self.log.last_index()
        );
        // Proposals in the replaced log: after the snapshot they wait for
        // their index to commit, like any removed proposal; up to it they
        // were committed or not, which the snapshot does not say.
        self.orphan_proposals_from(meta.index + 1);
        self.unknown_proposals.extend(std::mem::take(&mut self.proposals).into_values());
        let later = self.orphans.split_off(&(meta.index + 1, 0));
        let covered = std::mem::replace(&mut self.orphans, later);
        self.unknown_proposals.extend(covered.into_values());
        self.log.restore(meta.index, meta.term);
        if meta.membership.voters().next().is_some() {
            self.confs = BTreeMap::from([(meta.index, meta.membership.clone())]);
        } else {
            // A snapshot from before configurations: the one at the log's start.
            let first = self.confs.first_key_value().expect("a configuration").1.clone();
            self.confs = BTreeMap::from([(meta.index, first)]);
        }
        self.on_membership_changed();
        self.applied = meta.index;
        self.durability.note_snapshot(meta.index);
        self.snapshot = meta.clone();
        self.installed = Some(meta.clone());
        let match_index = meta.index;
        self.respond(&m, Body::InstallSnapshotResponse { match_index });
    }

    /// The leader of our term has brought our log up to its own and asks
    /// us to take over: campaign now, without pre-vote (§3.10).
    fn handle_timeout_now(&mut self, m: Message) {
        if self.role == Role::Leader || !self.voters.contains(self.id) {
            self.respond(&m, Body::TimeoutNowResponse { campaigned: false });
            return;
        }
        info!(
            target: T_ELECTION,
            "node {} got TimeoutNow from leader {} at term {}: starting an election now",
            self.id,
            m.from,
            self.current_term
        );
        self.campaign(false, true);
        // Carries the new term: the old leader steps down when it arrives.
        self.respond(&m, Body::TimeoutNowResponse { campaigned: true });
    }

    fn handle_heartbeat(&mut self, m: Message) {
        assert_ne!(self.role, Role::Leader, "two leaders at term {}", self.current_term);
        self.heard_from_leader(m.from);
        let Body::Heartbeat { commit, ctx } = m.body else { unreachable!() };
        self.commit_to(commit.min(self.log.last_index()));
        self.respond(&m, Body::HeartbeatResponse { ctx });
    }

    fn commit_to(&mut self, index: Index) {
        let before = self.log.commit_index();
        if self.log.commit_to(index) {
            debug!(target: T_CONSENSUS, "node {} commit index {} -> {}", self.id, before, index);
            if self.role == Role::Leader && !self.voters.contains(self.id) && self.config_index() <= index {
                // §4.2.2: a leader removed from the configuration manages the
                // cluster until the change commits, then steps down.
                info!(
                    target: T_ELECTION,
                    "node {} steps down at term {}: the configuration without it committed at {}",
                    self.id,
                    self.current_term,
                    self.config_index()
                );
                self.become_follower(self.current_term, None);
                return;
            }
            if self.role == Role::Leader && self.committed_in_current_term() {
                let waiting = std::mem::take(&mut self.read_only.waiting_for_commit);
                for id in waiting {
                    self.add_read(id);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_append(
        &mut self,
        req: &Message,
        success: bool,
        prev_log_index: Index,
        match_index: Index,
        conflict_index: Index,
        conflict_term: Option<Term>,
        ctx: u64,
    ) {
        let body =
            Body::AppendEntriesResponse { success, prev_log_index, match_index, conflict_index, conflict_term, ctx };
        self.respond(req, body);
    }

    fn respond(&mut self, req: &Message, body: Body) {
        let resp = Message { from: self.id, to: req.from, term: self.current_term, rpc_id: req.rpc_id, body };
        self.send(resp);
    }

    // ------------------------------------------------------------------
    // Leader: replication and commitment
    // ------------------------------------------------------------------

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            self.send_append(p);
        }
    }

    /// Sends `peer` what it is missing, as far as flow control allows.
    fn send_append(&mut self, peer: NodeId) {
        loop {
            let last = self.log.last_index();
            let Some(p) = self.progress.get(&peer) else { return };
            if !p.can_send(self.cfg.max_inflight) {
                return;
            }
            // In replicate state there is nothing to send once caught up; a
            // probe is sent even if empty, to find where the logs match.
            if p.state == ProgressState::Replicate && p.next_index > last {
                return;
            }
            let prev_log_index = p.next_index - 1;
            let Some(prev_log_term) = self.log.term(prev_log_index) else {
                // The follower needs entries compacted away.
                self.send_snapshot(peer);
                return;
            };
            let entries = self.log.entries_from(p.next_index, self.cfg.max_append_bytes);
            let sent_last = prev_log_index + entries.len() as Index;
            let body = Body::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: self.log.commit_index(),
                ctx: self.read_only.ctx,
            };
            let now = self.now;
            let p = self.progress.get_mut(&peer).expect("checked above");
            if p.inflight.is_empty() {
                p.last_append_response_tick = now;
            }
            p.sent(sent_last);
            let probing = p.state == ProgressState::Probe;
            self.send(Message { from: self.id, to: peer, term: self.current_term, rpc_id: 0, body });
            if probing {
                return;
            }
        }
    }

    /// Starts a transfer of the latest snapshot to `peer`; replication to
    /// it pauses until the transfer is answered or fails.
    fn send_snapshot(&mut self, peer: NodeId) {
        let meta = self.snapshot.clone();
        assert!(meta.index >= self.log.offset(), "the log was compacted past the latest snapshot");
        let now = self.now;
        let target = self.replication_targets.get(&peer).map_or("raftkv::replication", String::as_str);
        let Some(p) = self.progress.get_mut(&peer) else { return };
        info!(
            target: target,
            "replication to {peer}: needs entry {} (log starts after {}); sending snapshot at {} (term {})",
            p.next_index,
            self.log.offset(),
            meta.index,
            meta.term
        );
        p.become_snapshot(meta.index, now);
        let body = Body::InstallSnapshot { meta };
        self.send(Message { from: self.id, to: peer, term: self.current_term, rpc_id: 0, body });
    }

    fn handle_install_snapshot_response(&mut self, m: Message) {
        if self.role != Role::Leader {
            return;
        }
        let Body::InstallSnapshotResponse { match_index } = m.body else { unreachable!() };
        let now = self.now;
        let target = self.replication_targets.get(&m.from).map_or("raftkv::replication", String::as_str);
        let Some(p) = self.progress.get_mut(&m.from) else { return };
        p.recent_active = true;
        p.last_active_tick = now;
        p.maybe_update(match_index);
        if p.state == ProgressState::Snapshot {
            info!(target: target, "replication to {}: snapshot {} answered, matches up to {match_index}", m.from, p.pending_snapshot);
            p.become_probe();
        }
        self.maybe_commit();
        self.maybe_send_timeout_now();
        self.send_append(m.from);
    }

    fn handle_append_response(&mut self, m: Message) {
        if self.role != Role::Leader {
            return;
        }
        let Body::AppendEntriesResponse { success, prev_log_index, match_index, conflict_index, conflict_term, ctx } =
            m.body
        else {
            unreachable!()
        };
        let now = self.now;
        let target = self.replication_targets.get(&m.from).map_or("raftkv::replication", String::as_str);
        let Some(p) = self.progress.get_mut(&m.from) else { return };
        p.recent_active = true;
        p.last_active_tick = now;
        p.acked_ctx = p.acked_ctx.max(ctx);
        p.last_append_response_tick = now;
        if success {
            let old = p.match_index;
            if p.maybe_update(match_index) {
                debug!(target: target, "replication to {}: match {} -> {}", m.from, old, match_index);
            }
            if p.state == ProgressState::Probe {
                p.become_replicate();
                debug!(target: target, "replication to {}: probe -> replicate at {}", m.from, p.next_index);
            }
            self.maybe_commit();
            self.maybe_send_timeout_now();
        } else {
            // Fast back-tracking: skip the follower's whole conflicting term.
            let hint = match conflict_term {
                Some(t) => match self.log.last_index_of_term(t) {
                    Some(i) => i + 1,
                    None => conflict_index,
                },
                None => conflict_index,
            };
            if p.maybe_decrease(prev_log_index, hint) {
                debug!(
                    target: target,
                    "replication to {}: rejected at {}, next index {}",
                    m.from,
                    prev_log_index,
                    p.next_index
                );
            }
        }
        self.check_read_confirm();
        if self.role == Role::Leader {
            self.send_append(m.from);
        }
    }

    fn handle_heartbeat_response(&mut self, m: Message) {
        if self.role != Role::Leader {
            return;
        }
        let Body::HeartbeatResponse { ctx } = m.body else { unreachable!() };
        let last = self.log.last_index();
        let now = self.now;
        let Some(p) = self.progress.get_mut(&m.from) else { return };
        p.recent_active = true;
        p.last_active_tick = now;
        p.acked_ctx = p.acked_ctx.max(ctx);
        let resend = p.state == ProgressState::Probe || p.match_index < last;
        if p.state == ProgressState::Probe {
            p.paused = false;
        }
        self.check_read_confirm();
        if resend {
            self.send_append(m.from);
        }
    }

    /// "If there exists an N such that N > commitIndex, a majority of
    /// matchIndex[i] >= N, and log[N].term == currentTerm: set commitIndex = N."
    fn maybe_commit(&mut self) {
        let own = self.durability.stable_index;
        let id = self.id;
        let n = self
            .voters
            .committed_index(|v| if v == id { own } else { self.progress.get(&v).map_or(0, |p| p.match_index) });
        if n <= self.log.commit_index() {
            return;
        }
        // §5.4.2: count replicas only for entries of the current term.
        if self.log.term(n) == Some(self.current_term) {
            self.commit_to(n);
        }
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.commit_index()) == Some(self.current_term)
    }

    // ------------------------------------------------------------------
    // Leader: ReadIndex
    // ------------------------------------------------------------------

    fn add_read(&mut self, id: RequestId) {
        // The round starts in `ready()`, so every read that arrives before
        // then shares it.
        self.read_only.add(id, self.log.commit_index());
    }

    fn maybe_start_read_round(&mut self) {
        if self.role == Role::Leader && self.read_only.needs_new_round() && !self.read_only.round_outstanding() {
            self.start_read_round();
        }
    }

    /// Starts a heartbeat round that confirms leadership for the reads
    /// waiting now; also refreshes followers' commit index and the lease.
    fn start_read_round(&mut self) {
        let ctx = self.read_only.start_round(self.now);
        let peers: Vec<(NodeId, Index)> = self.progress.iter().map(|(&id, p)| (id, p.match_index)).collect();
        let commit = self.log.commit_index();
        for (peer, match_index) in peers {
            let body = Body::Heartbeat { commit: commit.min(match_index), ctx };
            self.send(Message { from: self.id, to: peer, term: self.current_term, rpc_id: 0, body });
        }
        self.check_read_confirm();
    }

    fn check_read_confirm(&mut self) {
        let id = self.id;
        let ctx = self.read_only.ctx;
        let confirmed = self
            .voters
            .committed_index(|v| if v == id { ctx } else { self.progress.get(&v).map_or(0, |p| p.acked_ctx) });
        let ready = self.read_only.confirm(confirmed);
        self.released_reads.extend(ready);
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    /// Queues a message. A leader's AppendEntries and heartbeats go at once;
    /// anything else waits until the state it reflects is durable.
    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        // A heartbeat response claims only that we follow this leader now,
        // nothing about our disk, so it need not wait either: that keeps
        // ReadIndex rounds off the followers' fsync path.
        let immediate = (self.role == Role::Leader
            && matches!(m.body.kind(), MessageKind::AppendEntries | MessageKind::Heartbeat))
            || m.body.kind() == MessageKind::HeartbeatResponse;
        let gate = self.durability.gate();
        if immediate || gate <= self.durability.acked {
            self.msgs.push(m);
        } else {
            self.gated.push_back((gate, m));
        }
    }

    /// True while this node hears from a leader (or has just started), so
    /// it must not help a candidate depose that leader.
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader_id.is_some() || self.booting)
            && self.election_elapsed < self.cfg.election_ticks
    }
}

/// The log target for replication to one peer, so it can be switched alone.
pub fn replication_target(peer: NodeId) -> String {
    format!("raftkv::replication::{peer}")
}

fn fmt_opt(id: Option<NodeId>) -> String {
    id.map_or_else(|| "none".to_string(), |i| i.to_string())
}
