//! Node settings from flags, environment variables and a TOML file
//! (DESIGN §2). Precedence: flag or env var, then the file, then defaults.
//! Everything is validated before the node starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::auth::{ClusterSecret, Tokens};
use crate::raft::NodeId;
use crate::tls::{Tls, TlsFiles};

/// A raftkv node: one member of a Raft-replicated key-value store.
#[derive(Parser, Debug, Default)]
#[command(name = "raftkv", version, about)]
pub struct Args {
    /// TOML file with any of the settings below (flags and env vars override it).
    #[arg(long, env = "RAFTKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "RAFTKV_ID")]
    pub id: Option<u64>,
    /// Address for the HTTP API and peer traffic, e.g. 127.0.0.1:8001.
    #[arg(long, env = "RAFTKV_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The other voters, as id=host:port,id=host:port.
    #[arg(long, env = "RAFTKV_PEERS")]
    pub peers: Option<String>,
    /// Join a running cluster through any of its nodes (host:port): this
    /// node asks to be added as a learner and gets the data from the leader.
    /// Only with an empty data directory; later starts ignore it. Not with --peers.
    #[arg(long, env = "RAFTKV_JOIN")]
    pub join: Option<SocketAddr>,
    /// With --join to a cluster that has client tokens: an admin token
    /// (better passed in the environment than on the command line).
    #[arg(long, env = "RAFTKV_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Directory for the write-ahead log.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, RUST_LOG syntax, e.g. "info,raftkv::election=trace".
    #[arg(long = "log", env = "RAFTKV_LOG")]
    pub log: Option<String>,
    /// Leader heartbeat interval in milliseconds (default 50).
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds; each wait is random in [t, 2t) (default 300).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Clock resolution of the consensus core in milliseconds (default 10).
    #[arg(long, env = "RAFTKV_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// How long a client request may take before it is answered 504 (default 3000).
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// How long a request to a peer may take before it counts as failed (default 1000).
    #[arg(long, env = "RAFTKV_PEER_TIMEOUT_MS")]
    pub peer_timeout_ms: Option<u64>,
    /// How long a client or peer may take to send a request's head, and then
    /// its whole body; past it, 408 and the connection is closed. Also how
    /// long an idle kept-alive connection is kept (default 5000).
    #[arg(long, env = "RAFTKV_REQUEST_READ_TIMEOUT_MS")]
    pub request_read_timeout_ms: Option<u64>,
    /// Largest value accepted, in bytes (default 1048576).
    #[arg(long, env = "RAFTKV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Most comparisons, and most operations, in one transaction (default 128).
    #[arg(long, env = "RAFTKV_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// A client session unused this long (by the leaders' clocks in the
    /// log) expires; a write on it is then refused (default 600000).
    #[arg(long, env = "RAFTKV_SESSION_TTL_MS")]
    pub session_ttl_ms: Option<u64>,
    /// Most client sessions kept; opening one more evicts the session idle
    /// longest (default 10000).
    #[arg(long, env = "RAFTKV_MAX_SESSIONS")]
    pub max_sessions: Option<u64>,
    /// Watch history: changes of the last this many revisions are kept for
    /// watchers to start from (default 10000, one snapshot interval: the
    /// window is in every snapshot; 0: watchers start now).
    #[arg(long, env = "RAFTKV_WATCH_HISTORY_REVISIONS")]
    pub watch_history_revisions: Option<u64>,
    /// Watch history: at most this many bytes of it (default 8388608).
    #[arg(long, env = "RAFTKV_WATCH_HISTORY_BYTES")]
    pub watch_history_bytes: Option<u64>,
    /// Batches of changes (what the node applied in one go) a watcher may
    /// have unread before it is cancelled as too slow (default 1024).
    #[arg(long, env = "RAFTKV_WATCH_BUFFER")]
    pub watch_buffer: Option<usize>,
    /// How often every watcher is told the current revision (default 5000).
    #[arg(long, env = "RAFTKV_WATCH_PROGRESS_MS")]
    pub watch_progress_ms: Option<u64>,
    /// Most watchers (streams and blocking reads) at once (default 10000).
    #[arg(long, env = "RAFTKV_MAX_WATCHERS")]
    pub max_watchers: Option<usize>,
    /// Unanswered AppendEntries allowed per follower (default 1: on a fast
    /// network the CPU is the bottleneck, and fewer, larger batches win;
    /// raise it when round trips are long).
    #[arg(long, env = "RAFTKV_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// HTTP worker threads (default 2).
    #[arg(long, env = "RAFTKV_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Most client writes and reads a node keeps waiting at once; beyond
    /// it, requests get 503 overloaded (never proposed) (default 4096).
    #[arg(long, env = "RAFTKV_MAX_PENDING")]
    pub max_pending: Option<usize>,
    /// Under a steady inflow, the consensus actor hands what arrived to the
    /// WAL and the followers at the latest after this many inputs; 0: only
    /// when its mailbox is empty (default 256).
    #[arg(long, env = "RAFTKV_FLUSH_MAX_INPUTS")]
    pub flush_max_inputs: Option<usize>,
    /// ... or once the oldest input not yet handed on is this old, in
    /// microseconds; 0: no time limit (default 1000).
    #[arg(long, env = "RAFTKV_FLUSH_MAX_DELAY_US")]
    pub flush_max_delay_us: Option<u64>,
    /// Take a snapshot (and compact the log) once this many entries were
    /// applied since the last one; 0: not by count (default 10000).
    #[arg(long, env = "RAFTKV_SNAPSHOT_ENTRIES")]
    pub snapshot_entries: Option<u64>,
    /// ... or once the entries applied since the last one add up to this
    /// many bytes; 0: not by size (default 67108864).
    #[arg(long, env = "RAFTKV_SNAPSHOT_BYTES")]
    pub snapshot_bytes: Option<u64>,
    /// Entries kept in the log behind a snapshot, so a follower that is a
    /// little behind still gets entries rather than a snapshot (default 5000).
    #[arg(long, env = "RAFTKV_SNAPSHOT_KEEP_ENTRIES")]
    pub snapshot_keep_entries: Option<u64>,
    /// ... but only once the log since the last snapshot is at least this
    /// many times that snapshot's size, so that writing snapshots costs at
    /// most 1/ratio of the log's own IO however large the state; 0: off
    /// (default 1.0).
    #[arg(long, env = "RAFTKV_SNAPSHOT_LOG_RATIO")]
    pub snapshot_log_ratio: Option<f64>,
    /// Size at which the write-ahead log starts a new segment file; whole
    /// segments are deleted once a snapshot covers them (default 67108864).
    #[arg(long, env = "RAFTKV_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// Bytes per request when a snapshot is streamed to a follower (default 1048576).
    #[arg(long, env = "RAFTKV_SNAPSHOT_CHUNK_BYTES")]
    pub snapshot_chunk_bytes: Option<usize>,
    /// How long one snapshot chunk may take before the transfer is given up
    /// (and retried) (default 10000).
    #[arg(long, env = "RAFTKV_SNAPSHOT_CHUNK_TIMEOUT_MS")]
    pub snapshot_chunk_timeout_ms: Option<u64>,
    /// A learner is promoted to voter only while its log is within this
    /// many entries of the leader's (default 1000).
    #[arg(long, env = "RAFTKV_PROMOTE_MAX_LAG")]
    pub promote_max_lag: Option<u64>,
    /// Client tokens, one per line: `<name> <read|write|admin> sha256:<hex>`
    /// (`raftkvctl token new`). Set: every request but /health and /ready
    /// needs `Authorization: Bearer <token>`. Unset: no client auth.
    #[arg(long, env = "RAFTKV_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// With a tokens file: serve /status and /metrics without a token.
    #[arg(long, env = "RAFTKV_PUBLIC_STATUS")]
    pub public_status: Option<bool>,
    /// A file holding the secret (16+ characters) every node of the cluster
    /// shares: /raft/* requests without it are refused, and this node sends
    /// it to its peers. Unset: /raft/* is open.
    #[arg(long, env = "RAFTKV_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// This node's TLS certificate chain (PEM). With --key-file and
    /// --trusted-ca-file: the port speaks only TLS, /raft/* needs a client
    /// certificate of that CA naming the sending member, and requests to
    /// peers present this certificate. SIGHUP reloads the three files.
    #[arg(long, env = "RAFTKV_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, env = "RAFTKV_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The cluster CA (PEM; several certificates trust several CAs, e.g.
    /// the old and the new one during a rotation).
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Most connections a node holds open at once; beyond it, new ones wait
    /// in the kernel's backlog (default 4096).
    #[arg(long, env = "RAFTKV_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

/// The same settings as they may appear in the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub peers: Option<PeersSetting>,
    pub join: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub tick_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub peer_timeout_ms: Option<u64>,
    pub request_read_timeout_ms: Option<u64>,
    pub max_value_bytes: Option<usize>,
    pub max_txn_ops: Option<usize>,
    pub session_ttl_ms: Option<u64>,
    pub max_sessions: Option<u64>,
    pub watch_history_revisions: Option<u64>,
    pub watch_history_bytes: Option<u64>,
    pub watch_buffer: Option<usize>,
    pub watch_progress_ms: Option<u64>,
    pub max_watchers: Option<usize>,
    pub max_inflight: Option<usize>,
    pub http_workers: Option<usize>,
    pub max_pending: Option<usize>,
    pub flush_max_inputs: Option<usize>,
    pub flush_max_delay_us: Option<u64>,
    pub snapshot_entries: Option<u64>,
    pub snapshot_bytes: Option<u64>,
    pub snapshot_keep_entries: Option<u64>,
    pub snapshot_log_ratio: Option<f64>,
    pub wal_segment_bytes: Option<u64>,
    pub snapshot_chunk_bytes: Option<usize>,
    pub snapshot_chunk_timeout_ms: Option<u64>,
    pub promote_max_lag: Option<u64>,
    pub tokens_file: Option<PathBuf>,
    pub public_status: Option<bool>,
    pub cluster_secret_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub max_connections: Option<usize>,
}

/// `peers = "2=host:port,3=host:port"` or `peers = ["2=host:port", ...]`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum PeersSetting {
    One(String),
    Many(Vec<String>),
}

/// Validated settings of one node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The other voters and their addresses: the bootstrap configuration,
    /// used only when the data directory is new (afterwards the
    /// configuration comes from the log; `crate::cluster`).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// A node of a running cluster to join through (empty data directory only).
    pub join: Option<SocketAddr>,
    pub join_token: Option<String>,
    pub data_dir: PathBuf,
    pub log: String,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub tick: Duration,
    pub request_timeout: Duration,
    pub peer_timeout: Duration,
    /// Deadline for a request's head to arrive (and for an idle kept-alive
    /// connection to start its next request), and, counted from when the
    /// handler starts reading, for its whole body: 408 past it.
    pub request_read_timeout: Duration,
    pub max_value_bytes: usize,
    /// Most comparisons, and most operations, in one transaction.
    pub max_txn_ops: usize,
    /// Sessions: idle time before expiry, and most kept (written into the
    /// log by the leader that opens a session, so all nodes agree).
    pub session_ttl: Duration,
    pub max_sessions: u64,
    pub watch_history: crate::kv::watch::Limits,
    pub watch_buffer: usize,
    pub watch_progress: Duration,
    pub max_watchers: usize,
    pub max_inflight: usize,
    pub http_workers: usize,
    pub max_pending: usize,
    /// Flush the consensus core inline after this many inputs (0: never).
    pub flush_max_inputs: usize,
    /// ... or when the oldest unflushed input is this old (zero: never).
    pub flush_max_delay: Duration,
    /// Snapshot policy: entries or bytes applied since the last snapshot
    /// (0: that trigger is off), and the log tail kept behind it.
    pub snapshot_entries: u64,
    pub snapshot_bytes: u64,
    pub snapshot_keep_entries: u64,
    pub snapshot_log_ratio: f64,
    pub wal_segment_bytes: u64,
    pub snapshot_chunk_bytes: usize,
    pub snapshot_chunk_timeout: Duration,
    pub promote_max_lag: u64,
    /// Client tokens (None: no client authentication).
    pub tokens: Option<Tokens>,
    pub public_status: bool,
    /// The secret peers share (None: /raft/* is open).
    pub cluster_secret: Option<ClusterSecret>,
    /// TLS on the port and to peers (None: plaintext).
    pub tls: Option<Arc<Tls>>,
    pub max_connections: usize,
}

/// The largest snapshot chunk a node sends or accepts.
pub const MAX_SNAPSHOT_CHUNK: usize = 64 << 20;

impl Settings {
    /// Every voter, this node included.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.peers.keys().copied().collect();
        v.push(self.id);
        v.sort_unstable();
        v
    }

    pub fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.id { Some(self.listen) } else { self.peers.get(&id).copied() }
    }

    pub fn election_ticks(&self) -> u64 {
        (self.election_timeout.as_millis() / self.tick.as_millis()).max(2) as u64
    }

    pub fn heartbeat_ticks(&self) -> u64 {
        (self.heartbeat.as_millis() / self.tick.as_millis()).max(1) as u64
    }
}

/// Parses `2=127.0.0.1:8002,3=127.0.0.1:8003`.
pub fn parse_peers(items: &[String]) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for item in items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("peer '{item}' is not id=host:port"))?;
        let id: NodeId = id.trim().parse().map_err(|_| format!("peer id '{id}' is not a positive integer"))?;
        if id == 0 {
            return Err("peer id 0 is not allowed (ids are positive)".into());
        }
        let addr: SocketAddr = addr.trim().parse().map_err(|_| format!("peer address '{addr}' is not host:port"))?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("peer {id} is listed twice"));
        }
    }
    Ok(peers)
}

impl Args {
    /// Merges the flags with the config file (if any), applies defaults and validates.
    pub fn resolve(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
                toml::from_str::<FileSettings>(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let id = self.id.or(file.id).ok_or("missing --id (or `id` in the config file)")?;
        if id == 0 {
            return Err("--id must be a positive integer".into());
        }
        let listen = self.listen.or(file.listen).ok_or("missing --listen (or `listen` in the config file)")?;
        let peer_items: Vec<String> = match (self.peers, file.peers) {
            (Some(s), _) => vec![s],
            (None, Some(PeersSetting::One(s))) => vec![s],
            (None, Some(PeersSetting::Many(v))) => v,
            (None, None) => vec![],
        };
        let peers = parse_peers(&peer_items)?;
        if peers.contains_key(&id) {
            return Err(format!("--peers lists this node's own id {id}; list only the other voters"));
        }
        if peers.values().any(|a| *a == listen) {
            return Err(format!("--peers lists this node's own address {listen}"));
        }
        let join = self.join.or(file.join);
        if join.is_some() && !peers.is_empty() {
            return Err("--join and --peers exclude each other: a new cluster starts from --peers, a node joins \
                        a running one with --join"
                .into());
        }
        if join == Some(listen) {
            return Err(format!("--join {listen} is this node's own address; name a node of the running cluster"));
        }
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(format!("data/node{id}")));
        let ms = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_millis(flag.or(file).unwrap_or(default))
        };
        let s = Settings {
            id,
            listen,
            peers,
            join,
            join_token: self.join_token,
            data_dir,
            log: self.log.or(file.log).or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".into()),
            heartbeat: ms(self.heartbeat_ms, file.heartbeat_ms, 50),
            election_timeout: ms(self.election_timeout_ms, file.election_timeout_ms, 300),
            tick: ms(self.tick_ms, file.tick_ms, 10),
            request_timeout: ms(self.request_timeout_ms, file.request_timeout_ms, 3000),
            peer_timeout: ms(self.peer_timeout_ms, file.peer_timeout_ms, 1000),
            request_read_timeout: ms(self.request_read_timeout_ms, file.request_read_timeout_ms, 5000),
            max_value_bytes: self.max_value_bytes.or(file.max_value_bytes).unwrap_or(1 << 20),
            max_txn_ops: self.max_txn_ops.or(file.max_txn_ops).unwrap_or(128),
            session_ttl: ms(self.session_ttl_ms, file.session_ttl_ms, 600_000),
            max_sessions: self.max_sessions.or(file.max_sessions).unwrap_or(10_000),
            watch_history: crate::kv::watch::Limits {
                revisions: self.watch_history_revisions.or(file.watch_history_revisions).unwrap_or(10_000),
                bytes: self.watch_history_bytes.or(file.watch_history_bytes).unwrap_or(8 << 20),
            },
            watch_buffer: self.watch_buffer.or(file.watch_buffer).unwrap_or(1024),
            watch_progress: ms(self.watch_progress_ms, file.watch_progress_ms, 5000),
            max_watchers: self.max_watchers.or(file.max_watchers).unwrap_or(10_000),
            max_inflight: self.max_inflight.or(file.max_inflight).unwrap_or(1),
            http_workers: self.http_workers.or(file.http_workers).unwrap_or(2),
            max_pending: self.max_pending.or(file.max_pending).unwrap_or(4096),
            flush_max_inputs: self.flush_max_inputs.or(file.flush_max_inputs).unwrap_or(256),
            flush_max_delay: Duration::from_micros(self.flush_max_delay_us.or(file.flush_max_delay_us).unwrap_or(1000)),
            snapshot_entries: self.snapshot_entries.or(file.snapshot_entries).unwrap_or(10_000),
            snapshot_bytes: self.snapshot_bytes.or(file.snapshot_bytes).unwrap_or(64 << 20),
            snapshot_keep_entries: self.snapshot_keep_entries.or(file.snapshot_keep_entries).unwrap_or(5_000),
            snapshot_log_ratio: self.snapshot_log_ratio.or(file.snapshot_log_ratio).unwrap_or(1.0),
            wal_segment_bytes: self.wal_segment_bytes.or(file.wal_segment_bytes).unwrap_or(64 << 20),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.or(file.snapshot_chunk_bytes).unwrap_or(1 << 20),
            snapshot_chunk_timeout: ms(self.snapshot_chunk_timeout_ms, file.snapshot_chunk_timeout_ms, 10_000),
            promote_max_lag: self.promote_max_lag.or(file.promote_max_lag).unwrap_or(1000),
            tokens: self.tokens_file.or(file.tokens_file).map(|p| Tokens::load(&p)).transpose()?,
            public_status: self.public_status.or(file.public_status).unwrap_or(false),
            cluster_secret: self
                .cluster_secret_file
                .or(file.cluster_secret_file)
                .map(|p| ClusterSecret::load(&p))
                .transpose()?,
            tls: match (
                self.cert_file.or(file.cert_file),
                self.key_file.or(file.key_file),
                self.trusted_ca_file.or(file.trusted_ca_file),
            ) {
                (None, None, None) => None,
                (Some(cert), Some(key), Some(ca)) => Some(Tls::load(TlsFiles { cert, key, ca })?),
                _ => {
                    return Err("TLS needs all three of --cert-file, --key-file and --trusted-ca-file \
                                (or none: plaintext)"
                        .into());
                }
            },
            max_connections: self.max_connections.or(file.max_connections).unwrap_or(4096),
        };
        if s.tick.is_zero() || s.heartbeat < s.tick {
            return Err("tick_ms must be positive and no longer than heartbeat_ms".into());
        }
        if s.election_timeout < 2 * s.heartbeat {
            return Err(format!(
                "election timeout ({} ms) must be at least twice the heartbeat interval ({} ms)",
                s.election_timeout.as_millis(),
                s.heartbeat.as_millis()
            ));
        }
        if s.max_inflight == 0
            || s.http_workers == 0
            || s.max_value_bytes == 0
            || s.max_txn_ops == 0
            || s.max_sessions == 0
            || s.session_ttl.is_zero()
            || s.max_pending == 0
            || s.max_connections == 0
            || s.watch_buffer == 0
            || s.watch_progress.is_zero()
            || s.max_watchers == 0
        {
            return Err(
                "max_inflight, http_workers, max_value_bytes, max_txn_ops, max_sessions, session_ttl_ms, max_pending, \
                 max_connections, watch_buffer, watch_progress_ms and max_watchers must be positive"
                    .into(),
            );
        }
        if s.request_timeout.is_zero() || s.peer_timeout.is_zero() || s.request_read_timeout.is_zero() {
            return Err("timeouts must be positive".into());
        }
        // Deadlines are instants: an absurd timeout would overflow them.
        if s.request_read_timeout > Duration::from_secs(3600) {
            return Err("request_read_timeout_ms must be at most 3600000 (an hour)".into());
        }
        if !(s.snapshot_log_ratio.is_finite() && (0.0..=1000.0).contains(&s.snapshot_log_ratio)) {
            return Err("snapshot_log_ratio must be between 0 and 1000".into());
        }
        if s.wal_segment_bytes < 4096 {
            return Err("wal_segment_bytes must be at least 4096".into());
        }
        if s.snapshot_chunk_bytes == 0 || s.snapshot_chunk_bytes > MAX_SNAPSHOT_CHUNK {
            return Err(format!("snapshot_chunk_bytes must be between 1 and {MAX_SNAPSHOT_CHUNK}"));
        }
        if s.snapshot_chunk_timeout.is_zero() || s.snapshot_chunk_timeout > Duration::from_secs(3600) {
            return Err("snapshot_chunk_timeout_ms must be between 1 and 3600000".into());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("raftkv").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn flags_give_a_full_configuration() {
        let s = args(&["--id", "1", "--listen", "127.0.0.1:8001", "--peers", "2=127.0.0.1:8002,3=127.0.0.1:8003"])
            .resolve()
            .unwrap();
        assert_eq!(s.voters(), vec![1, 2, 3]);
        assert_eq!(s.address_of(3), Some("127.0.0.1:8003".parse().unwrap()));
        assert_eq!(s.election_ticks(), 30);
        assert_eq!(s.heartbeat_ticks(), 5);
        assert_eq!(s.data_dir, PathBuf::from("data/node1"));
    }

    #[test]
    fn file_settings_are_overridden_by_flags() {
        let dir = std::env::temp_dir().join(format!("raftkv-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:9002\"\npeers = [\"1=127.0.0.1:9001\"]\nheartbeat_ms = 40\n",
        )
        .unwrap();
        let s = args(&["--config", path.to_str().unwrap(), "--heartbeat-ms", "60"]).resolve().unwrap();
        assert_eq!(s.id, 2);
        assert_eq!(s.heartbeat, Duration::from_millis(60));
        assert_eq!(s.peers.len(), 1);
        std::fs::write(&path, "id = 2\nlisten = \"127.0.0.1:9002\"\nheartbeat = 1\n").unwrap();
        let err = args(&["--config", path.to_str().unwrap()]).resolve().unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn request_read_timeout_from_flag_env_name_and_file() {
        let base = ["--id", "1", "--listen", "127.0.0.1:8001"];
        assert_eq!(args(&base).resolve().unwrap().request_read_timeout, Duration::from_millis(5000), "default");
        let flag = args(&[&base[..], &["--request-read-timeout-ms", "1200"]].concat()).resolve().unwrap();
        assert_eq!(flag.request_read_timeout, Duration::from_millis(1200));
        // The env var is checked by name: setting it here would race with the other tests.
        let cmd = <Args as clap::CommandFactory>::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "request_read_timeout_ms").unwrap();
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some("RAFTKV_REQUEST_READ_TIMEOUT_MS"));

        let dir = std::env::temp_dir().join(format!("raftkv-config-rrt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, "id = 1\nlisten = \"127.0.0.1:9001\"\nrequest_read_timeout_ms = 700\n").unwrap();
        let file = args(&["--config", path.to_str().unwrap()]).resolve().unwrap();
        assert_eq!(file.request_read_timeout, Duration::from_millis(700));
        let both = args(&["--config", path.to_str().unwrap(), "--request-read-timeout-ms", "900"]).resolve().unwrap();
        assert_eq!(both.request_read_timeout, Duration::from_millis(900), "the flag wins over the file");
        let _ = std::fs::remove_dir_all(&dir);

        let zero = args(&[&base[..], &["--request-read-timeout-ms", "0"]].concat()).resolve().unwrap_err();
        assert!(zero.contains("positive"), "{zero}");
        let huge = args(&[&base[..], &["--request-read-timeout-ms", "18446744073709551615"]].concat()).resolve();
        assert!(huge.unwrap_err().contains("at most"));
    }

    #[test]
    fn flush_limits_from_flags_and_file_with_zero_meaning_off() {
        let base = ["--id", "1", "--listen", "127.0.0.1:8001"];
        let d = args(&base).resolve().unwrap();
        assert_eq!((d.flush_max_inputs, d.flush_max_delay), (256, Duration::from_millis(1)), "defaults");
        let off = args(&[&base[..], &["--flush-max-inputs", "0", "--flush-max-delay-us", "0"]].concat()).resolve();
        let off = off.unwrap();
        assert_eq!((off.flush_max_inputs, off.flush_max_delay), (0, Duration::ZERO));
        let dir = std::env::temp_dir().join(format!("raftkv-config-flush-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, "id = 1\nlisten = \"127.0.0.1:9001\"\nflush_max_inputs = 64\nflush_max_delay_us = 250\n")
            .unwrap();
        let file = args(&["--config", path.to_str().unwrap()]).resolve().unwrap();
        assert_eq!((file.flush_max_inputs, file.flush_max_delay), (64, Duration::from_micros(250)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshot_policy_defaults_and_limits() {
        let base = ["--id", "1", "--listen", "127.0.0.1:8001"];
        let d = args(&base).resolve().unwrap();
        assert_eq!((d.snapshot_entries, d.snapshot_bytes, d.snapshot_keep_entries), (10_000, 64 << 20, 5_000));
        assert_eq!((d.wal_segment_bytes, d.snapshot_chunk_bytes), (64 << 20, 1 << 20));
        let set = args(&[&base[..], &["--snapshot-entries", "100", "--snapshot-keep-entries", "10"]].concat());
        let set = set.resolve().unwrap();
        assert_eq!((set.snapshot_entries, set.snapshot_keep_entries), (100, 10));
        let e = |extra: &[&str]| args(&[&base[..], extra].concat()).resolve().unwrap_err();
        assert!(e(&["--wal-segment-bytes", "10"]).contains("at least 4096"));
        assert!(e(&["--snapshot-log-ratio=-1"]).contains("between 0 and 1000"));
        assert!(e(&["--snapshot-log-ratio", "NaN"]).contains("between 0 and 1000"));
        assert_eq!(d.snapshot_log_ratio, 1.0);
        assert!(e(&["--snapshot-chunk-bytes", "0"]).contains("between 1"));
        assert!(e(&["--snapshot-chunk-timeout-ms", "0"]).contains("between 1"));
    }

    #[test]
    fn tokens_and_cluster_secret_are_loaded_and_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("raftkv-config-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tokens, secret) = (dir.join("tokens"), dir.join("secret"));
        std::fs::write(&tokens, crate::auth::token_line("ops", crate::auth::Role::Admin, "t0ken")).unwrap();
        std::fs::write(&secret, "0123456789abcdef\n").unwrap();
        let base = ["--id", "1", "--listen", "127.0.0.1:8001"];
        let off = args(&base).resolve().unwrap();
        assert!(off.tokens.is_none() && off.cluster_secret.is_none() && !off.public_status);
        let on = args(
            &[
                &base[..],
                &["--tokens-file", tokens.to_str().unwrap(), "--cluster-secret-file", secret.to_str().unwrap()],
            ]
            .concat(),
        )
        .resolve()
        .unwrap();
        assert_eq!(on.tokens.as_ref().unwrap().find("t0ken").map(|t| t.0), Some("ops"));
        assert!(on.cluster_secret.as_ref().unwrap().matches("0123456789abcdef"), "trailing newline trimmed");
        assert!(!format!("{on:?}").contains("0123456789abcdef"), "the secret is never printed");
        std::fs::write(&secret, "short").unwrap();
        let e = args(&[&base[..], &["--cluster-secret-file", secret.to_str().unwrap()]].concat()).resolve();
        assert!(e.unwrap_err().contains("at least 16"));
        let e = args(&[&base[..], &["--tokens-file", "/nonexistent/tokens"]].concat()).resolve().unwrap_err();
        assert!(e.contains("/nonexistent/tokens"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_are_explained() {
        let e = |list: &[&str]| args(list).resolve().unwrap_err();
        assert!(e(&["--listen", "127.0.0.1:1"]).contains("--id"));
        assert!(e(&["--id", "0", "--listen", "127.0.0.1:1"]).contains("positive"));
        assert!(e(&["--id", "1", "--listen", "127.0.0.1:1", "--peers", "1=127.0.0.1:2"]).contains("own id"));
        assert!(e(&["--id", "1", "--listen", "127.0.0.1:1", "--peers", "x=127.0.0.1:2"]).contains("positive integer"));
        assert!(e(&["--id", "1", "--listen", "127.0.0.1:1", "--peers", "2=nowhere"]).contains("host:port"));
        assert!(e(&["--id", "1", "--listen", "127.0.0.1:1", "--election-timeout-ms", "60"]).contains("twice"));
    }
}
