//! Hostile input on every decoder: peer messages, snapshot chunks, log
//! commands, WAL segments, snapshot files and state-machine snapshots.
//! Valid encodings are mutated (bit flips, random and extreme bytes —
//! 0xFF.. in a length field claims gigabytes —, truncation, insertion,
//! splicing) and fed to the decoders, which must return an error or a
//! value, never panic, and never make an allocation much larger than the
//! input (a global allocator records the largest one). Decoded messages
//! must encode back to bytes that decode to the same message.
//!
//! Deterministic (seeded) and bounded: `FUZZ_ITERS` per format (default
//! 20,000) keeps CI to seconds; `FUZZ_ITERS=1000000` for a long run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use raftkv::codec::{decode_message, decode_snapshot_chunk, encode_message, encode_snapshot_chunk};
use raftkv::kv::{Command, Compare, Condition, KvStore, Txn, TxnOp};
use raftkv::raft::{Body, Entry, EntryData, HardState, Membership, Message, PersistOp, SnapshotMeta, SplitMix64};
use raftkv::state_machine::{Frozen, StateMachine};
use raftkv::{snapshot, wal};

/// Records the largest single allocation while `WATCH` is on.
struct Watch;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static WATCHING: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if WATCHING.load(Relaxed) > 0 {
            LARGEST.fetch_max(l.size(), Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if WATCHING.load(Relaxed) > 0 {
            LARGEST.fetch_max(new, Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// One format at a time, so the allocation watch sees only its decoder.
static SERIAL: Mutex<()> = Mutex::new(());

fn iters() -> usize {
    std::env::var("FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

fn mutate(rng: &mut SplitMix64, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[(rng.next_u64() % seeds.len() as u64) as usize].clone();
    let rounds = 1 + rng.next_u64() % 4;
    for _ in 0..rounds {
        let pos = if b.is_empty() { 0 } else { (rng.next_u64() % b.len() as u64) as usize };
        match rng.next_u64() % 7 {
            0 if !b.is_empty() => b[pos] ^= 1 << (rng.next_u64() % 8),
            1 if !b.is_empty() => b[pos] = rng.next_u64() as u8,
            // A length or count field claiming the maximum.
            2 => {
                let n = [4usize, 8][(rng.next_u64() % 2) as usize].min(b.len() - pos);
                b[pos..pos + n].fill(0xFF);
            }
            3 => b.truncate(pos),
            4 => {
                let extra: Vec<u8> = (0..rng.next_u64() % 16).map(|_| rng.next_u64() as u8).collect();
                b.splice(pos..pos, extra);
            }
            5 => {
                let other = &seeds[(rng.next_u64() % seeds.len() as u64) as usize];
                let from = (rng.next_u64() % (other.len() as u64 + 1)) as usize;
                b.truncate(pos);
                b.extend_from_slice(&other[from..]);
            }
            _ if !b.is_empty() => b[pos] = [0x00, 0x7F, 0x80, 0xFF][(rng.next_u64() % 4) as usize],
            _ => {}
        }
    }
    b
}

/// Feeds `iters()` mutants of `seeds` to `decode` (which says whether it
/// accepted the input); fails on a panic or an allocation over
/// `budget(input length)`. Returns how many were accepted and refused.
fn fuzz(
    name: &str,
    seed: u64,
    seeds: &[Vec<u8>],
    budget: impl Fn(usize) -> usize,
    decode: impl Fn(&[u8]) -> bool,
) -> (usize, usize) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = SplitMix64(seed);
    let mut accepted = 0;
    for i in 0..iters() {
        let input = mutate(&mut rng, seeds);
        LARGEST.store(0, Relaxed);
        WATCHING.fetch_add(1, Relaxed);
        let r = catch_unwind(AssertUnwindSafe(|| decode(&input)));
        WATCHING.fetch_sub(1, Relaxed);
        let largest = LARGEST.load(Relaxed);
        match r {
            Ok(ok) => accepted += ok as usize,
            Err(_) => panic!("{name}: the decoder panicked on mutant {i} (seed {seed}): {input:02x?}"),
        }
        assert!(
            largest <= budget(input.len()),
            "{name}: a {}-byte input made a {largest}-byte allocation (mutant {i}, seed {seed}): {input:02x?}",
            input.len()
        );
    }
    eprintln!("{name}: {} mutants, {accepted} accepted, {} refused", iters(), iters() - accepted);
    (accepted, iters() - accepted)
}

/// Both outcomes happened: the mutants reach past the first check.
fn both((accepted, refused): (usize, usize), name: &str) {
    assert!(accepted > 0 && refused > 0, "{name}: {accepted} accepted, {refused} refused: the fuzzing is vacuous");
}

/// Decoders may copy their input a few times, plus small fixed tables.
fn linear(n: usize) -> usize {
    8 * n + (64 << 10)
}

fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
    let data = if data.is_empty() { EntryData::Noop } else { EntryData::Command(Bytes::from_static(data)) };
    Entry { index, term, data }
}

fn messages() -> Vec<Message> {
    let meta = SnapshotMeta { index: 70, term: 6, membership: Membership::from_voters([1, 2, 3]) };
    let bodies = vec![
        Body::RequestVote { pre_vote: true, last_log_index: 9, last_log_term: 2, transfer: false },
        Body::TimeoutNow,
        Body::TimeoutNowResponse { campaigned: false },
        Body::RequestVoteResponse { pre_vote: false, vote_granted: true },
        Body::AppendEntries {
            prev_log_index: 4,
            prev_log_term: 1,
            entries: vec![entry(5, 2, b"put"), entry(6, 2, b""), entry(7, 3, b"x")],
            leader_commit: 4,
            ctx: 3,
        },
        Body::AppendEntriesResponse {
            success: false,
            prev_log_index: 4,
            match_index: 3,
            conflict_index: 2,
            conflict_term: Some(1),
            ctx: 3,
        },
        Body::Heartbeat { commit: 9, ctx: 4 },
        Body::HeartbeatResponse { ctx: 4 },
        Body::InstallSnapshot { meta },
        Body::InstallSnapshotResponse { match_index: 70 },
    ];
    bodies.into_iter().map(|body| Message { from: 1, to: 2, term: 7, rpc_id: 11, body }).collect()
}

#[test]
fn peer_messages_and_snapshot_chunks() {
    let msgs = messages();
    let mut seeds: Vec<Vec<u8>> = msgs.iter().map(|m| encode_message(m).to_vec()).collect();
    let r = fuzz("peer message", 1, &seeds, linear, |b| {
        let Ok(m) = decode_message(Bytes::copy_from_slice(b)) else { return false };
        let again = decode_message(encode_message(&m)).expect("a decoded message encodes to a valid one");
        assert_eq!(again, m, "decode(encode(m)) == m");
        true
    });
    both(r, "peer message");
    seeds = msgs[6..7].iter().map(|m| encode_snapshot_chunk(m, 64, 128, &[7u8; 64]).to_vec()).collect();
    let r = fuzz("snapshot chunk", 2, &seeds, linear, |b| {
        let Ok(c) = decode_snapshot_chunk(Bytes::copy_from_slice(b)) else { return false };
        assert!(c.offset + c.data.len() as u64 <= c.total);
        true
    });
    both(r, "snapshot chunk");
}

#[test]
fn log_commands_and_state_machine_snapshots() {
    let cmds = [
        Command::Put { key: "a/b".into(), value: "v".into(), condition: Condition::None },
        Command::Put { key: "k".into(), value: "ü".into(), condition: Condition::IfValue("old".into()) },
        Command::Put { key: "k".into(), value: "".into(), condition: Condition::IfRevision(3) },
        Command::Delete { key: "x".into(), if_revision: Some(9) },
        Command::Txn(Txn {
            compare: vec![
                Compare::Value { key: "a".into(), value: "10".into() },
                Compare::Revision { key: "b".into(), revision: 7 },
                Compare::Exists { key: "c".into(), exists: false },
            ],
            success: vec![
                TxnOp::Put { key: "a".into(), value: "0".into() },
                TxnOp::Delete { key: "c".into() },
                TxnOp::Get { key: "b".into() },
            ],
            failure: vec![TxnOp::Get { key: "a".into() }],
        }),
        Command::OpenSession { now_ms: 1_700_000_000_000, ttl_ms: 600_000, max_sessions: 10_000 },
        Command::InSession {
            session: 12,
            seq: 3,
            now_ms: 1_700_000_000_000,
            inner: Box::new(Command::Delete { key: "x".into(), if_revision: None }),
        },
    ];
    let seeds: Vec<Vec<u8>> = cmds.iter().map(|c| c.encode().to_vec()).collect();
    let r = fuzz("log command", 3, &seeds, linear, |b| Command::decode(Bytes::copy_from_slice(b)).is_ok());
    both(r, "log command");
    let mut store = KvStore::new();
    for (i, c) in cmds.iter().cycle().take(40).enumerate() {
        let _ = StateMachine::apply(&mut store, i as u64 + 1, c.encode());
    }
    let mut body = Vec::new();
    store.freeze().write_to(&mut body).unwrap();
    let r = fuzz("state machine snapshot", 4, &[body], linear, |b| {
        <KvStore as StateMachine>::restore(40, Bytes::copy_from_slice(b)).is_ok()
    });
    both(r, "state machine snapshot");
}

fn wal_file(ops: &[PersistOp]) -> Vec<u8> {
    let mut b = BytesMut::from(wal::file_header());
    for op in ops {
        wal::encode_batch(&mut b, std::slice::from_ref(op));
    }
    b.to_vec()
}

#[test]
fn write_ahead_log_segments() {
    let hs = |t, v| Some(HardState { current_term: t, voted_for: Some(v) });
    let meta = SnapshotMeta { index: 20, term: 3, membership: Membership::from_voters([1, 2, 3]) };
    let a = wal_file(&[
        PersistOp {
            seq: 1,
            hard_state: hs(1, 1),
            entries: vec![entry(1, 1, b"a"), entry(2, 1, b"bb")],
            ..Default::default()
        },
        PersistOp {
            seq: 2,
            hard_state: hs(2, 3),
            truncate_from: Some(2),
            entries: vec![entry(2, 2, b"c")],
            ..Default::default()
        },
    ]);
    let b = wal_file(&[PersistOp {
        seq: 3,
        snapshot: Some(meta),
        entries: vec![entry(21, 3, b"z")],
        ..Default::default()
    }]);
    let mut c = BytesMut::from(wal::file_header());
    wal::encode_segment_start(&mut c, &HardState { current_term: 3, voted_for: None }, 21);
    let c = c.to_vec();
    let path = Path::new("fuzz.wal");
    let r = fuzz("WAL segment", 5, &[a.clone(), b, c.clone()], linear, |bytes| {
        let buf = Bytes::copy_from_slice(bytes);
        let one = wal::replay(path, &buf).is_ok();
        let two = [(1, path.to_path_buf(), Bytes::from(a.clone())), (2, path.to_path_buf(), buf)];
        let _ = wal::replay_segments(&two);
        one
    });
    both(r, "WAL segment");
}

#[test]
fn snapshot_files() {
    let dir = std::env::temp_dir().join(format!("raftkv-fuzz-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let snaps = snapshot::SnapshotDir::open(&dir).unwrap();
    let meta = SnapshotMeta { index: 12, term: 2, membership: Membership::from_voters([1, 2, 3]) };
    let saved = snaps.write(&meta, 2, |w| w.write_all(&[5u8; 300])).unwrap();
    let file = std::fs::read(&saved.path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let path = Path::new("fuzz.snap");
    let (_, refused) = fuzz("snapshot file", 6, &[file], linear, |b| {
        let Ok((m, body)) = snapshot::verify(path, &Bytes::copy_from_slice(b)) else { return false };
        // Only an intact file passes the checksum.
        assert_eq!((m, body.len()), (meta.clone(), 300));
        true
    });
    assert!(refused > iters() / 2);
}
