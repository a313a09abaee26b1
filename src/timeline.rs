//! What happened to this node, as a short list for people: elections,
//! leader changes, term changes, membership changes and snapshots, each
//! with the wall-clock time it was seen. The consensus actor keeps one (its
//! own state, shown in `/status` as `events`); the web view merges the
//! members' lists into the cluster's timeline.
//!
//! Pure: the caller passes the time and what it observed before and after.

use std::collections::VecDeque;

use serde::Serialize;

use crate::raft::{Index, NodeId, Role, Term};

/// How many events a node keeps (the oldest go first).
pub const KEEP: usize = 100;

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterEvent {
    /// Milliseconds since the epoch, by this node's clock.
    pub at_ms: u64,
    pub node: NodeId,
    pub term: Term,
    /// `election`, `leader`, `term`, `membership` or `snapshot`.
    pub kind: &'static str,
    pub text: String,
}

/// The part of a node's state the timeline follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    /// Index of the configuration in force and whether it has committed.
    pub config: (Index, bool),
    /// Voters and learners of that configuration, for the text.
    pub members: String,
}

#[derive(Debug)]
pub struct Timeline {
    node: NodeId,
    events: VecDeque<ClusterEvent>,
}

impl Timeline {
    pub fn new(node: NodeId) -> Self {
        Timeline { node, events: VecDeque::new() }
    }

    pub fn record(&mut self, at_ms: u64, term: Term, kind: &'static str, text: String) {
        if self.events.len() == KEEP {
            self.events.pop_front();
        }
        self.events.push_back(ClusterEvent { at_ms, node: self.node, term, kind, text });
    }

    /// Records what changed between two observations. A pre-vote round is
    /// no event (a cut-off node starts one every election timeout; its
    /// term does not move).
    pub fn observe(&mut self, at_ms: u64, before: &Observed, now: &Observed) {
        let me = self.node;
        let t = now.term;
        if now.role != before.role {
            match now.role {
                Role::Candidate => {
                    self.record(at_ms, t, "election", format!("node {me} starts an election for term {t}"))
                }
                Role::Leader => self.record(at_ms, t, "leader", format!("node {me} became leader at term {t}")),
                Role::Follower if before.role == Role::Leader => {
                    self.record(at_ms, t, "leader", format!("node {me} stepped down at term {t}"))
                }
                _ => {}
            }
        }
        if now.leader != before.leader && now.role != Role::Leader {
            if let Some(l) = now.leader {
                self.record(at_ms, t, "leader", format!("node {me} follows leader {l} at term {t}"));
            } else if now.term == before.term && before.leader.is_some() {
                self.record(at_ms, t, "leader", format!("node {me} lost its leader at term {t}"));
            }
        }
        let described = (now.role != before.role && matches!(now.role, Role::Candidate | Role::Leader))
            || (now.leader != before.leader && now.leader.is_some());
        if now.term != before.term && !described {
            self.record(at_ms, t, "term", format!("node {me} term {} -> {t}", before.term));
        }
        if now.config != before.config {
            let (index, committed) = now.config;
            let text = if committed {
                format!("configuration at index {index} committed: {}", now.members)
            } else {
                format!("configuration at index {index} proposed: {}", now.members)
            };
            self.record(at_ms, t, "membership", text);
        }
    }

    pub fn events(&self) -> Vec<ClusterEvent> {
        self.events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(role: Role, term: Term, leader: Option<NodeId>) -> Observed {
        Observed { role, term, leader, config: (0, true), members: "voters 1, 2, 3".into() }
    }

    fn texts(t: &Timeline) -> Vec<String> {
        t.events().into_iter().map(|e| e.text).collect()
    }

    #[test]
    fn an_election_won_and_lost_reads_as_a_story() {
        let mut t = Timeline::new(2);
        let f1 = obs(Role::Follower, 1, Some(1));
        let pre = obs(Role::PreCandidate, 1, None);
        let cand = obs(Role::Candidate, 2, None);
        let lead = obs(Role::Leader, 2, Some(2));
        let down = obs(Role::Follower, 3, Some(3));
        t.observe(10, &f1, &pre);
        t.observe(11, &pre, &cand);
        t.observe(12, &cand, &lead);
        t.observe(13, &lead, &down);
        assert_eq!(
            texts(&t),
            [
                "node 2 lost its leader at term 1",
                "node 2 starts an election for term 2",
                "node 2 became leader at term 2",
                "node 2 stepped down at term 3",
                "node 2 follows leader 3 at term 3",
            ]
        );
        assert_eq!(t.events()[2].at_ms, 12);
        assert_eq!(t.events()[2].kind, "leader");
    }

    #[test]
    fn a_term_change_without_a_leader_and_a_membership_change_are_recorded() {
        let mut t = Timeline::new(1);
        let a = obs(Role::Follower, 4, None);
        let b = obs(Role::Follower, 5, None);
        t.observe(1, &a, &b);
        let mut c = b.clone();
        c.config = (40, false);
        c.members = "voters 1, 2, 3; learners 4".into();
        t.observe(2, &b, &c);
        let mut d = c.clone();
        d.config = (40, true);
        t.observe(3, &c, &d);
        t.observe(4, &d, &d);
        assert_eq!(
            texts(&t),
            [
                "node 1 term 4 -> 5",
                "configuration at index 40 proposed: voters 1, 2, 3; learners 4",
                "configuration at index 40 committed: voters 1, 2, 3; learners 4",
            ]
        );
    }

    #[test]
    fn only_the_newest_events_are_kept() {
        let mut t = Timeline::new(1);
        for i in 0..(KEEP as u64 + 5) {
            t.record(i, 1, "snapshot", format!("snapshot {i}"));
        }
        let e = t.events();
        assert_eq!(e.len(), KEEP);
        assert_eq!(e[0].text, "snapshot 5");
    }
}
