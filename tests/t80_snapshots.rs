//! Snapshots and log compaction, black-box: a follower behind the leader's
//! compacted log catches up through a streamed snapshot; a whole cluster
//! restarts from snapshots plus the WAL after them with every acknowledged
//! write; a corrupt snapshot file stops the node with an error naming it;
//! `POST /admin/snapshot` and `raftkvctl snapshot` take one on demand.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Small thresholds so that a few thousand writes compact several times,
/// segments small enough to be purged, chunks small enough that a
/// transfer takes many requests.
const POLICY: &[&str] = &[
    "--snapshot-entries",
    "2000",
    // Not amortized: snapshot every 2000 entries however large the state.
    "--snapshot-log-ratio",
    "0",
    "--snapshot-keep-entries",
    "200",
    "--wal-segment-bytes",
    "65536",
    "--snapshot-chunk-bytes",
    "65536",
];

/// Writes `count` keys `{prefix}{i}` = `v{i}` through node `id` from 16
/// client threads; returns what was acknowledged.
fn write_keys(c: &Cluster, id: u64, prefix: &str, count: usize) -> BTreeMap<String, String> {
    let addr = Arc::new(c.addr(id));
    let base = c.client_with(Duration::from_secs(10));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (addr, client) = (addr.clone(), base.clone());
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in (t..count).step_by(16) {
                    let (key, value) = (format!("{prefix}{i}"), format!("v{i}"));
                    let r = client.put_json(&addr, &format!("/kv/{key}"), &json!({"value": value})).expect("PUT");
                    assert_eq!(r.status, 200, "PUT {key}: {}", r.text());
                    acked.push((key, value));
                }
                acked
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("writer thread")).collect()
}

/// Every key under `prefix` as node `id` holds it (`consistency`: stale or linearizable).
fn read_all(c: &Cluster, id: u64, prefix: &str, consistency: &str) -> BTreeMap<String, String> {
    let r = c.client.get(&c.addr(id), &format!("/kv?prefix={prefix}&consistency={consistency}")).expect("list");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (i["key"].as_str().unwrap().to_string(), i["value"].as_str().unwrap().to_string()))
        .collect()
}

fn log_status(c: &Cluster, id: u64) -> Value {
    c.status(id).expect("status")["log"].clone()
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() {
    let mut c = Cluster::start_with(3, POLICY);
    let leader = c.wait_leader(Duration::from_secs(10));
    let behind = c.followers(leader)[0];
    c.kill(behind);

    let acked = write_keys(&c, leader, "k/", 50_000);
    assert_eq!(acked.len(), 50_000);
    let l = log_status(&c, leader);
    assert!(l["snapshot_index"].as_u64().unwrap() >= 40_000, "the leader compacted: {l}");
    assert!(l["first_index"].as_u64().unwrap() > 40_000, "its log starts long after what node {behind} has: {l}");
    assert!(l["entries_in_memory"].as_u64().unwrap() <= 2_000 + 200 + 2_000, "the log in memory is bounded: {l}");
    // 50k entries are ~3 MB of WAL: without purging, ~50 segments of 64 KiB.
    assert!(l["wal_segments"].as_u64().unwrap() <= 10, "covered WAL segments are deleted: {l}");

    c.spawn(behind);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(behind, commit, Duration::from_secs(60));
    let f = log_status(&c, behind);
    assert!(f["snapshots_received"].as_u64().unwrap() >= 1, "node {behind} got a snapshot: {f}");
    assert!(log_status(&c, leader)["snapshots_sent"].as_u64().unwrap() >= 1);
    assert!(c.log(behind).contains("installs snapshot"), "{}", c.log(behind));
    assert_eq!(read_all(&c, behind, "k/", "stale"), acked, "node {behind} serves the same data");

    // It keeps up by appends afterwards, and serves new writes too.
    assert_eq!(c.put(leader, "after", "snapshot").status, 200);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(behind, commit, Duration::from_secs(10));
    assert_eq!(c.get_stale(behind, "after").json()["value"], "snapshot");
}

#[test]
fn the_whole_cluster_restarts_after_compaction_with_every_acknowledged_write() {
    let mut c = Cluster::start_with(3, POLICY);
    let leader = c.wait_leader(Duration::from_secs(10));
    let mut acked = write_keys(&c, leader, "r/", 7_000);
    // Overwrites and deletes after the snapshots, so the WAL tail matters.
    for i in 0..50 {
        let key = format!("r/{i}");
        assert_eq!(c.put(leader, &key, "new").status, 200);
        acked.insert(key, "new".into());
    }
    for i in 50..80 {
        let key = format!("r/{i}");
        let r = c.client.delete(&c.addr(leader), &format!("/kv/{key}")).expect("DELETE");
        assert_eq!(r.status, 200);
        acked.remove(&key);
    }
    for id in c.ids() {
        assert!(log_status(&c, id)["snapshot_index"].as_u64().unwrap() >= 6_000, "node {id} took snapshots");
    }
    for id in c.ids() {
        c.kill(id);
    }
    let started = Instant::now();
    for id in c.ids() {
        c.spawn(id);
    }
    let leader = c.wait_leader(Duration::from_secs(20));
    eprintln!("cluster back with a leader in {:?}", started.elapsed());
    for id in c.ids() {
        assert!(c.log(id).contains("restored snapshot"), "node {id} restarted from a snapshot:\n{}", c.log(id));
    }
    assert_eq!(read_all(&c, leader, "r/", "linearizable"), acked, "every acknowledged write is back");
}

#[test]
fn snapshots_on_demand_and_a_corrupt_snapshot_file_refuses_to_start() {
    let mut c = Cluster::start_with(1, &[]);
    c.wait_leader(Duration::from_secs(10));
    for i in 0..100 {
        assert_eq!(c.put(1, &format!("c/{i}"), "x").status, 200);
    }
    let ctl = env!("CARGO_BIN_EXE_raftkvctl");
    let mut cmd = Command::new(ctl);
    c.ctl_env(&mut cmd);
    let out = cmd.args(["--endpoints", &c.addr(1), "--output", "json", "snapshot"]).output().unwrap();
    assert!(out.status.success(), "raftkvctl snapshot: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let snap = &v[0]["snapshot"];
    assert!(snap["index"].as_u64().unwrap() >= 100, "{v}");
    let path = snap["path"].as_str().unwrap().to_string();
    assert!(std::fs::metadata(&path).unwrap().len() == snap["bytes"].as_u64().unwrap());
    assert_eq!(log_status(&c, 1)["snapshot_index"], snap["index"]);
    // The endpoint itself: a second call with nothing new returns the same snapshot.
    let again = c.client.request(&c.addr(1), "POST", "/admin/snapshot", None).unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["index"], snap["index"]);
    let wrong = c.client.get(&c.addr(1), "/admin/snapshot").unwrap();
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.json()["code"], "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("POST"), "a 405 says what the route takes");

    c.kill(1);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let mut child = c.command(1).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = eventually(Duration::from_secs(10), "the node to refuse to start", || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&path) && stderr.contains("corrupt"), "the error names the file: {stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is left untouched");
}
