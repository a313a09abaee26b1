//! The change history watchers read: one event per key a write changed, in
//! revision order, kept for a window of recent revisions (and bytes).
//!
//! It is part of the replicated state: every node builds the same events
//! from the same log, and the window travels in snapshots, so compacting
//! the log or installing a snapshot from the leader does not shorten it
//! (only the window's own limits do). The history is a persistent vector:
//! a watcher (or a snapshot) takes a copy in O(1) and reads it on its own
//! thread while writes go on.
//!
//! Revisions are log indexes, so they have gaps (no-op and configuration
//! entries, writes whose condition failed). A transaction's events share
//! its revision. "No gap" for a watcher means no *event* is missed: every
//! change with a revision in the range it asked for reaches it.

use std::io::{self, Write};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, BytesMut};
use imbl::Vector;
use serde::Serialize;

use crate::codec::{DecodeError, Reader, put_bytes};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub key: String,
    /// The new value (puts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The revision of the write (the log index of its entry).
    pub revision: u64,
    /// The key's revision before this change; 0 if it did not exist.
    pub prev_revision: u64,
    /// The JSON of this event, made once however many watchers get it.
    #[serde(skip)]
    json: OnceLock<String>,
}

impl PartialEq for Event {
    fn eq(&self, o: &Event) -> bool {
        (self.kind, &self.key, &self.value, self.revision, self.prev_revision)
            == (o.kind, &o.key, &o.value, o.revision, o.prev_revision)
    }
}

impl Eq for Event {}

impl Event {
    pub fn new(kind: EventKind, key: String, value: Option<String>, revision: u64, prev_revision: u64) -> Event {
        Event { kind, key, value, revision, prev_revision, json: OnceLock::new() }
    }

    /// `{"type":…,"key":…,"value":…,"revision":…,"prev_revision":…}`
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| serde_json::to_string(self).expect("events serialize"))
    }

    /// What the event counts for against the window's byte limit.
    pub fn size(&self) -> u64 {
        (self.key.len() + self.value.as_ref().map_or(0, String::len) + 48) as u64
    }
}

/// Which keys a watcher follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Key(String),
    Prefix(String),
}

impl Filter {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// How much history a node keeps: events of the last `revisions` log
/// indexes, and at most `bytes` of them (whichever is smaller). 0
/// revisions: none (watchers then only see changes from the moment they
/// connect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub revisions: u64,
    pub bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { revisions: 10_000, bytes: 8 << 20 }
    }
}

/// The window of events.
#[derive(Clone, Debug, Default)]
pub struct History {
    events: Vector<Arc<Event>>,
    bytes: u64,
    /// Events with a revision up to this one may have been dropped: a
    /// watcher can start at `compacted + 1` or later.
    compacted: u64,
    limits: Limits,
    /// Whether events are also collected for live watchers (in `fresh`).
    publishing: bool,
    fresh: Vec<Arc<Event>>,
}

/// A watch asked for revisions the window no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest revision a watch can start from.
    pub oldest: u64,
}

impl History {
    pub fn with_limits(limits: Limits) -> Self {
        History { limits, ..History::default() }
    }

    /// An empty window that starts after `applied` (a state restored from
    /// a snapshot without history).
    pub fn starting_after(applied: u64) -> Self {
        History { compacted: applied, ..History::default() }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The oldest revision a watch can start from.
    pub fn oldest(&self) -> u64 {
        self.compacted + 1
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Adopts new limits (a node's settings, after restoring a snapshot
    /// another node wrote), dropping what falls outside them at `applied`.
    pub fn set_limits(&mut self, limits: Limits, applied: u64) {
        self.limits = limits;
        self.trim(applied);
    }

    /// Appends an event of the entry at `revision` (not lower than any
    /// before it).
    pub fn push(&mut self, event: Event) {
        debug_assert!(self.events.last().is_none_or(|e| e.revision <= event.revision));
        let event = Arc::new(event);
        if self.publishing {
            self.fresh.push(event.clone());
        }
        if self.limits.revisions == 0 {
            self.compacted = event.revision;
            return;
        }
        self.bytes += event.size();
        self.events.push_back(event);
    }

    /// Starts (or stops) collecting new events for live watchers.
    pub fn set_publishing(&mut self, on: bool) {
        self.publishing = on;
        if !on {
            self.fresh.clear();
        }
    }

    /// The events pushed since the last call (while publishing).
    pub fn take_fresh(&mut self) -> Vec<Arc<Event>> {
        std::mem::take(&mut self.fresh)
    }

    /// Drops the oldest revisions beyond the limits, a whole revision at a
    /// time (a transaction's events go together), once `applied` is reached.
    pub fn trim(&mut self, applied: u64) {
        let floor = applied.saturating_sub(self.limits.revisions);
        if self.limits.revisions == 0 {
            self.events.clear();
            self.bytes = 0;
            self.compacted = self.compacted.max(applied);
            return;
        }
        self.compacted = self.compacted.max(floor);
        while let Some(first) = self.events.front() {
            let rev = first.revision;
            if rev > floor && self.bytes <= self.limits.bytes {
                break;
            }
            while self.events.front().is_some_and(|e| e.revision == rev) {
                let e = self.events.pop_front().expect("front exists");
                self.bytes -= e.size();
            }
            self.compacted = self.compacted.max(rev);
        }
    }

    /// The events from revision `from` on, as of now (a copy sharing the
    /// window), or the oldest revision still held if `from` is older.
    pub fn since(&self, from: u64) -> Result<Vector<Arc<Event>>, Compacted> {
        if from <= self.compacted {
            return Err(Compacted { oldest: self.oldest() });
        }
        let start = self
            .events
            .binary_search_by(
                |e| if e.revision < from { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater },
            )
            .unwrap_or_else(|i| i);
        Ok(self.events.clone().split_off(start))
    }

    // --- in snapshots ---

    /// `compacted`, count, then per event: kind (1 put, 2 delete), key,
    /// value (puts), revision, prev_revision. `buf` is written to `out`
    /// whenever it holds `chunk` bytes or more.
    pub fn write_to(&self, buf: &mut BytesMut, chunk: usize, out: &mut dyn Write) -> io::Result<()> {
        buf.put_u64_le(self.compacted);
        buf.put_u64_le(self.events.len() as u64);
        for e in &self.events {
            match &e.value {
                Some(v) => {
                    buf.put_u8(1);
                    put_bytes(buf, e.key.as_bytes());
                    put_bytes(buf, v.as_bytes());
                }
                None => {
                    buf.put_u8(2);
                    put_bytes(buf, e.key.as_bytes());
                }
            }
            buf.put_u64_le(e.revision);
            buf.put_u64_le(e.prev_revision);
            if buf.len() >= chunk {
                out.write_all(buf)?;
                buf.clear();
            }
        }
        Ok(())
    }

    /// Reads what [`write_to`](Self::write_to) wrote, for a state at `applied`.
    pub fn read_from(r: &mut Reader, applied: u64) -> Result<History, DecodeError> {
        let compacted = r.u64("history start")?;
        if compacted > applied {
            return Err(DecodeError(format!("the history starts after {compacted}, beyond the state's {applied}")));
        }
        let mut h = History { compacted, ..History::default() };
        let n = r.u64("event count")?;
        let mut last = compacted;
        for _ in 0..n {
            let (kind, key, value) = match r.u8("event type")? {
                1 => (EventKind::Put, r.string("event key")?, Some(r.string("event value")?)),
                2 => (EventKind::Delete, r.string("event key")?, None),
                b => return Err(DecodeError(format!("invalid event type {b}"))),
            };
            let revision = r.u64("event revision")?;
            let prev_revision = r.u64("previous revision")?;
            // A transaction may put a key and delete it: prev_revision = revision.
            if revision <= compacted || revision < last || revision > applied || prev_revision > revision {
                return Err(DecodeError(format!(
                    "event of '{key}' at revision {revision} (previous {prev_revision}) is out of order"
                )));
            }
            last = revision;
            let e = Event::new(kind, key, value, revision, prev_revision);
            h.bytes += e.size();
            h.events.push_back(Arc::new(e));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: u64) -> Event {
        Event::new(EventKind::Put, key.into(), Some("v".into()), revision, 0)
    }

    #[test]
    fn the_window_drops_whole_revisions_and_says_where_it_starts() {
        let mut h = History::with_limits(Limits { revisions: 10, bytes: u64::MAX });
        for r in 1..=20 {
            h.push(put("a", r));
            if r % 5 == 0 {
                h.push(put("b", r));
            }
            h.trim(r);
        }
        assert_eq!(h.oldest(), 11);
        assert_eq!(h.since(10), Err(Compacted { oldest: 11 }));
        let evs = h.since(15).unwrap();
        assert_eq!(
            evs.iter().map(|e| (e.revision, e.key.as_str())).collect::<Vec<_>>()[..3],
            [(15, "a"), (15, "b"), (16, "a")]
        );
        assert!(h.since(21).unwrap().is_empty());

        // The byte limit drops a transaction's two events together.
        let size = put("a", 1).size();
        h.set_limits(Limits { revisions: 10, bytes: size * 7 }, 20);
        assert!(h.bytes() <= size * 7);
        assert_eq!(h.since(h.oldest()).unwrap().front().map(|e| e.revision), Some(h.oldest()));
    }

    #[test]
    fn no_history_means_watches_start_now() {
        let mut h = History::with_limits(Limits { revisions: 0, bytes: 0 });
        h.push(put("a", 3));
        h.trim(4);
        assert!(h.is_empty());
        assert_eq!(h.oldest(), 5);
        assert!(h.since(5).unwrap().is_empty());
    }

    #[test]
    fn the_window_roundtrips_and_damage_is_refused() {
        let mut h = History::default();
        h.push(put("a", 2));
        h.push(Event::new(EventKind::Delete, "a".into(), None, 3, 2));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        h.write_to(&mut buf, 16, &mut out).unwrap();
        out.extend_from_slice(&buf);
        let buf = bytes::Bytes::from(out);
        let back = History::read_from(&mut Reader::new(buf.clone()), 3).unwrap();
        assert_eq!(back.since(1).unwrap(), h.since(1).unwrap());
        assert!(History::read_from(&mut Reader::new(buf.clone()), 2).is_err());
        for cut in 0..buf.len() {
            assert!(History::read_from(&mut Reader::new(buf.slice(..cut)), 3).is_err());
        }
    }
}
