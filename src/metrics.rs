//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! A registry of atomics shared by the actors like a logger is: each actor
//! only writes the series it owns; the HTTP handler only reads them. No
//! actor learns anything about another through it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use crate::raft::{NodeId, Role};

/// Cumulative histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let mut cur = self.sum_bits.load(Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self.sum_bits.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(x) => cur = x,
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let total = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", f64::from_bits(self.sum_bits.load(Relaxed)));
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const SNAPSHOT_SECONDS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Per-peer series, owned by that peer's replicator (requests) and by the
/// consensus actor (match index, lag).
#[derive(Default)]
pub struct PeerMetrics {
    pub append_entries_sent: AtomicU64,
    pub append_entries_failed: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    pub votes_sent: AtomicU64,
    pub votes_failed: AtomicU64,
    pub match_index: AtomicU64,
    pub replication_lag: AtomicU64,
    /// Requests not sent because the peer is in backoff after failures.
    pub requests_held_back: AtomicU64,
}

pub struct Metrics {
    pub node_id: NodeId,
    // consensus
    pub term: AtomicU64,
    pub role: AtomicU64,
    pub leader_id: AtomicU64,
    pub commit_index: AtomicU64,
    pub last_log_index: AtomicU64,
    pub stable_index: AtomicU64,
    pub elections_started: AtomicU64,
    pub elections_won: AtomicU64,
    /// Leadership transfers this node started as leader, and TimeoutNow
    /// requests it received (each starts an election at once).
    pub leader_transfers: AtomicU64,
    pub timeout_now_received: AtomicU64,
    pub leader_changes: AtomicU64,
    pub pending_proposals: AtomicU64,
    pub pending_reads: AtomicU64,
    pub proposals: AtomicU64,
    /// Client requests refused unproposed because too many were waiting.
    pub overloaded_requests: AtomicU64,
    /// Client requests dropped unproposed because their deadline had passed.
    pub expired_requests: AtomicU64,
    /// Per member, as the configuration changes (added when its replicator
    /// starts, dropped when the member leaves).
    peers: RwLock<BTreeMap<NodeId, Arc<PeerMetrics>>>,
    /// Configuration changes this node has seen take effect.
    pub config_changes: AtomicU64,
    /// Members of the configuration in force: voters and learners.
    pub voters: AtomicU64,
    pub learners: AtomicU64,
    // state machine
    pub applied_index: AtomicU64,
    pub keys: AtomicU64,
    // watch hub
    pub watchers: AtomicU64,
    pub watch_events_sent: AtomicU64,
    pub watchers_cancelled: AtomicU64,
    // storage
    pub fsync_seconds: Histogram,
    pub batch_entries: Histogram,
    pub wal_bytes: AtomicU64,
    pub wal_disk_bytes: AtomicU64,
    pub wal_segments: AtomicU64,
    // log compaction and snapshots (consensus)
    pub log_first_index: AtomicU64,
    pub log_entries_memory: AtomicU64,
    pub log_bytes_memory: AtomicU64,
    pub snapshot_index: AtomicU64,
    pub snapshot_term: AtomicU64,
    pub snapshot_last_bytes: AtomicU64,
    /// Microseconds the last snapshot took to write.
    pub snapshot_last_micros: AtomicU64,
    pub snapshot_disk_bytes: AtomicU64,
    pub snapshots_taken: AtomicU64,
    pub snapshots_failed: AtomicU64,
    pub snapshot_seconds: Histogram,
    // snapshot transfers (replicators, receiving side in http)
    pub snapshots_sent: AtomicU64,
    pub snapshots_send_failed: AtomicU64,
    pub snapshots_received: AtomicU64,
    // http
    http: Mutex<BTreeMap<(&'static str, &'static str, u16), Histogram>>,
}

fn role_code(r: Role) -> u64 {
    match r {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    }
}

impl Metrics {
    pub fn new(node_id: NodeId, peers: impl IntoIterator<Item = NodeId>) -> Self {
        Metrics {
            node_id,
            term: AtomicU64::new(0),
            role: AtomicU64::new(0),
            leader_id: AtomicU64::new(0),
            commit_index: AtomicU64::new(0),
            last_log_index: AtomicU64::new(0),
            stable_index: AtomicU64::new(0),
            elections_started: AtomicU64::new(0),
            elections_won: AtomicU64::new(0),
            leader_transfers: AtomicU64::new(0),
            timeout_now_received: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            pending_proposals: AtomicU64::new(0),
            pending_reads: AtomicU64::new(0),
            proposals: AtomicU64::new(0),
            overloaded_requests: AtomicU64::new(0),
            expired_requests: AtomicU64::new(0),
            peers: RwLock::new(peers.into_iter().map(|p| (p, Arc::default())).collect()),
            config_changes: AtomicU64::new(0),
            voters: AtomicU64::new(0),
            learners: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            watchers: AtomicU64::new(0),
            watch_events_sent: AtomicU64::new(0),
            watchers_cancelled: AtomicU64::new(0),
            fsync_seconds: Histogram::new(SECONDS),
            batch_entries: Histogram::new(BATCH),
            wal_bytes: AtomicU64::new(0),
            wal_disk_bytes: AtomicU64::new(0),
            wal_segments: AtomicU64::new(0),
            log_first_index: AtomicU64::new(1),
            log_entries_memory: AtomicU64::new(0),
            log_bytes_memory: AtomicU64::new(0),
            snapshot_index: AtomicU64::new(0),
            snapshot_term: AtomicU64::new(0),
            snapshot_last_bytes: AtomicU64::new(0),
            snapshot_last_micros: AtomicU64::new(0),
            snapshot_disk_bytes: AtomicU64::new(0),
            snapshots_taken: AtomicU64::new(0),
            snapshots_failed: AtomicU64::new(0),
            snapshot_seconds: Histogram::new(SNAPSHOT_SECONDS),
            snapshots_sent: AtomicU64::new(0),
            snapshots_send_failed: AtomicU64::new(0),
            snapshots_received: AtomicU64::new(0),
            http: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn set_role(&self, r: Role) {
        self.role.store(role_code(r), Relaxed);
    }

    pub fn peer(&self, id: NodeId) -> Option<Arc<PeerMetrics>> {
        self.peers.read().expect("metrics lock").get(&id).cloned()
    }

    /// The series of a member (kept if it already had some).
    pub fn add_peer(&self, id: NodeId) -> Arc<PeerMetrics> {
        self.peers.write().expect("metrics lock").entry(id).or_default().clone()
    }

    pub fn remove_peer(&self, id: NodeId) {
        self.peers.write().expect("metrics lock").remove(&id);
    }

    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.peers.read().expect("metrics lock").keys().copied().collect()
    }

    pub fn observe_http(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        let mut map = self.http.lock().expect("metrics lock");
        map.entry((route, method, status)).or_insert_with(|| Histogram::new(SECONDS)).observe(seconds);
    }

    /// Client reads (GETs of keys and lists) and writes (PUT and DELETE of
    /// keys, transactions) this node has answered, errors of its own (5xx)
    /// left out: the web view's rates.
    pub fn client_requests(&self) -> (u64, u64) {
        let map = self.http.lock().expect("metrics lock");
        let (mut reads, mut writes) = (0, 0);
        for ((route, method, status), h) in map.iter() {
            if *status >= 500 || !matches!(*route, "/kv/{key}" | "/kv" | "/txn") {
                continue;
            }
            match *method {
                "GET" => reads += h.count(),
                "PUT" | "DELETE" | "POST" => writes += h.count(),
                _ => {}
            }
        }
        (reads, writes)
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let g = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        g(&mut o, "raftkv_node_id", "This node's id.", self.node_id);
        g(&mut o, "raftkv_term", "Current Raft term.", self.term.load(Relaxed));
        let role = self.role.load(Relaxed);
        let _ = writeln!(
            o,
            "# HELP raftkv_role Raft role of this node (1 for the current role).\n# TYPE raftkv_role gauge"
        );
        for (code, name) in [(0, "follower"), (1, "pre_candidate"), (2, "candidate"), (3, "leader")] {
            let _ = writeln!(o, "raftkv_role{{role=\"{name}\"}} {}", (role == code) as u64);
        }
        g(&mut o, "raftkv_leader_id", "Id of the leader this node knows (0 if none).", self.leader_id.load(Relaxed));
        g(&mut o, "raftkv_commit_index", "Highest log index known committed.", self.commit_index.load(Relaxed));
        g(
            &mut o,
            "raftkv_applied_index",
            "Highest log index applied to the key-value store.",
            self.applied_index.load(Relaxed),
        );
        g(&mut o, "raftkv_last_log_index", "Index of the last entry in the log.", self.last_log_index.load(Relaxed));
        g(
            &mut o,
            "raftkv_stable_index",
            "Highest log index durable on this node's disk.",
            self.stable_index.load(Relaxed),
        );
        g(&mut o, "raftkv_keys", "Number of keys in the store.", self.keys.load(Relaxed));
        g(&mut o, "raftkv_watchers", "Watch streams and blocking reads open.", self.watchers.load(Relaxed));
        c(
            &mut o,
            "raftkv_watch_events_sent_total",
            "Events handed to watchers' buffers.",
            self.watch_events_sent.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_watchers_cancelled_total",
            "Watchers the node ended: too slow, or a gap in the history after installing a snapshot.",
            self.watchers_cancelled.load(Relaxed),
        );
        g(&mut o, "raftkv_voters", "Voters in the configuration in force.", self.voters.load(Relaxed));
        g(&mut o, "raftkv_learners", "Learners in the configuration in force.", self.learners.load(Relaxed));
        c(
            &mut o,
            "raftkv_config_changes_total",
            "Configurations this node has seen take effect (appended; one may later be undone).",
            self.config_changes.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_elections_started_total",
            "Elections this node started as candidate.",
            self.elections_started.load(Relaxed),
        );
        c(&mut o, "raftkv_elections_won_total", "Elections this node won.", self.elections_won.load(Relaxed));
        c(
            &mut o,
            "raftkv_leader_transfers_total",
            "Leadership transfers this node started as leader.",
            self.leader_transfers.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_timeout_now_received_total",
            "TimeoutNow requests received: elections started at a leader's request.",
            self.timeout_now_received.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_leader_changes_total",
            "Times the leader known to this node changed.",
            self.leader_changes.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_proposals_total",
            "Client writes proposed by this node as leader.",
            self.proposals.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_overloaded_requests_total",
            "Client requests answered 503 overloaded, never proposed.",
            self.overloaded_requests.load(Relaxed),
        );
        c(
            &mut o,
            "raftkv_expired_requests_total",
            "Client requests whose deadline passed before they could be proposed (dropped unproposed).",
            self.expired_requests.load(Relaxed),
        );
        g(&mut o, "raftkv_pending_proposals", "Proposals waiting to be applied.", self.pending_proposals.load(Relaxed));
        g(
            &mut o,
            "raftkv_pending_reads",
            "Linearizable reads waiting for leadership confirmation.",
            self.pending_reads.load(Relaxed),
        );
        c(&mut o, "raftkv_wal_bytes_total", "Bytes appended to the write-ahead log.", self.wal_bytes.load(Relaxed));
        let gauges: [(&str, &str, &AtomicU64); 9] = [
            ("raftkv_wal_disk_bytes", "Bytes of write-ahead log segments on disk.", &self.wal_disk_bytes),
            ("raftkv_wal_segments", "Write-ahead log segment files on disk.", &self.wal_segments),
            (
                "raftkv_log_first_index",
                "First log index held in memory (earlier ones are in the snapshot).",
                &self.log_first_index,
            ),
            ("raftkv_log_entries_in_memory", "Log entries held in memory.", &self.log_entries_memory),
            (
                "raftkv_log_bytes_in_memory",
                "Approximate bytes of the log entries held in memory.",
                &self.log_bytes_memory,
            ),
            ("raftkv_snapshot_index", "Log index of the latest snapshot (0: none).", &self.snapshot_index),
            ("raftkv_snapshot_term", "Term of the latest snapshot.", &self.snapshot_term),
            (
                "raftkv_snapshot_last_bytes",
                "Size of the last snapshot file this node wrote.",
                &self.snapshot_last_bytes,
            ),
            ("raftkv_snapshot_disk_bytes", "Bytes of snapshot files on disk.", &self.snapshot_disk_bytes),
        ];
        for (name, help, v) in gauges {
            g(&mut o, name, help, v.load(Relaxed));
        }
        let _ = writeln!(
            o,
            "# HELP raftkv_snapshot_last_duration_seconds Time the last snapshot took to write.\n# TYPE raftkv_snapshot_last_duration_seconds gauge\nraftkv_snapshot_last_duration_seconds {}",
            self.snapshot_last_micros.load(Relaxed) as f64 / 1e6
        );
        let counters: [(&str, &str, &AtomicU64); 5] = [
            ("raftkv_snapshots_taken_total", "Snapshots this node wrote of its own state.", &self.snapshots_taken),
            ("raftkv_snapshots_failed_total", "Snapshots this node failed to write.", &self.snapshots_failed),
            ("raftkv_snapshots_sent_total", "Snapshots streamed to followers completely.", &self.snapshots_sent),
            (
                "raftkv_snapshots_send_failed_total",
                "Snapshot transfers to followers that failed.",
                &self.snapshots_send_failed,
            ),
            (
                "raftkv_snapshots_received_total",
                "Snapshots received from a leader and verified.",
                &self.snapshots_received,
            ),
        ];
        for (name, help, v) in counters {
            c(&mut o, name, help, v.load(Relaxed));
        }
        let _ = writeln!(
            o,
            "# HELP raftkv_snapshot_duration_seconds Time to write one snapshot file.\n# TYPE raftkv_snapshot_duration_seconds histogram"
        );
        self.snapshot_seconds.render(&mut o, "raftkv_snapshot_duration_seconds", "");

        type Field = fn(&PeerMetrics) -> &AtomicU64;
        let per_peer: [(&str, &str, &str, Field); 9] = [
            (
                "raftkv_peer_requests_held_back_total",
                "counter",
                "AppendEntries and heartbeats not sent to the peer because it is in backoff after failures.",
                |p| &p.requests_held_back,
            ),
            ("raftkv_append_entries_sent_total", "counter", "AppendEntries requests sent to the peer.", |p| {
                &p.append_entries_sent
            }),
            (
                "raftkv_append_entries_failed_total",
                "counter",
                "AppendEntries requests to the peer that failed in transport.",
                |p| &p.append_entries_failed,
            ),
            ("raftkv_heartbeats_sent_total", "counter", "Heartbeats sent to the peer.", |p| &p.heartbeats_sent),
            ("raftkv_heartbeats_failed_total", "counter", "Heartbeats to the peer that failed in transport.", |p| {
                &p.heartbeats_failed
            }),
            (
                "raftkv_vote_requests_sent_total",
                "counter",
                "RequestVote and pre-vote requests sent to the peer.",
                |p| &p.votes_sent,
            ),
            (
                "raftkv_vote_requests_failed_total",
                "counter",
                "Vote requests to the peer that failed in transport.",
                |p| &p.votes_failed,
            ),
            ("raftkv_peer_match_index", "gauge", "Leader only: highest index known replicated on the peer.", |p| {
                &p.match_index
            }),
            (
                "raftkv_replication_lag_entries",
                "gauge",
                "Leader only: entries the peer is behind the leader's log.",
                |p| &p.replication_lag,
            ),
        ];
        for (name, kind, help, field) in per_peer {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (peer, m) in self.peers.read().expect("metrics lock").iter() {
                let _ = writeln!(o, "{name}{{peer=\"{peer}\"}} {}", field(m).load(Relaxed));
            }
        }

        let _ = writeln!(
            o,
            "# HELP raftkv_fsync_duration_seconds Time to write and fsync one group commit.\n# TYPE raftkv_fsync_duration_seconds histogram"
        );
        self.fsync_seconds.render(&mut o, "raftkv_fsync_duration_seconds", "");
        let _ = writeln!(
            o,
            "# HELP raftkv_group_commit_entries Log entries made durable by one fsync.\n# TYPE raftkv_group_commit_entries histogram"
        );
        self.batch_entries.render(&mut o, "raftkv_group_commit_entries", "");
        let _ = writeln!(
            o,
            "# HELP raftkv_http_request_duration_seconds HTTP requests served, by route, method and status.\n# TYPE raftkv_http_request_duration_seconds histogram"
        );
        for ((route, method, status), h) in self.http.lock().expect("metrics lock").iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            h.render(&mut o, "raftkv_http_request_duration_seconds", &labels);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 1"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"2\"} 2"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"), "{s}");
        assert!(s.contains("x_sum{a=\"b\"} 11"), "{s}");
    }

    #[test]
    fn render_names_every_family_once() {
        let m = Metrics::new(1, [2, 3]);
        m.set_role(Role::Leader);
        m.observe_http("/kv/{key}", "PUT", 200, 0.001);
        let text = m.render();
        assert!(text.contains("raftkv_role{role=\"leader\"} 1"));
        assert!(text.contains("raftkv_append_entries_sent_total{peer=\"3\"} 0"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE raftkv_http_request_duration_seconds")).count();
        assert_eq!(types, 1);
    }
}
