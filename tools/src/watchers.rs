//! Watchers for `raftkv-bench`: many watch streams held open against
//! raftkv (`GET ...?watch=true`, Server-Sent Events) or etcd (`POST
//! /v3/watch` on its JSON gateway), over plain TCP so the client side costs
//! little CPU; and a probe of the time from a PUT's acknowledgement to its
//! event on a watcher.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Raftkv,
    Etcd,
}

/// What a watcher follows.
#[derive(Clone, Debug)]
pub enum Follow {
    Key(String),
    Prefix(String),
}

/// Standard base64 (etcd's JSON gateway encodes keys and values so).
pub fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The request that opens one watch stream.
fn request(kind: Kind, addr: &str, f: &Follow) -> String {
    match kind {
        Kind::Raftkv => {
            let path = match f {
                Follow::Key(k) => format!("/kv/{k}?watch=true"),
                Follow::Prefix(p) => format!("/kv?prefix={p}&watch=true"),
            };
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
        }
        Kind::Etcd => {
            let (key, end) = match f {
                Follow::Key(k) => (k.clone(), None),
                Follow::Prefix(p) => {
                    // The range end of a prefix: its last byte plus one.
                    let mut end = p.clone().into_bytes();
                    *end.last_mut().expect("non-empty prefix") += 1;
                    (p.clone(), Some(String::from_utf8(end).expect("ASCII prefix")))
                }
            };
            let mut create = serde_json::json!({"key": b64(key.as_bytes())});
            if let Some(end) = end {
                create["range_end"] = b64(end.as_bytes()).into();
            }
            let body = serde_json::json!({"create_request": create}).to_string();
            format!(
                "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
    }
}

/// Opens a watch stream; the answer's head is read before it returns.
pub fn open(kind: Kind, addr: &str, f: &Follow) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(request(kind, addr, f).as_bytes())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::other("the watch was closed before its head"));
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("watch refused: {}", String::from_utf8_lossy(&head))));
    }
    Ok(s)
}

/// Watch streams held open for the duration of a measurement.
pub struct Watchers {
    /// Streams nobody reads (idle ones, or slow ones on purpose).
    _held: Vec<TcpStream>,
    readers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Bytes the readers received.
    pub received: Arc<AtomicU64>,
}

impl Watchers {
    /// `n` streams of `follow(i)`; read as fast as they come if `read`,
    /// else never read.
    pub fn start(kind: Kind, addr: &str, n: usize, read: bool, follow: impl Fn(usize) -> Follow) -> Watchers {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let mut held = Vec::new();
        let mut readers = Vec::new();
        for i in 0..n {
            let s = open(kind, addr, &follow(i)).unwrap_or_else(|e| panic!("watch {i} on {addr}: {e}"));
            if !read {
                held.push(s);
                continue;
            }
            let (stop, received) = (stop.clone(), received.clone());
            readers.push(std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = vec![0u8; 64 << 10];
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(_) => break,
                    }
                }
            }));
        }
        Watchers { _held: held, readers, stop, received }
    }

    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.readers {
            let _ = r.join();
        }
        self.received.load(Ordering::Relaxed)
    }
}

/// Latencies (µs) from each PUT's acknowledgement to its event on a
/// watcher of the key, for `n` PUTs one after another; and how many events
/// came before the acknowledgement (counted as 0).
pub fn delivery_latency(kind: Kind, addr: &str, key: &str, n: usize, put: impl Fn(&str)) -> (Vec<f64>, usize) {
    let mut s = open(kind, addr, &Follow::Key(key.to_string())).expect("latency watcher");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut lat = Vec::with_capacity(n);
    let mut early = 0;
    let mut pending = Vec::new();
    for i in 0..n {
        let value = format!("lat-{i:08}");
        let token = match kind {
            Kind::Raftkv => format!("\"value\":\"{value}\""),
            Kind::Etcd => b64(value.as_bytes()),
        };
        put(&value);
        let acked = Instant::now();
        // Events of this PUT may already be in `pending` (read before the
        // acknowledgement came).
        let mut buf = [0u8; 16 << 10];
        let arrived = loop {
            if let Some(p) = find(&pending, token.as_bytes()) {
                pending.drain(..p + token.len());
                break None;
            }
            let r = s.read(&mut buf).expect("the latency watcher's stream");
            assert!(r > 0, "the latency watcher's stream ended");
            let at = Instant::now();
            pending.extend_from_slice(&buf[..r]);
            if let Some(p) = find(&pending, token.as_bytes()) {
                pending.drain(..p + token.len());
                break Some(at);
            }
        };
        match arrived {
            Some(at) => lat.push(at.duration_since(acked).as_secs_f64() * 1e6),
            None => {
                early += 1;
                lat.push(0.0);
            }
        }
    }
    (lat, early)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
