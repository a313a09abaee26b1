//! `raftkv-soak` (`make soak`, and the end of `make bench`): what snapshots
//! and log compaction buy over time, on a 3-node cluster on loopback.
//!
//! * `soak --minutes N`: PUT load through the leader with `wrk`, one minute
//!   at a time; after each minute one row: throughput, latency, RSS of the
//!   leader and the followers, WAL and snapshot bytes on disk, log entries
//!   held in memory, snapshots taken. RSS and disk use must level off.
//! * `restart --keys K --writes W`: W PUTs over K keys, then `kill -9` of a
//!   follower and the time from its spawn to `/ready` with everything it
//!   had applied before the kill applied again (snapshot + WAL tail, or the
//!   whole WAL with compaction off).
//! * `catchup --entries E`: a follower is down while E PUTs commit; the
//!   time from its restart until it has applied the leader's commit index,
//!   and whether it went through an InstallSnapshot.
//! * `join --keys K`: K distinct keys are written, then a 4th node starts
//!   with `--join`; the time until it is a learner, until it has applied the
//!   leader's commit index, and until it is a voter; then it is removed
//!   again. After that, PUT throughput while members come and go (a new node
//!   joins, is promoted and removed, over and over) against quiet periods,
//!   interleaved.
//!
//! Each run starts its own fresh cluster under `target/bench/<stamp>/`
//! (data directories and node logs are kept there). 100-byte values.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raftkv::client::HttpClient;
use raftkv_tools::process::{Proc, wait_until};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(name = "raftkv-soak", about = "raftkv over time: soak, restart and catch-up with snapshots")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Extra flags for every raftkv node, e.g. "--snapshot-entries 0 --snapshot-bytes 0".
    #[arg(long, global = true, default_value = "", allow_hyphen_values = true)]
    raftkv_args: String,
    /// Markdown file the results are appended to ("-": none).
    #[arg(long, global = true, default_value = "BENCHMARKS.md")]
    report: PathBuf,
    /// raftkv nodes listen on base+1..3.
    #[arg(long, global = true, default_value_t = 18300)]
    port_base: u16,
    /// wrk connections (2 wrk threads).
    #[arg(long, global = true, default_value_t = 64)]
    conns: u32,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Minutes of PUT load; one table row per minute.
    Soak {
        #[arg(long, default_value_t = 20)]
        minutes: u32,
        /// Random keys among key1..keyN.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
    },
    /// W writes over K keys, then kill -9 a follower and time its restart.
    Restart {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 2_000_000)]
        writes: u64,
        /// Kill and restart the same follower this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// A follower misses E writes; time its catch-up after restart.
    Catchup {
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
    },
    /// A new member joins a cluster holding K keys; then throughput under membership churn.
    Join {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Seconds of each quiet and each churn period.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Quiet/churn pairs (order alternates).
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Pause between two churn cycles (0: back to back).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
}

const VALUE_LEN: usize = 100;
const WRK_THREADS: u32 = 2;

/// A field of /proc/<pid>/status in kB (VmRSS, VmHWM).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn kb_mib(kb: u64) -> String {
    format!("{:.0}", kb as f64 / 1024.0)
}

fn shell(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

const WRK_DONE: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"timeouts":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// PUTs of random keys among key1..key<keys>.
fn random_put_script(keys: u64) -> String {
    let value = "x".repeat(VALUE_LEN);
    format!(
        r#"local hdr = {{["Content-Type"] = "application/json"}}
local body = '{{"value":"{value}"}}'
KEYS = {keys}
function init(args)
  math.randomseed(os.time() + tonumber(string.match(tostring({{}}), "0x(%x+)") or "1", 16) % 1000003)
end
request = function() return wrk.format('PUT', '/kv/key' .. math.random(1, KEYS), hdr, body) end
{WRK_DONE}"#
    )
}

/// PUTs that walk key1..key<keys> in turn (thread t writes keys t, t+T, ...),
/// so that enough writes touch every key. Stopped from outside (SIGINT).
fn sequential_put_script(keys: u64) -> String {
    let value = "x".repeat(VALUE_LEN);
    format!(
        r#"local hdr = {{["Content-Type"] = "application/json"}}
local body = '{{"value":"{value}"}}'
KEYS = {keys}
NTHREADS = {WRK_THREADS}
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end
local n = 0
request = function()
  local k = (n * NTHREADS + tid) % KEYS + 1
  n = n + 1
  return wrk.format('PUT', '/kv/key' .. k, hdr, body)
end
{WRK_DONE}"#
    )
}

#[derive(Clone, Debug, Default)]
struct Wrk {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
    status_errors: u64,
    timeouts: u64,
}

fn parse_wrk(stdout: &[u8]) -> Wrk {
    let text = String::from_utf8_lossy(stdout);
    let line =
        text.lines().find_map(|l| l.strip_prefix("BENCH_JSON ")).unwrap_or_else(|| panic!("wrk output:\n{text}"));
    let v: Value = serde_json::from_str(line).unwrap();
    let requests = v["requests"].as_u64().unwrap();
    let dur = v["duration_us"].as_f64().unwrap() / 1e6;
    let status_errors = v["status_errors"].as_u64().unwrap();
    Wrk {
        requests,
        rps: requests as f64 / dur.max(1e-9),
        p50_us: v["p50"].as_f64().unwrap(),
        p99_us: v["p99"].as_f64().unwrap(),
        p999_us: v["p999"].as_f64().unwrap(),
        errors: status_errors + v["socket_errors"].as_u64().unwrap(),
        status_errors,
        timeouts: v["timeouts"].as_u64().unwrap_or(0),
    }
}

fn wrk_command(script: &Path, conns: u32, secs: u64, addr: &str) -> Command {
    let mut c = Command::new("wrk");
    c.args(["-t", &WRK_THREADS.min(conns).to_string(), "-c", &conns.to_string(), "-d", &format!("{secs}s")])
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}"));
    c
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    addrs: Vec<String>,
    extra: String,
    procs: Vec<Proc>,
    spawns: usize,
    http: HttpClient,
}

impl Cluster {
    fn start(port_base: u16, extra: &str, dir: &Path) -> Cluster {
        let addrs: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", port_base + i)).collect();
        let mut c = Cluster {
            bin: raftkv_tools::node_binary(),
            dir: dir.to_path_buf(),
            addrs,
            extra: extra.to_string(),
            procs: Vec::new(),
            spawns: 0,
            http: HttpClient::new(Duration::from_secs(2)),
        };
        for i in 0..3 {
            let p = c.spawn_proc(i);
            c.procs.push(p);
        }
        eprintln!("waiting for a leader...");
        wait_until("a leader", Duration::from_secs(30), || c.leader().is_some());
        wait_until("all nodes ready", Duration::from_secs(30), || (0..3).all(|i| c.ready(i).is_some()));
        c
    }

    fn spawn_proc(&mut self, i: usize) -> Proc {
        let id = i + 1;
        let peers: Vec<String> = (1..=3).filter(|&j| j != id).map(|j| format!("{j}={}", self.addrs[j - 1])).collect();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--id", &id.to_string(), "--listen", &self.addrs[i], "--peers", &peers.join(",")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("raftkv{id}")))
            .args(self.extra.split_whitespace())
            .env_remove("RUST_LOG");
        let log = if self.spawns < 3 {
            self.dir.join(format!("raftkv{id}.log"))
        } else {
            self.dir.join(format!("raftkv{id}-restart{}.log", self.spawns - 2))
        };
        self.spawns += 1;
        Proc::spawn(&format!("raftkv{id}"), &mut cmd, &log)
    }

    fn respawn(&mut self, i: usize) {
        let p = self.spawn_proc(i);
        self.procs[i] = p;
    }

    fn status(&self, i: usize) -> Option<Value> {
        self.http.get(&self.addrs[i], "/status").ok().filter(|r| r.status == 200).map(|r| r.json())
    }

    /// The `/ready` body if it answered 200.
    fn ready(&self, i: usize) -> Option<Value> {
        self.http.get(&self.addrs[i], "/ready").ok().filter(|r| r.status == 200).map(|r| r.json())
    }

    fn leader(&self) -> Option<usize> {
        (0..3).find(|&i| self.status(i).is_some_and(|s| s["role"] == "leader"))
    }

    fn applied(&self, i: usize) -> u64 {
        self.status(i).map_or(0, |s| s["applied_index"].as_u64().unwrap_or(0))
    }

    fn wait_all_applied(&self, index: u64) {
        wait_until("every node to apply the leader's commit index", Duration::from_secs(600), || {
            (0..3).all(|i| self.applied(i) >= index)
        });
    }

    /// Starts node `id` (4, 5, ...) with an empty data directory and
    /// `--join` through node `via` (0-based).
    fn spawn_joiner(&self, id: u64, via: usize) -> (Proc, String) {
        let addr = format!("127.0.0.1:{}", self.addrs[0].rsplit(':').next().unwrap().parse::<u64>().unwrap() - 1 + id);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--id", &id.to_string(), "--listen", &addr, "--join", &self.addrs[via]])
            .arg("--data-dir")
            .arg(self.dir.join(format!("raftkv{id}")))
            .args(self.extra.split_whitespace())
            .env_remove("RUST_LOG");
        let p = Proc::spawn(&format!("raftkv{id}"), &mut cmd, &self.dir.join(format!("raftkv{id}.log")));
        (p, addr)
    }

    /// The role of member `id` in node `via`'s committed configuration, if any.
    fn member_role(&self, via: usize, id: u64) -> Option<String> {
        let r = self.http.get(&self.addrs[via], "/cluster/members").ok().filter(|r| r.status == 200)?;
        let v = r.json();
        if v["config_committed"] != true {
            return None;
        }
        v["members"].as_array()?.iter().find(|m| m["id"] == id).and_then(|m| m["role"].as_str().map(str::to_string))
    }

    /// Promotes learner `id` through node `via`, retrying while it is behind
    /// or another change is in flight. Returns the refusals seen.
    fn promote(&self, via: usize, id: u64) -> u32 {
        let mut refusals = 0;
        let started = Instant::now();
        loop {
            let r = self.http.request(&self.addrs[via], "POST", &format!("/cluster/members/{id}/promote"), None);
            match r {
                Ok(r) if r.status == 200 => return refusals,
                Ok(r) if r.status == 409 || r.status == 503 => refusals += 1,
                Ok(r) => panic!("promote {id}: {} {}", r.status, r.text()),
                Err(_) => refusals += 1,
            }
            assert!(started.elapsed() < Duration::from_secs(600), "promotion of {id} refused for 10 minutes");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes member `id` through node `via`, retrying a change in flight.
    fn remove(&self, via: usize, id: u64) {
        let started = Instant::now();
        loop {
            match self.http.delete(&self.addrs[via], &format!("/cluster/members/{id}")) {
                Ok(r) if r.status == 200 => return,
                Ok(r) if r.status == 409 && r.json()["code"] == "change_in_progress" || r.status == 503 => {}
                Ok(r) => panic!("remove {id}: {} {}", r.status, r.text()),
                Err(_) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(60), "removal of {id} refused for a minute");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss_kb(&self, i: usize) -> u64 {
        proc_kb(self.procs[i].pid(), "VmRSS")
    }
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// Writes through the leader with the sequential script until the leader's
/// commit index has grown by `writes`, then stops wrk (SIGINT: wrk then
/// prints its summary). Returns wrk's figures and the seconds it took.
/// Also the leader's commit index before the writes.
fn counted_writes(c: &Cluster, leader: usize, keys: u64, writes: u64, conns: u32) -> (Wrk, f64, u64) {
    let script = c.dir.join("sequential-put.lua");
    fs::write(&script, sequential_put_script(keys)).unwrap();
    let base = u(&c.status(leader).expect("leader status"), &["commit_index"]);
    let started = Instant::now();
    let child = wrk_command(&script, conns, 86_400, &c.addrs[leader])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk (Debian package wrk); run scripts/install-deps.sh bench");
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let Some(s) = c.status(leader) else { continue };
        let done = u(&s, &["commit_index"]).saturating_sub(base);
        if done >= writes {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("  {done} of {writes} writes committed ({:.0} s)", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "writes took over an hour");
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let out = child.wait_with_output().expect("wrk output");
    let secs = started.elapsed().as_secs_f64();
    (parse_wrk(&out.stdout), secs, base)
}

fn heading(kind: &str, args: &Args, what: &str) -> String {
    let date = shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = shell("git", &["rev-parse", "--short", "HEAD"]);
    let settings = if args.raftkv_args.is_empty() {
        "default settings".to_string()
    } else {
        format!("raftkv nodes with `{}`", args.raftkv_args)
    };
    format!(
        "\n### {kind} of {date} (commit {commit})\n\n{what}; {settings}; 3 nodes on loopback, {} cores, \
         100-byte values, `wrk -t{WRK_THREADS} -c{}` to the leader.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.conns
    )
}

fn report(args: &Args, md: &str, dir: &Path) {
    print!("{md}");
    if args.report.as_os_str() != "-" {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&args.report).unwrap();
        f.write_all(md.as_bytes()).unwrap();
        eprintln!("appended to {}", args.report.display());
    }
    eprintln!("data directories and logs in {}", dir.display());
}

fn soak(args: &Args, dir: &Path, minutes: u32, keys: u64) {
    let mut c = Cluster::start(args.port_base, &args.raftkv_args, dir);
    let script = dir.join("random-put.lua");
    fs::write(&script, random_put_script(keys)).unwrap();
    let mut md = heading(
        "Soak",
        args,
        &format!(
            "`raftkv-soak soak --minutes {minutes} --keys {keys}`: `wrk -d 60s` PUT load per row, random keys among {keys}"
        ),
    );
    md.push_str(
        "| minute | PUT req/s | p50 ms | p99 ms | p99.9 ms | errors | leader | leader RSS MiB | follower RSS MiB (max) \
         | leader WAL MiB (segments) | snapshot MiB | log entries in memory | snapshots taken |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut leader = c.leader().expect("a leader");
    let row = |c: &Cluster, leader: usize, minute: u32, w: Option<&Wrk>| -> String {
        let s = c.status(leader).unwrap_or(Value::Null);
        let frss = (0..3).filter(|&i| i != leader).map(|i| c.rss_kb(i)).max().unwrap_or(0);
        let (rps, p50, p99, p999, errs) = match w {
            Some(w) => (
                format!("{:.0}", w.rps),
                format!("{:.2}", w.p50_us / 1000.0),
                format!("{:.2}", w.p99_us / 1000.0),
                format!("{:.2}", w.p999_us / 1000.0),
                w.errors.to_string(),
            ),
            None => ("idle".into(), "".into(), "".into(), "".into(), "".into()),
        };
        format!(
            "| {minute} | {rps} | {p50} | {p99} | {p999} | {errs} | {} | {} | {} | {} ({}) | {} | {} | {} |\n",
            leader + 1,
            kb_mib(c.rss_kb(leader)),
            kb_mib(frss),
            mib(u(&s, &["log", "wal_bytes_on_disk"])),
            u(&s, &["log", "wal_segments"]),
            mib(u(&s, &["log", "snapshot_bytes_on_disk"])),
            u(&s, &["log", "entries_in_memory"]),
            u(&s, &["log", "snapshots_taken"]),
        )
    };
    let r = row(&c, leader, 0, None);
    eprint!("{r}");
    md.push_str(&r);
    let mut total: u64 = 0;
    let mut rps_all = Vec::new();
    for minute in 1..=minutes {
        let out = wrk_command(&script, args.conns, 60, &c.addrs[leader])
            .output()
            .expect("wrk (Debian package wrk); run scripts/install-deps.sh bench");
        let w = parse_wrk(&out.stdout);
        total += w.requests.saturating_sub(w.status_errors);
        rps_all.push(w.rps);
        if let Some(l) = c.leader() {
            if l != leader {
                eprintln!("leader changed: node {} -> node {}", leader + 1, l + 1);
            }
            leader = l;
        }
        let r = row(&c, leader, minute, Some(&w));
        eprint!("{r}");
        md.push_str(&r);
    }
    // Peak RSS over the whole run, and the disk as it is at the end.
    let hwm: Vec<String> =
        (0..3).map(|i| format!("node {} {} MiB", i + 1, kb_mib(proc_kb(c.procs[i].pid(), "VmHWM")))).collect();
    let s = c.status(leader).unwrap_or(Value::Null);
    let du = shell("du", &["-sb", &dir.join(format!("raftkv{}", leader + 1)).to_string_lossy()]);
    let du_bytes: u64 = du.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let mut sorted = rps_all.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let _ = writeln!(
        md,
        "\nTotal acknowledged writes: {total} in {minutes} min (median {:.0} req/s); last snapshot at index {}, \
         {} bytes written in {:.1} ms; peak RSS (VmHWM) {}; leader data directory {} MiB at the end.",
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        u(&s, &["log", "snapshot_index"]),
        u(&s, &["log", "last_snapshot", "bytes"]),
        s["log"]["last_snapshot"]["duration_ms"].as_f64().unwrap_or(0.0),
        hwm.join(", "),
        mib(du_bytes),
    );
    report(args, &md, dir);
    for p in &mut c.procs {
        p.kill();
    }
}

fn restart(args: &Args, dir: &Path, keys: u64, writes: u64, repeat: u32) {
    let mut c = Cluster::start(args.port_base, &args.raftkv_args, dir);
    let leader = c.leader().expect("a leader");
    eprintln!("writing {writes} PUTs over {keys} keys through node {}...", leader + 1);
    let (w, secs, base) = counted_writes(&c, leader, keys, writes, args.conns);
    eprintln!("  done in {secs:.1} s ({:.0} req/s, {} errors)", w.rps, w.errors);
    let commit = u(&c.status(leader).unwrap(), &["commit_index"]);
    c.wait_all_applied(commit);
    let victim = (leader + 1) % 3;
    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
    let mut rows = String::new();
    let mut times = Vec::new();
    let mut after = Value::Null;
    for round in 1..=repeat {
        // Give the snapshot policy a moment to settle (a snapshot being
        // written at the kill would be a different measurement).
        std::thread::sleep(Duration::from_secs(2));
        let before = c.status(victim).expect("victim status");
        let commit_at_kill = u(&c.status(leader).unwrap(), &["commit_index"]);
        let rss_before = c.rss_kb(victim);
        eprintln!("kill -9 node {} (follower), commit index {commit_at_kill}", victim + 1);
        c.procs[victim].kill();
        std::thread::sleep(Duration::from_millis(500));
        let spawned = Instant::now();
        c.respawn(victim);
        let mut first_answer = None;
        let mut ready_at = None;
        let took = loop {
            if let Ok(r) = c.http.get(&c.addrs[victim], "/ready") {
                first_answer.get_or_insert_with(|| spawned.elapsed());
                if r.status == 200 {
                    ready_at.get_or_insert_with(|| spawned.elapsed());
                    if u(&r.json(), &["applied_index"]) >= commit_at_kill {
                        break spawned.elapsed();
                    }
                }
            }
            assert!(spawned.elapsed() < Duration::from_secs(900), "restart took over 15 minutes");
            std::thread::sleep(Duration::from_millis(5));
        };
        eprintln!("restarted in {} ms", took.as_millis());
        times.push(took);
        after = c.status(victim).unwrap_or(Value::Null);
        let _ = writeln!(
            rows,
            "| {round} | {keys} | {} | {:.0} req/s | {} | {} ({}) | {} | {} | {} | {} | {} | {} | **{}** |",
            commit_at_kill - base,
            w.rps,
            victim + 1,
            mib(u(&before, &["log", "wal_bytes_on_disk"])),
            u(&before, &["log", "wal_segments"]),
            mib(u(&before, &["log", "snapshot_bytes_on_disk"])),
            u(&before, &["log", "snapshot_index"]),
            u(&before, &["log", "entries_in_memory"]),
            kb_mib(rss_before),
            ms(first_answer),
            ms(ready_at),
            took.as_millis(),
        );
    }
    let mut md = heading(
        "Restart",
        args,
        &format!(
            "`raftkv-soak restart --keys {keys} --writes {writes}{}`: writes in key order, then `kill -9` of a follower \
             and its restart{}",
            if repeat > 1 { format!(" --repeat {repeat}") } else { String::new() },
            if repeat > 1 { format!(", {repeat} times in a row") } else { String::new() }
        ),
    );
    let _ = writeln!(
        md,
        "| restart | keys | writes committed | write rate | node | WAL MiB on disk (segments) | snapshot MiB on disk \
         | snapshot index | log entries in memory | RSS MiB before kill | HTTP up ms | /ready ms \
         | restart ms (ready and applied ≥ commit at kill) |"
    );
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    md.push_str(&rows);
    times.sort();
    let _ = writeln!(
        md,
        "\nRestart median {} ms. After the last restart the node holds {} log entries in memory (first index {}), \
         RSS {} MiB; wrk: {} responses, {} errors ({} timeouts > 2 s), {:.1} s.",
        times[times.len() / 2].as_millis(),
        u(&after, &["log", "entries_in_memory"]),
        u(&after, &["log", "first_index"]),
        kb_mib(c.rss_kb(victim)),
        w.requests,
        w.errors,
        w.timeouts,
        secs
    );
    report(args, &md, dir);
    for p in &mut c.procs {
        p.kill();
    }
}

fn catchup(args: &Args, dir: &Path, entries: u64, keys: u64) {
    let mut c = Cluster::start(args.port_base, &args.raftkv_args, dir);
    let leader = c.leader().expect("a leader");
    let victim = (leader + 1) % 3;
    eprintln!("kill -9 node {} (follower)", victim + 1);
    c.procs[victim].kill();
    let applied_at_kill = c.applied(leader);
    eprintln!("writing {entries} PUTs over {keys} keys through node {}...", leader + 1);
    let (w, secs, _) = counted_writes(&c, leader, keys, entries, args.conns);
    eprintln!("  done in {secs:.1} s ({:.0} req/s, {} errors)", w.rps, w.errors);
    std::thread::sleep(Duration::from_secs(2)); // let the leader's snapshot policy settle
    let ls = c.status(leader).unwrap();
    let commit = u(&ls, &["commit_index"]);
    let sent_before = u(&ls, &["log", "snapshots_sent"]);
    let spawned = Instant::now();
    c.respawn(victim);
    let took = loop {
        if let Some(s) = c.status(victim)
            && u(&s, &["applied_index"]) >= commit
        {
            break spawned.elapsed();
        }
        assert!(spawned.elapsed() < Duration::from_secs(900), "catch-up took over 15 minutes");
        std::thread::sleep(Duration::from_millis(5));
    };
    let ready = {
        let t = Instant::now();
        wait_until("the follower's /ready", Duration::from_secs(60), || c.ready(victim).is_some());
        took + t.elapsed()
    };
    let vs = c.status(victim).unwrap_or(Value::Null);
    let ls2 = c.status(leader).unwrap_or(Value::Null);
    let received = u(&vs, &["log", "snapshots_received"]);
    eprintln!("caught up in {} ms, snapshots received {received}", took.as_millis());
    let mut md = heading(
        "Catch-up",
        args,
        &format!(
            "`raftkv-soak catchup --entries {entries}`: a follower `kill -9`ed at applied index {applied_at_kill}, \
             {entries} PUTs over {keys} keys while it is down, then restarted"
        ),
    );
    md.push_str(
        "| entries missed | leader commit | leader log first index | leader snapshot index | through a snapshot? \
         | snapshot MiB | follower snapshot index | catch-up ms (applied ≥ commit) | /ready ms |\n\
         |---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        md,
        "| {} | {commit} | {} | {} | {} | {} | {} | **{}** | {} |",
        commit.saturating_sub(applied_at_kill),
        u(&ls, &["log", "first_index"]),
        u(&ls, &["log", "snapshot_index"]),
        if received > 0 {
            format!("yes ({received} received; leader sent {})", u(&ls2, &["log", "snapshots_sent"]) - sent_before)
        } else {
            "no (log entries only)".to_string()
        },
        mib(u(&vs, &["log", "snapshot_bytes_on_disk"])),
        u(&vs, &["log", "snapshot_index"]),
        took.as_millis(),
        ready.as_millis(),
    );
    let _ = writeln!(
        md,
        "\nwrk: {} responses at {:.0} req/s, {} errors ({} timeouts > 2 s).",
        w.requests, w.rps, w.errors, w.timeouts
    );
    report(args, &md, dir);
    for p in &mut c.procs {
        p.kill();
    }
}

fn join(args: &Args, dir: &Path, keys: u64, seconds: u64, rounds: u32, pause_ms: u64) {
    let c = Cluster::start(args.port_base, &args.raftkv_args, dir);
    let leader = c.leader().expect("a leader");
    eprintln!("writing {keys} distinct keys through node {}...", leader + 1);
    let (w, secs, _) = counted_writes(&c, leader, keys, keys, args.conns);
    eprintln!("  done in {secs:.1} s ({:.0} req/s, {} errors)", w.rps, w.errors);
    std::thread::sleep(Duration::from_secs(2));
    let ls = c.status(leader).unwrap();
    let commit = u(&ls, &["commit_index"]);
    let via = (leader + 1) % 3; // join through a follower, as an operator might
    let spawned = Instant::now();
    let (mut p4, addr4) = c.spawn_joiner(4, via);
    let status4 = |http: &HttpClient| http.get(&addr4, "/status").ok().filter(|r| r.status == 200).map(|r| r.json());
    wait_until("node 4 to be a learner", Duration::from_secs(120), || {
        c.member_role(leader, 4).as_deref() == Some("learner")
    });
    let t_learner = spawned.elapsed();
    wait_until("node 4 to apply the commit index", Duration::from_secs(900), || {
        status4(&c.http).is_some_and(|s| u(&s, &["applied_index"]) >= commit)
    });
    let t_caught = spawned.elapsed();
    let refusals = c.promote(via, 4);
    let t_voter = spawned.elapsed();
    let s4 = status4(&c.http).unwrap_or(Value::Null);
    let received = u(&s4, &["log", "snapshots_received"]);
    let rss4 = proc_kb(p4.pid(), "VmRSS");
    let removed_at = Instant::now();
    c.remove(leader, 4);
    let t_removed = removed_at.elapsed();
    p4.kill();
    eprintln!(
        "learner after {} ms, caught up after {} ms, voter after {} ms; removed in {} ms",
        t_learner.as_millis(),
        t_caught.as_millis(),
        t_voter.as_millis(),
        t_removed.as_millis()
    );

    // Throughput with and without membership churn, interleaved.
    let script = dir.join("random-put.lua");
    fs::write(&script, random_put_script(keys)).unwrap();
    let mut next_id = 5u64;
    let mut rows = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for churn in order {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let cycles = std::thread::scope(|s| {
                let churner = churn.then(|| {
                    let stop = stop.clone();
                    let c = &c;
                    let first = next_id;
                    s.spawn(move || {
                        let mut id = first;
                        let mut done = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let (mut p, _) = c.spawn_joiner(id, leader);
                            wait_until("the new node to be a learner", Duration::from_secs(120), || {
                                c.member_role(leader, id).as_deref() == Some("learner")
                            });
                            c.promote(leader, id);
                            c.remove(leader, id);
                            p.kill();
                            id += 1;
                            done += 1;
                            let paused = Instant::now();
                            while paused.elapsed() < Duration::from_millis(pause_ms)
                                && !stop.load(std::sync::atomic::Ordering::Relaxed)
                            {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                        (done, id)
                    })
                });
                let out = wrk_command(&script, args.conns, seconds, &c.addrs[leader]).output().expect("wrk");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let churned = churner.map(|h| h.join().unwrap());
                (parse_wrk(&out.stdout), churned)
            });
            let (w, churned) = cycles;
            if let Some((_, id)) = churned {
                next_id = id;
            }
            eprintln!("round {} {}: {:.0} req/s", round + 1, if churn { "churn" } else { "quiet" }, w.rps);
            rows.push((round + 1, churn, w, churned.map_or(0, |(d, _)| d)));
        }
    }
    let leader_kept = c.leader() == Some(leader);

    let mut md = heading(
        "Join and membership churn",
        args,
        &format!(
            "`raftkv-soak join --keys {keys} --seconds {seconds} --rounds {rounds} --pause-ms {pause_ms}`: \
             {keys} distinct keys written, \
             then node 4 started with `--join` through a follower, promoted once caught up, and removed"
        ),
    );
    md.push_str(
        "| leader commit | through a snapshot? | learner after ms | applied ≥ commit after ms | voter after ms \
         | promotions refused first | removal ms | node 4 RSS MiB |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        md,
        "| {commit} | {} | {} | **{}** | **{}** | {refusals} | {} | {} |",
        if received > 0 { format!("yes ({received})") } else { "no (log entries only)".to_string() },
        t_learner.as_millis(),
        t_caught.as_millis(),
        t_voter.as_millis(),
        t_removed.as_millis(),
        kb_mib(rss4),
    );
    if rounds > 0 {
        let _ = writeln!(
            md,
            "\nThen PUT load of random keys among the {keys}, {seconds} s per period; during a churn period a \
         new node (ids 5, 6, …) joins, is promoted and removed, again and again ({pause_ms} ms between two such \
         cycles).\n\n\
         | round | period | req/s | p50 ms | p99 ms | errors | membership cycles |\n|---:|---|---:|---:|---:|---:|---:|"
        );
        for (round, churn, w, cycles) in &rows {
            let _ = writeln!(
                md,
                "| {round} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
                if *churn { "churn" } else { "quiet" },
                w.rps,
                w.p50_us / 1000.0,
                w.p99_us / 1000.0,
                w.errors,
                if *churn { cycles.to_string() } else { String::new() }
            );
        }
    }
    let sum = |churn: bool| rows.iter().filter(|r| r.1 == churn).map(|r| r.2.rps).sum::<f64>();
    if rounds > 0 {
        let _ = writeln!(md, "\nchurn / quiet throughput (sums over the rounds): **{:.2}×**.", sum(true) / sum(false));
    }
    if !leader_kept {
        md.push_str("\n**The leader changed during the run**: an election is mixed into these figures.\n");
    }
    report(args, &md, dir);
}

fn main() {
    let args = Args::parse();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let dir = PathBuf::from(format!("target/bench/{stamp}"));
    fs::create_dir_all(&dir).unwrap();
    match args.cmd {
        Cmd::Soak { minutes, keys } => soak(&args, &dir, minutes, keys),
        Cmd::Restart { keys, writes, repeat } => restart(&args, &dir, keys, writes, repeat),
        Cmd::Catchup { entries, keys } => catchup(&args, &dir, entries, keys),
        Cmd::Join { keys, seconds, rounds, pause_ms } => join(&args, &dir, keys, seconds, rounds, pause_ms),
    }
}
