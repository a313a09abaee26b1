//! One chaos run: start a cluster, let clients work while the nemesis
//! injects faults, heal, read everything back, check the history.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::checker::{self, Action, HistoryOp, Verdict};
use super::cluster::{ChaosCluster, remove_stale_rules};
use super::watchers;
use super::workloads::{self, Env, Stats};
use raftkv::client::{ClientError, HttpClient};
use raftkv::raft::SplitMix64;

/// The faults the nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 a random node, restart it when the fault ends.
    Kill,
    /// kill -9 the leader.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT when the fault ends.
    Pause,
    /// SIGSTOP the leader.
    PauseLeader,
    /// Cut the leader off from everyone (a minority of one).
    PartitionLeader,
    /// Split the cluster into a majority and a minority at random.
    PartitionHalves,
    /// Drop traffic in one direction only on one or two links.
    OneWay,
    /// Two sides that cannot talk, and one node that talks to both.
    Bridge,
    /// A partition and a crash, pause, leadership transfer or replacement at the same time.
    Combined,
    /// Hand leadership to a random voter (`POST /cluster/leader/transfer`).
    Transfer,
    /// Replace a random member, the leader too: a new node joins with
    /// `--join`, is promoted, and the old one is removed and stopped.
    Replace,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::Pause,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::PartitionHalves,
        Fault::OneWay,
        Fault::Bridge,
        Fault::Combined,
        Fault::Transfer,
        Fault::Replace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::OneWay => "one-way",
            Fault::Bridge => "bridge",
            Fault::Combined => "combined",
            Fault::Transfer => "transfer",
            Fault::Replace => "replace",
        }
    }

    fn needs_iptables(self) -> bool {
        matches!(
            self,
            Fault::PartitionLeader | Fault::PartitionHalves | Fault::OneWay | Fault::Bridge | Fault::Combined
        )
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::ALL
            .iter()
            .copied()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown fault '{s}' (known: {})", Fault::ALL.map(|f| f.name()).join(", ")))
    }
}

/// Parses `all`, `partitions`, `crashes` or a comma-separated list of faults.
pub fn parse_faults(spec: &str) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match part {
            "all" => out.extend(Fault::ALL),
            "partitions" => out.extend([Fault::PartitionLeader, Fault::PartitionHalves, Fault::OneWay, Fault::Bridge]),
            "crashes" => out.extend([Fault::Kill, Fault::KillLeader]),
            "pauses" => out.extend([Fault::Pause, Fault::PauseLeader]),
            "membership" => out.extend([Fault::Transfer, Fault::Replace]),
            "none" => {}
            f => out.push(f.parse()?),
        }
    }
    out.dedup();
    Ok(out)
}

/// A deliberate bug, to show that the checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The clients ask for local (stale) reads and record them as
    /// linearizable: the history then holds exactly what a node that
    /// served linearizable reads without ReadIndex would produce.
    LocalReads,
}

impl FromStr for PlantedBug {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local-reads" => Ok(PlantedBug::LocalReads),
            other => Err(format!("unknown planted bug '{other}' (known: local-reads)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub binary: PathBuf,
    pub nodes: u64,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    pub seed: u64,
    pub clients: usize,
    pub keys: usize,
    pub out_dir: PathBuf,
    /// Test the tester with a deliberate bug (see `--unsafe-planted-bug`).
    pub planted_bug: Option<PlantedBug>,
    /// Time budget of the linearizability search, per key.
    pub check_budget: Duration,
    pub extra_node_args: Vec<String>,
    /// Half of the reads use `?consistency=lease` instead of ReadIndex.
    pub lease_reads: bool,
    /// TLS on every connection (mutual between members) and client tokens.
    pub tls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done, with the effect recorded.
    Ok,
    /// Definitely had no effect (412, 503, refused connection, failed read).
    Fail,
    /// May or may not have had an effect (timeout, 504, connection lost).
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    pub id: usize,
    pub client: usize,
    pub node: u64,
    pub key: String,
    pub kind: &'static str,
    pub value: Option<String>,
    pub expect: Option<String>,
    /// Reads: the value seen (`null` inside: key absent).
    pub read: Option<Option<String>>,
    pub invoke_us: u64,
    pub complete_us: Option<u64>,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub fault: &'static str,
    pub detail: String,
    pub start_us: u64,
    pub end_us: u64,
    pub majority_connected: bool,
}

#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    pub pass: bool,
    pub summary: String,
    pub verdicts: BTreeMap<String, Verdict>,
    pub ops: usize,
    /// Snapshot activity in the node logs: (taken, sent, installed).
    pub snapshots: (usize, usize, usize),
    /// Acknowledged counter increments and bank transfers.
    pub workloads: (u64, u64),
}

/// Counts snapshot lines in the node logs of a run: taken, sent, installed.
fn snapshot_activity(dir: &std::path::Path, nodes: u64) -> (usize, usize, usize) {
    // Nodes that joined later (Replace) have the ids after the first `nodes`.
    let logs: Vec<String> =
        (1..=nodes + 250).map_while(|id| fs::read_to_string(dir.join(format!("node{id}.log"))).ok()).collect();
    let count = |pat: &str| logs.iter().map(|l| l.matches(pat).count()).sum();
    (count(" took snapshot at "), count(": snapshot sent: "), count(" installs snapshot at "))
}

static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct Shared {
    start: Instant,
    history: Mutex<Vec<OpRecord>>,
    stop: AtomicBool,
    /// Times (µs) when a majority was not connected: (from, to).
    degraded: Mutex<Vec<(u64, u64)>>,
    /// The members clients talk to, as (id, address); changed by `Replace`.
    members: Mutex<Vec<(u64, String)>>,
    /// How clients reach the nodes (TLS and a token when on).
    http: HttpClient,
    /// The counter and bank workloads' tallies.
    stats: Mutex<Stats>,
}

impl Shared {
    fn env(&self) -> Env<'_> {
        Env { http: &self.http, members: &self.members, stop: &self.stop, stats: &self.stats }
    }
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn url_key(key: &str) -> String {
    format!("/kv/{key}")
}

/// Classifies one HTTP exchange of a client operation.
fn classify(
    res: &Result<raftkv::client::Response, ClientError>,
    is_read: bool,
) -> (Outcome, Option<serde_json::Value>, String) {
    match res {
        Ok(r) => {
            let body = r.json();
            let detail = format!("{} {}", r.status, body["code"].as_str().unwrap_or(""));
            match r.status {
                200 => (Outcome::Ok, Some(body), detail),
                404 if is_read => (Outcome::Ok, Some(serde_json::Value::Null), detail),
                412 if !is_read => (Outcome::Fail, None, detail),
                // 503 promises the request was not carried out.
                503 => (Outcome::Fail, None, detail),
                504 if is_read => (Outcome::Fail, None, detail),
                504 => (Outcome::Unknown, None, detail),
                // Anything else is a bug in the client or the server.
                _ => {
                    let o = if is_read { Outcome::Fail } else { Outcome::Unknown };
                    (o, None, format!("unexpected: {detail} {}", r.text()))
                }
            }
        }
        Err(e) if is_read || !e.was_sent() => (Outcome::Fail, None, e.to_string()),
        Err(e) => (Outcome::Unknown, None, e.to_string()),
    }
}

fn client_loop(id: usize, cfg: &ChaosConfig, shared: &Shared, seed: u64) {
    let mut rng = SplitMix64(seed);
    let http = shared.http.clone();
    let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let (node, addr) = {
            let members = shared.members.lock().unwrap();
            members[(rng.next_u64() % members.len() as u64) as usize].clone()
        };
        let addr = &addr;
        let key = format!("key{}", rng.next_u64() % cfg.keys as u64);
        let roll = rng.next_u64() % 100;
        let invoke = shared.now();
        let mut rec = OpRecord {
            id: 0,
            client: id,
            node,
            key: key.clone(),
            kind: "read",
            value: None,
            expect: None,
            read: None,
            invoke_us: invoke,
            complete_us: None,
            outcome: Outcome::Fail,
            detail: String::new(),
        };
        let (outcome, body, detail) = if roll < 45 {
            let lease = cfg.lease_reads && rng.next_u64().is_multiple_of(2);
            if lease {
                rec.kind = "lease-read";
            }
            let path = if lease {
                format!("{}?consistency=lease", url_key(&key))
            } else if cfg.planted_bug == Some(PlantedBug::LocalReads) {
                format!("{}?consistency=stale", url_key(&key))
            } else {
                url_key(&key)
            };
            let res = http.get(addr, &path);
            classify(&res, true)
        } else if roll < 85 || !last_seen.contains_key(&key) {
            let v = format!("c{id}-{n}");
            rec.kind = "write";
            rec.value = Some(v.clone());
            let res = http.put_json(addr, &url_key(&key), &json!({"value": v}));
            classify(&res, false)
        } else {
            let v = format!("c{id}-{n}");
            let expect = last_seen[&key].clone();
            rec.kind = "cas";
            rec.value = Some(v.clone());
            rec.expect = Some(expect.clone());
            let res = http.put_json(addr, &url_key(&key), &json!({"value": v, "if_value": expect}));
            classify(&res, false)
        };
        let complete = shared.now();
        rec.outcome = outcome;
        rec.detail = detail;
        if outcome != Outcome::Unknown {
            rec.complete_us = Some(complete);
        }
        if outcome == Outcome::Ok {
            match rec.kind {
                "read" | "lease-read" => {
                    let seen = body.and_then(|b| b["value"].as_str().map(str::to_string));
                    if let Some(v) = &seen {
                        last_seen.insert(key.clone(), v.clone());
                    }
                    rec.read = Some(seen);
                }
                _ => {
                    last_seen.insert(key.clone(), rec.value.clone().unwrap());
                }
            }
        }
        shared.history.lock().unwrap().push(rec);
    }
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

/// Applies one fault; returns a description.
fn inject(c: &mut ChaosCluster, fault: Fault, rng: &mut SplitMix64) -> String {
    let ids = c.ids();
    let leader = c.leader();
    let any = |rng: &mut SplitMix64| pick(rng, &ids);
    match fault {
        Fault::Kill | Fault::KillLeader => {
            let v = if fault == Fault::KillLeader { leader.unwrap_or_else(|| any(rng)) } else { any(rng) };
            c.kill(v);
            format!("kill -9 node {v}")
        }
        Fault::Pause | Fault::PauseLeader => {
            let v = if fault == Fault::PauseLeader { leader.unwrap_or_else(|| any(rng)) } else { any(rng) };
            c.pause(v);
            format!("SIGSTOP node {v}")
        }
        Fault::PartitionLeader => {
            let l = leader.unwrap_or_else(|| any(rng));
            for &o in &ids {
                c.block_both(l, o);
            }
            format!("isolate leader {l}")
        }
        Fault::PartitionHalves => {
            let mut order = ids.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let (minority, majority) = order.split_at(order.len() / 2);
            for &a in minority {
                for &b in majority {
                    c.block_both(a, b);
                }
            }
            format!("split {minority:?} | {majority:?}")
        }
        Fault::OneWay => {
            let mut links = Vec::new();
            for _ in 0..1 + rng.next_u64() % 2 {
                let (a, b) = (any(rng), any(rng));
                if a != b {
                    c.block(a, b);
                    links.push(format!("{a}->{b}"));
                }
            }
            format!("drop {}", links.join(", "))
        }
        Fault::Bridge => {
            let mut order = ids.clone();
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let bridge = order[0];
            let rest = &order[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            for &a in left {
                for &b in right {
                    c.block_both(a, b);
                }
            }
            format!("bridge {bridge} between {left:?} and {right:?}")
        }
        Fault::Combined => {
            let first = inject(c, pick(rng, &[Fault::PartitionLeader, Fault::PartitionHalves, Fault::OneWay]), rng);
            let second = inject(c, pick(rng, &[Fault::Kill, Fault::Pause, Fault::Transfer, Fault::Replace]), rng);
            format!("{first} + {second}")
        }
        Fault::Transfer => {
            let via = any(rng);
            let to = any(rng);
            let http = c.client(Duration::from_secs(3));
            let body = json!({"to": to}).to_string();
            let answer = match http.request(&c.addr(via), "POST", "/cluster/leader/transfer", Some(body.as_bytes())) {
                Ok(r) => format!("{} {}", r.status, r.json()["code"].as_str().unwrap_or("")),
                Err(e) => e.to_string(),
            };
            format!("transfer leadership to {to} via {via}: {answer}")
        }
        Fault::Replace => replace(c, rng),
    }
}

/// Sends a membership request to live members in turn until one answers
/// 2xx, one answers something not worth retrying, or `patience` passes.
fn member_request(c: &ChaosCluster, method: &str, path: &str, body: Option<&str>, patience: Duration) -> String {
    let http = c.client(Duration::from_secs(3));
    let until = Instant::now() + patience;
    let mut last = String::from("no member answered");
    for round in 0.. {
        let ids = c.ids();
        let via = ids[round % ids.len()];
        match http.request(&c.addr(via), method, path, body.map(str::as_bytes)) {
            Ok(r) if (200..300).contains(&r.status) => return "ok".into(),
            Ok(r) => {
                let code = r.json()["code"].as_str().unwrap_or("").to_string();
                last = format!("{} {code}", r.status);
                // A joining node not added yet, a learner catching up, a
                // change or leader in flux: retry. Anything else: give up.
                if !matches!(code.as_str(), "unknown_member" | "learner_behind" | "change_in_progress" | "not_ready")
                    && r.status != 503
                    && r.status != 504
                {
                    return last;
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// Replaces a random member: a new node joins as a learner, is promoted,
/// then the old one is removed and stopped (the order an operator follows
/// so the cluster never has fewer voters than before). Under faults any
/// step may not get through; the cluster must stay correct either way.
fn replace(c: &mut ChaosCluster, rng: &mut SplitMix64) -> String {
    let ids = c.ids();
    let old = pick(rng, &ids);
    let via = pick(rng, &ids);
    let new = match c.add_joining(via) {
        Ok(id) => id,
        Err(e) => return format!("replace {old}: could not start a new node: {e}"),
    };
    let promote = member_request(c, "POST", &format!("/cluster/members/{new}/promote"), None, Duration::from_secs(15));
    if promote != "ok" {
        return format!("replace {old} by {new}: promote: {promote}");
    }
    let remove = member_request(c, "DELETE", &format!("/cluster/members/{old}"), None, Duration::from_secs(10));
    if remove == "ok" {
        c.retire(old);
    }
    format!("replace {old} by {new} (joined via {via}): promoted; remove {old}: {remove}")
}

fn nemesis(cluster: &Mutex<ChaosCluster>, cfg: &ChaosConfig, shared: &Shared, end: Instant) -> Vec<FaultRecord> {
    let mut rng = SplitMix64(cfg.seed ^ 0x5eed);
    let mut faults = Vec::new();
    if cfg.faults.is_empty() {
        return faults;
    }
    // A fault schedule is real time by nature: calm, fault, heal, repeat.
    std::thread::sleep(Duration::from_millis(1000));
    while Instant::now() + Duration::from_secs(2) < end {
        let fault = pick(&mut rng, &cfg.faults);
        let hold = Duration::from_millis(1000 + rng.next_u64() % 3000);
        let (detail, majority, start) = {
            let mut c = cluster.lock().unwrap();
            let start = shared.now();
            let detail = inject(&mut c, fault, &mut rng);
            *shared.members.lock().unwrap() = c.ids().iter().map(|&id| (id, c.addr(id))).collect();
            (detail, c.majority_connected(), start)
        };
        std::thread::sleep(hold.min(end.saturating_duration_since(Instant::now())));
        let end_us = {
            let mut c = cluster.lock().unwrap();
            if let Err(e) = c.heal_all() {
                eprintln!("nemesis: could not restart a node: {e}");
            }
            shared.now()
        };
        if !majority {
            shared.degraded.lock().unwrap().push((start, end_us));
        }
        faults.push(FaultRecord { fault: fault.name(), detail, start_us: start, end_us, majority_connected: majority });
        std::thread::sleep(
            Duration::from_millis(500 + rng.next_u64() % 1500).min(end.saturating_duration_since(Instant::now())),
        );
    }
    faults
}

/// A removal whose answer was lost may have committed after all, and a
/// node whose join never got through is no member: once healed, the
/// leader's configuration says who is a member; the others are retired.
/// The leader's commit index once the healed cluster has one.
fn final_revision(c: &ChaosCluster, http: &HttpClient) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(l) = c.leader()
            && let Ok(r) = http.get(&c.addr(l), "/status")
            && r.status == 200
            && let Some(i) = r.json()["commit_index"].as_u64()
        {
            return i;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    0
}

/// The watched keys as one linearizable list on the leader reads them, and
/// the revision it was read at (keys missing from it: None).
fn final_state(c: &ChaosCluster, http: &HttpClient, keys: usize) -> (u64, BTreeMap<String, Option<String>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(l) = c.leader()
            && let Ok(r) = http.get(&c.addr(l), &format!("/kv?prefix={}", watchers::PREFIX))
            && r.status == 200
        {
            let v = r.json();
            let mut finals: BTreeMap<String, Option<String>> = (0..keys).map(|k| (format!("key{k}"), None)).collect();
            for item in v["items"].as_array().into_iter().flatten() {
                if let (Some(k), Some(val)) = (item["key"].as_str(), item["value"].as_str())
                    && let Some(slot) = finals.get_mut(k)
                {
                    *slot = Some(val.to_string());
                }
            }
            return (v["revision"].as_u64().unwrap_or(0), finals);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (0, BTreeMap::new())
}

fn reconcile_members(c: &mut ChaosCluster) {
    let http = c.client(Duration::from_secs(2));
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        for id in c.ids() {
            let Ok(r) = http.get(&c.addr(id), "/cluster/members") else { continue };
            let v = r.json();
            if r.status != 200 || v["leader"] != v["node"] || v["config_committed"] != true {
                continue;
            }
            let members: Vec<u64> =
                v["members"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_u64()).collect();
            for other in c.ids() {
                if !members.contains(&other) {
                    c.retire(other);
                }
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Turns a key's records into the checker's history.
fn history_of(records: &[&OpRecord]) -> Vec<HistoryOp> {
    records
        .iter()
        .filter(|r| r.outcome != Outcome::Fail)
        .map(|r| HistoryOp {
            id: r.id,
            call: r.invoke_us,
            ret: r.complete_us,
            action: match r.kind {
                "read" | "lease-read" => Action::Read(r.read.clone().flatten()),
                "write" => Action::Write(r.value.clone().unwrap()),
                _ => Action::Cas { expect: r.expect.clone().unwrap(), new: r.value.clone().unwrap() },
            },
        })
        .collect()
}

fn fmt_op(r: &OpRecord) -> String {
    let what = match r.kind {
        "read" | "lease-read" => format!(
            "read -> {}",
            r.read.as_ref().map_or("?".into(), |v| v.clone().unwrap_or_else(|| "(absent)".into()))
        ),
        "write" => format!("write {}", r.value.as_deref().unwrap_or("")),
        _ => format!("cas {} -> {}", r.expect.as_deref().unwrap_or(""), r.value.as_deref().unwrap_or("")),
    };
    let done = r.complete_us.map_or("   (unknown)".to_string(), |c| format!("{:>12.3}", c as f64 / 1e3));
    format!(
        "  op {:>6}  client {:>2}  node {}  {:>12.3} .. {done} ms  {:?}  {what}",
        r.id,
        r.client,
        r.node,
        r.invoke_us as f64 / 1e3,
        r.outcome
    )
}

/// Runs one chaos test and writes its history, faults, logs and summary to
/// `cfg.out_dir`.
pub fn run(cfg: &ChaosConfig) -> Result<Report, String> {
    if cfg.faults.iter().any(|f| f.needs_iptables()) {
        let ok = std::process::Command::new("iptables").arg("-S").output().is_ok_and(|o| o.status.success());
        if !ok {
            return Err("partition faults need iptables and root (scripts/install-deps.sh test installs it)".into());
        }
        remove_stale_rules("raftkv-chaos-");
    }
    if cfg.nodes < 3 || cfg.nodes > 9 {
        return Err("--nodes must be between 3 and 9".into());
    }
    fs::create_dir_all(&cfg.out_dir).map_err(|e| format!("{}: {e}", cfg.out_dir.display()))?;
    // A /24 of its own: by process, and by run within the process (the
    // black-box tests' clusters use 127.x.1-250.0).
    let pid = std::process::id();
    let run_no = RUNS.fetch_add(1, Ordering::Relaxed);
    let net = (20 + (pid % 200) as u8, 251 + (run_no % 5) as u8);
    // The watchers follow from revision 1: a window that holds the whole run.
    let mut args: Vec<String> =
        ["--request-timeout-ms", "1500", "--log", "info", "--watch-history-revisions", "100000000"]
            .into_iter()
            .chain(["--watch-history-bytes", "4294967296"])
            .map(String::from)
            .collect();
    args.extend(cfg.extra_node_args.iter().cloned());
    let mut cluster = ChaosCluster::new(&cfg.binary, cfg.nodes, &cfg.out_dir, net, args).map_err(|e| e.to_string())?;
    if cfg.tls {
        cluster.enable_tls(&cfg.out_dir)?;
    }
    for id in cluster.ids() {
        cluster.start(id).map_err(|e| format!("starting node {id}: {e}"))?;
    }
    if !cluster.wait_ready(Duration::from_secs(20)) {
        return Err(format!("the cluster did not become ready; logs in {}", cfg.out_dir.display()));
    }
    let addrs: Vec<(u64, String)> = cluster.ids().iter().map(|&id| (id, cluster.addr(id))).collect();
    let http = cluster.client(Duration::from_secs(3));
    let leader = cluster.leader().ok_or("no leader after start-up")?;
    workloads::open_accounts(&http, &cluster.addr(leader))?;
    let cluster = Mutex::new(cluster);
    let shared = Shared {
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        degraded: Mutex::new(Vec::new()),
        members: Mutex::new(addrs),
        http,
        stats: Mutex::new(Stats::default()),
    };
    let end = Instant::now() + cfg.duration;
    // Set once healed: the revision every watcher must reach.
    let watch_target = std::sync::atomic::AtomicU64::new(0);
    let give_up = end + Duration::from_secs(120);
    let (faults, watched) = std::thread::scope(|s| {
        let mut clients = Vec::new();
        for c in 0..cfg.clients {
            let shared = &shared;
            let seed = cfg.seed.wrapping_mul(31).wrapping_add(c as u64 + 1);
            clients.push(s.spawn(move || client_loop(c, cfg, shared, seed)));
        }
        let seed = cfg.seed.wrapping_mul(131);
        let shared = &shared;
        for w in 0..2 {
            clients.push(s.spawn(move || workloads::counter_client(&shared.env(), seed + w)));
            clients.push(s.spawn(move || workloads::bank_client(&shared.env(), seed + 10 + w)));
        }
        clients.push(s.spawn(move || workloads::auditor(&shared.env(), seed + 20)));
        clients.push(s.spawn(move || workloads::lease_client(&shared.env(), seed + 40)));
        let target = &watch_target;
        let watchers: Vec<_> =
            (0..3).map(|w| s.spawn(move || watchers::watcher(&shared.env(), seed + 30 + w, target, give_up))).collect();
        let faults = nemesis(&cluster, cfg, shared, end);
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        // Heal before the clients stop: a session write in flight then gets
        // its answer instead of running out of patience.
        let healed = cluster.lock().unwrap().heal_all().map_err(|e| e.to_string());
        shared.stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        // Every write is done: the watchers follow up to what is committed.
        let target = final_revision(&cluster.lock().unwrap(), &shared.http);
        watch_target.store(target.max(1), Ordering::SeqCst);
        let watched: Vec<watchers::Watched> = watchers.into_iter().map(|w| w.join().unwrap_or_default()).collect();
        ((faults, healed), (target, watched))
    });
    let (faults, healed) = faults;
    healed?;

    // Heal everything and read every key back through every node.
    let mut c = cluster.into_inner().unwrap();
    c.heal_all().map_err(|e| e.to_string())?;
    reconcile_members(&mut c);
    let ready = c.wait_ready(Duration::from_secs(30));
    let http = c.client(Duration::from_secs(3));
    let mut final_reads_ok = ready;
    for k in 0..cfg.keys {
        let key = format!("key{k}");
        for id in c.ids() {
            let mut done = false;
            for _ in 0..50 {
                let invoke = shared.now();
                let res = http.get(&c.addr(id), &url_key(&key));
                let (outcome, body, detail) = classify(&res, true);
                if outcome == Outcome::Ok {
                    let complete = shared.now();
                    let seen = body.and_then(|b| b["value"].as_str().map(str::to_string));
                    shared.history.lock().unwrap().push(OpRecord {
                        id: 0,
                        client: usize::MAX,
                        node: id,
                        key: key.clone(),
                        kind: "read",
                        value: None,
                        expect: None,
                        read: Some(seen),
                        invoke_us: invoke,
                        complete_us: Some(complete),
                        outcome,
                        detail,
                    });
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            final_reads_ok &= done;
        }
    }
    let member_addrs: Vec<String> = c.ids().iter().map(|&id| c.addr(id)).collect();
    let (workloads_ok, workloads_summary) = workloads::final_check(&shared.env(), &member_addrs);
    // The whole history of the watched keys, read once more now that all
    // is quiet, against what each watcher saw during the faults.
    let (watch_target, watched) = watched;
    // A write whose client gave up (504) may still commit after the
    // clients stopped — a request that sat in a partitioned socket, or an
    // entry a leader appended and commits once healed. So the history is
    // replayed against one linearizable list taken now, up to its revision.
    let (final_revision, finals) = final_state(&c, &http, cfg.keys);
    let truth = watchers::watcher(
        &shared.env(),
        cfg.seed ^ 0x5eed,
        &std::sync::atomic::AtomicU64::new(final_revision.max(watch_target).max(1)),
        Instant::now() + Duration::from_secs(60),
    );
    let below = |c: &[watchers::Change], r: u64| c.iter().filter(|c| c.0 <= r).cloned().collect::<Vec<_>>();
    let watched: Vec<watchers::Watched> =
        watched.into_iter().map(|w| watchers::Watched { changes: below(&w.changes, watch_target), ..w }).collect();
    let truth_changes = below(&truth.changes, final_revision.max(watch_target));
    let (mut watch_ok, mut watch_summary) =
        watchers::check(&truth_changes, watch_target, final_revision, &watched, &finals);
    for g in &truth.gaps {
        watch_ok = false;
        let _ = writeln!(watch_summary, "  the whole history could not be read: {g}");
    }
    let workload_counts = {
        let st = shared.stats.lock().unwrap();
        (st.counter_acked, st.transfers)
    };
    drop(c);

    let mut history = shared.history.into_inner().unwrap();
    history.sort_by_key(|r| r.invoke_us);
    for (i, r) in history.iter_mut().enumerate() {
        r.id = i;
    }
    let degraded = shared.degraded.into_inner().unwrap();

    // Check each key.
    let mut verdicts = BTreeMap::new();
    for k in 0..cfg.keys {
        let key = format!("key{k}");
        let records: Vec<&OpRecord> = history.iter().filter(|r| r.key == key).collect();
        verdicts.insert(key, checker::check(&history_of(&records), cfg.check_budget));
    }

    // Files.
    let mut lines = String::new();
    for r in &history {
        lines.push_str(&serde_json::to_string(r).unwrap());
        lines.push('\n');
    }
    fs::write(cfg.out_dir.join("history.jsonl"), lines).map_err(|e| e.to_string())?;
    let fl: String = faults.iter().map(|f| serde_json::to_string(f).unwrap() + "\n").collect();
    fs::write(cfg.out_dir.join("faults.jsonl"), fl).map_err(|e| e.to_string())?;

    // Summary.
    let count = |kind: Option<&str>, o: Outcome| {
        history.iter().filter(|r| kind.is_none_or(|k| r.kind == k) && r.outcome == o).count()
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "chaos run: {} nodes, {:?}, seed {}, {} clients on {} keys, faults [{}]{}{}",
        cfg.nodes,
        cfg.duration,
        cfg.seed,
        cfg.clients,
        cfg.keys,
        cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        cfg.planted_bug.map_or(String::new(), |b| format!(", PLANTED BUG {b:?}")),
        if cfg.lease_reads { ", half the reads under the leader lease" } else { "" }
    );
    let _ = writeln!(s, "operations: {} total", history.len());
    for kind in ["read", "lease-read", "write", "cas"] {
        let _ = writeln!(
            s,
            "  {kind:<10} ok {:>6}  failed {:>6}  unknown {:>6}",
            count(Some(kind), Outcome::Ok),
            count(Some(kind), Outcome::Fail),
            count(Some(kind), Outcome::Unknown)
        );
    }
    let unexpected = history.iter().filter(|r| r.detail.starts_with("unexpected")).count();
    let during_majority: Vec<&OpRecord> = history
        .iter()
        .filter(|r| r.client != usize::MAX && !degraded.iter().any(|&(a, b)| r.invoke_us >= a && r.invoke_us <= b))
        .collect();
    let avail_ok = during_majority.iter().filter(|r| r.outcome == Outcome::Ok).count();
    let _ = writeln!(
        s,
        "availability while a majority was connected: {avail_ok}/{} = {:.1}% of operations succeeded",
        during_majority.len(),
        100.0 * avail_ok as f64 / during_majority.len().max(1) as f64
    );
    let mut by_fault: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &faults {
        *by_fault.entry(f.fault).or_default() += 1;
    }
    let _ = writeln!(
        s,
        "faults injected: {} ({})",
        faults.len(),
        by_fault.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        s,
        "final reads after healing: {}",
        if final_reads_ok { "every key read from every node" } else { "FAILED" }
    );
    let snapshots = snapshot_activity(&cfg.out_dir, cfg.nodes);
    let _ = writeln!(
        s,
        "snapshots: {} taken, {} streamed to followers, {} installed by followers",
        snapshots.0, snapshots.1, snapshots.2
    );
    s.push_str(&workloads_summary);
    s.push_str(&watch_summary);
    let mut pass = final_reads_ok && unexpected == 0 && workloads_ok && watch_ok;
    if unexpected > 0 {
        let _ =
            writeln!(s, "unexpected responses: {unexpected} (see history.jsonl, detail starting with 'unexpected')");
    }
    for (key, v) in &verdicts {
        match v {
            Verdict::Linearizable => {
                let _ = writeln!(s, "{key}: linearizable");
            }
            Verdict::Unknown => {
                let _ = writeln!(s, "{key}: unknown (checker out of time after {:?})", cfg.check_budget);
            }
            Verdict::Violation { witness, window } => {
                pass = false;
                let _ = writeln!(s, "{key}: NOT LINEARIZABLE — no order of these operations explains op {witness}:");
                for id in window {
                    let _ = writeln!(s, "{}", fmt_op(&history[*id]));
                }
            }
        }
    }
    let _ = writeln!(s, "verdict: {}", if pass { "PASS" } else { "FAIL" });
    let _ = writeln!(s, "history, faults and node logs: {}", cfg.out_dir.display());
    fs::write(cfg.out_dir.join("summary.txt"), &s).map_err(|e| e.to_string())?;
    Ok(Report {
        dir: cfg.out_dir.clone(),
        pass,
        summary: s,
        verdicts,
        ops: history.len(),
        snapshots,
        workloads: workload_counts,
    })
}
