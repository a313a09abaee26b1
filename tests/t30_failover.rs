//! Crashes: `kill -9` of the leader (re-election, no acknowledged write
//! lost, the old leader rejoins and catches up) and of the whole cluster
//! (every acknowledged write is back after restart).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn write_keys(c: &Cluster, via: u64, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let (k, v) = (format!("{prefix}{i}"), format!("value-{prefix}-{i}"));
            let r = c.put(via, &k, &v);
            assert_eq!(r.status, 200, "write {k}: {}", r.text());
            (k, v)
        })
        .collect()
}

fn assert_all_present(c: &Cluster, id: u64, kvs: &[(String, String)]) {
    for (k, v) in kvs {
        let r = c.get(id, k);
        assert_eq!(r.status, 200, "key {k} on node {id}: {}", r.text());
        assert_eq!(r.json()["value"], v.as_str(), "key {k} on node {id}");
    }
}

#[test]
fn killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut c = Cluster::start(3);
    let old = c.wait_leader(Duration::from_secs(10));
    let survivor = c.followers(old)[0];
    let mut acked = write_keys(&c, survivor, "before", 30);

    c.kill(old);
    let killed_at = Instant::now();
    // Keep trying a write through a survivor until one is acknowledged.
    let client = c.client_with(Duration::from_secs(5));
    eventually(Duration::from_secs(10), "a write acknowledged by the new leader", || {
        let r = client.put_json(&c.addr(survivor), "/kv/after-kill", &serde_json::json!({"value": "x"})).ok()?;
        (r.status == 200).then_some(())
    });
    let failover = killed_at.elapsed();
    eprintln!("leader kill -9 -> first acknowledged write: {} ms", failover.as_millis());
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}, more than a few election timeouts");
    acked.push(("after-kill".into(), "x".into()));

    let new = c.wait_leader(Duration::from_secs(10));
    assert_ne!(new, old);
    acked.extend(write_keys(&c, new, "during", 20));
    for id in c.live_ids() {
        assert_all_present(&c, id, &acked);
    }

    // The old leader restarts from its WAL and catches up.
    c.spawn(old);
    let leader = c.wait_leader(Duration::from_secs(10));
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(old, commit, Duration::from_secs(10));
    for (k, v) in &acked {
        let r = c.get_stale(old, k);
        assert_eq!(r.json()["value"], v.as_str(), "old leader caught up on {k}");
    }
    assert_all_present(&c, old, &acked);
}

#[test]
fn whole_cluster_killed_and_restarted_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let mut acked = write_keys(&c, leader, "k", 40);
    let f = c.followers(leader)[0];
    let del = c.client.delete(&c.addr(f), "/kv/k0").unwrap();
    assert_eq!(del.status, 200);
    acked.remove(0);

    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.spawn(id);
    }
    let leader = c.wait_leader(Duration::from_secs(15));
    for id in c.ids() {
        assert_all_present(&c, id, &acked);
    }
    assert_eq!(c.get(leader, "k0").status, 404, "the delete survived too");
    // Term moved on: the restarted cluster held a new election.
    assert!(c.status(leader).unwrap()["term"].as_u64().unwrap() >= 2);
}

/// The leader's counter `name{peer="<peer>"}` in `/metrics`.
fn peer_counter(c: &Cluster, leader: u64, name: &str, peer: u64) -> Option<u64> {
    let text = c.client.get(&c.addr(leader), "/metrics").ok()?.text();
    let prefix = format!("{name}{{peer=\"{peer}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_down_follower_is_retried_with_backoff_and_caught_up_when_it_returns() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let down = c.followers(leader)[0];
    c.kill(down);
    let sent = |c: &Cluster| peer_counter(c, leader, "raftkv_heartbeats_sent_total", down);
    let held = |c: &Cluster| peer_counter(c, leader, "raftkv_peer_requests_held_back_total", down);
    let sent_at_kill = sent(&c).unwrap();
    // Heartbeats are due every 50 ms; once the backoff has grown, most of
    // them are held back instead of sent.
    let held_back =
        eventually(Duration::from_secs(10), "heartbeats to the down node held back", || held(&c).filter(|&h| h >= 40));
    let tried = sent(&c).unwrap() - sent_at_kill;
    assert!(tried * 2 <= held_back, "{tried} heartbeats sent to the down node while {held_back} were held back");
    assert_eq!(c.put(leader, "while-down", "x").status, 200, "the majority goes on");

    c.spawn(down);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(down, commit, Duration::from_secs(5));
    assert_eq!(c.get_stale(down, "while-down").json()["value"], "x");
    let log = c.log(leader);
    assert!(log.contains(&format!("peer {down} is reachable again after")), "{log}");
}
