//! The in-memory replicated log and its commit index.
//!
//! The consensus core keeps the log after the latest compaction point in
//! memory and tells storage what to persist; `Durability` tracks which
//! prefix of this log is known to be on disk. Entries up to `offset` are
//! covered by a snapshot (committed, applied, and no longer held here).

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

/// The log of figure 2 plus `commitIndex`.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// `entries[k]` has index `offset + 1 + k`.
    entries: Vec<Entry>,
    /// Index of the entry just before `entries[0]`: 0 until the log is
    /// compacted (or a snapshot installed); the term of that entry is
    /// `offset_term`. Everything up to `offset` is committed.
    offset: Index,
    offset_term: Term,
    /// Highest log entry known to be committed.
    /// Invariant: `commit_index <= last_index()`; never decreases.
    commit_index: Index,
    /// Sum of `size_hint` over `entries` (what the log holds in memory).
    bytes: usize,
}

fn size_of(entries: &[Entry]) -> usize {
    entries.iter().map(Entry::size_hint).sum()
}

impl RaftLog {
    /// A log holding `entries`, which must be contiguous from index 1.
    pub fn new(entries: Vec<Entry>) -> Self {
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.index, k as Index + 1, "log entries must be contiguous from 1");
        }
        let bytes = size_of(&entries);
        RaftLog { entries, offset: 0, offset_term: 0, commit_index: 0, bytes }
    }

    /// A log that starts after a snapshot ending at (`index`, `term`):
    /// `entries` must be contiguous from `index + 1`.
    pub fn after_snapshot(index: Index, term: Term, entries: Vec<Entry>) -> Self {
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.index, index + 1 + k as Index, "log entries must be contiguous after the snapshot");
        }
        let bytes = size_of(&entries);
        RaftLog { entries, offset: index, offset_term: term, commit_index: index, bytes }
    }

    /// The index just before the first entry held (the compaction point).
    pub fn offset(&self) -> Index {
        self.offset
    }

    /// Drops the entries up to `index` (which must be applied, so
    /// committed): they are covered by a snapshot now.
    pub fn compact_to(&mut self, index: Index) {
        if index <= self.offset {
            return;
        }
        assert!(index <= self.commit_index, "compaction to {index} beyond the commit index {}", self.commit_index);
        let term = self.term(index).expect("index within the log");
        let n = (index - self.offset) as usize;
        self.bytes -= size_of(&self.entries[..n]);
        self.entries.drain(..n);
        self.offset = index;
        self.offset_term = term;
    }

    /// Replaces the whole log with a snapshot ending at (`index`, `term`),
    /// which the cluster committed.
    pub fn restore(&mut self, index: Index, term: Term) {
        self.entries.clear();
        self.bytes = 0;
        self.offset = index;
        self.offset_term = term;
        self.commit_index = index;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Approximate bytes the entries held in memory take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
        self.bytes += entry.size_hint();
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
            let keep = (index - self.offset - 1) as usize;
            self.bytes -= size_of(&self.entries[keep..]);
            self.entries.truncate(keep);
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

/// The log a node restarts with, from its latest snapshot and its WAL.
#[derive(Debug, PartialEq, Eq)]
pub struct LogAfterSnapshot {
    /// The entries after the snapshot.
    pub entries: Vec<Entry>,
    /// The WAL does not describe "the snapshot, then `entries`" (it ends
    /// before the snapshot, or in a suffix the snapshot superseded): before
    /// anything is appended, storage must record the snapshot in it (a
    /// `PersistOp` with only `snapshot` set), or later appends would leave
    /// a gap or follow the wrong entries.
    pub reset_wal: bool,
}

/// Recovery with a snapshot ending at (`index`, `term`): the log that
/// follows it, from what a WAL replay found: `entries`, contiguous after
/// `wal_base` (the last snapshot recorded in the WAL, or 0). Entries the
/// snapshot covers are dropped. The ones after it extend the snapshot's
/// log only if the WAL starts right after it, or holds the snapshot's own
/// entry with the snapshot's term (Log Matching). If the WAL's entry at
/// `index` has another term, the WAL ends in a suffix that the snapshot
/// superseded — the node applied the committed entry that replaced it
/// before the replacement was durable, then crashed — and everything after
/// the snapshot is dropped: the leader sends it again.
pub fn log_after_snapshot(
    index: Index,
    term: Term,
    wal_base: Index,
    entries: Vec<Entry>,
) -> Result<LogAfterSnapshot, String> {
    if wal_base > index {
        return Err(format!("the log records a snapshot at {wal_base}, newer than the latest snapshot ({index})"));
    }
    if let Some(first) = entries.first().map(|e| e.index)
        && first != wal_base + 1
    {
        return Err(format!("the log's entries start at {first}, not right after {wal_base}"));
    }
    let wal_last = wal_base + entries.len() as Index;
    let matches = wal_base == index || (wal_last >= index && entries[(index - wal_base - 1) as usize].term == term);
    if !matches {
        return Ok(LogAfterSnapshot { entries: Vec::new(), reset_wal: true });
    }
    let mut entries = entries;
    let kept = entries.split_off((index - wal_base) as usize);
    Ok(LogAfterSnapshot { entries: kept, reset_wal: false })
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
    /// A snapshot was installed at this index: the next op resets the log
    /// to start after it (and carries every entry after it).
    pub snapshot: Option<Index>,
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
        self.hard_state_dirty || self.truncate_from.is_some() || self.append_from.is_some() || self.snapshot.is_some()
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

    /// The log was replaced by a snapshot ending at `index`; whatever was
    /// noted before is superseded (the op carries the whole log after it).
    pub fn note_snapshot(&mut self, index: Index) {
        self.snapshot = Some(index);
        self.truncate_from = None;
        self.append_from = None;
        self.stable_index = self.stable_index.min(index);
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
        // A snapshot replaces everything after it, like a truncation there.
        let truncate_from = match self.snapshot.take() {
            Some(s) => Some(s + 1),
            None => truncate_from,
        };
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
        if let Some(s) = self.snapshot {
            stable = stable.min(s);
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
    fn compaction_keeps_terms_at_the_boundary_and_restore_replaces_the_log() {
        let mut log = log_of(&[1, 1, 2, 2, 3]);
        log.commit_to(4);
        log.compact_to(3);
        assert_eq!((log.offset(), log.term(3), log.term(2), log.len()), (3, Some(2), None, 2));
        assert_eq!(log.entry(4).map(|e| e.term), Some(2));
        assert!(log.is_up_to_date(5, 3));
        log.compact_to(2);
        assert_eq!(log.offset(), 3, "compaction never goes back");
        log.restore(9, 4);
        assert_eq!((log.last_index(), log.last_term(), log.commit_index(), log.len()), (9, 4, 9, 0));
        let after = RaftLog::after_snapshot(9, 4, vec![ent(10, 4)]);
        assert_eq!((after.last_index(), after.commit_index(), after.term(9)), (10, 9, Some(4)));
    }

    #[test]
    fn recovery_keeps_only_a_log_that_extends_the_snapshot() {
        let ents = |from: Index, terms: &[Term]| -> Vec<Entry> {
            terms.iter().enumerate().map(|(k, &t)| ent(from + k as Index, t)).collect()
        };
        let got = |r: LogAfterSnapshot| (r.entries.iter().map(|e| e.index).collect::<Vec<_>>(), r.reset_wal);
        // The WAL holds the snapshot's entry with its term: the rest follows.
        assert_eq!(got(log_after_snapshot(3, 2, 0, ents(1, &[1, 1, 2, 2, 2])).unwrap()), (vec![4, 5], false));
        // The WAL recorded this snapshot: everything after it.
        assert_eq!(got(log_after_snapshot(3, 2, 3, ents(4, &[2, 3])).unwrap()), (vec![4, 5], false));
        assert_eq!(got(log_after_snapshot(3, 2, 3, vec![]).unwrap()), (vec![], false));
        // A superseded suffix (the WAL's entry 3 has term 1, not 2), or a
        // WAL that ends before the snapshot: nothing follows, and the WAL
        // must be told (appending 4 after its 4@1, or after its entry 2,
        // would be wrong).
        assert_eq!(got(log_after_snapshot(3, 2, 0, ents(1, &[1, 1, 1, 1])).unwrap()), (vec![], true));
        assert_eq!(got(log_after_snapshot(9, 2, 0, ents(1, &[1, 1])).unwrap()), (vec![], true));
        assert_eq!(got(log_after_snapshot(3, 2, 0, vec![]).unwrap()), (vec![], true));
        assert_eq!(got(log_after_snapshot(3, 2, 1, vec![]).unwrap()), (vec![], true));
        // Inconsistent inputs are refused.
        assert!(log_after_snapshot(3, 2, 0, ents(6, &[2])).is_err());
        assert!(log_after_snapshot(3, 2, 5, vec![]).is_err());
    }

    #[test]
    fn a_snapshot_install_supersedes_what_was_noted_and_counts_as_a_truncation() {
        let mut d = Durability::new(0);
        d.note_append(1);
        let s1 = d.issue(None, 10);
        d.note_truncate(8);
        d.note_append(8);
        d.note_snapshot(20);
        assert!(d.has_unissued());
        assert_eq!((d.truncate_from, d.append_from), (None, None));
        let s2 = d.issue(None, 22); // snapshot 20 + entries 21..=22
        assert!(d.snapshot.is_none());
        d.ack(s1, 22);
        assert!(d.stable_index <= 10, "op 1 alone does not make the snapshot durable");
        d.ack(s2, 22);
        assert_eq!(d.stable_index, 22);
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
