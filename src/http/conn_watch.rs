//! Closes connections that stall between requests.
//!
//! actix-http times the head of a connection's *first* request only
//! (`client_request_timeout`: 408, then close) and closes a kept-alive
//! connection that stays silent (`keep_alive`). Once any byte of a later
//! request has arrived, no timer runs: a client that sends half a request
//! line on a kept-alive connection and stops would hold the connection for
//! good, and so would one that sends a never-ending chunked body to an
//! endpoint that does not read bodies (actix answers, then reads on to
//! discard the body, for as long as it takes).
//!
//! So each TCP connection gets a watchdog: it shuts the socket down when no
//! request has been in progress on it for twice the read timeout (the
//! keep-alive time plus the read timeout for a head). A request is in
//! progress from the moment its head is parsed until its response body has
//! been handed to the connection, so a slow handler or a long response is
//! never cut off; bodies that are read have their own deadline
//! (`client_api::read_body`).

use std::any::Any;
use std::cell::Cell;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::Extensions;
use bytes::Bytes;
use log::debug;

use super::T_HTTP;

struct Shared {
    /// A duplicate of the connection's descriptor, only to shut it down.
    /// Owned here alone, so it is closed with the connection's data.
    socket: TcpStream,
    peer: Option<SocketAddr>,
    busy: Cell<u32>,
    idle_since: Cell<Instant>,
}

/// Stored in the connection's data (`HttpServer::on_connect`); dropped with
/// the connection, which stops its watchdog.
pub struct ConnWatch {
    shared: Rc<Shared>,
    task: actix_web::rt::task::JoinHandle<()>,
}

impl Drop for ConnWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Tcp = actix_web::rt::net::TcpStream;
type Tls = actix_tls::accept::rustls_0_23::TlsStream<Tcp>;

/// The certificate a TLS client presented (and the cluster CA verified),
/// kept in the connection's data for `/raft/*` to check.
pub struct PeerCert(pub rustls::pki_types::CertificateDer<'static>);

/// The `on_connect` callback: starts a watchdog for a TCP connection and,
/// over TLS, records the client's certificate.
pub fn on_connect(conn: &dyn Any, data: &mut Extensions, idle_limit: Duration) {
    let stream = if let Some(tcp) = conn.downcast_ref::<Tcp>() {
        tcp
    } else if let Some(tls) = conn.downcast_ref::<Tls>() {
        let (tcp, session) = tls.get_ref();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            data.insert(PeerCert(cert.clone().into_owned()));
        }
        tcp
    } else {
        return;
    };
    let socket = match stream.as_fd().try_clone_to_owned() {
        Ok(fd) => TcpStream::from(fd),
        Err(e) => {
            debug!(target: T_HTTP, "no stall watchdog for a connection: {e}");
            return;
        }
    };
    let shared = Rc::new(Shared {
        socket,
        peer: stream.peer_addr().ok(),
        busy: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
    });
    let task = actix_web::rt::spawn(watch(Rc::downgrade(&shared), idle_limit));
    data.insert(ConnWatch { shared, task });
}

async fn watch(shared: Weak<Shared>, limit: Duration) {
    loop {
        let wake = {
            let Some(s) = shared.upgrade() else { return };
            if s.busy.get() > 0 { Instant::now() + limit } else { s.idle_since.get() + limit }
        };
        tokio::time::sleep_until(wake.into()).await;
        // Let a request that arrived meanwhile be seen first: after the
        // process was paused, this timer and the socket wake at once.
        tokio::task::yield_now().await;
        let Some(s) = shared.upgrade() else { return };
        if s.busy.get() == 0 && s.idle_since.get().elapsed() >= limit {
            let peer = s.peer.map_or_else(|| "?".to_string(), |p| p.to_string());
            debug!(target: T_HTTP, "closing the connection from {peer}: no complete request for {} ms", limit.as_millis());
            let _ = s.socket.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Marks a request in progress on its connection while alive.
pub struct Busy(Weak<Shared>);

impl Busy {
    pub fn start(watch: &ConnWatch) -> Busy {
        watch.shared.busy.set(watch.shared.busy.get() + 1);
        Busy(Rc::downgrade(&watch.shared))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(s) = self.0.upgrade() {
            s.busy.set(s.busy.get().saturating_sub(1));
            s.idle_since.set(Instant::now());
        }
    }
}

/// A response body that keeps its request marked in progress until the
/// connection has taken all of it (or dropped it).
pub struct Watched<B> {
    pub body: B,
    pub busy: Option<Busy>,
}

impl<B: MessageBody + Unpin> MessageBody for Watched<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
