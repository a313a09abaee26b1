//! Workloads that check exactly-once writes and atomic transactions under
//! the same faults as the linearizability clients:
//!
//! * **counter** — clients increment one key by compare-and-set loops, each
//!   write in a client session and retried with the same sequence number
//!   whenever its outcome is unknown. With sessions every increment the
//!   cluster applied is acknowledged to its client, so the final value must
//!   equal the number of acknowledged increments exactly.
//! * **bank** — clients move money between accounts with transactions
//!   (compare both balances, put both); an auditor reads all accounts —
//!   in one read-only transaction through the leader, or from a random
//!   node's own state — during the faults and after, and the total must
//!   never change.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftkv::client::{HttpClient, Session, SessionError};
use raftkv::raft::SplitMix64;
use serde_json::{Value, json};

pub const COUNTER_KEY: &str = "counter";
pub const ACCOUNTS: u64 = 5;
pub const START_BALANCE: u64 = 1_000;
/// How long a client goes on retrying one write whose outcome is unknown.
const PATIENCE: Duration = Duration::from_secs(15);

fn account(i: u64) -> String {
    format!("acct/{i}")
}

#[derive(Debug, Default)]
pub struct Stats {
    pub counter_acked: u64,
    pub counter_conflicts: u64,
    /// Increments whose outcome stayed unknown after retrying for
    /// `PATIENCE` (or that got an answer a session should never give).
    pub counter_unknown: Vec<String>,
    pub transfers: u64,
    pub transfer_conflicts: u64,
    pub transfer_unknown: Vec<String>,
    pub audits: u64,
    pub violations: Vec<String>,
    pub leases_granted: u64,
    pub leased_keys: u64,
    pub leases_revoked: u64,
}

/// What the workloads need from the run.
pub struct Env<'a> {
    pub http: &'a HttpClient,
    pub members: &'a Mutex<Vec<(u64, String)>>,
    pub stop: &'a AtomicBool,
    pub stats: &'a Mutex<Stats>,
}

impl Env<'_> {
    fn endpoints(&self, rng: &mut SplitMix64) -> Vec<String> {
        let mut eps: Vec<String> = self.members.lock().unwrap().iter().map(|(_, a)| a.clone()).collect();
        let start = (rng.next_u64() % eps.len().max(1) as u64) as usize;
        eps.rotate_left(start);
        eps
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A session, retried until one opens or the run stops.
    fn session(&self, rng: &mut SplitMix64) -> Option<Session> {
        while !self.stopped() {
            if let Ok(s) = self.http.open_session(&self.endpoints(rng), PATIENCE) {
                return Some(s);
            }
        }
        None
    }

    /// Every account in one read-only transaction (linearizable).
    fn balances(&self, addr: &str) -> Option<Vec<u64>> {
        let gets: Vec<Value> = (0..ACCOUNTS).map(|i| json!({"get": {"key": account(i)}})).collect();
        let body = json!({"success": gets}).to_string();
        let r = self.http.request(addr, "POST", "/txn", Some(body.as_bytes())).ok()?;
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        let results = v["results"].as_array()?;
        results.iter().map(|g| g["get"]["value"].as_str()?.parse().ok()).collect()
    }
}

/// Creates the accounts (before any fault).
pub fn open_accounts(http: &HttpClient, addr: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        match open_accounts_once(http, addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

fn open_accounts_once(http: &HttpClient, addr: &str) -> Result<(), String> {
    let body = json!({
        "compare": (0..ACCOUNTS).map(|i| json!({"key": account(i), "exists": false})).collect::<Vec<_>>(),
        "success": (0..ACCOUNTS)
            .map(|i| json!({"put": {"key": account(i), "value": START_BALANCE.to_string()}}))
            .collect::<Vec<_>>(),
    })
    .to_string();
    let r = http.request(addr, "POST", "/txn", Some(body.as_bytes())).map_err(|e| e.to_string())?;
    match r.status {
        // Not succeeded: they exist — an earlier attempt whose answer was
        // lost created them (nothing else does).
        200 => Ok(()),
        _ => Err(format!("opening the accounts: {} {}", r.status, r.text())),
    }
}

/// One client of the counter: read, then compare-and-set to one more.
pub fn counter_client(env: &Env, seed: u64) {
    let mut rng = SplitMix64(seed);
    let Some(mut session) = env.session(&mut rng) else { return };
    while !env.stopped() {
        let eps = env.endpoints(&mut rng);
        let current = match env.http.get(&eps[0], &format!("/kv/{COUNTER_KEY}")) {
            Ok(r) if r.status == 200 => r.json()["value"].as_str().and_then(|v| v.parse::<u64>().ok()),
            Ok(r) if r.status == 404 => None,
            _ => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let body = match current {
            Some(v) => json!({"value": (v + 1).to_string(), "if_value": v.to_string()}),
            None => json!({"value": "1", "if_revision": 0}),
        }
        .to_string();
        let path = format!("/kv/{COUNTER_KEY}");
        let res = env.http.write_in_session(&eps, &mut session, "PUT", &path, Some(body.as_bytes()), PATIENCE);
        let judged = settle(env, Work::Counter, res, |r| match r.status {
            200 => Some(true),
            412 => Some(false),
            _ => None,
        });
        if judged.is_err() {
            match env.session(&mut rng) {
                Some(s) => session = s,
                None => return,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Work {
    Counter,
    Bank,
}

/// Records the outcome of a write in a session: `judge` says whether an
/// answer is an acknowledgement (`Some(true)`), a failed comparison
/// (`Some(false)`) or something a session should not produce (`None`, kept
/// as unknown). `Err(())`: the session is gone (410) and a new one is due.
fn settle(
    env: &Env,
    work: Work,
    res: Result<raftkv::client::Response, SessionError>,
    judge: impl Fn(&raftkv::client::Response) -> Option<bool>,
) -> Result<(), ()> {
    let mut stats = env.stats.lock().unwrap();
    let stats = &mut *stats;
    let (acked, conflicts, unknown) = match work {
        Work::Counter => (&mut stats.counter_acked, &mut stats.counter_conflicts, &mut stats.counter_unknown),
        Work::Bank => (&mut stats.transfers, &mut stats.transfer_conflicts, &mut stats.transfer_unknown),
    };
    match res {
        Ok(r) => match judge(&r) {
            Some(true) => *acked += 1,
            Some(false) => *conflicts += 1,
            None => {
                unknown.push(format!("{} {}", r.status, r.text()));
                if r.status == 410 {
                    return Err(());
                }
            }
        },
        Err(SessionError::GaveUp(last)) => unknown.push(format!("gave up: {last}")),
        Err(SessionError::Fatal(e)) => unknown.push(format!("fatal: {e}")),
    }
    Ok(())
}

/// One client of the bank: read two balances, move some money between
/// them if neither changed.
pub fn bank_client(env: &Env, seed: u64) {
    let mut rng = SplitMix64(seed);
    let Some(mut session) = env.session(&mut rng) else { return };
    while !env.stopped() {
        let eps = env.endpoints(&mut rng);
        let Some(balances) = env.balances(&eps[0]) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let from = rng.next_u64() % ACCOUNTS;
        let to = (from + 1 + rng.next_u64() % (ACCOUNTS - 1)) % ACCOUNTS;
        let (fb, tb) = (balances[from as usize], balances[to as usize]);
        let amount = (1 + rng.next_u64() % 50).min(fb);
        let body = json!({
            "compare": [{"key": account(from), "value": fb.to_string()}, {"key": account(to), "value": tb.to_string()}],
            "success": [
                {"put": {"key": account(from), "value": (fb - amount).to_string()}},
                {"put": {"key": account(to), "value": (tb + amount).to_string()}},
            ],
        })
        .to_string();
        let res = env.http.write_in_session(&eps, &mut session, "POST", "/txn", Some(body.as_bytes()), PATIENCE);
        let judged = settle(env, Work::Bank, res, |r| (r.status == 200).then(|| r.json()["succeeded"] == true));
        if judged.is_err() {
            match env.session(&mut rng) {
                Some(s) => session = s,
                None => return,
            }
        }
    }
}

/// The total of a listing of the accounts (`GET /kv?prefix=acct/`).
fn listed_total(v: &Value) -> Option<(usize, u64)> {
    let items = v["items"].as_array()?;
    let total = items.iter().map(|i| i["value"].as_str()?.parse::<u64>().ok()).sum::<Option<u64>>()?;
    Some((items.len(), total))
}

/// Checks one view of the accounts; a wrong total is a violation.
fn audit(env: &Env, rng: &mut SplitMix64, when: &str) {
    let eps = env.endpoints(rng);
    let (source, seen) = if rng.next_u64().is_multiple_of(2) {
        ("a read-only transaction", env.balances(&eps[0]).map(|b| (b.len(), b.iter().sum::<u64>())))
    } else {
        let r = env.http.get(&eps[0], "/kv?prefix=acct/&consistency=stale");
        ("the node's own state", r.ok().filter(|r| r.status == 200).and_then(|r| listed_total(&r.json())))
    };
    // A node that has not applied the accounts' creation yet (it is
    // catching up) has none; the accounts were created in one transaction,
    // so any other count than 0 or all is a violation too.
    let Some((n, total)) = seen.filter(|&(n, _)| n > 0) else { return };
    let mut stats = env.stats.lock().unwrap();
    stats.audits += 1;
    if n as u64 != ACCOUNTS || total != ACCOUNTS * START_BALANCE {
        stats.violations.push(format!("{when}: {source} at {} saw {n} accounts totalling {total}", eps[0]));
    }
}

/// Audits the accounts every 100 ms until the run stops.
pub fn auditor(env: &Env, seed: u64) {
    let mut rng = SplitMix64(seed);
    while !env.stopped() {
        audit(env, &mut rng, "during the faults");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After healing: the counter against the acknowledged increments, and
/// the accounts on every member. Returns (pass, summary lines).
pub fn final_check(env: &Env, addrs: &[String]) -> (bool, String) {
    let mut s = String::new();
    let mut pass = true;
    let stats = env.stats.lock().unwrap();
    let counter = addrs.iter().find_map(|a| {
        let r = env.http.get(a, &format!("/kv/{COUNTER_KEY}")).ok()?;
        match r.status {
            200 => r.json()["value"].as_str()?.parse::<u64>().ok(),
            404 => Some(0),
            _ => None,
        }
    });
    let unknown = stats.counter_unknown.len() as u64;
    let exact = match counter {
        Some(v) if unknown == 0 && v == stats.counter_acked => "exactly the acknowledged increments",
        Some(v) if unknown > 0 && (stats.counter_acked..=stats.counter_acked + unknown).contains(&v) => {
            "within the acknowledged + unknown increments (not exact: some outcomes stayed unknown)"
        }
        _ => {
            pass = false;
            "WRONG"
        }
    };
    let _ = writeln!(
        s,
        "counter (CAS loops in sessions): {} acknowledged, {} conflicts retried, {} unknown; final value {} — {exact}",
        stats.counter_acked,
        stats.counter_conflicts,
        unknown,
        counter.map_or("unreadable".to_string(), |v| v.to_string()),
    );
    for u in stats.counter_unknown.iter().take(3) {
        let _ = writeln!(s, "  unknown increment: {u}");
    }
    drop(stats);
    let mut rng = SplitMix64(7);
    let audits_before = env.stats.lock().unwrap().audits;
    for a in addrs {
        let one = Mutex::new(vec![(0u64, a.clone())]);
        let env_one = Env { http: env.http, members: &one, stop: env.stop, stats: env.stats };
        audit(&env_one, &mut rng, "after healing");
        audit(&env_one, &mut rng, "after healing");
    }
    let stats = env.stats.lock().unwrap();
    if stats.audits == audits_before {
        pass = false;
        let _ = writeln!(s, "bank: no member answered an audit after healing");
    }
    if !stats.violations.is_empty() {
        pass = false;
    }
    let _ = writeln!(
        s,
        "bank (transactions in sessions): {} transfers, {} conflicts retried, {} unknown; {} audits, {} with a wrong total",
        stats.transfers,
        stats.transfer_conflicts,
        stats.transfer_unknown.len(),
        stats.audits,
        stats.violations.len()
    );
    for v in stats.violations.iter().take(5) {
        let _ = writeln!(s, "  VIOLATION {v}");
    }
    let (granted, keys, revoked) = (stats.leases_granted, stats.leased_keys, stats.leases_revoked);
    drop(stats);
    // Every lease was revoked or left to run out (2 s after its last
    // keepalive): once healed, no member may still hold a leased key.
    let left = |a: &String| -> Option<usize> {
        let r = env.http.get(a, &format!("/kv?prefix={LEASE_PREFIX}&consistency=stale")).ok()?;
        (r.status == 200).then(|| r.json()["items"].as_array().map_or(0, Vec::len))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut remaining: Vec<Option<usize>> = addrs.iter().map(left).collect();
    while remaining.iter().any(|n| *n != Some(0)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        remaining = addrs.iter().map(left).collect();
    }
    let ended = remaining.iter().all(|n| *n == Some(0));
    pass &= ended && granted > 0;
    let _ = writeln!(
        s,
        "leases: {granted} granted, {keys} keys put under them, {revoked} revoked, the rest left to expire; after \
         healing {}",
        if ended {
            "every member has deleted every leased key".to_string()
        } else {
            format!("LEASED KEYS LEFT: {remaining:?}")
        }
    );
    (pass, s)
}

pub const LEASE_PREFIX: &str = "lease/";

/// Grants short leases, puts a key under each, renews some a few times,
/// revokes half and lets the others run out — under the faults.
pub fn lease_client(env: &Env, seed: u64) {
    let mut rng = SplitMix64(seed);
    let mut n = 0u64;
    let pause = || std::thread::sleep(Duration::from_millis(50));
    while !env.stopped() {
        n += 1;
        let eps = env.endpoints(&mut rng);
        let r = env.http.request(&eps[0], "POST", "/leases", Some(br#"{"ttl_seconds": 2}"#));
        let Some(id) = r.ok().filter(|r| r.status == 200).and_then(|r| r.json()["id"].as_u64()) else {
            pause();
            continue;
        };
        env.stats.lock().unwrap().leases_granted += 1;
        let body = json!({"value": n.to_string(), "lease": id});
        if env.http.put_json(&eps[0], &format!("/kv/{LEASE_PREFIX}{seed}-{n}"), &body).is_ok_and(|r| r.status == 200) {
            env.stats.lock().unwrap().leased_keys += 1;
        }
        for _ in 0..rng.next_u64() % 4 {
            std::thread::sleep(Duration::from_millis(400));
            let _ = env.http.request(&env.endpoints(&mut rng)[0], "POST", &format!("/leases/{id}/keepalive"), None);
        }
        if rng.next_u64().is_multiple_of(2)
            && env.http.delete(&eps[0], &format!("/leases/{id}")).is_ok_and(|r| r.status == 200)
        {
            env.stats.lock().unwrap().leases_revoked += 1;
        }
    }
}
