//! Initial election: real processes elect exactly one leader, and every
//! node's `/status` agrees on who it is and on the term.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn three_nodes_elect_exactly_one_leader_and_agree_on_it() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let statuses: Vec<_> = c.ids().iter().map(|&id| c.status(id).unwrap()).collect();
    let leaders = statuses.iter().filter(|s| s["role"] == "leader").count();
    assert_eq!(leaders, 1);
    for s in &statuses {
        assert_eq!(s["leader"].as_u64(), Some(leader));
        assert_eq!(s["term"], statuses[0]["term"]);
    }
    // The leader's no-op commits, and every node learns it.
    for id in c.ids() {
        c.wait_applied(id, 1, Duration::from_secs(5));
    }
    let ls = c.status(leader).unwrap();
    let peers = ls["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert!(p["match_index"].as_u64().is_some(), "leader reports replication progress: {p}");
    }
    assert!(c.log(leader).contains("won election at term"), "the log tells the story:\n{}", c.log(leader));
}

#[test]
fn five_nodes_elect_a_leader_and_serve_writes() {
    let c = Cluster::start(5);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c.followers(leader)[0];
    let r = c.put(follower, "five", "ok");
    assert_eq!(r.status, 200, "{}", r.text());
    for id in c.ids() {
        assert_eq!(c.get(id, "five").json()["value"], "ok");
    }
}
