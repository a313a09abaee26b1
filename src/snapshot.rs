//! Snapshot files: the state machine's serialized state after applying log
//! entry `index`, with the metadata Raft needs to continue from it.
//!
//! Files live in `<data-dir>/snap/`, named `{index:020}-{term:020}.snap`,
//! and hold:
//!
//! ```text
//! magic     8 bytes  "RKVSNAP1" (the format version is part of the magic)
//! meta_len  u32 LE   at most 1 MiB
//! meta      meta_len bytes: codec::put_snapshot_meta (index, term, configuration)
//! body_len  u64 LE
//! body      body_len bytes, opaque state-machine data
//! crc32     u32 LE   crc32fast over every byte before it (magic..body)
//! ```
//!
//! The same bytes are the wire format of a snapshot transfer: the leader
//! streams its file in chunks ([`read_chunk`]) and the follower appends them
//! in order to a `.partial` file ([`Staging`]), so a file must be verifiable
//! on its own. The rules:
//!
//! * A final name only ever holds a complete, fsynced file. A local write
//!   goes to `<name>.tmp`, a transfer to `{index:020}-{term:020}.partial`;
//!   the file is fsynced, renamed to its final name and the directory
//!   fsynced. A received file is verified in full (exactly as [`SnapshotDir::load`]
//!   does, and against the metadata the leader announced) before the rename.
//! * Leftover `.tmp` and `.partial` files are a write or a transfer cut short
//!   by a crash; nothing ever used them, so [`SnapshotDir::open`] removes them.
//! * A file is corrupt if its magic, lengths or checksum are wrong, or its
//!   name does not match the index and term inside. Parsing never trusts a
//!   length: `meta_len` is capped and `body_len` must match the file size.
//! * Only the newest snapshot (highest index, then term) is ever loaded at
//!   start-up. If it is corrupt the node refuses to start and leaves the file
//!   untouched: an older snapshot is no substitute, because the write-ahead
//!   log has been compacted past it and no longer holds the entries between
//!   the two.
//! * Pruning keeps the newest `keep` files, at least one, and never deletes
//!   the file just written or received.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use log::{debug, info, warn};

use crate::codec::{Reader, get_snapshot_meta, put_snapshot_meta};
use crate::raft::SnapshotMeta;
use crate::wal::{create_dir_durable, sync_dir};

/// The first bytes of a snapshot file in the current format.
pub const SNAP_MAGIC: &[u8; 8] = b"RKVSNAP1";
/// The longest metadata a file may declare (real metadata is a few hundred bytes).
pub const MAX_META: u32 = 1 << 20;
/// The directory under the data directory.
pub const SNAP_DIR: &str = "snap";
const SUFFIX: &str = ".snap";
const TMP: &str = ".tmp";
const PARTIAL: &str = ".partial";
/// Magic and meta_len.
const PREFIX: usize = SNAP_MAGIC.len() + 4;
const CRC_LEN: usize = 4;
const WRITE_BUFFER: usize = 256 << 10;
const T_STORAGE: &str = "raftkv::storage";

#[derive(Debug)]
pub enum SnapshotError {
    Io { path: PathBuf, err: io::Error },
    Corrupt { path: PathBuf, reason: String },
}

impl SnapshotError {
    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            SnapshotError::Io { path, .. } | SnapshotError::Corrupt { path, .. } => path,
        }
    }
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Io { path, err } => write!(f, "snapshot file {}: {err}", path.display()),
            // A transfer being received: nothing was installed, the node keeps running.
            SnapshotError::Corrupt { path, reason } if is_partial(path) => write!(
                f,
                "snapshot file {} is corrupt: {reason}; the received snapshot is not installed and has to be \
                 sent again",
                path.display()
            ),
            SnapshotError::Corrupt { path, reason } => write!(
                f,
                "snapshot file {} is corrupt: {reason}; refusing to start. The file is left untouched. An older \
                 snapshot is not used in its place: the write-ahead log no longer holds the entries between the \
                 two. Restore the data directory from a backup of this node, or rebuild this node from the \
                 cluster: remove its data directory only if the rest of the cluster holds a majority without it \
                 (a node that comes back empty has forgotten its votes and the entries it acknowledged)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io { err, .. } => Some(err),
            SnapshotError::Corrupt { .. } => None,
        }
    }
}

fn is_partial(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(PARTIAL))
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |err| SnapshotError::Io { path, err }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

/// A loaded, verified snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
    /// The body: the state machine's serialized state.
    pub data: Bytes,
    /// Size of the whole file.
    pub file_bytes: u64,
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
    /// Size of the whole file.
    pub bytes: u64,
}

/// `{index:020}-{term:020}.snap`.
fn file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}{SUFFIX}")
}

/// (index, term) of a snapshot file's name; `None` for any other name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (index, term) = name.strip_suffix(SUFFIX)?.split_once('-')?;
    let num = |s: &str| (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten();
    Some((num(index)?, num(term)?))
}

/// The snapshot directory, `<data-dir>/snap`. One owner writes it (the
/// storage side of the node); clones may read.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// `<data_dir>/snap`, created durably if missing. Removes the `*.tmp` and
    /// `*.partial` files a crash left behind, so call it once at start-up,
    /// before any write or transfer.
    pub fn open(data_dir: &Path) -> Result<SnapshotDir, SnapshotError> {
        let dir = data_dir.join(SNAP_DIR);
        create_dir_durable(&dir).map_err(io_at(&dir))?;
        let mut removed = false;
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(TMP) || n.ends_with(PARTIAL)) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_at(&path))?;
                removed = true;
                info!(
                    target: T_STORAGE,
                    "removed {}: a snapshot write or transfer cut short by a crash (never used)",
                    path.display()
                );
            }
        }
        if removed {
            sync_dir(&dir).map_err(io_at(&dir))?;
        }
        Ok(SnapshotDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The final name of the snapshot at `meta_index` taken in `term`.
    pub fn path_of(&self, meta_index: u64, term: u64) -> PathBuf {
        self.dir.join(file_name(meta_index, term))
    }

    /// Snapshot files present, oldest first: (index, term, path), parsed
    /// from their names. Files with other names are ignored.
    pub fn list(&self) -> Result<Vec<(u64, u64, PathBuf)>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            if let Some((index, term)) = entry.file_name().to_str().and_then(parse_name) {
                out.push((index, term, entry.path()));
            }
        }
        out.sort_unstable_by_key(|&(index, term, _)| (index, term));
        Ok(out)
    }

    /// Loads and verifies the newest snapshot file (highest index, then
    /// term); `None` if there is none. If that file is corrupt, the error
    /// names it: an older file is never returned in its place.
    pub fn latest(&self) -> Result<Option<Snapshot>, SnapshotError> {
        match self.list()?.pop() {
            None => Ok(None),
            Some((_, _, path)) => self.load(&path).map(Some),
        }
    }

    /// Loads and verifies one file, including that its name matches the
    /// index and term inside.
    pub fn load(&self, path: &Path) -> Result<Snapshot, SnapshotError> {
        let buf = Bytes::from(fs::read(path).map_err(io_at(path))?);
        let (meta, data) = verify(path, &buf)?;
        match path.file_name().and_then(|n| n.to_str()).and_then(parse_name) {
            Some(named) if named == (meta.index, meta.term) => {}
            Some((index, term)) => {
                return Err(corrupt(
                    path,
                    format!(
                        "its name says index {index}, term {term}, but it holds the snapshot at index {}, term {}",
                        meta.index, meta.term
                    ),
                ));
            }
            None => return Err(corrupt(path, "its name is not of the form <index>-<term>.snap")),
        }
        Ok(Snapshot { meta, path: path.to_path_buf(), data, file_bytes: buf.len() as u64 })
    }

    /// Writes the snapshot `meta` whose body `write_body` streams (through a
    /// buffer, never held whole in memory): `<name>.tmp`, fsync, rename to
    /// the final name, fsync the directory; then deletes all but the newest
    /// `keep` snapshot files, never the one just written. A failure to prune
    /// is logged, not returned: the snapshot itself is durable by then.
    pub fn write(
        &self,
        meta: &SnapshotMeta,
        keep: usize,
        write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<Saved, SnapshotError> {
        let path = self.path_of(meta.index, meta.term);
        let tmp = self.dir.join(format!("{}{TMP}", file_name(meta.index, meta.term)));
        let bytes = match write_file(&tmp, meta, write_body) {
            Ok(bytes) => bytes,
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                return Err(SnapshotError::Io { path: tmp, err });
            }
        };
        if let Err(err) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(SnapshotError::Io { path, err });
        }
        sync_dir(&self.dir).map_err(io_at(&self.dir))?;
        debug!(
            target: T_STORAGE,
            "wrote snapshot {} (index {}, term {}, {bytes} bytes)",
            path.display(),
            meta.index,
            meta.term
        );
        self.prune_after(keep, &path);
        Ok(Saved { meta: meta.clone(), path, bytes })
    }

    /// Starts receiving a transferred snapshot file, announced as `meta`,
    /// into `{index:020}-{term:020}.partial` (truncating any earlier partial
    /// file of that name). One transfer per snapshot at a time.
    pub fn receive(&self, meta: &SnapshotMeta) -> Result<Staging, SnapshotError> {
        let path = self.dir.join(format!("{:020}-{:020}{PARTIAL}", meta.index, meta.term));
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io_at(&path))?;
        Ok(Staging { file, path, len: 0, meta: meta.clone(), dir: self.clone(), done: false })
    }

    /// Deletes all but the newest `keep` snapshot files (at least one is kept).
    pub fn prune(&self, keep: usize) -> Result<(), SnapshotError> {
        self.prune_except(keep, None)
    }

    /// Total bytes of the snapshot files present (0 if the directory cannot be read).
    pub fn disk_bytes(&self) -> u64 {
        let files = self.list().unwrap_or_default();
        files.iter().filter_map(|(_, _, p)| fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    /// Keeps the newest `keep` files (at least one) and `protect`.
    fn prune_except(&self, keep: usize, protect: Option<&Path>) -> Result<(), SnapshotError> {
        let files = self.list()?;
        let old = files.len().saturating_sub(keep.max(1));
        let mut removed = false;
        for (index, term, path) in &files[..old] {
            if protect == Some(path.as_path()) {
                continue;
            }
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SnapshotError::Io { path: path.clone(), err: e }),
            }
            removed = true;
            debug!(target: T_STORAGE, "removed old snapshot {} (index {index}, term {term})", path.display());
        }
        if removed {
            sync_dir(&self.dir).map_err(io_at(&self.dir))?;
        }
        Ok(())
    }

    /// Prunes after `path` was written or received; failures are only logged.
    fn prune_after(&self, keep: usize, path: &Path) {
        if let Err(e) = self.prune_except(keep, Some(path)) {
            warn!(
                target: T_STORAGE,
                "snapshot {} is in place, but removing older snapshots failed (retried after the next one): {e}",
                path.display()
            );
        }
    }
}

/// Writes a whole snapshot file at `tmp` and fsyncs it; returns its size.
fn write_file(
    tmp: &Path,
    meta: &SnapshotMeta,
    write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let mut header = BytesMut::with_capacity(64);
    header.put_slice(SNAP_MAGIC);
    header.put_u32_le(0); // meta_len, set below
    put_snapshot_meta(&mut header, meta);
    let meta_len = header.len() - PREFIX;
    // Never write a file that would make the node refuse to start.
    let mut r = Reader::new(Bytes::copy_from_slice(&header[PREFIX..]));
    let back = get_snapshot_meta(&mut r).and_then(|m| r.finish("snapshot metadata").map(|()| m));
    if meta_len > MAX_META as usize || back.as_ref().ok() != Some(meta) {
        let why = back.err().map_or_else(|| format!("{meta_len} bytes of metadata"), |e| e.0);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("snapshot metadata would not load: {why}")));
    }
    header[SNAP_MAGIC.len()..PREFIX].copy_from_slice(&(meta_len as u32).to_le_bytes());
    let body_len_at = header.len();
    header.put_u64_le(0); // body_len, patched once the body is written

    let file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    out.write_all(&header)?;
    let mut body = BodyWriter { out: &mut out, crc: crc32fast::Hasher::new(), len: 0 };
    write_body(&mut body)?;
    let (body_crc, body_len) = (body.crc, body.len);

    header[body_len_at..].copy_from_slice(&body_len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.combine(&body_crc);
    out.write_all(&crc.finalize().to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.write_all_at(&body_len.to_le_bytes(), body_len_at as u64)?;
    file.sync_all()?;
    Ok(header.len() as u64 + body_len + CRC_LEN as u64)
}

/// Hands the body through to the file, counting it and computing its CRC.
struct BodyWriter<'a> {
    out: &'a mut BufWriter<File>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Write for BodyWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Checks a whole file's bytes (read from `path`, named in errors): returns
/// its metadata and its body (a slice of `buf`). Never panics, whatever `buf`.
pub fn verify(path: &Path, buf: &Bytes) -> Result<(SnapshotMeta, Bytes), SnapshotError> {
    let len = buf.len();
    if !buf.starts_with(SNAP_MAGIC) {
        let reason = if SNAP_MAGIC.starts_with(buf) {
            format!("truncated: {len} bytes, shorter than the header")
        } else if buf.starts_with(b"RKVSNAP") {
            let found = String::from_utf8_lossy(&buf[..SNAP_MAGIC.len()]).into_owned();
            format!("unknown snapshot format {found:?} (written by a newer raftkv?)")
        } else {
            "not a raftkv snapshot (missing RKVSNAP1 header)".to_string()
        };
        return Err(corrupt(path, reason));
    }
    let truncated = |what: &str, at: usize| {
        corrupt(path, format!("truncated: the file ends at {len} bytes, in the {what} at offset {at}"))
    };
    let field = |at: usize, n: usize, what: &str| buf.get(at..at + n).ok_or_else(|| truncated(what, at));

    let meta_len = u32::from_le_bytes(field(SNAP_MAGIC.len(), 4, "metadata length")?.try_into().unwrap());
    if meta_len > MAX_META {
        return Err(corrupt(path, format!("metadata length {meta_len} is over the limit of {MAX_META} bytes")));
    }
    let meta_end = PREFIX + meta_len as usize;
    if meta_end > len {
        return Err(corrupt(path, format!("metadata of {meta_len} bytes runs past the end of the file ({len} bytes)")));
    }
    let mut r = Reader::new(buf.slice(PREFIX..meta_end));
    let meta = get_snapshot_meta(&mut r)
        .and_then(|m| r.finish("snapshot metadata").map(|()| m))
        .map_err(|e| corrupt(path, format!("bad metadata: {e}")))?;

    let body_len = u64::from_le_bytes(field(meta_end, 8, "body length")?.try_into().unwrap());
    let body_at = meta_end + 8;
    let rest = (len - body_at) as u64; // body and checksum
    if rest < CRC_LEN as u64 || body_len > rest - CRC_LEN as u64 {
        return Err(corrupt(
            path,
            format!("a body of {body_len} bytes and its checksum run past the end of the file ({len} bytes)"),
        ));
    }
    let body_end = body_at + body_len as usize;
    if body_end + CRC_LEN != len {
        return Err(corrupt(path, format!("{} bytes follow the checksum", len - body_end - CRC_LEN)));
    }
    let stored = u32::from_le_bytes(buf[body_end..].try_into().unwrap());
    let actual = crc32fast::hash(&buf[..body_end]);
    if stored != actual {
        return Err(corrupt(path, format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")));
    }
    Ok((meta, buf.slice(body_at..body_end)))
}

/// A snapshot file being received in chunks, in order, into a `.partial`
/// file. Dropping it without [`Staging::finish`] removes the partial file.
#[derive(Debug)]
pub struct Staging {
    file: File,
    path: PathBuf,
    len: u64,
    meta: SnapshotMeta,
    dir: SnapshotDir,
    /// The partial file is gone (renamed or removed): nothing to clean up.
    done: bool,
}

impl Staging {
    /// The metadata the sender announced.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`, which the sender read at `offset`; `offset` must be
    /// [`Staging::len`]. A chunk out of order is refused (and changes
    /// nothing), so the caller may drop a duplicate and go on.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<(), SnapshotError> {
        if offset != self.len {
            return Err(corrupt(
                &self.path,
                format!(
                    "a chunk at offset {offset} arrived where offset {} was expected (chunks come in order)",
                    self.len
                ),
            ));
        }
        // Positioned, so that a failed write does not shift later ones.
        self.file.write_all_at(data, offset).map_err(io_at(&self.path))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// All bytes are in: fsync, verify the whole file as [`SnapshotDir::load`]
    /// would and that it holds the announced snapshot, rename it to its
    /// final name, fsync the directory and prune to `keep` (never removing
    /// this one). On any failure before the rename the partial file is
    /// removed. Returns the snapshot, body loaded.
    pub fn finish(mut self, keep: usize) -> Result<Snapshot, SnapshotError> {
        let io = io_at(&self.path);
        let buf = (|| {
            // Anything past `len` is from a write that failed and was not retried.
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            fs::read(&self.path)
        })()
        .map_err(io)?;
        let buf = Bytes::from(buf);
        let (meta, data) = verify(&self.path, &buf)?;
        if meta != self.meta {
            let (m, want) = (&meta, &self.meta);
            return Err(corrupt(
                &self.path,
                format!(
                    "it holds the snapshot at index {}, term {}, {}, but index {}, term {}, {} was announced",
                    m.index, m.term, m.membership, want.index, want.term, want.membership
                ),
            ));
        }
        let path = self.dir.path_of(meta.index, meta.term);
        fs::rename(&self.path, &path).map_err(io_at(&path))?;
        self.done = true;
        sync_dir(&self.dir.dir).map_err(io_at(&self.dir.dir))?;
        debug!(
            target: T_STORAGE,
            "received snapshot {} (index {}, term {}, {} bytes)",
            path.display(),
            meta.index,
            meta.term,
            buf.len()
        );
        self.dir.prune_after(keep, &path);
        Ok(Snapshot { meta, path, data, file_bytes: buf.len() as u64 })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            match fs::remove_file(&self.path) {
                Ok(()) => info!(target: T_STORAGE, "removed {}: snapshot transfer not installed", self.path.display()),
                Err(e) => warn!(target: T_STORAGE, "could not remove {}: {e}", self.path.display()),
            }
        }
    }
}

/// For the sender: up to `max` bytes of `file` at `offset`, fewer only at
/// the end of the file (none past it).
pub fn read_chunk(file: &mut File, offset: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; max];
    let mut n = 0;
    while n < max {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Member, Membership, SplitMix64};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let d = std::env::temp_dir().join(format!("raftkv-snap-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta { index, term, membership: Membership::from_voters([1, 2, 3]) }
    }

    fn body(n: usize) -> Vec<u8> {
        let mut rng = SplitMix64(n as u64);
        (0..n).map(|_| rng.next_u64() as u8).collect()
    }

    fn put(dir: &SnapshotDir, m: &SnapshotMeta, keep: usize, data: &[u8]) -> Saved {
        dir.write(m, keep, |w| w.write_all(data)).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    /// The format, written out by hand.
    fn expected_file(m: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
        let mut meta = Vec::new();
        meta.extend_from_slice(&m.index.to_le_bytes());
        meta.extend_from_slice(&m.term.to_le_bytes());
        meta.extend_from_slice(&((1u32 << 31) | 1).to_le_bytes());
        meta.extend_from_slice(&(m.membership.members.len() as u32).to_le_bytes());
        for (id, member) in &m.membership.members {
            meta.extend_from_slice(&id.to_le_bytes());
            meta.push(member.voter as u8);
            meta.extend_from_slice(&(member.address.len() as u32).to_le_bytes());
            meta.extend_from_slice(member.address.as_bytes());
        }
        meta.extend_from_slice(&(m.membership.removed.len() as u32).to_le_bytes());
        for id in &m.membership.removed {
            meta.extend_from_slice(&id.to_le_bytes());
        }
        file_with_meta(&meta, data)
    }

    /// A file from before configuration changes: its metadata lists voter ids only.
    fn legacy_file(index: u64, term: u64, voters: &[u64], data: &[u8]) -> Vec<u8> {
        let mut meta = Vec::new();
        meta.extend_from_slice(&index.to_le_bytes());
        meta.extend_from_slice(&term.to_le_bytes());
        meta.extend_from_slice(&(voters.len() as u32).to_le_bytes());
        for v in voters {
            meta.extend_from_slice(&v.to_le_bytes());
        }
        file_with_meta(&meta, data)
    }

    fn file_with_meta(meta: &[u8], data: &[u8]) -> Vec<u8> {
        let mut f = SNAP_MAGIC.to_vec();
        f.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        f.extend_from_slice(meta);
        f.extend_from_slice(&(data.len() as u64).to_le_bytes());
        f.extend_from_slice(data);
        let crc = crc32fast::hash(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    fn assert_corrupt<T: std::fmt::Debug>(res: Result<T, SnapshotError>, path: &Path, what: &str) -> String {
        match res {
            Err(e @ SnapshotError::Corrupt { .. }) => {
                assert_eq!(e.path(), path, "{what}");
                let msg = e.to_string();
                assert!(msg.contains(&format!("snapshot file {} is corrupt: ", path.display())), "{what}: {msg}");
                msg
            }
            Err(e) => panic!("{what}: not Corrupt: {e}"),
            Ok(s) => panic!("{what}: loaded {s:?}"),
        }
    }

    #[test]
    fn a_file_from_before_configuration_changes_still_loads() {
        let tmp = TempDir::new("legacy");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let path = dir.path().join("00000000000000000010-00000000000000000002.snap");
        fs::write(&path, legacy_file(10, 2, &[1, 2, 3], b"state")).unwrap();
        let snap = dir.latest().unwrap().unwrap();
        assert_eq!(snap.meta, SnapshotMeta { index: 10, term: 2, membership: Membership::from_voters([1, 2, 3]) });
        assert_eq!(&snap.data[..], b"state");
    }

    #[test]
    fn write_then_latest_roundtrips_and_keeps_the_newest() {
        let tmp = TempDir::new("roundtrip");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        assert_eq!(dir.path(), tmp.0.join("snap"));
        assert!(dir.path().is_dir());
        assert!(dir.latest().unwrap().is_none());
        assert_eq!(dir.disk_bytes(), 0);

        // Larger than the write buffer, written in small pieces.
        let data = body(600_000);
        let mut membership = Membership::from_voters([1, 2, 3]);
        membership.members.insert(4, Member { address: "127.0.0.4:7004".into(), voter: false });
        membership.removed.insert(9);
        let m = SnapshotMeta { index: 10, term: 2, membership };
        let saved = dir
            .write(&m, 2, |w| {
                for c in data.chunks(1000) {
                    w.write_all(c)?;
                }
                w.flush()
            })
            .unwrap();
        let name = "00000000000000000010-00000000000000000002.snap";
        assert_eq!(saved.path, tmp.0.join("snap").join(name));
        assert_eq!(saved.meta, m);
        let on_disk = fs::read(&saved.path).unwrap();
        assert_eq!(on_disk, expected_file(&m, &data), "the documented format, byte for byte");
        assert_eq!(saved.bytes, on_disk.len() as u64);
        assert_eq!(names(dir.path()), vec![name.to_string()], "no temporary file left");

        let snap = dir.latest().unwrap().unwrap();
        assert_eq!((&snap.meta, &snap.path, snap.file_bytes), (&m, &saved.path, saved.bytes));
        assert_eq!(snap.data, data);

        let s2 = put(&dir, &meta(20, 3), 2, b"twenty");
        let s3 = put(&dir, &meta(30, 3), 2, b"thirty");
        let listed = dir.list().unwrap();
        assert_eq!(listed, vec![(20, 3, s2.path.clone()), (30, 3, s3.path.clone())], "keep=2 leaves the two newest");
        assert!(!saved.path.exists());
        let latest = dir.latest().unwrap().unwrap();
        assert_eq!((latest.meta, &latest.data[..]), (meta(30, 3), &b"thirty"[..]));
        assert_eq!(dir.disk_bytes(), s2.bytes + s3.bytes);

        // An empty body, and keep=0 still keeps the newest.
        let s4 = put(&dir, &meta(40, 4), 0, b"");
        assert_eq!(dir.list().unwrap(), vec![(40, 4, s4.path.clone())]);
        assert_eq!(dir.latest().unwrap().unwrap().data.len(), 0);
        dir.prune(0).unwrap();
        assert_eq!(dir.list().unwrap().len(), 1);

        // The file just written is never pruned, even if a newer one exists.
        let older = put(&dir, &meta(35, 4), 1, b"older");
        assert_eq!(dir.list().unwrap(), vec![(35, 4, older.path.clone()), (40, 4, s4.path.clone())]);
        assert_eq!(dir.latest().unwrap().unwrap().meta, meta(40, 4));
        dir.prune(1).unwrap();
        assert_eq!(dir.list().unwrap(), vec![(40, 4, s4.path)]);
    }

    #[test]
    fn a_failed_body_leaves_nothing_behind() {
        let tmp = TempDir::new("failbody");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let kept = put(&dir, &meta(5, 1), 1, b"five");
        let err = dir
            .write(&meta(9, 1), 1, |w| {
                w.write_all(&body(300_000))?;
                Err(io::Error::other("state machine went away"))
            })
            .unwrap_err();
        assert!(matches!(&err, SnapshotError::Io { path, .. } if path.to_str().unwrap().ends_with(".snap.tmp")));
        assert!(err.to_string().contains("state machine went away"), "{err}");
        assert_eq!(dir.list().unwrap(), vec![(5, 1, kept.path.clone())]);
        assert_eq!(names(dir.path()).len(), 1, "no .tmp left");
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_corruption() {
        let tmp = TempDir::new("flip");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let m = meta(7, 3);
        let saved = put(&dir, &m, 1, b"a small body");
        let path = saved.path;
        let good = fs::read(&path).unwrap();
        assert_eq!(good.len(), 8 + 4 + 67 + 8 + 12 + 4);

        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut f = good.clone();
                f[i] ^= flip;
                fs::write(&path, &f).unwrap();
                let msg = assert_corrupt(dir.load(&path), &path, &format!("byte {i} ^ {flip:#x}"));
                assert!(msg.contains("refusing to start"), "{msg}");
                assert_eq!(fs::read(&path).unwrap(), f, "the file is left untouched");
            }
        }
        for cut in 0..good.len() {
            fs::write(&path, &good[..cut]).unwrap();
            assert_corrupt(dir.load(&path), &path, &format!("truncated to {cut}"));
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        let msg = assert_corrupt(dir.load(&path), &path, "a trailing byte");
        assert!(msg.contains("1 bytes follow the checksum"), "{msg}");

        // Lengths at their extremes are bounded, not trusted.
        for (at, value) in
            [(8, &u32::MAX.to_le_bytes()[..]), (8, &(MAX_META + 1).to_le_bytes()), (56, &u64::MAX.to_le_bytes())]
        {
            let mut f = good.clone();
            f[at..at + value.len()].copy_from_slice(value);
            fs::write(&path, &f).unwrap();
            assert_corrupt(dir.load(&path), &path, &format!("length at {at}"));
        }
        // Garbage, with and without a valid magic.
        let mut rng = SplitMix64(42);
        for round in 0..500 {
            let n = (rng.next_u64() % 200) as usize;
            let mut f: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            if round % 2 == 0 {
                f.splice(0..0, SNAP_MAGIC.iter().copied());
            }
            fs::write(&path, &f).unwrap();
            assert_corrupt(dir.load(&path), &path, &format!("garbage round {round}"));
        }
        let mut future = good.clone();
        future[7] = b'2';
        fs::write(&path, &future).unwrap();
        assert!(assert_corrupt(dir.load(&path), &path, "RKVSNAP2").contains("unknown snapshot format"));

        fs::write(&path, &good).unwrap();
        assert_eq!(dir.load(&path).unwrap().meta, m, "the intact file still loads");

        // A valid file under another snapshot's name.
        let renamed = dir.path_of(8, 3);
        fs::copy(&path, &renamed).unwrap();
        let msg = assert_corrupt(dir.load(&renamed), &renamed, "renamed");
        assert!(msg.contains("its name says index 8, term 3"), "{msg}");
        assert_corrupt(dir.latest(), &renamed, "latest picks the renamed (newest) file");
        let other = dir.path().join("copy.bin");
        fs::copy(&path, &other).unwrap();
        assert_corrupt(dir.load(&other), &other, "not a snapshot name");
    }

    #[test]
    fn latest_with_the_newest_corrupt_refuses_and_does_not_fall_back() {
        let tmp = TempDir::new("newest");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let old = put(&dir, &meta(10, 1), 2, b"old state");
        let new = put(&dir, &meta(20, 2), 2, b"new state");
        let mut bytes = fs::read(&new.path).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x20; // in the body
        fs::write(&new.path, &bytes).unwrap();
        let old_bytes = fs::read(&old.path).unwrap();

        let msg = assert_corrupt(dir.latest(), &new.path, "latest");
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(msg.contains("An older snapshot is not used in its place"), "{msg}");
        assert!(msg.contains("left untouched"), "{msg}");
        assert_eq!(fs::read(&new.path).unwrap(), bytes, "the corrupt file is left untouched");
        assert_eq!(fs::read(&old.path).unwrap(), old_bytes);
        assert_eq!(dir.load(&old.path).unwrap().data, &b"old state"[..], "the older one is fine, and unused");
        assert_eq!(dir.list().unwrap().len(), 2);
    }

    #[test]
    fn open_removes_leftover_temporary_files() {
        let tmp = TempDir::new("leftovers");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let kept = put(&dir, &meta(10, 2), 1, b"kept");
        let tmp_name = format!("{}.tmp", file_name(11, 2));
        let partial = format!("{:020}-{:020}.partial", 12, 2);
        for n in [tmp_name.as_str(), partial.as_str(), "other.tmp", "notes.txt"] {
            fs::write(dir.path().join(n), b"half written").unwrap();
        }
        let again = SnapshotDir::open(&tmp.0).unwrap();
        assert_eq!(names(again.path()), vec![file_name(10, 2), "notes.txt".to_string()]);
        assert_eq!(again.list().unwrap(), vec![(10, 2, kept.path)], "other names are ignored");
    }

    /// Sends `file` through `staging` in chunks of `chunk` bytes.
    fn send(file: &Path, staging: &mut Staging, chunk: usize) {
        let mut f = File::open(file).unwrap();
        loop {
            let offset = staging.len();
            let c = read_chunk(&mut f, offset, chunk).unwrap();
            if c.is_empty() {
                break;
            }
            staging.write_chunk(offset, &c).unwrap();
        }
    }

    #[test]
    fn a_transfer_in_chunks_lands_identical_and_loadable() {
        let (a, b) = (TempDir::new("src"), TempDir::new("dst"));
        let (src, dst) = (SnapshotDir::open(&a.0).unwrap(), SnapshotDir::open(&b.0).unwrap());
        let data = body(10_000);
        let m = meta(50, 4);
        let sent = put(&src, &m, 1, &data);
        let src_bytes = fs::read(&sent.path).unwrap();
        let older = put(&dst, &meta(30, 3), 1, b"older");

        let mut st = dst.receive(&m).unwrap();
        assert_eq!((st.meta(), st.len(), st.is_empty()), (&m, 0, true));
        let partial = dst.path().join(format!("{:020}-{:020}.partial", 50, 4));
        assert!(partial.exists());

        let mut f = File::open(&sent.path).unwrap();
        let first = read_chunk(&mut f, 0, 4096).unwrap();
        st.write_chunk(0, &first).unwrap();
        // Out of order: a gap, and a duplicate. Refused, nothing changes.
        for off in [4097, 0, 100] {
            let err = st.write_chunk(off, b"xyz").unwrap_err();
            let msg = err.to_string();
            assert!(matches!(&err, SnapshotError::Corrupt { path, .. } if *path == partial), "{msg}");
            assert!(msg.contains(&format!("offset {off} arrived where offset 4096 was expected")), "{msg}");
            assert!(!msg.contains("refusing to start"), "a transfer is not a start-up failure: {msg}");
            assert_eq!(st.len(), 4096);
        }
        send(&sent.path, &mut st, 1000);
        assert_eq!(st.len(), src_bytes.len() as u64);

        let snap = st.finish(1).unwrap();
        assert_eq!(snap.path, dst.path_of(50, 4));
        assert_eq!((&snap.meta, &snap.data[..], snap.file_bytes), (&m, &data[..], src_bytes.len() as u64));
        assert_eq!(fs::read(&snap.path).unwrap(), src_bytes, "identical to the source file");
        assert_eq!(dst.load(&snap.path).unwrap().data, data);
        assert_eq!(dst.latest().unwrap().unwrap().meta, m);
        assert!(!partial.exists());
        assert!(!older.path.exists(), "pruned to keep=1");
        assert_eq!(names(dst.path()), vec![file_name(50, 4)]);
    }

    #[test]
    fn a_bad_transfer_fails_finish_and_leaves_no_file() {
        let (a, b) = (TempDir::new("bsrc"), TempDir::new("bdst"));
        let (src, dst) = (SnapshotDir::open(&a.0).unwrap(), SnapshotDir::open(&b.0).unwrap());
        let m = meta(50, 4);
        let sent = put(&src, &m, 1, &body(3000));
        let good = fs::read(&sent.path).unwrap();
        let prior = put(&dst, &meta(20, 2), 1, b"prior");
        let only_prior = vec![file_name(20, 2)];

        let mut damaged = good.clone();
        damaged[1500] ^= 0x04; // damaged in transit
        let damaged_path = a.0.join("damaged");
        fs::write(&damaged_path, &damaged).unwrap();
        let mut st = dst.receive(&m).unwrap();
        send(&damaged_path, &mut st, 7);
        let partial = st.path.clone();
        let err = st.finish(1).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(&err, SnapshotError::Corrupt { path, .. } if *path == partial), "{msg}");
        assert!(msg.contains("checksum mismatch") && msg.contains("not installed"), "{msg}");
        assert!(!msg.contains("refusing to start"), "{msg}");
        assert_eq!(names(dst.path()), only_prior, "no .partial and no final file");

        // Cut short: the last chunk never came.
        let mut st = dst.receive(&m).unwrap();
        st.write_chunk(0, &good[..good.len() - 10]).unwrap();
        assert!(matches!(st.finish(1), Err(SnapshotError::Corrupt { .. })));
        assert_eq!(names(dst.path()), only_prior);

        // Intact bytes, but not the snapshot that was announced.
        for announced in
            [meta(50, 5), meta(51, 4), SnapshotMeta { index: 50, term: 4, membership: Membership::from_voters([1, 2]) }]
        {
            let mut st = dst.receive(&announced).unwrap();
            send(&sent.path, &mut st, 512);
            let msg = st.finish(1).unwrap_err().to_string();
            assert!(msg.contains("was announced"), "{msg}");
            assert_eq!(names(dst.path()), only_prior, "{announced:?}");
        }

        // Abandoned: dropping the staging removes its partial file.
        let mut st = dst.receive(&m).unwrap();
        st.write_chunk(0, &good[..100]).unwrap();
        drop(st);
        assert_eq!(names(dst.path()), only_prior);
        assert_eq!(dst.latest().unwrap().unwrap().path, prior.path);
    }

    #[test]
    fn receive_truncates_an_earlier_partial_file() {
        let tmp = TempDir::new("retrunc");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let m = meta(3, 1);
        let partial = dir.path().join(format!("{:020}-{:020}.partial", 3, 1));
        fs::write(&partial, b"stale bytes from an earlier attempt").unwrap();
        let mut st = dir.receive(&m).unwrap();
        assert_eq!(fs::metadata(&partial).unwrap().len(), 0);
        let src = expected_file(&m, b"fresh");
        st.write_chunk(0, &src).unwrap();
        assert_eq!(st.finish(1).unwrap().data, &b"fresh"[..]);
    }

    #[test]
    fn read_chunk_reads_a_file_back_in_chunks_of_7() {
        let tmp = TempDir::new("chunks");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let saved = put(&dir, &meta(9, 9), 1, &body(101));
        let whole = fs::read(&saved.path).unwrap();
        assert_ne!(whole.len() % 7, 0, "a short last chunk");
        let mut f = File::open(&saved.path).unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let c = read_chunk(&mut f, got.len() as u64, 7).unwrap();
            if c.is_empty() {
                break;
            }
            sizes.push(c.len());
            got.extend_from_slice(&c);
        }
        assert_eq!(got, whole);
        assert!(sizes[..sizes.len() - 1].iter().all(|&n| n == 7));
        assert_eq!(*sizes.last().unwrap(), whole.len() % 7);
        assert_eq!(read_chunk(&mut f, 3, 5).unwrap(), whole[3..8], "at any offset");
        assert!(read_chunk(&mut f, whole.len() as u64 + 10, 7).unwrap().is_empty(), "past the end");
        assert!(read_chunk(&mut f, 0, 0).unwrap().is_empty());
    }

    #[test]
    fn io_errors_name_the_file() {
        let tmp = TempDir::new("io");
        let dir = SnapshotDir::open(&tmp.0).unwrap();
        let missing = dir.path_of(1, 1);
        let err = dir.load(&missing).unwrap_err();
        assert!(matches!(&err, SnapshotError::Io { path, .. } if *path == missing));
        assert!(err.to_string().starts_with(&format!("snapshot file {}: ", missing.display())), "{err}");
    }
}
