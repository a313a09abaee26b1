//! Transactions (`POST /txn`) through the HTTP API and the CLI: several
//! keys compared and changed atomically, from any node; bad bodies refused
//! without touching the log; the role a transaction needs follows what it
//! does.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use raftkv::auth::{Role, new_token, token_line};
use serde_json::{Value, json};

const CTL: &str = env!("CARGO_BIN_EXE_raftkvctl");
const ACCOUNTS: u64 = 5;
const START_BALANCE: u64 = 100;

fn txn(c: &Cluster, http: &HttpClient, node: u64, body: &Value) -> Response {
    http.request(&c.addr(node), "POST", "/txn", Some(body.to_string().as_bytes())).expect("POST /txn")
}

fn balance(v: &Value) -> u64 {
    v["value"].as_str().unwrap().parse().unwrap()
}

/// Moves `amount` from account `from` to `to` with a compare-and-swap on
/// both balances, retrying (with fresh reads) until the comparisons hold.
/// Returns how many attempts found the balances changed under it.
fn transfer(c: &Cluster, http: &HttpClient, node: u64, from: u64, to: u64, amount: u64) -> u64 {
    let (fk, tk) = (format!("acct/{from}"), format!("acct/{to}"));
    let mut conflicts = 0;
    loop {
        // Read both in one read-only transaction: a consistent pair.
        let read = json!({"success": [{"get": {"key": fk}}, {"get": {"key": tk}}]});
        let r = txn(c, http, node, &read);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let (fb, tb) = (balance(&v["results"][0]["get"]), balance(&v["results"][1]["get"]));
        let amount = amount.min(fb);
        let body = json!({
            "compare": [{"key": fk, "value": fb.to_string()}, {"key": tk, "value": tb.to_string()}],
            "success": [
                {"put": {"key": fk, "value": (fb - amount).to_string()}},
                {"put": {"key": tk, "value": (tb + amount).to_string()}},
            ],
            "failure": [{"get": {"key": fk}}],
        });
        let r = txn(c, http, node, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v["succeeded"] == true {
            assert_eq!(v["results"][0]["put"]["revision"], v["revision"]);
            assert_eq!(v["results"][1]["put"]["revision"], v["revision"]);
            return conflicts;
        }
        assert!(v["results"][0]["get"]["found"] == true, "{v}");
        conflicts += 1;
    }
}

#[test]
fn concurrent_transfers_through_every_node_keep_the_total() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let http = c.client_with(Duration::from_secs(10));
    // Open every account in one transaction that requires none to exist.
    let open = json!({
        "compare": (0..ACCOUNTS).map(|a| json!({"key": format!("acct/{a}"), "exists": false})).collect::<Vec<_>>(),
        "success": (0..ACCOUNTS)
            .map(|a| json!({"put": {"key": format!("acct/{a}"), "value": START_BALANCE.to_string()}}))
            .collect::<Vec<_>>(),
    });
    let r = txn(&c, &http, leader, &open);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["succeeded"], true);
    // The same again finds them: nothing changes.
    let again = txn(&c, &http, c.followers(leader)[0], &open).json();
    assert_eq!(again["succeeded"], false, "{again}");
    assert_eq!(again["results"], json!([]));

    let conflicts: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let (c, http) = (&c, &http);
                s.spawn(move || {
                    let mut conflicts = 0;
                    for i in 0..25u64 {
                        let node = c.ids()[((w + i) % 3) as usize];
                        let from = (w + i) % ACCOUNTS;
                        let to = (from + 1 + i % (ACCOUNTS - 1)) % ACCOUNTS;
                        conflicts += transfer(c, http, node, from, to, 1 + (w * 7 + i) % 13);
                    }
                    conflicts
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    eprintln!("100 transfers, {conflicts} retried after a conflict");
    for node in c.ids() {
        let items = c.client.get(&c.addr(node), "/kv?prefix=acct/").unwrap().json();
        let balances: Vec<u64> = items["items"].as_array().unwrap().iter().map(balance).collect();
        assert_eq!(balances.len() as u64, ACCOUNTS, "node {node}: {items}");
        assert_eq!(balances.iter().sum::<u64>(), ACCOUNTS * START_BALANCE, "node {node}: {balances:?}");
    }
}

#[test]
fn bad_transactions_get_a_clear_error_and_change_nothing() {
    let c = Cluster::start_with(3, &["--max-txn-ops", "4", "--max-value-bytes", "64"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(leader, "k", "original").status, 200);
    let before = c.status(leader).unwrap()["last_log_index"].as_u64().unwrap();
    let five_gets = vec![json!({"get": {"key": "k"}}); 5];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not JSON", b"{\"compare\": [".to_vec(), 400, "invalid_json"),
        ("empty body", b"".to_vec(), 400, "invalid_json"),
        ("an array", b"[]".to_vec(), 400, "invalid_json"),
        ("a typo", br#"{"succes": []}"#.to_vec(), 400, "unknown_field"),
        ("compare without a test", br#"{"compare": [{"key": "k"}]}"#.to_vec(), 400, "invalid_field"),
        ("unknown operation", br#"{"success": [{"incr": {"key": "k"}}]}"#.to_vec(), 400, "unknown_field"),
        ("put without value", br#"{"success": [{"put": {"key": "k"}}]}"#.to_vec(), 400, "missing_field"),
        ("empty key", br#"{"success": [{"delete": {"key": ""}}]}"#.to_vec(), 400, "invalid_key"),
        (
            "value over the limit",
            json!({"success": [{"put": {"key": "k", "value": "v".repeat(65)}}]}).to_string().into_bytes(),
            413,
            "too_large",
        ),
        ("too many operations", json!({"success": five_gets}).to_string().into_bytes(), 400, "too_many_operations"),
    ];
    for node in [leader, c.followers(leader)[0]] {
        for (what, body, status, code) in &cases {
            let r = c.client.request(&c.addr(node), "POST", "/txn", Some(body)).unwrap();
            assert_eq!((r.status, r.json()["code"].as_str()), (*status, Some(*code)), "{what} on {node}: {}", r.text());
        }
        let r = c.client.get(&c.addr(node), "/txn").unwrap();
        assert_eq!(r.status, 405);
        let r = c.client.request(&c.addr(node), "POST", "/txn?dry_run=1", Some(b"{}")).unwrap();
        assert_eq!(r.json()["code"], "invalid_parameter");
    }
    assert_eq!(c.status(leader).unwrap()["last_log_index"].as_u64().unwrap(), before, "nothing reached the log");
    assert_eq!(c.get(leader, "k").json()["value"], "original");
}

#[test]
fn a_transaction_needs_the_role_of_what_it_does() {
    let dir = std::env::temp_dir().join(format!("raftkv-txn-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (read, write) = (new_token(), new_token());
    let tokens = dir.join("tokens");
    let lines = [token_line("viewer", Role::Read, &read), token_line("app", Role::Write, &write)];
    std::fs::write(&tokens, lines.join("\n") + "\n").unwrap();
    let c = Cluster::start_with(3, &["--tokens-file", tokens.to_str().unwrap(), "--public-status", "true"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let as_token = |t: Option<&str>| c.client_with(Duration::from_secs(5)).with_token(t.map(str::to_string));
    let writes = json!({"success": [{"put": {"key": "k", "value": "v"}}]});
    let reads = json!({"success": [{"get": {"key": "k"}}], "failure": [{"get": {"key": "k"}}]});
    let delete_on_failure = json!({"compare": [{"key": "k", "exists": true}], "failure": [{"delete": {"key": "k"}}]});
    let status = |t: Option<&str>, body: &Value| {
        let r = txn(&c, &as_token(t), leader, body);
        (r.status, r.json()["code"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(status(None, &reads), (401, "unauthenticated".into()));
    assert_eq!(status(Some(&read), &writes), (403, "forbidden".into()));
    // A write in either branch needs the write role, whichever runs.
    assert_eq!(status(Some(&read), &delete_on_failure), (403, "forbidden".into()));
    assert_eq!(status(Some(&read), &reads), (200, String::new()));
    assert_eq!(status(Some(&write), &writes), (200, String::new()));
    let r = txn(&c, &as_token(Some(&read)), c.followers(leader)[0], &reads).json();
    assert_eq!(r["results"][0]["get"]["value"], "v", "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn raftkvctl_runs_a_transaction_from_stdin_or_a_file() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let endpoints = c.ids().iter().map(|&i| c.addr(i)).collect::<Vec<_>>().join(",");
    let run = |args: &[&str], stdin: &str| {
        let mut cmd = Command::new(CTL);
        c.ctl_env(&mut cmd);
        let mut child = cmd
            .args(["--endpoints", &endpoints])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    };
    let create = r#"{"compare": [{"key": "a", "revision": 0}],
                     "success": [{"put": {"key": "a", "value": "10"}}, {"put": {"key": "b", "value": "0"}}]}"#;
    let (code, out) = run(&["txn"], create);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("SUCCEEDED (revision ") && out.contains("put a: revision") && out.contains("put b"),
        "{out}"
    );
    // Again: "a" exists now, so the comparison fails: exit 4, failure branch.
    let file = std::env::temp_dir().join(format!("raftkv-txn-{}.json", std::process::id()));
    let move_ = r#"{"compare": [{"key": "a", "value": "99"}], "success": [], "failure": [{"get": {"key": "a"}}]}"#;
    std::fs::write(&file, move_).unwrap();
    let (code, out) = run(&["txn", file.to_str().unwrap()], "");
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("FAILED: the comparisons did not hold") && out.contains("get a: 10 (revision"), "{out}");
    let (code, out) = run(&["-o", "json", "txn", "-"], r#"{"success": [{"get": {"key": "b"}}]}"#);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        v["results"][0]["get"],
        json!({"key": "b", "found": true, "value": "0", "revision": v["results"][0]["get"]["revision"]})
    );
    let (code, out) = run(&["txn"], "{not json");
    assert_eq!(code, 7, "{out}");
    let (code, out) = run(&["txn"], r#"{"success": [{"put": {"key": "a"}}]}"#);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("missing field 'value'"), "{out}");
    assert_eq!(c.get(leader, "a").json()["value"], "10");
    let _ = std::fs::remove_file(&file);
}
