//! Operations endpoints: `/health`, `/ready`, `/status`, `/metrics`,
//! `/admin/log`, `POST /admin/snapshot`, `POST /admin/transfer-leader`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::client_api::{FORWARDED_HEADER, forward, read_body};
use super::errors::ApiError;
use super::{AppState, Forwarder};
use crate::actors::messages::{GetApplied, GetStatus, Status, TakeSnapshotNow, TransferFailed, TransferLeader};
use crate::auth::Role;
use crate::logging;

async fn status_of(state: &AppState) -> Result<(Status, u64), ApiError> {
    let down = |_| ApiError::no_leader("the node is shutting down");
    let status = state.node.consensus.send(GetStatus).await.map_err(down)?;
    let applied = state.node.state_machine.send(GetApplied).await.map_err(down)?;
    Ok((status, applied))
}

/// Liveness: the process answers HTTP.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "id": state.settings.id}))
}

/// The OpenAPI 3.1 description of the client and operations API (the
/// repository's `openapi.json`, built into the binary). Open like
/// `/health`: it describes the API, it holds nothing of the cluster.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(include_str!("../../openapi.json"))
}

/// Readiness: a leader is known and everything known committed is applied.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (s, applied) = status_of(&state).await?;
    let body = json!({"id": s.id, "leader": s.leader, "commit_index": s.commit_index, "applied_index": applied});
    if s.leader.is_none() {
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "no leader is known yet").with("detail", body)
        );
    }
    if applied < s.commit_index {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("applied {applied} of {} committed entries", s.commit_index),
        )
        .with("detail", body));
    }
    let mut body = body;
    body["ready"] = json!(true);
    Ok(HttpResponse::Ok().json(body))
}

/// `/status` as JSON: the consensus actor's view, the applied index, and
/// the client requests this node has served.
pub async fn status_json(state: &AppState) -> Result<Value, ApiError> {
    let (s, applied) = status_of(state).await?;
    let mut v = serde_json::to_value(&s).map_err(|e| ApiError::internal(e.to_string()))?;
    v["applied_index"] = json!(applied);
    let (reads, writes) = state.node.metrics.client_requests();
    v["requests"] = json!({"reads": reads, "writes": writes});
    Ok(v)
}

/// Id, role, term, leader, indexes and per-peer replication progress.
pub async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize_status(&req)?;
    Ok(HttpResponse::Ok().json(status_json(&state).await?))
}

/// Takes a snapshot of everything this node has applied and compacts its
/// log; answers once the snapshot file is durable.
pub async fn take_snapshot(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Admin)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let down = |_| ApiError::no_leader("the node is shutting down");
    state.node.consensus.send(TakeSnapshotNow { reply: tx }).await.map_err(down)?;
    match rx.await {
        Ok(Ok(info)) => Ok(HttpResponse::Ok().json(info)),
        Ok(Err(e)) if e.starts_with("nothing to snapshot") => {
            Err(ApiError::new(StatusCode::CONFLICT, "nothing_to_snapshot", e))
        }
        Ok(Err(e)) => Err(ApiError::internal(format!("the snapshot could not be written: {e}"))),
        Err(_) => Err(ApiError::no_leader("the node is shutting down")),
    }
}

/// Hands leadership to `{"to": id}`, or with no body (or `{}`) to the
/// most up-to-date voter; answers once another node leads. Any node takes
/// it: a follower passes it on to the leader.
pub async fn transfer_leader(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Admin)?;
    let body = read_body(&req, payload, 64 * 1024, state.settings.request_read_timeout).await?;
    let to = parse_transfer_target(&body)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let down = |_| ApiError::no_leader("the node is shutting down");
    state.node.consensus.send(TransferLeader { to, reply: tx }).await.map_err(down)?;
    let id = state.settings.id;
    match rx.await.map_err(|_| ApiError::no_leader("the node is shutting down"))? {
        Ok(done) => Ok(HttpResponse::Ok().json(done)),
        Err(TransferFailed::NotLeader(Some(leader))) if !req.headers().contains_key(FORWARDED_HEADER) => {
            forward(&state, &fwd, &req, body, leader).await
        }
        Err(TransferFailed::NotLeader(leader)) => Err(ApiError::no_leader(match leader {
            Some(l) => format!("node {id} is not the leader and the request was already forwarded; leader is {l}"),
            None => "no leader is known right now; retry shortly".to_string(),
        })),
        Err(TransferFailed::NotAVoter(t)) => {
            Err(ApiError::bad_request("unknown_member", format!("node {t} is not a voting member of the cluster")))
        }
        Err(TransferFailed::NoOtherVoter) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_other_voter",
            "this cluster has a single voter: there is nobody to hand leadership to",
        )),
        Err(TransferFailed::TimedOut(t)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transfer_timed_out",
            format!(
                "node {t} did not take over within an election timeout; node {id} still leads and takes writes again"
            ),
        )),
    }
}

/// The body of `POST /admin/transfer-leader`: empty, `{}` or `{"to": id}`.
fn parse_transfer_target(body: &[u8]) -> Result<Option<u64>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("invalid_json", "the body must be a JSON object like {\"to\": 2}"));
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "to") {
        return Err(ApiError::bad_request("unknown_field", format!("unknown field '{k}' (accepted: to)")));
    }
    match obj.get("to") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match super::client_api::whole_number(v) {
            Some(id) if id > 0 => Ok(Some(id)),
            _ => Err(ApiError::bad_request("invalid_field", format!("'to' must be a positive node id, not {v}"))),
        },
    }
}

/// Prometheus text format.
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize_status(&req)?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.node.metrics.render()))
}

fn log_body() -> Value {
    json!({"filter": logging::current_filter(), "targets": logging::TARGETS})
}

/// The log filter in force and the actor targets it can name.
pub async fn get_log(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Admin)?;
    Ok(HttpResponse::Ok().json(log_body()))
}

/// Replaces the log filter: `{"filter": "info,raftkv::election=trace"}`.
pub async fn put_log(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Admin)?;
    let body = read_body(&req, payload, 64 * 1024, state.settings.request_read_timeout).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object like {\"filter\": \"info\"}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "filter") {
        return Err(ApiError::bad_request("unknown_field", format!("unknown field '{k}' (accepted: filter)")));
    }
    let Some(spec) = obj.get("filter").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("missing_field", "'filter' must be a string in RUST_LOG syntax"));
    };
    logging::set_filter(spec).map_err(|e| ApiError::bad_request("invalid_field", e))?;
    log::info!(target: "raftkv::http", "log filter set to '{spec}'");
    Ok(HttpResponse::Ok().json(log_body()))
}
