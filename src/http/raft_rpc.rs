//! Raft RPCs between peers: `POST /raft/request_vote`, `/raft/append_entries`,
//! `/raft/heartbeat`, `/raft/timeout_now`, `/raft/install_snapshot`. Bodies are the binary
//! encoding of `codec.rs`; the response body is the core's answer, sent
//! once the state it reflects is durable. Internal: peers use these,
//! clients do not.
//!
//! `/raft/install_snapshot` carries one chunk of a snapshot file per
//! request (`codec::SnapshotChunk`). The snapshotter stages the chunks;
//! only when the last one has made the file complete, verified and durable
//! does the core see the InstallSnapshot message, and its answer is the
//! response to that last chunk. Earlier chunks are answered with an empty
//! 200.

use std::sync::atomic::Ordering::Relaxed;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use tokio::sync::oneshot;

use super::AppState;
use super::client_api::read_body;
use super::errors::ApiError;
use crate::actors::messages::{InboundRpc, ReceiveChunk};
use crate::actors::replicator::CLUSTER_HEADER;
use crate::cluster::{format_id, parse_id};
use crate::codec::{decode_message, decode_snapshot_chunk, encode_message};
use crate::config::MAX_SNAPSHOT_CHUNK;
use crate::raft::{Body, Message, MessageKind};

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_peer(&req)?;
    check_cluster(&req, &state)?;
    let body = read_body(&req, payload, state.peer_body_limit(), state.settings.request_read_timeout).await?;
    let msg =
        decode_message(body).map_err(|e| ApiError::bad_request("invalid_message", format!("bad Raft message: {e}")))?;
    let expected = match req.path() {
        "/raft/append_entries" => msg.body.kind() == MessageKind::AppendEntries,
        "/raft/heartbeat" => msg.body.kind() == MessageKind::Heartbeat,
        "/raft/request_vote" => matches!(msg.body.kind(), MessageKind::RequestVote | MessageKind::PreVote),
        "/raft/timeout_now" => msg.body.kind() == MessageKind::TimeoutNow,
        _ => false,
    };
    if !expected {
        return Err(ApiError::bad_request(
            "invalid_message",
            format!("a {} message does not belong on {}", msg.body.kind().as_str(), req.path()),
        ));
    }
    check_peer(&req, &msg, &state)?;
    step(msg, &state).await
}

fn check_peer(req: &HttpRequest, msg: &Message, state: &AppState) -> Result<(), ApiError> {
    if msg.to != state.settings.id {
        return Err(ApiError::bad_request(
            "wrong_node",
            format!("message for node {} delivered to node {}", msg.to, state.settings.id),
        ));
    }
    if msg.from == state.settings.id {
        return Err(ApiError::bad_request("unknown_peer", format!("node {} sent a message to itself", msg.from)));
    }
    state.check_sender(req, msg.from)?;
    // A node removed from the cluster is refused whatever it sends, so a
    // removed node that comes back cannot disturb the members (its votes
    // would raise their terms). A node this one does not know yet is not
    // refused: it may be a member whose configuration entry has not
    // reached this node (the leader of a newer configuration, or a voter
    // whose vote this lagging node's log could still help elect).
    // Only a committed removal refuses: an uncommitted one can still be
    // truncated away, and the node it names would then be a member again.
    let view = state.node.cluster.borrow();
    if view.config_committed && view.membership.was_removed(msg.from) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "removed_member",
            format!(
                "node {} was removed from cluster {}; to take part again, wipe its data directory and start it \
                 with a new id and --join",
                msg.from,
                format_id(view.cluster_id)
            ),
        ));
    }
    Ok(())
}

/// Every peer request carries the sender's cluster id: a node of another
/// cluster (another `--peers` list, or a stray process on a reused port)
/// is refused before its message is read.
fn check_cluster(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let mine = state.node.cluster.borrow().cluster_id;
    let theirs = req.headers().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok());
    match theirs.map(parse_id) {
        Some(Ok(id)) if id == mine => Ok(()),
        Some(Ok(id)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_cluster",
            format!("this node belongs to cluster {}, the request to cluster {}", format_id(mine), format_id(id)),
        )),
        _ => Err(ApiError::bad_request(
            "missing_cluster_id",
            format!("peer requests must carry the cluster id in the {CLUSTER_HEADER} header"),
        )),
    }
}

/// Hands `msg` to the consensus core and answers with the core's response.
async fn step(msg: Message, state: &AppState) -> Result<HttpResponse, ApiError> {
    let (tx, rx) = oneshot::channel();
    state
        .node
        .consensus
        .send(InboundRpc { msg, reply: tx })
        .await
        .map_err(|_| ApiError::no_leader("the node is shutting down"))?;
    match tokio::time::timeout(state.settings.peer_timeout, rx).await {
        Ok(Ok(resp)) => Ok(HttpResponse::Ok().content_type("application/octet-stream").body(encode_message(&resp))),
        _ => Err(ApiError::timeout("no answer from the consensus core in time")),
    }
}

/// One chunk of a snapshot file from the leader.
pub async fn install_snapshot(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize_peer(&req)?;
    check_cluster(&req, &state)?;
    // The sender's chunk size is its own setting: accept up to the largest allowed.
    let body = read_body(&req, payload, MAX_SNAPSHOT_CHUNK + (64 << 10), state.settings.request_read_timeout).await?;
    let chunk = decode_snapshot_chunk(body)
        .map_err(|e| ApiError::bad_request("invalid_message", format!("bad snapshot chunk: {e}")))?;
    let Body::InstallSnapshot { meta } = &chunk.msg.body else {
        return Err(ApiError::bad_request(
            "invalid_message",
            format!("a {} message does not belong on {}", chunk.msg.body.kind().as_str(), req.path()),
        ));
    };
    check_peer(&req, &chunk.msg, &state)?;
    let receive = ReceiveChunk {
        from: chunk.msg.from,
        meta: meta.clone(),
        offset: chunk.offset,
        total: chunk.total,
        data: chunk.data,
    };
    let complete = state
        .node
        .snapshotter
        .send(receive)
        .await
        .map_err(|_| ApiError::no_leader("the node is shutting down"))?
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "snapshot_transfer_failed", e))?;
    if !complete {
        return Ok(HttpResponse::Ok().finish());
    }
    state.node.metrics.snapshots_received.fetch_add(1, Relaxed);
    step(chunk.msg, &state).await
}
