//! The consensus core: Raft as plain Rust with no IO, no clock and no
//! randomness of its own.
//!
//! Reading guide, with figure 2 of the paper open:
//! * `types.rs` — terms, indexes, entries, `HardState` (currentTerm, votedFor).
//! * `message.rs` — RequestVote, AppendEntries, InstallSnapshot (+ pre-vote, heartbeat).
//! * `node.rs` — `Raft`: the rules for all servers, followers, candidates
//!   and leaders; `tick`, `step`, `propose`, `read_index`, `ready`.
//! * `log.rs` — the log, `commitIndex`, and what is durable.
//! * `progress.rs` — `nextIndex`/`matchIndex` per follower with flow control.
//! * `quorum.rs` — majorities.
//! * `read_only.rs` — ReadIndex rounds for linearizable reads.
//! * `clock.rs` — elapsed time as ticks, fed before every input.
//!
//! A shell drives it in a loop: feed inputs (`tick`, `step`, `propose`,
//! `read_index`, `on_persisted`, `report_unreachable`), then take `ready()`
//! and carry it out: persist (then call `on_persisted`), send the messages,
//! install a received snapshot, apply the committed entries, serve the
//! released reads. Log compaction is the shell's policy: once its state
//! machine's snapshot at some applied index is durable it calls
//! `on_snapshot_saved`, then `compact` for the part of the log to drop.

pub mod clock;
pub mod log;
pub mod message;
pub mod node;
pub mod progress;
pub mod quorum;
pub mod read_only;
pub mod types;

#[cfg(test)]
mod tests;

pub use clock::TickClock;
pub use log::{LogAfterSnapshot, log_after_snapshot};
pub use message::{Body, Message, MessageKind};
pub use node::{
    ConfChangeError, Config, NotLeader, PersistOp, Raft, Ready, SplitMix64, Transfer, TransferError, replication_target,
};
pub use types::{
    ConfChange, Entry, EntryData, HardState, Index, Member, Membership, NodeId, RequestId, Role, SnapshotMeta, Term,
};
