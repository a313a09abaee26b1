//! The vocabulary of the paper: terms, indexes, log entries and the state
//! that figure 2 calls "persistent state on all servers".

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// A server's id. Positive; `0` is never a valid id.
pub type NodeId = u64;
/// A Raft term (figure 2: "latest term server has seen").
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1.
pub type Index = u64;
/// A node-local handle for a client proposal or read, chosen by the caller.
pub type RequestId = u64;

/// What an entry carries. The core never looks inside a `Command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryData {
    /// The entry a new leader appends at the start of its term (§5.4.2,
    /// and §8 of the paper for read-only queries).
    Noop,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// A new configuration: the whole member list after one change (one
    /// server at a time, §4.1 of the dissertation). It takes effect on a
    /// node as soon as the node appends it, committed or not.
    Config(Membership),
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Where its peers reach it (`host:port`); opaque to the core, which
    /// only carries it. Empty when unknown (a cluster bootstrapped from
    /// `--peers`, whose addresses come from the settings).
    pub address: String,
    /// A voter counts in elections and commit majorities; a learner only
    /// receives the log.
    pub voter: bool,
}

/// A configuration: the voters and learners of the cluster, with addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: BTreeMap<NodeId, Member>,
    /// Ids of members removed so far: never members again (a node that
    /// comes back with one is refused; a new member takes a new id).
    pub removed: BTreeSet<NodeId>,
}

impl Membership {
    /// Voters without addresses (a bootstrap configuration).
    pub fn from_voters(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let members = ids.into_iter().map(|id| (id, Member { address: String::new(), voter: true })).collect();
        Membership { members, removed: BTreeSet::new() }
    }
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| m.voter).map(|(&id, _)| id)
    }
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| !m.voter).map(|(&id, _)| id)
    }
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.voter)
    }
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| !m.voter)
    }
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }
    pub fn was_removed(&self, id: NodeId) -> bool {
        self.removed.contains(&id)
    }
    pub fn address_of(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.address.as_str()).filter(|a| !a.is_empty())
    }
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let voters: Vec<NodeId> = self.voters().collect();
        let learners: Vec<NodeId> = self.learners().collect();
        write!(f, "voters {voters:?}")?;
        if !learners.is_empty() {
            write!(f, ", learners {learners:?}")?;
        }
        Ok(())
    }
}

/// One change to the configuration, proposed through the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// A new member joins as a learner.
    AddLearner { id: NodeId, address: String },
    /// A learner that has caught up becomes a voter.
    Promote { id: NodeId },
    /// A voter or learner leaves (the leader too: it steps down once the
    /// change commits).
    Remove { id: NodeId },
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub data: EntryData,
}

impl Entry {
    /// Bytes this entry costs on the wire and on disk, roughly; used to cap batches.
    pub fn size_hint(&self) -> usize {
        24 + match &self.data {
            EntryData::Noop => 0,
            EntryData::Command(b) => b.len(),
            EntryData::Config(m) => {
                m.members.values().map(|m| 16 + m.address.len()).sum::<usize>() + 8 * m.removed.len()
            }
        }
    }
}

/// Figure 2's persistent state apart from the log: `currentTerm` and `votedFor`.
/// Must be on stable storage before the node answers the RPC that changed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub current_term: Term,
    pub voted_for: Option<NodeId>,
}

/// The role a server plays (figure 4 of the paper, plus the pre-candidate
/// of the dissertation's §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a snapshot covers: the state machine after applying every entry up
/// to `index` (whose term is `term`), with the configuration at that
/// point. The core knows only this; the state itself is the shell's business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    /// Empty only in the default metadata (no snapshot yet).
    pub membership: Membership,
}
