//! Majority arithmetic over a set of voters. Kept apart so that joint
//! consensus (a membership change) can later combine two of these.

use std::collections::{BTreeMap, BTreeSet};

use super::types::{Index, NodeId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Pending,
    Won,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        // Empty only on a node that joins a running cluster and has not yet
        // received a configuration: it is no voter, so it never counts votes.
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        MajorityConfig { voters }
    }

    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Outcome of an election given the votes received so far.
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let granted = self.voters.iter().filter(|v| votes.get(v) == Some(&true)).count();
        let rejected = self.voters.iter().filter(|v| votes.get(v) == Some(&false)).count();
        if granted >= self.quorum() {
            VoteResult::Won
        } else if rejected > self.voters.len() - self.quorum() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// The highest value that a majority of voters has reached: with each
    /// voter's `matchIndex`, the highest index replicated on a majority.
    pub fn committed_index(&self, value_of: impl Fn(NodeId) -> Index) -> Index {
        let mut values: Vec<Index> = self.voters.iter().map(|&v| value_of(v)).collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values[self.quorum() - 1]
    }

    /// Does `active` contain a majority of voters?
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        self.voters.iter().filter(|&&v| active(v)).count() >= self.quorum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_majority_median() {
        let c = MajorityConfig::new([1, 2, 3]);
        let m = [(1, 5), (2, 3), (3, 9)].into_iter().collect::<BTreeMap<_, _>>();
        assert_eq!(c.committed_index(|id| m[&id]), 5);
        let c5 = MajorityConfig::new([1, 2, 3, 4, 5]);
        let m5 = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)].into_iter().collect::<BTreeMap<_, _>>();
        assert_eq!(c5.committed_index(|id| m5[&id]), 3);
    }

    #[test]
    fn election_outcomes() {
        let c = MajorityConfig::new([1, 2, 3]);
        let mut votes = BTreeMap::new();
        votes.insert(1, true);
        assert_eq!(c.vote_result(&votes), VoteResult::Pending);
        votes.insert(2, false);
        assert_eq!(c.vote_result(&votes), VoteResult::Pending);
        votes.insert(3, false);
        assert_eq!(c.vote_result(&votes), VoteResult::Lost);
        votes.insert(3, true);
        assert_eq!(c.vote_result(&votes), VoteResult::Won);
        votes.insert(9, true);
        assert_eq!(c.vote_result(&votes), VoteResult::Won, "non-voters are not counted");
    }

    #[test]
    fn single_voter_is_its_own_majority() {
        let c = MajorityConfig::new([7]);
        assert_eq!(c.quorum(), 1);
        assert_eq!(c.committed_index(|_| 4), 4);
    }
}
