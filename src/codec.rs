//! A small binary encoding for what crosses a process boundary between
//! raftkv nodes: log entries (write-ahead log and AppendEntries) and Raft
//! messages (`/raft/*` bodies). Fixed-width little-endian integers,
//! length-prefixed byte strings, one leading version byte per message.
//!
//! The client API stays JSON; this is only for the peer path, where JSON
//! would spend most of the CPU on escaping entry payloads.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use std::collections::BTreeMap;

use crate::raft::{Body, Entry, EntryData, Member, Membership, Message, SnapshotMeta};

/// Version of the peer message encoding.
pub const MESSAGE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Reads fields from a buffer, failing cleanly on truncated input.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError(format!("truncated input reading {what}")));
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    pub fn bool(&mut self, what: &str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError(format!("invalid boolean {b} for {what}"))),
        }
    }

    /// A u32-length-prefixed byte string, without copying.
    pub fn bytes(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let n = self.u32(what)? as usize;
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    pub fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }

    pub fn finish(&self, what: &str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes after {what}", self.buf.remaining())))
        }
    }
}

pub fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(u32::try_from(b.len()).expect("field under 4 GiB"));
    out.put_slice(b);
}

pub fn put_bool(out: &mut BytesMut, b: bool) {
    out.put_u8(b as u8);
}

// --- entries -----------------------------------------------------------------

const ENTRY_NOOP: u8 = 0;
const ENTRY_COMMAND: u8 = 1;
/// A configuration without the removed ids (never written since they exist).
const ENTRY_CONFIG: u8 = 2;
/// A configuration: members, then the ids removed so far.
const ENTRY_CONFIG_REMOVED: u8 = 3;

pub fn put_entry(out: &mut BytesMut, e: &Entry) {
    out.put_u64_le(e.index);
    out.put_u64_le(e.term);
    match &e.data {
        EntryData::Noop => out.put_u8(ENTRY_NOOP),
        EntryData::Command(b) => {
            out.put_u8(ENTRY_COMMAND);
            put_bytes(out, b);
        }
        EntryData::Config(m) => {
            out.put_u8(ENTRY_CONFIG_REMOVED);
            put_members(out, m);
            put_removed(out, m);
        }
    }
}

/// A configuration: member count (u32), then per member id (u64), voter
/// (u8) and address (length-prefixed).
fn put_members(out: &mut BytesMut, m: &Membership) {
    out.put_u32_le(u32::try_from(m.members.len()).expect("fewer than 4G members"));
    for (id, member) in &m.members {
        out.put_u64_le(*id);
        put_bool(out, member.voter);
        put_bytes(out, member.address.as_bytes());
    }
}

fn get_members(r: &mut Reader) -> Result<Membership, DecodeError> {
    let n = r.u32("member count")?;
    if n > MAX_VOTERS {
        return Err(DecodeError(format!("a configuration of {n} members (at most {MAX_VOTERS})")));
    }
    let mut members = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64("member id")?;
        let voter = r.bool("member voter flag")?;
        let address = r.string("member address")?;
        if id == 0 || members.insert(id, Member { address, voter }).is_some() {
            return Err(DecodeError(format!("a configuration with member id {id} invalid or twice")));
        }
    }
    Ok(Membership { members, removed: Default::default() })
}

/// The removed ids: count (u32), then each id (u64).
fn put_removed(out: &mut BytesMut, m: &Membership) {
    out.put_u32_le(u32::try_from(m.removed.len()).expect("fewer than 4G removed members"));
    for id in &m.removed {
        out.put_u64_le(*id);
    }
}

fn get_removed(r: &mut Reader, m: &mut Membership) -> Result<(), DecodeError> {
    let n = r.u32("removed count")?;
    if n as usize > r.remaining() / 8 {
        return Err(DecodeError(format!("a configuration lists {n} removed ids, more than the bytes that follow")));
    }
    for _ in 0..n {
        let id = r.u64("removed id")?;
        if id == 0 || m.contains(id) || !m.removed.insert(id) {
            return Err(DecodeError(format!("a configuration with removed id {id} invalid, a member, or twice")));
        }
    }
    Ok(())
}

fn get_config(r: &mut Reader, with_removed: bool) -> Result<Membership, DecodeError> {
    let mut m = get_members(r)?;
    if with_removed {
        get_removed(r, &mut m)?;
    }
    Ok(m)
}

pub fn get_entry(r: &mut Reader) -> Result<Entry, DecodeError> {
    let index = r.u64("entry index")?;
    let term = r.u64("entry term")?;
    let data = match r.u8("entry kind")? {
        ENTRY_NOOP => EntryData::Noop,
        ENTRY_COMMAND => EntryData::Command(r.bytes("entry data")?),
        ENTRY_CONFIG => EntryData::Config(get_config(r, false)?),
        ENTRY_CONFIG_REMOVED => EntryData::Config(get_config(r, true)?),
        k => return Err(DecodeError(format!("unknown entry kind {k}"))),
    };
    Ok(Entry { index, term, data })
}

// --- messages ----------------------------------------------------------------

const K_REQUEST_VOTE: u8 = 1;
const K_REQUEST_VOTE_RESPONSE: u8 = 2;
const K_APPEND_ENTRIES: u8 = 3;
const K_APPEND_ENTRIES_RESPONSE: u8 = 4;
const K_HEARTBEAT: u8 = 5;
const K_HEARTBEAT_RESPONSE: u8 = 6;
const K_INSTALL_SNAPSHOT: u8 = 7;
const K_INSTALL_SNAPSHOT_RESPONSE: u8 = 8;
const K_TIMEOUT_NOW: u8 = 9;
const K_TIMEOUT_NOW_RESPONSE: u8 = 10;
/// RequestVote flags, in the byte that was once only `pre_vote` (0 or 1),
/// so the encoding of every vote without a transfer is unchanged.
const VOTE_PRE: u8 = 1;
const VOTE_TRANSFER: u8 = 2;
/// The smallest encoded entry: index, term, kind.
const MIN_ENTRY_BYTES: usize = 8 + 8 + 1;
/// More voters than this in a snapshot's metadata is not a real cluster.
const MAX_VOTERS: u32 = 1024;

/// Set in the u32 after index and term: the configuration follows in
/// full (`put_members`). Without it, the u32 is a voter count followed by
/// that many voter ids: the format before configuration changes, still read.
const META_MEMBERS: u32 = 1 << 31;
/// ... followed by the configuration and then its removed ids (`put_removed`).
const META_MEMBERS_REMOVED: u32 = META_MEMBERS | 1;

/// A snapshot's metadata: index, term, `META_MEMBERS`, the configuration.
pub fn put_snapshot_meta(out: &mut BytesMut, meta: &SnapshotMeta) {
    out.put_u64_le(meta.index);
    out.put_u64_le(meta.term);
    out.put_u32_le(META_MEMBERS_REMOVED);
    put_members(out, &meta.membership);
    put_removed(out, &meta.membership);
}

pub fn get_snapshot_meta(r: &mut Reader) -> Result<SnapshotMeta, DecodeError> {
    let index = r.u64("snapshot index")?;
    let term = r.u64("snapshot term")?;
    let n = r.u32("voter count")?;
    if n == META_MEMBERS || n == META_MEMBERS_REMOVED {
        return Ok(SnapshotMeta { index, term, membership: get_config(r, n == META_MEMBERS_REMOVED)? });
    }
    if n > MAX_VOTERS {
        return Err(DecodeError(format!("snapshot metadata lists {n} voters (at most {MAX_VOTERS})")));
    }
    let voters = (0..n).map(|_| r.u64("voter")).collect::<Result<Vec<_>, _>>()?;
    Ok(SnapshotMeta { index, term, membership: Membership::from_voters(voters) })
}

pub fn encode_message(m: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + entries_size(&m.body));
    out.put_u8(MESSAGE_VERSION);
    out.put_u64_le(m.from);
    out.put_u64_le(m.to);
    out.put_u64_le(m.term);
    out.put_u64_le(m.rpc_id);
    match &m.body {
        Body::RequestVote { pre_vote, last_log_index, last_log_term, transfer } => {
            out.put_u8(K_REQUEST_VOTE);
            out.put_u8(if *pre_vote { VOTE_PRE } else { 0 } | if *transfer { VOTE_TRANSFER } else { 0 });
            out.put_u64_le(*last_log_index);
            out.put_u64_le(*last_log_term);
        }
        Body::RequestVoteResponse { pre_vote, vote_granted } => {
            out.put_u8(K_REQUEST_VOTE_RESPONSE);
            put_bool(&mut out, *pre_vote);
            put_bool(&mut out, *vote_granted);
        }
        Body::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, ctx } => {
            out.put_u8(K_APPEND_ENTRIES);
            out.put_u64_le(*prev_log_index);
            out.put_u64_le(*prev_log_term);
            out.put_u64_le(*leader_commit);
            out.put_u64_le(*ctx);
            out.put_u32_le(u32::try_from(entries.len()).expect("fewer than 4G entries"));
            for e in entries {
                put_entry(&mut out, e);
            }
        }
        Body::AppendEntriesResponse { success, prev_log_index, match_index, conflict_index, conflict_term, ctx } => {
            out.put_u8(K_APPEND_ENTRIES_RESPONSE);
            put_bool(&mut out, *success);
            out.put_u64_le(*prev_log_index);
            out.put_u64_le(*match_index);
            out.put_u64_le(*conflict_index);
            put_bool(&mut out, conflict_term.is_some());
            out.put_u64_le(conflict_term.unwrap_or(0));
            out.put_u64_le(*ctx);
        }
        Body::Heartbeat { commit, ctx } => {
            out.put_u8(K_HEARTBEAT);
            out.put_u64_le(*commit);
            out.put_u64_le(*ctx);
        }
        Body::HeartbeatResponse { ctx } => {
            out.put_u8(K_HEARTBEAT_RESPONSE);
            out.put_u64_le(*ctx);
        }
        Body::InstallSnapshot { meta } => {
            out.put_u8(K_INSTALL_SNAPSHOT);
            put_snapshot_meta(&mut out, meta);
        }
        Body::InstallSnapshotResponse { match_index } => {
            out.put_u8(K_INSTALL_SNAPSHOT_RESPONSE);
            out.put_u64_le(*match_index);
        }
        Body::TimeoutNow => out.put_u8(K_TIMEOUT_NOW),
        Body::TimeoutNowResponse { campaigned } => {
            out.put_u8(K_TIMEOUT_NOW_RESPONSE);
            put_bool(&mut out, *campaigned);
        }
    }
    out.freeze()
}

fn entries_size(body: &Body) -> usize {
    match body {
        Body::AppendEntries { entries, .. } => entries.iter().map(|e| e.size_hint()).sum(),
        _ => 0,
    }
}

pub fn decode_message(buf: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let version = r.u8("version")?;
    if version != MESSAGE_VERSION {
        return Err(DecodeError(format!("unsupported message version {version}")));
    }
    let from = r.u64("from")?;
    let to = r.u64("to")?;
    let term = r.u64("term")?;
    let rpc_id = r.u64("rpc id")?;
    let body = match r.u8("kind")? {
        K_REQUEST_VOTE => {
            let flags = r.u8("vote flags")?;
            if flags & !(VOTE_PRE | VOTE_TRANSFER) != 0 {
                return Err(DecodeError(format!("unknown vote flags {flags:#04x}")));
            }
            Body::RequestVote {
                pre_vote: flags & VOTE_PRE != 0,
                last_log_index: r.u64("last_log_index")?,
                last_log_term: r.u64("last_log_term")?,
                transfer: flags & VOTE_TRANSFER != 0,
            }
        }
        K_REQUEST_VOTE_RESPONSE => {
            Body::RequestVoteResponse { pre_vote: r.bool("pre_vote")?, vote_granted: r.bool("vote_granted")? }
        }
        K_APPEND_ENTRIES => {
            let prev_log_index = r.u64("prev_log_index")?;
            let prev_log_term = r.u64("prev_log_term")?;
            let leader_commit = r.u64("leader_commit")?;
            let ctx = r.u64("ctx")?;
            let n = r.u32("entry count")? as usize;
            // The count is untrusted: reserve only what the bytes left could hold.
            let mut entries = Vec::with_capacity(n.min(r.remaining() / MIN_ENTRY_BYTES));
            for k in 0..n {
                let e = get_entry(&mut r)?;
                if e.index != prev_log_index + 1 + k as u64 {
                    return Err(DecodeError(format!("entry {} out of sequence after {prev_log_index}", e.index)));
                }
                entries.push(e);
            }
            Body::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, ctx }
        }
        K_APPEND_ENTRIES_RESPONSE => {
            let success = r.bool("success")?;
            let prev_log_index = r.u64("prev_log_index")?;
            let match_index = r.u64("match_index")?;
            let conflict_index = r.u64("conflict_index")?;
            let has_term = r.bool("has conflict_term")?;
            let t = r.u64("conflict_term")?;
            let ctx = r.u64("ctx")?;
            Body::AppendEntriesResponse {
                success,
                prev_log_index,
                match_index,
                conflict_index,
                conflict_term: has_term.then_some(t),
                ctx,
            }
        }
        K_HEARTBEAT => Body::Heartbeat { commit: r.u64("commit")?, ctx: r.u64("ctx")? },
        K_HEARTBEAT_RESPONSE => Body::HeartbeatResponse { ctx: r.u64("ctx")? },
        K_INSTALL_SNAPSHOT => Body::InstallSnapshot { meta: get_snapshot_meta(&mut r)? },
        K_INSTALL_SNAPSHOT_RESPONSE => Body::InstallSnapshotResponse { match_index: r.u64("match_index")? },
        K_TIMEOUT_NOW => Body::TimeoutNow,
        K_TIMEOUT_NOW_RESPONSE => Body::TimeoutNowResponse { campaigned: r.bool("campaigned")? },
        k => return Err(DecodeError(format!("unknown message kind {k}"))),
    };
    r.finish("message")?;
    Ok(Message { from, to, term, rpc_id, body })
}

/// One request of a snapshot transfer (`POST /raft/install_snapshot`):
/// the InstallSnapshot message it belongs to, where `data` starts in the
/// snapshot file, and the file's total size. The file is the transfer's
/// unit: the follower reassembles and verifies it before the core sees
/// the message, which goes with every chunk so each is self-describing.
///
/// ```text
/// [msg_len: u32][message: msg_len bytes][offset: u64][total: u64][data...]
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotChunk {
    pub msg: Message,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
}

pub fn encode_snapshot_chunk(msg: &Message, offset: u64, total: u64, data: &[u8]) -> Bytes {
    let m = encode_message(msg);
    let mut out = BytesMut::with_capacity(4 + m.len() + 16 + data.len());
    put_bytes(&mut out, &m);
    out.put_u64_le(offset);
    out.put_u64_le(total);
    out.put_slice(data);
    out.freeze()
}

pub fn decode_snapshot_chunk(buf: Bytes) -> Result<SnapshotChunk, DecodeError> {
    let mut r = Reader::new(buf);
    let msg = decode_message(r.bytes("message")?)?;
    let offset = r.u64("offset")?;
    let total = r.u64("total")?;
    let data = std::mem::take(&mut r.buf);
    if offset.checked_add(data.len() as u64).is_none_or(|end| end > total) {
        return Err(DecodeError(format!(
            "chunk of {} bytes at {offset} runs past the file's {total} bytes",
            data.len()
        )));
    }
    Ok(SnapshotChunk { msg, offset, total, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let enc = encode_message(&m);
        assert_eq!(decode_message(enc.clone()).unwrap(), m);
        // Every strict prefix is rejected, never misread.
        for n in 0..enc.len() {
            assert!(decode_message(enc.slice(..n)).is_err(), "prefix of {n} bytes accepted");
        }
    }

    /// Configurations with removed ids survive entries and snapshot
    /// metadata; the forms written before removed ids existed still read.
    #[test]
    fn configurations_roundtrip_and_the_previous_forms_still_read() {
        let mut m = Membership::from_voters([1, 2]);
        m.members.insert(4, Member { address: "127.0.0.1:8004".into(), voter: false });
        m.removed.insert(3);
        let e = Entry { index: 7, term: 2, data: EntryData::Config(m.clone()) };
        let mut out = BytesMut::new();
        put_entry(&mut out, &e);
        assert_eq!(get_entry(&mut Reader::new(out.freeze())).unwrap(), e);
        let meta = SnapshotMeta { index: 7, term: 2, membership: m.clone() };
        let mut out = BytesMut::new();
        put_snapshot_meta(&mut out, &meta);
        assert_eq!(get_snapshot_meta(&mut Reader::new(out.freeze())).unwrap(), meta);

        let mut without = m.clone();
        without.removed.clear();
        let mut old = BytesMut::new();
        old.put_u64_le(7);
        old.put_u64_le(2);
        old.put_u8(ENTRY_CONFIG);
        put_members(&mut old, &m);
        let got = get_entry(&mut Reader::new(old.freeze())).unwrap();
        assert_eq!(got.data, EntryData::Config(without.clone()));
        let mut old = BytesMut::new();
        old.put_u64_le(7);
        old.put_u64_le(2);
        old.put_u32_le(META_MEMBERS);
        put_members(&mut old, &m);
        assert_eq!(get_snapshot_meta(&mut Reader::new(old.freeze())).unwrap().membership, without);

        // A removed id that is also a member is damage.
        let mut bad = m.clone();
        bad.removed.insert(4);
        let mut out = BytesMut::new();
        put_snapshot_meta(&mut out, &SnapshotMeta { index: 7, term: 2, membership: bad });
        assert!(get_snapshot_meta(&mut Reader::new(out.freeze())).is_err());
    }

    #[test]
    fn snapshot_chunks_roundtrip_and_never_run_past_the_file() {
        let meta = SnapshotMeta { index: 40, term: 3, membership: Membership::from_voters([1, 2, 3]) };
        let m = Message { from: 1, to: 2, term: 3, rpc_id: 9, body: Body::InstallSnapshot { meta } };
        let enc = encode_snapshot_chunk(&m, 100, 150, b"0123456789");
        let c = decode_snapshot_chunk(enc.clone()).unwrap();
        assert_eq!((c.msg, c.offset, c.total, &c.data[..]), (m.clone(), 100, 150, &b"0123456789"[..]));
        // A prefix cut inside the header is refused; one cut in the data is a shorter chunk.
        let header = enc.len() - 10;
        for n in 0..header {
            assert!(decode_snapshot_chunk(enc.slice(..n)).is_err(), "prefix of {n} bytes accepted");
        }
        assert!(decode_snapshot_chunk(encode_snapshot_chunk(&m, 145, 150, b"0123456789")).is_err());
        assert!(decode_snapshot_chunk(encode_snapshot_chunk(&m, u64::MAX, u64::MAX, b"x")).is_err());
    }

    #[test]
    fn every_message_kind_roundtrips() {
        let base = |body| Message { from: 1, to: 2, term: 7, rpc_id: 99, body };
        roundtrip(base(Body::RequestVote { pre_vote: true, last_log_index: 5, last_log_term: 3, transfer: false }));
        roundtrip(base(Body::RequestVote { pre_vote: false, last_log_index: 5, last_log_term: 3, transfer: true }));
        roundtrip(base(Body::TimeoutNow));
        roundtrip(base(Body::TimeoutNowResponse { campaigned: true }));
        roundtrip(base(Body::RequestVoteResponse { pre_vote: false, vote_granted: true }));
        roundtrip(base(Body::AppendEntries {
            prev_log_index: 4,
            prev_log_term: 2,
            entries: vec![
                Entry { index: 5, term: 7, data: EntryData::Noop },
                Entry { index: 6, term: 7, data: EntryData::Command(Bytes::from_static(b"hello")) },
            ],
            leader_commit: 3,
            ctx: 11,
        }));
        roundtrip(base(Body::AppendEntriesResponse {
            success: false,
            prev_log_index: 9,
            match_index: 0,
            conflict_index: 4,
            conflict_term: Some(2),
            ctx: 8,
        }));
        roundtrip(base(Body::Heartbeat { commit: 12, ctx: 13 }));
        roundtrip(base(Body::HeartbeatResponse { ctx: 13 }));
        roundtrip(base(Body::InstallSnapshot {
            meta: SnapshotMeta { index: 70, term: 6, membership: Membership::from_voters([1, 2, 3]) },
        }));
        roundtrip(base(Body::InstallSnapshotResponse { match_index: 70 }));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(decode_message(Bytes::from_static(b"")).is_err());
        let err = decode_message(Bytes::from_static(b"\x09rest")).unwrap_err();
        assert!(err.0.contains("version"), "{err}");
        let mut ok =
            encode_message(&Message { from: 1, to: 2, term: 1, rpc_id: 0, body: Body::HeartbeatResponse { ctx: 1 } })
                .to_vec();
        ok.push(0);
        assert!(decode_message(Bytes::from(ok)).unwrap_err().0.contains("trailing"));
    }
}
