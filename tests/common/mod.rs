//! Black-box harness: real `raftkv` processes on loopback, driven over HTTP.
//!
//! Each cluster gets its own 127.x.y.0/24 (node i listens on 127.x.y.i), so
//! tests running in parallel never share an address and iptables rules
//! between two nodes cut exactly that link. Processes are killed when the
//! `Cluster` is dropped, and iptables rules when their `Partition` is.

#![allow(dead_code)]

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use raftkv::client::{HttpClient, Response};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_raftkv");

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// `RAFTKV_TEST_TLS=1` (`make test-tls`): every cluster of the black-box
/// tests runs with TLS, mutual TLS between members and client tokens, and
/// the tests' clients use the CA and an admin token.
pub fn tls_everywhere() -> bool {
    std::env::var("RAFTKV_TEST_TLS").is_ok_and(|v| v == "1")
}

/// A cluster's TLS material: the CA and member certificates that
/// `scripts/gen-certs.sh` made, and an admin token in a tokens file.
pub struct TlsSetup {
    pub dir: PathBuf,
    pub admin_token: String,
    pub tokens_file: PathBuf,
}

impl TlsSetup {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.pem"))
    }

    pub fn key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}-key.pem"))
    }
}

/// Runs `scripts/gen-certs.sh dir id=ip...`.
pub fn gen_certs(dir: &std::path::Path, members: &[(u64, IpAddr)]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(members.iter().map(|(id, ip)| format!("{id}={ip}")))
        .output()
        .expect("run scripts/gen-certs.sh");
    assert!(out.status.success(), "gen-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
}

/// The command line of node `id` listening on `addr`: a bootstrap member
/// of the cluster whose first nodes listen on `bootstrap`, or (`join`) a
/// node that joins it through that address.
fn node_command(
    id: u64,
    addr: SocketAddr,
    bootstrap: &[(u64, SocketAddr)],
    join: Option<SocketAddr>,
    data_dir: &std::path::Path,
    extra_args: &[String],
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--id", &id.to_string(), "--listen", &addr.to_string()]);
    match join {
        Some(j) => cmd.args(["--join", &j.to_string()]),
        None => {
            let peers: Vec<String> =
                bootstrap.iter().filter(|(p, _)| *p != id).map(|(p, a)| format!("{p}={a}")).collect();
            cmd.args(["--peers", &peers.join(",")])
        }
    };
    cmd.arg("--data-dir").arg(data_dir).args(extra_args).env_remove("RUST_LOG");
    cmd
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    /// Started with `--join` through this address instead of `--peers`.
    pub join: Option<SocketAddr>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub client: HttpClient,
    pub args: Vec<String>,
    /// The /24 this cluster lives in: 127.a.b.0
    pub net: (u8, u8),
    /// Set: the nodes run with TLS and client tokens.
    pub tls: Option<TlsSetup>,
}

fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a free port").local_addr().unwrap().port()
}

impl Cluster {
    /// Starts an `n`-node cluster with default settings plus `args`
    /// (with TLS and tokens under `RAFTKV_TEST_TLS=1`).
    pub fn start_with(n: u64, args: &[&str]) -> Cluster {
        Cluster::start_opts(n, args, tls_everywhere())
    }

    /// Plaintext even under `RAFTKV_TEST_TLS=1`: for tests that write raw
    /// HTTP/1.1 bytes to a socket (slow clients).
    pub fn start_plain(n: u64, args: &[&str]) -> Cluster {
        Cluster::start_opts(n, args, false)
    }

    /// Starts an `n`-node cluster with TLS, mutual TLS and client tokens.
    pub fn start_tls(n: u64, args: &[&str]) -> Cluster {
        Cluster::start_opts(n, args, true)
    }

    fn start_opts(n: u64, args: &[&str], tls: bool) -> Cluster {
        let seq = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let net = (20 + (pid % 200) as u8, 1 + ((pid / 200 + seq) % 250) as u8);
        let dir = std::env::temp_dir().join(format!("raftkv-test-{pid}-{seq}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<Node> = (1..=n)
            .map(|id| {
                let ip = IpAddr::V4(Ipv4Addr::new(127, net.0, net.1, id as u8));
                Node {
                    id,
                    addr: SocketAddr::new(ip, free_port(ip)),
                    data_dir: dir.join(format!("node{id}")),
                    log_path: dir.join(format!("node{id}.log")),
                    child: None,
                    join: None,
                }
            })
            .collect();
        let mut client = HttpClient::new(Duration::from_secs(10));
        let tls = if !tls {
            None
        } else {
            let tls_dir = dir.join("tls");
            let members: Vec<(u64, IpAddr)> = nodes.iter().map(|n: &Node| (n.id, n.addr.ip())).collect();
            gen_certs(&tls_dir, &members);
            let admin_token = raftkv::auth::new_token();
            let tokens_file = dir.join("tokens");
            fs::write(&tokens_file, raftkv::auth::token_line("test-admin", raftkv::auth::Role::Admin, &admin_token))
                .unwrap();
            client = client.with_ca_file(&tls_dir.join("ca.pem")).unwrap().with_token(Some(admin_token.clone()));
            Some(TlsSetup { dir: tls_dir, admin_token, tokens_file })
        };
        let mut c = Cluster { dir, nodes, client, args: args.iter().map(|s| s.to_string()).collect(), net, tls };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    pub fn start(n: u64) -> Cluster {
        Cluster::start_with(n, &[])
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.to_string()
    }

    pub fn ip(&self, id: u64) -> IpAddr {
        self.node(id).addr.ip()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// The command line node `id` is started with.
    pub fn command(&self, id: u64) -> Command {
        let bootstrap: Vec<(u64, SocketAddr)> =
            self.nodes.iter().filter(|n| n.join.is_none()).map(|n| (n.id, n.addr)).collect();
        let n = self.node(id);
        let mut cmd = node_command(id, n.addr, &bootstrap, n.join, &n.data_dir, &self.args);
        if !self.args.iter().any(|a| a == "--log") {
            cmd.arg("--log").arg("info");
        }
        self.secure(id, &mut cmd);
        cmd
    }

    /// With TLS on: member `id`'s certificate, the CA, and the tokens file
    /// (unless the test gives its own) on a node's command line.
    pub fn secure(&self, id: u64, cmd: &mut Command) {
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(tls.cert(id)).arg("--key-file").arg(tls.key(id));
            cmd.arg("--trusted-ca-file").arg(tls.ca());
            if !self.args.iter().any(|a| a == "--tokens-file") {
                cmd.arg("--tokens-file").arg(&tls.tokens_file).env("RAFTKV_JOIN_TOKEN", &tls.admin_token);
            }
        }
    }

    /// The cluster's client (TLS and token when on) with another timeout.
    pub fn client_with(&self, timeout: Duration) -> HttpClient {
        self.client.clone().with_timeouts(timeout.min(Duration::from_secs(2)), timeout)
    }

    /// A client for `/raft/*` requests made by hand: with TLS, it presents
    /// member `id`'s certificate.
    pub fn peer_client(&self, id: u64) -> HttpClient {
        let http = self.client_with(Duration::from_secs(5));
        match &self.tls {
            Some(tls) => http.with_client_cert(&tls.cert(id), &tls.key(id)).unwrap(),
            None => http,
        }
    }

    /// What `raftkvctl` needs in its environment to reach this cluster.
    pub fn ctl_env(&self, cmd: &mut Command) {
        cmd.env_remove("RAFTKV_ENDPOINTS");
        match &self.tls {
            Some(tls) => cmd.env("RAFTKV_CACERT", tls.ca()).env("RAFTKV_TOKEN", &tls.admin_token),
            None => cmd.env_remove("RAFTKV_CACERT").env_remove("RAFTKV_TOKEN"),
        };
    }

    pub fn spawn(&mut self, id: u64) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.node(id).log_path).unwrap();
        let child = self
            .command(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start raftkv");
        self.nodes[id as usize - 1].child = Some(child);
        let addr = self.addr(id);
        let client = self.client_with(Duration::from_millis(500));
        eventually(Duration::from_secs(10), &format!("node {id} to answer /health"), || {
            if let Some(status) = self.exit_status(id) {
                panic!("node {id} exited at start with {status}; log:\n{}", self.log(id));
            }
            client.get(&addr, "/health").ok().filter(|r| r.status == 200)
        });
    }

    /// A new node, the next id, with an empty data directory, started with
    /// `--join` through node `via`: it asks to be added as a learner.
    pub fn add_joining_node(&mut self, via: u64) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let ip = IpAddr::V4(Ipv4Addr::new(127, self.net.0, self.net.1, id as u8));
        self.nodes.push(Node {
            id,
            addr: SocketAddr::new(ip, free_port(ip)),
            data_dir: self.dir.join(format!("node{id}")),
            log_path: self.dir.join(format!("node{id}.log")),
            child: None,
            join: Some(self.node(via).addr),
        });
        if let Some(tls) = &self.tls {
            gen_certs(&tls.dir, &[(id, ip)]);
        }
        self.spawn(id);
        id
    }

    /// The members as node `id` sees them (`GET /cluster/members`).
    pub fn members(&self, id: u64) -> Value {
        let r = self.client.get(&self.addr(id), "/cluster/members").expect("GET /cluster/members");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Waits until node `id` sees `voters` as voters and `learners` as learners, committed.
    pub fn wait_members(&self, id: u64, voters: &[u64], learners: &[u64], timeout: Duration) {
        eventually(timeout, &format!("node {id} to see voters {voters:?}, learners {learners:?}"), || {
            let r = self.client_with(Duration::from_millis(500)).get(&self.addr(id), "/cluster/members").ok()?;
            let v = r.json();
            let ids = |role: &str| -> Vec<u64> {
                v["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["role"] == role)
                    .filter_map(|m| m["id"].as_u64())
                    .collect()
            };
            (v["config_committed"] == true && ids("voter") == voters && ids("learner") == learners).then_some(())
        });
    }

    /// The exit status of node `id` if it has exited.
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.nodes[id as usize - 1].child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes[id as usize - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self.node(id).child.as_ref().expect("node running").id();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig} {pid}");
    }

    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
    }

    pub fn log(&self, id: u64) -> String {
        fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    pub fn status(&self, id: u64) -> Option<Value> {
        let r = self.client_with(Duration::from_millis(500)).get(&self.addr(id), "/status").ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Waits until exactly one live node is leader and every live node
    /// agrees on it and on its term. Returns the leader's id.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        self.wait_leader_among(&self.live_ids(), timeout)
    }

    pub fn wait_leader_among(&self, ids: &[u64], timeout: Duration) -> u64 {
        eventually(timeout, "a single leader that every live node agrees on", || {
            let statuses: Vec<Value> = ids.iter().map(|&id| self.status(id)).collect::<Option<_>>()?;
            let leaders: Vec<&Value> = statuses.iter().filter(|s| s["role"] == "leader").collect();
            if leaders.len() != 1 {
                return None;
            }
            let (leader, term) = (leaders[0]["id"].as_u64()?, leaders[0]["term"].as_u64()?);
            statuses
                .iter()
                .all(|s| s["leader"].as_u64() == Some(leader) && s["term"].as_u64() == Some(term))
                .then_some(leader)
        })
    }

    pub fn followers(&self, leader: u64) -> Vec<u64> {
        self.live_ids().into_iter().filter(|&i| i != leader).collect()
    }

    pub fn put(&self, id: u64, key: &str, value: &str) -> Response {
        self.client.put_json(&self.addr(id), &format!("/kv/{key}"), &json!({"value": value})).expect("PUT")
    }

    pub fn get(&self, id: u64, key: &str) -> Response {
        self.client.get(&self.addr(id), &format!("/kv/{key}")).expect("GET")
    }

    pub fn get_stale(&self, id: u64, key: &str) -> Response {
        self.client.get(&self.addr(id), &format!("/kv/{key}?consistency=stale")).expect("GET")
    }

    /// Waits until node `id` has applied at least `index`.
    pub fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        eventually(timeout, &format!("node {id} to apply index {index}"), || {
            let s = self.status(id)?;
            (s["applied_index"].as_u64()? >= index).then_some(())
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster files kept in {}", self.dir.display());
        }
    }
}

/// iptables rules that drop traffic between node addresses; removed on drop.
pub struct Partition {
    rules: Vec<(IpAddr, IpAddr)>,
}

pub fn iptables_available() -> bool {
    Command::new("iptables").arg("-S").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn iptables(op: &str, from: IpAddr, to: IpAddr) -> bool {
    Command::new("iptables")
        .args([
            op,
            "INPUT",
            "-s",
            &from.to_string(),
            "-d",
            &to.to_string(),
            "-j",
            "DROP",
            "-m",
            "comment",
            "--comment",
            "raftkv-test",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

impl Partition {
    pub fn new() -> Partition {
        assert!(iptables_available(), "iptables is needed (as root) for partition tests; .ci/run installs it");
        Partition { rules: Vec::new() }
    }

    /// Drops packets from `from` to `to`.
    pub fn block(&mut self, from: IpAddr, to: IpAddr) {
        assert!(iptables("-I", from, to), "iptables -I failed");
        self.rules.push((from, to));
    }

    /// Cuts node `id` off from every other node of the cluster, both ways.
    pub fn isolate(&mut self, c: &Cluster, id: u64) {
        for other in c.ids() {
            if other != id {
                self.block(c.ip(id), c.ip(other));
                self.block(c.ip(other), c.ip(id));
            }
        }
    }

    pub fn heal(&mut self) {
        for (from, to) in self.rules.drain(..) {
            iptables("-D", from, to);
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}
