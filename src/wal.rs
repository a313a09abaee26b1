//! The write-ahead log: file format, recovery, appends and purging (DESIGN
//! §4; the README's "Crash safety" is the reference for the rule below).
//!
//! # Segments
//!
//! The log is a run of segment files `<data-dir>/wal/{seq:020}.wal`
//! ([`segment_path`]), seq = 1, 2, 3, … without gaps; once old segments
//! have been purged the first one present is no longer 1. Replayed in seq
//! order the segments are one logical stream of batches, and a batch never
//! spans two files. Appends go to the last segment, the *active* one. When
//! an append leaves the active segment at or above the segment size
//! ([`DEFAULT_SEGMENT_BYTES`] unless the caller says otherwise), the writer
//! *rolls over*: it writes the next segment's header and start batch (see
//! below) in one write, fsyncs that file, fsyncs the directory, and appends
//! there from then on. So a segment is created only after every batch of
//! the one before it is durable, and is used only once its start batch is.
//! A data directory from before segments is a log of segment 1 alone.
//!
//! # Records and batches
//!
//! Each segment starts with the 8-byte magic `RKVWAL02` and holds a
//! sequence of records:
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE][kind: u8][payload: len-1 bytes]
//! ```
//!
//! `crc32` covers kind and payload. Kinds: 1 hard state (term, vote),
//! 2 log entry, 3 truncate-from, 4 commit marker, 5 snapshot installed
//! (index, term, configuration: the log now starts after that index), 6 base
//! (an index, u64 LE: the log's last index when the segment was started;
//! the entries that follow in the segment continue after it). Each persist
//! batch (one [`WalWriter::append`], one fdatasync, see [`encode_batch`])
//! is its records followed by a commit marker whose payload is the number
//! of records in the batch and their length in bytes (two u64 LE), so that
//! a batch is complete exactly when its marker is on disk. The records of a
//! batch are applied only once its marker has been read.
//!
//! Segment 1 holds only persist batches. Every later segment begins with a
//! *start batch* ([`encode_segment_start`]): a hard state record with the
//! hard state at the rollover, then a base record with the log's last index
//! at the rollover, then their commit marker.
//!
//! Replay rebuilds the hard state and the log, which is `base` (the index
//! before its first entry; 0 for a log that starts at 1) and the entries
//! after it. A hard state record replaces the hard state; an entry must be
//! `last + 1`; a truncation at `from` needs `base < from <= last + 1` and
//! leaves `from - 1` as the last entry; a snapshot at `i` needs `i > base`
//! and empties the log, with `base = i`. A base record with index `b` in
//! the start batch of the first segment replayed sets `base = b` (the
//! entries up to `b` were purged with the segments before it); anywhere
//! else `b` must equal the log's last index at that point. Every segment
//! after segment 1 must begin with a base record.
//!
//! # Purge
//!
//! [`WalWriter::purge`]`(upto)` says that the entries up to `upto` are
//! covered by a durable snapshot. It deletes segments oldest first, as long
//! as the next segment exists and its base is `<= upto`, and never the
//! active segment, fsyncing the directory after each deletion so that a
//! crash never leaves a gap in the run. Nothing a deleted segment held is
//! needed: its last hard state is repeated in the next segment's start
//! batch (or replaced after it); the entries it holds that are still in the
//! log are `<=` the next segment's base, so `<= upto`; and a snapshot
//! record in it is at an index `<=` that base. Recovery then starts at the
//! first segment left, whose start batch sets the hard state and the base.
//! The writer keeps every segment's base in memory (from replay and from
//! its rollovers), so purging reads no file.
//!
//! # Recovery
//!
//! Recovery decides from what was acknowledged. A batch is acknowledged
//! only after its fdatasync, i.e. after its marker is durable, so:
//!
//! * everything up to and including the last valid commit marker was
//!   acknowledged. A bad record (short header, bad length, checksum
//!   mismatch) with a CRC-valid commit marker anywhere after it, a commit
//!   marker whose count or length does not match the records before it, or
//!   a record of a complete batch that does not apply (an entry out of
//!   sequence, a truncation beyond the log, a base record that does not
//!   continue the log, an unknown kind) is *corruption*: the node refuses
//!   to start, naming the file and the offset, and leaves every file
//!   untouched;
//! * everything after the last valid commit marker of the *last* segment (a
//!   partial batch, a zero-filled or garbage tail that power loss leaves
//!   behind a multi-page write, even complete records whose batch has no
//!   marker) was never acknowledged: it is a *torn tail* and is cut off
//!   (truncate + fsync) with a warning.
//!
//! Across segments:
//!
//! * a gap in the seq numbers is corruption naming the missing file;
//! * a segment other than the last must end exactly after a complete batch
//!   (the next one was created only once it was durable): anything after
//!   its last complete batch is corruption, not a torn tail. So is a
//!   segment after segment 1 that does not begin with a base record;
//! * a last segment that is not the only one and has no complete start
//!   batch (shorter than the magic, zero-filled, the magic alone, or a torn
//!   start batch) is a crash during a rollover, before the segment was
//!   used: it is removed (directory fsynced) with a warning, and the
//!   segment before it is active again. The only segment left, if its seq
//!   is not 1, was complete before anything was purged, so there this is
//!   corruption.
//!
//! What this cannot tell apart: damage to the last batch's own commit
//! marker looks exactly like a crash before that marker reached the disk,
//! so that batch is cut as a torn tail.
//!
//! Files written by the previous release (magic `RKVWAL01`, no commit
//! markers, always a lone segment 1) are replayed with that release's rule
//! (a bad record with no valid record after it is a torn tail, otherwise
//! corruption) and then converted: the recovered state is written as one
//! batch to a new file under a temporary name, fsynced, renamed over the
//! old one, and the directory fsynced, so a crash at any point leaves one
//! complete file. An `RKVWAL01` segment next to other segments is
//! corruption.
//!
//! [`open`] also makes first start durable (every directory it creates is
//! fsynced, with its parent) and takes an exclusive lock on
//! `<data-dir>/LOCK` for the life of the process, so two processes never
//! write one data directory.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use log::{info, warn};

use crate::codec::{Reader, get_entry, get_snapshot_meta, put_entry, put_snapshot_meta};
use crate::raft::{Entry, HardState, Index, PersistOp, SnapshotMeta};

/// The first bytes of a WAL segment in the current format (batches framed
/// by commit markers).
pub const MAGIC: &[u8; 8] = b"RKVWAL02";
/// The format of the previous release (no commit markers): still read,
/// then converted to [`MAGIC`].
pub const MAGIC_V1: &[u8; 8] = b"RKVWAL01";
/// The lock file in the data directory; holds the owner's pid.
pub const LOCK_FILE: &str = "LOCK";
/// The size at which the writer starts a new segment, unless told otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
const KIND_HARD_STATE: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_COMMIT: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_BASE: u8 = 6;
/// Kind + record count (u64) + byte length of the batch's records (u64).
const COMMIT_BODY: usize = 1 + 8 + 8;
/// A whole commit marker record, header included.
const COMMIT_RECORD: usize = HEADER + COMMIT_BODY;
/// No single record is larger than this (a value is at most a few MiB).
const MAX_RECORD: usize = 256 << 20;
const T_STORAGE: &str = "raftkv::storage";

/// The bytes a new WAL segment starts with.
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
    /// `entries` continue after it. Gone once the segment that held it is
    /// purged (the node's own snapshot then covers it).
    pub snapshot: Option<SnapshotMeta>,
    /// The index before the first entry of `entries` (0 for a log that
    /// starts at 1): the last snapshot record's index, or the base of the
    /// first segment left after a purge, whichever came last.
    pub base: Index,
    pub entries: Vec<Entry>,
    /// Bytes cut off as a torn tail, plus those of a last segment removed
    /// because it was never completed, if any.
    pub torn_bytes: u64,
}

/// The path of segment 1 (the whole log of a data directory that never
/// rolled over).
pub fn wal_path(data_dir: &Path) -> PathBuf {
    segment_path(data_dir, 1)
}

/// The path of segment `seq` of the log in `data_dir`.
pub fn segment_path(data_dir: &Path, seq: u64) -> PathBuf {
    segment_in(&data_dir.join("wal"), seq)
}

fn segment_in(wal_dir: &Path, seq: u64) -> PathBuf {
    wal_dir.join(format!("{seq:020}.wal"))
}

/// The seq of a segment file name (`{seq:020}.wal`, seq >= 1).
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&seq| seq >= 1)
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> WalError + use<> {
    let path = p.to_path_buf();
    move |err| WalError::Io { path, err }
}

/// Locks `data_dir` (creating it if needed), opens (creating if needed)
/// the WAL under it, recovers its contents, and returns them with a writer
/// positioned at the end of the last segment, which starts a new segment
/// whenever an append leaves the active one at `segment_bytes` or more.
/// The writer holds the lock until it is dropped.
pub fn open(data_dir: &Path, segment_bytes: u64) -> Result<(Recovered, WalWriter), WalError> {
    create_dir_durable(data_dir).map_err(io_at(data_dir))?;
    let lock = lock_data_dir(data_dir)?;
    let dir = data_dir.join("wal");
    create_dir_durable(&dir).map_err(io_at(&dir))?;

    let mut seqs = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_at(&dir))? {
        let e = e.map_err(io_at(&dir))?;
        if let Some(seq) = e.file_name().to_str().and_then(parse_segment_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    if seqs.is_empty() || seqs == [1] {
        // First start (or a crash during it): segment 1 is the magic alone.
        let path = segment_in(&dir, 1);
        let mut file = OpenOptions::new().append(true).create(true).open(&path).map_err(io_at(&path))?;
        if file.metadata().map_err(io_at(&path))?.len() == 0 {
            file.write_all(file_header()).map_err(io_at(&path))?;
            file.sync_all().map_err(io_at(&path))?;
            sync_dir(&dir).map_err(io_at(&dir))?;
            info!(target: T_STORAGE, "created write-ahead log {}", path.display());
        }
        seqs = vec![1];
    }
    let mut files = Vec::with_capacity(seqs.len());
    for &seq in &seqs {
        let path = segment_in(&dir, seq);
        let buf = Bytes::from(fs::read(&path).map_err(io_at(&path))?);
        files.push((seq, path, buf));
    }

    // Nothing is changed on disk before the whole log has replayed.
    let Replayed { recovered, segments, dropped } = replay_segments(&files)?;
    if let Some(seq) = dropped {
        let path = segment_in(&dir, seq);
        fs::remove_file(&path).map_err(io_at(&path))?;
        sync_dir(&dir).map_err(io_at(&dir))?;
    }
    let active = segments.last().expect("replay keeps at least one segment");
    let path = segment_in(&dir, active.seq);
    let (file, size) = if files.len() == 1 && files[0].2.starts_with(MAGIC_V1) {
        convert_v1(&path, &recovered)?
    } else {
        let file = OpenOptions::new().read(true).append(true).open(&path).map_err(io_at(&path))?;
        if active.valid_len < active.len {
            file.set_len(active.valid_len).map_err(io_at(&path))?;
            file.sync_all().map_err(io_at(&path))?;
        }
        (file, active.valid_len)
    };
    let mut kept: VecDeque<Segment> =
        segments.iter().map(|s| Segment { seq: s.seq, base: s.base, bytes: s.valid_len }).collect();
    kept.back_mut().expect("an active segment").bytes = size;
    let last_index = recovered.base + recovered.entries.len() as Index;
    info!(
        target: T_STORAGE,
        "recovered {} ({} segments from {}): term {}, vote {:?}, {} entries after {}",
        dir.display(),
        kept.len(),
        kept[0].seq,
        recovered.hard_state.current_term,
        recovered.hard_state.voted_for,
        recovered.entries.len(),
        recovered.base
    );
    let writer = WalWriter {
        file,
        dir,
        path,
        segment_bytes,
        segments: kept,
        hard_state: recovered.hard_state,
        last_index,
        _lock: lock,
    };
    Ok((recovered, writer))
}

/// Takes the exclusive lock on `<data_dir>/LOCK` and writes our pid into it.
/// Whether another process holds the lock of `data_dir` (creates
/// nothing; `None` when there is no lock file or nobody holds it): the
/// error that process would be refused with, naming the holder.
pub fn data_dir_in_use(data_dir: &Path) -> Option<WalError> {
    let mut file = OpenOptions::new().read(true).open(data_dir.join(LOCK_FILE)).ok()?;
    match file.try_lock() {
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Some(WalError::Locked { dir: data_dir.to_path_buf(), pid: holder.trim().parse().ok() })
        }
        _ => None,
    }
}

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

/// Replays `buf`, one whole segment at `path` (header included) and the
/// only one: a base record in its first batch sets the log's base. Returns
/// the state and the length of the valid prefix (everything after it is a
/// torn tail to cut). Entry payloads are slices of `buf`, not copies.
pub fn replay(path: &Path, buf: &Bytes) -> Result<(Recovered, u64), WalError> {
    if buf.starts_with(MAGIC_V1) {
        return replay_v1(path, buf);
    }
    check_magic(path, buf)?;
    let mut rec = Recovered::default();
    let scan = scan_batches(path, buf, &mut rec, true)?;
    if let Some((bad, reason)) = &scan.torn {
        warn_torn(path, buf.len(), scan.valid_len, *bad, reason);
        rec.torn_bytes = (buf.len() - scan.valid_len) as u64;
    }
    Ok((rec, scan.valid_len as u64))
}

/// A segment that [`replay_segments`] kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReplay {
    pub seq: u64,
    /// The log's last index when the segment was started (its base
    /// record); 0 for segment 1.
    pub base: Index,
    /// Length of the valid prefix: less than `len` only for the last
    /// segment, whose torn tail is to be cut there.
    pub valid_len: u64,
    pub len: u64,
}

/// What [`replay_segments`] found.
#[derive(Debug)]
pub struct Replayed {
    pub recovered: Recovered,
    /// The segments that hold the log, oldest first; the last is the active one.
    pub segments: Vec<SegmentReplay>,
    /// The seq of a last segment that a crash during a rollover left
    /// without a complete start batch: to be removed.
    pub dropped: Option<u64>,
}

/// Replays the segments of one log, `(seq, path, whole file)` in seq order,
/// as one stream, by the rules in the module documentation. Decides only:
/// nothing is written or removed.
pub fn replay_segments(segments: &[(u64, PathBuf, Bytes)]) -> Result<Replayed, WalError> {
    let mut out = Replayed { recovered: Recovered::default(), segments: Vec::new(), dropped: None };
    for pair in segments.windows(2) {
        let ((a, path, _), (b, _, _)) = (&pair[0], &pair[1]);
        if *b != a + 1 {
            let missing = path.with_file_name(format!("{:020}.wal", a + 1));
            return Err(corrupt(
                &missing,
                0,
                format!("the segment is missing: the log has segments {a} and {b} but nothing between them"),
            ));
        }
    }
    let rec = &mut out.recovered;
    for (i, (seq, path, buf)) in segments.iter().enumerate() {
        let (first, last) = (i == 0, i + 1 == segments.len());
        let len = buf.len() as u64;
        if buf.starts_with(MAGIC_V1) {
            if segments.len() == 1 && *seq == 1 {
                let (r, valid_len) = replay_v1(path, buf)?;
                out.recovered = r;
                out.segments.push(SegmentReplay { seq: *seq, base: 0, valid_len, len });
                return Ok(out);
            }
            return Err(corrupt(
                path,
                0,
                format!("a segment in format {} in a log of several segments", String::from_utf8_lossy(MAGIC_V1)),
            ));
        }
        // A last segment that a rollover never finished: the magic or the
        // start batch did not reach the disk (zeros, or nothing at all).
        let unfinished = buf.len() < MAGIC.len() || (!buf.starts_with(MAGIC) && buf.iter().all(|&b| b == 0));
        if last && !first && unfinished {
            drop_unfinished(path, buf.len(), "its header is incomplete");
            rec.torn_bytes = len;
            out.dropped = Some(*seq);
            break;
        }
        check_magic(path, buf)?;
        let scan = scan_batches(path, buf, rec, first)?;
        if last && !first && scan.batches == 0 {
            // Nothing was applied: the start batch is the first batch.
            drop_unfinished(path, buf.len(), "its start batch is incomplete");
            rec.torn_bytes = len;
            out.dropped = Some(*seq);
            break;
        }
        let base = match scan.base {
            Some(b) => b,
            None if *seq == 1 => 0,
            None => {
                return Err(corrupt(path, MAGIC.len(), "the segment does not begin with a base record".into()));
            }
        };
        if let Some((bad, reason)) = &scan.torn {
            if !last {
                return Err(corrupt(
                    path,
                    *bad,
                    format!(
                        "{reason}, in a segment that is not the last one (only the last segment can end in a \
                         torn tail)"
                    ),
                ));
            }
            warn_torn(path, buf.len(), scan.valid_len, *bad, reason);
            rec.torn_bytes = len - scan.valid_len as u64;
        }
        out.segments.push(SegmentReplay { seq: *seq, base, valid_len: scan.valid_len as u64, len });
    }
    Ok(out)
}

fn drop_unfinished(path: &Path, len: usize, why: &str) {
    warn!(
        target: T_STORAGE,
        "write-ahead log {}: removing this last segment ({len} bytes): {why}, so a crash interrupted its \
         creation before anything was written to it; the segment before it is active again",
        path.display()
    );
}

fn warn_torn(path: &Path, len: usize, committed: usize, bad: usize, reason: &str) {
    let torn = len - committed;
    warn!(
        target: T_STORAGE,
        "write-ahead log {}: cutting a torn tail of {torn} bytes at offset {committed}, after the last complete \
         batch ({reason} at offset {bad}, and no commit marker after it); it was never acknowledged",
        path.display()
    );
}

fn check_magic(path: &Path, buf: &[u8]) -> Result<(), WalError> {
    if buf.starts_with(MAGIC) {
        Ok(())
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

/// What scanning one segment's batches found.
struct Scan {
    /// End of the last complete batch: everything before it was acknowledged.
    valid_len: usize,
    /// Complete batches applied.
    batches: usize,
    /// The index of a base record in the segment's first batch.
    base: Option<Index>,
    /// Damage after the last complete batch, with no commit marker after
    /// it: (offset, what). Everything from `valid_len` on is a torn tail.
    torn: Option<(usize, String)>,
}

/// How a base record applies.
#[derive(Clone, Copy)]
enum BaseRule {
    /// It starts the log: the first batch of the first segment replayed.
    Sets,
    /// It must equal the log's last index.
    Continues,
    /// Not part of the format (`RKVWAL01`).
    Unknown,
}

/// The current format: applies to `rec` the complete batches of the
/// segment in `buf` (magic already checked), a batch at a time, when its
/// commit marker is read. `first`: this is the first segment replayed.
fn scan_batches(path: &Path, buf: &Bytes, rec: &mut Recovered, first: bool) -> Result<Scan, WalError> {
    let mut scan = Scan { valid_len: MAGIC.len(), batches: 0, base: None, torn: None };
    // Records read since `valid_len`: (offset, kind, payload).
    let mut pending: Vec<(usize, u8, std::ops::Range<usize>)> = Vec::new();
    let mut pos = scan.valid_len;
    let (bad, reason) = loop {
        if pos == buf.len() {
            if pending.is_empty() {
                return Ok(scan);
            }
            break (pos, format!("the file ends after {} records without their commit marker", pending.len()));
        }
        match parse_record(buf, pos) {
            Ok((KIND_COMMIT, payload, next)) => {
                // A CRC-valid marker is never the product of a torn write, so
                // a marker that does not describe its batch is corruption.
                let (count, bytes) = commit_payload(&buf[payload])
                    .ok_or_else(|| corrupt(path, pos, "malformed commit marker".into()))?;
                let (have_count, have_bytes) = (pending.len() as u64, (pos - scan.valid_len) as u64);
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
                let rule = if first && scan.batches == 0 { BaseRule::Sets } else { BaseRule::Continues };
                for (at, kind, payload) in pending.drain(..) {
                    let base = apply_record(rec, kind, buf.slice(payload), rule)
                        .map_err(|reason| corrupt(path, at, reason))?;
                    if scan.batches == 0 && base.is_some() {
                        scan.base = base;
                    }
                }
                scan.batches += 1;
                scan.valid_len = next;
                pos = next;
            }
            Ok((kind, payload, next)) => {
                pending.push((pos, kind, payload));
                pos = next;
            }
            Err(reason) => break (pos, reason),
        }
    };
    if let Some(marker) = find_commit_marker(buf, bad + 1, scan.valid_len) {
        return Err(corrupt(path, bad, format!("{reason}, but a commit marker follows at offset {marker}")));
    }
    scan.torn = Some((bad, reason));
    Ok(scan)
}

/// The previous release's rule: records are applied as they are read; a bad
/// record with no valid record after it is a torn tail.
fn replay_v1(path: &Path, buf: &Bytes) -> Result<(Recovered, u64), WalError> {
    let mut rec = Recovered::default();
    let mut pos = MAGIC_V1.len();
    while pos < buf.len() {
        match parse_record(buf, pos) {
            Ok((kind, payload, next)) => {
                apply_record(&mut rec, kind, buf.slice(payload), BaseRule::Unknown)
                    .map_err(|reason| corrupt(path, pos, reason))?;
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

/// Applies one record to the replayed state; returns the index of a base
/// record.
fn apply_record(rec: &mut Recovered, kind: u8, payload: Bytes, rule: BaseRule) -> Result<Option<Index>, String> {
    let mut r = Reader::new(payload);
    let base = rec.base;
    let last = base + rec.entries.len() as Index;
    let mut found = None;
    match kind {
        KIND_HARD_STATE => {
            let term = r.u64("term").map_err(|e| e.0)?;
            let vote = r.u64("vote").map_err(|e| e.0)?;
            rec.hard_state = HardState { current_term: term, voted_for: (vote != 0).then_some(vote) };
        }
        KIND_ENTRY => {
            let e = get_entry(&mut r).map_err(|e| e.0)?;
            if e.index != last + 1 {
                return Err(format!("log entry {} where entry {} was expected", e.index, last + 1));
            }
            rec.entries.push(e);
        }
        KIND_TRUNCATE => {
            let from = r.u64("truncate index").map_err(|e| e.0)?;
            if from <= base || from > last + 1 {
                return Err(format!("truncation at {from} outside the log ({}..={last})", base + 1));
            }
            rec.entries.truncate((from - base - 1) as usize);
        }
        KIND_SNAPSHOT => {
            let meta = get_snapshot_meta(&mut r).map_err(|e| e.0)?;
            if meta.index <= base {
                return Err(format!("snapshot at {} does not follow the log's base {base}", meta.index));
            }
            rec.entries.clear();
            rec.base = meta.index;
            rec.snapshot = Some(meta);
        }
        KIND_BASE if !matches!(rule, BaseRule::Unknown) => {
            let b = r.u64("base index").map_err(|e| e.0)?;
            match rule {
                BaseRule::Sets if rec.entries.is_empty() => rec.base = b,
                BaseRule::Sets => return Err(format!("a base record ({b}) after log entries")),
                _ if b != last => {
                    return Err(format!("segment base {b} does not continue the log, which ends at {last}"));
                }
                _ => {}
            }
            found = Some(b);
        }
        k => return Err(format!("unknown record kind {k}")),
    }
    r.finish("record").map_err(|e| e.0)?;
    Ok(found)
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

fn put_hard_state(out: &mut BytesMut, hs: &HardState) {
    put_record(out, KIND_HARD_STATE, |b| {
        b.put_u64_le(hs.current_term);
        b.put_u64_le(hs.voted_for.unwrap_or(0));
    });
}

/// Encodes the records for `op`, in the order storage must apply them;
/// returns how many.
fn encode_op(out: &mut BytesMut, op: &PersistOp) -> u64 {
    let mut records = 0;
    if let Some(hs) = &op.hard_state {
        put_hard_state(out, hs);
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

/// Closes the batch whose `records` records start at `start` in `out`.
fn put_commit(out: &mut BytesMut, start: usize, records: u64) {
    let bytes = (out.len() - start) as u64;
    put_record(out, KIND_COMMIT, |b| {
        b.put_u64_le(records);
        b.put_u64_le(bytes);
    });
}

/// Appends to `out` exactly the bytes [`WalWriter::append`] writes for
/// `ops`: their records, then the batch's commit marker. Pure: a segment
/// is [`file_header`], for segments after the first the
/// [`encode_segment_start`] batch, then batches.
pub fn encode_batch(out: &mut BytesMut, ops: &[PersistOp]) {
    let start = out.len();
    let records: u64 = ops.iter().map(|op| encode_op(out, op)).sum();
    put_commit(out, start, records);
}

/// Appends to `out` the start batch of a new segment: the hard state, the
/// base record (`last_index`, the log's last index at the rollover), and
/// their commit marker.
pub fn encode_segment_start(out: &mut BytesMut, hard_state: &HardState, last_index: Index) {
    let start = out.len();
    put_hard_state(out, hard_state);
    put_record(out, KIND_BASE, |b| b.put_u64_le(last_index));
    put_commit(out, start, 2);
}

/// What [`WalWriter::purge`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub segments: usize,
    pub bytes: u64,
}

/// One segment of the log, as the writer knows it.
#[derive(Clone, Debug)]
struct Segment {
    seq: u64,
    /// The log's last index when the segment was started (0 for segment 1).
    base: Index,
    bytes: u64,
}

/// Appends to the WAL. Owned by the storage actor's thread. Holds the data
/// directory's lock while it lives.
#[derive(Debug)]
pub struct WalWriter {
    /// The active segment, open for appending.
    file: File,
    /// `<data-dir>/wal`.
    dir: PathBuf,
    /// The active segment's path.
    path: PathBuf,
    segment_bytes: u64,
    /// Every segment on disk, oldest first; the last is the active one.
    segments: VecDeque<Segment>,
    /// The hard state and the log's last index as the log on disk
    /// describes them (what a new segment's start batch repeats).
    hard_state: HardState,
    last_index: Index,
    _lock: File,
}

impl WalWriter {
    /// The active segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The active segment's size in bytes.
    pub fn size(&self) -> u64 {
        self.active().bytes
    }

    /// The size of all segments in bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// How many segment files the log has.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("the writer always has an active segment")
    }

    /// Writes `ops` as one batch and makes it durable with a single
    /// fdatasync; the batch is acknowledged (complete) once its commit
    /// marker is on disk. Then, if the active segment has reached the
    /// segment size, starts the next one (an error there comes after the
    /// batch was made durable).
    pub fn append(&mut self, ops: &[PersistOp]) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(4096);
        encode_batch(&mut buf, ops);
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.segments.back_mut().expect("an active segment").bytes += buf.len() as u64;
        for op in ops {
            // The rules replay applies.
            if let Some(hs) = op.hard_state {
                self.hard_state = hs;
            }
            if let Some(meta) = &op.snapshot {
                self.last_index = meta.index;
            }
            if let Some(from) = op.truncate_from {
                self.last_index = from - 1;
            }
            if let Some(e) = op.entries.last() {
                self.last_index = e.index;
            }
        }
        if self.size() >= self.segment_bytes {
            self.roll_over()?;
        }
        Ok(())
    }

    /// Starts the next segment: header and start batch, fsynced, then the
    /// directory fsynced; only then does it become the active segment.
    fn roll_over(&mut self) -> io::Result<()> {
        let seq = self.active().seq + 1;
        let path = segment_in(&self.dir, seq);
        let mut buf = BytesMut::from(file_header());
        encode_segment_start(&mut buf, &self.hard_state, self.last_index);
        let mut file = OpenOptions::new().read(true).append(true).create_new(true).open(&path)?;
        let written = file.write_all(&buf).and_then(|()| file.sync_all()).and_then(|()| sync_dir(&self.dir));
        if let Err(e) = written {
            // Never used: the old segment stays active (and recovery would
            // drop this one if it survived unfinished).
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        info!(
            target: T_STORAGE,
            "started write-ahead log segment {} after index {} ({} bytes in {} segments)",
            path.display(),
            self.last_index,
            self.disk_bytes() + buf.len() as u64,
            self.segments.len() + 1
        );
        self.file = file;
        self.path = path;
        self.segments.push_back(Segment { seq, base: self.last_index, bytes: buf.len() as u64 });
        Ok(())
    }

    /// The log entries up to `upto` are covered by a durable snapshot:
    /// deletes the oldest segments, oldest first, as long as the next
    /// segment's base is `<= upto` (every entry of the deleted one is `<=
    /// upto`), never the active segment. The directory is fsynced after
    /// each deletion, so a crash leaves no gap.
    pub fn purge(&mut self, upto: Index) -> io::Result<Purged> {
        let mut purged = Purged::default();
        while self.segments.len() > 1 && self.segments[1].base <= upto {
            let oldest = &self.segments[0];
            let path = segment_in(&self.dir, oldest.seq);
            fs::remove_file(&path)?;
            purged.segments += 1;
            purged.bytes += oldest.bytes;
            self.segments.pop_front();
            sync_dir(&self.dir)?;
        }
        if purged.segments > 0 {
            info!(
                target: T_STORAGE,
                "purged {} write-ahead log segments ({} bytes) up to index {upto}; the log starts after {}",
                purged.segments,
                purged.bytes,
                self.segments[0].base
            );
        }
        Ok(purged)
    }
}

/// `fs::create_dir_all`, then fsyncs every directory it created and that
/// directory's parent, so the new entries survive a power loss. Returns the
/// directories it created, outermost first.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<Vec<PathBuf>> {
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

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryData, Membership, SplitMix64};

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
        let meta = SnapshotMeta { index: 8, term: 2, membership: Membership::from_voters([1, 2, 3]) };
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
        let (rec, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        assert!(rec.entries.is_empty());
        w.append(&[op(1, Some((3, 2)), None, vec![ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c")])]).unwrap();
        w.append(&[op(2, Some((4, 0)), Some(2), vec![ent(2, 4, "B")])]).unwrap();
        drop(w);
        let (rec, _) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.hard_state, HardState { current_term: 4, voted_for: None });
        assert_eq!(rec.entries, vec![ent(1, 1, "a"), ent(2, 4, "B")]);
        assert_eq!(rec.torn_bytes, 0);
    }

    #[test]
    fn append_writes_exactly_the_header_and_encode_batch_bytes() {
        let dir = tmpdir("encode");
        let ops1 = [op(1, Some((1, 1)), None, vec![ent(1, 1, "a")])];
        let ops2 = [op(2, None, None, vec![ent(2, 1, "b")]), op(3, Some((2, 0)), None, vec![])];
        let (_, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
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
        let (_, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        w.append(&[op(1, None, None, vec![ent(1, 1, "keep")])]).unwrap();
        let good = w.size();
        w.append(&[op(2, None, None, vec![ent(2, 1, "half-written")])]).unwrap();
        drop(w);
        let path = wal_path(&dir);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(good + 11).unwrap(); // a crash in the middle of the second record
        let (rec, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.entries, vec![ent(1, 1, "keep")]);
        assert_eq!(rec.torn_bytes, 11);
        assert_eq!(fs::metadata(&path).unwrap().len(), good, "tail cut on disk");
        w.append(&[op(3, None, None, vec![ent(2, 2, "after")])]).unwrap();
        drop(w);
        assert_eq!(open(&dir, DEFAULT_SEGMENT_BYTES).unwrap().0.entries.len(), 2);
    }

    #[test]
    fn corruption_in_the_middle_refuses_with_file_and_offset() {
        let dir = tmpdir("corrupt");
        let (_, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
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
        let err = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap_err();
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
        let (_, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        for i in 1..=4 {
            w.append(&[op(i, None, None, vec![ent(i, 1, "x")])]).unwrap();
        }
        drop(w);
        let path = wal_path(&dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(open(&dir, DEFAULT_SEGMENT_BYTES), Err(WalError::Corrupt { offset: 8, .. })));
    }

    #[test]
    fn a_file_that_is_not_a_wal_is_refused() {
        let dir = tmpdir("magic");
        fs::create_dir_all(dir.join("wal")).unwrap();
        fs::write(wal_path(&dir), b"hello world, not a wal").unwrap();
        assert!(matches!(open(&dir, DEFAULT_SEGMENT_BYTES), Err(WalError::Corrupt { offset: 0, .. })));
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
        let (rec, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.entries, want);
        assert_eq!(fs::metadata(wal_path(&dir)).unwrap().len(), good.len() as u64);
        w.append(&[op(4, None, None, vec![ent(3, 2, "c")])]).unwrap();
        drop(w);
        assert_eq!(open(&dir, DEFAULT_SEGMENT_BYTES).unwrap().0.entries.len(), 3);
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
        let err = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap_err();
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

        let (rec, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
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
        let (rec, _) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.hard_state, hs(2, 2));
        assert_eq!(rec.entries.len(), 4);
        assert_eq!(rec.torn_bytes, 0);

        // An empty old file converts to an empty new one.
        let dir = tmpdir("v1-empty");
        fs::create_dir_all(dir.join("wal")).unwrap();
        fs::write(wal_path(&dir), MAGIC_V1).unwrap();
        let (rec, w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
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
        assert!(matches!(open(&dir, DEFAULT_SEGMENT_BYTES), Err(WalError::Corrupt { offset: 8, .. })));
        assert_eq!(fs::read(wal_path(&dir)).unwrap(), old);
    }

    #[test]
    fn a_second_open_of_a_data_dir_in_use_is_refused() {
        let dir = tmpdir("lock");
        let (_, mut w) = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap();
        let err = open(&dir, DEFAULT_SEGMENT_BYTES).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WalError::Locked { pid: Some(p), .. } if p == std::process::id()), "{msg}");
        assert!(
            msg.contains(&format!("data directory {} is in use by another raftkv process", dir.display())),
            "{msg}"
        );
        w.append(&[op(1, None, None, vec![ent(1, 1, "a")])]).unwrap();
        drop(w); // releases the lock
        assert_eq!(open(&dir, DEFAULT_SEGMENT_BYTES).unwrap().0.entries.len(), 1);
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

    // ---- segments and purge ----

    /// The seqs of the segment files in `dir`, sorted.
    fn seqs_on_disk(dir: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(dir.join("wal"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str().and_then(parse_segment_name))
            .collect();
        v.sort_unstable();
        v
    }

    /// The same ops as one unsegmented file, replayed.
    fn reference(ops: &[PersistOp]) -> Recovered {
        let batches: Vec<Vec<u8>> = ops.iter().map(|o| batch(std::slice::from_ref(o))).collect();
        let (rec, valid) = replay_bytes(&image(&batches)).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(valid as usize, image(&batches).len());
        rec
    }

    /// Entries, hard-state changes and truncations, each op consistent with
    /// the ones before it (as `PersistOp` promises).
    fn workload(seqs: std::ops::Range<u64>, mut last: Index, mut term: u64) -> (Vec<PersistOp>, Index, u64) {
        let mut ops = Vec::new();
        for i in seqs {
            if i % 7 == 0 {
                term += 1;
                ops.push(op(i, Some((term, i % 3)), None, vec![]));
            } else if i % 11 == 0 && last >= 3 {
                let from = last - 2;
                ops.push(op(i, Some((term, 1)), Some(from), vec![ent(from, term, &format!("rewrite {i}"))]));
                last = from;
            } else {
                let n = 1 + i % 3;
                let es = (last + 1..=last + n).map(|x| ent(x, term, &format!("value {i}/{x}"))).collect();
                ops.push(op(i, None, None, es));
                last += n;
            }
        }
        (ops, last, term)
    }

    /// What the writer's bookkeeping says, checked against the files.
    fn check_accounting(dir: &Path, w: &WalWriter) {
        let on_disk = seqs_on_disk(dir);
        let known: Vec<u64> = w.segments.iter().map(|s| s.seq).collect();
        assert_eq!(on_disk, known);
        assert_eq!(w.segments(), on_disk.len());
        let sizes: Vec<u64> = on_disk.iter().map(|&s| fs::metadata(segment_path(dir, s)).unwrap().len()).collect();
        assert_eq!(w.disk_bytes(), sizes.iter().sum::<u64>());
        assert_eq!(w.size(), *sizes.last().unwrap());
        assert_eq!(w.path(), segment_path(dir, *on_disk.last().unwrap()));
    }

    #[test]
    fn segments_roll_over_and_replay_like_one_file() {
        for segment_bytes in [1, 200, 1000] {
            let dir = tmpdir(&format!("roll-{segment_bytes}"));
            let (first, last, term) = workload(1..40, 0, 1);
            let (second, _, _) = workload(40..90, last, term);
            let all: Vec<PersistOp> = first.iter().chain(&second).cloned().collect();

            let (_, mut w) = open(&dir, segment_bytes).unwrap();
            // The base each segment must have: the log's last index when it started.
            let mut want_bases = vec![0];
            let mut replayed = Vec::new();
            for (half, ops) in [&first, &second].into_iter().enumerate() {
                if half == 1 {
                    // The writer's hard state and last index come from recovery.
                    drop(w);
                    let (rec, w2) = open(&dir, segment_bytes).unwrap();
                    let want = reference(&first);
                    assert_eq!((rec.hard_state, &rec.entries, rec.base), (want.hard_state, &want.entries, 0));
                    w = w2;
                }
                for o in ops {
                    let before = w.segments();
                    w.append(std::slice::from_ref(o)).unwrap();
                    replayed.push(o.clone());
                    let now = reference(&replayed);
                    if w.segments() > before {
                        assert_eq!(w.segments(), before + 1, "at most one rollover per append");
                        want_bases.push(now.base + now.entries.len() as Index);
                    }
                }
            }
            check_accounting(&dir, &w);
            assert!(w.segments() >= 4, "segment_bytes {segment_bytes}: only {} segments", w.segments());
            assert_eq!(w.segments.iter().map(|s| s.base).collect::<Vec<_>>(), want_bases);
            for s in w.segments.iter().take(w.segments() - 1) {
                let len = fs::metadata(segment_path(&dir, s.seq)).unwrap().len();
                assert!(len >= segment_bytes, "segment {} closed at {len} bytes", s.seq);
            }
            if segment_bytes == 1 {
                // Every segment after the first: magic, start batch, then the
                // one batch that filled it.
                let (hs, base) = (w.hard_state, w.last_index);
                let mut start = BytesMut::from(file_header());
                encode_segment_start(&mut start, &hs, base);
                assert_eq!(fs::read(w.path()).unwrap(), start.to_vec(), "the active segment is its start batch");
            }
            drop(w);

            let want = reference(&all);
            let (rec, w) = open(&dir, segment_bytes).unwrap();
            assert_eq!(rec.hard_state, want.hard_state, "segment_bytes {segment_bytes}");
            assert_eq!(rec.entries, want.entries, "segment_bytes {segment_bytes}");
            assert_eq!((rec.base, rec.torn_bytes, rec.snapshot), (0, 0, None));
            assert_eq!(w.segments.iter().map(|s| s.base).collect::<Vec<_>>(), want_bases, "bases learned in replay");
            check_accounting(&dir, &w);
        }
    }

    #[test]
    fn purge_deletes_exactly_the_segments_whose_entries_are_all_covered() {
        let dir = tmpdir("purge");
        let (_, mut w) = open(&dir, 300).unwrap();
        // The hard state is written once, at the start: after the purge it
        // survives only in the start batches.
        let mut ops = vec![op(1, Some((5, 2)), None, vec![ent(1, 5, "first")])];
        let mut last = 1;
        for i in 2..60 {
            let n = 1 + i % 4;
            ops.push(op(i, None, None, (last + 1..=last + n).map(|x| ent(x, 5, &format!("v{x}"))).collect()));
            last += n;
        }
        for o in &ops {
            w.append(std::slice::from_ref(o)).unwrap();
        }
        assert!(w.segments() > 6);
        let want = reference(&ops);

        // The entries each segment holds, read back from its file alone.
        let max_entry = |seq: u64| {
            let buf = Bytes::from(fs::read(segment_path(&dir, seq)).unwrap());
            let (rec, _) = replay(Path::new("one-segment"), &buf).unwrap();
            rec.entries.last().map_or(0, |e| e.index)
        };
        let total = w.segments();
        let mut counts = Vec::new();
        for upto in [0, 1, 7, 8, 30, 31, 32, 80, last - 3, last, Index::MAX] {
            let seqs = seqs_on_disk(&dir);
            let covered = seqs[..seqs.len() - 1].iter().take_while(|&&s| max_entry(s) <= upto).count();
            let sizes: u64 = seqs[..covered].iter().map(|&s| fs::metadata(segment_path(&dir, s)).unwrap().len()).sum();
            let before = w.disk_bytes();
            let purged = w.purge(upto).unwrap();
            assert_eq!(purged, Purged { segments: covered, bytes: sizes }, "purge({upto}) of {seqs:?}");
            counts.push(covered);
            assert_eq!(seqs_on_disk(&dir), seqs[covered..].to_vec(), "purge({upto}): the oldest ones");
            assert_eq!(w.disk_bytes(), before - sizes);
            check_accounting(&dir, &w);
            if covered > 0 {
                assert!(max_entry(seqs[covered]) > upto || covered == seqs.len() - 1);
            }

            // Reopen: the log starts after the first segment's base.
            drop(w);
            let (rec, w2) = open(&dir, 300).unwrap();
            w = w2;
            let base = w.segments[0].base;
            assert!(base <= upto);
            assert_eq!(rec.base, base, "purge({upto})");
            assert_eq!(rec.hard_state, hs(5, 2), "purge({upto}): the hard state of a deleted segment");
            let kept: Vec<Entry> = want.entries.iter().filter(|e| e.index > base).cloned().collect();
            assert_eq!(rec.entries, kept, "purge({upto})");
            assert_eq!(rec.torn_bytes, 0);
        }
        assert_eq!(w.segments(), 1, "purge(MAX) keeps the active segment");
        assert_eq!(counts.iter().sum::<usize>(), total - 1);
        assert!(counts.iter().filter(|&&n| n > 0).count() >= 4, "purged a few at a time: {counts:?}");
        assert!(counts.contains(&0), "{counts:?}");
        assert_eq!(w.purge(Index::MAX).unwrap(), Purged::default());

        // Appends continue after the purged prefix, across new segments.
        for i in 0..10 {
            w.append(&[op(100 + i, Some((6, 0)), None, vec![ent(last + 1, 6, "later")])]).unwrap();
            last += 1;
        }
        drop(w);
        let (rec, w) = open(&dir, 300).unwrap();
        assert_eq!(rec.hard_state, hs(6, 0));
        assert_eq!(rec.base + rec.entries.len() as Index, last);
        assert_eq!(rec.entries.first().unwrap().index, rec.base + 1);
        check_accounting(&dir, &w);
    }

    /// A log of several segments with one batch each (`segment_bytes` 1).
    fn segmented(name: &str, batches: u64) -> PathBuf {
        let dir = tmpdir(name);
        let (_, mut w) = open(&dir, 1).unwrap();
        for i in 1..=batches {
            w.append(&[op(i, Some((i, 1)), None, vec![ent(i, i, "entry")])]).unwrap();
        }
        assert_eq!(w.segments() as u64, batches + 1);
        dir
    }

    #[test]
    fn a_missing_middle_segment_is_corruption_naming_it() {
        let dir = segmented("gap", 4);
        fs::remove_file(segment_path(&dir, 3)).unwrap();
        let err = open(&dir, 1).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(&err, WalError::Corrupt { path, offset: 0, .. } if *path == segment_path(&dir, 3)), "{msg}");
        assert!(msg.contains("segments 2 and 4"), "{msg}");
        assert_eq!(seqs_on_disk(&dir), vec![1, 2, 4, 5], "nothing removed");
    }

    #[test]
    fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
        let dir = segmented("middle", 4);
        let path = segment_path(&dir, 2);
        let good = fs::read(&path).unwrap();
        // Segment 2: the magic, its start batch, one batch (hard state, entry).
        let first_batch = MAGIC.len() + 3 * HEADER + 17 + 9 + COMMIT_BODY;
        let last_marker = good.len() - COMMIT_RECORD;
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("a flipped byte in a record", flip(&good, first_batch + 5), first_batch),
            // In the last segment these would be torn tails: here they are not.
            ("a flipped byte in the last commit marker", flip(&good, last_marker + 12), last_marker),
            ("a cut last batch", good[..good.len() - 5].to_vec(), last_marker),
            ("a zero tail", [&good[..], &[0; 100]].concat(), good.len()),
            ("the magic alone", MAGIC.to_vec(), MAGIC.len()),
            ("nothing", vec![], 0),
        ];
        for (what, bytes, at) in cases {
            fs::write(&path, &bytes).unwrap();
            match open(&dir, 1) {
                Err(WalError::Corrupt { path: p, offset, reason }) => {
                    assert_eq!((&p, offset), (&path, at as u64), "{what}: {reason}");
                }
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: left untouched");
            assert_eq!(seqs_on_disk(&dir), vec![1, 2, 3, 4, 5], "{what}");
        }
        fs::write(&path, &good).unwrap();
        assert_eq!(open(&dir, 1).unwrap().0.entries.len(), 4);
    }

    fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[at] ^= 0x40;
        b
    }

    #[test]
    fn a_torn_tail_in_the_last_segment_is_cut() {
        let dir = tmpdir("segtorn");
        // Big enough that the batch after a rollover does not roll over again.
        let (_, mut w) = open(&dir, 200).unwrap();
        let mut i = 0;
        while w.segments() < 3 {
            i += 1;
            w.append(&[op(i, None, None, vec![ent(i, 1, "fill the segment")])]).unwrap();
        }
        let good = w.size();
        w.append(&[op(i + 1, Some((2, 2)), None, vec![ent(i + 1, 2, "torn")])]).unwrap();
        assert_eq!(w.segments(), 3);
        let path = w.path().to_path_buf();
        drop(w);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(good + 30).unwrap();
        let (rec, mut w) = open(&dir, 200).unwrap();
        assert_eq!((rec.entries.len() as u64, rec.hard_state, rec.torn_bytes), (i, hs(0, 0), 30));
        assert_eq!(fs::metadata(&path).unwrap().len(), good, "cut on disk");
        check_accounting(&dir, &w);
        w.append(&[op(i + 1, Some((3, 1)), None, vec![ent(i + 1, 3, "again")])]).unwrap();
        drop(w);
        let (rec, _) = open(&dir, 200).unwrap();
        assert_eq!((rec.entries.len() as u64, rec.hard_state, rec.torn_bytes), (i + 1, hs(3, 1), 0));
    }

    #[test]
    fn a_last_segment_left_unfinished_by_a_crash_during_rollover_is_dropped() {
        let mut start = BytesMut::from(file_header());
        encode_segment_start(&mut start, &hs(3, 1), 3);
        let torn_start = start[..start.len() - 3].to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("a partial magic", MAGIC[..5].to_vec()),
            ("zeros", vec![0; 4096]),
            ("the magic alone", MAGIC.to_vec()),
            ("a torn start batch", torn_start),
            (
                "a start batch without its marker, then zeros",
                [&start[..start.len() - COMMIT_RECORD], &[0; 64]].concat(),
            ),
        ];
        for (n, (what, bytes)) in cases.into_iter().enumerate() {
            let dir = segmented(&format!("unfinished-{n}"), 3);
            // What a crash while creating segment 5 can leave.
            let path = segment_path(&dir, 5);
            fs::write(&path, &bytes).unwrap();
            let (rec, mut w) = open(&dir, 1).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                (rec.entries.len(), rec.hard_state, rec.torn_bytes),
                (3, hs(3, 1), bytes.len() as u64),
                "{what}"
            );
            assert_eq!(seqs_on_disk(&dir), vec![1, 2, 3, 4], "{what}: removed");
            assert_eq!(w.path(), segment_path(&dir, 4), "{what}: the one before is active again");
            check_accounting(&dir, &w);
            w.append(&[op(4, Some((4, 0)), None, vec![ent(4, 4, "after")])]).unwrap();
            assert_eq!(seqs_on_disk(&dir), vec![1, 2, 3, 4, 5], "{what}: rolled over again");
            drop(w);
            let (rec, w) = open(&dir, 1).unwrap();
            assert_eq!((rec.entries.len(), rec.hard_state, rec.torn_bytes), (4, hs(4, 0), 0), "{what}");
            assert_eq!(rec.entries[3], ent(4, 4, "after"));
            check_accounting(&dir, &w);
        }

        // Garbage that is not a crash's leftovers is not dropped.
        let dir = segmented("unfinished-garbage", 3);
        fs::write(segment_path(&dir, 5), b"not a segment at all").unwrap();
        assert!(matches!(open(&dir, 1), Err(WalError::Corrupt { offset: 0, .. })));
        // Nor is a start batch with a marker after the damage.
        let mut bad = start.to_vec();
        bad[MAGIC.len() + 10] ^= 1;
        bad.extend_from_slice(&batch(&[op(9, None, None, vec![ent(4, 3, "x")])]));
        fs::write(segment_path(&dir, 5), &bad).unwrap();
        assert!(matches!(open(&dir, 1), Err(WalError::Corrupt { offset: 8, .. })));
        assert_eq!(fs::read(segment_path(&dir, 5)).unwrap(), bad);
    }

    #[test]
    fn the_only_segment_left_after_a_purge_must_be_complete() {
        let dir = segmented("onlyseg", 3);
        let (_, mut w) = open(&dir, 1).unwrap();
        assert_eq!(w.purge(Index::MAX).unwrap().segments, 3);
        let path = w.path().to_path_buf();
        drop(w);
        assert_eq!(seqs_on_disk(&dir), vec![4]);
        let (rec, _) = open(&dir, 1).unwrap();
        assert_eq!((rec.base, rec.entries.len(), rec.hard_state), (3, 0, hs(3, 1)));
        let good = fs::read(&path).unwrap();
        for cut in [0, 5, MAGIC.len(), good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(matches!(open(&dir, 1), Err(WalError::Corrupt { .. })), "cut at {cut}");
            assert_eq!(fs::read(&path).unwrap(), &good[..cut]);
        }
    }

    #[test]
    fn a_base_record_that_does_not_continue_the_log_is_corruption() {
        let dir = segmented("basemismatch", 4);
        let path = segment_path(&dir, 3);
        let good = fs::read(&path).unwrap();
        let mut start = BytesMut::from(file_header());
        encode_segment_start(&mut start, &hs(2, 1), 2);
        assert_eq!(&good[..start.len()], &start[..], "segment 3 starts after entry 2");
        for (what, base) in [("ahead", 3), ("behind", 1)] {
            let mut wrong = BytesMut::from(file_header());
            encode_segment_start(&mut wrong, &hs(2, 1), base);
            let bytes = [&wrong[..], &good[start.len()..]].concat();
            fs::write(&path, &bytes).unwrap();
            match open(&dir, 1) {
                Err(WalError::Corrupt { path: p, offset, reason }) => {
                    // The base record follows the hard state record.
                    assert_eq!((&p, offset), (&path, (MAGIC.len() + HEADER + 17) as u64), "{what}: {reason}");
                    assert!(reason.contains("does not continue the log"), "{reason}");
                }
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
        // A later segment without a base record.
        let bytes = [&MAGIC[..], &good[start.len()..]].concat();
        fs::write(&path, &bytes).unwrap();
        let err = open(&dir, 1).unwrap_err().to_string();
        assert!(err.contains("does not begin with a base record"), "{err}");
        fs::write(&path, &good).unwrap();
        assert_eq!(open(&dir, 1).unwrap().0.entries.len(), 4);
    }

    #[test]
    fn an_installed_snapshot_then_rollover_and_purge_recovers_its_base() {
        let dir = tmpdir("snapseg");
        let meta = SnapshotMeta { index: 20, term: 3, membership: Membership::from_voters([1, 2, 3]) };
        let install = PersistOp {
            seq: 3,
            hard_state: Some(hs(3, 0)),
            snapshot: Some(meta.clone()),
            entries: vec![ent(21, 3, "u"), ent(22, 3, "v")],
            ..Default::default()
        };
        let ops = vec![
            op(1, Some((1, 1)), None, vec![ent(1, 1, "a"), ent(2, 1, "b")]),
            op(2, None, None, vec![ent(3, 1, "c")]),
            install,
            op(4, None, None, vec![ent(23, 3, "w")]),
            op(5, Some((4, 2)), Some(23), vec![ent(23, 4, "W"), ent(24, 4, "x")]),
        ];
        let (_, mut w) = open(&dir, 1).unwrap();
        for o in &ops {
            w.append(std::slice::from_ref(o)).unwrap();
        }
        // Segment 3 holds the install; its successor starts after entry 22.
        let bases: Vec<Index> = w.segments.iter().map(|s| s.base).collect();
        assert_eq!(bases, vec![0, 2, 3, 22, 23, 24]);
        let want = reference(&ops);
        assert_eq!((want.base, want.snapshot.as_ref()), (20, Some(&meta)));
        drop(w);
        let (rec, mut w) = open(&dir, 1).unwrap();
        assert_eq!(
            (rec.base, &rec.snapshot, &rec.entries, rec.hard_state),
            (20, &want.snapshot, &want.entries, hs(4, 2))
        );

        // Up to the snapshot: the segment with its record stays.
        assert_eq!(w.purge(20).unwrap().segments, 2);
        drop(w);
        let (rec, mut w) = open(&dir, 1).unwrap();
        assert_eq!(seqs_on_disk(&dir), vec![3, 4, 5, 6]);
        assert_eq!(
            (rec.base, &rec.snapshot, &rec.entries, rec.hard_state),
            (20, &want.snapshot, &want.entries, hs(4, 2))
        );

        // Beyond it: the record goes with its segment, the base remains.
        assert_eq!(w.purge(22).unwrap().segments, 1);
        drop(w);
        let (rec, _) = open(&dir, 1).unwrap();
        assert_eq!((rec.base, rec.snapshot, rec.hard_state), (22, None, hs(4, 2)));
        assert_eq!(rec.entries, want.entries[2..].to_vec());
        assert_eq!(rec.entries.first().map(|e| e.index), Some(23));
    }
}
