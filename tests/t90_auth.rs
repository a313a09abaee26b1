//! Client tokens with roles and the cluster secret on `/raft/*`, through
//! the HTTP API and the CLI: a request without the right token is refused
//! (401/403, JSON) and changes nothing; peers without the secret are shut
//! out while the cluster itself works.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CTL: &str = env!("CARGO_BIN_EXE_raftkvctl");

/// `raftkvctl token new <name> <role>` → (token, tokens-file line).
fn new_token(name: &str, role: &str) -> (String, String) {
    let out = Command::new(CTL).args(["-o", "json", "token", "new", name, role]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["token"].as_str().unwrap().to_string(), v["tokens_file_line"].as_str().unwrap().to_string())
}

struct Setup {
    c: Cluster,
    read: String,
    write: String,
    admin: String,
}

fn start() -> Setup {
    let dir = std::env::temp_dir().join(format!("raftkv-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (read, l1) = new_token("viewer", "read");
    let (write, l2) = new_token("app", "write");
    let (admin, l3) = new_token("ops", "admin");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("# raftkv tokens\n{l1}\n{l2}\n{l3}\n")).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-some-length\n").unwrap();
    let (t, s) = (tokens.to_str().unwrap().to_string(), secret.to_str().unwrap().to_string());
    let c = Cluster::start_with(3, &["--tokens-file", &t, "--cluster-secret-file", &s, "--public-status", "true"]);
    Setup { c, read, write, admin }
}

/// The cluster's client (its CA when TLS is on) with `token` instead.
fn client(c: &Cluster, token: Option<&str>) -> HttpClient {
    c.client_with(Duration::from_secs(5)).with_token(token.map(str::to_string))
}

fn put(c: &Cluster, token: Option<&str>, addr: &str, key: &str, value: &str) -> Response {
    client(c, token).put_json(addr, &format!("/kv/{key}"), &json!({"value": value})).unwrap()
}

#[test]
fn writes_need_a_write_token_and_admin_calls_an_admin_token() {
    let s = start();
    let c = &s.c;
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c.followers(leader)[0];
    let (la, fa) = (c.addr(leader), c.addr(follower));

    // Peers authenticate each other: the cluster elected a leader and replicates.
    let r = put(c, Some(&s.write), &la, "k", "v1");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put(c, Some(&s.write), &fa, "k", "v2");
    assert_eq!(r.status, 200, "a follower forwards the token to the leader: {}", r.text());

    let r = put(c, None, &la, "k", "nope");
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("unauthenticated")), "{}", r.text());
    let r = put(c, Some("not-a-token"), &la, "k", "nope");
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("invalid_token")));
    let r = put(c, Some(&s.read), &fa, "k", "nope");
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden")), "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("viewer"), "names the token, not its value");
    let r = client(c, Some(&s.read)).delete(&la, "/kv/k").unwrap();
    assert_eq!(r.status, 403);
    // None of that changed anything.
    let r = client(c, Some(&s.read)).get(&la, "/kv/k").unwrap();
    assert_eq!((r.status, r.json()["value"].as_str()), (200, Some("v2")));
    assert_eq!(client(c, None).get(&la, "/kv/k").unwrap().status, 401, "reads need a token too");
    assert_eq!(client(c, Some(&s.read)).get(&la, "/kv?prefix=").unwrap().status, 200);

    // Admin endpoints.
    let snap = |t: Option<&str>| client(c, t).request(&la, "POST", "/admin/snapshot", None).unwrap();
    assert_eq!(snap(Some(&s.write)).status, 403);
    assert_eq!(snap(Some(&s.admin)).status, 200);
    assert_eq!(client(c, Some(&s.write)).get(&la, "/admin/log").unwrap().status, 403);
    assert_eq!(client(c, Some(&s.admin)).get(&la, "/admin/log").unwrap().status, 200);
    // Probes stay open; /status and /metrics are open here (--public-status true).
    for path in ["/health", "/ready", "/status", "/metrics"] {
        assert_eq!(client(c, None).get(&la, path).unwrap().status, 200, "{path}");
    }
}

#[test]
fn peer_endpoints_refuse_requests_without_the_cluster_secret() {
    let s = start();
    let c = &s.c;
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c.followers(leader)[0];
    // Even an admin token is no peer credential.
    for path in ["/raft/append_entries", "/raft/request_vote", "/raft/heartbeat", "/raft/install_snapshot"] {
        for token in [None, Some(s.admin.as_str())] {
            // (With TLS, over a member's certificate: the secret is checked too.)
            let peer = c.peer_client(leader).with_token(token.map(str::to_string));
            let r = peer.request(&c.addr(follower), "POST", path, Some(b"\x01garbage")).unwrap();
            assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("unauthenticated_peer")), "{path}");
        }
    }
    // The cluster goes on: a write commits on every node.
    assert_eq!(put(c, Some(&s.write), &c.addr(leader), "still", "works").status, 200);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    c.wait_applied(follower, commit, Duration::from_secs(5));
}

#[test]
fn the_cli_sends_its_token_and_says_when_it_is_refused() {
    let s = start();
    let c = &s.c;
    c.wait_leader(Duration::from_secs(10));
    let eps = c.ids().iter().map(|&i| c.addr(i)).collect::<Vec<_>>().join(",");
    let ctl = |token: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(CTL);
        c.ctl_env(&mut cmd);
        cmd.args(["--endpoints", &eps]).args(args).env_remove("RAFTKV_TOKEN");
        if let Some(t) = token {
            cmd.env("RAFTKV_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = ctl(Some(&s.write), &["put", "name", "Alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(None, &["put", "name", "Bob"]);
    assert_eq!(out.status.code(), Some(8), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires a token"));
    let out = ctl(Some(&s.read), &["-o", "json", "get", "name"]);
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["value"], "Alice");
    let out = ctl(Some(&s.write), &["snapshot"]);
    assert_eq!(out.status.code(), Some(8), "a snapshot needs an admin token");
    let bad = Command::new(CTL).args(["token", "new", "x", "root"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
