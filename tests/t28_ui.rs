//! The web view at `/ui`, driven in a real browser: headless Chromium
//! through chromedriver's WebDriver protocol (plain JSON over HTTP, so no
//! browser crate is needed). The page must show the leader, every member
//! and the followers' replication; after the leader is killed it must show
//! the new leader within 2 s of the election and the old one as down; its
//! actions (snapshot, leadership transfer, log filter) must work, with a
//! token when the cluster has tokens. A screenshot is kept in
//! `target/test-artifacts/`.

mod common;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use raftkv::client::HttpClient;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    http: HttpClient,
    addr: String,
    session: String,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()))
}

impl Browser {
    fn start() -> Browser {
        let driver_bin = find_program(&["chromedriver"]).expect(
            "chromedriver is not installed: `scripts/install-deps.sh test` installs chromium and chromium-driver",
        );
        let browser_bin =
            find_program(&["chromium", "chromium-browser", "google-chrome"]).expect("chromium is not installed");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("chromedriver-{port}.log"))).unwrap();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let http = HttpClient::new(Duration::from_secs(30));
        eventually(Duration::from_secs(20), "chromedriver to answer", || {
            let r = http.get(&format!("http://{addr}"), "/status").ok()?;
            (r.status == 200 && r.json()["value"]["ready"] == true).then_some(())
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": browser_bin,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let r = http.request(&format!("http://{addr}"), "POST", "/session", Some(caps.to_string().as_bytes())).unwrap();
        assert_eq!(r.status, 200, "new WebDriver session: {}", r.text());
        let session = r.json()["value"]["sessionId"].as_str().expect("sessionId").to_string();
        let b = Browser { driver, http, addr, session };
        b.cmd("POST", "/timeouts", json!({"script": 10000, "pageLoad": 20000}));
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" { None } else { Some(body.to_string()) };
        let url = format!("http://{}", self.addr);
        let r = self
            .http
            .request(&url, method, &format!("/session/{}{path}", self.session), body.as_deref().map(str::as_bytes))
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    fn open(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    fn eval(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}));
        self.cmd("POST", &format!("/element/{e}/value"), json!({ "text": text }));
    }

    /// The leader the page shows (None: none).
    fn leader(&self) -> Option<u64> {
        self.eval("return document.getElementById('leader').dataset.leader;").as_str()?.parse().ok()
    }

    fn text(&self, css: &str) -> String {
        let script = format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;");
        self.eval(&script).as_str().unwrap_or("").to_string()
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd("GET", "/screenshot", Value::Null);
        let png = base64_decode(b64.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().write_all(&png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("http://{}", self.addr);
        let _ = self.http.request(&url, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn page_url(c: &Cluster, id: u64) -> String {
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}/ui", c.addr(id))
}

/// Waits until `f` holds on the page, polling every 50 ms; returns when.
fn until(b: &Browser, timeout: Duration, what: &str, f: impl Fn(&Browser) -> bool) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if f(b) {
            return Instant::now();
        }
        if Instant::now() > deadline {
            let shown = b.eval("return document.querySelector('main').innerText + '\\n' + document.getElementById('connection').textContent;");
            panic!("the page did not show {what} within {timeout:?}; it shows:\n{}", shown.as_str().unwrap_or(""));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_page_follows_the_cluster_through_a_leader_kill_and_its_actions_work() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    for i in 0..20 {
        assert_eq!(c.put(leader, &format!("ui{i}"), "v").status, 200);
    }
    let viewer = c.followers(leader)[0];
    let b = Browser::start();
    b.open(&page_url(&c, viewer));

    if let Some(tls) = &c.tls {
        // Tokens on: without one the stream is refused and the page says so;
        // with the admin token typed in, it goes live.
        until(&b, Duration::from_secs(10), "that a token is needed", |b| b.text("#connection").contains("401"));
        b.type_into("#token", &tls.admin_token);
        b.click("#token-form button");
    }
    until(&b, Duration::from_secs(10), "the leader", |b| b.leader() == Some(leader));
    // Every member up, and both followers' replication bars.
    until(&b, Duration::from_secs(5), "three members up and two followers' progress", |b| {
        b.eval(
            "return document.querySelectorAll('#members tr[data-up=\"true\"]').length === 3 \
             && document.querySelectorAll('#replication .peer progress').length === 2",
        ) == true
    });
    let timeline = b.text("#timeline");
    assert!(timeline.contains(&format!("node {leader} became leader")), "timeline: {timeline}");

    // Kill the leader: the page must show the new one within 2 s of its
    // election, and the old one as down.
    let killed_at = Instant::now();
    c.kill(leader);
    let survivors = c.live_ids();
    let new_leader = eventually(Duration::from_secs(10), "a new leader", || {
        survivors.iter().find_map(|&id| c.status(id).filter(|s| s["role"] == "leader").map(|_| id))
    });
    let elected_at = Instant::now();
    let shown_at = until(&b, Duration::from_secs(10), "the new leader", |b| {
        b.leader() == Some(new_leader) && b.leader() != Some(leader)
    });
    let delay = shown_at.saturating_duration_since(elected_at);
    eprintln!(
        "leader {leader} killed; node {new_leader} elected after {:?}; the page showed it {:?} later",
        elected_at - killed_at,
        delay
    );
    assert!(delay <= Duration::from_secs(2), "the page showed the new leader {delay:?} after the election");
    until(&b, Duration::from_secs(5), "the killed leader as down", |b| {
        b.eval(&format!("const r = document.querySelector('#members tr[data-member=\"{leader}\"]'); return r && r.dataset.up === 'false' && r.textContent.includes('down for');")) == true
    });
    let shot = b.screenshot(if c.tls.is_some() { "ui-leader-killed-tls.png" } else { "ui-leader-killed.png" });
    eprintln!("screenshot: {}", shot.display());

    // Actions, on the node serving the page.
    b.click("#snapshot");
    until(&b, Duration::from_secs(10), "the snapshot's answer", |b| {
        b.eval("return document.getElementById('action-result').dataset.ok;") == "true"
    });
    let result = b.text("#action-result");
    assert!(result.contains("200") && result.contains("\"index\""), "snapshot answer: {result}");
    let snap = c.status(viewer).unwrap()["log"]["snapshot_index"].as_u64().unwrap();
    assert!(snap > 0, "node {viewer} took a snapshot");

    // Transfer leadership to the survivor that does not lead.
    let target = survivors.iter().copied().find(|&id| id != new_leader).unwrap();
    until(&b, Duration::from_secs(5), "the transfer target in the list", |b| {
        b.eval(&format!(
            "return [...document.getElementById('transfer-to').options].some(o => o.value === '{target}');"
        )) == true
    });
    b.eval(&format!("document.getElementById('transfer-to').value = '{target}'; return true;"));
    b.click("#transfer");
    until(&b, Duration::from_secs(10), "the leader after the transfer", |b| b.leader() == Some(target));
    assert_eq!(c.wait_leader(Duration::from_secs(10)), target);

    // Switch a log target at run time.
    b.type_into("#log-filter", "info,raftkv::election=trace");
    b.click("#log-apply");
    until(&b, Duration::from_secs(5), "the log filter's answer", |b| {
        b.eval("return document.getElementById('action-result').dataset.ok;") == "true"
    });
    let filter = c.client.get(&c.addr(viewer), "/admin/log").unwrap().json()["filter"].clone();
    assert_eq!(filter, "info,raftkv::election=trace");
    let timeline = b.text("#timeline");
    assert!(timeline.contains("took a snapshot"), "timeline: {timeline}");
}

#[test]
fn five_members_one_down_stay_readable() {
    let mut c = Cluster::start(5);
    let leader = c.wait_leader(Duration::from_secs(10));
    let down = c.followers(leader)[0];
    c.kill(down);
    let viewer = c.followers(leader).into_iter().find(|&id| id != down).unwrap();
    let b = Browser::start();
    let url = match &c.tls {
        Some(tls) => format!("{}#token={}", page_url(&c, viewer), tls.admin_token),
        None => page_url(&c, viewer),
    };
    b.open(&url);
    until(&b, Duration::from_secs(10), "five members, four up, one down", |b| {
        b.eval(&format!(
            "return document.querySelectorAll('#members tr[data-up=\"true\"]').length === 4 \
             && !!document.querySelector('#members tr[data-member=\"{down}\"][data-up=\"false\"]') \
             && document.querySelectorAll('#replication .peer').length === 4 \
             && document.getElementById('leader').dataset.leader === '{leader}';"
        )) == true
    });
    // Everything fits: no horizontal scrolling at this window size.
    let fits = b.eval("return document.documentElement.scrollWidth <= window.innerWidth;");
    assert_eq!(fits, true, "the page is wider than the window with five members");
    let row = b.text(&format!("#members tr[data-member=\"{down}\"]"));
    assert!(row.contains("down for"), "the down member's row: {row}");
    b.screenshot(if c.tls.is_some() { "ui-five-members-tls.png" } else { "ui-five-members.png" });
}
