//! Client sessions (Raft dissertation §6.3): exactly-once writes across
//! retries. A client opens a session and tags each write with (session,
//! sequence number); the state machine keeps, per session, the highest
//! sequence number applied and the response to it, so a write retried
//! after a timeout or a lost connection is answered from the table instead
//! of being applied again.
//!
//! Everything here is decided by the log alone: the leader puts its clock
//! (`now_ms`) into each session command, the table's clock is the largest
//! of those seen, and a session expires when that clock passes its expiry
//! — so every node expires the same sessions at the same index.

use bytes::{BufMut, BytesMut};
use imbl::{OrdMap, OrdSet};

use super::{CommandResult, Item, OpResult};
use crate::codec::{DecodeError, Reader, put_bytes};

/// A session's state in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The highest sequence number applied (0: none yet).
    pub last_seq: u64,
    /// The response to `last_seq`, returned again to a retry of it.
    pub response: Option<CommandResult>,
    pub ttl_ms: u64,
    /// The table's clock at which it expires unless used again.
    pub expires_at: u64,
}

/// What the table says about a tagged write before it is applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// A sequence number above the last: apply it.
    Fresh,
    /// The last one again: here is its response; apply nothing.
    Duplicate(CommandResult),
    /// Below the last: its response is no longer kept.
    Superseded { last_seq: u64 },
    /// No such session (it expired, was evicted, or never existed).
    Unknown,
}

#[derive(Clone, Debug, Default)]
pub struct Sessions {
    by_id: OrdMap<u64, Session>,
    /// (expires_at, id): the order of expiry, and of eviction (the session
    /// idle longest goes first when the table is full).
    by_expiry: OrdSet<(u64, u64)>,
    /// The largest leader time (ms since the epoch) seen in the log.
    clock_ms: u64,
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The newest session's id.
    pub fn max_id(&self) -> Option<u64> {
        self.by_id.get_max().map(|(id, _)| *id)
    }

    pub fn get(&self, id: u64) -> Option<&Session> {
        self.by_id.get(&id)
    }

    /// Moves the clock to `now_ms` (never back) and drops the sessions
    /// that expired by then.
    pub fn advance(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        while let Some(&(at, id)) = self.by_expiry.get_min() {
            if at > self.clock_ms {
                break;
            }
            self.remove(at, id);
        }
    }

    fn remove(&mut self, at: u64, id: u64) {
        self.by_expiry.remove(&(at, id));
        self.by_id.remove(&id);
    }

    /// Opens session `id` (the index of the entry that opens it), first
    /// evicting the sessions idle longest if the table holds `max` already.
    pub fn open(&mut self, id: u64, ttl_ms: u64, max: usize) {
        while self.by_id.len() >= max.max(1) {
            let Some(&(at, old)) = self.by_expiry.get_min() else { break };
            self.remove(at, old);
        }
        let expires_at = self.clock_ms.saturating_add(ttl_ms);
        self.by_id.insert(id, Session { last_seq: 0, response: None, ttl_ms, expires_at });
        self.by_expiry.insert((expires_at, id));
    }

    /// Whether a write tagged (`id`, `seq`) is to be applied; a known
    /// session's expiry moves on either way (it is in use).
    pub fn check(&mut self, id: u64, seq: u64) -> Check {
        let clock = self.clock_ms;
        let Some(s) = self.by_id.get_mut(&id) else { return Check::Unknown };
        let (was, now) = (s.expires_at, clock.saturating_add(s.ttl_ms));
        s.expires_at = now;
        let check = match seq.cmp(&s.last_seq) {
            std::cmp::Ordering::Greater => Check::Fresh,
            std::cmp::Ordering::Equal => s.response.clone().map_or(Check::Fresh, Check::Duplicate),
            std::cmp::Ordering::Less => Check::Superseded { last_seq: s.last_seq },
        };
        self.by_expiry.remove(&(was, id));
        self.by_expiry.insert((now, id));
        check
    }

    /// Records the response to the applied write (`id`, `seq`).
    pub fn record(&mut self, id: u64, seq: u64, response: &CommandResult) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.last_seq = seq;
            s.response = Some(response.clone());
        }
    }

    // --- in snapshots ---

    /// `clock_ms`, count, then per session: id, last_seq, ttl_ms,
    /// expires_at, and the response (a presence byte, then the encoding of
    /// [`encode_result`]).
    pub fn write_to(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.clock_ms);
        buf.put_u64_le(self.by_id.len() as u64);
        for (id, s) in &self.by_id {
            buf.put_u64_le(*id);
            buf.put_u64_le(s.last_seq);
            buf.put_u64_le(s.ttl_ms);
            buf.put_u64_le(s.expires_at);
            match &s.response {
                None => buf.put_u8(0),
                Some(r) => {
                    buf.put_u8(1);
                    encode_result(r, buf);
                }
            }
        }
    }

    pub fn read_from(r: &mut Reader) -> Result<Sessions, DecodeError> {
        let mut t = Sessions { clock_ms: r.u64("session clock")?, ..Sessions::default() };
        let n = r.u64("session count")?;
        let mut last = None;
        for _ in 0..n {
            let id = r.u64("session id")?;
            if last.is_some_and(|l| l >= id) {
                return Err(DecodeError(format!("session {id} is out of order")));
            }
            last = Some(id);
            let last_seq = r.u64("last sequence number")?;
            let ttl_ms = r.u64("session ttl")?;
            let expires_at = r.u64("session expiry")?;
            let response = match r.u8("response presence")? {
                0 => None,
                1 => Some(decode_result(r)?),
                b => return Err(DecodeError(format!("invalid response presence byte {b}"))),
            };
            t.by_id.insert(id, Session { last_seq, response, ttl_ms, expires_at });
            t.by_expiry.insert((expires_at, id));
        }
        Ok(t)
    }
}

// --- responses, as kept in snapshots ---------------------------------------------

const R_PUT: u8 = 1;
const R_DELETED: u8 = 2;
const R_PRECONDITION: u8 = 3;
const R_TXN: u8 = 4;
const R_LEASE_NOT_FOUND: u8 = 5;
const O_PUT: u8 = 1;
const O_DELETE: u8 = 2;
const O_GET: u8 = 3;

fn put_item(item: &Option<Item>, buf: &mut BytesMut) {
    match item {
        None => buf.put_u8(0),
        Some(i) => {
            buf.put_u8(1);
            put_bytes(buf, i.key.as_bytes());
            put_bytes(buf, i.value.as_bytes());
            buf.put_u64_le(i.revision);
        }
    }
}

fn read_item(r: &mut Reader) -> Result<Option<Item>, DecodeError> {
    Ok(match r.u8("item presence")? {
        0 => None,
        1 => Some(Item { key: r.string("key")?, value: r.string("value")?, revision: r.u64("revision")? }),
        b => return Err(DecodeError(format!("invalid item presence byte {b}"))),
    })
}

/// The responses a session may keep: those of writes.
pub fn encode_result(res: &CommandResult, buf: &mut BytesMut) {
    match res {
        CommandResult::Put { key, revision } => {
            buf.put_u8(R_PUT);
            put_bytes(buf, key.as_bytes());
            buf.put_u64_le(*revision);
        }
        CommandResult::Deleted { key, deleted, revision } => {
            buf.put_u8(R_DELETED);
            put_bytes(buf, key.as_bytes());
            buf.put_u8(u8::from(*deleted));
            buf.put_u64_le(*revision);
        }
        CommandResult::PreconditionFailed { key, current } => {
            buf.put_u8(R_PRECONDITION);
            put_bytes(buf, key.as_bytes());
            put_item(current, buf);
        }
        CommandResult::Txn { succeeded, revision, results } => {
            buf.put_u8(R_TXN);
            buf.put_u8(u8::from(*succeeded));
            buf.put_u64_le(*revision);
            buf.put_u32_le(results.len() as u32);
            for op in results {
                match op {
                    OpResult::Put { key, revision } => {
                        buf.put_u8(O_PUT);
                        put_bytes(buf, key.as_bytes());
                        buf.put_u64_le(*revision);
                    }
                    OpResult::Delete { key, deleted } => {
                        buf.put_u8(O_DELETE);
                        put_bytes(buf, key.as_bytes());
                        buf.put_u8(u8::from(*deleted));
                    }
                    OpResult::Get { key, item } => {
                        buf.put_u8(O_GET);
                        put_bytes(buf, key.as_bytes());
                        put_item(item, buf);
                    }
                }
            }
        }
        // A leased put whose lease was gone (not applied, but answered).
        CommandResult::LeaseNotFound { id } => {
            buf.put_u8(R_LEASE_NOT_FOUND);
            buf.put_u64_le(*id);
        }
        // Not the response to a write in a session: never kept in one.
        CommandResult::SessionOpened { .. }
        | CommandResult::SessionExpired { .. }
        | CommandResult::SeqSuperseded { .. }
        | CommandResult::LeaseGranted { .. }
        | CommandResult::LeaseKept { .. }
        | CommandResult::LeaseRevoked { .. }
        | CommandResult::LeasesExpired { .. } => {
            unreachable!("only write responses are kept in sessions: {res:?}")
        }
    }
}

pub fn decode_result(r: &mut Reader) -> Result<CommandResult, DecodeError> {
    Ok(match r.u8("response kind")? {
        R_PUT => CommandResult::Put { key: r.string("key")?, revision: r.u64("revision")? },
        R_DELETED => {
            CommandResult::Deleted { key: r.string("key")?, deleted: r.bool("deleted")?, revision: r.u64("revision")? }
        }
        R_PRECONDITION => CommandResult::PreconditionFailed { key: r.string("key")?, current: read_item(r)? },
        R_TXN => {
            let succeeded = r.bool("succeeded")?;
            let revision = r.u64("revision")?;
            let n = r.u32("result count")? as usize;
            if n > r.remaining() / 5 {
                return Err(DecodeError(format!("result count {n} is more than the bytes left can hold")));
            }
            let mut results = Vec::with_capacity(n.min(256));
            for _ in 0..n {
                let kind = r.u8("result kind")?;
                let key = r.string("key")?;
                results.push(match kind {
                    O_PUT => OpResult::Put { key, revision: r.u64("revision")? },
                    O_DELETE => OpResult::Delete { key, deleted: r.bool("deleted")? },
                    O_GET => OpResult::Get { key, item: read_item(r)? },
                    k => return Err(DecodeError(format!("unknown result kind {k}"))),
                });
            }
            CommandResult::Txn { succeeded, revision, results }
        }
        R_LEASE_NOT_FOUND => CommandResult::LeaseNotFound { id: r.u64("lease")? },
        k => return Err(DecodeError(format!("unknown response kind {k}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: u64) -> CommandResult {
        CommandResult::Put { key: "k".into(), revision: rev }
    }

    #[test]
    fn a_retry_of_the_last_write_gets_its_response_and_older_ones_an_error() {
        let mut t = Sessions::default();
        t.advance(1_000);
        t.open(7, 500, 10);
        assert_eq!(t.check(7, 1), Check::Fresh);
        t.record(7, 1, &put(8));
        assert_eq!(t.check(7, 1), Check::Duplicate(put(8)));
        assert_eq!(t.check(7, 3), Check::Fresh);
        t.record(7, 3, &put(9));
        assert_eq!(t.check(7, 1), Check::Superseded { last_seq: 3 });
        assert_eq!(t.check(8, 1), Check::Unknown);
    }

    #[test]
    fn sessions_expire_by_the_log_clock_and_use_keeps_them() {
        let mut t = Sessions::default();
        t.advance(1_000);
        t.open(1, 500, 10);
        t.open(2, 500, 10);
        t.advance(1_400);
        assert_eq!(t.check(1, 1), Check::Fresh); // used at 1400: expires at 1900
        t.advance(1_200); // the clock never goes back
        assert_eq!(t.clock_ms(), 1_400);
        t.advance(1_500);
        assert!(t.get(2).is_none(), "2 expired at 1500");
        assert!(t.get(1).is_some());
        t.advance(1_900);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_session_idle_longest() {
        let mut t = Sessions::default();
        for (i, now) in [(1, 100), (2, 200), (3, 300)] {
            t.advance(now);
            t.open(i, 1_000, 3);
        }
        t.advance(400);
        assert_eq!(t.check(1, 1), Check::Fresh); // 1 is in use again
        t.open(4, 1_000, 3);
        assert!(t.get(2).is_none(), "2 was idle longest");
        assert!(t.get(1).is_some() && t.get(3).is_some() && t.get(4).is_some());
    }

    #[test]
    fn the_table_survives_a_snapshot_and_damage_is_refused() {
        let mut t = Sessions::default();
        t.advance(5_000);
        t.open(3, 60_000, 10);
        t.open(9, 60_000, 10);
        t.check(3, 2);
        let item = Item { key: "a".into(), value: "1".into(), revision: 4 };
        let txn = CommandResult::Txn {
            succeeded: false,
            revision: 11,
            results: vec![
                OpResult::Get { key: "a".into(), item: Some(item.clone()) },
                OpResult::Get { key: "b".into(), item: None },
                OpResult::Put { key: "c".into(), revision: 11 },
                OpResult::Delete { key: "d".into(), deleted: true },
            ],
        };
        t.record(3, 2, &txn);
        let mut buf = BytesMut::new();
        t.write_to(&mut buf);
        let bytes = buf.freeze();
        let back = Sessions::read_from(&mut Reader::new(bytes.clone())).unwrap();
        assert_eq!(back.clock_ms(), 5_000);
        assert_eq!(back.get(3), t.get(3));
        assert_eq!(back.get(9), t.get(9));
        for res in [
            put(3),
            CommandResult::Deleted { key: "x".into(), deleted: false, revision: 5 },
            CommandResult::PreconditionFailed { key: "a".into(), current: Some(item) },
            CommandResult::PreconditionFailed { key: "a".into(), current: None },
            txn,
        ] {
            let mut b = BytesMut::new();
            encode_result(&res, &mut b);
            assert_eq!(decode_result(&mut Reader::new(b.freeze())).unwrap(), res);
        }
        for cut in 0..bytes.len() {
            assert!(Sessions::read_from(&mut Reader::new(bytes.slice(..cut))).is_err(), "cut at {cut}");
        }
    }
}
