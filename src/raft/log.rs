//! The in-memory replicated log and its commit index.
//!
//! The consensus core keeps the whole log in memory (until snapshots exist)
//! and tells storage what to persist; `Durability` tracks which prefix of
//! this log is known to be on disk.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

/// The log of figure 2 plus `commitIndex`.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// `entries[k]` has index `offset + 1 + k`.
    entries: Vec<Entry>,
    /// Index of the entry just before `entries[0]`: 0 until log compaction
    /// (a snapshot) exists; the term of that entry is `offset_term`.
    offset: Index,
    offset_term: Term,
    /// Highest log entry known to be committed.
    /// Invariant: `commit_index <= last_index()`; never decreases.
    commit_index: Index,
}

impl RaftLog {
    /// A log holding `entries`, which must be contiguous from index 1.
    pub fn new(entries: Vec<Entry>) -> Self {
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.index, k as Index + 1, "log entries must be contiguous from 1");
        }
        RaftLog { entries, offset: 0, offset_term: 0, commit_index: 0 }
    }

    pub fn last_index(&self) -> Index {
        self.offset + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    pub fn commit_index(&self) -> Index {
        self.commit_index
    }

    /// The term of the entry at `index`, if the log holds it (index 0 has term 0).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        if index < self.offset || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.offset - 1) as usize].term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.offset - 1) as usize])
    }

    /// Entries from `from` to `to` inclusive.
    pub fn slice(&self, from: Index, to: Index) -> &[Entry] {
        if from > to || from > self.last_index() {
            return &[];
        }
        assert!(from > self.offset, "entry {from} was compacted");
        let lo = (from - self.offset - 1) as usize;
        let hi = (to.min(self.last_index()) - self.offset) as usize;
        &self.entries[lo..hi]
    }

    /// Entries from `from` on, at most `max_bytes` of them (but at least one
    /// when any exist, so a large entry still goes out).
    pub fn entries_from(&self, from: Index, max_bytes: usize) -> Vec<Entry> {
        self.entries_between(from, self.last_index(), max_bytes)
    }

    /// Entries from `from` to `to` inclusive, capped at `max_bytes` as
    /// `entries_from` is.
    pub fn entries_between(&self, from: Index, to: Index, max_bytes: usize) -> Vec<Entry> {
        let all = self.slice(from, to);
        let mut size = 0;
        let mut n = 0;
        for e in all {
            size += e.size_hint();
            if n > 0 && size > max_bytes {
                break;
            }
            n += 1;
        }
        all[..n].to_vec()
    }

    /// Appends one entry at `last_index() + 1`.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "log append must be contiguous");
        self.entries.push(entry);
    }

    /// Removes every entry at and after `index`. Committed entries are never
    /// removed: that would break State Machine Safety, so it is a bug here.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.commit_index,
            "attempt to truncate committed entry {index} (commit index {})",
            self.commit_index
        );
        if index <= self.last_index() {
            self.entries.truncate((index - self.offset - 1) as usize);
        }
    }

    /// Advances `commit_index`; it never goes backwards.
    pub fn commit_to(&mut self, index: Index) -> bool {
        if index > self.commit_index {
            assert!(index <= self.last_index(), "commit index {index} beyond last index {}", self.last_index());
            self.commit_index = index;
            true
        } else {
            false
        }
    }

    /// §5.4.1: is a log ending at (`last_index`, `last_term`) at least as
    /// up-to-date as ours? "If the logs have last entries with different
    /// terms, then the log with the later term is more up-to-date. If the
    /// logs end with the same term, then whichever log is longer is more
    /// up-to-date."
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The first index of the run of entries with term `term` that ends at
    /// `index` (for the fast back-tracking hint). Entries at or below the
    /// commit index are known to match, so the search stops there.
    pub fn first_index_of_term_at(&self, index: Index, term: Term) -> Index {
        let floor = self.commit_index.max(self.offset);
        let mut i = index;
        while i > floor + 1 && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index whose entry has term `term`, if the log has any.
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        // Terms are non-decreasing along the log, so search from the end.
        let mut i = self.last_index();
        while i > self.offset {
            let t = self.term(i).expect("index within the log");
            if t == term {
                return Some(i);
            }
            if t < term {
                return None;
            }
            i -= 1;
        }
        None
    }

    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// One write that storage was asked to make durable, in order.
#[derive(Debug, Clone)]
struct InFlight {
    seq: u64,
    truncate_from: Option<Index>,
    last_index: Index,
}

/// Which prefix of the log is on stable storage, and which changes have not
/// yet been handed to storage. Changes become a `PersistOp` in `Raft::ready`.
#[derive(Debug, Clone, Default)]
pub struct Durability {
    /// Sequence number of the last `PersistOp` handed out.
    pub issued: u64,
    /// Sequence number of the last `PersistOp` storage reported durable.
    pub acked: u64,
    in_flight: VecDeque<InFlight>,
    /// Last index of the log as the ops handed out so far describe it: what
    /// storage will hold once it has carried them all out.
    pub issued_last_index: Index,
    /// Changes since the last op: hard state changed, lowest truncation
    /// point, first index of entries not yet handed to storage.
    pub hard_state_dirty: bool,
    pub truncate_from: Option<Index>,
    pub append_from: Option<Index>,
    /// Highest index `i` such that log[1..=i], as it is now, is durable.
    /// Invariant: `stable_index <= log.last_index()`.
    pub stable_index: Index,
}

impl Durability {
    pub fn new(stable_index: Index) -> Self {
        Durability { stable_index, issued_last_index: stable_index, ..Default::default() }
    }

    /// True when there are changes not yet handed to storage.
    pub fn has_unissued(&self) -> bool {
        self.hard_state_dirty || self.truncate_from.is_some() || self.append_from.is_some()
    }

    /// The op sequence number that must be durable before a message
    /// reflecting the current state may be sent.
    pub fn gate(&self) -> u64 {
        if self.has_unissued() { self.issued + 1 } else { self.issued }
    }

    pub fn note_append(&mut self, index: Index) {
        if self.append_from.is_none_or(|a| a > index) {
            self.append_from = Some(index);
        }
    }

    pub fn note_truncate(&mut self, index: Index) {
        self.truncate_from = Some(self.truncate_from.map_or(index, |t| t.min(index)));
        if let Some(a) = self.append_from
            && a > index
        {
            self.append_from = Some(index);
        }
        self.stable_index = self.stable_index.min(index - 1);
    }

    /// The unissued changes as a self-consistent op against what storage
    /// will hold (see `PersistOp`): (truncate from, append from), given the
    /// log's last index now. Entries that were appended and truncated again
    /// before any op carried them never reach storage, so a truncation
    /// beyond what was issued is no truncation at all: within one batch of
    /// inputs, a stale leader's append of 6..8 followed by the new leader's
    /// replacement from 7 is "append from 6", not "truncate at 7, append 6".
    pub fn unissued_range(&self, last_index: Index) -> (Option<Index>, Option<Index>) {
        let start = match (self.truncate_from, self.append_from) {
            (Some(t), Some(a)) => Some(t.min(a)),
            (t, a) => t.or(a),
        };
        let Some(start) = start else { return (None, None) };
        let append_from = (start <= last_index).then_some(start);
        if start <= self.issued_last_index {
            (Some(start), append_from)
        } else {
            debug_assert!(
                append_from.is_none_or(|a| a == self.issued_last_index + 1),
                "unissued entries from {start} leave a gap after {}",
                self.issued_last_index
            );
            (None, append_from.map(|_| self.issued_last_index + 1))
        }
    }

    /// Records that everything unissued was handed to storage as op `seq`,
    /// which truncates at `truncate_from` and leaves a log ending at `last_index`.
    pub fn issue(&mut self, truncate_from: Option<Index>, last_index: Index) -> u64 {
        self.issued += 1;
        self.in_flight.push_back(InFlight { seq: self.issued, truncate_from, last_index });
        self.issued_last_index = last_index;
        self.hard_state_dirty = false;
        self.truncate_from = None;
        self.append_from = None;
        self.issued
    }

    /// Storage reports ops up to `seq` durable. Returns true if
    /// `stable_index` changed.
    pub fn ack(&mut self, seq: u64, last_index: Index) -> bool {
        if seq <= self.acked {
            return false;
        }
        assert!(seq <= self.issued, "storage acked op {seq} that was never issued");
        self.acked = seq;
        let mut newest = None;
        while self.in_flight.front().is_some_and(|f| f.seq <= seq) {
            newest = self.in_flight.pop_front();
        }
        let Some(done) = newest else { return false };
        let mut stable = done.last_index.min(last_index);
        // Later truncations (issued or not) cut what that op made durable.
        for f in &self.in_flight {
            if let Some(t) = f.truncate_from {
                stable = stable.min(t - 1);
            }
        }
        if let Some(t) = self.truncate_from {
            stable = stable.min(t - 1);
        }
        let changed = stable != self.stable_index;
        self.stable_index = stable;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryData;

    fn ent(index: Index, term: Term) -> Entry {
        Entry { index, term, data: EntryData::Noop }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        RaftLog::new(terms.iter().enumerate().map(|(k, &t)| ent(k as Index + 1, t)).collect())
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let log = log_of(&[1, 1, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3), "later term wins even if shorter");
        assert!(!log.is_up_to_date(2, 2), "same term, shorter loses");
        assert!(!log.is_up_to_date(9, 1), "earlier term loses even if longer");
    }

    #[test]
    fn term_lookup_and_bounds() {
        let log = log_of(&[1, 2]);
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(3), None);
        assert_eq!(log.last_index_of_term(1), Some(1));
        assert_eq!(log.last_index_of_term(3), None);
        assert_eq!(log.first_index_of_term_at(2, 2), 2);
    }

    #[test]
    fn first_index_of_term_walks_back_to_commit() {
        let mut log = log_of(&[1, 2, 2, 2, 2]);
        assert_eq!(log.first_index_of_term_at(5, 2), 2);
        log.commit_to(3);
        assert_eq!(log.first_index_of_term_at(5, 2), 4);
    }

    #[test]
    #[should_panic(expected = "truncate committed")]
    fn truncating_committed_entries_is_a_bug() {
        let mut log = log_of(&[1, 1, 1]);
        log.commit_to(2);
        log.truncate_from(2);
    }

    #[test]
    fn entries_from_caps_bytes_but_sends_at_least_one() {
        let log = log_of(&[1, 1, 1, 1]);
        assert_eq!(log.entries_from(2, 0).len(), 1);
        assert_eq!(log.entries_from(2, 48).len(), 2);
        assert_eq!(log.entries_from(2, usize::MAX).len(), 3);
        assert!(log.entries_from(5, 100).is_empty());
    }

    #[test]
    fn durability_tracks_truncation_after_an_issued_op() {
        let mut d = Durability::new(0);
        d.note_append(1);
        let s1 = d.issue(None, 10); // entries 1..=10
        d.note_truncate(8); // a new leader replaces 8..
        d.note_append(8);
        assert_eq!(d.unissued_range(9), (Some(8), Some(8)));
        let s2 = d.issue(Some(8), 9);
        assert!(d.ack(s1, 9));
        assert_eq!(d.stable_index, 7, "8..10 of op 1 were replaced by op 2");
        assert!(d.ack(s2, 9));
        assert_eq!(d.stable_index, 9);
        assert!(!d.ack(s2, 9), "duplicate ack is ignored");
    }

    /// Issue 9, finding 2: one batch of inputs appends 6..=8 (a deposed
    /// leader's late AppendEntries) and then replaces 7.. (the new leader's).
    /// The op must not say "truncate at 7" to a storage that holds 5 entries.
    #[test]
    fn a_truncation_of_entries_never_issued_is_no_truncation() {
        let mut d = Durability::new(5);
        d.note_append(6);
        d.note_truncate(7);
        d.note_append(7);
        assert_eq!(d.unissued_range(8), (None, Some(6)));
        // Beyond what was issued, but below: a real truncation.
        let mut d = Durability::new(5);
        d.note_truncate(4);
        d.note_append(4);
        assert_eq!(d.unissued_range(4), (Some(4), Some(4)));
        // Hard state only.
        let mut d = Durability::new(5);
        d.hard_state_dirty = true;
        assert_eq!(d.unissued_range(5), (None, None));
    }

    #[test]
    fn gate_covers_changes_not_yet_issued() {
        let mut d = Durability::new(0);
        assert_eq!(d.gate(), 0);
        d.hard_state_dirty = true;
        assert_eq!(d.gate(), 1);
        d.issue(None, 0);
        assert_eq!(d.gate(), 1);
        d.ack(1, 0);
        assert_eq!(d.acked, 1);
    }
}
