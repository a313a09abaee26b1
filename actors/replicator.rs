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
//! earlier ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, trace, warn};

use super::consensus::PeerEvent;
use crate::codec::{decode_message, encode_message};
use crate::metrics::Metrics;
use crate::raft::{Message as RaftMessage, MessageKind, NodeId, replication_target};

/// Consensus → Replicator: deliver this request to the peer.
pub struct SendRpc(pub RaftMessage);

impl Message for SendRpc {
    type Result = ();
}

pub struct Replicator {
    peer: NodeId,
    base_url: String,
    local: IpAddr,
    timeout: Duration,
    client: Option<awc::Client>,
    consensus: Recipient<PeerEvent>,
    metrics: Arc<Metrics>,
    target: String,
    heartbeat_in_flight: bool,
    queued_heartbeat: Option<RaftMessage>,
    /// Whether the last request got through (for logging transitions only).
    reachable: bool,
}

impl Replicator {
    pub fn new(
        peer: NodeId,
        addr: SocketAddr,
        local: IpAddr,
        timeout: Duration,
        consensus: Recipient<PeerEvent>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Replicator {
            peer,
            base_url: format!("http://{addr}"),
            local,
            timeout,
            client: None,
            consensus,
            metrics,
            target: replication_target(peer),
            heartbeat_in_flight: false,
            queued_heartbeat: None,
            reachable: true,
        }
    }

    fn send(&mut self, msg: RaftMessage, ctx: &mut Context<Self>) {
        let kind = msg.body.kind();
        let path = match kind {
            MessageKind::AppendEntries => "append_entries",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::PreVote | MessageKind::RequestVote => "request_vote",
            MessageKind::InstallSnapshot => {
                // Only sent by a leader that compacted its log, which this
                // node does not do yet (issue 10): the transfer is not built.
                warn!(target: &self.target, "snapshot transfer is not built into this node yet; not sent");
                return;
            }
            other => {
                warn!(target: &self.target, "not a request, not sent: {}", other.as_str());
                return;
            }
        };
        if let Some(m) = self.metrics.peer(self.peer) {
            match kind {
                MessageKind::AppendEntries => m.append_entries_sent.fetch_add(1, Relaxed),
                MessageKind::Heartbeat => m.heartbeats_sent.fetch_add(1, Relaxed),
                _ => m.votes_sent.fetch_add(1, Relaxed),
            };
        }
        if kind == MessageKind::Heartbeat {
            self.heartbeat_in_flight = true;
        }
        trace!(target: &self.target, "-> {}: {} term {}", self.peer, kind.as_str(), msg.term);
        let client = self.client.get_or_insert_with(|| {
            awc::Client::builder()
                .connector(awc::Connector::new().local_address(self.local))
                .timeout(self.timeout)
                .disable_redirects()
                .finish()
        });
        let request = client
            .post(format!("{}/raft/{path}", self.base_url))
            .insert_header(("content-type", "application/octet-stream"))
            .send_body(encode_message(&msg));
        let fut = async move {
            let mut resp = request.await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.body().limit(1 << 20).await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
            }
            decode_message(body).map_err(|e| e.to_string())
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(reply) => {
                    if !act.reachable {
                        info!(target: &act.target, "peer {} is reachable again", act.peer);
                        act.reachable = true;
                    }
                    act.consensus.do_send(PeerEvent::Replied(reply));
                }
                Err(e) => {
                    if act.reachable {
                        warn!(target: &act.target, "peer {} unreachable: {} failed: {e}", act.peer, kind.as_str());
                        act.reachable = false;
                    } else {
                        debug!(target: &act.target, "peer {} still unreachable: {} failed: {e}", act.peer, kind.as_str());
                    }
                    if let Some(m) = act.metrics.peer(act.peer) {
                        match kind {
                            MessageKind::AppendEntries => m.append_entries_failed.fetch_add(1, Relaxed),
                            MessageKind::Heartbeat => m.heartbeats_failed.fetch_add(1, Relaxed),
                            _ => m.votes_failed.fetch_add(1, Relaxed),
                        };
                    }
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

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
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
