//! ReadIndex bookkeeping (§6.4 of the dissertation, §8 of the paper).
//!
//! A linearizable read is served at a *read index*: the leader's commit
//! index when the read arrived. Before serving it, the leader must confirm
//! it was still the leader *after* the read arrived, so it starts a "round":
//! it bumps a context number `ctx` and sends it with heartbeats (and with
//! every AppendEntries). Any response at the leader's term that echoes a
//! context `>= c` proves the follower still followed this leader when it
//! received a message sent after round `c` started. Once a majority has
//! echoed `c`, every read waiting for round `c` is confirmed.
//!
//! Rounds batch reads: while one round is outstanding, new reads wait for
//! the next one, which starts as soon as the outstanding one is confirmed.

use std::collections::VecDeque;

use super::types::{Index, RequestId};

#[derive(Clone, Debug)]
struct PendingRead {
    id: RequestId,
    index: Index,
    /// The round that must be confirmed before this read may be served.
    round: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// The latest round started (the context sent with leader messages).
    pub ctx: u64,
    /// The highest round a majority has confirmed.
    pub confirmed: u64,
    /// Start tick of each unconfirmed round, oldest first.
    started: VecDeque<(u64, u64)>,
    /// Tick at which the newest confirmed round started: the leader held
    /// leadership at least until then (basis of lease reads).
    pub lease_from: Option<u64>,
    pending: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its own
    /// term; until then its commit index may lag behind the cluster's.
    pub waiting_for_commit: Vec<RequestId>,
}

impl ReadOnly {
    /// True when a started round has not yet been confirmed.
    pub fn round_outstanding(&self) -> bool {
        self.ctx > self.confirmed
    }

    /// Queues a read at `index`; it needs a round that starts after now.
    pub fn add(&mut self, id: RequestId, index: Index) {
        self.pending.push_back(PendingRead { id, index, round: self.ctx + 1 });
    }

    /// Is there a read waiting for a round that has not started yet?
    pub fn needs_new_round(&self) -> bool {
        self.pending.back().is_some_and(|r| r.round > self.ctx)
    }

    pub fn start_round(&mut self, now: u64) -> u64 {
        self.ctx += 1;
        self.started.push_back((self.ctx, now));
        self.ctx
    }

    /// A majority has echoed `round`: returns the reads that may now be
    /// served, as (id, read index).
    pub fn confirm(&mut self, round: u64) -> Vec<(RequestId, Index)> {
        if round <= self.confirmed {
            return Vec::new();
        }
        self.confirmed = round;
        while let Some(&(c, tick)) = self.started.front() {
            if c > round {
                break;
            }
            self.lease_from = Some(tick);
            self.started.pop_front();
        }
        let mut ready = Vec::new();
        while self.pending.front().is_some_and(|r| r.round <= round) {
            let r = self.pending.pop_front().expect("checked non-empty");
            ready.push((r.id, r.index));
        }
        ready
    }

    /// Leadership is lost: every waiting read fails. Returns their ids.
    pub fn reset(&mut self) -> Vec<RequestId> {
        let mut failed: Vec<RequestId> = self.pending.drain(..).map(|r| r.id).collect();
        failed.append(&mut self.waiting_for_commit);
        *self = ReadOnly::default();
        failed
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.waiting_for_commit.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_for_a_round_started_after_they_arrived() {
        let mut r = ReadOnly::default();
        let c1 = r.start_round(10);
        r.add(7, 42); // arrives while round 1 is outstanding
        assert!(r.confirm(c1).is_empty(), "round 1 was sent before read 7 arrived");
        assert!(r.needs_new_round());
        let c2 = r.start_round(12);
        assert_eq!(r.confirm(c2), vec![(7, 42)]);
        assert_eq!(r.lease_from, Some(12));
    }

    #[test]
    fn one_round_confirms_a_batch() {
        let mut r = ReadOnly::default();
        r.add(1, 5);
        r.add(2, 6);
        let c = r.start_round(0);
        assert_eq!(r.confirm(c), vec![(1, 5), (2, 6)]);
        assert!(!r.round_outstanding());
    }

    #[test]
    fn reset_fails_everything() {
        let mut r = ReadOnly::default();
        r.add(1, 5);
        r.waiting_for_commit.push(2);
        let mut failed = r.reset();
        failed.sort();
        assert_eq!(failed, vec![1, 2]);
        assert_eq!(r.pending_len(), 0);
    }
}
