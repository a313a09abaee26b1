//! Replicator: one per peer. Carries the consensus core's requests to that
//! peer over HTTP (`POST /raft/...`, binary bodies, kept-alive connections
//! bound to this node's own address) and reports every answer — or the
//! failure to get one — back to Consensus.
//!
//! Consensus decides *what* to send (next/match index, the in-flight
//! window); the replicator decides *how*: AppendEntries go out as soon as
//! they are handed over (pipelined up to the core's window), while at most
//! one heartbeat is on the wire per peer: a newer heartbeat waiting behind
//! it replaces an older one, since the newest read round confirms all
//! earlier ones. After a request could not even connect (the peer is down
//! or unreachable), AppendEntries and heartbeats to the peer wait out a
//! capped exponential backoff (50 ms doubling to 1 s), so a peer that is
//! down costs about one request a second instead of one per heartbeat; the
//! first one through after the wait is the probe. A peer that answers
//! slowly or with an error is not held back (its heartbeats keep the
//! leader's quorum alive), nor are votes and snapshot transfers.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{debug, info, trace, warn};

use awc::error::{ConnectError, SendRequestError};
use awc::http::StatusCode;

use super::messages::{PeerEvent, SendRpc, StopReplicator};
use crate::codec::{decode_message, encode_message, encode_snapshot_chunk};
use crate::config::Settings;
use crate::metrics::{Metrics, PeerMetrics};
use crate::raft::{Body, Message as RaftMessage, MessageKind, NodeId, replication_target};
use crate::snapshot::{SnapshotDir, read_chunk};

/// The header every peer request carries this cluster's id in.
pub const CLUSTER_HEADER: &str = "x-raftkv-cluster";
/// Largest response body accepted from a peer (answers are small).
const MAX_RESPONSE: usize = 1 << 20;
/// Backoff after failed requests to a peer: doubling from the first, capped.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long to wait after `failures` failed requests in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX)
}

pub struct Replicator {
    peer: NodeId,
    base_url: String,
    /// For the HTTP client (address to send from, TLS).
    settings: Settings,
    timeout: Duration,
    client: Option<awc::Client>,
    snapshots: SnapshotDir,
    chunk_bytes: usize,
    chunk_timeout: Duration,
    /// A snapshot is being streamed to the peer.
    transferring: bool,
    /// `Authorization` header value with the cluster secret, if any.
    auth: Option<String>,
    /// This cluster's id, sent as `x-raftkv-cluster` with every request.
    cluster_id: String,
    consensus: Recipient<PeerEvent>,
    metrics: Arc<Metrics>,
    peer_metrics: Arc<PeerMetrics>,
    target: String,
    heartbeat_in_flight: bool,
    queued_heartbeat: Option<RaftMessage>,
    /// Requests in a row that failed, and until when replication and
    /// heartbeats to the peer wait after one could not connect (capped
    /// exponential backoff; votes and snapshot transfers are not held back).
    failures: u32,
    retry_at: Option<Instant>,
}

impl Replicator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: NodeId,
        addr: String,
        cluster_id: u64,
        settings: &Settings,
        snapshots: SnapshotDir,
        consensus: Recipient<PeerEvent>,
        metrics: Arc<Metrics>,
        peer_metrics: Arc<PeerMetrics>,
    ) -> Self {
        Replicator {
            peer,
            base_url: format!("{}://{addr}", crate::http::peer_scheme(settings)),
            settings: settings.clone(),
            timeout: settings.peer_timeout,
            client: None,
            snapshots,
            chunk_bytes: settings.snapshot_chunk_bytes,
            chunk_timeout: settings.snapshot_chunk_timeout,
            transferring: false,
            auth: settings.cluster_secret.as_ref().map(|s| s.header_value()),
            cluster_id: crate::cluster::format_id(cluster_id),
            consensus,
            metrics,
            peer_metrics,
            target: replication_target(peer),
            heartbeat_in_flight: false,
            queued_heartbeat: None,
            failures: 0,
            retry_at: None,
        }
    }

    fn send(&mut self, msg: RaftMessage, ctx: &mut Context<Self>) {
        let kind = msg.body.kind();
        let path = match kind {
            MessageKind::AppendEntries => "append_entries",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::PreVote | MessageKind::RequestVote => "request_vote",
            MessageKind::TimeoutNow => "timeout_now",
            MessageKind::InstallSnapshot => return self.send_snapshot(msg, ctx),
            other => {
                warn!(target: &self.target, "not a request, not sent: {}", other.as_str());
                return;
            }
        };
        if matches!(kind, MessageKind::AppendEntries | MessageKind::Heartbeat)
            && self.retry_at.is_some_and(|t| Instant::now() < t)
        {
            // The peer failed just now: no request until the backoff ends.
            // A heartbeat is simply not sent (the next one will be); an
            // AppendEntries is reported failed at once, so the core probes.
            self.peer_metrics.requests_held_back.fetch_add(1, Relaxed);
            if kind == MessageKind::AppendEntries {
                self.consensus.do_send(PeerEvent::Unreachable { peer: self.peer });
            }
            return;
        }
        let m = &self.peer_metrics;
        match kind {
            MessageKind::AppendEntries => m.append_entries_sent.fetch_add(1, Relaxed),
            MessageKind::Heartbeat => m.heartbeats_sent.fetch_add(1, Relaxed),
            MessageKind::TimeoutNow => 0,
            _ => m.votes_sent.fetch_add(1, Relaxed),
        };
        if kind == MessageKind::Heartbeat {
            self.heartbeat_in_flight = true;
        }
        trace!(target: &self.target, "-> {}: {} term {}", self.peer, kind.as_str(), msg.term);
        let url = format!("{}/raft/{path}", self.base_url);
        let request = self
            .client()
            .post(url)
            .insert_header(("content-type", "application/octet-stream"))
            .send_body(encode_message(&msg));
        // Errors say whether no connection could be made at all (the peer
        // is down or unreachable), the only case that starts a backoff.
        let fut = async move {
            let mut resp = request.await.map_err(|e| {
                let refused = matches!(
                    &e,
                    SendRequestError::Connect(c) if !matches!(c, ConnectError::Disconnected | ConnectError::H2(_))
                );
                (e.to_string(), refused)
            })?;
            let status = resp.status();
            let body = resp.body().limit(MAX_RESPONSE).await.map_err(|e| (e.to_string(), false))?;
            if status == StatusCode::GONE {
                // The members refuse this node for good: say why, stop retrying.
                let reason = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| (v["code"] == "removed_member").then(|| v["error"].as_str().map(str::to_string)))
                    .flatten();
                if let Some(reason) = reason {
                    return Ok(Err(reason));
                }
            }
            if !status.is_success() {
                return Err((format!("HTTP {status}: {}", String::from_utf8_lossy(&body)), false));
            }
            decode_message(body).map(Ok).map_err(|e| (e.to_string(), false))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Err(reason)) => {
                    act.consensus.do_send(PeerEvent::Removed { peer: act.peer, reason });
                }
                Ok(Ok(reply)) => {
                    if act.failures > 0 {
                        info!(
                            target: &act.target,
                            "peer {} is reachable again after {} failed requests",
                            act.peer,
                            act.failures
                        );
                        act.failures = 0;
                        act.retry_at = None;
                    }
                    act.consensus.do_send(PeerEvent::Replied(reply));
                }
                Err((e, refused)) => {
                    act.failures += 1;
                    // Only a peer no connection reaches is held back: one that
                    // is slow or answers errors keeps getting heartbeats, or a
                    // leader whose only other majority member timed out once
                    // would stop hearing from it and step down (check quorum).
                    let wait = refused.then(|| backoff(act.failures));
                    act.retry_at = wait.map(|w| Instant::now() + w);
                    if act.failures == 1 {
                        let then = if refused { "; retrying with backoff up to 1s" } else { "" };
                        warn!(target: &act.target, "peer {} unreachable: {} failed: {e}{then}", act.peer, kind.as_str());
                    } else {
                        debug!(
                            target: &act.target,
                            "peer {} still unreachable ({} failures, next try in {wait:?}): {} failed: {e}",
                            act.peer,
                            act.failures,
                            kind.as_str()
                        );
                    }
                    let m = &act.peer_metrics;
                    match kind {
                        MessageKind::AppendEntries => m.append_entries_failed.fetch_add(1, Relaxed),
                        MessageKind::Heartbeat => m.heartbeats_failed.fetch_add(1, Relaxed),
                        MessageKind::TimeoutNow => 0,
                        _ => m.votes_failed.fetch_add(1, Relaxed),
                    };
                    act.consensus.do_send(PeerEvent::Unreachable { peer: act.peer });
                }
            }
            if kind == MessageKind::Heartbeat {
                act.heartbeat_in_flight = false;
                if let Some(next) = act.queued_heartbeat.take() {
                    act.send(next, ctx);
                }
            }
        }));
    }
}

impl Replicator {
    fn client(&mut self) -> &awc::Client {
        let mut headers = vec![(CLUSTER_HEADER, self.cluster_id.clone())];
        if let Some(v) = &self.auth {
            headers.push(("authorization", v.clone()));
        }
        let (settings, timeout) = (&self.settings, self.timeout);
        self.client.get_or_insert_with(|| crate::http::peer_client(settings, timeout, &headers))
    }

    /// Streams the snapshot file `msg` names to the peer in chunks of
    /// `snapshot_chunk_bytes`, each with its own timeout; the answer to the
    /// last chunk is the follower core's InstallSnapshotResponse. Any
    /// failure ends the transfer and is reported as unreachable: the core
    /// probes again and starts a new transfer if one is still needed.
    fn send_snapshot(&mut self, msg: RaftMessage, ctx: &mut Context<Self>) {
        let Body::InstallSnapshot { meta } = &msg.body else { unreachable!("checked by the caller") };
        if self.transferring {
            debug!(target: &self.target, "-> {}: a snapshot transfer is already running; snapshot {} waits", self.peer, meta.index);
            return;
        }
        let path = self.snapshots.path_of(meta.index, meta.term);
        // Opened now: a file pruned meanwhile stays readable through it.
        let opened = std::fs::File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (total, mut file) = match opened {
            Ok(x) => x,
            Err(e) => {
                warn!(target: &self.target, "-> {}: cannot open snapshot {}: {e}", self.peer, path.display());
                self.consensus.do_send(PeerEvent::Unreachable { peer: self.peer });
                return;
            }
        };
        info!(
            target: &self.target,
            "-> {}: sending snapshot at {} (term {}): {total} bytes in chunks of {}",
            self.peer,
            meta.index,
            meta.term,
            self.chunk_bytes
        );
        self.transferring = true;
        let (chunk, timeout) = (self.chunk_bytes, self.chunk_timeout);
        let url = format!("{}/raft/install_snapshot", self.base_url);
        let client = self.client().clone();
        let started = Instant::now();
        let fut = async move {
            let mut offset = 0u64;
            loop {
                let data =
                    read_chunk(&mut file, offset, chunk).map_err(|e| format!("reading {}: {e}", path.display()))?;
                if data.is_empty() {
                    return Err(format!("{} ended at {offset} of {total} bytes", path.display()));
                }
                let end = offset + data.len() as u64;
                let body = encode_snapshot_chunk(&msg, offset, total, &data);
                let mut resp = client
                    .post(&url)
                    .timeout(timeout)
                    .insert_header(("content-type", "application/octet-stream"))
                    .send_body(body)
                    .await
                    .map_err(|e| format!("chunk at {offset}: {e}"))?;
                let status = resp.status();
                let reply = resp.body().limit(MAX_RESPONSE).await.map_err(|e| format!("chunk at {offset}: {e}"))?;
                if !status.is_success() {
                    return Err(format!("chunk at {offset}: HTTP {status}: {}", String::from_utf8_lossy(&reply)));
                }
                if end >= total {
                    return decode_message(reply).map_err(|e| format!("answer to the last chunk: {e}"));
                }
                offset = end;
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            act.transferring = false;
            match res {
                Ok(reply) => {
                    info!(
                        target: &act.target,
                        "-> {}: snapshot sent: {total} bytes in {:?}",
                        act.peer,
                        started.elapsed()
                    );
                    act.metrics.snapshots_sent.fetch_add(1, Relaxed);
                    act.consensus.do_send(PeerEvent::Replied(reply));
                }
                Err(e) => {
                    warn!(target: &act.target, "-> {}: snapshot transfer failed: {e}", act.peer);
                    act.metrics.snapshots_send_failed.fetch_add(1, Relaxed);
                    act.consensus.do_send(PeerEvent::Unreachable { peer: act.peer });
                }
            }
        }));
    }
}

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
    }
}

impl Handler<StopReplicator> for Replicator {
    type Result = ();

    fn handle(&mut self, _: StopReplicator, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<SendRpc> for Replicator {
    type Result = ();

    fn handle(&mut self, SendRpc(msg): SendRpc, ctx: &mut Self::Context) {
        if msg.body.kind() == MessageKind::Heartbeat && self.heartbeat_in_flight {
            self.queued_heartbeat = Some(msg);
            return;
        }
        self.send(msg, ctx);
    }
}
