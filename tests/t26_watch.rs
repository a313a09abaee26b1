//! Watches and blocking reads through the HTTP API: a watcher sees every
//! change exactly once and in revision order, across a leader kill and a
//! reconnect to another node; the history survives log compaction and
//! InstallSnapshot; a revision older than the window gets the documented
//! error; a watcher that does not read is cancelled (with where to resume)
//! rather than waited for; a blocking read answers at the change.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use raftkv::client::SseEvent;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// A change as a watcher saw it: (revision, key, value or None for a delete).
type Change = (u64, String, Option<String>);
/// Acknowledged writes by revision: the keys they changed and how.
type Acked = Arc<Mutex<BTreeMap<u64, Vec<(String, Option<String>)>>>>;

fn change(e: &SseEvent) -> Change {
    let d = &e.data;
    (d["revision"].as_u64().unwrap(), d["key"].as_str().unwrap().to_string(), d["value"].as_str().map(str::to_string))
}

/// Follows `path` (a watch URL without `from_revision`) from revision
/// `from` until `until()` is true and it has seen everything up to
/// `target()`, reconnecting to the next node with the revision it last saw
/// whole whenever a stream ends. Returns the changes in the order they came.
fn follow(
    client: &HttpClient,
    addrs: &[String],
    path: &str,
    mut from: u64,
    done: &AtomicBool,
    target: &Mutex<u64>,
) -> (Vec<Change>, usize) {
    let mut seen = Vec::new();
    let mut reconnects = 0;
    let mut node = 0;
    loop {
        let url = format!("{path}&from_revision={from}");
        let stream = match client.watch(&addrs[node % addrs.len()], &url, &[]) {
            Ok(Ok(s)) => s,
            Ok(Err(r)) => panic!("watch refused: {} {}", r.status, r.text()),
            Err(_) => {
                node += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let mut pending = Vec::new();
        for ev in stream {
            let Ok(ev) = ev else { break };
            match ev.event.as_str() {
                "put" | "delete" => pending.push(change(&ev)),
                "progress" => {}
                "cancelled" => panic!("watcher cancelled: {}", ev.data),
                other => panic!("unexpected event {other}: {}", ev.data),
            }
            // A revision is whole when its id comes; only then does it count.
            if let Some(id) = ev.id {
                seen.append(&mut pending);
                from = id + 1;
                if done.load(Ordering::SeqCst) && id >= *target.lock().unwrap() {
                    return (seen, reconnects);
                }
            }
        }
        reconnects += 1;
        node += 1;
    }
}

fn assert_ordered_once(changes: &[Change]) {
    for w in changes.windows(2) {
        assert!(
            w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 < w[1].1),
            "out of order or duplicated: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn a_watcher_sees_every_change_once_in_order_across_a_leader_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let addrs: Vec<String> = c.ids().iter().map(|&i| c.addr(i)).collect();
    let start = c.put(leader, "w/start", "0").json()["revision"].as_u64().unwrap();

    // The watcher starts on the leader, so the kill breaks its stream.
    let mut order = vec![c.addr(leader)];
    order.extend(c.followers(leader).iter().map(|&f| c.addr(f)));
    let done = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Mutex::new(u64::MAX));
    let watcher = {
        let (client, done, target) = (c.client.clone(), done.clone(), target.clone());
        std::thread::spawn(move || follow(&client, &order, "/kv?prefix=w/&watch=true", start, &done, &target))
    };

    // Writes through every node: puts, deletes and two-key transactions;
    // what was acknowledged, by revision.
    let acked: Acked = Arc::default();
    let writer = {
        let (client, addrs, acked) = (c.client.clone(), addrs.clone(), acked.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let addr = &addrs[i as usize % addrs.len()];
                let key = format!("w/k{}", i % 7);
                let r = match i % 5 {
                    0 => client.delete(addr, &format!("/kv/{key}")),
                    1 => client.request(
                        addr,
                        "POST",
                        "/txn",
                        Some(
                            json!({"success": [{"put": {"key": "w/ta", "value": i.to_string()}},
                                               {"put": {"key": "w/tb", "value": i.to_string()}}]})
                            .to_string()
                            .as_bytes(),
                        ),
                    ),
                    _ => client.put_json(addr, &format!("/kv/{key}"), &json!({"value": i.to_string()})),
                };
                let Ok(r) = r else { continue };
                if r.status != 200 {
                    continue;
                }
                let v = r.json();
                let rev = v["revision"].as_u64().unwrap();
                let ops = match i % 5 {
                    0 if v["deleted"] == true => vec![(key, None)],
                    0 => vec![],
                    1 => vec![("w/ta".to_string(), Some(i.to_string())), ("w/tb".to_string(), Some(i.to_string()))],
                    _ => vec![(key, Some(i.to_string()))],
                };
                if !ops.is_empty() {
                    acked.lock().unwrap().insert(rev, ops);
                }
            }
        });
        (h, stop)
    };

    eventually(T, "some writes before the kill", || (acked.lock().unwrap().len() >= 100).then_some(()));
    c.kill(leader);
    let new_leader = c.wait_leader(T);
    eventually(T, "writes under the new leader", || {
        let a = acked.lock().unwrap();
        (a.keys().next_back().copied()? > 0 && a.len() >= 250).then_some(())
    });
    writer.1.store(true, Ordering::SeqCst);
    writer.0.join().unwrap();
    let last = c.put(new_leader, "w/end", "1").json()["revision"].as_u64().unwrap();
    *target.lock().unwrap() = last;
    done.store(true, Ordering::SeqCst);
    // The watcher may have seen `last` before it was told to stop there:
    // one more change tells it again.
    c.put(new_leader, "w/wake", "1");
    let (mut seen, reconnects) = watcher.join().unwrap();
    seen.retain(|c| c.0 <= last);
    assert!(reconnects >= 1, "the watcher's stream should have broken with the leader");
    assert_ordered_once(&seen);

    // The truth: one uninterrupted watch over the whole range, on a node
    // that stayed up, compared change by change.
    let survivor = c.addr(new_leader);
    let never = AtomicBool::new(true);
    let (truth, _) = follow(&c.client, &[survivor], "/kv?prefix=w/&watch=true", start, &never, &Mutex::new(last));
    assert_eq!(seen, truth, "the reconnecting watcher saw a different history");
    assert_eq!(seen.first().map(|c| c.0), Some(start));
    assert_eq!(seen.last().map(|c| c.0), Some(last));

    // Every acknowledged write is in it, at its revision, with its value.
    let mut by_rev: BTreeMap<u64, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (rev, key, value) in &seen {
        by_rev.entry(*rev).or_default().push((key.clone(), value.clone()));
    }
    for (rev, ops) in acked.lock().unwrap().iter() {
        assert_eq!(by_rev.get(rev), Some(ops), "acknowledged write at revision {rev} missing or different");
    }
}

fn status_of(c: &Cluster, id: u64, path: &str) -> (u16, Value) {
    let r = c.client.get(&c.addr(id), path).unwrap();
    (r.status, if r.body.is_empty() { Value::Null } else { r.json() })
}

/// The changes a watch of `path` from `from` delivers up to `until`.
fn collect(c: &Cluster, id: u64, path: &str, from: u64, until: u64) -> Vec<Change> {
    let never = AtomicBool::new(true);
    follow(&c.client, &[c.addr(id)], path, from, &never, &Mutex::new(until)).0
}

#[test]
fn the_history_window_survives_compaction_and_snapshots_and_refuses_older_revisions() {
    let mut c = Cluster::start_with(
        3,
        &["--watch-history-revisions", "60", "--snapshot-entries", "20", "--snapshot-keep-entries", "5"],
    );
    let leader = c.wait_leader(T);
    let follower = c.followers(leader)[0];
    c.kill(follower);
    let mut last = 0;
    for i in 0..200 {
        last = c.put(leader, &format!("h/{}", i % 10), &i.to_string()).json()["revision"].as_u64().unwrap();
    }
    // The leader compacted its log: the follower catches up from a snapshot.
    c.spawn(follower);
    c.wait_applied(follower, last, T);
    assert!(c.log(follower).contains("restored snapshot"), "the follower should have installed a snapshot");

    // Older than the window: the documented error, with where it starts.
    let (status, body) = status_of(&c, follower, "/kv?prefix=h/&watch=true&from_revision=1");
    assert_eq!((status, body["code"].as_str()), (410, Some("revision_compacted")), "{body}");
    let oldest = body["oldest_revision"].as_u64().unwrap();
    assert!(oldest > 1 && oldest <= last, "oldest {oldest}, last {last}");
    assert!(body["current_revision"].as_u64().unwrap() >= last);

    // From the oldest revision kept, the follower (which got its state
    // from a snapshot) delivers what the leader does.
    let on_follower = collect(&c, follower, "/kv?prefix=h/&watch=true", oldest, last);
    let on_leader = collect(&c, leader, "/kv?prefix=h/&watch=true", oldest, last);
    assert_eq!(on_follower, on_leader);
    assert!(on_follower.len() >= 55, "{} events in the window", on_follower.len());
    assert_eq!(on_follower.last().unwrap().0, last);

    // After a restart too (the window is in the node's snapshot + log).
    c.restart(follower);
    c.wait_applied(follower, last, T);
    let (status, body) = status_of(&c, follower, &format!("/kv?prefix=h/&watch=true&from_revision={}", oldest - 1));
    assert_eq!(status, 410, "{body}");
    assert_eq!(collect(&c, follower, "/kv?prefix=h/&watch=true", oldest, last), on_leader);
}

#[test]
fn a_watcher_that_does_not_read_is_cancelled_and_can_resume() {
    // A history window large enough to resume within 100 large values.
    let c = Cluster::start_with(3, &["--watch-buffer", "4", "--watch-history-bytes", "104857600"]);
    let leader = c.wait_leader(T);
    let from = c.put(leader, "big", "0").json()["revision"].as_u64().unwrap();
    let mut stream = match c.client.watch(&c.addr(leader), "/kv/big?watch=true", &[]).unwrap() {
        Ok(s) => s,
        Err(r) => panic!("{} {}", r.status, r.text()),
    };
    // More than the socket buffers between us can hold, unread.
    let value = "x".repeat(512 << 10);
    let mut last = 0;
    for _ in 0..100 {
        let r = c.put(leader, "big", &value);
        assert_eq!(r.status, 200, "a write waited for a slow watcher: {}", r.text());
        last = r.json()["revision"].as_u64().unwrap();
    }
    let mut seen = 0;
    let cancelled = loop {
        let ev = stream.next().expect("the stream ends with a cancelled event").unwrap();
        match ev.event.as_str() {
            "put" => seen = ev.data["revision"].as_u64().unwrap(),
            "progress" => {}
            "cancelled" => break ev.data,
            other => panic!("{other}"),
        }
    };
    assert!(stream.next().is_none(), "nothing after the cancelled event");
    assert_eq!(cancelled["reason"], "slow_watcher", "{cancelled}");
    let resume = cancelled["resume_from_revision"].as_u64().unwrap();
    assert!(resume > from && resume <= last, "resume from {resume}; last {last}");
    assert!(seen < resume, "saw {seen}, told to resume from {resume}");
    let m = c.client.get(&c.addr(leader), "/metrics").unwrap().text();
    assert!(m.lines().any(|l| l.starts_with("raftkv_watchers_cancelled_total") && !l.ends_with(" 0")), "{m}");

    // Resuming from there delivers the rest, each revision once.
    let rest = collect(&c, leader, "/kv/big?watch=true", resume, last);
    assert_eq!(rest.first().unwrap().0, resume);
    assert_eq!(rest.last().unwrap().0, last);
    assert_ordered_once(&rest);
}

#[test]
fn a_watch_from_a_revision_the_node_has_not_reached_waits_for_it() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let now = c.put(leader, "f/0", "0").json()["revision"].as_u64().unwrap();
    // What a watcher resuming on a lagging follower asks for: a revision
    // after the node's last. Changes before it must be skipped without
    // ending the stream.
    let from = now + 10;
    let mut s = c
        .client
        .watch(&c.addr(leader), &format!("/kv?prefix=f/&watch=true&from_revision={from}"), &[])
        .unwrap()
        .ok()
        .unwrap();
    let first = s.next().unwrap().unwrap();
    assert_eq!((first.event.as_str(), first.id), ("progress", Some(from - 1)));
    let mut last = 0;
    for i in 1..=15 {
        last = c.put(leader, &format!("f/{i}"), "v").json()["revision"].as_u64().unwrap();
    }
    let mut seen = Vec::new();
    while seen.last().is_none_or(|&r| r < last) {
        let ev = s.next().expect("the stream goes on").unwrap();
        if ev.event == "put" {
            seen.push(ev.data["revision"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (from..=last).collect::<Vec<_>>());
}

#[test]
fn resuming_with_last_event_id_and_bad_watch_requests() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let follower = c.followers(leader)[0];
    let r1 = c.put(leader, "r", "1").json()["revision"].as_u64().unwrap();
    let r2 = c.put(leader, "r", "2").json()["revision"].as_u64().unwrap();
    c.wait_applied(follower, r2, T);
    // A browser's EventSource repeats the URL and sends the last id: that wins.
    let url = format!("/kv/r?watch=true&from_revision={r1}");
    let mut s = c.client.watch(&c.addr(follower), &url, &[("last-event-id", r1.to_string())]).unwrap().ok().unwrap();
    let first = s.next().unwrap().unwrap();
    assert_eq!((first.event.as_str(), first.id, &first.data["value"]), ("put", Some(r2), &json!("2")));
    assert_eq!(first.data["prev_revision"], r1);
    let progress = s.next().unwrap().unwrap();
    assert_eq!((progress.event.as_str(), progress.id), ("progress", Some(r2)));

    for (path, code) in [
        ("/kv/r?watch=yes", "invalid_parameter"),
        ("/kv/r?watch=true&from_revision=0", "invalid_parameter"),
        ("/kv/r?watch=true&from_revision=-1", "invalid_parameter"),
        ("/kv/r?watch=true&consistency=stale", "invalid_parameter"),
        ("/kv?prefix=r&watch=true&limit=3", "invalid_parameter"),
        ("/kv/r?from_revision=3", "invalid_parameter"),
        ("/kv/r?wait=5s", "invalid_parameter"),
        ("/kv/r?wait=11m&after_revision=1", "invalid_parameter"),
        ("/kv/r?wait=soon&after_revision=1", "invalid_parameter"),
    ] {
        let (status, body) = status_of(&c, follower, path);
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = c.client.request_with(&c.addr(follower), "GET", "/kv/r?watch=true", None, &[("last-event-id", "x".into())]);
    assert_eq!(r.unwrap().json()["code"], "invalid_header");
}

#[test]
fn a_blocking_read_answers_at_the_change_or_at_the_timeout() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let follower = c.followers(leader)[0];
    let r1 = c.put(leader, "b", "1").json()["revision"].as_u64().unwrap();

    // Already changed after the revision asked about: at once.
    let r = c.client.get(&c.addr(follower), "/kv/b?after_revision=0&wait=10s").unwrap();
    assert_eq!((r.status, r.json()["value"].as_str()), (200, Some("1")));

    // No change: at the timeout, with the current state and how far it looked.
    let r = c.client.get(&c.addr(follower), &format!("/kv/b?after_revision={r1}&wait=300ms")).unwrap();
    assert_eq!((r.status, r.json()["value"].as_str()), (200, Some("1")));
    assert!(r.header("raftkv-revision").unwrap().parse::<u64>().unwrap() >= r1);

    // A change while it waits: answered with the new value.
    let waiter = {
        let (client, addr) = (c.client.clone(), c.addr(follower));
        std::thread::spawn(move || client.get(&addr, &format!("/kv/b?after_revision={r1}&wait=60s")).unwrap())
    };
    let watchers = |id| {
        let m = c.client.get(&c.addr(id), "/metrics").unwrap().text();
        m.lines().find_map(|l| l.strip_prefix("raftkv_watchers ")).and_then(|v| v.parse::<u64>().ok())
    };
    eventually(T, "the blocking read to be waiting", || (watchers(follower)? >= 1).then_some(()));
    let r2 = c.put(leader, "b", "2").json()["revision"].as_u64().unwrap();
    let r = waiter.join().unwrap();
    assert_eq!((r.status, r.json()["value"].as_str()), (200, Some("2")), "{}", r.text());
    assert_eq!(r.header("raftkv-revision"), Some(r2.to_string().as_str()));

    // A deleted key: answered with 404 at the delete.
    let waiter = {
        let (client, addr) = (c.client.clone(), c.addr(follower));
        std::thread::spawn(move || client.get(&addr, &format!("/kv/b?after_revision={r2}&wait=60s")).unwrap())
    };
    eventually(T, "the blocking read to be waiting", || (watchers(follower)? >= 1).then_some(()));
    let r3 = c.client.delete(&c.addr(leader), "/kv/b").unwrap().json()["revision"].as_u64().unwrap();
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("raftkv-revision"), Some(r3.to_string().as_str()));
}

#[test]
fn raftkvctl_watch_prints_each_change_and_resumes_on_another_node() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(T);
    let from = c.put(leader, "cli/a", "1").json()["revision"].as_u64().unwrap();
    c.client.delete(&c.addr(leader), "/kv/cli/a").unwrap();
    c.put(leader, "other", "x");
    // The leader first: killed mid-watch, the rest comes from the others.
    let mut eps = vec![c.addr(leader)];
    eps.extend(c.followers(leader).iter().map(|&f| c.addr(f)));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_raftkvctl"));
    c.ctl_env(&mut cmd);
    cmd.env("RAFTKV_ENDPOINTS", eps.join(","));
    cmd.args(["-o", "json", "watch", "--prefix", "cli/", "--from-revision", &from.to_string(), "--count", "4"]);
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    // The first two changes are printed before the kill.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut out, &mut l).unwrap();
        lines.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    c.kill(leader);
    let new_leader = c.wait_leader(T);
    let r3 = c.put(new_leader, "cli/b", "2").json()["revision"].as_u64().unwrap();
    let r4 = c.put(new_leader, "cli/a", "3").json()["revision"].as_u64().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    lines.extend(rest.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    assert!(child.wait().unwrap().success(), "raftkvctl watch --count 4 exits 0 after four changes");
    let got: Vec<(String, String, u64)> = lines
        .iter()
        .map(|v| {
            (v["type"].as_str().unwrap().into(), v["key"].as_str().unwrap().into(), v["revision"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("put".into(), "cli/a".into(), from),
            ("delete".into(), "cli/a".into(), from + 1),
            ("put".into(), "cli/b".into(), r3),
            ("put".into(), "cli/a".into(), r4),
        ]
    );

    // A revision out of the window: the error and a non-zero exit.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_raftkvctl"));
    c.ctl_env(&mut cmd);
    let addr = c.addr(new_leader);
    let out = cmd.args(["--endpoints", &addr, "watch", "x", "--from-revision", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
