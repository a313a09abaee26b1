//! The HTTP front door: one actix-web server for the client API, the
//! operations endpoints and the internal Raft RPCs. Handlers only
//! translate: parse and validate, send a message into the actor system,
//! map the answer to a response.
//!
//! Routes, grouped:
//! * client API (`client_api.rs`): `/kv/{key}`, `/kv?prefix=`
//! * web view (`ui.rs`): `/ui`, `/ui/events`
//! * operations (`admin.rs`): `/health`, `/ready`, `/status`, `/metrics`, `/admin/log`, `/admin/snapshot`,
//!   `/admin/transfer-leader` (also `/cluster/leader/transfer`)
//! * membership (`cluster.rs`): `/cluster/members`, `/cluster/members/{id}`, `/cluster/members/{id}/promote`
//! * Raft internal (`raft_rpc.rs`): `/raft/request_vote`, `/raft/append_entries`, `/raft/heartbeat`,
//!   `/raft/timeout_now`, `/raft/install_snapshot` (chunks of a snapshot file)
//!
//! Slow clients: a body must arrive within `--request-read-timeout-ms` of
//! its head (`client_api::read_body`, 408), actix times the first head and
//! idle keep-alive, and `conn_watch.rs` closes connections stalled in a
//! later head.

pub mod admin;
pub mod client_api;
pub mod cluster;
pub mod conn_watch;
pub mod errors;
pub mod lease;
pub mod raft_rpc;
pub mod txn;
pub mod ui;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use log::{debug, info, warn};

use crate::actors::NodeHandles;
use crate::auth::{self, Role};
use crate::config::Settings;
use crate::metrics::Metrics;
use errors::ApiError;

const T_HTTP: &str = "raftkv::http";

/// Shared by every worker.
pub struct AppState {
    pub settings: Settings,
    pub node: NodeHandles,
    /// Client requests (writes and leader reads) this node is working on.
    pub in_flight: AtomicUsize,
}

/// A client request's place among the `max_pending` a node works on at
/// once; given back when the request is answered.
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AppState {
    /// Takes a slot for a client request, or refuses it with 503
    /// `overloaded` before anything was proposed or forwarded.
    pub fn admit(&self) -> Result<Slot<'_>, ApiError> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(&self.in_flight);
        if before >= self.settings.max_pending {
            self.node.metrics.overloaded_requests.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::overloaded(format!(
                "node {} is working on {} requests, its limit (--max-pending); this one was not carried out — retry shortly",
                self.settings.id, self.settings.max_pending
            )));
        }
        Ok(slot)
    }

    /// Refuses a client request that lacks a token of at least role `need`
    /// (when the node has a tokens file): 401 without a valid token, 403
    /// with one whose role is too low. Nothing has been done then.
    pub fn authorize(&self, req: &HttpRequest, need: Role) -> Result<(), ApiError> {
        let Some(tokens) = &self.settings.tokens else { return Ok(()) };
        let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(auth::bearer) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this node requires a token: send `Authorization: Bearer <token>` (raftkvctl --token)",
            ));
        };
        match tokens.find(token) {
            None => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "the token is not valid on this node"))
            }
            Some((name, role)) if role < need => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token '{name}' has the {} role; {} {} needs {}",
                    role.as_str(),
                    req.method(),
                    req.path(),
                    need.as_str()
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// `/status` and `/metrics`: open with `--public-status`, else any valid token.
    pub fn authorize_status(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.settings.public_status { Ok(()) } else { self.authorize(req, Role::Read) }
    }

    /// `/raft/*`: with TLS, a client certificate the cluster CA signed (the
    /// handshake verified it); the cluster secret, when the node has one.
    pub fn authorize_peer(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.settings.tls.is_some() && req.conn_data::<conn_watch::PeerCert>().is_none() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "peer_certificate_required",
                "peer requests need a client certificate signed by this cluster's CA (--trusted-ca-file)",
            ));
        }
        let Some(secret) = &self.settings.cluster_secret else { return Ok(()) };
        let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        match header.and_then(auth::bearer) {
            Some(presented) if secret.matches(presented) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated_peer",
                "peer requests must carry this cluster's secret (--cluster-secret-file)",
            )),
        }
    }

    /// With TLS, a peer message must come from the member its certificate
    /// names (`member-<id>.raftkv`): one member's certificate cannot speak
    /// for another.
    pub fn check_sender(&self, req: &HttpRequest, from: u64) -> Result<(), ApiError> {
        if self.settings.tls.is_none() {
            return Ok(());
        }
        match req.conn_data::<conn_watch::PeerCert>() {
            Some(cert) if crate::tls::names_member(&cert.0, from) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "peer_identity_mismatch",
                format!(
                    "the message claims to come from member {from}, but the client certificate does not name {}",
                    crate::tls::member_name(from)
                ),
            )),
        }
    }

    /// Largest client request body accepted: the value limit, room for JSON
    /// escaping (a value of quotes doubles in size) and the other fields.
    pub fn client_body_limit(&self) -> usize {
        2 * self.settings.max_value_bytes + 64 * 1024
    }

    /// Largest peer message accepted: a full AppendEntries batch plus one value.
    pub fn peer_body_limit(&self) -> usize {
        4 * self.settings.max_value_bytes + (4 << 20)
    }
}

/// One per worker thread: the HTTP client used to forward requests to the
/// leader (awc clients are not shared between threads).
pub struct Forwarder {
    pub client: awc::Client,
}

impl Forwarder {
    pub fn new(settings: &Settings) -> Self {
        Forwarder { client: peer_client(settings, settings.request_timeout, &[]) }
    }
}

/// `https` when the node speaks TLS, else `http`: the scheme of requests
/// to peers.
pub fn peer_scheme(settings: &Settings) -> &'static str {
    if settings.tls.is_some() { "https" } else { "http" }
}

/// An HTTP client for requests to other members, from this node's address:
/// with TLS on, it presents the node's certificate and trusts only servers
/// the cluster CA signed.
pub fn peer_client(settings: &Settings, timeout: Duration, headers: &[(&'static str, String)]) -> awc::Client {
    let mut connector = awc::Connector::new().local_address(settings.listen.ip());
    if let Some(tls) = &settings.tls {
        match tls.client_config() {
            Ok(config) => connector = connector.rustls_0_23(Arc::new(config)),
            Err(e) => warn!(target: T_HTTP, "no TLS client configuration ({e}); requests to peers will fail"),
        }
    }
    let mut b = awc::Client::builder().connector(connector).timeout(timeout).disable_redirects();
    for (name, value) in headers {
        b = b.add_default_header((*name, value.clone()));
    }
    b.finish()
}

/// The route name recorded in metrics.
fn route_name(req: &HttpRequest) -> &'static str {
    match req.match_pattern().as_deref() {
        Some("/kv/{key:.*}") => "/kv/{key}",
        Some("/kv") => "/kv",
        Some("/txn") => "/txn",
        Some("/sessions") => "/sessions",
        Some("/leases") => "/leases",
        Some("/leases/{id}") => "/leases/{id}",
        Some("/leases/{id}/keepalive") => "/leases/{id}/keepalive",
        Some("/health") => "/health",
        Some("/ui") => "/ui",
        Some("/ui/app.js") => "/ui/app.js",
        Some("/ui/app.css") => "/ui/app.css",
        Some("/ui/events") => "/ui/events",
        Some("/openapi.json") => "/openapi.json",
        Some("/ready") => "/ready",
        Some("/status") => "/status",
        Some("/metrics") => "/metrics",
        Some("/admin/log") => "/admin/log",
        Some("/admin/snapshot") => "/admin/snapshot",
        Some("/admin/transfer-leader") => "/admin/transfer-leader",
        Some("/cluster/leader/transfer") => "/cluster/leader/transfer",
        Some("/cluster/members") => "/cluster/members",
        Some("/cluster/members/{id}") => "/cluster/members/{id}",
        Some("/cluster/members/{id}/promote") => "/cluster/members/{id}/promote",
        Some("/raft/timeout_now") => "/raft/timeout_now",
        Some("/raft/install_snapshot") => "/raft/install_snapshot",
        Some("/raft/request_vote") => "/raft/request_vote",
        Some("/raft/append_entries") => "/raft/append_entries",
        Some("/raft/heartbeat") => "/raft/heartbeat",
        _ => "other",
    }
}

fn method_name(m: &actix_web::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "OTHER",
    }
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::NOT_FOUND, "no_route", format!("no such endpoint: {} {}", req.method(), req.path())))
}

/// The methods a route takes, for the `Allow` header of a 405.
fn allowed_methods(pattern: &str) -> &'static str {
    match pattern {
        "/kv/{key:.*}" => "GET, PUT, DELETE",
        "/leases/{id}" => "GET, DELETE",
        "/admin/log" => "GET, PUT",
        "/cluster/members" => "GET, POST",
        "/cluster/members/{id}" => "DELETE",
        p if p.starts_with("/raft/") => "POST",
        "/sessions"
        | "/leases"
        | "/leases/{id}/keepalive"
        | "/txn"
        | "/admin/snapshot"
        | "/admin/transfer-leader"
        | "/cluster/leader/transfer"
        | "/cluster/members/{id}/promote" => "POST",
        _ => "GET",
    }
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let allow = allowed_methods(req.match_pattern().as_deref().unwrap_or(""));
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not supported on {}; it takes {allow}", req.method(), req.path()),
    );
    let mut resp = actix_web::ResponseError::error_response(&err);
    resp.headers_mut().insert(actix_web::http::header::ALLOW, actix_web::http::header::HeaderValue::from_static(allow));
    resp
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/kv").route(web::get().to(client_api::list)).default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/kv/{key:.*}")
            .route(web::get().to(client_api::get_key))
            .route(web::put().to(client_api::put_key))
            .route(web::delete().to(client_api::delete_key))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/sessions")
            .route(web::post().to(client_api::open_session))
            .default_service(web::to(method_not_allowed)),
    )
    .service(web::resource("/leases").route(web::post().to(lease::grant)).default_service(web::to(method_not_allowed)))
    .service(
        web::resource("/leases/{id}")
            .route(web::get().to(lease::show))
            .route(web::delete().to(lease::revoke))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/leases/{id}/keepalive")
            .route(web::post().to(lease::keep_alive))
            .default_service(web::to(method_not_allowed)),
    )
    .service(web::resource("/txn").route(web::post().to(txn::post_txn)).default_service(web::to(method_not_allowed)))
    .service(web::resource("/health").route(web::get().to(admin::health)).default_service(web::to(method_not_allowed)))
    .service(web::resource("/ui").route(web::get().to(ui::page)).default_service(web::to(method_not_allowed)))
    .service(web::resource("/ui/app.js").route(web::get().to(ui::script)).default_service(web::to(method_not_allowed)))
    .service(web::resource("/ui/app.css").route(web::get().to(ui::style)).default_service(web::to(method_not_allowed)))
    .service(web::resource("/ui/events").route(web::get().to(ui::events)).default_service(web::to(method_not_allowed)))
    .service(
        web::resource("/openapi.json")
            .route(web::get().to(admin::openapi))
            .default_service(web::to(method_not_allowed)),
    )
    .service(web::resource("/ready").route(web::get().to(admin::ready)).default_service(web::to(method_not_allowed)))
    .service(web::resource("/status").route(web::get().to(admin::status)).default_service(web::to(method_not_allowed)))
    .service(
        web::resource("/metrics").route(web::get().to(admin::metrics)).default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/log")
            .route(web::get().to(admin::get_log))
            .route(web::put().to(admin::put_log))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/snapshot")
            .route(web::post().to(admin::take_snapshot))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/transfer-leader")
            .route(web::post().to(admin::transfer_leader))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/cluster/leader/transfer")
            .route(web::post().to(admin::transfer_leader))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/cluster/members")
            .route(web::get().to(cluster::list))
            .route(web::post().to(cluster::add))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/cluster/members/{id}")
            .route(web::delete().to(cluster::remove))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/cluster/members/{id}/promote")
            .route(web::post().to(cluster::promote))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/raft/install_snapshot")
            .route(web::post().to(raft_rpc::install_snapshot))
            .default_service(web::to(method_not_allowed)),
    );
    for kind in ["request_vote", "append_entries", "heartbeat", "timeout_now"] {
        cfg.service(
            web::resource(format!("/raft/{kind}"))
                .route(web::post().to(raft_rpc::handle))
                .default_service(web::to(method_not_allowed)),
        );
    }
}

/// Serves on `listener` (bound to `settings.listen`) until the process is
/// asked to stop (SIGTERM or SIGINT; see `stop_on_signal`).
pub async fn serve(
    settings: Settings,
    listener: std::net::TcpListener,
    node: NodeHandles,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let workers = settings.http_workers;
    let read_timeout = settings.request_read_timeout;
    let (id, consensus) = (settings.id, node.consensus.clone());
    let (tls, max_connections) = (settings.tls.clone(), settings.max_connections);
    // The core abandons a transfer after one election timeout; the rest is
    // room for the answer and for the new leader to make itself known.
    let handover_limit = 3 * settings.election_timeout + Duration::from_secs(1);
    let state = web::Data::new(AppState { settings, node, in_flight: AtomicUsize::new(0) });
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .app_data(state.clone())
            .app_data(web::Data::new(Forwarder::new(&state.settings)))
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let metrics = metrics.clone();
                let busy = req.conn_data::<conn_watch::ConnWatch>().map(conn_watch::Busy::start);
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
                    let route = route_name(res.request());
                    let method = method_name(res.request().method());
                    let status = res.status().as_u16();
                    let secs = started.elapsed().as_secs_f64();
                    metrics.observe_http(route, method, status, secs);
                    debug!(target: T_HTTP, "{method} {} -> {status} in {:.3} ms", res.request().path(), secs * 1e3);
                    Ok(res.map_body(|_, body| conn_watch::Watched { body, busy }))
                }
            })
            .configure(routes)
            .default_service(web::to(no_route))
    })
    .workers(workers)
    // A connection must deliver the head of its first request within the
    // read timeout, or actix answers 408 (empty body) and closes it.
    .client_request_timeout(read_timeout)
    // An idle kept-alive connection is closed when its next request has not
    // started within the read timeout.
    .keep_alive(read_timeout)
    // After answering with `Connection: close`, actix reads and discards
    // what the client still sends for at most this long, then closes (the
    // actix default, stated here because the 408 path relies on it).
    .client_disconnect_timeout(Duration::from_secs(1))
    // Closes a connection stalled in a later request's head, which actix
    // does not time (see conn_watch.rs): after the keep-alive time plus the
    // read timeout without a request in progress.
    .on_connect(move |conn, data| conn_watch::on_connect(conn, data, 2 * read_timeout))
    // A client that does not finish the TLS handshake in the read timeout
    // (a plaintext request to this port does not even start one) is
    // disconnected.
    .tls_handshake_timeout(read_timeout)
    // Per worker: the node's limit split between its workers.
    .max_connections(max_connections.div_ceil(workers))
    .shutdown_timeout(1)
    .disable_signals();
    let server = match &tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls.server_config().map_err(std::io::Error::other)?)?.run(),
        None => server.listen(listener)?.run(),
    };
    if let Some(tls) = tls {
        actix_web::rt::spawn(reload_on_sighup(tls, id));
    }
    actix_web::rt::spawn(stop_on_signal(server.handle(), consensus, id, handover_limit));
    server.await
}

/// SIGHUP: read the TLS files again (certificate rotation). New
/// connections use them; a reload that fails keeps the old ones.
async fn reload_on_sighup(tls: Arc<crate::tls::Tls>, id: u64) {
    use actix_web::rt::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!(target: T_HTTP, "node {id} cannot watch for SIGHUP; TLS files are reloaded only by a restart");
        return;
    };
    info!(target: T_HTTP, "node {id} serves TLS with certificate {}", tls.fingerprint());
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(fp) => info!(target: T_HTTP, "node {id} reloaded its TLS files on SIGHUP: certificate {fp}"),
            Err(e) => warn!(target: T_HTTP, "node {id}: TLS reload on SIGHUP failed, keeping the old files: {e}"),
        }
    }
}

/// On SIGTERM or SIGINT a leader first hands leadership to the most
/// up-to-date voter (TimeoutNow: the cluster has a new leader within a
/// round trip or two, instead of an election timeout without one), then
/// the server stops; a follower stops at once. A second signal, or no
/// handover within `limit`, stops it without waiting further.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    consensus: actix::Addr<crate::actors::consensus::ConsensusActor>,
    id: u64,
    limit: Duration,
) {
    use crate::actors::messages::{TransferFailed, TransferLeader};
    use actix_web::rt::signal::unix::{SignalKind, signal};
    const T: &str = "raftkv::consensus";
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        warn!(target: T, "node {id} cannot watch for SIGTERM/SIGINT; a signal will stop it without a handover");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if consensus.send(TransferLeader { to: None, reply: tx }).await.is_ok() {
        tokio::select! {
            r = tokio::time::timeout(limit, rx) => match r {
                Ok(Ok(Ok(done))) => info!(
                    target: T,
                    "node {id} received {name}: handed leadership to node {} (term {}); stopping",
                    done.leader,
                    done.term
                ),
                Ok(Ok(Err(TransferFailed::NotLeader(_)))) => info!(target: T, "node {id} received {name}; stopping"),
                Ok(Ok(Err(e))) => warn!(target: T, "node {id} received {name}: no leadership handover ({e:?}); stopping"),
                Ok(Err(_)) | Err(_) => warn!(
                    target: T,
                    "node {id} received {name}: leadership handover not done within {limit:?}; stopping"
                ),
            },
            _ = term.recv() => warn!(target: T, "node {id}: second signal; stopping without waiting for the handover"),
            _ = int.recv() => warn!(target: T, "node {id}: second signal; stopping without waiting for the handover"),
        }
    }
    server.stop(true).await;
}
