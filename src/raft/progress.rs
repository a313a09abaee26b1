//! A leader's view of one follower: figure 2's `nextIndex` and `matchIndex`,
//! plus the flow control of etcd's `tracker/progress.go`.
//!
//! * **Probe**: the leader does not know where the follower's log matches
//!   its own. It sends one AppendEntries at a time and waits (is "paused")
//!   until that one is answered, a heartbeat is answered, or the transport
//!   reports failure.
//! * **Replicate**: the follower is known to match up to `match_index`; the
//!   leader streams entries optimistically, advancing `next_index` as it
//!   sends, with at most `max_inflight` unanswered AppendEntries.
//! * **Snapshot**: the follower needs entries the leader has compacted away;
//!   a snapshot is on its way to it and nothing else is sent until the
//!   transfer succeeds or fails (etcd's `StateSnapshot`).

use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated (durably) on the follower.
    /// Invariant: `match_index < next_index`.
    pub match_index: Index,
    /// Index of the next entry to send.
    pub next_index: Index,
    pub state: ProgressState,
    /// Probe only: an AppendEntries is outstanding, do not send another.
    pub paused: bool,
    /// Replicate only: the last index of each unanswered AppendEntries, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Tick of the last response of any kind (is it alive now?).
    pub last_active_tick: u64,
    /// Highest read-round context the follower has echoed at our term.
    pub acked_ctx: u64,
    /// Tick of the last AppendEntries response (for the stall safety net).
    pub last_append_response_tick: u64,
    /// Snapshot only: the index of the snapshot being sent.
    pub pending_snapshot: Index,
    /// Snapshot only: the tick the transfer started.
    pub snapshot_sent_tick: u64,
}

impl Progress {
    pub fn new(next_index: Index, now: u64) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            paused: false,
            inflight: VecDeque::new(),
            recent_active: false,
            last_active_tick: now,
            acked_ctx: 0,
            last_append_response_tick: now,
            pending_snapshot: 0,
            snapshot_sent_tick: 0,
        }
    }

    /// After a snapshot transfer, probing resumes after whichever is later:
    /// what is known to match, or the snapshot (if it was installed, the
    /// follower has it; if not, a probe there is rejected with a hint).
    pub fn become_probe(&mut self) {
        let after_snapshot = if self.state == ProgressState::Snapshot { self.pending_snapshot + 1 } else { 0 };
        self.state = ProgressState::Probe;
        self.next_index = (self.match_index + 1).max(after_snapshot);
        self.paused = false;
        self.inflight.clear();
        self.pending_snapshot = 0;
    }

    /// The transfer failed: the follower does not have the snapshot.
    pub fn snapshot_failed(&mut self) {
        self.pending_snapshot = 0;
        self.become_probe();
    }

    /// A snapshot at `index` is being sent; nothing else goes out meanwhile.
    pub fn become_snapshot(&mut self, index: Index, now: u64) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.snapshot_sent_tick = now;
        self.paused = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.paused = false;
        self.inflight.clear();
    }

    /// May the leader send an AppendEntries carrying entries now?
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.paused,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot => false,
        }
    }

    /// Records that an AppendEntries ending at `last` was sent.
    pub fn sent(&mut self, last: Index) {
        match self.state {
            ProgressState::Probe => self.paused = true,
            ProgressState::Snapshot => {}
            ProgressState::Replicate => {
                if last >= self.next_index {
                    self.next_index = last + 1;
                }
                self.inflight.push_back(last);
            }
        }
    }

    /// A successful AppendEntries response says the follower matches up to
    /// `index`. Returns true if `match_index` advanced.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        if self.next_index < index + 1 {
            self.next_index = index + 1;
        }
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        self.paused = false;
        advanced
    }

    /// A rejection of an AppendEntries whose `prev_log_index` was `rejected`;
    /// `hint` is the index the follower suggests to try next. Returns false
    /// when the rejection is stale (it answers an older request).
    pub fn maybe_decrease(&mut self, rejected: Index, hint: Index) -> bool {
        match self.state {
            // Sent before the transfer began: the snapshot decides.
            ProgressState::Snapshot => false,
            ProgressState::Replicate => {
                // Everything up to match_index is known to match, so a
                // rejection at or below it answers an older request.
                if rejected <= self.match_index {
                    return false;
                }
                // Something sent in this stream was lost or reordered:
                // start probing from what is known to match.
                self.become_probe();
                self.next_index = (self.match_index + 1).max(hint.min(rejected));
                true
            }
            ProgressState::Probe => {
                // A probe has prev_log_index = next_index - 1; anything else is old.
                if rejected != self.next_index - 1 {
                    return false;
                }
                self.next_index = (self.match_index + 1).max(hint.min(rejected));
                self.paused = false;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_bounds_inflight_messages() {
        let mut p = Progress::new(1, 0);
        p.become_replicate();
        assert!(p.can_send(2));
        p.sent(3);
        p.sent(5);
        assert!(!p.can_send(2), "window of 2 is full");
        assert_eq!(p.next_index, 6);
        assert!(p.maybe_update(3));
        assert!(p.can_send(2));
        assert_eq!(p.inflight, [5]);
    }

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut p = Progress::new(5, 0);
        assert!(p.can_send(8));
        p.sent(7);
        assert!(!p.can_send(8));
        assert_eq!(p.next_index, 5, "probe does not advance next optimistically");
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(1, 0);
        p.maybe_update(10);
        p.become_replicate();
        assert!(!p.maybe_decrease(9, 1), "rejection below match is stale");
        assert_eq!(p.state, ProgressState::Replicate);
        assert!(p.maybe_decrease(12, 11));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, 11);
        assert!(!p.maybe_decrease(12, 11), "probe at next-1 = 10 ignores 12");
    }

    #[test]
    fn a_snapshot_transfer_pauses_replication_and_probing_resumes_after_it() {
        let mut p = Progress::new(1, 0);
        p.maybe_update(3);
        p.become_snapshot(50, 7);
        assert!(!p.can_send(8), "nothing but the snapshot goes out");
        assert!(!p.maybe_decrease(4, 1), "a rejection from before the transfer is stale");
        p.maybe_update(50);
        p.become_probe();
        assert_eq!((p.state.clone(), p.next_index, p.match_index), (ProgressState::Probe, 51, 50));
        // Lost in transit (maybe installed): probe right after the snapshot;
        // a follower without it rejects with a hint.
        let mut p = Progress::new(1, 0);
        p.maybe_update(3);
        p.become_snapshot(50, 7);
        p.become_probe();
        assert_eq!((p.next_index, p.match_index, p.pending_snapshot), (51, 3, 0));
        // Known to have failed: probe from what is known to match.
        p.become_snapshot(50, 9);
        p.snapshot_failed();
        assert_eq!((p.state.clone(), p.next_index), (ProgressState::Probe, 4));
    }

    /// Found by cargo-mutants: nothing pinned `match_index < next_index`
    /// when an answer reports more than was sent in this stream (an answer
    /// to an older stream, or "matches up to my commit index").
    #[test]
    fn next_index_stays_above_match_index() {
        let mut p = Progress::new(1, 0);
        p.become_replicate();
        p.sent(4);
        assert!(p.maybe_update(9));
        assert_eq!((p.match_index, p.next_index), (9, 10));
        assert!(p.inflight.is_empty());
        // A rejection whose hint lies below what is known to match.
        p.sent(12);
        assert!(p.maybe_decrease(11, 3));
        assert_eq!((p.state.clone(), p.next_index), (ProgressState::Probe, 10));
    }

    #[test]
    fn rejection_never_moves_next_below_match() {
        let mut p = Progress::new(1, 0);
        p.maybe_update(4);
        p.next_index = 9;
        assert!(p.maybe_decrease(8, 1));
        assert_eq!(p.next_index, 5);
    }
}
