//! Real `raftkv` processes for fault injection: each node on its own
//! loopback address (127.a.b.i) so that iptables rules keyed on address
//! pairs cut exactly one link; kill -9, restart, SIGSTOP/SIGCONT.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftkv::client::HttpClient;

pub struct ChaosNode {
    pub id: u64,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// Joined the running cluster (`--join` through this address) rather
    /// than bootstrapping it.
    pub join: Option<SocketAddr>,
    /// Removed from the cluster and stopped for good (ids are never reused).
    pub retired: bool,
}

pub struct ChaosCluster {
    pub nodes: Vec<ChaosNode>,
    binary: PathBuf,
    extra_args: Vec<String>,
    /// The iptables comment that marks this run's rules.
    tag: String,
    /// Blocked directed links (from, to), as node ids.
    pub blocked: Vec<(u64, u64)>,
    /// TLS and client tokens on every node (see [`ChaosCluster::enable_tls`]).
    tls: Option<ChaosTls>,
}

/// Certificates (a CA, one per node, made as nodes are added), a tokens
/// file and the admin token every client of the run presents.
struct ChaosTls {
    certs: PathBuf,
    tokens_file: PathBuf,
    token: String,
}

/// The command line of node `id` of a cluster whose nodes listen on
/// `addrs` (node i at `addrs[i-1]`), with its data in `data_dir`.
pub fn node_command(binary: &Path, id: u64, addrs: &[SocketAddr], data_dir: &Path, extra_args: &[String]) -> Command {
    let peers: Vec<String> =
        (1..=addrs.len() as u64).filter(|&p| p != id).map(|p| format!("{p}={}", addrs[p as usize - 1])).collect();
    let mut cmd = Command::new(binary);
    cmd.arg("--id")
        .arg(id.to_string())
        .arg("--listen")
        .arg(addrs[id as usize - 1].to_string())
        .arg("--peers")
        .arg(peers.join(","));
    with_common_args(cmd, data_dir, extra_args)
}

/// A node that joins a running cluster through `via`.
fn join_command(
    binary: &Path,
    id: u64,
    addr: SocketAddr,
    via: SocketAddr,
    data_dir: &Path,
    extra: &[String],
) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--id").arg(id.to_string()).arg("--listen").arg(addr.to_string()).arg("--join").arg(via.to_string());
    with_common_args(cmd, data_dir, extra)
}

fn with_common_args(mut cmd: Command, data_dir: &Path, extra_args: &[String]) -> Command {
    cmd.arg("--data-dir").arg(data_dir).args(extra_args).env_remove("RUST_LOG");
    cmd
}

/// Node `id`'s certificate (made on its first start).
fn raftkv_tools_certs(certs: &Path, id: u64, ip: IpAddr) -> std::io::Result<()> {
    crate::gen_certs(certs, &[(id, ip)]).map_err(std::io::Error::other)
}

fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()?.port())
}

/// Removes the iptables rules tagged `<prefix><pid>` whose process is gone
/// (left behind by an interrupted run); rules of live runs stay.
pub fn remove_stale_rules(prefix: &str) {
    let Ok(out) = Command::new("iptables").arg("-S").output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(pos) = line.find(prefix) else { continue };
        let pid: String = line[pos + prefix.len()..].chars().take_while(char::is_ascii_digit).collect();
        let alive = !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists();
        if line.starts_with("-A ") && !alive {
            let args: Vec<String> = line[3..].split_whitespace().map(|s| s.trim_matches('"').to_string()).collect();
            let _ = Command::new("iptables").arg("-D").args(&args).status();
        }
    }
}

impl ChaosCluster {
    pub fn new(
        binary: &Path,
        n: u64,
        dir: &Path,
        net: (u8, u8),
        extra_args: Vec<String>,
    ) -> std::io::Result<ChaosCluster> {
        let mut nodes = Vec::new();
        for id in 1..=n {
            let ip = IpAddr::V4(Ipv4Addr::new(127, net.0, net.1, id as u8));
            nodes.push(ChaosNode {
                id,
                addr: SocketAddr::new(ip, free_port(ip)?),
                data_dir: dir.join(format!("node{id}")),
                log_path: dir.join(format!("node{id}.log")),
                child: None,
                paused: false,
                join: None,
                retired: false,
            });
        }
        let tag = format!("raftkv-chaos-{}", std::process::id());
        Ok(ChaosCluster { nodes, binary: binary.to_path_buf(), extra_args, tag, blocked: Vec::new(), tls: None })
    }

    /// From now on nodes start with TLS (mutual between members) and
    /// client tokens, and [`ChaosCluster::client`] speaks TLS with an
    /// admin token. Call before the first start.
    pub fn enable_tls(&mut self, dir: &Path) -> Result<(), String> {
        let token = raftkv::auth::new_token();
        let tokens_file = dir.join("tokens");
        let line = raftkv::auth::token_line("chaos", raftkv::auth::Role::Admin, &token);
        fs::write(&tokens_file, line + "\n").map_err(|e| format!("{}: {e}", tokens_file.display()))?;
        self.tls = Some(ChaosTls { certs: dir.join("tls"), tokens_file, token });
        Ok(())
    }

    /// A client for this cluster's nodes (TLS and token when on).
    pub fn client(&self, timeout: Duration) -> HttpClient {
        let http = HttpClient::new(timeout);
        match &self.tls {
            Some(t) => {
                http.with_ca_file(&t.certs.join("ca.pem")).expect("the run's CA").with_token(Some(t.token.clone()))
            }
            None => http,
        }
    }

    pub fn node(&self, id: u64) -> &ChaosNode {
        &self.nodes[id as usize - 1]
    }

    /// The nodes that are members (not retired).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| !n.retired).map(|n| n.id).collect()
    }

    /// Starts a new node (the next id, an empty data directory) that joins
    /// the cluster through member `via` as a learner.
    pub fn add_joining(&mut self, via: u64) -> std::io::Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        let IpAddr::V4(first) = self.nodes[0].addr.ip() else { unreachable!("IPv4 loopback") };
        let [a, b, c, _] = first.octets();
        let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, id as u8));
        let dir = self.nodes[0].data_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.nodes.push(ChaosNode {
            id,
            addr: SocketAddr::new(ip, free_port(ip)?),
            data_dir: dir.join(format!("node{id}")),
            log_path: dir.join(format!("node{id}.log")),
            child: None,
            paused: false,
            join: Some(self.node(via).addr),
            retired: false,
        });
        self.start(id)?;
        Ok(id)
    }

    /// Stops a node that was removed from the cluster, for good.
    pub fn retire(&mut self, id: u64) {
        self.kill(id);
        self.nodes[id as usize - 1].retired = true;
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.to_string()
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        let addrs: Vec<SocketAddr> = self.nodes.iter().filter(|n| n.join.is_none()).map(|n| n.addr).collect();
        let node = &self.nodes[id as usize - 1];
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        let mut cmd = match node.join {
            Some(via) => join_command(&self.binary, id, node.addr, via, &node.data_dir, &self.extra_args),
            None => node_command(&self.binary, id, &addrs, &node.data_dir, &self.extra_args),
        };
        if let Some(t) = &self.tls {
            raftkv_tools_certs(&t.certs, id, node.addr.ip())?;
            cmd.args(crate::tls_node_args(&t.certs, id, &t.tokens_file)).env("RAFTKV_JOIN_TOKEN", &t.token);
        }
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        let node = &mut self.nodes[id as usize - 1];
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut c) = node.child.take() {
            if node.paused {
                signal(c.id(), "CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        node.paused = false;
    }

    pub fn pause(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(c) = &node.child
            && !node.paused
        {
            signal(c.id(), "STOP");
            node.paused = true;
        }
    }

    pub fn resume(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(c) = &node.child
            && node.paused
        {
            signal(c.id(), "CONT");
            node.paused = false;
        }
    }

    fn rule(&self, op: &str, from: u64, to: u64) -> bool {
        Command::new("iptables")
            .args([
                op,
                "INPUT",
                "-s",
                &self.node(from).addr.ip().to_string(),
                "-d",
                &self.node(to).addr.ip().to_string(),
            ])
            .args(["-j", "DROP", "-m", "comment", "--comment", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Drops every packet from `from` to `to`.
    pub fn block(&mut self, from: u64, to: u64) -> bool {
        if from == to || self.blocked.contains(&(from, to)) {
            return true;
        }
        let ok = self.rule("-I", from, to);
        if ok {
            self.blocked.push((from, to));
        }
        ok
    }

    pub fn block_both(&mut self, a: u64, b: u64) -> bool {
        self.block(a, b) && self.block(b, a)
    }

    pub fn heal_network(&mut self) {
        for (from, to) in std::mem::take(&mut self.blocked) {
            self.rule("-D", from, to);
        }
    }

    /// Ends every fault: network healed, paused nodes resumed, dead ones restarted.
    pub fn heal_all(&mut self) -> std::io::Result<()> {
        self.heal_network();
        for id in self.ids() {
            self.resume(id);
            if !self.is_up(id) {
                self.start(id)?;
            }
        }
        Ok(())
    }

    /// The leader that the reachable nodes agree on, if any.
    pub fn leader(&self) -> Option<u64> {
        let http = self.client(Duration::from_millis(300));
        for n in &self.nodes {
            if n.child.is_none() || n.paused || n.retired {
                continue;
            }
            if let Ok(r) = http.get(&n.addr.to_string(), "/status")
                && r.status == 200
                && r.json()["role"] == "leader"
            {
                return Some(n.id);
            }
        }
        None
    }

    /// Waits until some node is leader and every node is ready.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let http = self.client(Duration::from_millis(500));
        let start = Instant::now();
        while start.elapsed() < timeout {
            let all = self
                .nodes
                .iter()
                .filter(|n| !n.retired)
                .all(|n| http.get(&n.addr.to_string(), "/ready").is_ok_and(|r| r.status == 200));
            if all {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Is a majority of nodes up, running and connected both ways?
    pub fn majority_connected(&self) -> bool {
        let ids = self.ids();
        let healthy = |id: u64| self.is_up(id) && !self.node(id).paused;
        let linked = |a: u64, b: u64| !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a));
        let quorum = ids.len() / 2 + 1;
        // Largest group of healthy nodes that are all linked to each other
        // (cluster sizes are tiny: try every subset).
        (0u32..(1 << ids.len())).any(|mask| {
            let group: Vec<u64> =
                ids.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, &id)| id).collect();
            group.len() >= quorum
                && group.iter().all(|&a| healthy(a))
                && group.iter().all(|&a| group.iter().all(|&b| a == b || linked(a, b)))
        })
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        self.heal_network();
        for id in self.ids() {
            self.kill(id);
        }
    }
}
