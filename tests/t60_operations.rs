//! Operating a cluster: per-actor log targets switched at run time,
//! Prometheus metrics that parse, pass `promtool`, and move, and start-up
//! errors that say what is wrong.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn set_filter(c: &Cluster, id: u64, filter: &str) {
    let r = c
        .client
        .request(&c.addr(id), "PUT", "/admin/log", Some(json!({"filter": filter}).to_string().as_bytes()))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["filter"], filter);
}

#[test]
fn switching_a_log_target_at_run_time_changes_what_the_node_writes() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let peers = c.followers(leader);
    let (watched, other) = (peers[0], peers[1]);
    let watched_target = format!("raftkv::replication::{watched}");
    let other_target = format!("raftkv::replication::{other}");

    let get = c.client.get(&c.addr(leader), "/admin/log").unwrap().json();
    assert_eq!(get["filter"], "info");
    assert!(get["targets"].as_array().unwrap().iter().any(|t| t == "raftkv::election"));

    // Only replication to one peer, at debug.
    set_filter(&c, leader, &format!("info,{watched_target}=debug"));
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("k{i}"), "v").status, 200);
    }
    let log = eventually(Duration::from_secs(5), "replication lines for the watched peer", || {
        let log = c.log(leader);
        log.contains(&format!("DEBUG {watched_target}")).then_some(log)
    });
    assert!(!log.contains(&format!("DEBUG {other_target}")), "the other peer stays quiet");

    // Switched back: no more such lines.
    set_filter(&c, leader, "info");
    let before = c.log(leader).len();
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("j{i}"), "v").status, 200);
    }
    // Another node's answer proves the writes were replicated meanwhile.
    assert_eq!(c.get(watched, "j19").json()["value"], "v");
    let after = c.log(leader)[before..].to_string();
    assert!(!after.contains(&format!("DEBUG {watched_target}")), "still logging after switch-off:\n{after}");

    // Bad filters change nothing.
    let bad = c.client.request(&c.addr(leader), "PUT", "/admin/log", Some(br#"{"filter": "raftkv=loud"}"#)).unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "invalid_field");
    assert_eq!(c.client.get(&c.addr(leader), "/admin/log").unwrap().json()["filter"], "info");
}

/// Parses the text format: sample name with labels -> value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(out.insert(name.to_string(), v).is_none(), "duplicate sample {name}");
    }
    out
}

fn scrape(c: &Cluster, id: u64) -> (String, BTreeMap<String, f64>) {
    let r = c.client.get(&c.addr(id), "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    let parsed = parse_metrics(&text);
    (text, parsed)
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed; .ci/run installs it");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_move_with_writes_and_elections() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c.followers(leader)[0];
    let (text, before) = scrape(&c, leader);
    promtool_check(&text);
    assert_eq!(before["raftkv_role{role=\"leader\"}"], 1.0);
    assert_eq!(before["raftkv_leader_id"], leader as f64);

    for i in 0..25 {
        assert_eq!(c.put(follower, &format!("m{i}"), "v").status, 200);
    }
    assert_eq!(c.get(leader, "m3").status, 200);
    let (text, after) = scrape(&c, leader);
    promtool_check(&text);
    assert!(after["raftkv_proposals_total"] >= before["raftkv_proposals_total"] + 25.0);
    assert!(after["raftkv_commit_index"] >= before["raftkv_commit_index"] + 25.0);
    assert!(after["raftkv_group_commit_entries_count"] > before["raftkv_group_commit_entries_count"]);
    assert!(after["raftkv_fsync_duration_seconds_count"] > before["raftkv_fsync_duration_seconds_count"]);
    assert!(after["raftkv_keys"] >= 25.0);
    let put_count = "raftkv_http_request_duration_seconds_count{route=\"/kv/{key}\",method=\"PUT\",status=\"200\"}";
    assert!(after[put_count] >= 25.0, "PUTs forwarded to the leader are counted there");
    let sent = format!("raftkv_append_entries_sent_total{{peer=\"{follower}\"}}");
    assert!(after[&sent] > before[&sent]);
    let lag = format!("raftkv_replication_lag_entries{{peer=\"{follower}\"}}");
    assert!(after.contains_key(&lag));

    // An election moves the election counters on the new leader and the
    // leader-change counter on a node that saw it.
    let (_, f_before) = scrape(&c, follower);
    c.kill(leader);
    let new = c.wait_leader(Duration::from_secs(10));
    let (text, new_after) = scrape(&c, new);
    promtool_check(&text);
    assert!(new_after["raftkv_elections_won_total"] >= 1.0);
    assert!(new_after["raftkv_elections_started_total"] >= 1.0);
    assert!(new_after["raftkv_term"] > before["raftkv_term"]);
    let (_, f_after) = scrape(&c, follower);
    assert!(f_after["raftkv_leader_changes_total"] > f_before["raftkv_leader_changes_total"]);
}

/// A node whose port is taken says so and stops at once, before it creates
/// or touches its data directory (seen in CI: the failed bind used to end
/// in a panic while the runtime was torn down, with no word of the cause).
#[test]
fn a_node_whose_port_is_taken_exits_with_a_clear_error_and_leaves_no_data() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("raftkv-port-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(BIN)
        .args(["--id", "1", "--listen", &addr.to_string(), "--peers", "2=127.0.0.1:1"])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("raftkv: error: cannot listen on {addr}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.exists(), "the data directory was created");
}
