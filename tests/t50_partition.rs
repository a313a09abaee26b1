//! A leader cut off into a minority must never acknowledge a write nor
//! serve a stale linearizable read; it answers 503/504 within its deadline.
//! Two ways to cut it off: its peers stopped (SIGSTOP), and iptables rules
//! between the nodes' own loopback addresses.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Runs `f` and checks it answered within the request deadline (3 s) plus slack.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let v = f();
    assert!(start.elapsed() < Duration::from_secs(5), "{what} took {:?}", start.elapsed());
    v
}

#[test]
fn leader_with_stopped_peers_acknowledges_nothing() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(leader, "k", "before").status, 200);
    for f in c.followers(leader) {
        c.signal(f, "STOP");
    }
    let w = timed("write on a minority leader", || c.put(leader, "k", "during"));
    assert!(matches!(w.status, 503 | 504), "write must not be acknowledged: {} {}", w.status, w.text());
    let r = timed("linearizable read on a minority leader", || c.get(leader, "k"));
    assert!(matches!(r.status, 503 | 504), "read must not be served: {} {}", r.status, r.text());
    assert!(r.json()["code"].is_string());
    if r.status == 503 {
        assert!(r.header("retry-after").is_some());
    }
    for f in c.followers(leader) {
        c.signal(f, "CONT");
    }
    let leader = c.wait_leader(Duration::from_secs(10));
    let v = c.get(leader, "k").json()["value"].clone();
    assert!(v == "before" || v == "during", "the 504'd write may or may not have happened: {v}");
}

#[test]
fn isolated_leader_never_serves_a_stale_read_after_a_new_leader_writes() {
    let c = Cluster::start(3);
    let old = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(old, "k", "v1").status, 200);
    let mut p = Partition::new();
    p.isolate(&c, old);
    let rest = c.followers(old);
    let new = c.wait_leader_among(&rest, Duration::from_secs(10));
    assert_ne!(new, old);
    let w = c.put(new, "k", "v2");
    assert_eq!(w.status, 200, "the majority side takes writes: {}", w.text());

    // The old leader may not know yet that it was deposed; whatever it
    // thinks, it must not answer v1, and must not acknowledge a write.
    for _ in 0..3 {
        let r = timed("read on the isolated node", || c.get(old, "k"));
        assert_ne!(r.json()["value"], "v1", "stale read served by the deposed leader");
        assert!(matches!(r.status, 503 | 504), "{} {}", r.status, r.text());
        let w = timed("write on the isolated node", || {
            c.client.put_json(&c.addr(old), "/kv/k", &json!({"value": "v3"})).unwrap()
        });
        assert!(matches!(w.status, 503 | 504), "{} {}", w.status, w.text());
    }
    // A stale read there is allowed, and says so.
    let s = c.get_stale(old, "k");
    assert_eq!(s.header("x-raftkv-consistency"), Some("stale"));

    p.heal();
    let leader = c.wait_leader(Duration::from_secs(10));
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(old, commit, Duration::from_secs(10));
    assert_eq!(c.get(old, "k").json()["value"], "v2");
}
