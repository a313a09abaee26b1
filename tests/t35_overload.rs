//! Overload (issue 9, finding 7): a node bounds the client requests it works
//! on at once (`--max-pending`). Beyond the bound it answers 503 `overloaded`
//! with `Retry-After` at once, and — as every 503 promises — such a write
//! was never proposed: it does not take effect.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn writes_beyond_max_pending_get_503_overloaded_and_never_take_effect() {
    let c = Cluster::start_with(3, &["--max-pending", "2"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let addr = c.addr(leader);
    let base = c.client_with(Duration::from_secs(10));
    let answers: Vec<(String, u16, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..48)
            .map(|i| {
                let (addr, client) = (addr.clone(), base.clone());
                s.spawn(move || {
                    let key = format!("load{i}");
                    let r = client.put_json(&addr, &format!("/kv/{key}"), &json!({"value": "v"})).expect("an answer");
                    let code = r.json()["code"].as_str().unwrap_or("").to_string();
                    (key, r.status, r.header("retry-after").map(str::to_string), code)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<_> = answers.iter().filter(|a| a.1 == 503).collect();
    assert!(!refused.is_empty(), "48 concurrent writes against a limit of 2: some must be refused");
    assert!(answers.iter().any(|a| a.1 == 200), "writes within the limit are served");
    for (key, status, retry_after, code) in &answers {
        assert!(*status == 200 || *status == 503, "{key}: unexpected status {status}");
        if *status == 503 {
            assert_eq!(code, "overloaded", "{key}");
            assert!(retry_after.is_some(), "{key}: 503 carries Retry-After");
        }
    }
    // Linearizable reads after every answer: each write answered 200 is
    // there, each one answered 503 is not.
    for (key, status, _, _) in &answers {
        let r = c.get(leader, key);
        let want = if *status == 200 { 200 } else { 404 };
        assert_eq!(r.status, want, "{key} answered {status}, then read {}", r.status);
    }
    let metrics = c.client.get(&addr, "/metrics").unwrap().text();
    let refused_metric = metrics
        .lines()
        .find_map(|l| l.strip_prefix("raftkv_overloaded_requests_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("metric raftkv_overloaded_requests_total");
    assert!(refused_metric >= refused.len() as u64, "metric {refused_metric} counts the refusals");
}
