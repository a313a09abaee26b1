//! The OpenAPI document (`/openapi.json`, the repository's `openapi.json`)
//! describes routes that exist: every path and method in it is served by a
//! node (no `no_route`, no `method_not_allowed`), and the node serves the
//! same document as the repository holds.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn every_documented_route_is_served_and_the_document_is_the_repositorys() {
    let c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let r = c.client.get(&c.addr(leader), "/openapi.json").unwrap();
    assert_eq!(r.status, 200);
    let served: Value = r.json();
    let repo: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(served, repo);
    assert_eq!(served["openapi"], "3.1.0");
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, item) in paths {
        // Path parameters: a key, or an id that is no member (the request
        // is refused by the handler, not by the router).
        let concrete = path.replace("{key}", "openapi-probe").replace("{id}", "99");
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                continue;
            }
            assert!(op["responses"].is_object(), "{method} {path} has responses");
            // A stream that only ever answers as a stream never ends: the
            // web view's test (t28) reads it.
            let ok = op["responses"]["200"]["content"].as_object();
            if ok.is_some_and(|c| c.len() == 1 && c.contains_key("text/event-stream")) {
                continue;
            }
            let m = method.to_uppercase();
            // Only harmless bodies: an invalid one for writes (400 from
            // the handler proves the route; nothing changes).
            let body: Option<&[u8]> = if m == "GET" || m == "DELETE" { None } else { Some(b"[]") };
            let r = c.client.request(&c.addr(leader), &m, &concrete, body).unwrap();
            let code = r.json()["code"].as_str().unwrap_or("").to_string();
            assert!(
                code != "no_route" && code != "method_not_allowed" && r.status != 404
                    || code == "unknown_member"
                    || code == "lease_not_found"
                    || code == "not_found",
                "{m} {path}: {} {}",
                r.status,
                r.text()
            );
            let documented = op["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&r.status.to_string()),
                "{m} {path} answered {} ({code}), which the document does not list",
                r.status
            );
        }
    }
}
