//! Write-ahead log recovery (DESIGN §4, README "Crash safety"): whatever
//! follows the last complete batch (a torn record, zero-filled pages) is cut
//! off with a warning and the node rejoins; corruption before a commit
//! marker stops the node with an error naming the file and the offset; a
//! second process on a data directory in use is refused.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use raftkv::raft::{Entry, EntryData, HardState, PersistOp};
use raftkv::wal::encode_batch;

fn wal_file(c: &Cluster, id: u64) -> std::path::PathBuf {
    raftkv::wal::wal_path(&c.node(id).data_dir)
}

#[test]
fn a_torn_last_record_is_cut_and_the_node_recovers() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(c.put(leader, &format!("k{i}"), "v").status, 200);
    }
    let victim = c.followers(leader)[0];
    c.kill(victim);
    // A crash in the middle of an append: a header promising 100 bytes and
    // only part of them on disk.
    let path = wal_file(&c, victim);
    let good_len = fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[0xAB; 14]).unwrap();
    drop(f);

    c.spawn(victim);
    assert!(c.log(victim).contains("torn tail"), "a warning is logged:\n{}", c.log(victim));
    // From the node's own account: by the time the file could be measured,
    // the rejoined node may already have appended what the leader sent.
    let cut = format!("cutting a torn tail of 18 bytes at offset {good_len},");
    assert!(c.log(victim).contains(&cut), "the torn bytes are cut ({cut}):\n{}", c.log(victim));
    rejoins_with_k0_to_k9(&c, victim);
}

#[test]
fn corruption_in_the_middle_stops_the_node_naming_file_and_offset() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("k{i}"), "some value").status, 200);
    }
    let victim = c.followers(leader)[0];
    c.kill(victim);
    let path = wal_file(&c, victim);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5A;
    fs::write(&path, &bytes).unwrap();

    let out = c.command(victim).output().expect("run raftkv");
    assert!(!out.status.success(), "a corrupt WAL must stop the node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(path.to_str().unwrap()), "names the file: {stderr}");
    assert!(stderr.contains("corrupt at offset"), "names the offset: {stderr}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "the evidence is left untouched");
    // The other two carry on.
    assert_eq!(c.put(leader, "still", "up").status, 200);
}

#[test]
fn a_zero_filled_tail_after_the_last_complete_batch_is_cut_and_the_node_rejoins() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(c.put(leader, &format!("k{i}"), "v").status, 200);
    }
    let victim = c.followers(leader)[0];
    c.kill(victim);
    // What power loss leaves of a multi-page batch that was never
    // acknowledged: its first page, a zero-filled page where the second
    // should be, the third (records that parse, but not the commit marker),
    // then zero-filled pages the file had already grown into.
    let big = Bytes::from("x".repeat(3000));
    let entries: Vec<Entry> =
        (0..3).map(|i| Entry { index: 1000 + i, term: 99, data: EntryData::Command(big.clone()) }).collect();
    let hard_state = Some(HardState { current_term: 99, voted_for: Some(victim) });
    let mut batch = BytesMut::new();
    encode_batch(&mut batch, &[PersistOp { seq: 1, hard_state, entries, ..Default::default() }]);
    let mut marker = BytesMut::new();
    encode_batch(&mut marker, &[]);
    let mut tail = batch[..batch.len() - marker.len()].to_vec();
    tail[1000..5096].fill(0);
    tail.resize(tail.len() + 8192, 0);
    let path = wal_file(&c, victim);
    let good_len = fs::metadata(&path).unwrap().len();
    OpenOptions::new().append(true).open(&path).unwrap().write_all(&tail).unwrap();

    c.spawn(victim);
    assert!(c.log(victim).contains("torn tail"), "a warning is logged:\n{}", c.log(victim));
    let cut = format!("cutting a torn tail of {} bytes at offset {good_len},", tail.len());
    assert!(
        c.log(victim).contains(&cut),
        "everything after the last complete batch is cut ({cut}):\n{}",
        c.log(victim)
    );
    c.wait_leader(Duration::from_secs(10));
    assert!(c.status(victim).unwrap()["term"].as_u64().unwrap() < 99, "the unacknowledged vote is not applied");
    rejoins_with_k0_to_k9(&c, victim);
}

/// The restarted `victim` catches up with a new write and serves k0..k9 = "v".
fn rejoins_with_k0_to_k9(c: &Cluster, victim: u64) {
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(leader, "after", "ok").status, 200);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(victim, commit, Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(c.get_stale(victim, &format!("k{i}")).json()["value"], "v");
    }
}

#[test]
fn a_second_process_on_a_data_directory_in_use_is_refused() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(leader, "before", "1").status, 200);
    let victim = c.followers(leader)[0];
    let pid = c.node(victim).child.as_ref().unwrap().id();

    let out = c.command(victim).output().expect("run raftkv");
    assert!(!out.status.success(), "the second process must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = c.node(victim).data_dir.display().to_string();
    assert!(
        stderr.contains(&format!("data directory {dir} is in use by another raftkv process (pid {pid})")),
        "a clear error naming the directory and the holder: {stderr}"
    );

    // The first one keeps working: it takes writes and applies them.
    assert!(c.exit_status(victim).is_none(), "the first process still runs");
    assert_eq!(c.put(victim, "after", "2").status, 200);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(victim, commit, Duration::from_secs(10));
    assert_eq!(c.get_stale(victim, "after").json()["value"], "2");
    // And restarts cleanly once it is gone (the lock dies with the process).
    c.restart(victim);
    c.wait_applied(victim, commit, Duration::from_secs(10));
}
