//! The client API through any node (DESIGN §3): forwarding from followers,
//! linearizable reads everywhere, DELETE, compare-and-set, prefix listing,
//! and clear errors for bad input that leave the data untouched.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[test]
fn a_write_through_a_follower_is_read_back_from_every_node() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c.followers(leader)[0];
    let r = c.put(f, "greeting", "hello");
    assert_eq!(r.status, 200, "{}", r.text());
    let rev = r.json()["revision"].as_u64().unwrap();
    assert_eq!(r.header("x-raftkv-leader"), Some(leader.to_string().as_str()), "forwarded to the leader");
    for id in c.ids() {
        let g = c.get(id, "greeting");
        assert_eq!(g.status, 200);
        assert_eq!(g.json(), json!({"key": "greeting", "value": "hello", "revision": rev}), "node {id}");
    }
}

#[test]
fn delete_compare_and_set_and_prefix_listing() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c.followers(leader)[1];
    let a = c.client.put_json(&c.addr(f), "/kv/app/a", &json!({"value": "1", "if_revision": 0})).unwrap();
    assert_eq!(a.status, 200, "create-only succeeds on a new key");
    let rev_a = a.json()["revision"].as_u64().unwrap();
    let again = c.client.put_json(&c.addr(f), "/kv/app/a", &json!({"value": "x", "if_revision": 0})).unwrap();
    assert_eq!(again.status, 412);
    assert_eq!(again.json()["code"], "precondition_failed");
    assert_eq!(again.json()["current"], json!({"value": "1", "revision": rev_a}));

    let cas = c.client.put_json(&c.addr(leader), "/kv/app/a", &json!({"value": "2", "if_value": "1"})).unwrap();
    assert_eq!(cas.status, 200);
    let stale_cas = c.client.put_json(&c.addr(f), "/kv/app/a", &json!({"value": "3", "if_value": "1"})).unwrap();
    assert_eq!(stale_cas.status, 412, "value is 2 now");
    let rev_cas = c.client.put_json(&c.addr(f), "/kv/app/a", &json!({"value": "3", "if_revision": rev_a})).unwrap();
    assert_eq!(rev_cas.status, 412, "revision moved on");

    assert_eq!(c.put(f, "app/b", "B").status, 200);
    assert_eq!(c.put(f, "app2", "other").status, 200);
    assert_eq!(c.put(f, "zzz", "Z").status, 200);
    let list = c.client.get(&c.addr(f), "/kv?prefix=app/").unwrap().json();
    let keys: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["app/a", "app/b"]);
    assert_eq!(list["items"][0]["value"], "2");
    let limited = c.client.get(&c.addr(leader), "/kv?prefix=app&limit=2").unwrap().json();
    assert_eq!(limited["items"].as_array().unwrap().len(), 2);
    let all = c.client.get(&c.addr(leader), "/kv").unwrap().json();
    assert_eq!(all["items"].as_array().unwrap().len(), 4);

    let d = c.client.delete(&c.addr(f), "/kv/app/b").unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.json()["deleted"], true);
    let d2 = c.client.delete(&c.addr(f), "/kv/app/b").unwrap();
    assert_eq!(d2.json()["deleted"], false, "deleting a missing key is not an error");
    let gone = c.get(leader, "app/b");
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["code"], "not_found");
    assert_eq!(gone.json()["key"], "app/b");
    let cond = c.client.delete(&c.addr(f), "/kv/app/a?if_revision=1").unwrap();
    assert_eq!(cond.status, 412, "conditional delete with a wrong revision");
    assert_eq!(c.get(f, "app/a").json()["value"], "2");

    // Keys with slashes and escapes address the same key either way.
    assert_eq!(c.get(f, "app%2Fa").json()["value"], "2");
    // A stale read says so.
    let stale = c.get_stale(f, "zzz");
    assert_eq!(stale.header("x-raftkv-consistency"), Some("stale"));
}

struct Bad {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn bad(what: &'static str, method: &'static str, path: &str, body: &[u8], status: u16, code: &'static str) -> Bad {
    Bad { what, method, path: path.to_string(), body: body.to_vec(), status, code }
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = Cluster::start_with(3, &["--max-value-bytes", "4096"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c.followers(leader)[0];
    assert_eq!(c.put(leader, "k", "original").status, 200);
    let before = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();

    let long_key = "k".repeat(1025);
    let big_value = format!("{{\"value\":\"{}\"}}", "v".repeat(4097));
    let huge_body = vec![b' '; 3 * 4096 + 70_000];
    let cases = [
        bad("invalid JSON", "PUT", "/kv/k", b"{\"value\": ", 400, "invalid_json"),
        bad("not an object", "PUT", "/kv/k", b"\"v\"", 400, "invalid_json"),
        bad("empty body", "PUT", "/kv/k", b"", 400, "invalid_json"),
        bad("missing value", "PUT", "/kv/k", b"{}", 400, "missing_field"),
        bad("value not a string", "PUT", "/kv/k", b"{\"value\": 5}", 400, "invalid_field"),
        bad("typo in a condition", "PUT", "/kv/k", b"{\"value\":\"x\",\"if_valu\":\"original\"}", 400, "unknown_field"),
        bad("null condition", "PUT", "/kv/k", b"{\"value\":\"x\",\"if_value\":null}", 400, "invalid_field"),
        bad("negative revision", "PUT", "/kv/k", b"{\"value\":\"x\",\"if_revision\":-1}", 400, "invalid_field"),
        bad("empty key", "PUT", "/kv/", b"{\"value\":\"x\"}", 400, "invalid_key"),
        bad("key over 1024 bytes", "PUT", &format!("/kv/{long_key}"), b"{\"value\":\"x\"}", 413, "too_large"),
        bad("value over the limit", "PUT", "/kv/k", big_value.as_bytes(), 413, "too_large"),
        bad("body over the limit", "PUT", "/kv/k", &huge_body, 413, "too_large"),
        bad("invalid UTF-8 in the body", "PUT", "/kv/k", b"{\"value\":\"\xff\xfe\"}", 400, "invalid_json"),
        bad("invalid UTF-8 in the key", "PUT", "/kv/%ff%fe", b"{\"value\":\"x\"}", 400, "invalid_key"),
        bad("malformed escape in the key", "GET", "/kv/a%2", b"", 400, "invalid_key"),
        bad("unknown query parameter", "GET", "/kv/k?consistncy=stale", b"", 400, "invalid_parameter"),
        bad("bad consistency", "GET", "/kv/k?consistency=eventual", b"", 400, "invalid_parameter"),
        bad("bad if_revision", "DELETE", "/kv/k?if_revision=abc", b"", 400, "invalid_parameter"),
        bad("zero limit", "GET", "/kv?limit=0", b"", 400, "invalid_parameter"),
        bad("unknown route", "GET", "/nothing/here", b"", 404, "no_route"),
        bad("wrong method", "POST", "/kv/k", b"{\"value\":\"x\"}", 405, "method_not_allowed"),
        bad("wrong method on /kv", "DELETE", "/kv", b"", 405, "method_not_allowed"),
    ];
    // With this cluster's id the message itself is judged; with another
    // cluster's it is refused unread.
    let id = c.status(leader).unwrap()["cluster_id"].as_str().unwrap().to_string();
    let r = c.peer_client(leader).request(&c.addr(f), "POST", "/raft/append_entries", Some(b"hello")).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("missing_cluster_id")), "{}", r.text());
    for (cluster, status, code) in [(id.as_str(), 400, "invalid_message"), ("00000000000000ff", 403, "wrong_cluster")] {
        let peer = c.peer_client(leader).with_header("x-raftkv-cluster", cluster);
        let r = peer.request(&c.addr(f), "POST", "/raft/append_entries", Some(b"hello")).unwrap();
        assert_eq!((r.status, r.json()["code"].as_str()), (status, Some(code)), "{}", r.text());
    }
    for node in [leader, f] {
        for case in &cases {
            let r = c.client.request(&c.addr(node), case.method, &case.path, Some(&case.body)).unwrap();
            let body: Value = r.json();
            assert_eq!(r.status, case.status, "{} on node {node}: {}", case.what, r.text());
            assert_eq!(body["code"], case.code, "{} on node {node}: {}", case.what, r.text());
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{}: error message", case.what);
        }
    }
    assert_eq!(c.get(leader, "k").json()["value"], "original");
    assert_eq!(c.client.get(&c.addr(f), "/kv").unwrap().json()["items"].as_array().unwrap().len(), 1);
    let after = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();
    assert_eq!(after, before, "no bad request reached the log");
    for id in c.ids() {
        assert!(c.status(id).is_some(), "node {id} still up");
    }
}
