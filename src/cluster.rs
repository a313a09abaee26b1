//! A node's cluster identity, kept in `<data>/cluster.json`, and joining a
//! running cluster (`--join`).
//!
//! The file is written once, before the write-ahead log holds anything:
//! * `cluster_id`: carried by every peer request (`x-raftkv-cluster`); a
//!   node of another cluster is refused. A cluster bootstrapped from
//!   `--peers` derives it from the bootstrap member list (id and address
//!   of every voter), so nodes started apart agree without talking; a node
//!   that joins takes the id of the cluster it joins.
//! * `bootstrap`: the configuration the log starts from — the `--peers` of
//!   the first start, or nothing for a node that joined (it has no
//!   configuration, and never campaigns, until the leader sends it one).
//!
//! From then on the configuration comes from the log and snapshots, never
//! again from the flags: a restart with other `--peers` changes nothing
//! (use the membership API), and a node that joined cannot mistake itself
//! for a one-node cluster before its first configuration entry arrives.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::HttpClient;
use crate::config::Settings;
use crate::raft::NodeId;

const T_CONSENSUS: &str = "raftkv::consensus";
const FILE: &str = "cluster.json";
/// How long a joining node keeps trying to reach the cluster.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// The cluster identity file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Hex, 16 digits.
    #[serde(with = "hex_id")]
    pub cluster_id: u64,
    /// Bootstrap voters and their addresses (empty: this node joined).
    pub bootstrap: BTreeMap<NodeId, String>,
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_id(*id))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_id(&s).map_err(serde::de::Error::custom)
    }
}

pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s, 16).map_err(|_| format!("cluster id '{s}' is not 16 hex digits"))
}

impl ClusterFile {
    /// A new cluster from its bootstrap voters: the id is a digest of them.
    pub fn bootstrap(voters: BTreeMap<NodeId, String>) -> Self {
        let mut h = Sha256::new();
        for (id, addr) in &voters {
            h.update(format!("{id}={addr};").as_bytes());
        }
        let digest = h.finalize();
        let cluster_id = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        ClusterFile { cluster_id, bootstrap: voters }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    pub fn load(data_dir: &Path) -> Result<Option<Self>, String> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is damaged ({e}); refusing to start", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Written to a temporary file, synced, renamed over, directory synced.
    pub fn store(&self, data_dir: &Path) -> Result<(), String> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).expect("serializable"))?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// The settings' bootstrap voters: this node and `--peers`.
fn voters_from_flags(s: &Settings) -> BTreeMap<NodeId, String> {
    let mut v: BTreeMap<NodeId, String> = s.peers.iter().map(|(&id, a)| (id, a.to_string())).collect();
    v.insert(s.id, s.listen.to_string());
    v
}

/// Finds this node's cluster identity at start-up. `fresh`: the data
/// directory holds no Raft state yet. With `--join` and a fresh directory
/// this contacts the cluster and asks to be added as a learner (blocking,
/// before any actor starts).
pub fn resolve(s: &Settings, fresh: bool) -> Result<ClusterFile, String> {
    let existing = ClusterFile::load(&s.data_dir)?;
    let file = match (existing, s.join) {
        (Some(f), join) => {
            if !fresh && join.is_some() {
                info!(target: T_CONSENSUS, "node {} is a member already; --join ignored", s.id);
            } else if !f.bootstrap.is_empty() && !s.peers.is_empty() && f.bootstrap != voters_from_flags(s) {
                warn!(
                    target: T_CONSENSUS,
                    "node {}: --peers differs from the bootstrap configuration in {} and is ignored; the \
                     configuration comes from the log (change it with the membership API)",
                    s.id,
                    ClusterFile::path(&s.data_dir).display()
                );
            }
            f
        }
        // Data from before this file existed: it was bootstrapped from the
        // flags it runs with.
        (None, _) if !fresh => {
            let f = ClusterFile::bootstrap(voters_from_flags(s));
            f.store(&s.data_dir)?;
            f
        }
        (None, Some(endpoint)) => {
            let f = discover(s, &endpoint.to_string())?;
            f.store(&s.data_dir)?;
            f
        }
        (None, None) => {
            let f = ClusterFile::bootstrap(voters_from_flags(s));
            f.store(&s.data_dir)?;
            info!(
                target: T_CONSENSUS,
                "node {} bootstraps cluster {} with voters {:?}",
                s.id,
                format_id(f.cluster_id),
                f.bootstrap.keys().collect::<Vec<_>>()
            );
            f
        }
    };
    if fresh && file.bootstrap.is_empty() {
        let Some(endpoint) = s.join else {
            return Err(format!(
                "node {} joined a cluster but has no data yet and no --join to finish joining with",
                s.id
            ));
        };
        ask_to_join(s, &endpoint.to_string(), file.cluster_id)?;
    }
    Ok(file)
}

/// What `GET /cluster/members` says about this node's id.
enum Standing {
    New,
    /// A member already, at this node's own address (joined before).
    Member,
}

fn standing(s: &Settings, body: &serde_json::Value) -> Result<Standing, String> {
    let me = s.id;
    if body["removed"].as_array().is_some_and(|r| r.iter().any(|v| v.as_u64() == Some(me))) {
        return Err(format!(
            "id {me} belonged to a member that was removed from this cluster; a new member needs an id never \
             used before (--id)"
        ));
    }
    let members = body["members"].as_array().cloned().unwrap_or_default();
    match members.iter().find(|m| m["id"].as_u64() == Some(me)) {
        None => Ok(Standing::New),
        Some(m) if m["address"].as_str() == Some(&s.listen.to_string()) => Ok(Standing::Member),
        Some(m) => Err(format!(
            "id {me} is already a member at {}; a new member needs an id never used before (--id)",
            m["address"].as_str().unwrap_or("?")
        )),
    }
}

/// Retries `f` while it says the failure is passing (unreachable, no
/// leader yet, a change in progress), for up to `JOIN_PATIENCE`.
fn with_retries<T>(what: &str, mut f: impl FnMut() -> Result<T, (bool, String)>) -> Result<T, String> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err((true, e)) if started.elapsed() < JOIN_PATIENCE => {
                warn!(target: T_CONSENSUS, "{what}: {e}; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err((_, e)) => return Err(format!("{what}: {e}")),
        }
    }
}

fn client(s: &Settings) -> Result<HttpClient, String> {
    let token = s.join_token.clone();
    let http = HttpClient::new(s.request_timeout + Duration::from_secs(1)).with_token(token);
    match &s.tls {
        // Over TLS, as a member would: the cluster CA, this node's certificate.
        Some(tls) => http.with_ca_file(&tls.files().ca)?.with_client_cert(&tls.files().cert, &tls.files().key),
        None => Ok(http),
    }
}

/// Learns the cluster's id from `endpoint` and checks this node's id may join.
fn discover(s: &Settings, endpoint: &str) -> Result<ClusterFile, String> {
    if s.listen.ip().is_unspecified() {
        return Err(format!(
            "--listen {} cannot be told to the other members; listen on an address they reach",
            s.listen
        ));
    }
    let http = client(s)?;
    let body = with_retries(&format!("joining through {endpoint}"), || {
        let r = http.get(endpoint, "/cluster/members").map_err(|e| (true, e.to_string()))?;
        match r.status {
            200 => Ok(r.json()),
            503 => Err((true, format!("HTTP 503: {}", r.text()))),
            _ => Err((false, format!("HTTP {}: {}", r.status, r.text()))),
        }
    })?;
    standing(s, &body)?;
    let id = body["cluster_id"].as_str().ok_or("the answer to GET /cluster/members has no cluster_id")?;
    let cluster_id = parse_id(id)?;
    info!(target: T_CONSENSUS, "node {} joins cluster {id} through {endpoint}", s.id);
    Ok(ClusterFile { cluster_id, bootstrap: BTreeMap::new() })
}

/// Asks the cluster (through `endpoint`, which forwards to the leader) to
/// add this node as a learner; done when the change has committed.
fn ask_to_join(s: &Settings, endpoint: &str, cluster_id: u64) -> Result<(), String> {
    let http = client(s)?;
    let body = serde_json::json!({"id": s.id, "address": s.listen.to_string(), "learner": true});
    let body = serde_json::to_vec(&body).expect("serializable");
    with_retries(&format!("asking {endpoint} to add node {} as a learner", s.id), || {
        let r = http.get(endpoint, "/cluster/members").map_err(|e| (true, e.to_string()))?;
        if r.status != 200 {
            return Err((r.status == 503, format!("HTTP {}: {}", r.status, r.text())));
        }
        let members = r.json();
        if members["cluster_id"].as_str().and_then(|c| parse_id(c).ok()) != Some(cluster_id) {
            return Err((false, format!("{endpoint} belongs to another cluster than this node's")));
        }
        if let Standing::Member = standing(s, &members).map_err(|e| (false, e))? {
            return Ok(());
        }
        let r = http.request(endpoint, "POST", "/cluster/members", Some(&body)).map_err(|e| (true, e.to_string()))?;
        let code = r.json()["code"].as_str().unwrap_or_default().to_string();
        match r.status {
            200 | 201 => Ok(()),
            // Passing: no leader, the leader not ready, another change first.
            503 => Err((true, format!("HTTP 503: {}", r.text()))),
            409 if code == "change_in_progress" => Err((true, r.text())),
            _ => Err((false, format!("HTTP {}: {}", r.status, r.text()))),
        }
    })?;
    info!(target: T_CONSENSUS, "node {} was added as a learner; the leader sends it the data", s.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_depends_on_every_bootstrap_member_and_round_trips() {
        let a = ClusterFile::bootstrap(BTreeMap::from([(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())]));
        let b = ClusterFile::bootstrap(BTreeMap::from([(1, "127.0.0.1:1".into()), (2, "127.0.0.1:3".into())]));
        assert_ne!(a.cluster_id, b.cluster_id);
        let dir = std::env::temp_dir().join(format!("raftkv-cluster-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        a.store(&dir).unwrap();
        assert_eq!(ClusterFile::load(&dir).unwrap(), Some(a));
        std::fs::write(ClusterFile::path(&dir), b"{not json").unwrap();
        assert!(ClusterFile::load(&dir).unwrap_err().contains("damaged"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
