//! Unit tests of the consensus rules, each tied to the sentence of the
//! paper (Ongaro & Ousterhout 2014, "In Search of an Understandable
//! Consensus Algorithm (Extended Version)") or the dissertation it checks.
//!
//! `Net` is a tiny synchronous harness: storage completes at once unless a
//! test holds it back, messages are delivered in order unless a link is cut.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::*;

const E: u64 = 10; // election ticks
const H: u64 = 2; // heartbeat ticks

fn config(id: NodeId, voters: &[NodeId]) -> Config {
    Config {
        id,
        voters: voters.to_vec(),
        election_ticks: E,
        heartbeat_ticks: H,
        max_inflight: 4,
        max_append_bytes: 1 << 20,
        pre_vote: true,
        check_quorum: true,
        seed: id * 7919,
        max_apply_bytes: 1 << 20,
        promote_max_lag: 5,
        addresses: BTreeMap::new(),
    }
}

fn cmd(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn ent(index: Index, term: Term) -> Entry {
    Entry { index, term, data: EntryData::Command(cmd(&format!("{index}@{term}"))) }
}

#[derive(Default)]
struct Applied {
    entries: Vec<Entry>,
    reads: Vec<(RequestId, Index)>,
    failed_reads: Vec<RequestId>,
    proposals: Vec<(Index, RequestId)>,
}

struct Net {
    nodes: BTreeMap<NodeId, Raft>,
    applied: BTreeMap<NodeId, Applied>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose storage does not complete (ops are held).
    stalled_storage: BTreeSet<NodeId>,
    held_ops: BTreeMap<NodeId, Vec<PersistOp>>,
    /// Every message delivered, for assertions.
    trace: Vec<Message>,
}

impl Net {
    fn new(ids: &[NodeId]) -> Net {
        let nodes = ids.iter().map(|&id| (id, Raft::new(config(id, ids), HardState::default(), vec![]))).collect();
        Net {
            nodes,
            applied: ids.iter().map(|&id| (id, Applied::default())).collect(),
            cut: BTreeSet::new(),
            stalled_storage: BTreeSet::new(),
            held_ops: BTreeMap::new(),
            trace: vec![],
        }
    }

    fn with_logs(ids: &[NodeId], logs: &[(NodeId, Term, Vec<Entry>)]) -> Net {
        let mut net = Net::new(ids);
        for (id, term, entries) in logs {
            let hs = HardState { current_term: *term, voted_for: None };
            let mut r = Raft::new(config(*id, ids), hs, entries.clone());
            r.end_boot_lease();
            net.nodes.insert(*id, r);
        }
        net
    }

    fn node(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Runs every node's `ready()` and delivers messages until quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut outbox = Vec::new();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                loop {
                    let rd = self.node(id).ready();
                    if rd.is_empty() {
                        break;
                    }
                    if let Some(op) = rd.persist {
                        if self.stalled_storage.contains(&id) {
                            self.held_ops.entry(id).or_default().push(op);
                        } else {
                            self.node(id).on_persisted(op.seq);
                        }
                    }
                    let a = self.applied.get_mut(&id).unwrap();
                    a.entries.extend(rd.committed);
                    a.reads.extend(rd.reads);
                    a.failed_reads.extend(rd.failed_reads);
                    a.proposals.extend(rd.proposals);
                    outbox.extend(rd.messages);
                }
            }
            if outbox.is_empty() {
                return;
            }
            for m in outbox {
                if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                    continue;
                }
                self.trace.push(m.clone());
                self.node(m.to).step(m);
            }
        }
        panic!("network did not settle");
    }

    fn release_storage(&mut self, id: NodeId) {
        self.stalled_storage.remove(&id);
        for op in self.held_ops.remove(&id).unwrap_or_default() {
            self.node(id).on_persisted(op.seq);
        }
    }

    fn elect(&mut self, id: NodeId) {
        self.node(id).campaign_now();
        self.settle();
        assert_eq!(self.nodes[&id].role(), Role::Leader, "node {id} should have won");
    }

    fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            for r in self.nodes.values_mut() {
                r.tick();
            }
            self.settle();
        }
    }
}

fn leader_of(net: &Net) -> Vec<NodeId> {
    net.nodes.values().filter(|r| r.role() == Role::Leader).map(|r| r.id()).collect()
}

// ---------------------------------------------------------------------------
// Elections (§5.2)
// ---------------------------------------------------------------------------

/// §5.2: "A candidate wins an election if it receives votes from a majority
/// of the servers in the full cluster for the same term."
#[test]
fn candidate_with_majority_becomes_the_only_leader() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(leader_of(&net), vec![1]);
    for r in net.nodes.values() {
        assert_eq!(r.current_term(), 1);
        assert_eq!(r.leader_id(), Some(1));
    }
}

/// §5.2: "Raft uses randomized election timeouts ... chosen randomly from a
/// fixed interval". The randomness is injected: same seed, same timeout.
#[test]
fn election_timeout_is_randomized_within_e_to_2e_and_seeded() {
    let mut seen = BTreeSet::new();
    for seed in 0..50u64 {
        let mut c = config(1, &[1, 2, 3]);
        c.seed = seed;
        let first = |c: &Config| {
            let mut r = Raft::new(c.clone(), HardState::default(), vec![]);
            (1..=3 * E).find(|_| {
                r.tick();
                r.role() != Role::Follower
            })
        };
        let t = first(&c).expect("times out within 2E");
        assert!((E..2 * E).contains(&t), "timeout {t} outside [E, 2E)");
        assert_eq!(first(&c), Some(t), "same seed must give the same timeout");
        seen.insert(t);
    }
    assert!(seen.len() > 3, "timeouts should vary with the seed: {seen:?}");
}

/// Figure 2, RequestVote receiver: "If votedFor is null or candidateId, and
/// candidate's log is at least as up-to-date as receiver's log, grant vote";
/// and a server votes at most once per term.
#[test]
fn a_server_votes_at_most_once_per_term() {
    let mut r = Raft::new(config(1, &[1, 2, 3]), HardState::default(), vec![]);
    let req = |from| Message {
        from,
        to: 1,
        term: 1,
        rpc_id: from,
        body: Body::RequestVote { pre_vote: false, last_log_index: 0, last_log_term: 0, transfer: false },
    };
    r.step(req(2));
    let rd = r.ready();
    r.on_persisted(rd.persist.unwrap().seq);
    r.step(req(3));
    let rd = r.ready();
    if let Some(op) = rd.persist {
        r.on_persisted(op.seq);
    }
    let mut grants = BTreeMap::new();
    for m in rd.messages.into_iter().chain(r.ready().messages) {
        if let Body::RequestVoteResponse { vote_granted, .. } = m.body {
            grants.insert(m.to, vote_granted);
        }
    }
    assert_eq!(grants, BTreeMap::from([(2, true), (3, false)]));
    assert_eq!(r.voted_for(), Some(2));
}

/// Figure 2: persistent state is "updated on stable storage before
/// responding to RPCs". The vote leaves only after storage confirms it.
#[test]
fn vote_is_persisted_before_it_is_granted() {
    let mut r = Raft::new(config(1, &[1, 2, 3]), HardState::default(), vec![]);
    r.step(Message {
        from: 2,
        to: 1,
        term: 5,
        rpc_id: 42,
        body: Body::RequestVote { pre_vote: false, last_log_index: 0, last_log_term: 0, transfer: false },
    });
    let rd = r.ready();
    let op = rd.persist.expect("vote must be persisted");
    assert_eq!(op.hard_state, Some(HardState { current_term: 5, voted_for: Some(2) }));
    assert!(rd.messages.is_empty(), "no response before the vote is durable");
    r.on_persisted(op.seq);
    let rd = r.ready();
    assert_eq!(rd.messages.len(), 1);
    assert_eq!(rd.messages[0].rpc_id, 42, "the response answers the request");
    assert!(matches!(rd.messages[0].body, Body::RequestVoteResponse { vote_granted: true, .. }));
}

/// A candidate's own vote counts only once it is durable, like any other.
#[test]
fn candidate_counts_its_own_vote_only_when_durable() {
    let mut r = Raft::new(config(1, &[1]), HardState::default(), vec![]);
    r.campaign_now();
    assert_eq!(r.role(), Role::Candidate, "single voter wins pre-vote at once");
    let rd = r.ready();
    assert_eq!(r.role(), Role::Candidate, "still waiting for its vote to be durable");
    r.on_persisted(rd.persist.unwrap().seq);
    assert_eq!(r.role(), Role::Leader);
}

/// §5.4.1: "the voter denies its vote if its own log is more up-to-date
/// than that of the candidate."
#[test]
fn election_restriction_denies_votes_to_stale_candidates() {
    let ids = [1, 2, 3];
    let mut net = Net::with_logs(
        &ids,
        &[(1, 2, vec![ent(1, 1)]), (2, 2, vec![ent(1, 1), ent(2, 2)]), (3, 2, vec![ent(1, 1), ent(2, 2)])],
    );
    net.node(1).campaign_now();
    net.settle();
    assert_ne!(net.nodes[&1].role(), Role::Leader, "node 1 lacks entry 2 and must not win");
    net.elect(2);
}

/// §9.6 (pre-vote): a node cut off from the cluster keeps timing out but does
/// not raise its term, so when it returns it does not depose the leader.
#[test]
fn pre_vote_keeps_a_partitioned_node_from_inflating_its_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.tick_all(10 * E);
    assert_eq!(net.nodes[&3].current_term(), 1, "pre-vote failed, so no new term");
    net.heal();
    net.tick_all(3 * E);
    assert_eq!(leader_of(&net), vec![1], "the healthy leader survives the rejoin");
    assert_eq!(net.nodes[&1].current_term(), 1);
}

/// §6.2 (check-quorum): "a leader steps down if an election timeout elapses
/// without a successful round of heartbeats to a majority of its cluster".
#[test]
fn check_quorum_leader_without_majority_steps_down() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    for _ in 0..2 * E {
        net.node(1).tick();
        net.settle();
    }
    assert_eq!(net.nodes[&1].role(), Role::Follower);
}

/// §6.2: "if a server receives a RequestVote request within the minimum
/// election timeout of hearing from a current leader, it does not update its
/// term or grant its vote."
#[test]
fn followers_hearing_from_a_leader_ignore_disruptive_candidates() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // Node 3 forces an election (no pre-vote) as if it had a stale timer.
    let mut r3 = Raft::new(
        Config { pre_vote: false, ..config(3, &[1, 2, 3]) },
        HardState { current_term: 1, voted_for: None },
        net.nodes[&3].log().all_entries().to_vec(),
    );
    r3.campaign_now();
    let rd = r3.ready();
    r3.on_persisted(rd.persist.unwrap().seq);
    let msgs = r3.ready().messages;
    assert!(msgs.iter().any(|m| m.term == 2));
    for m in msgs {
        let to = m.to;
        net.node(to).step(m);
    }
    assert_eq!(net.nodes[&2].current_term(), 1, "follower 2 heard from leader 1 and ignored the vote");
    assert_eq!(net.nodes[&1].role(), Role::Leader);
}

// ---------------------------------------------------------------------------
// Log replication (§5.3)
// ---------------------------------------------------------------------------

fn append(from: NodeId, term: Term, prev: (Index, Term), entries: Vec<Entry>, commit: Index) -> Message {
    Message {
        from,
        to: 1,
        term,
        rpc_id: 7,
        body: Body::AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: commit,
            ctx: 0,
        },
    }
}

fn follower(entries: Vec<Entry>, term: Term) -> Raft {
    Raft::new(config(1, &[1, 2, 3]), HardState { current_term: term, voted_for: None }, entries)
}

fn flush(r: &mut Raft) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let rd = r.ready();
        out.extend(rd.messages);
        match rd.persist {
            Some(op) => r.on_persisted(op.seq),
            None => return out,
        }
    }
}

/// Figure 2, AppendEntries receiver: "Reply false if log doesn't contain an
/// entry at prevLogIndex whose term matches prevLogTerm", with the fast
/// back-tracking hint of §5.3 ("the follower can include the term of the
/// conflicting entry and the first index it stores for that term").
#[test]
fn append_entries_rejects_a_mismatch_with_a_conflict_hint() {
    let mut r = follower(vec![ent(1, 1), ent(2, 2), ent(3, 2), ent(4, 2)], 3);
    r.step(append(2, 3, (4, 3), vec![ent(5, 3)], 0));
    let out = flush(&mut r);
    let Body::AppendEntriesResponse { success, conflict_index, conflict_term, .. } = out[0].body else { panic!() };
    assert!(!success);
    assert_eq!((conflict_index, conflict_term), (2, Some(2)), "skip the whole of term 2");

    r.step(append(2, 3, (9, 3), vec![], 0));
    let out = flush(&mut r);
    let Body::AppendEntriesResponse { success, conflict_index, conflict_term, .. } = out[0].body else { panic!() };
    assert!(!success);
    assert_eq!((conflict_index, conflict_term), (5, None), "log too short: try after our last");
}

/// Figure 2: "If an existing entry conflicts with a new one (same index but
/// different terms), delete the existing entry and all that follow it."
/// Only then: a stale or duplicated AppendEntries must not cut entries.
#[test]
fn append_entries_truncates_only_a_conflicting_suffix() {
    let mut r = follower(vec![ent(1, 1), ent(2, 1), ent(3, 1)], 1);
    // A delayed copy of an older AppendEntries that carried only entry 2.
    r.step(append(2, 1, (1, 1), vec![ent(2, 1)], 0));
    flush(&mut r);
    assert_eq!(r.last_index(), 3, "entry 3 does not conflict and must stay");
    // A real conflict at 2 removes 2 and 3.
    r.step(append(2, 2, (1, 1), vec![ent(2, 2)], 0));
    flush(&mut r);
    assert_eq!(r.last_index(), 2);
    assert_eq!(r.log().term(2), Some(2));
}

/// Figure 2: the follower fsyncs appended entries before it answers success.
#[test]
fn append_success_waits_for_the_entries_to_be_durable() {
    let mut r = follower(vec![], 1);
    r.step(append(2, 1, (0, 0), vec![ent(1, 1), ent(2, 1)], 0));
    let rd = r.ready();
    let op = rd.persist.expect("entries must be persisted");
    assert_eq!(op.entries.len(), 2);
    assert!(rd.messages.is_empty());
    r.on_persisted(op.seq);
    let msgs = r.ready().messages;
    assert!(matches!(msgs[0].body, Body::AppendEntriesResponse { success: true, match_index: 2, .. }));
}

/// Figure 2: "If leaderCommit > commitIndex, set commitIndex =
/// min(leaderCommit, index of last new entry)".
#[test]
fn follower_commit_is_bounded_by_the_last_new_entry() {
    let mut r = follower(vec![ent(1, 1), ent(2, 1), ent(3, 9)], 9);
    r.step(append(2, 9, (1, 1), vec![ent(2, 1)], 3));
    flush(&mut r);
    assert_eq!(r.commit_index(), 2, "entry 3 was not shown to match the leader");
}

/// §5.3: the leader retries with a lower nextIndex until the logs match,
/// then brings the follower's log in line with its own.
#[test]
fn leader_repairs_a_divergent_follower() {
    let ids = [1, 2, 3];
    let mut net = Net::with_logs(
        &ids,
        &[
            (1, 3, vec![ent(1, 1), ent(2, 1), ent(3, 3), ent(4, 3)]),
            (2, 3, vec![ent(1, 1), ent(2, 1), ent(3, 3)]),
            (3, 2, vec![ent(1, 1), ent(2, 2), ent(3, 2), ent(4, 2), ent(5, 2)]),
        ],
    );
    net.elect(1);
    let want: Vec<Term> = net.nodes[&1].log().all_entries().iter().map(|e| e.term).collect();
    for r in net.nodes.values() {
        let got: Vec<Term> = r.log().all_entries().iter().map(|e| e.term).collect();
        assert_eq!(got, want, "node {} log", r.id());
    }
}

// ---------------------------------------------------------------------------
// Commitment (§5.3, §5.4.2)
// ---------------------------------------------------------------------------

/// Builds node 1 of {1, 2, 3} as leader from `entries`, its votes granted
/// by node 2 through real messages. Returns the leader and its term.
fn manual_leader(term: Term, entries: Vec<Entry>) -> (Raft, Term) {
    let mut r = Raft::new(config(1, &[1, 2, 3]), HardState { current_term: term, voted_for: None }, entries);
    r.campaign_now();
    flush(&mut r);
    let grant = |term, pre_vote| Message {
        from: 2,
        to: 1,
        term,
        rpc_id: 0,
        body: Body::RequestVoteResponse { pre_vote, vote_granted: true },
    };
    r.step(grant(term + 1, true));
    flush(&mut r);
    r.step(grant(term + 1, false));
    flush(&mut r);
    assert_eq!(r.role(), Role::Leader);
    (r, term + 1)
}

fn append_ok(from: NodeId, term: Term, match_index: Index) -> Message {
    Message {
        from,
        to: 1,
        term,
        rpc_id: 0,
        body: Body::AppendEntriesResponse {
            success: true,
            prev_log_index: 0,
            match_index,
            conflict_index: 0,
            conflict_term: None,
            ctx: 0,
        },
    }
}

/// §5.4.2 / figure 8: "Raft never commits log entries from previous terms by
/// counting replicas. Only log entries from the leader's current term are
/// committed by counting replicas."
#[test]
fn leader_does_not_commit_an_old_term_entry_by_counting_replicas() {
    // Figure 8 (c): the leader of term 4 holds 2@2, which it replicates to a
    // majority; counting replicas must not commit it.
    let (mut r, term) = manual_leader(3, vec![ent(1, 1), ent(2, 2)]);
    assert_eq!(r.log().entry(3).map(|e| e.term), Some(term), "the no-op of the new term");
    r.step(append_ok(2, term, 2));
    flush(&mut r);
    assert_eq!(r.commit_index(), 0, "2@2 is on a majority but is not of the current term");
    // Figure 8 (e): once an entry of the current term is on a majority, it
    // commits, and the older entries with it.
    r.step(append_ok(2, term, 3));
    flush(&mut r);
    assert_eq!(r.commit_index(), 3);
}

/// §8: "each leader commit a blank no-op entry into the log at the start of
/// its term".
#[test]
fn new_leader_appends_a_noop_of_its_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(2);
    let e = net.nodes[&2].log().entry(1).unwrap().clone();
    assert_eq!((e.term, e.data), (1, EntryData::Noop));
    assert_eq!(net.nodes[&2].commit_index(), 1);
}

/// The leader's own write counts towards the majority only once durable.
#[test]
fn leader_counts_its_own_log_only_once_durable() {
    let mut net = Net::new(&[1, 2, 3, 4, 5]);
    net.elect(1);
    net.stalled_storage.insert(1);
    net.isolate(4);
    net.isolate(5);
    net.node(1).propose(1, cmd("x")).unwrap();
    net.settle();
    let idx = net.nodes[&1].last_index();
    assert!(net.nodes[&1].commit_index() < idx, "2 followers + an undurable leader are not 3 of 5");
    net.release_storage(1);
    net.settle();
    assert_eq!(net.nodes[&1].commit_index(), idx);
    assert_eq!(net.applied[&1].proposals.last(), Some(&(idx, 1)));
}

/// Batching: proposals that arrive together become one storage write and
/// one AppendEntries per follower.
#[test]
fn proposals_arriving_together_share_one_append_and_one_write() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..50 {
        net.node(1).propose(i, cmd("v")).unwrap();
    }
    let rd = net.node(1).ready();
    assert_eq!(rd.persist.as_ref().unwrap().entries.len(), 50);
    let appends: Vec<&Message> = rd.messages.iter().filter(|m| matches!(m.body, Body::AppendEntries { .. })).collect();
    assert_eq!(appends.len(), 2, "one per follower");
    for m in appends {
        let Body::AppendEntries { entries, .. } = &m.body else { unreachable!() };
        assert_eq!(entries.len(), 50);
    }
}

/// Pipelining: in replicate state a leader keeps up to `max_inflight`
/// AppendEntries outstanding per follower, and no more.
#[test]
fn replicate_state_pipelines_up_to_the_inflight_window() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    let mut sent_to_2 = 0;
    for i in 0..10 {
        net.node(1).propose(i, cmd("v")).unwrap();
        let rd = net.node(1).ready();
        if let Some(op) = rd.persist {
            net.node(1).on_persisted(op.seq);
        }
        sent_to_2 += rd.messages.iter().filter(|m| m.to == 2 && matches!(m.body, Body::AppendEntries { .. })).count();
    }
    assert_eq!(sent_to_2, 4, "window of 4 unanswered appends");
    assert_eq!(net.nodes[&1].progress()[&2].state, progress::ProgressState::Replicate);
}

/// A follower that cannot be reached is probed again after a heartbeat.
#[test]
fn unreachable_follower_is_probed_after_a_heartbeat_gets_through() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1).report_unreachable(2);
    assert_eq!(net.nodes[&1].progress()[&2].state, progress::ProgressState::Probe);
    assert!(net.nodes[&1].progress()[&2].paused);
    net.node(1).propose(1, cmd("v")).unwrap();
    net.tick_all(H);
    assert_eq!(net.nodes[&2].last_index(), net.nodes[&1].last_index());
    assert_eq!(net.nodes[&1].progress()[&2].state, progress::ProgressState::Replicate);
}

// ---------------------------------------------------------------------------
// Reads (§6.4 of the dissertation)
// ---------------------------------------------------------------------------

/// ReadIndex: the read is released only after a majority confirmed the
/// leadership with a round started after the read arrived.
#[test]
fn read_index_waits_for_a_heartbeat_round_from_a_majority() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.node(1).read_index(9).unwrap();
    net.settle();
    assert!(net.applied[&1].reads.is_empty(), "no majority heard: the read must wait");
    net.heal();
    net.tick_all(H);
    assert_eq!(net.applied[&1].reads, vec![(9, 1)]);
}

/// A read waits until the leader has committed an entry of its own term:
/// before that its commit index may lag behind what earlier leaders committed.
#[test]
fn read_index_waits_for_the_leaders_first_commit() {
    let (mut r, term) = manual_leader(1, vec![ent(1, 1), ent(2, 1)]);
    r.read_index(5).unwrap();
    let out = flush(&mut r);
    assert!(r.ready().reads.is_empty());
    assert!(
        !out.iter().any(|m| matches!(m.body, Body::Heartbeat { ctx, .. } if ctx > 1)),
        "no read round before the first commit"
    );
    r.step(append_ok(2, term, 3));
    // Node 2 also answers the round the leader started on election, which
    // went out before the read arrived: that does not confirm the read.
    r.step(Message { from: 2, to: 1, term, rpc_id: 0, body: Body::HeartbeatResponse { ctx: 1 } });
    let rd = r.ready();
    assert!(rd.reads.is_empty(), "committed, but no round since the read arrived");
    let ctx = rd
        .messages
        .iter()
        .find_map(|m| match m.body {
            Body::Heartbeat { ctx, .. } if m.to == 2 => Some(ctx),
            _ => None,
        })
        .expect("a read round starts once the no-op commits");
    assert_eq!(ctx, 2);
    r.step(Message { from: 2, to: 1, term, rpc_id: 0, body: Body::HeartbeatResponse { ctx } });
    let rd = r.ready();
    assert_eq!(rd.reads, vec![(5, 3)], "read index = commit index after the no-op");
}

/// A deposed leader fails its pending reads instead of serving them.
#[test]
fn pending_reads_fail_when_leadership_is_lost() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.node(1).read_index(3).unwrap();
    for _ in 0..2 * E {
        net.node(1).tick();
        net.settle();
    }
    assert_eq!(net.applied[&1].failed_reads, vec![3]);
    assert!(net.applied[&1].reads.is_empty());
}

/// Many reads waiting together are confirmed by one round.
#[test]
fn reads_arriving_together_share_one_round() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let before = net.trace.len();
    for id in 0..20 {
        net.node(1).read_index(id).unwrap();
    }
    net.settle();
    let heartbeats = net.trace[before..].iter().filter(|m| matches!(m.body, Body::Heartbeat { .. })).count();
    assert_eq!(net.applied[&1].reads.len(), 20);
    assert_eq!(heartbeats, 2, "one heartbeat per follower for the whole batch");
}

/// Lease reads are served without a round while a majority recently
/// confirmed the leader, and fall back to a round otherwise.
#[test]
fn lease_read_is_served_locally_only_within_the_lease() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1).read_lease(1).unwrap();
    assert_eq!(net.node(1).ready().reads.len(), 1, "lease fresh: served at once");
    net.isolate(1);
    for _ in 0..E - 1 {
        net.node(1).tick();
        net.settle();
    }
    assert_eq!(net.nodes[&1].role(), Role::Leader, "check-quorum has not fired yet");
    net.node(1).read_lease(2).unwrap();
    assert!(net.node(1).ready().reads.is_empty(), "lease expired: needs a round");
}

/// Stale-term messages are answered with the current term (figure 2:
/// "Reply false if term < currentTerm").
#[test]
fn stale_leader_learns_the_newer_term_from_the_response() {
    let mut r = follower(vec![], 5);
    r.step(append(2, 3, (0, 0), vec![], 0));
    let out = flush(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].term, 5);
    assert!(matches!(out[0].body, Body::AppendEntriesResponse { success: false, .. }));
}

/// Heartbeat responses claim nothing durable and are not held for fsync.
#[test]
fn heartbeat_response_does_not_wait_for_storage() {
    let mut r = follower(vec![], 1);
    r.step(append(2, 1, (0, 0), vec![ent(1, 1)], 0)); // starts an fsync
    r.step(Message { from: 2, to: 1, term: 1, rpc_id: 8, body: Body::Heartbeat { commit: 0, ctx: 3 } });
    let rd = r.ready();
    assert!(rd.persist.is_some());
    assert_eq!(rd.messages.len(), 1);
    assert!(matches!(rd.messages[0].body, Body::HeartbeatResponse { ctx: 3 }));
}

// ---------------------------------------------------------------------------
// What an answer promises (issue 9)
// ---------------------------------------------------------------------------

/// Everything `ready()` hands out until the node is quiet, storage
/// completing at once.
fn drain(r: &mut Raft) -> Ready {
    let mut all = Ready::default();
    loop {
        let rd = r.ready();
        if rd.is_empty() {
            return all;
        }
        if let Some(op) = &rd.persist {
            r.on_persisted(op.seq);
        }
        all.messages.extend(rd.messages);
        all.committed.extend(rd.committed);
        all.proposals.extend(rd.proposals);
        all.dropped_proposals.extend(rd.dropped_proposals);
    }
}

/// Node 1 of five, leader of term 1 with its no-op at 1@1, then a proposal
/// (request 42) at 2@1 that only reaches node 2.
fn leader_with_unreplicated_proposal() -> (Raft, Entry) {
    let ids = [1, 2, 3, 4, 5];
    let mut r = Raft::new(config(1, &ids), HardState::default(), vec![]);
    r.campaign_now();
    drain(&mut r);
    for pre_vote in [true, false] {
        for from in [2, 3] {
            let body = Body::RequestVoteResponse { pre_vote, vote_granted: true };
            r.step(Message { from, to: 1, term: 1, rpc_id: 0, body });
        }
        drain(&mut r);
    }
    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.propose(42, cmd("x")), Ok(2));
    drain(&mut r);
    let x = r.log().entry(2).unwrap().clone();
    (r, x)
}

/// Figure 8 of the paper, from the proposer's side: the leader of term 1
/// proposes X at index 2, which reaches only node 2. The leader of term 2
/// (node 5) overwrites index 2 on node 1 without committing it. Node 2 then
/// wins term 3 and commits X. Node 1 must not have told its client that X
/// "will not take effect" when its copy was overwritten: X did take effect,
/// and the client learns so once index 2 commits.
#[test]
fn a_proposal_removed_from_the_log_is_not_dropped_until_its_index_commits() {
    let (mut r, x) = leader_with_unreplicated_proposal();
    let noop2 = Entry { index: 2, term: 2, data: EntryData::Noop };
    r.step(append(5, 2, (1, 1), vec![noop2], 0));
    let rd = drain(&mut r);
    assert_eq!(r.log().term(2), Some(2), "X was overwritten on node 1");
    assert!(rd.dropped_proposals.is_empty(), "X may still commit elsewhere: its fate is unknown");
    assert_eq!(r.pending_proposals(), 1, "the client keeps waiting");

    let noop3 = Entry { index: 3, term: 3, data: EntryData::Noop };
    r.step(append(2, 3, (1, 1), vec![x.clone(), noop3], 3));
    let rd = drain(&mut r);
    assert_eq!(rd.committed.get(1), Some(&x));
    assert_eq!(rd.proposals, vec![(2, 42)], "X committed: its client gets the result");
    assert!(rd.dropped_proposals.is_empty());
    assert_eq!(r.pending_proposals(), 0);
}

/// The other outcome: a different entry commits at X's index, so X will
/// never take effect, and only now the client may be told so.
#[test]
fn a_removed_proposal_is_dropped_once_another_entry_commits_at_its_index() {
    let (mut r, _) = leader_with_unreplicated_proposal();
    let noop2 = Entry { index: 2, term: 2, data: EntryData::Noop };
    r.step(append(5, 2, (1, 1), vec![noop2.clone()], 0));
    assert!(drain(&mut r).dropped_proposals.is_empty());
    r.step(Message { from: 5, to: 1, term: 2, rpc_id: 0, body: Body::Heartbeat { commit: 2, ctx: 0 } });
    let rd = drain(&mut r);
    assert_eq!(rd.committed.last(), Some(&noop2));
    assert!(rd.proposals.is_empty());
    assert_eq!(rd.dropped_proposals, vec![42]);
}

/// Issue 9, finding 2, at the level of the persist op: one `ready()` covers
/// a deposed leader's late AppendEntries (appending 6..=8) and the new
/// leader's conflicting one (replacing 7..). The op must describe the log
/// as storage will replay it: append from 6, with no truncation at 7 of a
/// log that holds 5 entries on disk.
#[test]
fn one_ready_over_conflicting_appends_gives_a_self_consistent_op() {
    let log: Vec<Entry> = (1..=5).map(|i| ent(i, 1)).collect();
    let mut r = follower(log, 2);
    r.step(append(2, 2, (5, 1), vec![ent(6, 2), ent(7, 2), ent(8, 2)], 0));
    r.step(append(3, 3, (6, 2), vec![ent(7, 3)], 0));
    let op = r.ready().persist.expect("a persist op");
    assert_eq!(op.truncate_from, None, "nothing beyond 5 was ever handed to storage");
    let idx: Vec<(Index, Term)> = op.entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(idx, vec![(6, 2), (7, 3)]);
}

/// Issue 9, finding 8: a node that learns of a long committed log hands it
/// to the state machine in bounded chunks, so it keeps ticking in between.
#[test]
fn committed_entries_are_handed_out_in_bounded_chunks() {
    let log: Vec<Entry> = (1..=100).map(|i| ent(i, 1)).collect();
    let per_entry = log[0].size_hint();
    let mut r = Raft::new(
        Config { max_apply_bytes: 10 * per_entry, ..config(1, &[1, 2, 3]) },
        HardState { current_term: 1, voted_for: None },
        log,
    );
    r.step(Message { from: 2, to: 1, term: 1, rpc_id: 0, body: Body::Heartbeat { commit: 100, ctx: 0 } });
    let mut chunks = Vec::new();
    while r.has_unapplied() {
        let rd = r.ready();
        if let Some(op) = &rd.persist {
            r.on_persisted(op.seq);
        }
        chunks.push(rd.committed.len());
    }
    assert_eq!(chunks.iter().sum::<usize>(), 100);
    assert!(chunks.iter().all(|&n| n <= 10), "{chunks:?}");
    assert_eq!(r.applied(), 100);
}

// ---------------------------------------------------------------------------
// Leadership transfer (§3.10 of the dissertation)
// ---------------------------------------------------------------------------

/// §3.10: "the prior leader sends a TimeoutNow request to the target
/// server ... the target server starts a new election" — and wins it at
/// once: no node waits out an election timeout, and the old leader follows.
#[test]
fn transfer_to_an_up_to_date_follower_makes_it_leader_without_a_timeout() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1).propose(1, cmd("a")).unwrap();
    net.settle();
    net.node(1).transfer_leadership(3).unwrap();
    net.settle();
    assert_eq!(leader_of(&net), vec![3]);
    for r in net.nodes.values() {
        assert_eq!(r.current_term(), 2, "one election, one term");
        assert_eq!(r.leader_id(), Some(3));
    }
    let vote =
        net.trace.iter().find(|m| m.from == 3 && matches!(m.body, Body::RequestVote { .. })).expect("a vote request");
    assert!(matches!(vote.body, Body::RequestVote { pre_vote: false, transfer: true, .. }), "{vote:?}");
    // The new leader serves: its own no-op and a new write commit everywhere.
    net.node(3).propose(2, cmd("b")).unwrap();
    net.settle();
    assert_eq!(net.nodes[&3].commit_index(), 4, "noop(1) a noop(2) b");
    assert!(net.nodes.values().all(|r| r.last_index() == 4));
}

/// A target that is behind is first brought up to the leader's log; only
/// then does it get TimeoutNow (so it can win: §5.4.1). Meanwhile the
/// leader refuses new proposals, so that the log it must reach stands
/// still, and it never appends them.
#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first_and_refuses_proposals_meanwhile() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.cut.insert((1, 3));
    for i in 0..5 {
        net.node(1).propose(i, cmd("x")).unwrap();
    }
    net.settle();
    net.node(1).report_unreachable(3); // as the transport does
    assert!(net.nodes[&3].last_index() < net.nodes[&1].last_index());
    net.node(1).transfer_leadership(3).unwrap();
    net.settle();
    assert_eq!(net.nodes[&1].role(), Role::Leader, "link cut: nothing reached 3 yet");
    let last = net.nodes[&1].last_index();
    assert_eq!(net.node(1).propose(99, cmd("late")), Err(NotLeader::Transferring(3)));
    assert_eq!(net.nodes[&1].last_index(), last, "a refused proposal is not appended");
    assert!(!net.trace.iter().any(|m| m.body == Body::TimeoutNow), "no TimeoutNow before 3 caught up");
    net.heal();
    net.tick_all(H);
    assert_eq!(leader_of(&net), vec![3]);
    assert_eq!(net.nodes[&3].current_term(), 2);
    assert!(net.nodes[&3].log().term(last).is_some(), "3 holds everything 1 had");
}

/// A transfer that cannot finish (the target is unreachable) is abandoned
/// after an election timeout; the leader stays and takes proposals again.
#[test]
fn a_transfer_to_an_unreachable_target_is_abandoned_after_an_election_timeout() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1).propose(1, cmd("a")).unwrap();
    net.cut.insert((1, 3));
    net.settle();
    net.node(1).transfer_leadership(3).unwrap();
    net.tick_all(E - 1);
    assert!(net.nodes[&1].transfer().is_some());
    assert!(matches!(net.node(1).propose(2, cmd("b")), Err(NotLeader::Transferring(3))));
    net.tick_all(1);
    assert_eq!(net.nodes[&1].transfer(), None);
    assert_eq!(net.nodes[&1].role(), Role::Leader);
    assert!(net.node(1).propose(3, cmd("c")).is_ok());
}

/// Voters that hear from a live leader refuse ordinary candidates (§4.2.3),
/// but grant the vote of a transfer, which that leader asked for.
#[test]
fn a_transfer_vote_is_granted_despite_the_leader_lease_an_ordinary_one_is_not() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.settle();
    let last = net.nodes[&2].last_index();
    let term = net.nodes[&2].log().last_term();
    let vote = |transfer| Message {
        from: 3,
        to: 2,
        term: 2,
        rpc_id: 7,
        body: Body::RequestVote { pre_vote: false, last_log_index: last, last_log_term: term, transfer },
    };
    net.node(2).step(vote(false));
    let rd = net.node(2).ready();
    assert!(rd.messages.iter().any(|m| m.body == Body::RequestVoteResponse { pre_vote: false, vote_granted: false }));
    assert_eq!(net.nodes[&2].current_term(), 1, "an ignored candidate does not move the term");
    net.node(2).step(vote(true));
    let op = net.node(2).ready().persist.expect("the vote is persisted");
    net.node(2).on_persisted(op.seq);
    let rd = net.node(2).ready();
    assert!(rd.messages.iter().any(|m| m.body == Body::RequestVoteResponse { pre_vote: false, vote_granted: true }));
    assert_eq!(net.nodes[&2].voted_for(), Some(3));
}

/// Once TimeoutNow is out, a new leader can be elected at any moment, so
/// the old leader's lease proves nothing for the rest of its term — even
/// after it abandons the transfer (the TimeoutNow may still be on the way).
/// Its lease reads fall back to ReadIndex, which a deposed leader cannot
/// complete.
#[test]
fn after_timeout_now_the_old_leader_serves_no_lease_read_for_the_rest_of_its_term() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.tick_all(H);
    net.node(1).read_lease(1).unwrap();
    net.settle();
    assert_eq!(net.applied[&1].reads.len(), 1, "lease valid: served at once");
    // TimeoutNow goes out, but is lost; the transfer is abandoned.
    net.cut.insert((1, 3));
    net.node(1).transfer_leadership(3).unwrap();
    let rd = net.node(1).ready();
    assert!(rd.messages.iter().any(|m| m.to == 3 && m.body == Body::TimeoutNow));
    net.tick_all(E);
    assert_eq!(net.nodes[&1].transfer(), None);
    net.heal();
    net.tick_all(H);
    net.isolate(1);
    net.node(1).read_lease(2).unwrap();
    net.settle();
    assert_eq!(net.applied[&1].reads.len(), 1, "no lease read after TimeoutNow: it waits for a round");
    net.heal();
    net.tick_all(H);
    assert_eq!(net.applied[&1].reads.len(), 2, "ReadIndex completes once a majority answers");
}

/// Only the leader transfers, and only to a voter.
#[test]
fn transfer_errors_name_the_leader_or_the_unknown_target() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(net.node(2).transfer_leadership(3), Err(TransferError::NotLeader(Some(1))));
    assert_eq!(net.node(1).transfer_leadership(9), Err(TransferError::NotAVoter(9)));
    assert_eq!(net.node(1).transfer_leadership(1), Ok(()));
    assert_eq!(net.nodes[&1].transfer(), None, "to itself: nothing to do");
}

/// The schedule the lease rule is for: TimeoutNow reaches 3, which wins
/// with 2's vote and commits a write, while nothing from 2 or 3 reaches the
/// old leader 1 — which still holds a lease it renewed a moment ago. Its
/// lease read must not be served at its old commit index (it would miss
/// the acknowledged write); as a ReadIndex read it fails once 1 hears of
/// the new term.
#[test]
fn a_leader_that_sent_timeout_now_does_not_serve_a_stale_lease_read() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.tick_all(H);
    net.node(1).transfer_leadership(3).unwrap();
    net.cut.insert((3, 1));
    net.cut.insert((2, 1));
    net.settle();
    assert_eq!(net.nodes[&3].role(), Role::Leader);
    assert_eq!(net.nodes[&1].role(), Role::Leader, "1 has heard nothing yet");
    net.node(3).propose(7, cmd("new")).unwrap();
    net.settle();
    let acked = net.applied[&3].proposals.iter().find(|&&(_, id)| id == 7).expect("the write is acknowledged").0;
    net.node(1).read_lease(8).unwrap();
    net.settle();
    assert!(net.applied[&1].reads.iter().all(|&(id, _)| id != 8), "a lease read was served below index {acked}");
    net.heal();
    net.tick_all(H);
    assert!(net.applied[&1].failed_reads.contains(&8));
    assert_ne!(net.nodes[&1].role(), Role::Leader);
}

// ---------------------------------------------------------------------------
// Configuration changes, one server at a time (dissertation §4.1–§4.3)
// ---------------------------------------------------------------------------

fn conf_entry(index: Index, term: Term, voters: &[NodeId], learners: &[NodeId]) -> Entry {
    let mut m = Membership::from_voters(voters.iter().copied());
    for &l in learners {
        m.members.insert(l, Member { address: format!("n{l}"), voter: false });
    }
    Entry { index, term, data: EntryData::Config(m) }
}

fn voters_of(r: &Raft) -> Vec<NodeId> {
    r.membership().voters().collect()
}

fn learners_of(r: &Raft) -> Vec<NodeId> {
    r.membership().learners().collect()
}

/// Three voters and a fourth node that is not a member yet.
fn net_with_newcomer() -> Net {
    let mut net = Net::new(&[1, 2, 3]);
    net.nodes.insert(4, Raft::new(config(4, &[1, 2, 3]), HardState::default(), vec![]));
    net.applied.insert(4, Applied::default());
    net.elect(1);
    net
}

/// §4.2.1: a new server joins without a vote and catches up first; it is
/// promoted only when its log is close to the leader's.
#[test]
fn a_learner_catches_up_without_a_vote_and_is_promoted_only_when_close() {
    let mut net = net_with_newcomer();
    for i in 0..3 {
        net.node(1).propose(i, cmd("x")).unwrap();
    }
    net.settle();
    let add = ConfChange::AddLearner { id: 4, address: "n4".into() };
    let at = net.node(1).propose_conf_change(100, add.clone()).unwrap();
    net.settle();
    for id in 1..=4 {
        assert_eq!((voters_of(&net.nodes[&id]), learners_of(&net.nodes[&id])), (vec![1, 2, 3], vec![4]), "node {id}");
    }
    assert_eq!(net.nodes[&4].commit_index(), at, "the learner has the whole log");
    assert!(net.applied[&1].proposals.contains(&(at, 100)), "the change is answered like a proposal");
    assert_eq!(net.node(1).propose_conf_change(101, add), Err(ConfChangeError::AlreadyMember(4)));
    // A learner never campaigns.
    net.isolate(1);
    net.tick_all(4 * E);
    assert_eq!(net.nodes[&4].role(), Role::Follower);
    assert!(net.nodes[&4].current_term() <= net.nodes[&2].current_term());
    net.heal();
    net.tick_all(4 * E);
    let leader = leader_of(&net)[0];

    // Far behind: refused, with the numbers.
    net.isolate(4);
    for i in 0..10 {
        net.node(leader).propose(200 + i, cmd("y")).unwrap();
    }
    net.settle();
    let last = net.nodes[&leader].last_index();
    match net.node(leader).propose_conf_change(102, ConfChange::Promote { id: 4 }) {
        Err(ConfChangeError::LearnerBehind { id: 4, matched, last: l, max_lag: 5 }) => {
            assert_eq!(l, last);
            assert!(matched + 5 < last);
        }
        other => panic!("promotion of a far-behind learner: {other:?}"),
    }
    assert_eq!(net.nodes[&leader].last_index(), last, "nothing appended");
    net.heal();
    net.tick_all(3 * E);
    net.node(leader).propose_conf_change(103, ConfChange::Promote { id: 4 }).unwrap();
    net.settle();
    for id in 1..=4 {
        assert_eq!((voters_of(&net.nodes[&id]), learners_of(&net.nodes[&id])), (vec![1, 2, 3, 4], vec![]), "node {id}");
    }
    assert_eq!(
        net.node(leader).propose_conf_change(104, ConfChange::Promote { id: 4 }),
        Err(ConfChangeError::NotALearner(4))
    );
}

/// §4.1: at most one change at a time; and (the dissertation's erratum to
/// single-server changes) a new leader appends a change only after it has
/// committed an entry of its own term.
#[test]
fn one_change_at_a_time_and_only_after_the_leaders_first_commit() {
    let (mut r, _) = manual_leader(1, vec![ent(1, 1)]);
    assert_eq!(r.propose_conf_change(1, ConfChange::Remove { id: 3 }), Err(ConfChangeError::NotReady));
    let mut net = net_with_newcomer();
    net.cut.insert((1, 2));
    net.cut.insert((1, 3));
    let at = net.node(1).propose_conf_change(1, ConfChange::AddLearner { id: 4, address: "n4".into() }).unwrap();
    net.settle();
    assert_eq!(learners_of(&net.nodes[&1]), vec![4], "in force on the leader once appended, before it commits");
    assert_eq!(
        net.node(1).propose_conf_change(2, ConfChange::Remove { id: 3 }),
        Err(ConfChangeError::InProgress { index: at })
    );
    net.heal();
    net.tick_all(3 * E);
    assert!(net.nodes[&1].commit_index() >= at);
    net.node(1).propose_conf_change(3, ConfChange::Remove { id: 3 }).unwrap();
    let follower = Raft::new(config(2, &[1, 2, 3]), HardState::default(), vec![]);
    assert!(matches!(
        { follower }.propose_conf_change(4, ConfChange::Remove { id: 1 }),
        Err(ConfChangeError::NotLeader(NotLeader::Leader(None)))
    ));
}

/// §4.2.2: a leader removed from the configuration keeps managing the
/// cluster until the change commits (without counting itself), then steps
/// down; the rest elect a leader and the removed node stays quiet.
#[test]
fn a_removed_leader_steps_down_once_the_change_commits_and_never_campaigns() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let at = net.node(1).propose_conf_change(1, ConfChange::Remove { id: 1 }).unwrap();
    net.settle();
    assert_eq!(net.nodes[&1].role(), Role::Follower);
    assert!(net.nodes[&1].commit_index() >= at);
    assert_eq!(voters_of(&net.nodes[&2]), vec![2, 3]);
    let term = net.nodes[&1].current_term();
    net.tick_all(6 * E);
    let leaders = leader_of(&net);
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
    assert_eq!(net.nodes[&1].role(), Role::Follower);
    assert!(net.trace.iter().all(|m| !(m.from == 1 && m.term > term)), "the removed node never campaigned");
    // The remaining two keep committing.
    let l = leaders[0];
    let i = net.node(l).propose(9, cmd("after")).unwrap();
    net.tick_all(3 * H);
    let state: Vec<(Index, Role, Term)> = (1..=3)
        .map(|id| (net.nodes[&id].commit_index(), net.nodes[&id].role(), net.nodes[&id].current_term()))
        .collect();
    assert!(net.nodes[&2].commit_index() >= i && net.nodes[&3].commit_index() >= i, "{i}: {state:?}");
}

/// Removing or promoting so that the new voters have no reachable majority
/// would stop the cluster: refused. Removing the unreachable one is fine.
#[test]
fn a_change_that_would_lose_quorum_is_refused() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.tick_all(E + 1);
    assert_eq!(net.nodes[&1].role(), Role::Leader);
    assert_eq!(
        net.node(1).propose_conf_change(1, ConfChange::Remove { id: 2 }),
        Err(ConfChangeError::WouldLoseQuorum { reachable: 1, needed: 2 })
    );
    assert_eq!(
        net.node(1).propose_conf_change(2, ConfChange::Remove { id: 9 }),
        Err(ConfChangeError::UnknownMember(9))
    );
    net.node(1).propose_conf_change(3, ConfChange::Remove { id: 3 }).unwrap();
    net.settle();
    assert_eq!(voters_of(&net.nodes[&2]), vec![1, 2]);
    net.node(1).propose_conf_change(4, ConfChange::Remove { id: 2 }).unwrap();
    net.settle();
    assert_eq!(voters_of(&net.nodes[&1]), vec![1]);
    assert_eq!(net.node(1).propose_conf_change(5, ConfChange::Remove { id: 1 }), Err(ConfChangeError::LastVoter(1)));
    let i = net.node(1).propose(6, cmd("alone")).unwrap();
    net.settle();
    assert!(net.nodes[&1].commit_index() >= i, "a single voter commits alone");
}

/// §4.1: "a server always uses the latest configuration in its log,
/// regardless of whether the entry is committed" — so removing that entry
/// (a conflicting leader) reverts to the one before.
#[test]
fn a_configuration_takes_effect_when_appended_and_reverts_when_truncated() {
    let mut r = follower(vec![ent(1, 1)], 1);
    r.step(append(2, 1, (1, 1), vec![conf_entry(2, 1, &[1, 2, 3], &[4])], 1));
    assert_eq!((learners_of(&r), r.config_index()), (vec![4], 2), "before it commits");
    r.step(append(3, 2, (1, 1), vec![ent(2, 2)], 1));
    assert_eq!((learners_of(&r), r.config_index()), (vec![], 0), "back to the bootstrap configuration");
    r.step(append(3, 2, (2, 2), vec![conf_entry(3, 2, &[1, 2], &[])], 1));
    assert_eq!(voters_of(&r), vec![1, 2]);
}

/// A snapshot records the configuration at its index; a restart from a
/// snapshot and the entries after it finds the configuration in force.
#[test]
fn snapshots_and_restarts_carry_the_configuration() {
    let mut r = follower(
        vec![ent(1, 1), conf_entry(2, 1, &[1, 2, 3], &[4]), ent(3, 1), conf_entry(4, 1, &[1, 2, 3, 4], &[])],
        1,
    );
    assert_eq!(voters_of(&r), vec![1, 2, 3, 4], "from the log at start");
    r.step(append(2, 1, (4, 1), vec![], 4));
    drain(&mut r);
    assert_eq!(r.snapshot_meta(1).unwrap().membership, Membership::from_voters([1, 2, 3]));
    assert_eq!(r.snapshot_meta(3).unwrap().membership.learners().collect::<Vec<_>>(), vec![4]);
    let meta = r.snapshot_meta(3).unwrap();
    r.on_snapshot_saved(meta.clone());
    r.compact(3);
    assert_eq!(r.snapshot_meta(3).unwrap().membership, meta.membership, "still known after compaction");
    assert_eq!(voters_of(&r), vec![1, 2, 3, 4]);
    let back = Raft::restart(config(1, &[1, 2, 3]), r.hard_state(), Some(meta), vec![ent(4, 1)]);
    assert_eq!((voters_of(&back), learners_of(&back)), (vec![1, 2, 3], vec![4]), "the snapshot's, not --peers'");
}
