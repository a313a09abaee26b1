//! The write-ahead log file format, recovery and appends (DESIGN §4; the
//! README's "Crash safety" is the reference for the rule below).
//!
//! One file, `<data-dir>/wal/00000000000000000001.wal`, starts with the
//! 8-byte magic `RKVWAL02` and holds a sequence of records:
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE][kind: u8][payload: len-1 bytes]
//! ```
//!
//! `crc32` covers kind and payload. Kinds: 1 hard state (term, vote),
//! 2 log entry, 3 truncate-from, 4 commit marker, 5 snapshot installed
//! (index, term, voters: the log now starts after that index). Each persist batch (one
//! [`WalWriter::append`], one fdatasync, see [`encode_batch`]) is its
//! records followed by a commit marker whose payload is the number of
//! records in the batch and their length in bytes (two u64 LE), so that a
//! batch is complete exactly when its marker is on disk. Replaying the
//! complete batches in order rebuilds the hard state and the log; the
//! records of a batch are applied only once its marker has been read.
//! Segments are numbered so that log compaction can later start new files
//! and delete old ones.
//!
//! Recovery decides from what was acknowledged. A batch is acknowledged
//! only after its fdatasync, i.e. after its marker is durable, so:
//!
//! * everything up to and including the last valid commit marker was
//!   acknowledged. A bad record (short header, bad length, checksum
//!   mismatch) with a CRC-valid commit marker anywhere after it, a commit
//!   marker whose count or length does not match the records before it, or
//!   a record of a complete batch that does not apply (an entry out of
//!   sequence, a truncation beyond the log, an unknown kind) is
//!   *corruption*: the node refuses to start, naming the file and the
//!   offset, and leaves the file untouched;
//! * everything after the last valid commit marker (a partial batch, a
//!   zero-filled or garbage tail that power loss leaves behind a multi-page
//!   write, even complete records whose batch has no marker) was never
//!   acknowledged: it is a *torn tail* and is cut off (truncate + fsync)
//!   with a warning.
//!
//! What this cannot tell apart: damage to the last batch's own commit
//! marker looks exactly like a crash before that marker reached the disk,
//! so that batch is cut as a torn tail.
//!
//! Files written by the previous release (magic `RKVWAL01`, no commit
//! markers) are replayed with that release's rule (a bad record with no
//! valid record after it is a torn tail, otherwise corruption) and then
//! converted: the recovered state is written as one batch to a new file
//! under a temporary name, fsynced, renamed over the old one, and the
//! directory fsynced, so a crash at any point leaves one complete file.
//!
//! [`open`] also makes first start durable (every directory it creates is
//! fsynced, with its parent) and takes an exclusive lock on
//! `<data-dir>/LOCK` for the life of the process, so two processes never
//! write one data directory.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use log::{info, warn};

use crate::codec::{Reader, get_entry, get_snapshot_meta, put_entry, put_snapshot_meta};
use crate::raft::{Entry, HardState, Index, PersistOp, SnapshotMeta};

/// The first bytes of a WAL file in the current format (batches framed by
/// commit markers).
pub const MAGIC: &[u8; 8] = b"RKVWAL02";
/// The format of the previous release (no commit markers): still read,
/// then converted to [`MAGIC`].
pub const MAGIC_V1: &[u8; 8] = b"RKVWAL01";
/// The lock file in the data directory; holds the owner's pid.
pub const LOCK_FILE: &str = "LOCK";
const HEADER: usize = 8;
const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_COMMIT: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
/// Kind + record count (u64) + byte length of the batch's records (u64).
const COMMIT_BODY: usize = 1 + 8 + 8;
/// A whole commit marker record, header included.
const COMMIT_RECORD: usize = HEADER + COMMIT_BODY;
/// No single record is larger than this (a value is at most a few MiB).
const MAX_RECORD: usize = 256 << 20;
const T_STORAGE: &str = "raftkv::storage";

/// The bytes a new WAL file starts with.
pub fn file_header() -> &'static [u8] {
    MAGIC
}

#[derive(Debug)]
pub enum WalError {
    Io {
        path: PathBuf,
        err: io::Error,
    },
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Another process holds the lock on the data directory.
    Locked {
        dir: PathBuf,
        pid: Option<u32>,
    },
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::Io { path, err } => write!(f, "write-ahead log {}: {err}", path.display()),
            WalError::Corrupt { path, offset, reason } => write!(
                f,
                "write-ahead log {} is corrupt at offset {offset}: {reason}; refusing to start, the file is left \
                 untouched. Do not delete or empty the data directory: a node that comes back without its log \
                 can vote twice in a term and lose committed entries. Restore the data directory from a backup \
                 of this node, or rebuild the cluster; once membership changes exist (not yet), removing this \
                 node and rejoining it as a new member will be the way back",
                path.display()
            ),
            WalError::Locked { dir, pid } => {
                write!(f, "data directory {} is in use by another raftkv process", dir.display())?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                write!(f, "; refusing to start (lock file {})", dir.join(LOCK_FILE).display())
            }
        }
    }
}

impl std::error::Error for WalError {}

/// What a node finds on disk at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The latest snapshot installed from a leader that the log records:
    /// `entries` continue after it.
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    /// Bytes cut off as a torn tail, if any.
    pub torn_bytes: u64,
}

pub fn wal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("wal").join(format!("{:020}.wal", 1))
}

/// Locks `data_dir` (creating it if needed), opens (creating if needed)
/// the WAL under it, recovers its contents, and returns them with a writer
/// positioned at the end. The writer holds the lock until it is dropped.
pub fn open(data_dir: &Path) -> Result<(Recovered, WalWriter), WalError> {
    let path = wal_path(data_dir);
    let io_at = |p: &Path| {
        let path = p.to_path_buf();
        move |err| WalError::Io { path, err }
    };
    create_dir_durable(data_dir).map_err(io_at(data_dir))?;
    let lock = lock_data_dir(data_dir)?;
    let dir = path.parent().expect("wal path has a parent");
    create_dir_durable(dir).map_err(io_at(dir))?;
    let existed = path.exists();
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io_at(&path))?;
    if !existed || file.metadata().map_err(io_at(&path))?.len() == 0 {
        file.write_all(file_header()).map_err(io_at(&path))?;
        file.sync_all().map_err(io_at(&path))?;
        sync_dir(dir).map_err(io_at(dir))?;
        info!(target: T_STORAGE, "created write-ahead log {}", path.display());
    }
    let buf = Bytes::from(fs::read(&path).map_err(io_at(&path))?);
    let (recovered, valid_len) = replay(&path, &buf)?;
    let (file, size) = if buf.starts_with(MAGIC_V1) {
        drop(file);
        convert_v1(&path, &recovered)?
    } else {
        if (valid_len as usize) < buf.len() {
            file.set_len(valid_len).map_err(io_at(&path))?;
            file.sync_all().map_err(io_at(&path))?;
        }
        (file, valid_len)
    };
    info!(
        target: T_STORAGE,
        "recovered {}: term {}, vote {:?}, {} entries",
        path.display(),
        recovered.hard_state.current_term,
        recovered.hard_state.voted_for,
        recovered.entries.len()
    );
    Ok((recovered, WalWriter { file, path, size, _lock: lock }))
}

/// Takes the exclusive lock on `<data_dir>/LOCK` and writes our pid into it.
fn lock_data_dir(data_dir: &Path) -> Result<File, WalError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |err| WalError::Io { path: path.clone(), err };
    // Not truncated on open: until we hold the lock, the pid in it is the holder's.
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(WalError::Locked { dir: data_dir.to_path_buf(), pid: holder.trim().parse().ok() });
        }
        Err(TryLockError::Error(err)) => return Err(io(err)),
    }
    file.set_len(0).map_err(io)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
    Ok(file)
}

/// Rewrites a replayed `RKVWAL01` file at `path` in the current format:
/// a temporary file, fsynced, renamed over `path`, directory fsynced.
/// Returns the new file opened for appending and its size.
fn convert_v1(path: &Path, rec: &Recovered) -> Result<(File, u64), WalError> {
    let tmp = path.with_extension("wal.convert");
    let dir = path.parent().expect("wal path has a parent");
    let io_at = |p: &Path| {
        let path = p.to_path_buf();
        move |err| WalError::Io { path, err }
    };
    let mut out = BytesMut::from(file_header());
    if rec.hard_state != HardState::default() || !rec.entries.is_empty() {
        let op =
            PersistOp { seq: 0, hard_state: Some(rec.hard_state), entries: rec.entries.clone(), ..Default::default() };
        encode_batch(&mut out, &[op]);
    }
    let out = out.freeze();
    // Never replace the old file with one that does not say the same thing.
    let (check, len) = replay(&tmp, &out)?;
    if check.hard_state != rec.hard_state || check.entries != rec.entries || len as usize != out.len() {
        return Err(WalError::Io {
            path: tmp,
            err: io::Error::other("the converted log does not replay to the recovered state (a bug); not converting"),
        });
    }
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&out).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_at(path))?;
    sync_dir(dir).map_err(io_at(dir))?;
    let file = OpenOptions::new().read(true).append(true).open(path).map_err(io_at(path))?;
    info!(
        target: T_STORAGE,
        "converted write-ahead log {} from format {} to {} ({} entries)",
        path.display(),
        String::from_utf8_lossy(MAGIC_V1),
        String::from_utf8_lossy(MAGIC),
        rec.entries.len()
    );
    Ok((file, out.len() as u64))
}

/// Replays `buf` (the whole file at `path`, header included); returns the
/// state and the length of the valid prefix (everything after it is a torn
/// tail to cut). Entry payloads are slices of `buf`, not copies.
pub fn replay(path: &Path, buf: &Bytes) -> Result<(Recovered, u64), WalError> {
    if buf.starts_with(MAGIC) {
        replay_batches(path, buf)
    } else if buf.starts_with(MAGIC_V1) {
        replay_v1(path, buf)
    } else if buf.starts_with(b"RKVWAL") && buf.len() >= MAGIC.len() {
        let found = String::from_utf8_lossy(&buf[..MAGIC.len()]).into_owned();
        Err(corrupt(path, 0, format!("unknown WAL format {found:?} (written by a newer raftkv?)")))
    } else {
        Err(corrupt(path, 0, "missing raftkv WAL header".into()))
    }
}

fn corrupt(path: &Path, offset: usize, reason: String) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, reason }
}

/// The current format: records are applied a batch at a time, when the
/// batch's commit marker is read.
fn replay_batches(path: &Path, buf: &Bytes) -> Result<(Recovered, u64), WalError> {
    let mut rec = Recovered::default();
    // End of the last complete batch: everything before it was acknowledged.
    let mut committed = MAGIC.len();
    // Records read since `committed`: (offset, kind, payload).
    let mut pending: Vec<(usize, u8, std::ops::Range<usize>)> = Vec::new();
    let mut pos = committed;
    let (bad, reason) = loop {
        if pos == buf.len() {
            if pending.is_empty() {
                return Ok((rec, pos as u64));
            }
            break (pos, format!("the file ends after {} records without their commit marker", pending.len()));
        }
        match parse_record(buf, pos) {
            Ok((KIND_COMMIT, payload, next)) => {
                // A CRC-valid marker is never the product of a torn write, so
                // a marker that does not describe its batch is corruption.
                let (count, bytes) = commit_payload(&buf[payload])
                    .ok_or_else(|| corrupt(path, pos, "malformed commit marker".into()))?;
                let (have_count, have_bytes) = (pending.len() as u64, (pos - committed) as u64);
                if (count, bytes) != (have_count, have_bytes) {
                    return Err(corrupt(
                        path,
                        pos,
                        format!(
                            "commit marker for {count} records of {bytes} bytes, but its batch has {have_count} \
                             records of {have_bytes} bytes"
                        ),
                    ));
                }
                for (at, kind, payload) in pending.drain(..) {
                    apply_record(&mut rec, kind, buf.slice(payload)).map_err(|reason| corrupt(path, at, reason))?;
                }
                committed = next;
                pos = next;
            }
            Ok((kind, payload, next)) => {
                pending.push((pos, kind, payload));
                pos = next;
            }
            Err(reason) => break (pos, reason),
        }
    };
    if let Some(marker) = find_commit_marker(buf, bad + 1, committed) {
        return Err(corrupt(path, bad, format!("{reason}, but a commit marker follows at offset {marker}")));
    }
    let torn = buf.len() - committed;
    warn!(
        target: T_STORAGE,
        "write-ahead log {}: cutting a torn tail of {torn} bytes at offset {committed}, after the last complete \
         batch ({reason} at offset {bad}, and no commit marker after it); it was never acknowledged",
        path.display()
    );
    rec.torn_bytes = torn as u64;
    Ok((rec, committed as u64))
}

/// The previous release's rule: records are applied as they are read; a bad
/// record with no valid record after it is a torn tail.
fn replay_v1(path: &Path, buf: &Bytes) -> Result<(Recovered, u64), WalError> {
    let mut rec = Recovered::default();
    let mut pos = MAGIC_V1.len();
    while pos < buf.len() {
        match parse_record(buf, pos) {
            Ok((kind, payload, next)) => {
                apply_record(&mut rec, kind, buf.slice(payload)).map_err(|reason| corrupt(path, pos, reason))?;
                pos = next;
            }
            Err(reason) => {
                if let Some(later) = find_valid_v1_record(buf, pos + 1) {
                    return Err(corrupt(path, pos, format!("{reason}, but a valid record follows at offset {later}")));
                }
                let torn = buf.len() - pos;
                warn!(
                    target: T_STORAGE,
                    "write-ahead log {} (format {}): cutting a torn tail of {torn} bytes at offset {pos} \
                     ({reason}); it was never acknowledged",
                    path.display(),
                    String::from_utf8_lossy(MAGIC_V1)
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

/// A commit marker's payload: (record count, byte length of the records).
fn commit_payload(payload: &[u8]) -> Option<(u64, u64)> {
    let payload: &[u8; COMMIT_BODY - 1] = payload.try_into().ok()?;
    Some((u64::from_le_bytes(payload[..8].try_into().unwrap()), u64::from_le_bytes(payload[8..].try_into().unwrap())))
}

/// The offset of the first CRC-valid commit marker at or after `from` that
/// could close a batch starting at or after `committed` (the end of the last
/// complete batch): evidence that something after the damage was acknowledged.
fn find_commit_marker(buf: &[u8], from: usize, committed: usize) -> Option<usize> {
    let last = buf.len().checked_sub(COMMIT_RECORD)?;
    let len = (COMMIT_BODY as u32).to_le_bytes();
    (from..=last).find(|&off| {
        buf[off..off + 4] == len
            && buf[off + HEADER] == KIND_COMMIT
            && parse_record(buf, off).is_ok()
            && commit_payload(&buf[off + HEADER + 1..off + COMMIT_RECORD])
                .is_some_and(|(_, bytes)| bytes <= (off - committed) as u64)
    })
}

/// `RKVWAL01`: the offset of the first well-formed record at or after `from`.
fn find_valid_v1_record(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(HEADER)).find(|&off| {
        let kind = buf.get(off + HEADER).copied();
        matches!(kind, Some(KIND_HARD_STATE | KIND_ENTRY | KIND_TRUNCATE)) && parse_record(buf, off).is_ok()
    })
}

fn apply_record(rec: &mut Recovered, kind: u8, payload: Bytes) -> Result<(), String> {
    let mut r = Reader::new(payload);
    let base = rec.snapshot.as_ref().map_or(0, |s| s.index);
    match kind {
        KIND_HARD_STATE => {
            let term = r.u64("term").map_err(|e| e.0)?;
            let vote = r.u64("vote").map_err(|e| e.0)?;
            rec.hard_state = HardState { current_term: term, voted_for: (vote != 0).then_some(vote) };
        }
        KIND_ENTRY => {
            let e = get_entry(&mut r).map_err(|e| e.0)?;
            let want = base + rec.entries.len() as Index + 1;
            if e.index != want {
                return Err(format!("log entry {} where entry {want} was expected", e.index));
            }
            rec.entries.push(e);
        }
        KIND_TRUNCATE => {
            let from = r.u64("truncate index").map_err(|e| e.0)?;
            let last = base + rec.entries.len() as Index;
            if from <= base || from > last + 1 {
                return Err(format!("truncation at {from} outside the log ({}..={last})", base + 1));
            }
            rec.entries.truncate((from - base - 1) as usize);
        }
        KIND_SNAPSHOT => {
            let meta = get_snapshot_meta(&mut r).map_err(|e| e.0)?;
            if meta.index <= base {
                return Err(format!("snapshot at {} does not follow the one at {base}", meta.index));
            }
            rec.entries.clear();
            rec.snapshot = Some(meta);
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

/// Encodes the records for `op`, in the order storage must apply them;
/// returns how many.
fn encode_op(out: &mut BytesMut, op: &PersistOp) -> u64 {
    let mut records = 0;
    if let Some(hs) = op.hard_state {
        put_record(out, KIND_HARD_STATE, |b| {
            b.put_u64_le(hs.current_term);
            b.put_u64_le(hs.voted_for.unwrap_or(0));
        });
        records += 1;
    }
    if let Some(meta) = &op.snapshot {
        put_record(out, KIND_SNAPSHOT, |b| put_snapshot_meta(b, meta));
        records += 1;
    }
    if let Some(from) = op.truncate_from {
        put_record(out, KIND_TRUNCATE, |b| b.put_u64_le(from));
        records += 1;
    }
    for e in &op.entries {
        put_record(out, KIND_ENTRY, |b| put_entry(b, e));
        records += 1;
    }
    records
}

/// Appends to `out` exactly the bytes [`WalWriter::append`] writes for
/// `ops`: their records, then the batch's commit marker. Pure: a file is
/// [`file_header`] followed by batches.
pub fn encode_batch(out: &mut BytesMut, ops: &[PersistOp]) {
    let start = out.len();
    let records: u64 = ops.iter().map(|op| encode_op(out, op)).sum();
    let bytes = (out.len() - start) as u64;
    put_record(out, KIND_COMMIT, |b| {
        b.put_u64_le(records);
        b.put_u64_le(bytes);
    });
}

/// Appends to the WAL. Owned by the storage actor's thread. Holds the data
/// directory's lock while it lives.
#[derive(Debug)]
pub struct WalWriter {
    file: File,
    path: PathBuf,
    size: u64,
    _lock: File,
}

impl WalWriter {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `ops` as one batch and makes it durable with a single
    /// fdatasync; the batch is acknowledged (complete) once its commit
    /// marker is on disk.
    pub fn append(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(4096);
        encode_batch(&mut buf, ops);
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// `fs::create_dir_all`, then fsyncs every directory it created and that
/// directory's parent, so the new entries survive a power loss. Returns the
/// directories it created, outermost first.
fn create_dir_durable(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(missing);
    }
    fs::create_dir_all(dir)?;
    missing.reverse();
    for d in &missing {
        sync_dir(d)?;
        sync_dir(d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    Ok(missing)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryData, SplitMix64};

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
            snapshot: None,
            truncate_from: trunc,
            entries,
        }
    }

    fn hs(term: u64, vote: u64) -> HardState {
        HardState { current_term: term, voted_for: (vote != 0).then_some(vote) }
    }

    fn batch(ops: &[PersistOp]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_batch(&mut b, ops);
        b.to_vec()
    }

    /// `file_header() ++ batches`.
    fn image(batches: &[Vec<u8>]) -> Vec<u8> {
        let mut f = file_header().to_vec();
        for b in batches {
            f.extend_from_slice(b);
        }
        f
    }

    fn replay_bytes(bytes: &[u8]) -> Result<(Recovered, u64), WalError> {
        replay(Path::new("test.wal"), &Bytes::copy_from_slice(bytes))
    }

    /// A record of the given kind, exactly as the writer frames one.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_record(&mut b, kind, |b| b.put_slice(payload));
        b.to_vec()
    }

    /// A file in the previous release's format: `RKVWAL01`, records, no markers.
    fn v1_image(ops: &[PersistOp]) -> Vec<u8> {
        let mut b = BytesMut::from(&MAGIC_V1[..]);
        for op in ops {
            encode_op(&mut b, op);
        }
        b.to_vec()
    }

    #[test]
    fn an_installed_snapshot_resets_the_log_and_later_records_follow_it() {
        let meta = SnapshotMeta { index: 8, term: 2, voters: vec![1, 2, 3] };
        let install = PersistOp {
            seq: 2,
            hard_state: Some(hs(3, 0)),
            snapshot: Some(meta.clone()),
            entries: vec![ent(9, 2, "i"), ent(10, 3, "j")],
            ..Default::default()
        };
        let file = image(&[
            batch(&[op(1, Some((2, 1)), None, (1..=5).map(|i| ent(i, 1, "x")).collect())]),
            batch(&[install]),
            batch(&[op(3, None, Some(10), vec![ent(10, 3, "J"), ent(11, 3, "k")])]),
        ]);
        let (rec, len) = replay_bytes(&file).unwrap();
        assert_eq!(len as usize, file.len());
        assert_eq!(rec.snapshot, Some(meta.clone()));
        assert_eq!(rec.hard_state, hs(3, 0));
        assert_eq!(rec.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![9, 10, 11]);
        assert_eq!(rec.entries[1].data, EntryData::Command(Bytes::from_static(b"J")));
        // Records that contradict the snapshot are corruption, not a torn tail.
        for bad in [
            op(3, None, Some(8), vec![]),             // truncation inside the snapshot
            op(3, None, None, vec![ent(13, 3, "z")]), // a gap after it
        ] {
            let mut f = file.clone();
            f.extend_from_slice(&batch(&[bad]));
            assert!(matches!(replay_bytes(&f), Err(WalError::Corrupt { .. })));
        }
        let mut older = file.clone();
        older.extend_from_slice(&batch(&[PersistOp { snapshot: Some(meta), ..Default::default() }]));
        let err = replay_bytes(&older).unwrap_err().to_string();
        assert!(err.contains("does not follow"), "{err}");
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
    fn append_writes_exactly_the_header_and_encode_batch_bytes() {
        let dir = tmpdir("encode");
        let ops1 = [op(1, Some((1, 1)), None, vec![ent(1, 1, "a")])];
        let ops2 = [op(2, None, None, vec![ent(2, 1, "b")]), op(3, Some((2, 0)), None, vec![])];
        let (_, mut w) = open(&dir).unwrap();
        w.append(&ops1).unwrap();
        w.append(&ops2).unwrap();
        let want = image(&[batch(&ops1), batch(&ops2)]);
        assert_eq!(w.size(), want.len() as u64);
        drop(w);
        assert_eq!(fs::read(wal_path(&dir)).unwrap(), want);
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
        let second = MAGIC.len() + record + COMMIT_RECORD;
        bytes[second + 10] ^= 0xFF; // inside the second batch's record
        fs::write(&path, &bytes).unwrap();
        let err = open(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("corrupt at offset"), "{msg}");
        assert!(!msg.contains("catch up from its peers"), "no unsafe advice: {msg}");
        assert!(msg.contains("Do not delete or empty the data directory"), "{msg}");
        assert!(matches!(err, WalError::Corrupt { offset, .. } if offset == second as u64), "{msg}");
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

    #[test]
    fn a_zero_filled_tail_after_the_last_complete_batch_is_cut() {
        let b1 = batch(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a")])]);
        let b2 = batch(&[op(2, None, None, vec![ent(2, 1, "b")])]);
        let good = image(&[b1, b2]);
        let want = vec![ent(1, 1, "a"), ent(2, 1, "b")];

        // Zeros straight after the last batch: the file grew, its pages never came.
        let mut f = good.clone();
        f.resize(good.len() + 8192, 0);
        let (rec, valid) = replay_bytes(&f).unwrap();
        assert_eq!(
            (rec.entries, rec.hard_state, rec.torn_bytes, valid),
            (want.clone(), hs(1, 1), 8192, good.len() as u64)
        );

        // The next batch spans pages; the middle one is a zero-filled hole and
        // the last page (records that parse, but not the marker) made it.
        let big = "v".repeat(3000);
        let b3 = batch(&[op(3, Some((2, 3)), None, vec![ent(3, 2, &big), ent(4, 2, &big), ent(5, 2, &big)])]);
        let mut tail = b3[..b3.len() - COMMIT_RECORD].to_vec();
        tail[1000..5096].fill(0);
        assert!(parse_record(&tail, tail.len() - (8 + 1 + 8 + 8 + 1 + 4 + 3000)).is_ok(), "a record after the hole");
        let mut f = good.clone();
        f.extend_from_slice(&tail);
        let (rec, valid) = replay_bytes(&f).unwrap();
        assert_eq!(rec.entries, want, "nothing of the incomplete batch is applied");
        assert_eq!(rec.hard_state, hs(1, 1));
        assert_eq!((rec.torn_bytes, valid), (tail.len() as u64, good.len() as u64));

        // Through open: the tail is cut on disk and the file stays usable.
        let dir = tmpdir("zeros");
        fs::create_dir_all(dir.join("wal")).unwrap();
        fs::write(wal_path(&dir), &f).unwrap();
        let (rec, mut w) = open(&dir).unwrap();
        assert_eq!(rec.entries, want);
        assert_eq!(fs::metadata(wal_path(&dir)).unwrap().len(), good.len() as u64);
        w.append(&[op(4, None, None, vec![ent(3, 2, "c")])]).unwrap();
        drop(w);
        assert_eq!(open(&dir).unwrap().0.entries.len(), 3);
    }

    #[test]
    fn random_garbage_after_the_last_complete_batch_is_cut() {
        let good = image(&[
            batch(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a"), ent(2, 1, "b")])]),
            batch(&[op(2, Some((2, 0)), None, vec![])]),
        ]);
        let mut rng = SplitMix64(7);
        for round in 0..300 {
            let len = 1 + (rng.next_u64() % 3000) as usize;
            let mut garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if round % 2 == 1 {
                // Garbage that happens to contain a record that parses (here,
                // stale-looking log entry); it has no commit marker after it.
                let stale = batch(&[op(9, None, None, vec![ent(3, 2, "stale")])]);
                let r = stale[..stale.len() - COMMIT_RECORD].to_vec();
                let at = (rng.next_u64() as usize) % (garbage.len() + 1);
                garbage.splice(at..at, r);
            }
            let mut f = good.clone();
            f.extend_from_slice(&garbage);
            let (rec, valid) = replay_bytes(&f).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(rec.entries, vec![ent(1, 1, "a"), ent(2, 1, "b")], "round {round}");
            assert_eq!(rec.hard_state, hs(2, 0), "round {round}");
            assert_eq!((rec.torn_bytes, valid), (garbage.len() as u64, good.len() as u64), "round {round}");
        }
    }

    #[test]
    fn a_batch_without_its_commit_marker_is_not_applied() {
        let b1 = batch(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a")])]);
        // Every record complete and CRC-valid, only the marker is missing.
        let b2 = batch(&[op(2, Some((2, 2)), Some(1), vec![ent(1, 2, "A"), ent(2, 2, "B")])]);
        let unmarked = &b2[..b2.len() - COMMIT_RECORD];
        for cut in [0, 5, COMMIT_RECORD - 1] {
            let mut f = image(std::slice::from_ref(&b1));
            f.extend_from_slice(unmarked);
            f.extend_from_slice(&b2[b2.len() - COMMIT_RECORD..][..cut]); // part of the marker, if any
            let (rec, valid) = replay_bytes(&f).unwrap();
            assert_eq!(rec.hard_state, hs(1, 1), "the vote of an unacknowledged batch is not applied");
            assert_eq!(rec.entries, vec![ent(1, 1, "a")], "nor its truncation and entries");
            assert_eq!(valid, (MAGIC.len() + b1.len()) as u64);
            assert_eq!(rec.torn_bytes, (unmarked.len() + cut) as u64);
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_complete_batch_is_corruption() {
        // The last batch is a single vote: acknowledged, so it must not be cut.
        let b1 = batch(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a")])]);
        let vote = batch(&[op(2, Some((2, 3)), None, vec![])]);
        let good = image(&[b1.clone(), vote.clone()]);
        let at = MAGIC.len() + b1.len();
        for i in 0..vote.len() - COMMIT_RECORD {
            for flip in [0x01, 0x80, 0xFF] {
                let mut f = good.clone();
                f[at + i] ^= flip;
                match replay_bytes(&f) {
                    Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, at as u64, "byte {i}"),
                    other => panic!("byte {i} ^ {flip:#x}: {other:?}"),
                }
            }
        }
        // Through open: refused, file untouched.
        let dir = tmpdir("lastbatch");
        fs::create_dir_all(dir.join("wal")).unwrap();
        let mut f = good.clone();
        f[at + HEADER + 3] ^= 0x10;
        fs::write(wal_path(&dir), &f).unwrap();
        let err = open(&dir).unwrap_err();
        assert!(err.to_string().contains("corrupt at offset"), "{err}");
        assert_eq!(fs::read(wal_path(&dir)).unwrap(), f);
    }

    #[test]
    fn a_commit_marker_that_does_not_match_its_batch_is_corruption() {
        let b1 = batch(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a")])]);
        let records = &b1[..b1.len() - COMMIT_RECORD];
        let marker = |count: u64, bytes: u64| {
            let mut p = count.to_le_bytes().to_vec();
            p.extend_from_slice(&bytes.to_le_bytes());
            record(KIND_COMMIT, &p)
        };
        assert_eq!(marker(2, records.len() as u64), b1[records.len()..], "the real marker");
        for bad in [marker(1, records.len() as u64), marker(2, records.len() as u64 - 1), record(KIND_COMMIT, &[0; 8])]
        {
            let mut f = image(&[records.to_vec(), bad]);
            f.extend_from_slice(&batch(&[op(2, None, None, vec![ent(2, 1, "b")])]));
            let at = (MAGIC.len() + records.len()) as u64;
            assert!(matches!(replay_bytes(&f), Err(WalError::Corrupt { offset, .. }) if offset == at));
        }
        // A complete batch whose records do not apply is corruption too.
        let gap = batch(&[op(2, None, None, vec![ent(5, 1, "gap")])]);
        let f = image(&[b1.clone(), gap]);
        let at = (MAGIC.len() + b1.len()) as u64;
        assert!(matches!(replay_bytes(&f), Err(WalError::Corrupt { offset, .. }) if offset == at));
    }

    #[test]
    fn every_prefix_of_the_next_batch_is_a_torn_tail() {
        let batches = [
            batch(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a"), ent(2, 1, "b")])]),
            batch(&[op(2, Some((2, 2)), Some(2), vec![ent(2, 2, "B")])]),
            batch(&[op(3, Some((3, 0)), None, vec![]), op(4, None, None, vec![ent(3, 3, "c"), ent(4, 3, "d")])]),
        ];
        let expected = [
            (HardState::default(), vec![]),
            (hs(1, 1), vec![ent(1, 1, "a"), ent(2, 1, "b")]),
            (hs(2, 2), vec![ent(1, 1, "a"), ent(2, 2, "B")]),
            (hs(3, 0), vec![ent(1, 1, "a"), ent(2, 2, "B"), ent(3, 3, "c"), ent(4, 3, "d")]),
        ];
        let f = image(&batches);
        let mut ends = vec![MAGIC.len()];
        for b in &batches {
            ends.push(ends.last().unwrap() + b.len());
        }
        for cut in MAGIC.len()..=f.len() {
            let complete = ends.iter().rposition(|&e| e <= cut).unwrap();
            let (rec, valid) = replay_bytes(&f[..cut]).unwrap_or_else(|e| panic!("prefix {cut}: {e}"));
            assert_eq!((&rec.hard_state, &rec.entries), (&expected[complete].0, &expected[complete].1), "prefix {cut}");
            assert_eq!(valid, ends[complete] as u64, "prefix {cut}");
            assert_eq!(rec.torn_bytes, (cut - ends[complete]) as u64, "prefix {cut}");
        }
    }

    #[test]
    fn an_old_format_file_is_read_and_converted() {
        let dir = tmpdir("v1");
        fs::create_dir_all(dir.join("wal")).unwrap();
        let path = wal_path(&dir);
        let mut old = v1_image(&[
            op(1, Some((1, 1)), None, vec![ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c")]),
            op(2, Some((2, 2)), Some(3), vec![ent(3, 2, "C")]),
        ]);
        old.extend_from_slice(&100u32.to_le_bytes()); // a torn last record, by the old rule
        old.extend_from_slice(&[0xAB; 14]);
        fs::write(&path, &old).unwrap();
        let want = vec![ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 2, "C")];

        let (rec, mut w) = open(&dir).unwrap();
        assert_eq!((rec.hard_state, &rec.entries, rec.torn_bytes), (hs(2, 2), &want, 18));
        let converted = fs::read(&path).unwrap();
        assert!(converted.starts_with(MAGIC), "rewritten in the new format");
        assert_eq!(w.size(), converted.len() as u64);
        let (again, valid) = replay_bytes(&converted).unwrap();
        assert_eq!((again.hard_state, &again.entries, again.torn_bytes), (hs(2, 2), &want, 0));
        assert_eq!(valid, converted.len() as u64);
        let names: Vec<_> = fs::read_dir(dir.join("wal")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_owned()], "no temporary file left");

        w.append(&[op(3, None, None, vec![ent(4, 2, "d")])]).unwrap();
        drop(w);
        let (rec, _) = open(&dir).unwrap();
        assert_eq!(rec.hard_state, hs(2, 2));
        assert_eq!(rec.entries.len(), 4);
        assert_eq!(rec.torn_bytes, 0);

        // An empty old file converts to an empty new one.
        let dir = tmpdir("v1-empty");
        fs::create_dir_all(dir.join("wal")).unwrap();
        fs::write(wal_path(&dir), MAGIC_V1).unwrap();
        let (rec, w) = open(&dir).unwrap();
        assert!(rec.entries.is_empty() && rec.hard_state == HardState::default());
        assert_eq!((fs::read(wal_path(&dir)).unwrap(), w.size()), (MAGIC.to_vec(), MAGIC.len() as u64));
    }

    #[test]
    fn a_corrupt_old_format_file_is_refused_and_not_converted() {
        let dir = tmpdir("v1-corrupt");
        fs::create_dir_all(dir.join("wal")).unwrap();
        let mut old = v1_image(&[op(1, Some((1, 1)), None, vec![ent(1, 1, "a"), ent(2, 1, "b")])]);
        old[MAGIC_V1.len() + 10] ^= 0xFF; // the hard state record, followed by valid entries
        fs::write(wal_path(&dir), &old).unwrap();
        assert!(matches!(open(&dir), Err(WalError::Corrupt { offset: 8, .. })));
        assert_eq!(fs::read(wal_path(&dir)).unwrap(), old);
    }

    #[test]
    fn a_second_open_of_a_data_dir_in_use_is_refused() {
        let dir = tmpdir("lock");
        let (_, mut w) = open(&dir).unwrap();
        let err = open(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WalError::Locked { pid: Some(p), .. } if p == std::process::id()), "{msg}");
        assert!(
            msg.contains(&format!("data directory {} is in use by another raftkv process", dir.display())),
            "{msg}"
        );
        w.append(&[op(1, None, None, vec![ent(1, 1, "a")])]).unwrap();
        drop(w); // releases the lock
        assert_eq!(open(&dir).unwrap().0.entries.len(), 1);
    }

    #[test]
    fn missing_directories_are_created_and_reported_for_syncing() {
        let root = tmpdir("mkdir");
        let created = create_dir_durable(&root.join("a/b")).unwrap();
        assert_eq!(created, vec![root.clone(), root.join("a"), root.join("a/b")]);
        assert!(root.join("a/b").is_dir());
        assert!(create_dir_durable(&root.join("a/b")).unwrap().is_empty());
        assert_eq!(create_dir_durable(&root.join("a/c")).unwrap(), vec![root.join("a/c")]);
    }
}
