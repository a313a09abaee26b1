//! Raft RPCs between peers: `POST /raft/request_vote`, `/raft/append_entries`,
//! `/raft/heartbeat`. Bodies are the binary encoding of `codec.rs`; the
//! response body is the core's answer, sent once the state it reflects is
//! durable. Internal: peers use these, clients do not.

use actix_web::{HttpRequest, HttpResponse, web};
use tokio::sync::oneshot;

use super::AppState;
use super::client_api::read_body;
use super::errors::ApiError;
use crate::actors::consensus::InboundRpc;
use crate::codec::{decode_message, encode_message};
use crate::raft::MessageKind;

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.peer_body_limit(), state.settings.request_read_timeout).await?;
    let msg =
        decode_message(body).map_err(|e| ApiError::bad_request("invalid_message", format!("bad Raft message: {e}")))?;
    let expected = match req.path() {
        "/raft/append_entries" => msg.body.kind() == MessageKind::AppendEntries,
        "/raft/heartbeat" => msg.body.kind() == MessageKind::Heartbeat,
        "/raft/request_vote" => matches!(msg.body.kind(), MessageKind::RequestVote | MessageKind::PreVote),
        _ => false,
    };
    if !expected {
        return Err(ApiError::bad_request(
            "invalid_message",
            format!("a {} message does not belong on {}", msg.body.kind().as_str(), req.path()),
        ));
    }
    if msg.to != state.settings.id {
        return Err(ApiError::bad_request(
            "wrong_node",
            format!("message for node {} delivered to node {}", msg.to, state.settings.id),
        ));
    }
    if msg.from == state.settings.id || !state.settings.peers.contains_key(&msg.from) {
        return Err(ApiError::bad_request("unknown_peer", format!("node {} is not a peer of this node", msg.from)));
    }
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
