//! The key-value state machine: commands, their binary encoding in log
//! entries, and the map they are applied to. Pure and deterministic: the
//! same committed log always produces the same map and the same results.
//!
//! Every key carries a *revision*: the log index of the write that last
//! changed it. Compare-and-set conditions are evaluated here, at apply
//! time, so they are linearizable with every other write.

use std::io::{self, Write};

use bytes::{BufMut, Bytes, BytesMut};
use imbl::OrdMap;
use serde::Serialize;

use crate::codec::{DecodeError, Reader, put_bytes};
use crate::raft::Index;
use crate::state_machine::{Frozen, StateMachine};

pub mod lease;
pub mod session;
pub mod watch;

use lease::Leases;
use session::{Check, Sessions};
use watch::{Event, EventKind, History};

/// A condition on the current state of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    None,
    /// The key exists and holds exactly this value.
    IfValue(String),
    /// The key's revision is this; 0 means "the key must not exist".
    IfRevision(u64),
}

/// A write, as stored in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: String,
        value: String,
        condition: Condition,
    },
    Delete {
        key: String,
        if_revision: Option<u64>,
    },
    /// Several keys at once, atomically, in one log entry.
    Txn(Txn),
    /// Opens a client session; its id is the index of this entry.
    /// `now_ms` is the proposing leader's clock.
    OpenSession {
        now_ms: u64,
        ttl_ms: u64,
        max_sessions: u64,
    },
    /// A write (Put, Delete or Txn) tagged with its session's sequence
    /// number: applied once, however often it is retried.
    InSession {
        session: u64,
        seq: u64,
        now_ms: u64,
        inner: Box<Command>,
    },
    /// Grants a lease of `ttl_ms` by the proposing leader's clock; its id
    /// is the index of this entry.
    LeaseGrant {
        now_ms: u64,
        ttl_ms: u64,
    },
    /// Renews a lease for its whole TTL from `now_ms`.
    LeaseKeepAlive {
        id: u64,
        now_ms: u64,
    },
    /// Ends a lease and deletes its keys.
    LeaseRevoke {
        id: u64,
    },
    /// Proposed by a leader for leases its clock says are over: each is
    /// revoked if, by the log's clock once `now_ms` is applied, it is.
    LeaseExpire {
        now_ms: u64,
        ids: Vec<u64>,
    },
    /// A put whose key lives only as long as the lease (not applied if
    /// the lease is gone).
    Leased {
        lease: u64,
        inner: Box<Command>,
    },
}

/// A transaction: if every comparison holds, the `success` operations run,
/// otherwise the `failure` ones — in order, each seeing the ones before
/// it, all at one revision (the entry's index).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One comparison of a transaction, against the state before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists and holds exactly this value.
    Value { key: String, value: String },
    /// The key's revision is this (0: the key does not exist).
    Revision { key: String, revision: u64 },
    /// The key exists (or not).
    Exists { key: String, exists: bool },
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: String },
    Delete { key: String },
    Get { key: String },
}

impl Txn {
    /// Whether running it may change the store (a read-only one needs only
    /// the read role).
    pub fn writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| !matches!(op, TxnOp::Get { .. }))
    }
}

/// What one operation of a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Put { key: String, revision: u64 },
    Delete { key: String, deleted: bool },
    Get { key: String, item: Option<Item> },
}

/// A key's current value and the revision that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub key: String,
    pub value: String,
    pub revision: u64,
}

/// The outcome of applying a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResult {
    Put {
        key: String,
        revision: u64,
    },
    Deleted {
        key: String,
        deleted: bool,
        revision: u64,
    },
    /// The condition did not hold; nothing changed. `current` is the key's
    /// state when the command was applied.
    PreconditionFailed {
        key: String,
        current: Option<Item>,
    },
    /// A transaction: whether its comparisons held, the revision it ran at
    /// (the entry's index), and one result per operation that ran.
    Txn {
        succeeded: bool,
        revision: u64,
        results: Vec<OpResult>,
    },
    SessionOpened {
        session: u64,
        ttl_ms: u64,
    },
    /// The session is not in the table (expired, evicted, or never
    /// opened): the write was not applied.
    SessionExpired {
        session: u64,
    },
    /// A sequence number below the session's last: its response is gone,
    /// and the write was not applied (again).
    SeqSuperseded {
        session: u64,
        seq: u64,
        last_seq: u64,
    },
    LeaseGranted {
        id: u64,
        ttl_ms: u64,
    },
    LeaseKept {
        id: u64,
        ttl_ms: u64,
    },
    /// The lease ended; `deleted` keys went with it, at `revision`.
    LeaseRevoked {
        id: u64,
        deleted: u64,
        revision: u64,
    },
    /// No such lease (never granted, revoked, or expired): nothing done.
    LeaseNotFound {
        id: u64,
    },
    LeasesExpired {
        revoked: Vec<u64>,
    },
}

/// A read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Get { key: String },
    List { prefix: String, limit: Option<usize> },
    Lease { id: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryResult {
    Found(Item),
    NotFound {
        key: String,
    },
    /// Matching items in key order, and the index the store has applied.
    Items {
        items: Vec<Item>,
        revision: u64,
    },
    /// A lease: its TTL, deadline and the table's clock (both in leader
    /// clock milliseconds), and its keys.
    Lease {
        id: u64,
        ttl_ms: u64,
        expires_at: u64,
        clock_ms: u64,
        keys: Vec<String>,
    },
    LeaseNotFound {
        id: u64,
    },
}

// --- encoding ----------------------------------------------------------------

const CMD_PUT: u8 = 1;
const CMD_DELETE: u8 = 2;
const CMD_TXN: u8 = 3;
const CMD_OPEN_SESSION: u8 = 4;
const CMD_IN_SESSION: u8 = 5;
const CMD_LEASE_GRANT: u8 = 6;
const CMD_LEASE_KEEPALIVE: u8 = 7;
const CMD_LEASE_REVOKE: u8 = 8;
const CMD_LEASE_EXPIRE: u8 = 9;
const CMD_LEASED: u8 = 10;
const CMP_VALUE: u8 = 1;
const CMP_REVISION: u8 = 2;
const CMP_EXISTS: u8 = 3;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_GET: u8 = 3;
const COND_NONE: u8 = 0;
const COND_VALUE: u8 = 1;
const COND_REVISION: u8 = 2;

impl Command {
    /// Roughly how many bytes the encoding takes (for the buffer).
    fn size_hint(&self) -> usize {
        let op = |op: &TxnOp| match op {
            TxnOp::Put { key, value } => 9 + key.len() + value.len(),
            TxnOp::Delete { key } | TxnOp::Get { key } => 5 + key.len(),
        };
        32 + match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
            Command::Txn(t) => {
                t.compare.iter().map(|c| 16 + c.key().len() + c.value_len()).sum::<usize>()
                    + t.success.iter().chain(&t.failure).map(op).sum::<usize>()
            }
            Command::OpenSession { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRevoke { .. } => 0,
            Command::LeaseExpire { ids, .. } => 8 * ids.len(),
            Command::InSession { inner, .. } => 24 + inner.size_hint(),
            Command::Leased { inner, .. } => 8 + inner.size_hint(),
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.size_hint());
        self.encode_into(&mut out);
        out.freeze()
    }

    fn encode_into(&self, out: &mut BytesMut) {
        match self {
            Command::Put { key, value, condition } => {
                out.put_u8(CMD_PUT);
                put_bytes(out, key.as_bytes());
                put_bytes(out, value.as_bytes());
                match condition {
                    Condition::None => out.put_u8(COND_NONE),
                    Condition::IfValue(v) => {
                        out.put_u8(COND_VALUE);
                        put_bytes(out, v.as_bytes());
                    }
                    Condition::IfRevision(r) => {
                        out.put_u8(COND_REVISION);
                        out.put_u64_le(*r);
                    }
                }
            }
            Command::Delete { key, if_revision } => {
                out.put_u8(CMD_DELETE);
                put_bytes(out, key.as_bytes());
                match if_revision {
                    None => out.put_u8(COND_NONE),
                    Some(r) => {
                        out.put_u8(COND_REVISION);
                        out.put_u64_le(*r);
                    }
                }
            }
            Command::OpenSession { now_ms, ttl_ms, max_sessions } => {
                out.put_u8(CMD_OPEN_SESSION);
                out.put_u64_le(*now_ms);
                out.put_u64_le(*ttl_ms);
                out.put_u64_le(*max_sessions);
            }
            Command::InSession { session, seq, now_ms, inner } => {
                out.put_u8(CMD_IN_SESSION);
                out.put_u64_le(*session);
                out.put_u64_le(*seq);
                out.put_u64_le(*now_ms);
                inner.encode_into(out);
            }
            Command::LeaseGrant { now_ms, ttl_ms } => {
                out.put_u8(CMD_LEASE_GRANT);
                out.put_u64_le(*now_ms);
                out.put_u64_le(*ttl_ms);
            }
            Command::LeaseKeepAlive { id, now_ms } => {
                out.put_u8(CMD_LEASE_KEEPALIVE);
                out.put_u64_le(*id);
                out.put_u64_le(*now_ms);
            }
            Command::LeaseRevoke { id } => {
                out.put_u8(CMD_LEASE_REVOKE);
                out.put_u64_le(*id);
            }
            Command::LeaseExpire { now_ms, ids } => {
                out.put_u8(CMD_LEASE_EXPIRE);
                out.put_u64_le(*now_ms);
                out.put_u32_le(ids.len() as u32);
                for id in ids {
                    out.put_u64_le(*id);
                }
            }
            Command::Leased { lease, inner } => {
                out.put_u8(CMD_LEASED);
                out.put_u64_le(*lease);
                inner.encode_into(out);
            }
            Command::Txn(t) => {
                out.put_u8(CMD_TXN);
                out.put_u32_le(t.compare.len() as u32);
                for c in &t.compare {
                    match c {
                        Compare::Value { key, value } => {
                            out.put_u8(CMP_VALUE);
                            put_bytes(out, key.as_bytes());
                            put_bytes(out, value.as_bytes());
                        }
                        Compare::Revision { key, revision } => {
                            out.put_u8(CMP_REVISION);
                            put_bytes(out, key.as_bytes());
                            out.put_u64_le(*revision);
                        }
                        Compare::Exists { key, exists } => {
                            out.put_u8(CMP_EXISTS);
                            put_bytes(out, key.as_bytes());
                            out.put_u8(u8::from(*exists));
                        }
                    }
                }
                for ops in [&t.success, &t.failure] {
                    out.put_u32_le(ops.len() as u32);
                    for op in ops {
                        match op {
                            TxnOp::Put { key, value } => {
                                out.put_u8(OP_PUT);
                                put_bytes(out, key.as_bytes());
                                put_bytes(out, value.as_bytes());
                            }
                            TxnOp::Delete { key } => {
                                out.put_u8(OP_DELETE);
                                put_bytes(out, key.as_bytes());
                            }
                            TxnOp::Get { key } => {
                                out.put_u8(OP_GET);
                                put_bytes(out, key.as_bytes());
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn decode(buf: Bytes) -> Result<Command, DecodeError> {
        let mut r = Reader::new(buf);
        let cmd = Self::decode_from(&mut r, true)?;
        r.finish("command")?;
        Ok(cmd)
    }

    /// One command; a session command only at the top (`outer`), and only
    /// around a write.
    fn decode_from(r: &mut Reader, outer: bool) -> Result<Command, DecodeError> {
        let cmd = match r.u8("command kind")? {
            CMD_PUT => {
                let key = r.string("key")?;
                let value = r.string("value")?;
                let condition = match r.u8("condition")? {
                    COND_NONE => Condition::None,
                    COND_VALUE => Condition::IfValue(r.string("if_value")?),
                    COND_REVISION => Condition::IfRevision(r.u64("if_revision")?),
                    c => return Err(DecodeError(format!("unknown condition {c}"))),
                };
                Command::Put { key, value, condition }
            }
            CMD_DELETE => {
                let key = r.string("key")?;
                let if_revision = match r.u8("condition")? {
                    COND_NONE => None,
                    COND_REVISION => Some(r.u64("if_revision")?),
                    c => return Err(DecodeError(format!("unknown delete condition {c}"))),
                };
                Command::Delete { key, if_revision }
            }
            CMD_TXN => Command::Txn(decode_txn(r)?),
            CMD_OPEN_SESSION if outer => Command::OpenSession {
                now_ms: r.u64("now_ms")?,
                ttl_ms: r.u64("ttl_ms")?,
                max_sessions: r.u64("max_sessions")?,
            },
            CMD_IN_SESSION if outer => Command::InSession {
                session: r.u64("session")?,
                seq: r.u64("seq")?,
                now_ms: r.u64("now_ms")?,
                inner: Box::new(Self::decode_from(r, false)?),
            },
            CMD_LEASE_GRANT if outer => Command::LeaseGrant { now_ms: r.u64("now_ms")?, ttl_ms: r.u64("ttl_ms")? },
            CMD_LEASE_KEEPALIVE if outer => Command::LeaseKeepAlive { id: r.u64("lease")?, now_ms: r.u64("now_ms")? },
            CMD_LEASE_REVOKE if outer => Command::LeaseRevoke { id: r.u64("lease")? },
            CMD_LEASE_EXPIRE if outer => {
                let now_ms = r.u64("now_ms")?;
                let n = r.u32("lease count")? as usize;
                if n > r.remaining() / 8 {
                    return Err(DecodeError(format!("lease count {n} is more than the bytes left can hold")));
                }
                let ids = (0..n).map(|_| r.u64("lease")).collect::<Result<_, _>>()?;
                Command::LeaseExpire { now_ms, ids }
            }
            // Around a put only (in a session or not).
            CMD_LEASED => {
                let lease = r.u64("lease")?;
                let inner = Self::decode_from(r, false)?;
                if !matches!(inner, Command::Put { .. }) {
                    return Err(DecodeError("a leased command must be a put".into()));
                }
                Command::Leased { lease, inner: Box::new(inner) }
            }
            k @ (CMD_OPEN_SESSION | CMD_IN_SESSION | CMD_LEASE_GRANT | CMD_LEASE_KEEPALIVE | CMD_LEASE_REVOKE
            | CMD_LEASE_EXPIRE) => {
                return Err(DecodeError(format!("command kind {k} inside another command")));
            }
            k => return Err(DecodeError(format!("unknown command kind {k}"))),
        };
        Ok(cmd)
    }
}

/// The smallest encoding of one comparison or operation: a kind byte and
/// an empty key. Counts are checked against it, and what is reserved ahead
/// is capped, so a forged count cannot make a large allocation.
const MIN_ITEM_BYTES: usize = 5;

fn count(r: &mut Reader, what: &str) -> Result<usize, DecodeError> {
    let n = r.u32(what)? as usize;
    if n > r.remaining() / MIN_ITEM_BYTES {
        return Err(DecodeError(format!("{what} {n} is more than the {} bytes left can hold", r.remaining())));
    }
    Ok(n)
}

fn decode_txn(r: &mut Reader) -> Result<Txn, DecodeError> {
    let n = count(r, "comparison count")?;
    let mut compare = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let kind = r.u8("comparison kind")?;
        let key = r.string("key")?;
        compare.push(match kind {
            CMP_VALUE => Compare::Value { key, value: r.string("value")? },
            CMP_REVISION => Compare::Revision { key, revision: r.u64("revision")? },
            CMP_EXISTS => match r.u8("exists")? {
                0 => Compare::Exists { key, exists: false },
                1 => Compare::Exists { key, exists: true },
                b => return Err(DecodeError(format!("exists must be 0 or 1, not {b}"))),
            },
            k => return Err(DecodeError(format!("unknown comparison kind {k}"))),
        });
    }
    let mut branches = [Vec::new(), Vec::new()];
    for ops in &mut branches {
        let n = count(r, "operation count")?;
        ops.reserve(n.min(256));
        for _ in 0..n {
            let kind = r.u8("operation kind")?;
            let key = r.string("key")?;
            ops.push(match kind {
                OP_PUT => TxnOp::Put { key, value: r.string("value")? },
                OP_DELETE => TxnOp::Delete { key },
                OP_GET => TxnOp::Get { key },
                k => return Err(DecodeError(format!("unknown operation kind {k}"))),
            });
        }
    }
    let [success, failure] = branches;
    Ok(Txn { compare, success, failure })
}

impl Compare {
    pub fn key(&self) -> &str {
        match self {
            Compare::Value { key, .. } | Compare::Revision { key, .. } | Compare::Exists { key, .. } => key,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            Compare::Value { value, .. } => value.len(),
            _ => 0,
        }
    }
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }
}

// --- the store ------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Versioned {
    value: String,
    revision: u64,
}

/// The replicated map. A persistent (structurally shared) ordered map, so
/// that freezing it for a snapshot is O(1) and writes go on while the
/// frozen copy is written out (measured against `BTreeMap` in BENCHMARKS.md).
#[derive(Default, Debug, Clone)]
pub struct KvStore {
    map: OrdMap<String, Versioned>,
    /// Client sessions: the last sequence number and response of each.
    sessions: Sessions,
    /// Recent changes, for watchers.
    history: History,
    /// Leases and the keys attached to them.
    leases: Leases,
    /// Index of the last log entry applied. Invariant: entries are applied
    /// in index order, each once.
    applied: Index,
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Marks `index` applied without a command (a no-op entry).
    pub fn skip(&mut self, index: Index) {
        assert!(index > self.applied, "entry {index} applied twice (applied {})", self.applied);
        self.applied = index;
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// Applies the command of log entry `index`.
    pub fn apply(&mut self, index: Index, cmd: Command) -> CommandResult {
        self.skip(index);
        let result = self.execute(index, cmd);
        self.history.trim(index);
        result
    }

    /// Sets `key` to `value` at revision `index`, recording the event.
    fn set(&mut self, index: Index, key: String, value: String) {
        let old = self.map.insert(key.clone(), Versioned { value: value.clone(), revision: index });
        let prev_revision = old.map_or(0, |v| v.revision);
        self.leases.detach(&key);
        self.history.push(Event::new(EventKind::Put, key, Some(value), index, prev_revision));
    }

    /// Removes `key` at revision `index`; whether it existed.
    fn remove(&mut self, index: Index, key: &str) -> bool {
        let Some(old) = self.map.remove(key) else { return false };
        self.leases.detach(key);
        let event = Event::new(EventKind::Delete, key.to_string(), None, index, old.revision);
        self.history.push(event);
        true
    }

    fn execute(&mut self, index: Index, cmd: Command) -> CommandResult {
        match cmd {
            Command::Put { key, value, condition } => {
                let holds = match (&condition, self.map.get(&key)) {
                    (Condition::None, _) => true,
                    (Condition::IfValue(want), Some(cur)) => cur.value == *want,
                    (Condition::IfValue(_), None) => false,
                    (Condition::IfRevision(0), cur) => cur.is_none(),
                    (Condition::IfRevision(r), Some(cur)) => cur.revision == *r,
                    (Condition::IfRevision(_), None) => false,
                };
                if !holds {
                    let current = self.item(&key);
                    return CommandResult::PreconditionFailed { key, current };
                }
                self.set(index, key.clone(), value);
                CommandResult::Put { key, revision: index }
            }
            Command::Delete { key, if_revision } => {
                if let Some(want) = if_revision {
                    let cur = self.map.get(&key).map_or(0, |v| v.revision);
                    if cur != want {
                        let current = self.item(&key);
                        return CommandResult::PreconditionFailed { key, current };
                    }
                }
                let deleted = self.remove(index, &key);
                CommandResult::Deleted { key, deleted, revision: index }
            }
            Command::Txn(t) => self.apply_txn(index, t),
            Command::OpenSession { now_ms, ttl_ms, max_sessions } => {
                self.sessions.advance(now_ms);
                self.sessions.open(index, ttl_ms, usize::try_from(max_sessions).unwrap_or(usize::MAX));
                CommandResult::SessionOpened { session: index, ttl_ms }
            }
            Command::InSession { session, seq, now_ms, inner } => {
                self.sessions.advance(now_ms);
                match self.sessions.check(session, seq) {
                    Check::Fresh => {
                        let result = self.execute(index, *inner);
                        self.sessions.record(session, seq, &result);
                        result
                    }
                    Check::Duplicate(result) => result,
                    Check::Superseded { last_seq } => CommandResult::SeqSuperseded { session, seq, last_seq },
                    Check::Unknown => CommandResult::SessionExpired { session },
                }
            }
            Command::LeaseGrant { now_ms, ttl_ms } => {
                self.leases.advance(now_ms);
                self.leases.grant(index, ttl_ms);
                CommandResult::LeaseGranted { id: index, ttl_ms }
            }
            Command::LeaseKeepAlive { id, now_ms } => {
                self.leases.advance(now_ms);
                // One past its deadline is over, even before the expiry
                // entry comes: it cannot be renewed.
                if self.leases.expired(id) || !self.leases.keep_alive(id) {
                    return CommandResult::LeaseNotFound { id };
                }
                let ttl_ms = self.leases.get(id).map_or(0, |l| l.ttl_ms);
                CommandResult::LeaseKept { id, ttl_ms }
            }
            Command::LeaseRevoke { id } => self.revoke(index, id),
            Command::LeaseExpire { now_ms, ids } => {
                self.leases.advance(now_ms);
                let revoked = ids.into_iter().filter(|&id| self.leases.expired(id)).collect::<Vec<_>>();
                for &id in &revoked {
                    self.revoke(index, id);
                }
                CommandResult::LeasesExpired { revoked }
            }
            Command::Leased { lease, inner } => {
                if self.leases.get(lease).is_none() || self.leases.expired(lease) {
                    return CommandResult::LeaseNotFound { id: lease };
                }
                let result = self.execute(index, *inner);
                if let CommandResult::Put { key, .. } = &result {
                    self.leases.attach(key, lease);
                }
                result
            }
        }
    }

    /// Ends lease `id`, deleting its keys at revision `index`.
    fn revoke(&mut self, index: Index, id: u64) -> CommandResult {
        let Some(keys) = self.leases.remove(id) else { return CommandResult::LeaseNotFound { id } };
        let deleted = keys.iter().filter(|k| self.remove(index, k)).count() as u64;
        CommandResult::LeaseRevoked { id, deleted, revision: index }
    }

    fn apply_txn(&mut self, index: Index, t: Txn) -> CommandResult {
        let succeeded = t.compare.iter().all(|c| match c {
            Compare::Value { key, value } => self.map.get(key).is_some_and(|v| v.value == *value),
            Compare::Revision { key, revision } => self.map.get(key).map_or(0, |v| v.revision) == *revision,
            Compare::Exists { key, exists } => self.map.contains_key(key) == *exists,
        });
        let ops = if succeeded { t.success } else { t.failure };
        let results = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => {
                    self.set(index, key.clone(), value);
                    OpResult::Put { key, revision: index }
                }
                TxnOp::Delete { key } => {
                    let deleted = self.remove(index, &key);
                    OpResult::Delete { key, deleted }
                }
                TxnOp::Get { key } => {
                    let item = self.item(&key);
                    OpResult::Get { key, item }
                }
            })
            .collect();
        CommandResult::Txn { succeeded, revision: index, results }
    }

    fn item(&self, key: &str) -> Option<Item> {
        self.map.get(key).map(|v| Item { key: key.to_string(), value: v.value.clone(), revision: v.revision })
    }

    pub fn query(&self, q: &Query) -> QueryResult {
        match q {
            Query::Get { key } => match self.item(key) {
                Some(item) => QueryResult::Found(item),
                None => QueryResult::NotFound { key: key.clone() },
            },
            Query::List { prefix, limit } => {
                let items = self
                    .map
                    .range::<_, String>(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .take(limit.unwrap_or(usize::MAX))
                    .map(|(k, v)| Item { key: k.clone(), value: v.value.clone(), revision: v.revision })
                    .collect();
                QueryResult::Items { items, revision: self.applied }
            }
            Query::Lease { id } => match self.leases.get(*id) {
                Some(l) if l.expires_at > self.leases.clock_ms() => QueryResult::Lease {
                    id: *id,
                    ttl_ms: l.ttl_ms,
                    expires_at: l.expires_at,
                    clock_ms: self.leases.clock_ms(),
                    keys: l.keys.iter().cloned().collect(),
                },
                _ => QueryResult::LeaseNotFound { id: *id },
            },
        }
    }
}

// --- snapshots -------------------------------------------------------------------

/// Snapshot body: `applied` (u64), key count (u64), then per key in key
/// order: key, value (u32 length + bytes each) and revision (u64), all LE;
/// then the session table ([`Sessions::write_to`]; absent in snapshots of
/// releases before sessions, which restore with none); then the watch
/// history ([`History::write_to`]; absent before watches: it then starts
/// at the snapshot's index); then the leases ([`Leases::write_to`]; absent
/// before leases).
const SNAPSHOT_CHUNK: usize = 64 << 10;

/// A frozen copy of the store: shares structure with the live map, which
/// goes on changing while this is written out.
pub struct FrozenKv(KvStore);

impl Frozen for FrozenKv {
    fn index(&self) -> Index {
        self.0.applied
    }

    fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(SNAPSHOT_CHUNK + 1024);
        buf.put_u64_le(self.0.applied);
        buf.put_u64_le(self.0.map.len() as u64);
        for (k, v) in &self.0.map {
            put_bytes(&mut buf, k.as_bytes());
            put_bytes(&mut buf, v.value.as_bytes());
            buf.put_u64_le(v.revision);
            if buf.len() >= SNAPSHOT_CHUNK {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        self.0.sessions.write_to(&mut buf);
        self.0.history.write_to(&mut buf, SNAPSHOT_CHUNK, out)?;
        self.0.leases.write_to(&mut buf);
        out.write_all(&buf)
    }
}

impl StateMachine for KvStore {
    type Output = CommandResult;
    type Frozen = FrozenKv;

    fn applied(&self) -> Index {
        self.applied
    }

    fn apply(&mut self, index: Index, command: Bytes) -> Result<CommandResult, String> {
        match Command::decode(command) {
            Ok(cmd) => Ok(KvStore::apply(self, index, cmd)),
            Err(e) => {
                self.skip(index);
                Err(e.0)
            }
        }
    }

    fn skip(&mut self, index: Index) {
        KvStore::skip(self, index)
    }

    fn freeze(&self) -> FrozenKv {
        FrozenKv(self.clone())
    }

    fn restore(index: Index, data: Bytes) -> Result<KvStore, String> {
        let mut r = Reader::new(data);
        let err = |e: DecodeError| e.0;
        let applied = r.u64("applied index").map_err(err)?;
        if applied != index {
            return Err(format!("the state inside is at index {applied}, the snapshot says {index}"));
        }
        let count = r.u64("key count").map_err(err)?;
        let mut map = OrdMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let key = r.string("key").map_err(err)?;
            let value = r.string("value").map_err(err)?;
            let revision = r.u64("revision").map_err(err)?;
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(format!("key {key:?} is out of order"));
            }
            if revision > applied || revision == 0 {
                return Err(format!("key {key:?} has revision {revision}, outside 1..={applied}"));
            }
            last = Some(key.clone());
            map.insert(key, Versioned { value, revision });
        }
        let sessions = if r.is_empty() { Sessions::default() } else { Sessions::read_from(&mut r).map_err(err)? };
        if let Some(id) = sessions.max_id().filter(|&id| id > applied) {
            return Err(format!("session {id} is newer than the snapshot's index {applied}"));
        }
        let history = if r.is_empty() {
            History::starting_after(applied)
        } else {
            History::read_from(&mut r, applied).map_err(err)?
        };
        let leases = if r.is_empty() { Leases::default() } else { Leases::read_from(&mut r).map_err(err)? };
        if let Some(id) = leases.max_id().filter(|&id| id > applied) {
            return Err(format!("lease {id} is newer than the snapshot's index {applied}"));
        }
        r.finish("snapshot").map_err(err)?;
        Ok(KvStore { map, sessions, history, leases, applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, condition: Condition) -> Command {
        Command::Put { key: key.into(), value: value.into(), condition }
    }

    #[test]
    fn commands_roundtrip_and_reject_garbage() {
        let cmds = [
            put("a/b", "v", Condition::None),
            put("k", "ü", Condition::IfValue("old".into())),
            put("k", "", Condition::IfRevision(0)),
            Command::Delete { key: "x".into(), if_revision: Some(9) },
            Command::Delete { key: "x".into(), if_revision: None },
            txn(vec![Compare::Exists { key: "k".into(), exists: false }], vec![tput("k", "v")], vec![tget("k")]),
        ];
        for c in cmds {
            let enc = c.encode();
            assert_eq!(Command::decode(enc.clone()).unwrap(), c);
            assert!(Command::decode(enc.slice(..enc.len() - 1)).is_err());
        }
        assert!(Command::decode(Bytes::from_static(&[7])).is_err());
    }

    #[test]
    fn revision_is_the_log_index_of_the_last_write() {
        let mut s = KvStore::new();
        assert_eq!(s.apply(3, put("k", "a", Condition::None)), CommandResult::Put { key: "k".into(), revision: 3 });
        s.skip(4);
        s.apply(5, put("k", "b", Condition::None));
        assert_eq!(
            s.query(&Query::Get { key: "k".into() }),
            QueryResult::Found(Item { key: "k".into(), value: "b".into(), revision: 5 })
        );
    }

    #[test]
    fn compare_and_set_by_value_and_by_revision() {
        let mut s = KvStore::new();
        s.apply(1, put("k", "a", Condition::None));
        let failed = s.apply(2, put("k", "x", Condition::IfValue("zzz".into())));
        assert_eq!(
            failed,
            CommandResult::PreconditionFailed {
                key: "k".into(),
                current: Some(Item { key: "k".into(), value: "a".into(), revision: 1 })
            }
        );
        assert!(matches!(s.apply(3, put("k", "b", Condition::IfValue("a".into()))), CommandResult::Put { .. }));
        assert!(matches!(
            s.apply(4, put("k", "c", Condition::IfRevision(1))),
            CommandResult::PreconditionFailed { .. }
        ));
        assert!(matches!(s.apply(5, put("k", "c", Condition::IfRevision(3))), CommandResult::Put { .. }));
        // if_revision 0: create only.
        assert!(matches!(
            s.apply(6, put("k", "d", Condition::IfRevision(0))),
            CommandResult::PreconditionFailed { .. }
        ));
        assert!(matches!(s.apply(7, put("new", "d", Condition::IfRevision(0))), CommandResult::Put { .. }));
        // if_value on a missing key fails with current = null.
        assert_eq!(
            s.apply(8, put("missing", "v", Condition::IfValue("x".into()))),
            CommandResult::PreconditionFailed { key: "missing".into(), current: None }
        );
    }

    #[test]
    fn delete_reports_whether_it_removed_something() {
        let mut s = KvStore::new();
        s.apply(1, put("k", "a", Condition::None));
        assert!(matches!(
            s.apply(2, Command::Delete { key: "k".into(), if_revision: Some(7) }),
            CommandResult::PreconditionFailed { .. }
        ));
        assert_eq!(
            s.apply(3, Command::Delete { key: "k".into(), if_revision: Some(1) }),
            CommandResult::Deleted { key: "k".into(), deleted: true, revision: 3 }
        );
        assert_eq!(
            s.apply(4, Command::Delete { key: "k".into(), if_revision: None }),
            CommandResult::Deleted { key: "k".into(), deleted: false, revision: 4 }
        );
    }

    #[test]
    fn list_by_prefix_is_sorted_and_limited() {
        let mut s = KvStore::new();
        for (i, k) in ["b/2", "a", "b/1", "b/3", "c"].iter().enumerate() {
            s.apply(i as u64 + 1, put(k, "v", Condition::None));
        }
        let QueryResult::Items { items, revision } = s.query(&Query::List { prefix: "b/".into(), limit: Some(2) })
        else {
            panic!()
        };
        assert_eq!(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["b/1", "b/2"]);
        assert_eq!(revision, 5);
        let QueryResult::Items { items, .. } = s.query(&Query::List { prefix: String::new(), limit: None }) else {
            panic!()
        };
        assert_eq!(items.len(), 5);
    }

    #[test]
    fn a_snapshot_restores_the_same_store_and_rejects_damage() {
        let mut s = KvStore::new();
        for i in 1..=300u64 {
            s.apply(i, put(&format!("k{}", i % 97), &format!("v{i}"), Condition::None));
        }
        s.apply(301, Command::Delete { key: "k5".into(), if_revision: None });
        let frozen = StateMachine::freeze(&s);
        // Writes after freezing do not reach the frozen copy.
        s.apply(302, put("later", "x", Condition::None));
        let mut body = Vec::new();
        frozen.write_to(&mut body).unwrap();
        let back = <KvStore as StateMachine>::restore(301, Bytes::from(body.clone())).unwrap();
        assert_eq!(back.applied(), 301);
        assert_eq!(back.len(), 96);
        let all = Query::List { prefix: String::new(), limit: None };
        let QueryResult::Items { items: want, .. } = frozen.0.query(&all) else { panic!() };
        let QueryResult::Items { items: got, .. } = back.query(&all) else { panic!() };
        assert_eq!(got, want);
        assert!(got.iter().all(|i| i.key != "later" && i.key != "k5"));
        // The watch history travels with the state: 300 puts and a delete.
        let events = back.history().since(1).unwrap();
        assert_eq!(events, frozen.0.history().since(1).unwrap());
        assert_eq!(events.len(), 301);
        let last = events.last().unwrap();
        assert_eq!(
            (last.kind, last.key.as_str(), last.revision, last.prev_revision),
            (EventKind::Delete, "k5", 301, 296)
        );
        assert!(<KvStore as StateMachine>::restore(300, Bytes::from(body.clone())).is_err());
        for cut in [0, 8, 17, body.len() - 1] {
            assert!(<KvStore as StateMachine>::restore(301, Bytes::from(body[..cut].to_vec())).is_err());
        }
    }

    #[test]
    fn only_changes_make_events_and_a_transaction_makes_one_per_key() {
        let mut s = KvStore::new();
        s.apply(1, put("a", "1", Condition::None));
        s.apply(2, put("a", "x", Condition::IfValue("nope".into()))); // condition fails
        s.apply(3, Command::Delete { key: "missing".into(), if_revision: None }); // nothing to delete
        s.skip(4); // a no-op entry
        s.apply(
            5,
            txn(vec![], vec![tput("a", "2"), tput("b", "3"), tget("a"), TxnOp::Delete { key: "b".into() }], vec![]),
        );
        s.apply(
            6,
            txn(vec![Compare::Exists { key: "zz".into(), exists: true }], vec![tput("c", "no")], vec![tget("a")]),
        );
        let seen: Vec<_> = s
            .history()
            .since(1)
            .unwrap()
            .iter()
            .map(|e| (e.revision, e.kind, e.key.clone(), e.value.clone(), e.prev_revision))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, EventKind::Put, "a".into(), Some("1".into()), 0),
                (5, EventKind::Put, "a".into(), Some("2".into()), 1),
                (5, EventKind::Put, "b".into(), Some("3".into()), 0),
                (5, EventKind::Delete, "b".into(), None, 5),
            ]
        );
        // Live watchers get the same events, only while publishing is on.
        assert!(s.history_mut().take_fresh().is_empty());
        s.history_mut().set_publishing(true);
        s.apply(7, put("d", "4", Condition::None));
        let fresh = s.history_mut().take_fresh();
        assert_eq!(fresh.iter().map(|e| e.revision).collect::<Vec<_>>(), [7]);
        // And the window, including a key put and deleted at one revision,
        // goes through a snapshot.
        let mut body = Vec::new();
        StateMachine::freeze(&s).write_to(&mut body).unwrap();
        let back = <KvStore as StateMachine>::restore(7, Bytes::from(body)).unwrap();
        assert_eq!(back.history().since(1).unwrap(), s.history().since(1).unwrap());
    }

    #[test]
    fn leases_end_by_the_log_clock_and_take_their_keys_with_them() {
        let mut s = KvStore::new();
        let leased = |lease: u64, key: &str| Command::Leased { lease, inner: Box::new(put(key, "v", Condition::None)) };
        assert_eq!(
            s.apply(1, Command::LeaseGrant { now_ms: 10_000, ttl_ms: 5_000 }),
            CommandResult::LeaseGranted { id: 1, ttl_ms: 5_000 }
        );
        assert!(matches!(s.apply(2, leased(1, "a")), CommandResult::Put { .. }));
        assert!(matches!(s.apply(3, leased(1, "b")), CommandResult::Put { .. }));
        assert_eq!(s.apply(4, leased(9, "c")), CommandResult::LeaseNotFound { id: 9 });
        assert_eq!(s.len(), 2);
        // A leader whose clock says it is over proposes the end; applied
        // before the deadline by the log's clock, it ends nothing.
        assert_eq!(
            s.apply(5, Command::LeaseExpire { now_ms: 14_000, ids: vec![1] }),
            CommandResult::LeasesExpired { revoked: vec![] }
        );
        assert_eq!(
            s.apply(6, Command::LeaseKeepAlive { id: 1, now_ms: 14_500 }),
            CommandResult::LeaseKept { id: 1, ttl_ms: 5_000 }
        );
        assert!(s.leases().due(19_499, 10).is_empty());
        // Round trip through a snapshot, then the end at 19,500.
        let mut body = Vec::new();
        StateMachine::freeze(&s).write_to(&mut body).unwrap();
        let mut s = <KvStore as StateMachine>::restore(6, Bytes::from(body)).unwrap();
        assert_eq!(s.leases().due(19_500, 10), [1]);
        assert_eq!(
            s.apply(7, Command::LeaseKeepAlive { id: 1, now_ms: 19_600 }),
            CommandResult::LeaseNotFound { id: 1 }
        );
        assert_eq!(
            s.apply(8, Command::LeaseExpire { now_ms: 19_600, ids: vec![1] }),
            CommandResult::LeasesExpired { revoked: vec![1] }
        );
        assert!(s.is_empty());
        let deletes: Vec<_> = s.history().since(8).unwrap().iter().map(|e| (e.kind, e.key.clone())).collect();
        assert_eq!(deletes, [(EventKind::Delete, "a".to_string()), (EventKind::Delete, "b".to_string())]);
        // Revoke: the keys go at once; a key written again without the
        // lease is not the lease's any more.
        s.apply(9, Command::LeaseGrant { now_ms: 20_000, ttl_ms: 5_000 });
        s.apply(10, leased(9, "x"));
        s.apply(11, leased(9, "y"));
        s.apply(12, put("y", "free", Condition::None));
        assert_eq!(
            s.apply(13, Command::LeaseRevoke { id: 9 }),
            CommandResult::LeaseRevoked { id: 9, deleted: 1, revision: 13 }
        );
        assert_eq!(s.len(), 1);
        for c in [
            Command::LeaseGrant { now_ms: 1, ttl_ms: 2 },
            Command::LeaseKeepAlive { id: 3, now_ms: 4 },
            Command::LeaseRevoke { id: 5 },
            Command::LeaseExpire { now_ms: 6, ids: vec![7, 8] },
            leased(9, "k"),
        ] {
            assert_eq!(Command::decode(c.encode()).unwrap(), c);
        }
        // Only a put goes under a lease.
        let bad = Command::Leased { lease: 1, inner: Box::new(Command::Delete { key: "k".into(), if_revision: None }) };
        assert!(Command::decode(bad.encode()).is_err());
    }

    fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
        Command::Txn(Txn { compare, success, failure })
    }

    fn tput(key: &str, value: &str) -> TxnOp {
        TxnOp::Put { key: key.into(), value: value.into() }
    }

    fn tget(key: &str) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }

    #[test]
    fn transactions_roundtrip_and_reject_garbage() {
        let t = txn(
            vec![
                Compare::Value { key: "a".into(), value: "10".into() },
                Compare::Revision { key: "b".into(), revision: 0 },
                Compare::Exists { key: "c".into(), exists: true },
            ],
            vec![tput("a", "0"), TxnOp::Delete { key: "c".into() }],
            vec![tget("a")],
        );
        let enc = t.encode();
        assert_eq!(Command::decode(enc.clone()).unwrap(), t);
        for cut in 1..enc.len() {
            assert!(Command::decode(enc.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert_eq!(Command::decode(txn(vec![], vec![], vec![]).encode()).unwrap(), txn(vec![], vec![], vec![]));
        // A count that claims more items than the bytes can hold is refused
        // before anything is allocated for it.
        let forged = Bytes::from_static(&[CMD_TXN, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(Command::decode(forged).unwrap_err().0.contains("more than"));
    }

    #[test]
    fn a_transaction_runs_one_branch_atomically_at_one_revision() {
        let mut s = KvStore::new();
        s.apply(1, put("a", "10", Condition::None));
        s.apply(2, put("b", "0", Condition::None));
        // Move 10 from a to b if a still holds 10.
        let transfer = |from_value: &str| {
            txn(
                vec![Compare::Value { key: "a".into(), value: from_value.into() }],
                vec![tput("a", "0"), tput("b", "10"), tget("b")],
                vec![tget("a")],
            )
        };
        let CommandResult::Txn { succeeded, revision, results } = s.apply(3, transfer("10")) else { panic!() };
        assert!(succeeded);
        assert_eq!(revision, 3);
        let b3 = Item { key: "b".into(), value: "10".into(), revision: 3 };
        assert_eq!(
            results,
            [
                OpResult::Put { key: "a".into(), revision: 3 },
                OpResult::Put { key: "b".into(), revision: 3 },
                // A get sees the puts before it in the same transaction.
                OpResult::Get { key: "b".into(), item: Some(b3) },
            ]
        );
        // The same transfer again: the comparison fails, the failure branch
        // runs, nothing changes.
        let CommandResult::Txn { succeeded, results, .. } = s.apply(4, transfer("10")) else { panic!() };
        assert!(!succeeded);
        let a3 = Item { key: "a".into(), value: "0".into(), revision: 3 };
        assert_eq!(results, [OpResult::Get { key: "a".into(), item: Some(a3) }]);
        assert_eq!(s.item("b").unwrap().revision, 3);
        // Revision and existence comparisons; every comparison must hold.
        let t = txn(
            vec![
                Compare::Revision { key: "a".into(), revision: 3 },
                Compare::Exists { key: "nope".into(), exists: false },
                Compare::Revision { key: "nope".into(), revision: 0 },
            ],
            vec![TxnOp::Delete { key: "a".into() }, TxnOp::Delete { key: "nope".into() }],
            vec![],
        );
        let CommandResult::Txn { succeeded, results, .. } = s.apply(5, t) else { panic!() };
        assert!(succeeded);
        assert_eq!(
            results,
            [
                OpResult::Delete { key: "a".into(), deleted: true },
                OpResult::Delete { key: "nope".into(), deleted: false }
            ]
        );
        let t = txn(
            vec![Compare::Exists { key: "b".into(), exists: true }, Compare::Exists { key: "a".into(), exists: true }],
            vec![tput("x", "1")],
            vec![],
        );
        assert!(matches!(s.apply(6, t), CommandResult::Txn { succeeded: false, .. }));
        assert!(s.item("x").is_none() && s.len() == 1);
        assert!(!txn(vec![], vec![tget("a")], vec![tget("b")]).as_txn().writes());
        assert!(txn(vec![], vec![tget("a")], vec![TxnOp::Delete { key: "b".into() }]).as_txn().writes());
    }

    fn tagged(session: u64, seq: u64, now_ms: u64, inner: Command) -> Command {
        Command::InSession { session, seq, now_ms, inner: Box::new(inner) }
    }

    #[test]
    fn a_write_in_a_session_is_applied_once_and_the_table_is_in_snapshots() {
        let mut s = KvStore::new();
        let open = Command::OpenSession { now_ms: 1_000, ttl_ms: 5_000, max_sessions: 100 };
        assert_eq!(s.apply(1, open), CommandResult::SessionOpened { session: 1, ttl_ms: 5_000 });
        let create = || put("k", "v", Condition::IfRevision(0));
        let first = s.apply(2, tagged(1, 1, 1_100, create()));
        assert_eq!(first, CommandResult::Put { key: "k".into(), revision: 2 });
        // The retry, later in the log: the first answer, nothing applied.
        assert_eq!(s.apply(3, tagged(1, 1, 1_200, create())), first);
        assert_eq!(s.item("k").unwrap().revision, 2);
        // Nested session commands do not decode.
        let nested = tagged(1, 2, 0, Command::OpenSession { now_ms: 0, ttl_ms: 1, max_sessions: 1 });
        assert!(Command::decode(nested.encode()).is_err());
        assert_eq!(Command::decode(tagged(1, 2, 3, create()).encode()).unwrap(), tagged(1, 2, 3, create()));
        // Through a snapshot.
        let frozen = StateMachine::freeze(&s);
        let mut body = Vec::new();
        frozen.write_to(&mut body).unwrap();
        let mut back = <KvStore as StateMachine>::restore(3, Bytes::from(body)).unwrap();
        assert_eq!(back.sessions().get(1), s.sessions().get(1));
        assert_eq!(back.apply(4, tagged(1, 1, 1_300, create())), first);
        // Older sequence numbers and expired sessions are refused.
        assert!(matches!(back.apply(5, tagged(1, 2, 1_400, create())), CommandResult::PreconditionFailed { .. }));
        assert_eq!(
            back.apply(6, tagged(1, 1, 1_500, create())),
            CommandResult::SeqSuperseded { session: 1, seq: 1, last_seq: 2 }
        );
        assert_eq!(back.apply(7, tagged(1, 3, 7_000, create())), CommandResult::SessionExpired { session: 1 });
        assert!(back.sessions().is_empty());
    }

    impl Command {
        fn as_txn(&self) -> &Txn {
            let Command::Txn(t) = self else { panic!("not a transaction") };
            t
        }
    }

    #[test]
    #[should_panic(expected = "applied twice")]
    fn applying_an_entry_twice_is_a_bug() {
        let mut s = KvStore::new();
        s.skip(2);
        s.skip(2);
    }
}
