//! The client API (DESIGN §3): `/kv/{key}` GET/PUT/DELETE and `/kv?prefix=`.
//!
//! A follower forwards linearizable reads and writes to the leader it knows
//! and relays the answer; a request that was already forwarded once is not
//! forwarded again (503 instead), so requests cannot loop.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::errors::ApiError;
use super::{AppState, Forwarder, watch};
use crate::actors::consensus::ConsensusActor;
use crate::actors::messages::{ClientRead, ClientWrite, LocalRead};
use crate::actors::{ClientError, ClientOutcome, ClientReply, ClientResult};
use crate::auth::Role;
use crate::kv::watch::Filter;
use crate::kv::{Command, CommandResult, Condition, Item, Query, QueryResult};
use crate::raft::NodeId;

pub const MAX_KEY_BYTES: usize = 1024;
pub const FORWARDED_HEADER: &str = "x-raftkv-forwarded-by";
/// A write tagged with a client session: its id and the sequence number.
pub const SESSION_HEADER: &str = "raftkv-session";
pub const SEQ_HEADER: &str = "raftkv-seq";

// --- parsing -------------------------------------------------------------------

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; `+` stays `+` in a path.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The key of a `/kv/{key}` request, from the raw path: percent-decoded,
/// UTF-8, 1 to 1024 bytes; `/` is allowed.
pub fn parse_key(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req.uri().path().strip_prefix("/kv/").unwrap_or("");
    let bytes =
        percent_decode(raw).ok_or_else(|| ApiError::bad_request("invalid_key", "malformed %-escape in the key"))?;
    let key =
        String::from_utf8(bytes).map_err(|_| ApiError::bad_request("invalid_key", "the key is not valid UTF-8"))?;
    if key.is_empty() {
        return Err(ApiError::bad_request("invalid_key", "the key must not be empty: use /kv/<key>"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::too_large(format!("the key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(key)
}

/// Query parameters, checked against the names the endpoint accepts.
pub(super) fn params(req: &HttpRequest, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request("invalid_parameter", format!("malformed query string: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, v) in pairs.into_inner() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("unknown query parameter '{k}' (accepted: {})", allowed.join(", ")),
            )
            .with("parameter", json!(k)));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request("invalid_parameter", format!("query parameter '{k}' given twice")));
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Consistency {
    Linearizable,
    Lease,
    Stale,
}

fn consistency(p: &BTreeMap<String, String>) -> Result<Consistency, ApiError> {
    match p.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("lease") => Ok(Consistency::Lease),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("consistency must be linearizable, lease or stale, not '{other}'"),
        )),
    }
}

fn u64_param(p: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    p.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request("invalid_parameter", format!("{name} must be a non-negative integer, not '{v}'"))
            })
        })
        .transpose()
}

/// Reads the whole body, refusing more than `limit` bytes with a 413, and
/// a body that is not complete within `timeout` with a 408. The deadline is
/// for the whole body, counted from the call (handlers call this first, as
/// soon as the head is parsed), not for the gaps between chunks: a client
/// trickling a byte a second is cut off as surely as one that stalls.
///
/// When it gives up on a body that is not complete, the connection is
/// closed after the answer (see [`close_after_response`]).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("the request body exceeds {limit} bytes"));
    if let Some(len) =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        close_after_response(payload);
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request("invalid_body", format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    let err = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => return Ok(body.freeze()),
        Ok(Err(e)) => e,
        Err(_) => ApiError::request_timeout(format!(
            "the request body did not arrive in full within {} ms ({} bytes came); the connection is closed",
            timeout.as_millis(),
            body.len()
        )),
    };
    close_after_response(payload);
    Err(err)
}

/// How long an abandoned body is held at most (see [`close_after_response`]);
/// actix closes the connection at most `client_disconnect_timeout` (1 s)
/// after the answer is written, which ends the hold much sooner.
const ABANDONED_BODY_HOLD: Duration = Duration::from_secs(10);

/// Makes actix close the connection after the answer to a request whose
/// body we stopped reading. actix-http does that by itself (it answers with
/// `Connection: close`, then closes) when the body is unfinished but still
/// referenced — but when the handler drops a *chunked* body, it instead
/// keeps the connection and reads on to discard the rest, for as long as the
/// client takes, forever if the last chunk never comes. So the body is
/// handed to a small task that holds it until the connection ends (the
/// stream then yields an error) or the rest of it arrives.
fn close_after_response(mut payload: web::Payload) {
    actix_web::rt::spawn(async move {
        let drain = async { while let Some(Ok(_)) = payload.next().await {} };
        let _ = tokio::time::timeout(ABANDONED_BODY_HOLD, drain).await;
    });
}

/// `{"value": "v"}` with at most one of `"if_value": "old"` or `"if_revision": n`.
pub fn parse_put_body(body: &[u8], key: String, max_value: usize) -> Result<Command, ApiError> {
    const FIELDS: [&str; 4] = ["value", "if_value", "if_revision", "lease"];
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_json", "the body must be a JSON object like {\"value\": \"...\"}"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::bad_request("invalid_json", "the body must be a JSON object like {\"value\": \"...\"}"));
    };
    if let Some(k) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("unknown field '{k}' (accepted: value, if_value, if_revision, lease)"),
        )
        .with("field", json!(k)));
    }
    let value = match map.get("value") {
        None => {
            return Err(ApiError::bad_request("missing_field", "missing field 'value'").with("field", json!("value")));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_field", "'value' must be a string").with("field", json!("value"))
            );
        }
    };
    if value.len() > max_value {
        return Err(ApiError::too_large(format!("the value is {} bytes; the limit is {max_value}", value.len())));
    }
    let if_value = match map.get("if_value") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "'if_value' must be a string; to require that the key does not exist, use \"if_revision\": 0",
            )
            .with("field", json!("if_value")));
        }
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_field", "'if_value' must be a string").with("field", json!("if_value"))
            );
        }
    };
    let if_revision = match map.get("if_revision") {
        None => None,
        Some(n) => Some(whole_number(n).ok_or_else(|| {
            ApiError::bad_request("invalid_field", "'if_revision' must be a non-negative integer")
                .with("field", json!("if_revision"))
        })?),
    };
    let condition = match (if_value, if_revision) {
        (None, None) => Condition::None,
        (Some(v), None) => Condition::IfValue(v),
        (None, Some(r)) => Condition::IfRevision(r),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("invalid_field", "give at most one of 'if_value' and 'if_revision'"));
        }
    };
    let put = Command::Put { key, value, condition };
    match map.get("lease") {
        None => Ok(put),
        Some(n) => match whole_number(n).filter(|&n| n > 0) {
            Some(lease) => Ok(Command::Leased { lease, inner: Box::new(put) }),
            None => Err(ApiError::bad_request("invalid_field", "'lease' must be a lease id (a positive integer)")
                .with("field", json!("lease"))),
        },
    }
}

// --- talking to the actors --------------------------------------------------------

enum Reply {
    Done(ClientOutcome),
    Forwarded(HttpResponse),
}

/// Sends a request into the node and waits for its answer, forwarding it
/// to the leader if this node is not the leader.
async fn submit<M>(
    state: &AppState,
    fwd: &Forwarder,
    req: &HttpRequest,
    body: Bytes,
    make: impl FnOnce(ClientReply) -> M,
) -> Result<Reply, ApiError>
where
    M: actix::Message<Result = ()> + Send + 'static,
    ConsensusActor: actix::Handler<M>,
{
    let _slot = state.admit()?;
    let (tx, rx) = oneshot::channel::<ClientResult>();
    let deadline = state.settings.request_timeout;
    let asked = async {
        state.node.consensus.send(make(tx)).await.map_err(|_| ApiError::no_leader("the node is shutting down"))?;
        rx.await.map_err(|_| ApiError::timeout("the request was accepted but its outcome was lost"))
    };
    let result = match tokio::time::timeout(deadline, asked).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::timeout(format!(
                "no answer within {} ms; the request may or may not have taken effect",
                deadline.as_millis()
            )));
        }
    };
    match result {
        Ok(outcome) => Ok(Reply::Done(outcome)),
        Err(ClientError::NotLeader { leader: Some(leader) }) if !req.headers().contains_key(FORWARDED_HEADER) => {
            forward(state, fwd, req, body, leader).await.map(Reply::Forwarded)
        }
        Err(ClientError::NotLeader { leader }) => Err(ApiError::no_leader(match leader {
            Some(l) => format!(
                "node {} is not the leader and the request was already forwarded; leader is {l}",
                state.settings.id
            ),
            None => "no leader is known right now; retry shortly".to_string(),
        })),
        Err(ClientError::Dropped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_changed",
            "the leader changed and another entry was committed in this write's place; it was not applied and will not be — retry",
        )),
        Err(ClientError::Unavailable) => Err(ApiError::no_leader("the node is shutting down")),
    }
}

/// A non-negative whole number in a JSON body: `7`, and also `7.0`, which
/// JSON (and JSON Schema's `integer`) holds to be the same number.
pub(super) fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_992.0).map(|f| f as u64)
    })
}

/// Relays the request to the leader and its answer back.
pub(super) async fn forward(
    state: &AppState,
    fwd: &Forwarder,
    req: &HttpRequest,
    body: Bytes,
    leader: NodeId,
) -> Result<HttpResponse, ApiError> {
    let Some(addr) = state.node.cluster.borrow().address_of(leader).map(str::to_string) else {
        return Err(ApiError::no_leader(format!("leader {leader} has no known address")));
    };
    let pq = req.uri().path_and_query().map_or(req.uri().path(), |pq| pq.as_str());
    let mut out = fwd
        .client
        .request(req.method().clone(), format!("{}://{addr}{pq}", super::peer_scheme(&state.settings)))
        .insert_header((FORWARDED_HEADER, state.settings.id.to_string()))
        .timeout(state.settings.request_timeout);
    // The leader checks the client's token again, and tags the write with
    // the client's session itself.
    for name in ["content-type", "authorization", SESSION_HEADER, SEQ_HEADER] {
        if let Some(v) = req.headers().get(name) {
            out = out.insert_header((name, v.clone()));
        }
    }
    let mut resp = match out.send_body(body).await {
        Ok(r) => r,
        // Only a failure to *establish* the connection proves the request
        // never reached the leader. awc also reports a connection closed
        // after the request was sent as `Connect(Disconnected)`: that one
        // is in doubt, like any other error after sending.
        Err(awc::error::SendRequestError::Connect(e))
            if !matches!(e, awc::error::ConnectError::Disconnected | awc::error::ConnectError::H2(_)) =>
        {
            return Err(ApiError::no_leader(format!("leader {leader} at {addr} is unreachable: {e}")));
        }
        Err(e) => {
            return Err(ApiError::timeout(format!(
                "lost the connection to leader {leader} at {addr} ({e}); the request may or may not have taken effect"
            )));
        }
    };
    let body = resp
        .body()
        .limit(state.client_body_limit() + (1 << 20))
        .await
        .map_err(|e| ApiError::timeout(format!("reading the answer of leader {leader} failed: {e}")))?;
    let mut b = HttpResponse::build(resp.status());
    for name in ["content-type", "retry-after"] {
        if let Some(v) = resp.headers().get(name) {
            b.insert_header((name, v.clone()));
        }
    }
    b.insert_header(("x-raftkv-leader", leader.to_string()));
    Ok(b.body(body))
}

// --- handlers -------------------------------------------------------------------------

fn write_response(result: CommandResult) -> HttpResponse {
    match result {
        CommandResult::Put { key, revision } => HttpResponse::Ok().json(json!({"key": key, "revision": revision})),
        CommandResult::Deleted { key, deleted, revision } => {
            HttpResponse::Ok().json(json!({"key": key, "deleted": deleted, "revision": revision}))
        }
        CommandResult::PreconditionFailed { key, current } => {
            let err = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("the condition on '{key}' does not hold; nothing was changed"),
            )
            .with("key", json!(key))
            .with("current", json!(current.map(|i| json!({"value": i.value, "revision": i.revision}))));
            actix_web::ResponseError::error_response(&err)
        }
        CommandResult::Txn { succeeded, revision, results } => super::txn::txn_response(succeeded, revision, results),
        CommandResult::SessionOpened { session, ttl_ms } => {
            HttpResponse::Ok().json(json!({"session": session, "ttl_ms": ttl_ms}))
        }
        CommandResult::SessionExpired { session } => actix_web::ResponseError::error_response(
            &ApiError::new(
                StatusCode::GONE,
                "session_expired",
                format!(
                    "session {session} is not open (it expired, was evicted or never existed); the write was not \
                     applied — open a new session and write again"
                ),
            )
            .with("session", json!(session)),
        ),
        CommandResult::LeaseGranted { id, ttl_ms } | CommandResult::LeaseKept { id, ttl_ms } => {
            HttpResponse::Ok().json(json!({"id": id, "ttl_seconds": ttl_ms / 1000}))
        }
        CommandResult::LeaseRevoked { id, deleted, revision } => {
            HttpResponse::Ok().json(json!({"id": id, "revoked": true, "deleted_keys": deleted, "revision": revision}))
        }
        CommandResult::LeaseNotFound { id } => lease_not_found(id),
        CommandResult::LeasesExpired { revoked } => HttpResponse::Ok().json(json!({"expired": revoked})),
        CommandResult::SeqSuperseded { session, seq, last_seq } => actix_web::ResponseError::error_response(
            &ApiError::new(
                StatusCode::CONFLICT,
                "sequence_superseded",
                format!(
                    "session {session} has applied sequence number {last_seq} already; the answer to {seq} is no \
                     longer kept and the write was not applied again"
                ),
            )
            .with("session", json!(session))
            .with("last_seq", json!(last_seq)),
        ),
    }
}

fn lease_not_found(id: u64) -> HttpResponse {
    actix_web::ResponseError::error_response(
        &ApiError::new(
            StatusCode::NOT_FOUND,
            "lease_not_found",
            format!("lease {id} does not exist (never granted, revoked, or expired); nothing was done"),
        )
        .with("lease", json!(id)),
    )
}

use crate::kv::lease::now_ms;

/// The write, tagged with the client's session when the request carries
/// `Raftkv-Session` and `Raftkv-Seq` (both or neither).
pub(super) fn in_session(req: &HttpRequest, command: Command) -> Result<Command, ApiError> {
    let header = |name: &str| -> Result<Option<u64>, ApiError> {
        let Some(v) = req.headers().get(name) else { return Ok(None) };
        match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(ApiError::bad_request("invalid_header", format!("{name} must be a positive integer"))
                .with("header", json!(name))),
        }
    };
    match (header(SESSION_HEADER)?, header(SEQ_HEADER)?) {
        (None, None) => Ok(command),
        (Some(session), Some(seq)) => {
            Ok(Command::InSession { session, seq, now_ms: now_ms(), inner: Box::new(command) })
        }
        _ => Err(ApiError::bad_request(
            "invalid_header",
            format!("give both {SESSION_HEADER} and {SEQ_HEADER}, or neither"),
        )),
    }
}

/// `POST /sessions`: opens a client session (write role).
pub async fn open_session(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Write)?;
    params(&req, &[])?;
    let body = read_body(&req, payload, 1024, state.settings.request_read_timeout).await?;
    if !(body.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<Value>(&body).is_ok_and(|v| v == json!({})))
    {
        return Err(ApiError::bad_request("invalid_json", "the body must be empty or {}"));
    }
    let command = Command::OpenSession {
        now_ms: now_ms(),
        ttl_ms: state.settings.session_ttl.as_millis() as u64,
        max_sessions: state.settings.max_sessions,
    };
    write(&state, &fwd, &req, body, command).await
}

fn read_response(result: QueryResult, stale: bool) -> HttpResponse {
    let mut ok = HttpResponse::Ok();
    if stale {
        ok.insert_header(("x-raftkv-consistency", "stale"));
    }
    match result {
        QueryResult::Found(Item { key, value, revision }) => {
            let mut v = json!({"key": key, "value": value, "revision": revision});
            if stale {
                v["stale"] = json!(true);
            }
            ok.json(v)
        }
        QueryResult::NotFound { key } => {
            let err = ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("key '{key}' not found"))
                .with("key", json!(key));
            let mut resp = actix_web::ResponseError::error_response(&err);
            if stale {
                resp.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static("x-raftkv-consistency"),
                    actix_web::http::header::HeaderValue::from_static("stale"),
                );
            }
            resp
        }
        QueryResult::Lease { id, ttl_ms, expires_at, clock_ms, keys } => {
            // Time left by this node's clock (never less than the log's).
            let remaining = expires_at.saturating_sub(now_ms().max(clock_ms));
            ok.json(json!({"id": id, "ttl_seconds": ttl_ms / 1000, "remaining_ms": remaining, "keys": keys}))
        }
        QueryResult::LeaseNotFound { id } => lease_not_found(id),
        QueryResult::Items { items, revision } => {
            let mut v = json!({"items": items, "revision": revision});
            if stale {
                v["stale"] = json!(true);
            }
            ok.json(v)
        }
    }
}

pub(super) async fn read(
    state: &AppState,
    fwd: &Forwarder,
    req: &HttpRequest,
    query: Query,
    c: Consistency,
) -> Result<HttpResponse, ApiError> {
    if c == Consistency::Stale {
        let (result, _) = state
            .node
            .state_machine
            .send(LocalRead { query })
            .await
            .map_err(|_| ApiError::no_leader("the node is shutting down"))?;
        return Ok(read_response(result, true));
    }
    let lease = c == Consistency::Lease;
    match submit(state, fwd, req, Bytes::new(), |reply| ClientRead { query, lease, reply }).await? {
        Reply::Forwarded(r) => Ok(r),
        Reply::Done(ClientOutcome::Read(result)) => Ok(read_response(result, false)),
        Reply::Done(other) => Err(ApiError::internal(format!("unexpected answer to a read: {other:?}"))),
    }
}

pub(super) async fn write(
    state: &AppState,
    fwd: &Forwarder,
    req: &HttpRequest,
    body: Bytes,
    command: Command,
) -> Result<HttpResponse, ApiError> {
    match submit(state, fwd, req, body, |reply| ClientWrite { command: command.encode(), reply }).await? {
        Reply::Forwarded(r) => Ok(r),
        Reply::Done(ClientOutcome::Write(result)) => Ok(write_response(result)),
        Reply::Done(other) => Err(ApiError::internal(format!("unexpected answer to a write: {other:?}"))),
    }
}

/// `GET /kv/{key}?consistency=linearizable|lease|stale`
pub async fn get_key(
    req: HttpRequest,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    if req.uri().path() == "/kv/" {
        return list(req, state, fwd).await;
    }
    state.authorize(&req, Role::Read)?;
    let key = parse_key(&req)?;
    let p = params(&req, &["consistency", "watch", "from_revision", "wait", "after_revision"])?;
    let filter = Filter::Key(key.clone());
    read_watch_or_wait(&state, &fwd, &req, &p, Query::Get { key }, filter).await
}

/// A read, a watch (`watch=true`) or a blocking read (`after_revision`).
async fn read_watch_or_wait(
    state: &AppState,
    fwd: &Forwarder,
    req: &HttpRequest,
    p: &BTreeMap<String, String>,
    query: Query,
    filter: Filter,
) -> Result<HttpResponse, ApiError> {
    let mode = watch::mode(p)?;
    let c = consistency(p)?;
    match mode {
        watch::Mode::Read => read(state, fwd, req, query, c).await,
        watch::Mode::Watch => watch::stream(state, req, filter, p).await,
        watch::Mode::Wait { after, wait } => {
            let seen = watch::block(state, filter, after, wait).await?;
            let mut resp = read(state, fwd, req, query, c).await?;
            resp.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(watch::REVISION_HEADER),
                actix_web::http::header::HeaderValue::from(seen),
            );
            Ok(resp)
        }
    }
}

/// `PUT /kv/{key}` with `{"value": ..., "if_value"?: ..., "if_revision"?: ...}`
pub async fn put_key(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Write)?;
    let key = parse_key(&req)?;
    params(&req, &[])?;
    let body = read_body(&req, payload, state.client_body_limit(), state.settings.request_read_timeout).await?;
    let command = in_session(&req, parse_put_body(&body, key, state.settings.max_value_bytes)?)?;
    write(&state, &fwd, &req, body, command).await
}

/// `DELETE /kv/{key}?if_revision=n`
pub async fn delete_key(
    req: HttpRequest,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Write)?;
    let key = parse_key(&req)?;
    let p = params(&req, &["if_revision"])?;
    let if_revision = u64_param(&p, "if_revision")?;
    let command = in_session(&req, Command::Delete { key, if_revision })?;
    write(&state, &fwd, &req, Bytes::new(), command).await
}

/// `GET /kv?prefix=p&limit=n&consistency=...`
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    fwd: web::Data<Forwarder>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, Role::Read)?;
    let p = params(&req, &["prefix", "limit", "consistency", "watch", "from_revision", "wait", "after_revision"])?;
    let limit = match u64_param(&p, "limit")? {
        Some(0) => return Err(ApiError::bad_request("invalid_parameter", "limit must be at least 1")),
        Some(n) => Some(n as usize),
        None => None,
    };
    let prefix = p.get("prefix").cloned().unwrap_or_default();
    let filter = Filter::Prefix(prefix.clone());
    read_watch_or_wait(&state, &fwd, &req, &p, Query::List { prefix, limit }, filter).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c+d").unwrap(), b"a/b c+d");
        assert!(percent_decode("bad%2").is_none());
        assert!(percent_decode("bad%zz").is_none());
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let n = |s: &str| whole_number(&serde_json::from_str(s).unwrap());
        assert_eq!((n("7"), n("7.0"), n("0")), (Some(7), Some(7), Some(0)));
        for bad in ["7.5", "-1", "-1.0", "1e300", "\"7\"", "null"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn put_bodies_are_strict() {
        let p = |b: &str| parse_put_body(b.as_bytes(), "k".into(), 10);
        assert_eq!(
            p(r#"{"value":"v"}"#).unwrap(),
            Command::Put { key: "k".into(), value: "v".into(), condition: Condition::None }
        );
        assert_eq!(
            p(r#"{"value":"v","if_revision":0}"#).unwrap(),
            Command::Put { key: "k".into(), value: "v".into(), condition: Condition::IfRevision(0) }
        );
        let code = |b: &str| p(b).unwrap_err().code;
        assert_eq!(code(""), "invalid_json");
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1]"), "invalid_json");
        assert_eq!(code(r#"{"valu":"v"}"#), "unknown_field");
        assert_eq!(code(r#"{"value":"v","if_valu":"x"}"#), "unknown_field");
        assert_eq!(code(r#"{}"#), "missing_field");
        assert_eq!(code(r#"{"value":1}"#), "invalid_field");
        assert_eq!(code(r#"{"value":"v","if_value":null}"#), "invalid_field");
        assert_eq!(code(r#"{"value":"v","if_revision":-1}"#), "invalid_field");
        assert_eq!(code(r#"{"value":"v","if_revision":"3"}"#), "invalid_field");
        assert_eq!(code(r#"{"value":"v","if_value":"a","if_revision":1}"#), "invalid_field");
        assert_eq!(code(r#"{"value":"01234567890"}"#), "too_large");
        assert_eq!(p(r#"{"value":"01234567890"}"#).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(parse_put_body(b"{\"value\":\"\xff\"}", "k".into(), 10).unwrap_err().code, "invalid_json");
    }
}
