//! Write-ahead log recovery (DESIGN §4): a torn last record is cut off with
//! a warning and the node rejoins; corruption in the middle stops the node
//! with an error naming the file and the offset.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::Duration;

use common::*;

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
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len, "the torn bytes are cut");
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(leader, "after", "ok").status, 200);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(victim, commit, Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(c.get_stale(victim, &format!("k{i}")).json()["value"], "v");
    }
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
