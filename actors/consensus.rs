//! Consensus: the shell around the pure Raft core. The only owner of term,
//! vote, log and commit index. Every input becomes a call into the core;
//! after the mailbox drains, one `Flush` takes the core's `Ready` and turns
//! it into messages for the other actors:
//!
//! * `persist` → Storage (one batch in flight; later ops wait and then go
//!   together: group commit),
//! * requests → the peer's Replicator; responses → the HTTP request that
//!   is waiting for them,
//! * committed entries and confirmed reads → StateMachine, in that order.
//!
//! Batching falls out of this: all proposals and reads that arrive while
//! the previous flush was being carried out are handled by the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use log::{error, info, warn};
use tokio::sync::oneshot;

use super::messages::{
    Apply, ChangeFailed, ChangeMembers, ClientRead, ClientWrite, GetStatus, InboundRpc, LogStatus, MembersChanged,
    PeerEvent, PeerStatus, PersistBatch, Persisted, Purge, Restore, SendRpc, ServeRead, SnapshotInfo, SnapshotSaved,
    Status, StopReplicator, TakeSnapshot, TakeSnapshotNow, Tick, TransferDone, TransferFailed, TransferLeader,
};
use super::replicator::Replicator;
use super::state_machine::StateMachineActor;
use super::storage::StorageActor;
use super::{ClientError, ClientReply, ClusterView, ClusterWatch, EXIT_REMOVED};
use crate::cluster::{ClusterFile, format_id};
use crate::config::Settings;
use crate::kv::Query;
use crate::kv::lease::now_ms;
use crate::metrics::Metrics;
use crate::raft::progress::ProgressState;
use crate::raft::{
    self, Entry, HardState, Index, Message as RaftMessage, MessageKind, NodeId, NotLeader, PersistOp, Raft, RequestId,
    Role, SnapshotMeta, TickClock, TransferError,
};
use crate::snapshot::SnapshotDir;
use crate::timeline::{Observed, Timeline};

/// After a snapshot could not be written, wait this long before the policy
/// tries again (a full disk would otherwise be retried on every flush).
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

const T_CONSENSUS: &str = "raftkv::consensus";

/// Consensus → itself, once its mailbox is drained: carry out `Ready`.
struct Flush;

impl Message for Flush {
    type Result = ();
}

/// Where the node starts from: what storage recovered, with the log
/// already cut to continue after the latest snapshot.
pub struct Boot {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    /// Size of that snapshot's file (0: none).
    pub snapshot_bytes: u64,
    pub entries: Vec<Entry>,
}

pub struct ConsensusActor {
    raft: Raft,
    settings: Settings,
    metrics: Arc<Metrics>,
    me: Option<Addr<ConsensusActor>>,
    // clock: fed to the core before every input
    started: Instant,
    clock: TickClock,
    /// Inputs handled since the last flush, and when the first of them came.
    unflushed: usize,
    unflushed_since: Option<Instant>,
    // storage: one batch in flight, the rest queued (group commit)
    storage: Addr<StorageActor>,
    storage_busy: bool,
    storage_queue: Vec<PersistOp>,
    state_machine: Addr<StateMachineActor>,
    /// One per member but this node, with the address it was started for;
    /// started and stopped as the configuration changes (`sync_members`).
    replicators: BTreeMap<NodeId, (String, Addr<Replicator>)>,
    snapshots: SnapshotDir,
    /// The configuration as last published to the HTTP front door.
    cluster: tokio::sync::watch::Sender<Arc<ClusterView>>,
    members_synced: bool,
    /// Configuration changes waiting for their entry to commit.
    conf_waiters: HashMap<RequestId, oneshot::Sender<Result<MembersChanged, ChangeFailed>>>,
    next_id: u64,
    /// Peer requests waiting for the core's answer, by rpc id.
    inbound: HashMap<u64, oneshot::Sender<RaftMessage>>,
    proposals: HashMap<RequestId, ClientReply>,
    reads: HashMap<RequestId, (Query, ClientReply)>,
    flush_scheduled: bool,
    observed: (Role, crate::raft::Term, Option<NodeId>),
    /// Index of the configuration in force and whether it has committed,
    /// as last observed.
    observed_config: (Index, bool),
    /// What happened here, for `/status` and the web view.
    timeline: Timeline,
    // snapshot policy
    /// A snapshot at this index is being written.
    snapshot_in_progress: Option<Index>,
    /// Bytes of entries applied since the last snapshot started.
    applied_bytes_since: u64,
    snapshot_retry_at: Option<Instant>,
    /// `POST /admin/snapshot` callers, with the applied index their
    /// snapshot must cover.
    snapshot_waiters: Vec<(Index, oneshot::Sender<Result<SnapshotInfo, String>>)>,
    last_snapshot: Option<SnapshotInfo>,
    /// Size of the latest snapshot file this node holds (written here or
    /// found at start-up), for the amortized policy.
    last_snapshot_bytes: u64,
    // leadership transfer
    /// Writes that arrived while this leader was handing over: proposed
    /// here if the transfer is abandoned, sent on to the new leader (by
    /// the HTTP layer) once one is known; never proposed twice.
    held_writes: Vec<(Bytes, ClientReply)>,
    /// Callers waiting for a transfer to end, with its target.
    transfer_waiters: Vec<(NodeId, oneshot::Sender<Result<TransferDone, TransferFailed>>)>,
}

impl ConsensusActor {
    pub fn start_with(
        settings: &Settings,
        identity: &ClusterFile,
        boot: Boot,
        storage: Addr<StorageActor>,
        state_machine: Addr<StateMachineActor>,
        snapshots: SnapshotDir,
        metrics: Arc<Metrics>,
    ) -> (Addr<ConsensusActor>, ClusterWatch) {
        let settings = settings.clone();
        let cluster_id = identity.cluster_id;
        let bootstrap = identity.bootstrap.clone();
        let (cluster, watch) = tokio::sync::watch::channel(Arc::new(ClusterView {
            cluster_id,
            config_index: 0,
            membership: Default::default(),
            config_committed: false,
        }));
        let addr = ConsensusActor::create(move |ctx| {
            let me = ctx.address();
            let cfg = raft::Config {
                id: settings.id,
                voters: bootstrap.keys().copied().collect(),
                addresses: bootstrap,
                election_ticks: settings.election_ticks(),
                heartbeat_ticks: settings.heartbeat_ticks(),
                max_inflight: settings.max_inflight,
                max_append_bytes: 1 << 20,
                pre_vote: true,
                check_quorum: true,
                seed: rand::random(),
                max_apply_bytes: 1 << 20,
                promote_max_lag: settings.promote_max_lag,
            };
            let raft = Raft::restart(cfg, boot.hard_state, boot.snapshot, boot.entries);
            let observed = (raft.role(), raft.current_term(), raft.leader_id());
            let observed_config = (raft.config_index(), raft.config_index() <= raft.commit_index());
            let timeline = Timeline::new(settings.id);
            let clock = TickClock::new(settings.tick.as_nanos().max(1) as u64, 4 * settings.election_ticks() + 4);
            ConsensusActor {
                raft,
                settings,
                metrics,
                me: Some(me),
                started: Instant::now(),
                clock,
                unflushed: 0,
                unflushed_since: None,
                storage,
                storage_busy: false,
                storage_queue: Vec::new(),
                state_machine,
                replicators: BTreeMap::new(),
                snapshots,
                cluster,
                members_synced: false,
                conf_waiters: HashMap::new(),
                next_id: 1,
                inbound: HashMap::new(),
                proposals: HashMap::new(),
                reads: HashMap::new(),
                flush_scheduled: false,
                observed,
                observed_config,
                timeline,
                snapshot_in_progress: None,
                applied_bytes_since: 0,
                snapshot_retry_at: None,
                snapshot_waiters: Vec::new(),
                last_snapshot: None,
                last_snapshot_bytes: boot.snapshot_bytes,
                held_writes: Vec::new(),
                transfer_waiters: Vec::new(),
            }
        });
        (addr, watch)
    }

    /// Starts a replicator for every member but this node that lacks one
    /// (or whose address changed), stops those of nodes that left, and
    /// publishes the configuration to the HTTP front door. Called at start
    /// and whenever the configuration in force changes.
    fn sync_members(&mut self) {
        let index = self.raft.config_index();
        let committed = index <= self.raft.commit_index();
        let published = self.cluster.borrow().clone();
        if self.members_synced && published.config_index == index && published.membership == *self.raft.membership() {
            if published.config_committed != committed {
                let view = ClusterView { config_committed: committed, ..(*published).clone() };
                self.cluster.send_replace(Arc::new(view));
            }
            return;
        }
        self.members_synced = true;
        let membership = self.raft.membership().clone();
        let Some(me) = self.me.clone() else { return };
        let my_id = self.raft.id();
        let wanted: BTreeMap<NodeId, String> = membership
            .members
            .iter()
            .filter(|&(&id, _)| id != my_id)
            .map(|(&id, m)| {
                let fallback = || self.settings.peers.get(&id).map(|a| a.to_string()).unwrap_or_default();
                (id, if m.address.is_empty() { fallback() } else { m.address.clone() })
            })
            .collect();
        self.replicators.retain(|id, (address, r)| {
            let keep = wanted.get(id) == Some(address);
            if !keep {
                info!(target: T_CONSENSUS, "node {my_id} stops replicating to node {id} ({address}): not a member now");
                r.do_send(StopReplicator);
                self.metrics.remove_peer(*id);
            }
            keep
        });
        for (id, address) in wanted {
            if self.replicators.contains_key(&id) {
                continue;
            }
            if address.is_empty() {
                warn!(target: T_CONSENSUS, "node {my_id}: member {id} has no known address; nothing is sent to it");
                continue;
            }
            let pm = self.metrics.add_peer(id);
            let r = Replicator::new(
                id,
                address.clone(),
                published.cluster_id,
                &self.settings,
                self.snapshots.clone(),
                me.clone().recipient(),
                self.metrics.clone(),
                pm,
            );
            self.replicators.insert(id, (address, r.start()));
        }
        let m = &self.metrics;
        m.config_changes.fetch_add(u64::from(index > 0), Relaxed);
        m.voters.store(membership.voters().count() as u64, Relaxed);
        m.learners.store(membership.learners().count() as u64, Relaxed);
        let view = ClusterView {
            cluster_id: published.cluster_id,
            config_index: index,
            membership,
            config_committed: committed,
        };
        self.cluster.send_replace(Arc::new(view));
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Called after every input. The flush normally runs once the mailbox
    /// is drained (so everything that arrived together shares one persist
    /// op and one AppendEntries), but actix drains a mailbox completely
    /// before it runs a notified message: under a steady inflow that would
    /// postpone the flush — and the WAL write — indefinitely (seen as a
    /// 20-60 ms wait between a request's arrival and its fsync). So a flush
    /// also runs inline after `flush_max_inputs` inputs or when the first
    /// unflushed input is `flush_max_delay` old (settings).
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        self.unflushed += 1;
        let first = *self.unflushed_since.get_or_insert_with(Instant::now);
        let max_inputs = self.settings.flush_max_inputs;
        let max_delay = self.settings.flush_max_delay;
        if (max_inputs > 0 && self.unflushed >= max_inputs) || (!max_delay.is_zero() && first.elapsed() >= max_delay) {
            self.flush(ctx);
            return;
        }
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// Feeds the core the ticks that have elapsed by now. Called before
    /// every input, so a message that waited in the mailbox while the
    /// thread was stalled is handled after the time that passed meanwhile
    /// (see `TickClock`). After a long stall (a paused process) the core
    /// sees the time it missed, so a leader that may have been deposed
    /// meanwhile stops trusting its lease.
    fn advance_clock(&mut self) {
        let elapsed = Instant::now().saturating_duration_since(self.started).as_nanos() as u64;
        self.clock.advance(&mut self.raft, elapsed);
    }

    fn kick_storage(&mut self) {
        if self.storage_busy || self.storage_queue.is_empty() {
            return;
        }
        let Some(me) = &self.me else { return };
        self.storage_busy = true;
        let ops = std::mem::take(&mut self.storage_queue);
        self.storage.do_send(PersistBatch { ops, reply_to: me.clone().recipient() });
    }

    fn route(&mut self, m: RaftMessage) {
        if m.body.is_request() {
            match self.replicators.get(&m.to) {
                Some((_, r)) => r.do_send(SendRpc(m)),
                None => warn!(target: T_CONSENSUS, "no replicator for node {}; message dropped", m.to),
            }
        } else if let Some(tx) = self.inbound.remove(&m.rpc_id) {
            let _ = tx.send(m);
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.unflushed = 0;
        self.unflushed_since = None;
        self.settle_transfer();
        let rd = self.raft.ready();
        if let Some(op) = rd.persist {
            self.storage_queue.push(op);
            self.kick_storage();
        }
        for m in rd.messages {
            self.route(m);
        }
        if let Some(meta) = rd.snapshot {
            let text = format!(
                "node {} installed the leader's snapshot at index {} (term {})",
                self.raft.id(),
                meta.index,
                meta.term
            );
            self.timeline.record(now_ms(), self.raft.current_term(), "snapshot", text);
            // Before the entries that follow it.
            self.applied_bytes_since = 0;
            self.state_machine.do_send(Restore { meta });
        }
        if !rd.committed.is_empty() {
            self.applied_bytes_since += rd.committed.iter().map(|e| e.size_hint() as u64).sum::<u64>();
            let mut waiting = Vec::new();
            for (index, id) in rd.proposals {
                if let Some(reply) = self.proposals.remove(&id) {
                    waiting.push((index, reply));
                } else if let Some(reply) = self.conf_waiters.remove(&id) {
                    // A configuration is the core's own: done once committed.
                    let _ = reply.send(Ok(MembersChanged { index }));
                }
            }
            self.state_machine.do_send(Apply { entries: rd.committed, waiting });
        }
        for (id, index) in rd.reads {
            if let Some((query, reply)) = self.reads.remove(&id) {
                self.state_machine.do_send(ServeRead { index, query, reply });
            }
        }
        let leader = self.raft.leader_id();
        for id in rd.failed_reads {
            if let Some((_, reply)) = self.reads.remove(&id) {
                let _ = reply.send(Err(ClientError::NotLeader { leader }));
            }
        }
        for id in rd.dropped_proposals {
            if let Some(reply) = self.proposals.remove(&id) {
                let _ = reply.send(Err(ClientError::Dropped));
            }
            if let Some(reply) = self.conf_waiters.remove(&id) {
                let _ = reply.send(Err(ChangeFailed::Dropped));
            }
        }
        // Their entries were replaced by a snapshot: dropping the reply
        // answers 504, outcome unknown, which is the truth.
        for id in rd.unknown_proposals {
            self.proposals.remove(&id);
            self.conf_waiters.remove(&id);
        }
        // A long committed log goes to the state machine in chunks; ticks,
        // votes and heartbeats get their turn in between.
        if self.raft.has_unapplied() && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
        self.maybe_snapshot();
        self.observe();
    }

    /// Proposes a client write, or holds it while a leadership transfer
    /// runs (the core refuses proposals then).
    fn propose_write(&mut self, command: Bytes, reply: ClientReply) {
        let id = self.next_id();
        match self.raft.propose(id, command.clone()) {
            Ok(_) => {
                self.metrics.proposals.fetch_add(1, Relaxed);
                self.proposals.insert(id, reply);
            }
            Err(NotLeader::Transferring(_)) => self.held_writes.push((command, reply)),
            Err(NotLeader::Leader(leader)) => {
                let _ = reply.send(Err(ClientError::NotLeader { leader }));
            }
        }
    }

    /// After a leadership transfer: if this node still leads (the transfer
    /// was abandoned), the held writes are proposed and the callers told it
    /// timed out; once another node is known to lead, the held writes are
    /// answered "not leader" with it (the HTTP layer forwards them) and the
    /// callers told who leads. While no leader is known they wait.
    fn settle_transfer(&mut self) {
        if self.raft.transfer().is_some() || (self.held_writes.is_empty() && self.transfer_waiters.is_empty()) {
            return;
        }
        let (role, leader, term) = (self.raft.role(), self.raft.leader_id(), self.raft.current_term());
        let me = self.raft.id();
        if role == Role::Leader {
            for (target, reply) in self.transfer_waiters.drain(..) {
                let _ = reply.send(Err(TransferFailed::TimedOut(target)));
            }
            for (command, reply) in std::mem::take(&mut self.held_writes) {
                if !reply.is_closed() {
                    self.propose_write(command, reply);
                }
            }
        } else if let Some(l) = leader {
            for (_, reply) in self.transfer_waiters.drain(..) {
                let _ = reply.send(Ok(TransferDone { leader: l, previous_leader: me, term }));
            }
            for (_, reply) in self.held_writes.drain(..) {
                let _ = reply.send(Err(ClientError::NotLeader { leader: Some(l) }));
            }
        } else {
            self.held_writes.retain(|(_, reply)| !reply.is_closed());
        }
    }

    /// The voter whose log matches this leader's furthest (the lowest id
    /// among equals): the quickest to take over.
    fn best_transfer_target(&self) -> Option<NodeId> {
        self.raft.progress().iter().max_by_key(|&(&id, p)| (p.match_index, std::cmp::Reverse(id))).map(|(&id, _)| id)
    }

    /// The snapshot policy: once enough entries (or bytes) were applied
    /// since the latest snapshot, or a caller of `POST /admin/snapshot`
    /// waits, the state machine freezes its state at the applied index and
    /// the snapshotter writes it out; applying goes on meanwhile. One at a
    /// time.
    fn maybe_snapshot(&mut self) {
        if self.snapshot_in_progress.is_some() {
            return;
        }
        // Callers whose index a snapshot installed from the leader covers.
        let latest = self.raft.snapshot().clone();
        let covered: Vec<_> = self.snapshot_waiters.extract_if(.., |(want, _)| *want <= latest.index).collect();
        for (_, reply) in covered {
            let info = SnapshotInfo { index: latest.index, term: latest.term, ..Default::default() };
            let _ = reply.send(Ok(self.last_snapshot.clone().filter(|l| l.index == latest.index).unwrap_or(info)));
        }
        let applied = self.raft.applied();
        let since = applied - self.raft.snapshot().index.min(applied);
        if since == 0 {
            return;
        }
        let s = &self.settings;
        let asked = self.snapshot_waiters.iter().any(|(want, _)| *want > self.raft.snapshot().index);
        // Amortized: a snapshot rewrites the whole state, so wait until the
        // log since the last one is `ratio` times its size (measured: with a
        // 120 MB state and a fixed 10,000-entry trigger, snapshots every
        // second cut bulk write throughput to 0.67x; BENCHMARKS.md).
        let amortized = self.applied_bytes_since as f64 >= s.snapshot_log_ratio * self.last_snapshot_bytes as f64;
        let due = amortized
            && ((s.snapshot_entries > 0 && since >= s.snapshot_entries)
                || (s.snapshot_bytes > 0 && self.applied_bytes_since >= s.snapshot_bytes));
        let backing_off = self.snapshot_retry_at.is_some_and(|t| Instant::now() < t);
        if !(asked || (due && !backing_off)) {
            return;
        }
        let (Some(meta), Some(me)) = (self.raft.snapshot_meta(applied), &self.me) else { return };
        self.snapshot_in_progress = Some(applied);
        self.applied_bytes_since = 0;
        self.state_machine.do_send(TakeSnapshot { meta, reply_to: me.clone().recipient() });
    }

    fn snapshot_saved(&mut self, msg: SnapshotSaved) {
        self.snapshot_in_progress = None;
        let meta = msg.meta;
        let m = &self.metrics;
        match msg.result {
            Ok(info) => {
                self.snapshot_retry_at = None;
                self.raft.on_snapshot_saved(meta.clone());
                // Keep a tail for followers that are a little behind; never
                // past a snapshot still being sent (the core clamps).
                let upto = self.raft.compact(meta.index.saturating_sub(self.settings.snapshot_keep_entries));
                self.storage.do_send(Purge { upto });
                m.snapshots_taken.fetch_add(1, Relaxed);
                m.snapshot_last_bytes.store(info.bytes, Relaxed);
                m.snapshot_last_micros.store((info.duration_ms * 1e3) as u64, Relaxed);
                m.snapshot_seconds.observe(info.duration_ms / 1e3);
                info!(
                    target: super::snapshotter::T_SNAPSHOT,
                    "node {} took snapshot at {} (term {}): {} bytes in {:.1} ms; log compacted up to {upto}, {} \
                     entries ({} bytes) in memory",
                    self.raft.id(),
                    meta.index,
                    meta.term,
                    info.bytes,
                    info.duration_ms,
                    self.raft.log().len(),
                    self.raft.log().bytes()
                );
                let waiters = std::mem::take(&mut self.snapshot_waiters);
                for (want, reply) in waiters {
                    if want <= meta.index {
                        let _ = reply.send(Ok(info.clone()));
                    } else {
                        self.snapshot_waiters.push((want, reply));
                    }
                }
                let text =
                    format!("node {} took a snapshot at index {} ({} bytes)", self.raft.id(), meta.index, info.bytes);
                self.timeline.record(now_ms(), self.raft.current_term(), "snapshot", text);
                self.last_snapshot_bytes = info.bytes;
                self.last_snapshot = Some(info);
            }
            Err(e) => {
                m.snapshots_failed.fetch_add(1, Relaxed);
                self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
                warn!(
                    target: super::snapshotter::T_SNAPSHOT,
                    "node {} snapshot at {} failed: {e}; the log is not compacted, next try in {:?}",
                    self.raft.id(),
                    meta.index,
                    SNAPSHOT_RETRY
                );
                for (_, reply) in self.snapshot_waiters.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        self.maybe_snapshot();
        self.observe();
    }

    /// Keeps metrics current and logs what the core's own lines do not.
    fn observe(&mut self) {
        self.sync_members();
        let r = &self.raft;
        let m = &self.metrics;
        let now = (r.role(), r.current_term(), r.leader_id());
        let config = (r.config_index(), r.config_index() <= r.commit_index());
        if now != self.observed || config != self.observed_config {
            let members = if config != self.observed_config { describe_members(r.membership()) } else { String::new() };
            let (role, term, leader) = self.observed;
            let before = Observed { role, term, leader, config: self.observed_config, members: String::new() };
            let (role, term, leader) = now;
            self.timeline.observe(now_ms(), &before, &Observed { role, term, leader, config, members });
            self.observed_config = config;
        }
        if now != self.observed {
            let (role, term, leader) = now;
            if role != self.observed.0 {
                if role == Role::Candidate {
                    m.elections_started.fetch_add(1, Relaxed);
                }
                if role == Role::Leader {
                    m.elections_won.fetch_add(1, Relaxed);
                }
            }
            if leader != self.observed.2 && leader.is_some() {
                m.leader_changes.fetch_add(1, Relaxed);
            }
            m.set_role(role);
            m.term.store(term, Relaxed);
            m.leader_id.store(leader.unwrap_or(0), Relaxed);
            self.observed = now;
        }
        m.commit_index.store(r.commit_index(), Relaxed);
        m.last_log_index.store(r.last_index(), Relaxed);
        m.stable_index.store(r.stable_index(), Relaxed);
        m.pending_proposals.store(self.proposals.len() as u64, Relaxed);
        m.pending_reads.store(self.reads.len() as u64, Relaxed);
        m.log_first_index.store(r.log().offset() + 1, Relaxed);
        m.log_entries_memory.store(r.log().len() as u64, Relaxed);
        m.log_bytes_memory.store(r.log().bytes() as u64, Relaxed);
        m.snapshot_index.store(r.snapshot().index, Relaxed);
        m.snapshot_term.store(r.snapshot().term, Relaxed);
        let last = r.last_index();
        for peer in m.peer_ids() {
            let (matched, lag) = match r.progress().get(&peer) {
                Some(p) => (p.match_index, last - p.match_index.min(last)),
                None => (0, 0),
            };
            if let Some(pm) = m.peer(peer) {
                pm.match_index.store(matched, Relaxed);
                pm.replication_lag.store(lag, Relaxed);
            }
        }
    }

    fn status(&self) -> Status {
        let r = &self.raft;
        let membership = r.membership();
        let peers = self
            .replicators
            .iter()
            .map(|(&id, (addr, _))| {
                let p = r.progress().get(&id);
                PeerStatus {
                    id,
                    address: addr.clone(),
                    role: if membership.is_voter(id) { "voter" } else { "learner" },
                    reachable: p.map(|_| r.reachable(id)),
                    match_index: p.map(|p| p.match_index),
                    next_index: p.map(|p| p.next_index),
                    state: p.map(|p| match p.state {
                        ProgressState::Probe => "probe",
                        ProgressState::Replicate => "replicate",
                        ProgressState::Snapshot => "snapshot",
                    }),
                    inflight: p.map(|p| p.inflight.len()),
                }
            })
            .collect();
        Status {
            id: r.id(),
            address: self.settings.listen.to_string(),
            role: r.role().as_str(),
            term: r.current_term(),
            voted_for: r.voted_for(),
            leader: r.leader_id(),
            leader_address: r
                .leader_id()
                .and_then(|l| self.replicators.get(&l).map(|(a, _)| a.clone()))
                .or_else(|| (r.leader_id() == Some(r.id())).then(|| self.settings.listen.to_string())),
            commit_index: r.commit_index(),
            last_log_index: r.last_index(),
            last_log_term: r.log().last_term(),
            stable_index: r.stable_index(),
            cluster_id: format_id(self.cluster.borrow().cluster_id),
            config_index: r.config_index(),
            config_committed: r.config_index() <= r.commit_index(),
            peers,
            pending_proposals: self.proposals.len(),
            pending_reads: self.reads.len(),
            log: self.log_status(),
            events: self.timeline.events(),
        }
    }

    fn log_status(&self) -> LogStatus {
        let r = &self.raft;
        let m = &self.metrics;
        LogStatus {
            first_index: r.log().offset() + 1,
            entries_in_memory: r.log().len() as u64,
            bytes_in_memory: r.log().bytes() as u64,
            wal_bytes_on_disk: m.wal_disk_bytes.load(Relaxed),
            wal_segments: m.wal_segments.load(Relaxed),
            snapshot_index: r.snapshot().index,
            snapshot_term: r.snapshot().term,
            last_snapshot: self.last_snapshot.clone(),
            snapshot_bytes_on_disk: m.snapshot_disk_bytes.load(Relaxed),
            snapshots_taken: m.snapshots_taken.load(Relaxed),
            snapshots_sent: m.snapshots_sent.load(Relaxed),
            snapshots_received: m.snapshots_received.load(Relaxed),
        }
    }
}

impl Actor for ConsensusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
        // Drop reply slots of peer requests whose HTTP handler gave up.
        ctx.run_interval(Duration::from_secs(1), |act, _| act.inbound.retain(|_, tx| !tx.is_closed()));
        info!(
            target: T_CONSENSUS,
            "node {} consensus started: {}, election timeout {:?}, heartbeat {:?}",
            self.raft.id(),
            self.raft.membership(),
            self.settings.election_timeout,
            self.settings.heartbeat
        );
        self.observe();
    }
}

impl Handler<Tick> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Self::Context) {
        self.advance_clock();
        self.schedule_flush(ctx);
    }
}

impl Handler<InboundRpc> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, InboundRpc { mut msg, reply }: InboundRpc, ctx: &mut Self::Context) {
        let id = self.next_id();
        msg.rpc_id = id;
        self.inbound.insert(id, reply);
        if msg.body.kind() == MessageKind::TimeoutNow {
            self.metrics.timeout_now_received.fetch_add(1, Relaxed);
        }
        self.advance_clock();
        self.raft.step(msg);
        self.schedule_flush(ctx);
    }
}

impl Handler<PeerEvent> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, ev: PeerEvent, ctx: &mut Self::Context) {
        self.advance_clock();
        match ev {
            PeerEvent::Replied(msg) => self.raft.step(msg),
            PeerEvent::Unreachable { peer } => self.raft.report_unreachable(peer),
            PeerEvent::Removed { peer, reason } => {
                // The cluster has committed this node's removal (it was down
                // then, or its data was wiped and it started again under its
                // old id): nothing it does can help the members any more, and
                // running on would only fill its log with refused campaigns.
                error!(
                    target: T_CONSENSUS,
                    "node {} stops: node {peer} says it is no member of the cluster: {reason}",
                    self.raft.id()
                );
                log::logger().flush();
                std::process::exit(EXIT_REMOVED);
            }
        }
        self.schedule_flush(ctx);
    }
}

impl Handler<Persisted> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: Persisted, ctx: &mut Self::Context) {
        self.storage_busy = false;
        self.advance_clock();
        self.raft.on_persisted(msg.seq);
        self.kick_storage();
        self.schedule_flush(ctx);
    }
}

impl ConsensusActor {
    /// Whether a client request may go into the core: one whose HTTP
    /// handler has given up (its deadline passed and the client got 504)
    /// is dropped unproposed, so that it cannot take effect later.
    fn admit(&mut self, reply: ClientReply) -> Option<ClientReply> {
        if reply.is_closed() {
            self.metrics.expired_requests.fetch_add(1, Relaxed);
            return None;
        }
        Some(reply)
    }
}

impl Handler<ClientWrite> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: ClientWrite, ctx: &mut Self::Context) {
        let Some(reply) = self.admit(msg.reply) else { return };
        self.advance_clock();
        self.propose_write(msg.command, reply);
        self.schedule_flush(ctx);
    }
}

impl Handler<ClientRead> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: ClientRead, ctx: &mut Self::Context) {
        let Some(reply) = self.admit(msg.reply) else { return };
        // A lease is judged against the clock as it is now.
        self.advance_clock();
        let id = self.next_id();
        let accepted = if msg.lease { self.raft.read_lease(id) } else { self.raft.read_index(id) };
        match accepted {
            Ok(()) => {
                self.reads.insert(id, (msg.query, reply));
                self.schedule_flush(ctx);
            }
            Err(NotLeader::Leader(leader)) => {
                let _ = reply.send(Err(ClientError::NotLeader { leader }));
            }
            // Reads are never refused for a transfer (only lease reads
            // become ReadIndex reads); answered like any refusal.
            Err(NotLeader::Transferring(_)) => {
                let _ = reply.send(Err(ClientError::NotLeader { leader: self.raft.leader_id() }));
            }
        }
    }
}

impl Handler<TransferLeader> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: TransferLeader, ctx: &mut Self::Context) {
        self.advance_clock();
        let (me, term) = (self.raft.id(), self.raft.current_term());
        if self.raft.role() != Role::Leader {
            let _ = msg.reply.send(Err(TransferFailed::NotLeader(self.raft.leader_id())));
            return;
        }
        let Some(target) = msg.to.or_else(|| self.best_transfer_target()) else {
            let _ = msg.reply.send(Err(TransferFailed::NoOtherVoter));
            return;
        };
        if target == me && self.raft.voters().contains(&me) {
            let _ = msg.reply.send(Ok(TransferDone { leader: me, previous_leader: me, term }));
            return;
        }
        match self.raft.transfer_leadership(target) {
            Ok(()) => {
                self.metrics.leader_transfers.fetch_add(1, Relaxed);
                self.transfer_waiters.push((target, msg.reply));
                self.schedule_flush(ctx);
            }
            Err(TransferError::NotAVoter(t)) => {
                let _ = msg.reply.send(Err(TransferFailed::NotAVoter(t)));
            }
            Err(TransferError::NotLeader(l)) => {
                let _ = msg.reply.send(Err(TransferFailed::NotLeader(l)));
            }
        }
    }
}

impl Handler<ChangeMembers> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: ChangeMembers, ctx: &mut Self::Context) {
        self.advance_clock();
        let id = self.next_id();
        match self.raft.propose_conf_change(id, msg.change) {
            Ok(_) => {
                self.conf_waiters.insert(id, msg.reply);
                self.schedule_flush(ctx);
            }
            Err(e) => {
                let _ = msg.reply.send(Err(ChangeFailed::Refused(e)));
            }
        }
    }
}

impl Handler<GetStatus> for ConsensusActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<Flush> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        self.flush_scheduled = false;
        self.flush(ctx);
    }
}

impl Handler<SnapshotSaved> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotSaved, _: &mut Self::Context) {
        self.advance_clock();
        self.snapshot_saved(msg);
    }
}

impl Handler<TakeSnapshotNow> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: TakeSnapshotNow, _: &mut Self::Context) {
        let applied = self.raft.applied();
        let latest = self.raft.snapshot().clone();
        if applied == 0 {
            let _ = msg.reply.send(Err("nothing to snapshot: no log entry has been applied yet".into()));
            return;
        }
        if applied <= latest.index && self.snapshot_in_progress.is_none() {
            // Nothing new since the latest snapshot (taken or installed).
            let info = match &self.last_snapshot {
                Some(info) if info.index == latest.index => info.clone(),
                _ => SnapshotInfo { index: latest.index, term: latest.term, ..Default::default() },
            };
            let _ = msg.reply.send(Ok(info));
            return;
        }
        self.snapshot_waiters.push((applied, msg.reply));
        self.maybe_snapshot();
    }
}

/// "voters 1, 2, 3; learners 4" for the timeline.
fn describe_members(m: &crate::raft::Membership) -> String {
    let list = |ids: Vec<NodeId>| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let learners: Vec<NodeId> = m.learners().collect();
    let mut s = format!("voters {}", list(m.voters().collect()));
    if !learners.is_empty() {
        s.push_str(&format!("; learners {}", list(learners)));
    }
    s
}
