//! Leases (API.md "Leases"): `POST /leases`, `POST /leases/{id}/keepalive`,
//! `GET /leases/{id}`, `DELETE /leases/{id}`; a key is put under a lease
//! with `PUT /kv/{key}` and `{"value": ..., "lease": id}`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::client_api::{params, read, read_body, write};
use super::errors::ApiError;
use super::{AppState, Forwarder};
use crate::auth::Role;
use crate::kv::lease::now_ms;
use crate::kv::{Command, Query};

/// Longest lease: a week.
pub const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;

fn lease_id(req: &HttpRequest) -> Result<u64, ApiError> {
    let raw = req.match_info().get("id").unwrap_or("");
    raw.parse::<u64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ApiError::bad_request("invalid_lease", format!("a lease id is a positive integer, not '{raw}'")))
}

/// `POST /leases` with `{"ttl_seconds": n}`.
pub async fn grant(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Write)?;
    params(&req, &[])?;
    let body = read_body(&req, payload, 1024, state.settings.request_read_timeout).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body must be {{\"ttl_seconds\": n}}: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::bad_request("invalid_json", "the body must be {\"ttl_seconds\": n}"));
    };
    if let Some(k) = map.keys().find(|k| *k != "ttl_seconds") {
        return Err(ApiError::bad_request("unknown_field", format!("unknown field '{k}' (accepted: ttl_seconds)"))
            .with("field", json!(k)));
    }
    let ttl = match map.get("ttl_seconds") {
        None => {
            return Err(ApiError::bad_request("missing_field", "missing field 'ttl_seconds'")
                .with("field", json!("ttl_seconds")));
        }
        Some(n) => {
            super::client_api::whole_number(n).filter(|n| (1..=MAX_TTL_SECONDS).contains(n)).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_field",
                    format!("'ttl_seconds' must be an integer from 1 to {MAX_TTL_SECONDS}"),
                )
                .with("field", json!("ttl_seconds"))
            })?
        }
    };
    write(&state, &fwd, &req, body, Command::LeaseGrant { now_ms: now_ms(), ttl_ms: ttl * 1000 }).await
}

/// A write about the lease named in the path (write role, no body).
async fn on_lease(
    req: &HttpRequest,
    state: &AppState,
    fwd: &Forwarder,
    command: impl FnOnce(u64) -> Command,
) -> Result<HttpResponse, ApiError> {
    state.authorize(req, Role::Write)?;
    params(req, &[])?;
    let id = lease_id(req)?;
    write(state, fwd, req, bytes::Bytes::new(), command(id)).await
}

/// `POST /leases/{id}/keepalive`: the lease's whole TTL again, from now.
pub async fn keep_alive(
    req: HttpRequest,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    on_lease(&req, &state, &fwd, |id| Command::LeaseKeepAlive { id, now_ms: now_ms() }).await
}

/// `DELETE /leases/{id}`: ends the lease and deletes its keys.
pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    on_lease(&req, &state, &fwd, |id| Command::LeaseRevoke { id }).await
}

/// `GET /leases/{id}`: TTL, time left and keys (linearizable).
pub async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Read)?;
    params(&req, &[])?;
    let id = lease_id(&req)?;
    read(&state, &fwd, &req, Query::Lease { id }, super::client_api::Consistency::Linearizable).await
}
