//! Client sessions: a write tagged (session, sequence number) is applied
//! once however often it is retried — after a 504, through another node,
//! across a leader change, a restart and an InstallSnapshot — and a retry
//! that can no longer be answered is refused with a documented error, never
//! applied a second time. `raftkvctl` writes in a session and retries an
//! unknown outcome itself.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CTL: &str = env!("CARGO_BIN_EXE_raftkvctl");
const T: Duration = Duration::from_secs(20);
/// Long elections, short request deadline: followers can be paused long
/// enough for a write to time out (504) without anyone campaigning.
const SLOW_ELECTIONS: [&str; 4] = ["--election-timeout-ms", "3000", "--request-timeout-ms", "300"];

fn open_session(c: &Cluster, node: u64) -> u64 {
    let r = c.client.request(&c.addr(node), "POST", "/sessions", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["session"].as_u64().unwrap()
}

/// `PUT /kv/{key}` with `body`, tagged (`session`, `seq`) when given.
fn put(c: &Cluster, node: u64, key: &str, body: &Value, tag: Option<(u64, u64)>) -> Response {
    let tags: Vec<(&str, String)> =
        tag.map(|(s, q)| vec![("raftkv-session", s.to_string()), ("raftkv-seq", q.to_string())]).unwrap_or_default();
    let body = body.to_string();
    c.client.request_with(&c.addr(node), "PUT", &format!("/kv/{key}"), Some(body.as_bytes()), &tags).unwrap()
}

fn commit_index(c: &Cluster, id: u64) -> u64 {
    c.status(id).unwrap()["commit_index"].as_u64().unwrap()
}

#[test]
fn a_write_retried_after_its_504_is_applied_once() {
    let c = Cluster::start_with(3, &SLOW_ELECTIONS);
    let leader = c.wait_leader(T);
    let followers = c.followers(leader);
    let s = open_session(&c, followers[0]);
    // Create-only: applied a second time it would fail with 412.
    let create = json!({"value": "v1", "if_revision": 0});
    for &f in &followers {
        c.signal(f, "STOP");
    }
    let first = put(&c, leader, "once", &create, Some((s, 1)));
    assert_eq!((first.status, first.json()["code"].as_str()), (504, Some("timeout")), "{}", first.text());
    let proposed = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();
    for &f in &followers {
        c.signal(f, "CONT");
    }
    // The write was proposed before its 504 and now commits: it happened.
    eventually(T, "the timed-out write to commit", || (commit_index(&c, leader) >= proposed).then_some(()));
    // The client cannot know that; it retries with the same tag, here
    // through a follower: the first application's answer comes back.
    let retry = put(&c, followers[1], "once", &create, Some((s, 1)));
    assert_eq!(retry.status, 200, "{}", retry.text());
    let revision = retry.json()["revision"].as_u64().unwrap();
    assert!(revision <= proposed, "the answer is the first application's (revision {revision} <= {proposed})");
    let now = c.get(leader, "once").json();
    assert_eq!((now["value"].as_str(), now["revision"].as_u64()), (Some("v1"), Some(revision)), "{now}");
    // Again, and again: the same answer, and the key does not move.
    assert_eq!(put(&c, leader, "once", &create, Some((s, 1))).json(), retry.json());
    // Without the session the retry is applied again (and fails its
    // condition): what the session saved the client from.
    assert_eq!(put(&c, leader, "once", &create, None).status, 412);
    // The next sequence number is a new write; the old one is now gone.
    let next = put(&c, leader, "once", &json!({"value": "v2"}), Some((s, 2)));
    assert_eq!(next.status, 200, "{}", next.text());
    let old = put(&c, leader, "once", &create, Some((s, 1)));
    assert_eq!((old.status, old.json()["code"].as_str()), (409, Some("sequence_superseded")), "{}", old.text());
    assert_eq!(old.json()["last_seq"], 2);
    assert_eq!(c.get(leader, "once").json()["value"], "v2");
}

#[test]
fn sessions_survive_leader_change_restart_and_install_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "20", "--snapshot-keep-entries", "5"]);
    let leader = c.wait_leader(T);
    let s = open_session(&c, leader);
    let first = put(&c, leader, "k", &json!({"value": "v"}), Some((s, 1)));
    assert_eq!(first.status, 200, "{}", first.text());
    let answer = first.json();
    let retry_is_answered_the_same = |c: &Cluster, via: u64| {
        let r = put(c, via, "k", &json!({"value": "v"}), Some((s, 1)));
        assert_eq!((r.status, r.json()), (200, answer.clone()), "{}", r.text());
    };

    // Leader change.
    c.kill(leader);
    let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let second = c.wait_leader_among(&rest, T);
    retry_is_answered_the_same(&c, second);
    c.restart(leader);

    // InstallSnapshot: a follower misses enough for the log to be
    // compacted past it, catches up from a snapshot, then leads.
    let behind = c.followers(second)[0];
    c.kill(behind);
    for i in 0..100 {
        assert_eq!(c.put(second, &format!("fill{i}"), "x").status, 200);
    }
    c.restart(behind);
    eventually(T, "the follower to install a snapshot", || {
        let st = c.status(behind)?;
        (st["log"]["snapshots_received"].as_u64()? >= 1 && st["applied_index"] == c.status(second)?["applied_index"])
            .then_some(())
    });
    let r = c.client.request(
        &c.addr(second),
        "POST",
        "/cluster/leader/transfer",
        Some(format!(r#"{{"to": {behind}}}"#).as_bytes()),
    );
    assert_eq!(r.unwrap().status, 200);
    assert_eq!(c.wait_leader(T), behind);
    retry_is_answered_the_same(&c, behind);

    // Restart of the whole cluster, from snapshots and the WAL.
    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.restart(id);
    }
    let leader = c.wait_leader(T);
    retry_is_answered_the_same(&c, leader);
    assert_eq!(c.get(leader, "k").json()["revision"], answer["revision"]);
}

#[test]
fn expired_and_evicted_sessions_are_refused_never_applied_twice() {
    let c = Cluster::start_with(3, &["--session-ttl-ms", "1500", "--max-sessions", "2"]);
    let leader = c.wait_leader(T);
    let s = open_session(&c, leader);
    assert_eq!(put(&c, leader, "k", &json!({"value": "a"}), Some((s, 1))).status, 200);
    let revision = c.get(leader, "k").json()["revision"].clone();
    // The TTL is a span of (log) time: wait it out, then retry.
    std::thread::sleep(Duration::from_millis(1800));
    let late = put(&c, leader, "k", &json!({"value": "a"}), Some((s, 1)));
    assert_eq!((late.status, late.json()["code"].as_str()), (410, Some("session_expired")), "{}", late.text());
    assert_eq!(c.get(leader, "k").json()["revision"], revision, "not applied again");

    // A full table evicts the session idle longest.
    let (a, b) = (open_session(&c, leader), open_session(&c, leader));
    assert_eq!(put(&c, leader, "a", &json!({"value": "1"}), Some((a, 1))).status, 200);
    assert_eq!(put(&c, leader, "b", &json!({"value": "1"}), Some((b, 1))).status, 200);
    let _third = open_session(&c, leader);
    let evicted = put(&c, leader, "a", &json!({"value": "1"}), Some((a, 1)));
    assert_eq!(evicted.json()["code"], "session_expired", "{}", evicted.text());
    assert_eq!(put(&c, leader, "b", &json!({"value": "1"}), Some((b, 1))).status, 200, "b is still open");

    // Bad tags are 400s, nothing applied.
    let bad = |tags: &[(&str, String)]| {
        let r = c.client.request_with(&c.addr(leader), "PUT", "/kv/k", Some(br#"{"value":"z"}"#), tags).unwrap();
        (r.status, r.json()["code"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(bad(&[("raftkv-session", "1".into())]), (400, "invalid_header".into()));
    assert_eq!(bad(&[("raftkv-session", "x".into()), ("raftkv-seq", "1".into())]), (400, "invalid_header".into()));
    assert_eq!(bad(&[("raftkv-session", b.to_string()), ("raftkv-seq", "0".into())]), (400, "invalid_header".into()));
    assert_eq!(c.get(leader, "k").json()["value"], "a");
    let r = c.client.request(&c.addr(leader), "POST", "/sessions", Some(b"{\"ttl\": 5}")).unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn raftkvctl_retries_an_unknown_outcome_in_its_session() {
    let c = Cluster::start_with(3, &SLOW_ELECTIONS);
    let leader = c.wait_leader(T);
    let followers = c.followers(leader);
    let ctl = || {
        let mut cmd = Command::new(CTL);
        c.ctl_env(&mut cmd);
        cmd.args(["--endpoints", &c.addr(leader), "--timeout", "2"]);
        cmd
    };
    // The interactive prompt keeps one session for all its commands; the
    // first write opens it.
    let mut child =
        ctl().env("HOME", &c.dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let answer = || loop {
        let line = lines.recv_timeout(T).expect("an answer from raftkvctl");
        if line.contains("OK (revision") {
            return line;
        }
    };
    stdin.write_all(b"put warm up\n").unwrap();
    answer();
    // A create-only write while no majority can answer: the first attempts
    // time out (504); once the followers are back the first one commits,
    // and the retries, same session and sequence number, get its answer.
    // Without a session the CLI would have to say "outcome unknown" — or,
    // retrying blindly, fail its own condition.
    for &f in &followers {
        c.signal(f, "STOP");
    }
    let before = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();
    stdin.write_all(b"cas created yes --if-revision 0\n").unwrap();
    // Resume once the write has been proposed and has timed out at least
    // once (the retry is proposed too).
    eventually(T, "the CLI's write to be proposed and retried", || {
        (c.status(leader)?["last_log_index"].as_u64()? >= before + 2).then_some(())
    });
    for &f in &followers {
        c.signal(f, "CONT");
    }
    let line = answer();
    stdin.write_all(b"exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created = c.get(leader, "created").json();
    assert_eq!(created["value"], "yes");
    assert!(line.contains(&format!("revision {})", created["revision"])), "{line} vs {created}");

    // One-shot commands open a session for their write (one more entry);
    // --no-session does not.
    let entries = |args: &[&str]| {
        let before = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();
        let out = ctl().args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        c.status(leader).unwrap()["last_log_index"].as_u64().unwrap() - before
    };
    assert_eq!(entries(&["put", "a", "1"]), 2);
    assert_eq!(entries(&["--no-session", "put", "b", "1"]), 1);
}
