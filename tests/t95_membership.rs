//! Changing the cluster while it runs, through what an operator has: a new
//! node started with `--join`, `/cluster/members` and `raftkvctl member`.
//! Grow 3→5 under writes and shrink back, remove the leader, replace a node
//! whose disk was wiped, and a removed node that comes back is refused
//! without disturbing anyone.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CTL: &str = env!("CARGO_BIN_EXE_raftkvctl");
const T: Duration = Duration::from_secs(20);

fn ctl(c: &Cluster, args: &[&str]) -> (i32, String) {
    let endpoints: Vec<String> = c.live_ids().iter().map(|&i| c.addr(i)).collect();
    let mut cmd = Command::new(CTL);
    c.ctl_env(&mut cmd);
    let out = cmd.arg("--endpoints").arg(endpoints.join(",")).args(args).output().expect("raftkvctl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn post(c: &Cluster, via: u64, path: &str, body: Option<Value>) -> Response {
    let body = body.map(|b| b.to_string());
    c.client.request(&c.addr(via), "POST", path, body.as_deref().map(str::as_bytes)).expect("POST")
}

fn delete_member(c: &Cluster, via: u64, id: u64) -> Response {
    c.client.delete(&c.addr(via), &format!("/cluster/members/{id}")).expect("DELETE")
}

fn metric(c: &Cluster, id: u64, name: &str) -> f64 {
    let text = c.client.get(&c.addr(id), "/metrics").unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name} on node {id}"))
}

/// Writes distinct keys through whichever node answers until stopped;
/// remembers every acknowledged one.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(c: &Cluster, via: &[u64]) -> Writer {
        let addrs: Vec<String> = via.iter().map(|&i| c.addr(i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let http = c.client_with(Duration::from_secs(5));
        let handle = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let key = format!("w{i}");
                let addr = &addrs[i as usize % addrs.len()];
                if let Ok(r) = http.put_json(addr, &format!("/kv/{key}"), &json!({"value": format!("v{i}")}))
                    && r.status == 200
                {
                    a.lock().unwrap().push(key);
                }
                i += 1;
            }
        });
        Writer { stop, acked, handle: Some(handle) }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Every acknowledged write reads back, linearizably, through `via`.
fn assert_all_there(c: &Cluster, via: u64, keys: &[String]) {
    assert!(!keys.is_empty(), "the writer got nothing acknowledged");
    for k in keys {
        let r = c.get(via, k);
        assert_eq!(r.status, 200, "acknowledged {k} lost: {}", r.text());
        assert_eq!(r.json()["value"], format!("v{}", &k[1..]), "{k}");
    }
}

#[test]
fn grow_from_three_to_five_under_writes_and_shrink_back() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let writer = Writer::start(&c, &[1, 2, 3]);
    // A new node joins through a follower; it is a learner until promoted.
    let via = c.followers(leader)[0];
    let n4 = c.add_joining_node(via);
    c.wait_members(leader, &[1, 2, 3], &[n4], T);
    let (code, out) = ctl(&c, &["member", "promote", &n4.to_string(), "--wait", "20"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("promote 4 to voter"), "{out}");
    let n5 = c.add_joining_node(n4);
    c.wait_members(leader, &[1, 2, 3, n4], &[n5], T);
    let (code, out) = ctl(&c, &["member", "promote", &n5.to_string(), "--wait", "20"]);
    assert_eq!(code, 0, "{out}");
    for id in c.ids() {
        c.wait_members(id, &[1, 2, 3, 4, 5], &[], T);
    }
    assert_eq!(metric(&c, leader, "raftkv_voters"), 5.0);
    let (code, out) = ctl(&c, &["member", "list"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" voter ")).count(), 5, "{out}");

    // Shrink back: the two new members leave again, one at a time.
    for id in [n5, n4] {
        let r = delete_member(&c, 1, id);
        assert_eq!(r.status, 200, "{}", r.text());
        c.kill(id);
    }
    for id in [1, 2, 3] {
        c.wait_members(id, &[1, 2, 3], &[], T);
    }
    let acked = writer.finish();
    let leader = c.wait_leader(T);
    assert_all_there(&c, leader, &acked);
    let members = c.members(leader);
    assert_eq!(members["removed"], json!([4, 5]));
}

#[test]
fn the_leader_can_remove_itself_and_hands_over() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(T);
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("w{i}"), &format!("v{i}")).status, 200);
    }
    // Asked through a follower; answered once the change has committed.
    let via = c.followers(leader)[0];
    let r = delete_member(&c, via, leader);
    assert_eq!(r.status, 200, "{}", r.text());
    let rest = c.followers(leader);
    c.kill(leader);
    let new = c.wait_leader_among(&rest, T);
    assert_ne!(new, leader);
    for &id in &rest {
        c.wait_members(id, &rest, &[], T);
    }
    assert_eq!(c.put(new, "after", "removal").status, 200);
    let keys: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    assert_all_there(&c, new, &keys);
}

#[test]
fn a_wiped_node_is_replaced_by_a_new_member_without_losing_a_write() {
    // A small snapshot threshold: the new member catches up from a snapshot.
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "50", "--snapshot-keep-entries", "10"]);
    let leader = c.wait_leader(T);
    let writer = Writer::start(&c, &[leader]);
    eventually(T, "200 acknowledged writes", || (writer.acked.lock().unwrap().len() >= 200).then_some(()));
    // Node 3's disk dies.
    let dead = c.followers(leader)[1];
    c.kill(dead);
    std::fs::remove_dir_all(&c.node(dead).data_dir).unwrap();
    // Its replacement joins as node 4, catches up, becomes a voter; then
    // the dead member is removed.
    let n4 = c.add_joining_node(leader);
    let (code, out) = ctl(&c, &["member", "promote", &n4.to_string(), "--wait", "20"]);
    assert_eq!(code, 0, "{out}");
    let r = delete_member(&c, leader, dead);
    assert_eq!(r.status, 200, "{}", r.text());
    let acked = writer.finish();
    let voters: Vec<u64> = c.ids().into_iter().filter(|&i| i != dead).collect();
    c.wait_members(n4, &voters, &[], T);
    let received = c.status(n4).unwrap()["log"]["snapshots_received"].as_u64().unwrap();
    assert!(received >= 1, "the new member caught up from a snapshot");
    assert_all_there(&c, n4, &acked);

    // The dead node's id is never used again, whatever its data dir holds.
    let r = post(&c, leader, "/cluster/members", Some(json!({"id": dead, "address": "127.0.0.1:9", "learner": true})));
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("id_was_removed")), "{}", r.text());
    let dir = c.dir.join("reused");
    let mut cmd = Command::new(BIN);
    c.secure(dead, &mut cmd);
    let out = cmd
        .args(["--id", &dead.to_string(), "--listen", &format!("{}:0", c.ip(dead))])
        .args(["--join", &c.addr(leader)])
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was removed") && err.contains("never used before"), "{err}");
}

#[test]
fn a_removed_node_that_comes_back_cannot_disturb_the_cluster() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let gone = c.followers(leader)[0];
    // It is down while it is removed, so it never learns of it.
    c.kill(gone);
    let r = delete_member(&c, leader, gone);
    assert_eq!(r.status, 200, "{}", r.text());
    let term = c.status(leader).unwrap()["term"].as_u64().unwrap();
    c.spawn(gone);
    // It campaigns with its old configuration; the members refuse it, and
    // it stops with a status a supervisor can tell from a crash.
    let status = eventually(T, "the removed node to stop", || c.exit_status(gone));
    assert_eq!(status.code(), Some(78), "{}", c.log(gone));
    assert!(c.log(gone).contains("says it is no member of the cluster"), "{}", c.log(gone));
    let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != gone).collect();
    assert_eq!(c.wait_leader_among(&rest, T), leader);
    assert_eq!(c.status(leader).unwrap()["term"].as_u64(), Some(term), "the removed node raised nobody's term");
    assert_eq!(c.put(leader, "still", "fine").status, 200);
}

#[test]
fn changes_that_are_unsafe_or_malformed_are_refused_and_change_nothing() {
    let mut c = Cluster::start_with(3, &["--promote-max-lag", "5"]);
    let leader = c.wait_leader(T);
    let f = c.followers(leader);
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("k{i}"), "v").status, 200);
    }
    let add = |body: Value| post(&c, f[0], "/cluster/members", Some(body));
    let code = |r: &Response| (r.status, r.json()["code"].as_str().map(str::to_string));
    let s = |c: &str| Some(c.to_string());
    assert_eq!(
        code(&add(json!({"id": 9, "address": "127.0.0.1:9", "learner": false}))),
        (400, s("must_join_as_learner"))
    );
    assert_eq!(code(&add(json!({"id": 0, "address": "127.0.0.1:9"}))), (400, s("invalid_field")));
    assert_eq!(code(&add(json!({"id": 9, "address": "nowhere"}))), (400, s("invalid_field")));
    assert_eq!(code(&add(json!({"id": 9, "address": "127.0.0.1:9", "extra": 1}))), (400, s("unknown_field")));
    assert_eq!(code(&add(json!({"id": f[1], "address": "127.0.0.1:9"}))), (409, s("already_member")));
    assert_eq!(code(&post(&c, f[0], "/cluster/members/77/promote", None)), (404, s("unknown_member")));
    assert_eq!(code(&post(&c, f[0], &format!("/cluster/members/{}/promote", f[1]), None)), (409, s("not_a_learner")));
    assert_eq!(code(&post(&c, f[0], "/cluster/members/abc/promote", None)), (400, s("invalid_id")));
    // A learner nobody runs stays at 0: promoting it is refused.
    let r = add(json!({"id": 9, "address": format!("{}:9", c.ip(1))}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post(&c, leader, "/cluster/members/9/promote", None);
    assert_eq!(code(&r), (409, s("learner_behind")), "{}", r.text());
    assert_eq!(r.json()["match_index"], 0);
    let (exit, out) = ctl(&c, &["member", "promote", "9"]);
    assert_eq!(exit, 9, "{out}");
    assert!(out.contains("learner_behind"), "{out}");
    assert_eq!(delete_member(&c, leader, 9).status, 200);
    // With one voter down, removing another up one would leave no reachable majority.
    c.kill(f[1]);
    eventually(T, "the leader to notice", || {
        let m = c.members(leader);
        let down = m["members"].as_array()?.iter().find(|m| m["id"] == f[1])?["reachable"] == false;
        down.then_some(())
    });
    let r = delete_member(&c, leader, f[0]);
    assert_eq!(code(&r), (409, s("would_lose_quorum")), "{}", r.text());
    c.wait_members(leader, &[1, 2, 3], &[], T);
    assert_eq!(c.put(leader, "after", "refusals").status, 200);
}

/// Leadership moves three times while a client writes through every node:
/// each transfer lands on the chosen node and no acknowledged write is lost.
#[test]
fn leader_transfers_under_write_load_lose_nothing() {
    let c = Cluster::start(3);
    let mut leader = c.wait_leader(T);
    let writer = Writer::start(&c, &[1, 2, 3]);
    for _ in 0..3 {
        let target = c.followers(leader)[0];
        let (code, out) = ctl(&c, &["leader", "transfer", "--to", &target.to_string()]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("node {target} leads now")), "{out}");
        leader = c.wait_leader(T);
        assert_eq!(leader, target);
    }
    let acked = writer.finish();
    assert_all_there(&c, leader, &acked);
}
