//! The vocabulary of the paper: terms, indexes, log entries and the state
//! that figure 2 calls "persistent state on all servers".

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
/// to `index` (whose term is `term`), with the voters at that point. The
/// core knows only this; the state itself is the shell's business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub voters: Vec<NodeId>,
}
