//! Leadership transfer (§3.10 of the dissertation) through the API a user
//! has: `POST /admin/transfer-leader`, `raftkvctl transfer-leader`, and
//! SIGTERM on the leader, which hands over before the node stops — so a
//! planned restart costs no election timeout.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CTL: &str = env!("CARGO_BIN_EXE_raftkvctl");

fn metric(c: &Cluster, id: u64, name: &str) -> f64 {
    let text = c.client.get(&c.addr(id), "/metrics").unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name} on node {id}"))
}

fn transfer(c: &Cluster, via: u64, body: &str) -> raftkv::client::Response {
    c.client.request(&c.addr(via), "POST", "/admin/transfer-leader", Some(body.as_bytes())).expect("POST")
}

fn term_of(c: &Cluster, id: u64) -> u64 {
    c.status(id).expect("status")["term"].as_u64().unwrap()
}

/// Asked through a follower (which passes it on to the leader), the
/// transfer makes the chosen node leader in the next term: one election,
/// started by TimeoutNow, not by a timeout. Nothing written before is lost.
#[test]
fn transfer_through_any_node_makes_the_target_leader_in_the_next_term() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let term = term_of(&c, leader);
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("k{i}"), &format!("v{i}")).status, 200);
    }
    let followers = c.followers(leader);
    let (target, via) = (followers[0], followers[1]);
    let r = transfer(&c, via, &json!({"to": target}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["leader"], target);
    assert_eq!(v["previous_leader"], leader);
    assert_eq!(v["term"], term + 1);
    assert_eq!(c.wait_leader(Duration::from_secs(10)), target);
    for id in c.ids() {
        assert_eq!(term_of(&c, id), term + 1, "node {id}: exactly one election");
    }
    assert_eq!(metric(&c, target, "raftkv_timeout_now_received_total"), 1.0);
    assert_eq!(metric(&c, leader, "raftkv_leader_transfers_total"), 1.0);
    for i in 0..20 {
        let r = c.get(via, &format!("k{i}"));
        assert_eq!(r.json()["value"], format!("v{i}"));
    }
    assert_eq!(c.put(via, "after", "x").status, 200);
    // Without a target: the most up-to-date voter; to the leader itself: nothing to do.
    let r = transfer(&c, target, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let next = r.json()["leader"].as_u64().unwrap();
    assert_ne!(next, target);
    assert_eq!(c.wait_leader(Duration::from_secs(10)), next);
    let r = transfer(&c, next, &json!({"to": next}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["previous_leader"], next);
}

/// Bad requests get a 4xx with a stable code, and change nothing.
#[test]
fn bad_transfer_requests_get_clear_errors() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let term = term_of(&c, leader);
    for (body, status, code) in [
        (json!({"to": 9}).to_string(), 400, "unknown_member"),
        (json!({"to": "two"}).to_string(), 400, "invalid_field"),
        (json!({"to": 0}).to_string(), 400, "invalid_field"),
        (json!({"node": 2}).to_string(), 400, "unknown_field"),
        ("[2]".to_string(), 400, "invalid_json"),
        ("{to: 2".to_string(), 400, "invalid_json"),
    ] {
        let r = transfer(&c, leader, &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.json()["code"], code, "{body}: {}", r.text());
    }
    let r = c.client.get(&c.addr(leader), "/admin/transfer-leader").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(c.wait_leader(Duration::from_secs(5)), leader);
    assert_eq!(term_of(&c, leader), term, "nothing changed");
}

/// `kill -TERM` of the leader while a client writes through another node:
/// the leader hands over first (the new leader is in the next term and was
/// started by TimeoutNow: nobody waited out an election timeout), then
/// exits 0. Every write that was acknowledged is there afterwards.
#[test]
fn sigterm_on_the_leader_hands_over_before_it_exits() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let term = term_of(&c, leader);
    let writer_node = c.followers(leader)[0];
    let (addr, stop) = (c.addr(writer_node), Arc::new(AtomicBool::new(false)));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let http = c.client_with(Duration::from_secs(5));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("w{n}");
                if let Ok(r) = http.put_json(&addr, &format!("/kv/{key}"), &json!({"value": n.to_string()}))
                    && r.status == 200
                {
                    acked.lock().unwrap().push((key, n));
                }
            }
        })
    };
    eventually(Duration::from_secs(10), "writes to flow", || (acked.lock().unwrap().len() >= 20).then_some(()));
    c.signal(leader, "TERM");
    let status = eventually(Duration::from_secs(15), "the old leader to exit", || c.exit_status(leader));
    assert_eq!(status.code(), Some(0), "log:\n{}", c.log(leader));
    assert!(c.log(leader).contains("handed leadership to node"), "log:\n{}", c.log(leader));
    let survivors = c.followers(leader);
    let new = c.wait_leader_among(&survivors, Duration::from_secs(10));
    for &id in &survivors {
        assert_eq!(term_of(&c, id), term + 1, "node {id}: one election, started by TimeoutNow");
    }
    assert_eq!(metric(&c, new, "raftkv_timeout_now_received_total"), 1.0);
    let before = acked.lock().unwrap().len();
    eventually(Duration::from_secs(10), "writes to flow again", || {
        (acked.lock().unwrap().len() >= before + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    for (key, n) in acked.lock().unwrap().iter() {
        let r = c.get(new, key);
        assert_eq!(r.status, 200, "acknowledged write {key} lost");
        assert_eq!(r.json()["value"], Value::from(n.to_string()), "{key}");
    }
}

/// `raftkvctl transfer-leader`, with and without --to.
#[test]
fn the_cli_transfers_leadership() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let target = c.followers(leader)[1];
    let eps: Vec<String> = c.ids().iter().map(|&i| c.addr(i)).collect();
    let mut cmd = Command::new(CTL);
    c.ctl_env(&mut cmd);
    let out = cmd
        .arg("--endpoints")
        .arg(eps.join(","))
        .args(["transfer-leader", "--to", &target.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("node {target} leads now")), "{stdout}");
    assert_eq!(c.wait_leader(Duration::from_secs(10)), target);
    let mut cmd = Command::new(CTL);
    c.ctl_env(&mut cmd);
    let out = cmd.arg("--endpoints").arg(eps.join(",")).args(["transfer-leader", "--to", "7"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 7 is not a voting member"), "{out:?}");
}
