//! Membership endpoints: `GET /cluster/members`, `POST /cluster/members`,
//! `POST /cluster/members/{id}/promote`, `DELETE /cluster/members/{id}`
//! (and `POST /cluster/leader/transfer`, the same as
//! `/admin/transfer-leader`). Any node takes a change and passes it on to
//! the leader; the answer comes once the change has committed. One change
//! at a time: replace a member by adding the new one as a learner,
//! promoting it once it has caught up, then removing the old one.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::client_api::{FORWARDED_HEADER, forward, read_body};
use super::errors::ApiError;
use super::{AppState, Forwarder};
use crate::actors::messages::{ChangeFailed, ChangeMembers, GetStatus};
use crate::auth::Role;
use crate::cluster::format_id;
use crate::raft::{ConfChange, ConfChangeError, NodeId, NotLeader};

/// The configuration in force on this node, each member's role and, on
/// the leader, how far its log is replicated.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Read)?;
    let status =
        state.node.consensus.send(GetStatus).await.map_err(|_| ApiError::no_leader("the node is shutting down"))?;
    let view = state.node.cluster.borrow().clone();
    let leader_last = (status.role == "leader").then_some(status.last_log_index);
    let members: Vec<Value> = view
        .membership
        .members
        .iter()
        .map(|(&id, m)| {
            let peer = status.peers.iter().find(|p| p.id == id);
            let matched = if id == status.id { leader_last } else { peer.and_then(|p| p.match_index) };
            let address = if id == status.id {
                status.address.clone()
            } else {
                peer.map_or_else(|| m.address.clone(), |p| p.address.clone())
            };
            let mut v = json!({"id": id, "address": address, "role": if m.voter { "voter" } else { "learner" }});
            if let (Some(matched), Some(last)) = (matched, leader_last) {
                v["match_index"] = json!(matched);
                v["lag"] = json!(last.saturating_sub(matched));
                v["reachable"] = json!(id == status.id || peer.and_then(|p| p.reachable) == Some(true));
            }
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "cluster_id": format_id(view.cluster_id),
        "node": status.id,
        "leader": status.leader,
        "term": status.term,
        "config_index": view.config_index,
        "config_committed": status.config_committed,
        "members": members,
        "removed": view.membership.removed,
    })))
}

/// `{"id": 4, "address": "127.0.0.1:8004", "learner": true}`: a new member,
/// as a learner (it becomes a voter with `promote` once it has caught up).
pub async fn add(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Admin)?;
    let body = read_body(&req, payload, 64 * 1024, state.settings.request_read_timeout).await?;
    let (id, address) = parse_add(&body)?;
    // Never reuse a removed member's id: its old data may be gone, and a
    // node that forgot its vote could vote twice in one term. (The leader
    // publishes every configuration as it appends it, so this view is
    // current there; a follower forwards, and the leader checks again.)
    if state.node.cluster.borrow().membership.was_removed(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "id_was_removed",
            format!("id {id} belonged to a member that was removed; a new member needs an id never used before"),
        ));
    }
    change(&req, &state, &fwd, body, ConfChange::AddLearner { id, address }, StatusCode::CREATED).await
}

pub async fn promote(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    by_id(req, &path, state, fwd, |id| ConfChange::Promote { id }).await
}

pub async fn remove(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    by_id(req, &path, state, fwd, |id| ConfChange::Remove { id }).await
}

/// A change that names only the member (`/cluster/members/{id}...`).
async fn by_id(
    req: HttpRequest,
    id: &str,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
    make: fn(NodeId) -> ConfChange,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Admin)?;
    let id = parse_id(id)?;
    change(&req, &state, &fwd, Default::default(), make(id), StatusCode::OK).await
}

async fn change(
    req: &HttpRequest,
    state: &AppState,
    fwd: &Forwarder,
    body: bytes::Bytes,
    change: ConfChange,
    ok: StatusCode,
) -> Result<HttpResponse, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let down = |_| ApiError::no_leader("the node is shutting down");
    state.node.consensus.send(ChangeMembers { change: change.clone(), reply: tx }).await.map_err(down)?;
    let deadline = state.settings.request_timeout;
    let answer = match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(a)) => a,
        Ok(Err(_)) => {
            return Err(ApiError::timeout(
                "the change was appended but its outcome is unknown; see GET /cluster/members",
            ));
        }
        Err(_) => {
            return Err(ApiError::timeout(format!(
                "the change did not commit within {} ms; it may still — see GET /cluster/members",
                deadline.as_millis()
            )));
        }
    };
    let me = state.settings.id;
    match answer {
        Ok(done) => {
            let members = state.node.cluster.borrow().membership.clone();
            let list: Vec<Value> = members
                .members
                .iter()
                .map(|(id, m)| json!({"id": id, "address": m.address, "role": if m.voter { "voter" } else { "learner" }}))
                .collect();
            Ok(HttpResponse::build(ok).json(json!({"change": describe(&change), "index": done.index, "members": list})))
        }
        Err(ChangeFailed::Refused(ConfChangeError::NotLeader(NotLeader::Leader(Some(leader)))))
            if !req.headers().contains_key(FORWARDED_HEADER) =>
        {
            forward(state, fwd, req, body, leader).await
        }
        Err(ChangeFailed::Refused(e)) => Err(refusal(me, e)),
        Err(ChangeFailed::Dropped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_changed",
            "the leader changed and another entry was committed in this change's place; it did not happen — retry",
        )),
    }
}

fn describe(c: &ConfChange) -> String {
    match c {
        ConfChange::AddLearner { id, address } => format!("add learner {id} at {address}"),
        ConfChange::Promote { id } => format!("promote {id} to voter"),
        ConfChange::Remove { id } => format!("remove {id}"),
    }
}

/// A stable code per refusal; nothing was changed in any of these.
fn refusal(me: NodeId, e: ConfChangeError) -> ApiError {
    let msg = e.to_string();
    match e {
        ConfChangeError::NotLeader(NotLeader::Leader(Some(l))) => ApiError::no_leader(format!(
            "node {me} is not the leader and the request was already forwarded; leader is {l}"
        )),
        ConfChangeError::NotLeader(NotLeader::Leader(None)) => {
            ApiError::no_leader("no leader is known right now; retry shortly")
        }
        ConfChangeError::NotLeader(NotLeader::Transferring(_)) => {
            ApiError::no_leader(format!("{msg}; retry once it is done"))
        }
        ConfChangeError::NotReady => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("{msg}; retry shortly"))
        }
        ConfChangeError::InProgress { index } => {
            ApiError::new(StatusCode::CONFLICT, "change_in_progress", format!("{msg}; retry once it has committed"))
                .with("index", json!(index))
        }
        ConfChangeError::AlreadyMember(_) => ApiError::new(StatusCode::CONFLICT, "already_member", msg),
        ConfChangeError::UnknownMember(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_member", msg),
        ConfChangeError::NotALearner(_) => ApiError::new(StatusCode::CONFLICT, "not_a_learner", msg),
        ConfChangeError::LearnerBehind { matched, last, max_lag, .. } => {
            ApiError::new(StatusCode::CONFLICT, "learner_behind", format!("{msg}; retry once it has caught up"))
                .with("match_index", json!(matched))
                .with("leader_last_index", json!(last))
                .with("max_lag", json!(max_lag))
        }
        ConfChangeError::WouldLoseQuorum { reachable, needed } => {
            ApiError::new(StatusCode::CONFLICT, "would_lose_quorum", msg)
                .with("reachable", json!(reachable))
                .with("needed", json!(needed))
        }
        ConfChangeError::LastVoter(_) => ApiError::new(StatusCode::CONFLICT, "last_voter", msg),
    }
}

fn parse_id(s: &str) -> Result<NodeId, ApiError> {
    match s.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request("invalid_id", format!("'{s}' is not a node id (a positive integer)"))),
    }
}

fn parse_add(body: &[u8]) -> Result<(NodeId, String), ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let example = "{\"id\": 4, \"address\": \"127.0.0.1:8004\", \"learner\": true}";
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("invalid_json", format!("the body must be a JSON object like {example}")));
    };
    if let Some(k) = obj.keys().find(|k| !["id", "address", "learner"].contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("unknown field '{k}' (accepted: id, address, learner)"),
        ));
    }
    let id = match obj.get("id").and_then(super::client_api::whole_number) {
        Some(id) if id > 0 => id,
        _ => return Err(ApiError::bad_request("invalid_field", format!("'id' must be a positive integer: {example}"))),
    };
    let Some(address) = obj.get("address").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("invalid_field", format!("'address' (ip:port) is required: {example}")));
    };
    match address.parse::<std::net::SocketAddr>() {
        Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => {}
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("'address' must be the ip:port the other members reach the new node at, not '{address}'"),
            ));
        }
    }
    match obj.get("learner") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(ApiError::bad_request(
                "must_join_as_learner",
                "a new member joins as a learner (\"learner\": true) and is promoted once it has caught up: a voter \
                 with an empty log would count in every majority before it could help one",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request("invalid_field", format!("'learner' must be true, not {other}")));
        }
    }
    Ok((id, address.to_string()))
}
