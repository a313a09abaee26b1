//! The RPCs of figure 2 (RequestVote, AppendEntries), InstallSnapshot
//! (figure 13), the pre-vote of the dissertation (§9.6), TimeoutNow for
//! leadership transfer (§3.10) and a leader heartbeat that carries no
//! entries.
//!
//! Every request gets exactly one response from the core, carrying the
//! request's `rpc_id`, so a transport that speaks request/response (HTTP)
//! can hand the answer back to the request that is waiting for it.

use super::types::{Entry, Index, NodeId, SnapshotMeta, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term. For a pre-vote request: the term the sender would
    /// campaign in; for a granted pre-vote response: that same term.
    pub term: Term,
    /// Set by the transport on requests; copied into the response.
    pub rpc_id: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// RequestVote RPC (or a pre-vote when `pre_vote`), figure 2.
    RequestVote {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        /// The leader of the previous term asked for this election
        /// (TimeoutNow): voters grant it even while they hear from that
        /// leader, which otherwise makes them refuse (§3.10, §4.2.3).
        transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        vote_granted: bool,
    },
    /// AppendEntries RPC, figure 2. `ctx` is the leader's latest read round
    /// (see `read_only.rs`); the follower echoes it.
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
        ctx: u64,
    },
    AppendEntriesResponse {
        success: bool,
        /// The request's `prev_log_index`, so the leader can tell stale
        /// rejections from current ones.
        prev_log_index: Index,
        /// On success: the last index known to match the leader's log.
        match_index: Index,
        /// On rejection, the fast back-tracking hint: the first index of
        /// `conflict_term` in the follower's log, or its last index + 1 when
        /// its log is too short (`conflict_term` = None).
        conflict_index: Index,
        conflict_term: Option<Term>,
        ctx: u64,
    },
    /// A leader's heartbeat. `commit` is `min(match_index[peer], commit_index)`,
    /// so a follower never commits entries it has not been shown to hold.
    Heartbeat {
        commit: Index,
        ctx: u64,
    },
    HeartbeatResponse {
        ctx: u64,
    },
    /// InstallSnapshot RPC (figure 13): the leader's latest snapshot. The
    /// core sees only its metadata; the transport carries the state itself
    /// (in chunks) and has it staged on the receiver before the core is
    /// stepped with this message.
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    InstallSnapshotResponse {
        /// The last index known to match the leader's log: the snapshot's
        /// index once it is installed (durably), or the receiver's commit
        /// index if that was already at or past the snapshot.
        match_index: Index,
    },
    /// Leadership transfer (§3.10): the leader has brought the receiver's
    /// log up to its own and asks it to start an election now.
    TimeoutNow,
    /// The receiver started that election (or could not: not a voter).
    TimeoutNowResponse {
        campaigned: bool,
    },
}

impl Body {
    /// Requests expect a response; responses do not.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Body::RequestVote { .. }
                | Body::AppendEntries { .. }
                | Body::Heartbeat { .. }
                | Body::InstallSnapshot { .. }
                | Body::TimeoutNow
        )
    }

    pub fn kind(&self) -> MessageKind {
        match self {
            Body::RequestVote { pre_vote: true, .. } => MessageKind::PreVote,
            Body::RequestVote { .. } => MessageKind::RequestVote,
            Body::RequestVoteResponse { pre_vote: true, .. } => MessageKind::PreVoteResponse,
            Body::RequestVoteResponse { .. } => MessageKind::RequestVoteResponse,
            Body::AppendEntries { .. } => MessageKind::AppendEntries,
            Body::AppendEntriesResponse { .. } => MessageKind::AppendEntriesResponse,
            Body::Heartbeat { .. } => MessageKind::Heartbeat,
            Body::HeartbeatResponse { .. } => MessageKind::HeartbeatResponse,
            Body::InstallSnapshot { .. } => MessageKind::InstallSnapshot,
            Body::InstallSnapshotResponse { .. } => MessageKind::InstallSnapshotResponse,
            Body::TimeoutNow => MessageKind::TimeoutNow,
            Body::TimeoutNowResponse { .. } => MessageKind::TimeoutNowResponse,
        }
    }
}

/// The kind of a message, without its payload; used for routing and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    PreVote,
    PreVoteResponse,
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    TimeoutNowResponse,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::PreVote => "pre_vote",
            MessageKind::PreVoteResponse => "pre_vote_response",
            MessageKind::RequestVote => "request_vote",
            MessageKind::RequestVoteResponse => "request_vote_response",
            MessageKind::AppendEntries => "append_entries",
            MessageKind::AppendEntriesResponse => "append_entries_response",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::HeartbeatResponse => "heartbeat_response",
            MessageKind::InstallSnapshot => "install_snapshot",
            MessageKind::InstallSnapshotResponse => "install_snapshot_response",
            MessageKind::TimeoutNow => "timeout_now",
            MessageKind::TimeoutNowResponse => "timeout_now_response",
        }
    }
}
