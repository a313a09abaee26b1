//! Clients that stop sending mid-request (issue 9 item 6): a body shorter
//! than its Content-Length, a chunked body that never ends, a body trickled
//! a byte at a time, a half-sent request head. Each gets a 408 within
//! `--request-read-timeout-ms` and its connection is closed, on the client
//! API and on the Raft RPCs, while everyone else is served as usual.
//!
//! The misbehaving clients are raw TCP connections; the well-behaved ones
//! use the harness client.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The read timeout the clusters here run with.
const READ_TIMEOUT: Duration = Duration::from_millis(1000);
/// How late past its deadline an answer may come on a busy machine.
const SLACK: Duration = Duration::from_secs(2);
/// How long a test waits for anything from the server before failing.
const GIVE_UP: Duration = Duration::from_secs(15);

fn start(read_timeout: Duration) -> Cluster {
    Cluster::start_plain(3, &["--request-read-timeout-ms", &read_timeout.as_millis().to_string()])
}

/// A raw connection that has sent (part of) a request.
struct Raw {
    stream: TcpStream,
    /// When the last byte of the stalled request was written.
    sent: Instant,
    what: String,
}

fn open(addr: &str, what: &str, bytes: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.write_all(bytes).expect("send the partial request");
    Raw { stream, sent: Instant::now(), what: what.to_string() }
}

fn head(method: &str, path: &str, headers: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: raftkv\r\n{headers}\r\n")
}

/// The header with the cluster's id that every peer request carries.
fn cluster_header(c: &Cluster, id: u64) -> String {
    format!("x-raftkv-cluster: {}\r\n", c.status(id).unwrap()["cluster_id"].as_str().unwrap())
}

/// A PUT whose Content-Length promises 100 bytes, of which 10 are sent.
fn short_put(addr: &str, key: &str) -> Raw {
    let req = head("PUT", &format!("/kv/{key}"), "Content-Type: application/json\r\nContent-Length: 100\r\n");
    open(addr, "short PUT body", format!("{req}{{\"value\":\"").as_bytes())
}

/// A chunked PUT: one chunk, then neither more chunks nor the last one.
fn unterminated_chunked_put(addr: &str, key: &str) -> Raw {
    let req = head("PUT", &format!("/kv/{key}"), "Transfer-Encoding: chunked\r\n");
    open(addr, "unterminated chunked PUT", format!("{req}9\r\n{{\"value\":\r\n").as_bytes())
}

/// Reads one response, failing if it does not come within GIVE_UP. Returns
/// it and how long after the request was sent it came.
fn read_response(raw: &mut Raw) -> (Response, Duration) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                panic!("{}: not an HTTP response: {head:?}", raw.what);
            });
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            if buf.len() >= end + 4 + len {
                let elapsed = raw.sent.elapsed();
                let body = buf[end + 4..end + 4 + len].to_vec();
                assert_eq!(buf.len(), end + 4 + len, "{}: bytes after the response", raw.what);
                return (Response { status, headers, body }, elapsed);
            }
        }
        let left = GIVE_UP.checked_sub(raw.sent.elapsed()).unwrap_or_else(|| {
            panic!("{}: no response within {GIVE_UP:?} (got {:?})", raw.what, String::from_utf8_lossy(&buf))
        });
        raw.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match raw.stream.read(&mut chunk) {
            Ok(0) => {
                panic!("{}: connection closed before a full response: {:?}", raw.what, String::from_utf8_lossy(&buf))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{}: reading the response: {e}", raw.what),
        }
    }
}

/// Waits until the server closes the connection, sending nothing more;
/// fails if it is still open `within` after the request was sent.
fn assert_closed(raw: &mut Raw, within: Duration) -> Duration {
    let mut chunk = [0u8; 4096];
    loop {
        let left = within.checked_sub(raw.sent.elapsed()).unwrap_or_else(|| {
            panic!("{}: connection still open {within:?} after the request", raw.what);
        });
        raw.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match raw.stream.read(&mut chunk) {
            Ok(0) => return raw.sent.elapsed(),
            Ok(n) => panic!("{}: server sent more: {:?}", raw.what, String::from_utf8_lossy(&chunk[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return raw.sent.elapsed(),
            Err(e) => panic!("{}: waiting for the close: {e}", raw.what),
        }
    }
}

/// A complete request, to check that nothing sent after an abandoned body
/// is taken for a new request.
const SMUGGLED: &str = "GET /health HTTP/1.1\r\nHost: raftkv\r\n\r\n";

/// The JSON 408 of a body that did not arrive in time, about `timeout`
/// after the request was sent, then the connection closed. `rest`, sent
/// after the 408 when given, must go unanswered: it is the end of the body
/// and a new request, which must not be served on this connection.
fn expect_body_timeout(raw: &mut Raw, timeout: Duration, rest: Option<&str>) {
    let (r, elapsed) = read_response(raw);
    assert_eq!(r.status, 408, "{}: {}", raw.what, r.text());
    assert_eq!(r.json()["code"], "request_timeout", "{}: {}", raw.what, r.text());
    assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}: error message", raw.what);
    assert_eq!(r.header("content-type"), Some("application/json"), "{}", raw.what);
    assert_eq!(r.header("connection"), Some("close"), "{}", raw.what);
    assert!(elapsed >= timeout.mul_f64(0.9), "{}: 408 after {elapsed:?}, before the {timeout:?} deadline", raw.what);
    assert!(elapsed < timeout + SLACK, "{}: 408 only after {elapsed:?} (timeout {timeout:?})", raw.what);
    if let Some(rest) = rest {
        // The server may be gone already: then the write fails, or resets.
        let _ = raw.stream.write_all(rest.as_bytes());
    }
    assert_closed(raw, timeout + SLACK + Duration::from_secs(2));
}

/// The rest of a `short_put` body, then a new request.
fn short_put_rest() -> String {
    format!("{}{SMUGGLED}", "x".repeat(90))
}

/// The end of an `unterminated_chunked_put` body, then a new request.
fn chunked_put_rest() -> String {
    format!("3\r\n\"v\"\r\n1\r\n}}\r\n0\r\n\r\n{SMUGGLED}")
}

#[test]
fn a_body_shorter_than_its_content_length_gets_408_within_the_read_timeout() {
    let c = start(READ_TIMEOUT);
    let leader = c.wait_leader(Duration::from_secs(10));
    let mut stalls: Vec<Raw> = c.ids().iter().map(|&id| short_put(&c.addr(id), "short")).collect();
    for raw in &mut stalls {
        expect_body_timeout(raw, READ_TIMEOUT, Some(&short_put_rest()));
    }
    assert_eq!(c.get(leader, "short").status, 404, "nothing was written");
}

#[test]
fn a_chunked_body_that_never_ends_gets_408() {
    let c = start(READ_TIMEOUT);
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c.followers(leader)[0];
    let mut stalls: Vec<Raw> = [leader, f].iter().map(|&id| unterminated_chunked_put(&c.addr(id), "chunked")).collect();
    for raw in &mut stalls {
        expect_body_timeout(raw, READ_TIMEOUT, Some(&chunked_put_rest()));
    }
    assert_eq!(c.get(leader, "chunked").status, 404, "nothing was written");
}

#[test]
fn a_body_trickled_a_byte_at_a_time_is_cut_off_at_the_deadline() {
    let c = start(READ_TIMEOUT);
    let leader = c.wait_leader(Duration::from_secs(10));
    let body = format!("{{\"value\":\"{}\"}}", "t".repeat(30));
    let req = head("PUT", "/kv/trickle", &format!("Content-Length: {}\r\n", body.len()));
    let mut raw = open(&c.addr(leader), "trickled PUT body", req.as_bytes());
    // One byte every 200 ms: each gap is well within the timeout, the whole
    // body (about 8 s) is not.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = raw.stream.try_clone().unwrap();
    let trickle = {
        let stop = stop.clone();
        let body = body.clone().into_bytes();
        thread::spawn(move || {
            let mut sent = 0;
            for b in body {
                if stop.load(Ordering::SeqCst) || writer.write_all(&[b]).is_err() {
                    break;
                }
                sent += 1;
                thread::sleep(Duration::from_millis(200));
            }
            sent
        })
    };
    let (r, elapsed) = read_response(&mut raw);
    stop.store(true, Ordering::SeqCst);
    let sent = trickle.join().unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["code"], "request_timeout", "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(elapsed < READ_TIMEOUT + SLACK, "408 only after {elapsed:?}");
    assert!(sent < body.len(), "the whole body got through ({sent} bytes) before the 408");
    assert_closed(&mut raw, READ_TIMEOUT + SLACK + Duration::from_secs(2));
    assert_eq!(c.get(leader, "trickle").status, 404, "nothing was written");
}

#[test]
fn a_chunked_body_over_the_limit_gets_413_and_its_connection_closed() {
    let c = Cluster::start_plain(1, &["--max-value-bytes", "4096"]);
    // The body limit is twice the value limit plus 64 KiB.
    let chunk = "x".repeat(2 * 4096 + 64 * 1024 + 1);
    let req = head("PUT", "/kv/big", "Transfer-Encoding: chunked\r\n");
    let mut raw =
        open(&c.addr(1), "chunked body over the limit", format!("{req}{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    let (r, _) = read_response(&mut raw);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "too_large", "{}", r.text());
    let _ = raw.stream.write_all(format!("0\r\n\r\n{SMUGGLED}").as_bytes());
    assert_closed(&mut raw, GIVE_UP);
}

#[test]
fn stalled_connections_do_not_hold_up_other_clients() {
    // A longer timeout, so that the stalled connections are surely still
    // open while the other requests are served.
    let timeout = Duration::from_millis(3000);
    let c = start(timeout);
    let leader = c.wait_leader(Duration::from_secs(10));
    let mut body_stalls = Vec::new();
    let mut head_stalls = Vec::new();
    for id in c.ids() {
        let addr = c.addr(id);
        for i in 0..3 {
            body_stalls.push(short_put(&addr, &format!("stall{i}")));
            body_stalls.push(unterminated_chunked_put(&addr, &format!("stall{i}")));
            let rpc =
                head("POST", "/raft/append_entries", &format!("{}Content-Length: 100\r\n", cluster_header(&c, id)));
            body_stalls.push(open(&addr, "short append_entries body", format!("{rpc}\x01\x00\x00").as_bytes()));
            head_stalls.push(open(&addr, "half-sent head", b"PUT /kv/stall HTTP/1.1\r\nContent-Le"));
        }
    }
    for id in c.ids() {
        let started = Instant::now();
        let put = c.put(id, &format!("k{id}"), "v");
        assert_eq!(put.status, 200, "PUT through node {id}: {}", put.text());
        let get = c.get(id, &format!("k{id}"));
        assert_eq!(get.status, 200, "GET through node {id}: {}", get.text());
        assert_eq!(get.json()["value"], "v");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "PUT and GET through node {id} took {took:?}");
    }
    for raw in &mut body_stalls {
        expect_body_timeout(raw, timeout, None);
    }
    for raw in &mut head_stalls {
        let (r, elapsed) = read_response(raw);
        assert_eq!(r.status, 408, "{}", raw.what);
        assert!(elapsed < timeout + SLACK, "{}: 408 only after {elapsed:?}", raw.what);
        assert_closed(raw, timeout + SLACK + Duration::from_secs(2));
    }
    assert_eq!(c.get(leader, "stall0").status, 404, "no stalled write took effect");
}

#[test]
fn a_raft_rpc_with_a_partial_body_gets_408() {
    let c = start(READ_TIMEOUT);
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c.followers(leader)[0];
    let mut stalls: Vec<Raw> = ["append_entries", "heartbeat", "request_vote"]
        .iter()
        .map(|kind| {
            let req = head(
                "POST",
                &format!("/raft/{kind}"),
                &format!("{}Content-Type: application/octet-stream\r\nContent-Length: 100\r\n", cluster_header(&c, f)),
            );
            open(&c.addr(f), &format!("partial /raft/{kind} body"), format!("{req}\x01\x00\x00\x00\x00").as_bytes())
        })
        .collect();
    for raw in &mut stalls {
        expect_body_timeout(raw, READ_TIMEOUT, None);
    }
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(f, "after", "ok").status, 200, "the cluster carries on");
}

#[test]
fn a_half_sent_request_head_gets_408() {
    let c = start(READ_TIMEOUT);
    for partial in ["PUT /kv/hea", "PUT /kv/head HTTP/1.1\r\nHost: raftkv\r\nContent-Len"] {
        let mut raw = open(&c.addr(1), &format!("head {partial:?}"), partial.as_bytes());
        let (r, elapsed) = read_response(&mut raw);
        assert_eq!(r.status, 408, "{}", raw.what);
        assert_eq!(r.header("connection"), Some("close"), "{}", raw.what);
        assert!(elapsed >= READ_TIMEOUT.mul_f64(0.9), "{}: 408 after {elapsed:?}", raw.what);
        assert!(elapsed < READ_TIMEOUT + SLACK, "{}: 408 only after {elapsed:?}", raw.what);
        assert_closed(&mut raw, READ_TIMEOUT + SLACK + Duration::from_secs(2));
    }
}

#[test]
fn a_kept_alive_connection_stalled_after_a_request_is_closed() {
    let c = start(READ_TIMEOUT);
    // Twice the read timeout with no request in progress: the keep-alive
    // time, then the read timeout for a head.
    let limit = 2 * READ_TIMEOUT + SLACK;

    // Half of a second request's head: actix times only a connection's
    // first head.
    let mut raw = open(&c.addr(1), "GET /health then half a head", head("GET", "/health", "").as_bytes());
    let (r, _) = read_response(&mut raw);
    assert_eq!(r.status, 200, "{}", r.text());
    raw.stream.write_all(b"GET /heal").unwrap();
    raw.sent = Instant::now();
    let closed = assert_closed(&mut raw, limit);
    assert!(closed >= READ_TIMEOUT.mul_f64(0.9), "closed after only {closed:?}");

    // A chunked body that never ends, sent to an endpoint that does not
    // read bodies: answered at once, then the body would be read forever.
    let req = head("GET", "/health", "Transfer-Encoding: chunked\r\n");
    let mut raw = open(&c.addr(1), "GET /health with an endless body", format!("{req}5\r\nhello\r\n").as_bytes());
    let (r, _) = read_response(&mut raw);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_closed(&mut raw, limit);

    // An idle kept-alive connection is closed too (actix's keep-alive).
    let mut raw = open(&c.addr(1), "idle after GET /health", head("GET", "/health", "").as_bytes());
    assert_eq!(read_response(&mut raw).0.status, 200);
    raw.sent = Instant::now();
    assert_closed(&mut raw, READ_TIMEOUT + SLACK);
}
