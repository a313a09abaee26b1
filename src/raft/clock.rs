//! Elapsed time, as ticks of the core.
//!
//! The core counts ticks; the shell owns a clock. `TickClock` converts the
//! time elapsed since the node started into the ticks the core has not yet
//! seen. The shell calls `advance` before *every* input, not only on timer
//! wake-ups: a message that waited in a queue while the node was stalled
//! must be handled after the time that passed meanwhile, or the core would
//! date it too late (a queued heartbeat would reset the election timer, and
//! the stall charged afterwards would then end the follower's refusal to
//! vote early, while the leader still counts on that follower for its lease).

use super::node::Raft;

#[derive(Clone, Debug)]
pub struct TickClock {
    tick: u64,
    /// Most ticks charged at once: after a long stall the core learns that
    /// much time passed (enough for every timeout to expire) without
    /// spinning through millions of ticks.
    max_catch_up: u64,
    /// Ticks handed to the core so far.
    ticks: u64,
}

impl TickClock {
    /// `tick` is the length of one tick in the caller's unit of time.
    pub fn new(tick: u64, max_catch_up: u64) -> Self {
        TickClock { tick: tick.max(1), max_catch_up, ticks: 0 }
    }

    /// Feeds `raft` the ticks that are due `elapsed` time after the start.
    /// Returns how many it fed.
    pub fn advance(&mut self, raft: &mut Raft, elapsed: u64) -> u64 {
        let due = elapsed / self.tick;
        let behind = due.saturating_sub(self.ticks);
        let fed = behind.min(self.max_catch_up);
        for _ in 0..fed {
            raft.tick();
        }
        self.ticks = due.max(self.ticks);
        fed
    }
}
