//! The write-ahead log file format, recovery and appends (DESIGN §4).
//!
//! One file, `<data-dir>/wal/00000000000000000001.wal`, starts with an 8-byte
//! magic and holds a sequence of records:
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE][kind: u8][payload: len-1 bytes]
//! ```
//!
//! `crc32` covers kind and payload. Kinds: hard state (term, vote), log
//! entry, truncate-from. Replaying the records in order rebuilds the hard
//! state and the log. Segments are numbered so that log compaction can
//! later start new files and delete old ones.
//!
//! Recovery: a bad record with no valid record after it is a *torn tail*
//! (a crash in the middle of an append, which was never acknowledged) and
//! is cut off with a warning. A bad record followed by valid ones is
//! *corruption*: the node refuses to start, naming the file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use log::{info, warn};

use crate::codec::{Reader, get_entry, put_entry};
use crate::raft::{Entry, HardState, Index, PersistOp};

pub const MAGIC: &[u8; 8] = b"RKVWAL01";
const HEADER: usize = 8;
const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
/// No single record is larger than this (a value is at most a few MiB).
const MAX_RECORD: usize = 256 << 20;
const T_STORAGE: &str = "raftkv::storage";

#[derive(Debug)]
pub enum WalError {
    Io { path: PathBuf, err: io::Error },
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::Io { path, err } => write!(f, "write-ahead log {}: {err}", path.display()),
            WalError::Corrupt { path, offset, reason } => write!(
                f,
                "write-ahead log {} is corrupt at offset {offset}: {reason}; refusing to start \
                 (move the data directory aside and let the node catch up from its peers)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for WalError {}

/// What a node finds on disk at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
    /// Bytes cut off as a torn tail, if any.
    pub torn_bytes: u64,
}

pub fn wal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("wal").join(format!("{:020}.wal", 1))
}

/// Opens (creating if needed) the WAL under `data_dir`, recovers its
/// contents, and returns them with a writer positioned at the end.
pub fn open(data_dir: &Path) -> Result<(Recovered, WalWriter), WalError> {
    let path = wal_path(data_dir);
    let io = |err| WalError::Io { path: path.clone(), err };
    let dir = path.parent().expect("wal path has a parent");
    fs::create_dir_all(dir).map_err(io)?;
    let existed = path.exists();
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io)?;
    if !existed || file.metadata().map_err(io)?.len() == 0 {
        file.write_all(MAGIC).map_err(io)?;
        file.sync_all().map_err(io)?;
        sync_dir(dir).map_err(io)?;
        info!(target: T_STORAGE, "created write-ahead log {}", path.display());
    }
    let buf = Bytes::from(fs::read(&path).map_err(io)?);
    let (recovered, valid_len) = replay(&path, &buf)?;
    if (valid_len as usize) < buf.len() {
        file.set_len(valid_len).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    info!(
        target: T_STORAGE,
        "recovered {}: term {}, vote {:?}, {} entries",
        path.display(),
        recovered.hard_state.current_term,
        recovered.hard_state.voted_for,
        recovered.entries.len()
    );
    Ok((recovered, WalWriter { file, path, size: valid_len }))
}

/// Replays `buf` (the file at `path`); returns the state and the length of
/// the valid prefix. Entry payloads are slices of `buf`, not copies.
pub fn replay(path: &Path, buf: &Bytes) -> Result<(Recovered, u64), WalError> {
    let corrupt =
        |offset: usize, reason: String| WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, reason };
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "missing raftkv WAL header".into()));
    }
    let mut rec = Recovered::default();
    let mut pos = MAGIC.len();
    while pos < buf.len() {
        match parse_record(buf, pos) {
            Ok((kind, payload, next)) => {
                apply_record(&mut rec, kind, buf.slice(payload)).map_err(|reason| corrupt(pos, reason))?;
                pos = next;
            }
            Err(reason) => {
                if let Some(later) = find_valid_record(buf, pos + 1) {
                    return Err(corrupt(pos, format!("{reason}, but a valid record follows at offset {later}")));
                }
                let torn = buf.len() - pos;
                warn!(
                    target: T_STORAGE,
                    "write-ahead log {}: cutting a torn tail of {torn} bytes at offset {pos} ({reason}); \
                     it was never acknowledged",
                    path.display()
                );
                rec.torn_bytes = torn as u64;
                return Ok((rec, pos as u64));
            }
        }
    }
    Ok((rec, pos as u64))
}

/// Parses the record at `pos`: (kind, payload range, offset after it).
fn parse_record(buf: &[u8], pos: usize) -> Result<(u8, std::ops::Range<usize>, usize), String> {
    let rest = buf.len() - pos;
    if rest < HEADER + 1 {
        return Err(format!("incomplete record header ({rest} bytes)"));
    }
    let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap());
    if len == 0 || len > MAX_RECORD {
        return Err(format!("invalid record length {len}"));
    }
    if len > rest - HEADER {
        return Err(format!("record of {len} bytes runs past the end of the file"));
    }
    let body = &buf[pos + HEADER..pos + HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((body[0], pos + HEADER + 1..pos + HEADER + len, pos + HEADER + len))
}

/// The offset of the first well-formed record at or after `from`.
fn find_valid_record(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(HEADER)).find(|&off| {
        let kind = buf.get(off + HEADER).copied();
        matches!(kind, Some(KIND_HARD_STATE | KIND_ENTRY | KIND_TRUNCATE)) && parse_record(buf, off).is_ok()
    })
}

fn apply_record(rec: &mut Recovered, kind: u8, payload: Bytes) -> Result<(), String> {
    let mut r = Reader::new(payload);
    match kind {
        KIND_HARD_STATE => {
            let term = r.u64("term").map_err(|e| e.0)?;
            let vote = r.u64("vote").map_err(|e| e.0)?;
            rec.hard_state = HardState { current_term: term, voted_for: (vote != 0).then_some(vote) };
        }
        KIND_ENTRY => {
            let e = get_entry(&mut r).map_err(|e| e.0)?;
            let want = rec.entries.len() as Index + 1;
            if e.index != want {
                return Err(format!("log entry {} where entry {want} was expected", e.index));
            }
            rec.entries.push(e);
        }
        KIND_TRUNCATE => {
            let from = r.u64("truncate index").map_err(|e| e.0)?;
            if from == 0 || from > rec.entries.len() as Index + 1 {
                return Err(format!("truncation at {from} beyond the log ({} entries)", rec.entries.len()));
            }
            rec.entries.truncate(from as usize - 1);
        }
        k => return Err(format!("unknown record kind {k}")),
    }
    r.finish("record").map_err(|e| e.0)
}

fn put_record(out: &mut BytesMut, kind: u8, payload: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u64_le(0); // header placeholder
    out.put_u8(kind);
    payload(out);
    let body = &out[start + HEADER..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes the records for `op`, in the order storage must apply them.
pub fn encode_op(out: &mut BytesMut, op: &PersistOp) {
    if let Some(hs) = op.hard_state {
        put_record(out, KIND_HARD_STATE, |b| {
            b.put_u64_le(hs.current_term);
            b.put_u64_le(hs.voted_for.unwrap_or(0));
        });
    }
    if let Some(from) = op.truncate_from {
        put_record(out, KIND_TRUNCATE, |b| b.put_u64_le(from));
    }
    for e in &op.entries {
        put_record(out, KIND_ENTRY, |b| put_entry(b, e));
    }
}

/// Appends to the WAL. Owned by the storage actor's thread.
#[derive(Debug)]
pub struct WalWriter {
    file: File,
    path: PathBuf,
    size: u64,
}

impl WalWriter {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `ops` and makes them durable with a single fdatasync.
    pub fn append(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(4096);
        for op in ops {
            encode_op(&mut buf, op);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryData;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("raftkv-wal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn ent(index: Index, term: u64, s: &str) -> Entry {
        Entry { index, term, data: EntryData::Command(Bytes::copy_from_slice(s.as_bytes())) }
    }

    fn op(seq: u64, hs: Option<(u64, u64)>, trunc: Option<Index>, entries: Vec<Entry>) -> PersistOp {
        PersistOp {
            seq,
            hard_state: hs.map(|(t, v)| HardState { current_term: t, voted_for: (v != 0).then_some(v) }),
            truncate_from: trunc,
            entries,
        }
    }

    #[test]
    fn appends_survive_reopen_with_truncations_applied() {
        let dir = tmpdir("reopen");
        let (rec, mut w) = open(&dir).unwrap();
        assert!(rec.entries.is_empty());
        w.append(&[op(1, Some((3, 2)), None, vec![ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c")])]).unwrap();
        w.append(&[op(2, Some((4, 0)), Some(2), vec![ent(2, 4, "B")])]).unwrap();
        drop(w);
        let (rec, _) = open(&dir).unwrap();
        assert_eq!(rec.hard_state, HardState { current_term: 4, voted_for: None });
        assert_eq!(rec.entries, vec![ent(1, 1, "a"), ent(2, 4, "B")]);
        assert_eq!(rec.torn_bytes, 0);
    }

    #[test]
    fn torn_tail_is_cut_and_the_file_stays_usable() {
        let dir = tmpdir("torn");
        let (_, mut w) = open(&dir).unwrap();
        w.append(&[op(1, None, None, vec![ent(1, 1, "keep")])]).unwrap();
        let good = w.size();
        w.append(&[op(2, None, None, vec![ent(2, 1, "half-written")])]).unwrap();
        drop(w);
        let path = wal_path(&dir);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(good + 11).unwrap(); // a crash in the middle of the second record
        let (rec, mut w) = open(&dir).unwrap();
        assert_eq!(rec.entries, vec![ent(1, 1, "keep")]);
        assert_eq!(rec.torn_bytes, 11);
        assert_eq!(fs::metadata(&path).unwrap().len(), good, "tail cut on disk");
        w.append(&[op(3, None, None, vec![ent(2, 2, "after")])]).unwrap();
        drop(w);
        assert_eq!(open(&dir).unwrap().0.entries.len(), 2);
    }

    #[test]
    fn corruption_in_the_middle_refuses_with_file_and_offset() {
        let dir = tmpdir("corrupt");
        let (_, mut w) = open(&dir).unwrap();
        for i in 1..=5 {
            w.append(&[op(i, None, None, vec![ent(i, 1, "some payload")])]).unwrap();
        }
        drop(w);
        let path = wal_path(&dir);
        let mut bytes = fs::read(&path).unwrap();
        let record = 8 + 1 + 8 + 8 + 1 + 4 + "some payload".len();
        let victim = MAGIC.len() + record + 10; // inside the second record
        bytes[victim] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let err = open(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(matches!(err, WalError::Corrupt { offset, .. } if offset == (MAGIC.len() + record) as u64), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "a corrupt file is left untouched");
    }

    #[test]
    fn a_corrupted_length_in_the_middle_is_not_mistaken_for_a_torn_tail() {
        let dir = tmpdir("badlen");
        let (_, mut w) = open(&dir).unwrap();
        for i in 1..=4 {
            w.append(&[op(i, None, None, vec![ent(i, 1, "x")])]).unwrap();
        }
        drop(w);
        let path = wal_path(&dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(open(&dir), Err(WalError::Corrupt { offset: 8, .. })));
    }

    #[test]
    fn a_file_that_is_not_a_wal_is_refused() {
        let dir = tmpdir("magic");
        fs::create_dir_all(dir.join("wal")).unwrap();
        fs::write(wal_path(&dir), b"hello world, not a wal").unwrap();
        assert!(matches!(open(&dir), Err(WalError::Corrupt { offset: 0, .. })));
    }
}
