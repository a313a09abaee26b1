//! `raftkv-bench` (`make bench`): raftkv and etcd side by side on this
//! machine, driven by the same `wrk` load, plus a ceiling (one actix-web
//! process over a HashMap, no replication, no fsync) and the time from
//! `kill -9` of the leader to the first acknowledged write. A second
//! raftkv cluster with TLS (mutual between members) and client tokens runs
//! the same loads, so the cost of security is a ratio of one run.
//!
//! Both clusters are 3 members on loopback with their default durability
//! (every acknowledged write fsynced on a majority); the load goes to each
//! system's leader. 100-byte values on 10,000 random keys.
//! `BENCH_QUICK=1` (or `--quick`) runs short.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use raftkv::auth::{self, Role};
use raftkv::client::HttpClient;
use raftkv_tools::process::{Proc, wait_until};
use raftkv_tools::watchers::{self, b64};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "raftkv-bench", about = "raftkv vs etcd on this machine, side by side")]
struct Args {
    /// Short runs (also BENCH_QUICK=1).
    #[arg(long, env = "BENCH_QUICK", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    quick: bool,
    /// Seconds per wrk run (default 10, quick 3).
    #[arg(long)]
    seconds: Option<u64>,
    /// Leader kills for the recovery measurement (default 5, quick 3).
    #[arg(long)]
    kills: Option<usize>,
    /// Markdown file the results are appended to ("-": none).
    #[arg(long, default_value = "BENCHMARKS.md")]
    report: PathBuf,
    /// Leave etcd out (if it cannot be installed).
    #[arg(long)]
    no_etcd: bool,
    /// Only raftkv (no etcd, no ceiling, no TLS cluster): for A/B runs of raftkv settings.
    #[arg(long)]
    only_raftkv: bool,
    /// Leave out the raftkv cluster with TLS and tokens.
    #[arg(long)]
    no_tls: bool,
    /// Extra flags for every raftkv node, e.g. "--max-inflight 1".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    raftkv_args: String,
    /// raftkv nodes listen on base+1..3, with TLS on base+11..13, the ceiling on base+100.
    #[arg(long, default_value_t = 18000)]
    port_base: u16,
    /// Repeat every load this many times, the systems in alternating
    /// order; the report shows the median round and every round's ratio.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only the loads at these connection counts, e.g. "64" (default: all).
    #[arg(long, value_delimiter = ',')]
    conns: Vec<u32>,
    /// Rounds of the watcher loads (PUT at 64 connections with no, idle,
    /// hot and unread watchers; event delivery latency); 0: none.
    #[arg(long, default_value_t = 1)]
    watch_rounds: usize,
    /// Only the watcher loads (raftkv and etcd).
    #[arg(long)]
    only_watch: bool,
    /// A heading for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
}

const KEYS: u32 = 10_000;
const VALUE_LEN: usize = 100;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// "median M ms, max X ms (a, b, c)" of some durations.
fn spread(d: &mut [Duration]) -> String {
    d.sort();
    let all: Vec<String> = d.iter().map(|d| d.as_millis().to_string()).collect();
    match (d.get(d.len() / 2), d.last()) {
        (Some(m), Some(x)) => format!("median {} ms, max {} ms ({})", m.as_millis(), x.as_millis(), all.join(", ")),
        _ => "none".to_string(),
    }
}

/// What the nodes say about themselves, and the end of their logs: printed
/// when the recovery measurement gives up, so a failure explains itself.
fn diagnose(http: &HttpClient, addrs: &[String], logs: &[PathBuf]) -> String {
    let mut out = String::new();
    for a in addrs {
        let status = http
            .get(a, "/status")
            .map_or_else(|e| format!("error: {e}"), |r| String::from_utf8_lossy(&r.body).into_owned());
        let _ = writeln!(out, "--- {a} /status: {status}");
    }
    for log in logs {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let _ = writeln!(out, "--- {} (last 40 of {} lines)", log.display(), lines.len());
        for l in &lines[lines.len().saturating_sub(40)..] {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum System {
    Raftkv,
    RaftkvTls,
    Etcd,
    Ceiling,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Raftkv => "raftkv",
            System::RaftkvTls => "raftkv TLS+tokens",
            System::Etcd => "etcd 3.4",
            System::Ceiling => "ceiling",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Load {
    Put,
    GetLinearizable,
    GetStale,
    /// A transaction of this many puts of consecutive keys.
    Txn(u8),
    /// PUT with one wrk thread per connection (so each connection can
    /// keep a client session's sequence numbers in order), in a session
    /// of its own (`true`) or without one (`false`, the comparison).
    PutOwnThread(bool),
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Put => "PUT",
            Load::GetLinearizable => "GET linearizable",
            Load::GetStale => "GET stale/serializable",
            Load::Txn(2) => "txn, 2 puts",
            Load::Txn(_) => "txn, 8 puts",
            Load::PutOwnThread(false) => "PUT, wrk thread per connection",
            Load::PutOwnThread(true) => "PUT in sessions, wrk thread per connection",
        }
    }
}

const WRK_DONE: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
function init(args)
  math.randomseed(os.time() + tonumber(string.match(tostring({}), "0x(%x+)") or "1", 16) % 1000003)
end
"#;

/// `sessions`: for `PutOwnThread(true)`, one fresh session id per wrk
/// thread (each thread has one connection and numbers its writes 1, 2, …).
fn wrk_script(sys: System, load: Load, token: Option<&str>, sessions: &[u64]) -> String {
    let value = "x".repeat(VALUE_LEN);
    let mut s = String::new();
    match sys {
        System::Raftkv | System::RaftkvTls | System::Ceiling => {
            let auth = token.map(|t| format!(", [\"Authorization\"] = \"Bearer {t}\"")).unwrap_or_default();
            let _ = writeln!(s, "local hdr = {{[\"Content-Type\"] = \"application/json\"{auth}}}");
            let _ = writeln!(s, "local ghdr = {{{}}}", auth.trim_start_matches(", "));
            let _ = writeln!(s, "local body = '{{\"value\":\"{value}\"}}'");
            let req = match load {
                Load::Put | Load::PutOwnThread(false) => {
                    "wrk.format('PUT', '/kv/key' .. math.random(1, KEYS), hdr, body)"
                }
                Load::PutOwnThread(true) => {
                    let ids: Vec<String> = sessions.iter().map(u64::to_string).collect();
                    let _ = writeln!(
                        s,
                        "local ids = {{{}}}\nlocal next_id = 0\nfunction setup(thread)\n  next_id = next_id + 1\n  \
                         thread:set('sid', tostring(ids[next_id]))\nend\nseq = 0\nfunction tagged()\n  seq = seq + 1\n  \
                         local h = {{[\"Content-Type\"] = \"application/json\", [\"raftkv-session\"] = sid, \
                         [\"raftkv-seq\"] = tostring(seq){auth}}}\n  return h\nend",
                        ids.join(",")
                    );
                    "wrk.format('PUT', '/kv/key' .. math.random(1, KEYS), tagged(), body)"
                }
                Load::GetLinearizable => "wrk.format('GET', '/kv/key' .. math.random(1, KEYS), ghdr)",
                Load::GetStale => "wrk.format('GET', '/kv/key' .. math.random(1, KEYS) .. '?consistency=stale', ghdr)",
                Load::Txn(n) => {
                    let _ = writeln!(
                        s,
                        "function txn()\n  local b = math.random(1, KEYS - {n})\n  local ops = {{}}\n  for i = 0, {} do\n    \
                         ops[#ops + 1] = '{{\"put\":{{\"key\":\"key' .. (b + i) .. '\",\"value\":\"{value}\"}}}}'\n  end\n  \
                         return '{{\"success\":[' .. table.concat(ops, ',') .. ']}}'\nend",
                        n - 1
                    );
                    "wrk.format('POST', '/txn', hdr, txn())"
                }
            };
            let _ = writeln!(s, "KEYS = {KEYS}\nrequest = function() return {req} end");
        }
        System::Etcd => {
            let keys: Vec<String> = (1..=KEYS).map(|k| format!("\"{}\"", b64(format!("key{k}").as_bytes()))).collect();
            let _ = writeln!(s, "local keys = {{{}}}", keys.join(","));
            let _ = writeln!(s, "local value = \"{}\"", b64(value.as_bytes()));
            let _ = writeln!(s, "local hdr = {{[\"Content-Type\"] = \"application/json\"}}");
            let req = match load {
                Load::Put | Load::PutOwnThread(_) => {
                    "wrk.format('POST', '/v3/kv/put', hdr, '{\"key\":\"' .. keys[math.random(1, #keys)] .. '\",\"value\":\"' .. value .. '\"}')"
                }
                Load::GetLinearizable => {
                    "wrk.format('POST', '/v3/kv/range', hdr, '{\"key\":\"' .. keys[math.random(1, #keys)] .. '\"}')"
                }
                Load::GetStale => {
                    "wrk.format('POST', '/v3/kv/range', hdr, '{\"key\":\"' .. keys[math.random(1, #keys)] .. '\",\"serializable\":true}')"
                }
                Load::Txn(n) => {
                    let _ = writeln!(
                        s,
                        "function txn()\n  local b = math.random(1, #keys - {n})\n  local ops = {{}}\n  for i = 0, {} do\n    \
                         ops[#ops + 1] = '{{\"requestPut\":{{\"key\":\"' .. keys[b + i] .. '\",\"value\":\"' .. value .. '\"}}}}'\n  end\n  \
                         return '{{\"success\":[' .. table.concat(ops, ',') .. ']}}'\nend",
                        n - 1
                    );
                    "wrk.format('POST', '/v3/kv/txn', hdr, txn())"
                }
            };
            let _ = writeln!(s, "request = function() return {req} end");
        }
    }
    s.push_str(WRK_DONE);
    s
}

#[derive(Clone, Debug, Default)]
struct Measure {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_us_per_op: f64,
    errors: u64,
}

impl Measure {
    /// req/s, p50, p99, p99.9 (ms), CPU µs/op, errors — formatted.
    fn cells(&self) -> [String; 6] {
        [
            format!("{:.0}", self.rps),
            fmt_ms(self.p50_us),
            fmt_ms(self.p99_us),
            fmt_ms(self.p999_us),
            format!("{:.0}", self.cpu_us_per_op),
            self.errors.to_string(),
        ]
    }
}

struct Target {
    sys: System,
    addr: String,
    pids: Vec<u32>,
    /// The client that reaches it (TLS and token for `RaftkvTls`).
    http: HttpClient,
    token: Option<String>,
}

fn run_wrk(dir: &Path, t: &Target, load: Load, conns: u32, secs: u64) -> Measure {
    let script = dir.join(format!("{}-{:?}.lua", t.sys.name().replace(' ', "_"), load));
    // Fresh sessions for every run: a reused one would answer its old
    // sequence numbers from the table without applying anything.
    let sessions: Vec<u64> = if load == Load::PutOwnThread(true) {
        let endpoint = [t.addr.clone()];
        (0..conns)
            .map(|_| {
                t.http
                    .open_session(&endpoint, Duration::from_secs(10))
                    .map(|s| s.id)
                    .unwrap_or_else(|e| panic!("{e:?}"))
            })
            .collect()
    } else {
        Vec::new()
    };
    fs::write(&script, wrk_script(t.sys, load, t.token.as_deref(), &sessions)).unwrap();
    let threads = if matches!(load, Load::PutOwnThread(_)) { conns } else { conns.min(2) };
    let cpu_before: f64 = t.pids.iter().map(|&p| cpu_seconds(p)).sum();
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &conns.to_string(), "-d", &format!("{secs}s"), "--latency"])
        .arg("-s")
        .arg(&script)
        .arg(format!("{}://{}", t.http.scheme(), t.addr))
        .output()
        .expect("wrk (Debian package wrk); run scripts/install-deps.sh bench");
    let cpu_after: f64 = t.pids.iter().map(|&p| cpu_seconds(p)).sum();
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find_map(|l| l.strip_prefix("BENCH_JSON ")).unwrap_or_else(|| panic!("wrk output:\n{text}"));
    let v: Value = serde_json::from_str(line).unwrap();
    let requests = v["requests"].as_f64().unwrap();
    let dur = v["duration_us"].as_f64().unwrap() / 1e6;
    Measure {
        rps: requests / dur,
        p50_us: v["p50"].as_f64().unwrap(),
        p99_us: v["p99"].as_f64().unwrap(),
        p999_us: v["p999"].as_f64().unwrap(),
        cpu_us_per_op: (cpu_after - cpu_before) * 1e6 / requests.max(1.0),
        errors: v["status_errors"].as_u64().unwrap() + v["socket_errors"].as_u64().unwrap(),
    }
}

fn raftkv_leader(http: &HttpClient, addrs: &[String]) -> Option<usize> {
    addrs.iter().position(|a| http.get(a, "/status").is_ok_and(|r| r.status == 200 && r.json()["role"] == "leader"))
}

fn etcd_leader(http: &HttpClient, addrs: &[String]) -> Option<usize> {
    addrs.iter().position(|a| {
        http.request(a, "POST", "/v3/maintenance/status", Some(b"{}")).is_ok_and(|r| {
            let v = r.json();
            r.status == 200 && v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
        })
    })
}

/// Writes all keys once so that reads find them.
fn preload(target: &Target) {
    let (sys, addr) = (target.sys, target.addr.as_str());
    let value = "x".repeat(VALUE_LEN);
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let value = &value;
            s.spawn(move || {
                let http = target.http.clone().with_timeouts(Duration::from_secs(2), Duration::from_secs(10));
                for k in (1..=KEYS).filter(|k| k % 8 == t) {
                    let key = format!("key{k}");
                    let r = match sys {
                        System::Etcd => {
                            let body = json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
                            http.request(addr, "POST", "/v3/kv/put", Some(body.to_string().as_bytes()))
                        }
                        _ => http.put_json(addr, &format!("/kv/{key}"), &json!({"value": value})),
                    };
                    assert!(r.is_ok_and(|r| r.status == 200), "preload of {key} on {}", sys.name());
                }
            });
        }
    });
}

/// The round with the median throughput.
fn median(rounds: &[Measure]) -> Measure {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    sorted[sorted.len() / 2].clone()
}

fn fmt_ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn main() {
    let args = Args::parse();
    let secs = args.seconds.unwrap_or(if args.quick { 3 } else { 10 });
    let kills = args.kills.unwrap_or(if args.quick { 3 } else { 5 });
    let bin = raftkv_tools::node_binary();
    let ceiling_bin = std::env::current_exe().unwrap().with_file_name("raftkv-ceiling");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let dir = PathBuf::from(format!("target/bench/{stamp}"));
    fs::create_dir_all(&dir).unwrap();
    let http = HttpClient::new(Duration::from_secs(2));
    let use_etcd = !args.no_etcd && !args.only_raftkv;
    if use_etcd {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok(),
            "etcd is not installed: scripts/install-deps.sh bench (or --no-etcd)"
        );
    }

    // --- raftkv: 3 nodes, default settings; and 3 more with TLS and tokens ---
    let addrs_from = |base: u16| -> Vec<String> { (1..=3).map(|i| format!("127.0.0.1:{}", base + i)).collect() };
    let raft_addrs = addrs_from(args.port_base);
    let tls_addrs = addrs_from(args.port_base + 10);
    let ceiling_addr = format!("127.0.0.1:{}", args.port_base + 100);
    let node_cmd = |addrs: &[String], name: &str, i: usize| {
        let peers: Vec<String> = (1..=3).filter(|&j| j != i).map(|j| format!("{j}={}", addrs[j - 1])).collect();
        let mut c = Command::new(&bin);
        c.args(["--id", &i.to_string(), "--listen", &addrs[i - 1], "--peers", &peers.join(",")])
            .arg("--data-dir")
            .arg(dir.join(format!("{name}{i}")))
            .args(args.raftkv_args.split_whitespace())
            .env_remove("RUST_LOG");
        c
    };
    let raft_cmd = |i: usize| node_cmd(&raft_addrs, "raftkv", i);
    let mut raft: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&format!("raftkv{i}"), &mut raft_cmd(i), &dir.join(format!("raftkv{i}.log"))))
        .collect();
    let use_tls = !args.no_tls && !args.only_raftkv;
    let tls_token = auth::new_token();
    let tls_http = if use_tls {
        let certs = dir.join("tls");
        let local = std::net::IpAddr::from([127, 0, 0, 1]);
        raftkv_tools::gen_certs(&certs, &[(1, local), (2, local), (3, local)]).expect("certificates (needs openssl)");
        fs::write(dir.join("tokens"), auth::token_line("bench", Role::Write, &tls_token) + "\n").unwrap();
        HttpClient::new(Duration::from_secs(2))
            .with_ca_file(&certs.join("ca.pem"))
            .unwrap()
            .with_token(Some(tls_token.clone()))
    } else {
        HttpClient::new(Duration::from_secs(2))
    };
    let tls_nodes: Vec<Proc> = if use_tls {
        (1..=3)
            .map(|i| {
                let mut c = node_cmd(&tls_addrs, "raftkv-tls", i);
                c.args(raftkv_tools::tls_node_args(&dir.join("tls"), i as u64, &dir.join("tokens")));
                Proc::spawn(&format!("raftkv-tls{i}"), &mut c, &dir.join(format!("raftkv-tls{i}.log")))
            })
            .collect()
    } else {
        Vec::new()
    };

    // --- etcd: 3 members, default fsync ---
    let etcd_addrs: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{i}2379")).collect();
    let cluster: Vec<String> = (1..=3).map(|i| format!("e{i}=http://127.0.0.1:{i}2380")).collect();
    let _etcd: Vec<Proc> = if use_etcd {
        (1..=3)
            .map(|i| {
                let mut c = Command::new("etcd");
                c.args(["--name", &format!("e{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("etcd{i}")))
                    .args(["--listen-client-urls", &format!("http://{}", etcd_addrs[i - 1])])
                    .args(["--advertise-client-urls", &format!("http://{}", etcd_addrs[i - 1])])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{i}2380")])
                    .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{i}2380")])
                    .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-token", "raftkv-bench"])
                    .args(["--initial-cluster-state", "new", "--log-level", "warn", "--logger", "zap"]);
                Proc::spawn(&format!("etcd{i}"), &mut c, &dir.join(format!("etcd{i}.log")))
            })
            .collect()
    } else {
        Vec::new()
    };
    let _ceiling = (!args.only_raftkv).then(|| {
        Proc::spawn("ceiling", Command::new(&ceiling_bin).args(["--listen", &ceiling_addr]), &dir.join("ceiling.log"))
    });

    eprintln!("waiting for leaders...");
    // Every member, not just a leader: a node that failed to start would
    // otherwise turn the recovery measurement into a loss of majority.
    wait_until("every raftkv node to be ready", Duration::from_secs(20), || {
        raft_addrs.iter().all(|a| http.get(a, "/ready").is_ok_and(|r| r.status == 200))
    });
    if use_tls {
        wait_until("every raftkv node with TLS to be ready", Duration::from_secs(20), || {
            tls_addrs.iter().all(|a| tls_http.get(a, "/ready").is_ok_and(|r| r.status == 200))
        });
    }
    if use_etcd {
        wait_until("an etcd leader", Duration::from_secs(30), || etcd_leader(&http, &etcd_addrs).is_some());
    }
    if _ceiling.is_some() {
        wait_until("the ceiling", Duration::from_secs(10), || http.get(&ceiling_addr, "/health").is_ok());
    }
    let rl = raftkv_leader(&http, &raft_addrs).unwrap();
    let target = |sys, addr: &str, procs: &[Proc]| Target {
        sys,
        addr: addr.to_string(),
        pids: procs.iter().map(Proc::pid).collect(),
        http: if sys == System::RaftkvTls { tls_http.clone() } else { http.clone() },
        token: (sys == System::RaftkvTls).then(|| tls_token.clone()),
    };
    let mut targets = vec![target(System::Raftkv, &raft_addrs[rl], &raft)];
    if use_tls {
        let tl = raftkv_leader(&tls_http, &tls_addrs).expect("a leader of the TLS cluster");
        targets.push(target(System::RaftkvTls, &tls_addrs[tl], &tls_nodes));
    }
    if use_etcd {
        let el = etcd_leader(&http, &etcd_addrs).unwrap();
        targets.push(target(System::Etcd, &etcd_addrs[el], &_etcd));
    }
    if let Some(c) = &_ceiling {
        targets.push(target(System::Ceiling, &ceiling_addr, std::slice::from_ref(c)));
    }

    eprintln!("preloading {KEYS} keys into each system...");
    for t in &targets {
        preload(t);
        run_wrk(&dir, t, Load::Put, 16, 2); // warm-up, not recorded
    }

    let scenarios: Vec<(Load, u32)> = [
        (Load::Put, 1),
        (Load::Put, 16),
        (Load::Put, 64),
        (Load::Put, 256),
        (Load::GetLinearizable, 64),
        (Load::GetStale, 64),
        (Load::Txn(2), 64),
        (Load::Txn(8), 64),
        (Load::PutOwnThread(false), 64),
        (Load::PutOwnThread(true), 64),
    ]
    .into_iter()
    .filter(|(_, c)| (args.conns.is_empty() || args.conns.contains(c)) && !args.only_watch)
    .collect();
    // Every round's measure of each (load, conns, system), in round order.
    let mut results: BTreeMap<(Load, u32, System), Vec<Measure>> = BTreeMap::new();
    for round in 0..args.rounds.max(1) {
        for &(load, conns) in &scenarios {
            let order: Vec<&Target> =
                if round % 2 == 0 { targets.iter().collect() } else { targets.iter().rev().collect() };
            for t in order {
                if t.sys == System::Ceiling && load == Load::GetStale {
                    continue; // the ceiling has only one kind of read
                }
                if matches!(load, Load::Txn(_)) && matches!(t.sys, System::Ceiling | System::RaftkvTls) {
                    continue; // transactions: raftkv against etcd only
                }
                if matches!(load, Load::PutOwnThread(_)) && t.sys != System::Raftkv {
                    continue; // sessions against none: raftkv alone
                }
                eprintln!("{} {} c={conns} (round {}) ...", t.sys.name(), load.name(), round + 1);
                let m = run_wrk(&dir, t, load, conns, secs);
                let [rps, p50, p99, p999, cpu, errors] = m.cells();
                eprintln!(
                    "  {rps} req/s, p50 {p50} ms, p99 {p99} ms, p99.9 {p999} ms, {cpu} µs CPU/op, {errors} errors"
                );
                results.entry((load, conns, t.sys)).or_default().push(m);
            }
        }
    }

    // --- recovery: stop the leader (kill -9, or SIGTERM: it hands over
    // first), time the first acknowledged write through a survivor ---
    let mut recoveries = Vec::new();
    let mut handovers = Vec::new();
    let watch_md =
        watch_section(&dir, &targets, secs, if args.only_watch { args.watch_rounds.max(1) } else { args.watch_rounds });
    let kills = if args.only_watch { 0 } else { kills };
    for k in 0..2 * kills {
        let graceful = k >= kills;
        let how = if graceful { "SIGTERM" } else { "kill -9" };
        let leader = raftkv_leader(&http, &raft_addrs).expect("a leader");
        let survivor = (leader + 1) % 3;
        let writer = HttpClient::new(Duration::from_secs(3));
        let stopped_at = Instant::now();
        if graceful {
            // Not waited for: the first write may be acknowledged while
            // the old leader is still on its way out.
            raft[leader].terminate();
        } else {
            raft[leader].kill();
        }
        let mut n = 0;
        let mut last: String;
        let took = loop {
            n += 1;
            let r = writer.put_json(&raft_addrs[survivor], &format!("/kv/recovery{k}-{n}"), &json!({"value": "v"}));
            match r {
                Ok(r) if r.status == 200 => break stopped_at.elapsed(),
                Ok(r) => last = format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)),
                Err(e) => last = format!("error: {e}"),
            }
            if stopped_at.elapsed() > Duration::from_secs(30) {
                let logs: Vec<PathBuf> = (1..=3)
                    .map(|i| dir.join(format!("raftkv{i}.log")))
                    .chain((0..k).map(|j| dir.join(format!("raftkv{}-{j}.log", leader + 1))))
                    .collect();
                panic!(
                    "no write acknowledged 30 s after the {how} of node {} ({n} tries; the last: {last})\n{}",
                    leader + 1,
                    diagnose(&http, &raft_addrs, &logs)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        eprintln!("{how} leader {} -> first acknowledged write after {} ms", leader + 1, took.as_millis());
        if graceful {
            handovers.push(took);
            raft[leader].wait();
        } else {
            recoveries.push(took);
        }
        raft[leader] = Proc::spawn(
            &format!("raftkv{}", leader + 1),
            &mut raft_cmd(leader + 1),
            &dir.join(format!("raftkv{}-{k}.log", leader + 1)),
        );
        wait_until("the cluster to be ready again", Duration::from_secs(30), || {
            raft_addrs.iter().all(|a| http.get(a, "/ready").is_ok_and(|r| r.status == 200))
        });
    }

    // --- report ---
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut md = String::new();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(md, "\n## Run of {date}\n");
    if !args.label.is_empty() {
        let _ = writeln!(md, "**{}**\n", args.label);
    }
    let _ = writeln!(
        md,
        "`make bench{}`{} — {} s per load{}, {} cores ({cpu}), raftkv {} vs etcd 3.4.23 (Debian), 3 members each on loopback, \
         load to each leader, 100-byte values, {KEYS} random keys. CPU is server CPU (all members) per operation. \
         `raftkv TLS+tokens`: a second raftkv cluster, same settings, with TLS on every connection (mutual between \
         members, rustls, EC P-256) and every request carrying a bearer token, running beside the first.\n",
        if args.quick { " BENCH_QUICK=1" } else { "" },
        if args.raftkv_args.is_empty() {
            String::new()
        } else {
            format!(" (raftkv nodes with `{}`)", args.raftkv_args)
        },
        secs,
        if args.rounds > 1 {
            format!(" × {} rounds (systems in alternating order; the median round is shown)", args.rounds)
        } else {
            String::new()
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env!("CARGO_PKG_VERSION")
    );
    let _ =
        writeln!(md, "| load | conns | system | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/op | errors | ratios |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for &(load, conns) in &scenarios {
        let rounds = |sys| results.get(&(load, conns, sys)).map(Vec::as_slice);
        let r = rounds(System::Raftkv);
        let e = rounds(System::Etcd);
        for t in &targets {
            let Some(all) = rounds(t.sys) else { continue };
            let m = &median(all);
            // The median round's latencies; throughput as the median of
            // the rounds' ratios, each round's listed when there are several.
            let vs = |b: &[Measure], what: &str| {
                let mut per: Vec<f64> = all.iter().zip(b).map(|(x, y)| x.rps / y.rps).collect();
                let listed: Vec<String> = per.iter().map(|x| format!("{x:.2}")).collect();
                per.sort_by(f64::total_cmp);
                let rounds = if per.len() > 1 { format!(" (rounds {})", listed.join(", ")) } else { String::new() };
                let b = median(b);
                format!(
                    "{:.2}× {what} throughput{rounds}, p50 {:.2}×, p99 {:.2}×",
                    per[per.len() / 2],
                    m.p50_us / b.p50_us,
                    m.p99_us / b.p99_us
                )
            };
            let without = results.get(&(Load::PutOwnThread(false), conns, System::Raftkv));
            let ratio = match (t.sys, r, e) {
                (System::Raftkv, _, _) if load == Load::PutOwnThread(true) => {
                    without.map_or(String::new(), |w| vs(w, "no-session"))
                }
                (System::Raftkv, _, Some(e)) => vs(e, "etcd"),
                (System::RaftkvTls, Some(r), e) => {
                    let plain = vs(r, "plaintext");
                    e.map_or(plain.clone(), |e| format!("{plain}; {:.2}× etcd throughput", m.rps / median(e).rps))
                }
                _ => String::new(),
            };
            let cells = m.cells().join(" | ");
            let _ = writeln!(md, "| {} | {conns} | {} | {cells} | {ratio} |", load.name(), t.sys.name());
        }
    }
    if !recoveries.is_empty() {
        let _ = writeln!(
            md,
            "\nLeader `kill -9` → first acknowledged write (default settings, {} kills): {}.",
            recoveries.len(),
            spread(&mut recoveries)
        );
        let _ = writeln!(
            md,
            "Leader `SIGTERM` (hands leadership over, then exits) → first acknowledged write ({} stops): {}.",
            handovers.len(),
            spread(&mut handovers)
        );
    }
    md.push_str(&watch_md);
    print!("{md}");
    if args.report.as_os_str() != "-" {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&args.report).unwrap();
        f.write_all(md.as_bytes()).unwrap();
        eprintln!("appended to {}", args.report.display());
    }
    eprintln!("logs and scripts in {}", dir.display());
}

/// Watchers held open while PUTs run at 64 connections.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum WatchLoad {
    None,
    /// 1,000 watchers of keys nobody writes.
    Idle,
    /// 100 watchers of 9 hot prefixes (`key1`..`key9`, each about 11% of
    /// the keys written), read as fast as events come.
    Hot,
    /// 100 watchers of every written key that never read.
    Unread,
}

impl WatchLoad {
    fn name(self) -> &'static str {
        match self {
            WatchLoad::None => "none",
            WatchLoad::Idle => "1,000 idle",
            WatchLoad::Hot => "100 on hot prefixes, reading",
            WatchLoad::Unread => "100 on every key, never reading",
        }
    }

    fn start(self, kind: watchers::Kind, addr: &str) -> Option<watchers::Watchers> {
        use watchers::{Follow, Watchers};
        match self {
            WatchLoad::None => None,
            WatchLoad::Idle => Some(Watchers::start(kind, addr, 1000, false, |i| Follow::Key(format!("idle/{i}")))),
            WatchLoad::Hot => {
                Some(Watchers::start(kind, addr, 100, true, |i| Follow::Prefix(format!("key{}", i % 9 + 1))))
            }
            WatchLoad::Unread => Some(Watchers::start(kind, addr, 100, false, |_| Follow::Prefix("key".into()))),
        }
    }
}

/// PUT c64 under each watcher load, raftkv and etcd side by side, and the
/// delivery latency of events; as a markdown section.
fn watch_section(dir: &Path, targets: &[Target], secs: u64, rounds: usize) -> String {
    let systems: Vec<(&Target, watchers::Kind)> = targets
        .iter()
        .filter_map(|t| match t.sys {
            System::Raftkv => Some((t, watchers::Kind::Raftkv)),
            System::Etcd => Some((t, watchers::Kind::Etcd)),
            _ => None,
        })
        .collect();
    if rounds == 0 || systems.is_empty() {
        return String::new();
    }
    let loads = [WatchLoad::None, WatchLoad::Idle, WatchLoad::Hot, WatchLoad::Unread];
    let mut results: BTreeMap<(WatchLoad, System), Vec<(Measure, u64)>> = BTreeMap::new();
    for round in 0..rounds {
        for &load in &loads {
            let order: Vec<_> = if round % 2 == 0 { systems.iter().collect() } else { systems.iter().rev().collect() };
            for &&(t, kind) in &order {
                eprintln!("{} PUT c=64 with watchers: {} (round {}) ...", t.sys.name(), load.name(), round + 1);
                let w = load.start(kind, &t.addr);
                let m = run_wrk(dir, t, Load::Put, 64, secs);
                let bytes = w.map_or(0, watchers::Watchers::stop);
                let [rps, p50, p99, _, cpu, errors] = m.cells();
                eprintln!(
                    "  {rps} req/s, p50 {p50} ms, p99 {p99} ms, {cpu} µs CPU/op, {errors} errors, {bytes} bytes to watchers"
                );
                results.entry((load, t.sys)).or_default().push((m, bytes));
            }
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\nWatchers ({rounds} round(s), {secs} s each, the median round shown): PUT at 64 connections while watch \
         streams are held open on the leader (raftkv: `GET ?watch=true`; etcd: `POST /v3/watch` on its JSON gateway). \
         Ratios are against the same system with no watchers.\n"
    );
    let _ =
        writeln!(md, "| watchers | system | req/s | p50 ms | p99 ms | CPU µs/op | errors | MB to watchers | vs none |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for &load in &loads {
        for &(t, _) in &systems {
            let Some(all) = results.get(&(load, t.sys)) else { continue };
            let ms: Vec<Measure> = all.iter().map(|(m, _)| m.clone()).collect();
            let m = median(&ms);
            let bytes = all.iter().map(|(_, b)| *b).max().unwrap_or(0);
            let none = results
                .get(&(WatchLoad::None, t.sys))
                .map(|n| median(&n.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()));
            let vs = match none {
                Some(n) if load != WatchLoad::None => {
                    format!("{:.2}× throughput, p99 {:.2}×", m.rps / n.rps, m.p99_us / n.p99_us)
                }
                _ => String::new(),
            };
            let [rps, p50, p99, _, cpu, errors] = m.cells();
            let _ = writeln!(
                md,
                "| {} | {} | {rps} | {p50} | {p99} | {cpu} | {errors} | {:.1} | {vs} |",
                load.name(),
                t.sys.name(),
                bytes as f64 / 1e6
            );
        }
    }
    // Delivery: PUTs one at a time, each timed from its acknowledgement to
    // its event on a watcher of the key (with the hot watchers open).
    let _ = writeln!(
        md,
        "\nEvent delivery, PUT acknowledged → event read by a watcher of the key (500 PUTs one at a time, 100 hot watchers open):\n"
    );
    for &(t, kind) in &systems {
        let w = WatchLoad::Hot.start(kind, &t.addr);
        let http = t.http.clone();
        let (mut lat, early) = watchers::delivery_latency(kind, &t.addr, "lat", 500, |v| {
            let r = match t.sys {
                System::Etcd => {
                    let body = json!({"key": b64(b"lat"), "value": b64(v.as_bytes())});
                    http.request(&t.addr, "POST", "/v3/kv/put", Some(body.to_string().as_bytes()))
                }
                _ => http.put_json(&t.addr, "/kv/lat", &json!({"value": v})),
            };
            assert!(r.is_ok_and(|r| r.status == 200), "latency probe PUT on {}", t.sys.name());
        });
        if let Some(w) = w {
            w.stop();
        }
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        let _ = writeln!(
            md,
            "* {}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({early} events were read before the acknowledgement came)",
            t.sys.name(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
    md
}
