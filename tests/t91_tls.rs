//! TLS on the client API and between members, through the same interfaces
//! a user has: a cluster started with `--cert-file/--key-file/
//! --trusted-ca-file` and client tokens serves https only; `/raft/*` takes
//! only a client certificate of the cluster CA that names the sending
//! member; plaintext and foreign certificates are refused at once; SIGHUP
//! rotates certificates without a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use raftkv::codec::encode_message;
use raftkv::raft::{Body, Message};

const T: Duration = Duration::from_secs(10);

/// A pre-vote request from `from` to `to`: harmless (it changes no state),
/// so it shows only whether the request was let through.
fn pre_vote(from: u64, to: u64) -> Vec<u8> {
    let body = Body::RequestVote { pre_vote: true, last_log_index: 0, last_log_term: 0, transfer: false };
    encode_message(&Message { from, to, term: 1, rpc_id: 1, body }).to_vec()
}

fn cluster_id(c: &Cluster, id: u64) -> String {
    c.status(id).unwrap()["cluster_id"].as_str().unwrap().to_string()
}

#[test]
fn a_tls_cluster_serves_https_and_refuses_plaintext() {
    let c = Cluster::start_tls(3, &[]);
    let leader = c.wait_leader(T);
    let f = c.followers(leader)[0];
    // Through a follower: forwarded to the leader over TLS, replicated over mutual TLS.
    let r = c.put(f, "k", "secret value");
    assert_eq!(r.status, 200, "{}", r.text());
    let other = c.followers(leader)[1];
    assert_eq!(c.get(other, "k").json()["value"], "secret value");
    let before = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();

    // A plaintext client gets no HTTP answer, and at once (the handshake
    // fails on the first bytes; nothing waits for a timeout).
    let plain = HttpClient::new(Duration::from_secs(20)).with_token(Some(c.tls.as_ref().unwrap().admin_token.clone()));
    for (method, path, body) in [("PUT", "/kv/k", Some(&b"{\"value\": \"plain\"}"[..])), ("GET", "/kv/k", None)] {
        let started = Instant::now();
        let e = plain.request(&c.addr(leader), method, path, body).expect_err("plaintext refused");
        assert!(started.elapsed() < Duration::from_secs(5), "refused after {:?}: {e}", started.elapsed());
        assert!(e.to_string().contains("TLS"), "the error says what to do: {e}");
    }
    let mut raw = TcpStream::connect(c.addr(leader)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    raw.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "no HTTP over the TLS port: {:?}", String::from_utf8_lossy(&answer));

    // A client that trusts another CA does not accept the node.
    let elsewhere = c.dir.join("elsewhere");
    gen_certs(&elsewhere, &[(1, c.ip(1))]);
    let stranger = HttpClient::new(Duration::from_secs(5)).with_ca_file(&elsewhere.join("ca.pem")).unwrap();
    let e = stranger.get(&c.addr(leader), "/health").expect_err("foreign CA");
    assert!(!e.was_sent(), "a failed handshake sent nothing: {e}");

    // Tokens apply over TLS as without it.
    let anonymous = c.client_with(Duration::from_secs(5)).with_token(None);
    let r = anonymous.put_json(&c.addr(leader), "/kv/k", &serde_json::json!({"value": "anon"})).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("unauthenticated")), "{}", r.text());
    assert_eq!(anonymous.get(&c.addr(leader), "/health").unwrap().status, 200, "/health stays open");

    assert_eq!(c.get(leader, "k").json()["value"], "secret value", "nothing refused changed the value");
    assert_eq!(c.status(leader).unwrap()["last_log_index"].as_u64().unwrap(), before, "nor reached the log");
}

#[test]
fn raft_endpoints_take_only_a_member_certificate_of_the_cluster_ca() {
    let c = Cluster::start_tls(3, &[]);
    let leader = c.wait_leader(T);
    let f = c.followers(leader)[0];
    let cluster = cluster_id(&c, f);
    let to_f = |http: HttpClient, from: u64| {
        http.with_header("x-raftkv-cluster", &cluster).request(
            &c.addr(f),
            "POST",
            "/raft/request_vote",
            Some(&pre_vote(from, f)),
        )
    };

    // No client certificate: refused before the message is read.
    let r = to_f(c.client_with(Duration::from_secs(5)), leader).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("peer_certificate_required")), "{}", r.text());
    // A certificate of another CA: the handshake fails.
    let elsewhere = c.dir.join("elsewhere");
    gen_certs(&elsewhere, &[(leader, c.ip(leader))]);
    let forged = c
        .client_with(Duration::from_secs(5))
        .with_client_cert(
            &elsewhere.join(format!("node{leader}.pem")),
            &elsewhere.join(format!("node{leader}-key.pem")),
        )
        .unwrap();
    // (With TLS 1.3 the client learns of it only when it writes: an
    // alert or a broken pipe, never an HTTP answer.)
    to_f(forged, leader).expect_err("a foreign client certificate is refused in the handshake");
    // The cluster CA's certificate for one member cannot speak for another.
    let other = c.followers(leader)[1];
    let r = to_f(c.peer_client(other), leader).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("peer_identity_mismatch")), "{}", r.text());
    // Its own identity is let through (a pre-vote changes nothing).
    let r = to_f(c.peer_client(other), other).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // The members still work together: a write commits everywhere.
    assert_eq!(c.put(leader, "after", "probes").status, 200);
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    for id in c.ids() {
        c.wait_applied(id, commit, T);
    }
    assert_eq!(c.wait_leader(T), leader, "no probe disturbed the leader");
}

/// Rotation to a new CA, as an operator does it: every node first trusts
/// both CAs (SIGHUP), then a node gets a certificate of the new CA
/// (SIGHUP); clients of the new CA reach it and the members keep
/// replicating. A reload from a broken file keeps the working material.
#[test]
fn sighup_reloads_certificates_without_a_restart() {
    let mut c = Cluster::start_tls(3, &[]);
    let leader = c.wait_leader(T);
    let tls = c.tls.as_ref().unwrap();
    let (ca, cert, key) = (tls.ca(), tls.cert(1), tls.key(1));
    let rotated = 1;
    let new_ca = c.dir.join("new-ca");
    gen_certs(&new_ca, &[(rotated, c.ip(rotated))]);
    let new_client = c.client_with(Duration::from_secs(5)).with_ca_file(&new_ca.join("ca.pem")).unwrap();
    assert!(new_client.get(&c.addr(rotated), "/health").is_err(), "node {rotated} still has the old CA's certificate");

    let both = [std::fs::read(tls.ca()).unwrap(), std::fs::read(new_ca.join("ca.pem")).unwrap()].concat();
    std::fs::write(&ca, both).unwrap();
    // The tests' own client trusts both too, as every client must during a rotation.
    c.client = c.client.clone().with_ca_file(&ca).unwrap();
    for id in c.ids() {
        c.signal(id, "HUP");
    }
    for id in c.ids() {
        eventually(T, &format!("node {id} to reload"), || c.log(id).contains("reloaded its TLS files").then_some(()));
    }
    std::fs::copy(new_ca.join(format!("node{rotated}.pem")), &cert).unwrap();
    std::fs::copy(new_ca.join(format!("node{rotated}-key.pem")), &key).unwrap();
    c.signal(rotated, "HUP");
    eventually(T, "a client of the new CA to reach the rotated node", || {
        new_client.get(&c.addr(rotated), "/health").ok().filter(|r| r.status == 200)
    });

    // The rotated node still talks to its peers both ways.
    let r = new_client.put_json(&c.addr(rotated), "/kv/rotated", &serde_json::json!({"value": "yes"})).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get(leader, "rotated").json()["value"], "yes");
    let commit = c.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    for id in c.ids() {
        c.wait_applied(id, commit, T);
    }

    // A broken key file: the reload fails, says so, and the node goes on.
    let reloads = c.log(rotated).matches("reloaded its TLS files").count();
    std::fs::write(&key, "not a key\n").unwrap();
    c.signal(rotated, "HUP");
    eventually(T, "the failed reload in the log", || {
        c.log(rotated).contains("TLS reload on SIGHUP failed").then_some(())
    });
    assert_eq!(c.log(rotated).matches("reloaded its TLS files").count(), reloads);
    let r = new_client.get(&c.addr(rotated), "/kv/rotated").unwrap();
    assert_eq!((r.status, r.json()["value"].as_str()), (200, Some("yes")));
}

/// A connection that never completes its TLS handshake is closed after the
/// read timeout; beyond `--max-connections`, connections wait.
#[test]
fn stalled_handshakes_are_closed_and_connections_are_limited() {
    let c =
        Cluster::start_tls(1, &["--request-read-timeout-ms", "1000", "--max-connections", "2", "--http-workers", "1"]);
    c.wait_leader(T);
    let addr = c.addr(1);
    let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Both slots are held by connections that send nothing: a new client
    // is not served while they last ...
    let quick = c.client_with(Duration::from_millis(300));
    assert!(quick.get(&addr, "/health").is_err(), "a third connection is not served while two are held");
    // ... and the node closes them once the handshake timeout passes.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
    eventually(T, "the node to serve again", || c.client.get(&addr, "/health").ok().filter(|r| r.status == 200));
}
