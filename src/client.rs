//! The blocking HTTP client of `raftkvctl`, of a joining node and of the
//! black-box tests: `ureq` with rustls, one request per connection (no
//! pooling: a request that failed was never silently retried on a second
//! connection, which keeps `ClientError::was_sent` exact).
//!
//! Endpoints are `host:port` (the scheme is `https` when the client trusts
//! a CA, `http` otherwise) or a full `http://host:port` / `https://...`.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What went wrong, and whether the request may have reached the server.
#[derive(Debug)]
pub enum ClientError {
    /// The connection (TCP, or the TLS handshake) could not be made: the
    /// server never received the request.
    Connect(String),
    /// The request was (maybe partly) sent but no full answer came back.
    Io(String),
    /// The answer was not HTTP, or the request could not be formed.
    Protocol(String),
}

impl ClientError {
    pub fn was_sent(&self) -> bool {
        !matches!(self, ClientError::Connect(_))
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "cannot connect: {e}"),
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Protocol(e) => write!(f, "bad response: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sorts a ureq error by whether the server can have seen the request.
fn classify(e: ureq::Error) -> ClientError {
    use io::ErrorKind::*;
    use ureq::{Error, Timeout};
    match e {
        Error::HostNotFound | Error::ConnectionFailed | Error::BadUri(_) => ClientError::Connect(e.to_string()),
        Error::Timeout(Timeout::Resolve | Timeout::Connect) => ClientError::Connect(e.to_string()),
        // A failed handshake: the server refused the connection before any
        // request on it was read.
        Error::Tls(_) | Error::Rustls(_) | Error::Pem(_) => ClientError::Connect(e.to_string()),
        Error::Io(io) => {
            let handshake = io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
            match io.kind() {
                // Only a connect can fail these ways.
                ConnectionRefused | AddrNotAvailable | AddrInUse | HostUnreachable | NetworkUnreachable | NotFound => {
                    ClientError::Connect(io.to_string())
                }
                _ if handshake => ClientError::Connect(io.to_string()),
                _ => ClientError::Io(io.to_string()),
            }
        }
        Error::Timeout(_) => ClientError::Io(e.to_string()),
        other => ClientError::Protocol(other.to_string()),
    }
}

#[derive(Clone)]
pub struct HttpClient {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<String>,
    /// Sent with every request too.
    headers: Vec<(String, String)>,
    /// Trusted CA certificates: set, requests go over `https`.
    roots: Option<Arc<Vec<Certificate<'static>>>>,
    client_cert: Option<ClientCert>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.roots.is_some())
            .finish()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new(Duration::from_secs(10))
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn pem_certs(path: &Path, what: &str) -> Result<Vec<Certificate<'static>>, String> {
    let pem = read_file(path, what)?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Self {
        let connect_timeout = timeout.min(Duration::from_secs(2));
        let agent = Self::agent(connect_timeout, Some(timeout), None, None);
        HttpClient { connect_timeout, timeout, token: None, headers: Vec::new(), roots: None, client_cert: None, agent }
    }

    fn agent(
        connect: Duration,
        timeout: Option<Duration>,
        roots: Option<&Arc<Vec<Certificate<'static>>>>,
        cert: Option<&ClientCert>,
    ) -> ureq::Agent {
        let mut tls = TlsConfig::builder().client_cert(cert.cloned());
        if let Some(roots) = roots {
            tls = tls.root_certs(RootCerts::Specific(roots.clone()));
        }
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_connect(Some(connect))
            .timeout_global(timeout)
            .user_agent(concat!("raftkv/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into()
    }

    fn rebuild(mut self) -> Self {
        self.agent =
            Self::agent(self.connect_timeout, Some(self.timeout), self.roots.as_ref(), self.client_cert.as_ref());
        self
    }

    /// The same client with other timeouts.
    pub fn with_timeouts(mut self, connect: Duration, timeout: Duration) -> Self {
        (self.connect_timeout, self.timeout) = (connect, timeout);
        self.rebuild()
    }

    /// The same client, sending `token` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The same client, sending `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The same client over TLS, trusting only the CA certificates in the
    /// PEM file `ca` (for `host:port` endpoints the scheme becomes https).
    pub fn with_ca_file(mut self, ca: &Path) -> Result<Self, String> {
        self.roots = Some(Arc::new(pem_certs(ca, "CA file")?));
        Ok(self.rebuild())
    }

    /// The same client, presenting the certificate chain `cert` with its
    /// key `key` (PEM files) when the server asks for one.
    pub fn with_client_cert(mut self, cert: &Path, key: &Path) -> Result<Self, String> {
        let chain = pem_certs(cert, "certificate file")?;
        let key_pem = read_file(key, "key file")?;
        let key = PrivateKey::from_pem(&key_pem).map_err(|e| format!("key file {}: {e}", key.display()))?;
        self.client_cert = Some(ClientCert::new_with_certs(&chain, key));
        Ok(self.rebuild())
    }

    /// `https` with a trusted CA, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.roots.is_some() { "https" } else { "http" }
    }

    pub fn get(&self, addr: &str, path: &str) -> Result<Response, ClientError> {
        self.request(addr, "GET", path, None)
    }

    pub fn put_json(&self, addr: &str, path: &str, body: &serde_json::Value) -> Result<Response, ClientError> {
        self.request(addr, "PUT", path, Some(body.to_string().as_bytes()))
    }

    pub fn delete(&self, addr: &str, path: &str) -> Result<Response, ClientError> {
        self.request(addr, "DELETE", path, None)
    }

    /// Sends one request to `addr` and reads the whole answer.
    pub fn request(&self, addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, ClientError> {
        self.request_with(addr, method, path, body, &[])
    }

    /// [`HttpClient::request`] with more headers for this request only.
    pub fn request_with(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&str, String)],
    ) -> Result<Response, ClientError> {
        let mut resp = self.send(&self.agent, addr, method, path, body, extra)?;
        let status = resp.status().as_u16();
        let headers = header_list(&resp);
        let body = resp.body_mut().with_config().limit(u64::MAX).read_to_vec().map_err(classify)?;
        Ok(Response { status, headers, body })
    }

    fn send(
        &self,
        agent: &ureq::Agent,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&str, String)],
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let url =
            if addr.contains("://") { format!("{addr}{path}") } else { format!("{}://{addr}{path}", self.scheme()) };
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        let body = body.unwrap_or(&[]);
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (name, value) in &self.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        for (name, value) in extra {
            req = req.header(*name, value.as_str());
        }
        let req = req.body(body).map_err(|e| ClientError::Connect(format!("{method} {url}: {e}")))?;
        agent.run(req).map_err(|e| match classify(e) {
            ClientError::Protocol(e) if self.roots.is_none() => ClientError::Protocol(format!(
                "{e} (a node with TLS on answers plain HTTP like this: give its CA, e.g. raftkvctl --cacert)"
            )),
            other => other,
        })
    }

    /// Opens a watch (`GET path`, a `watch=true` URL) and reads its
    /// Server-Sent Events as they come. The stream has no overall
    /// deadline (the client's timeout bounds connecting and the head).
    /// An answer other than 200 comes back whole, as `Err`.
    pub fn watch(
        &self,
        addr: &str,
        path: &str,
        extra: &[(&str, String)],
    ) -> Result<Result<EventStream, Response>, ClientError> {
        let agent = Self::agent(self.connect_timeout, None, self.roots.as_ref(), self.client_cert.as_ref());
        let mut resp = self.send(&agent, addr, "GET", path, None, extra)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let headers = header_list(&resp);
            let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec().map_err(classify)?;
            return Ok(Err(Response { status, headers, body }));
        }
        let reader: Box<dyn io::Read + Send> = Box::new(resp.into_body().into_reader());
        Ok(Ok(EventStream { lines: io::BufReader::new(reader) }))
    }
}

fn header_list(resp: &ureq::http::Response<ureq::Body>) -> Vec<(String, String)> {
    resp.headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

/// One Server-Sent Event of a watch: `put`, `delete`, `progress` or
/// `cancelled`, its `id` (a revision seen whole) if it has one, and its
/// data (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<u64>,
    pub data: serde_json::Value,
}

/// The events of a watch, in the order the node sent them; ends when the
/// node ends the stream or the connection breaks (an `Err`).
pub struct EventStream {
    lines: io::BufReader<Box<dyn io::Read + Send>>,
}

impl Iterator for EventStream {
    type Item = io::Result<SseEvent>;

    fn next(&mut self) -> Option<io::Result<SseEvent>> {
        use io::BufRead;
        let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
        let mut line = String::new();
        loop {
            line.clear();
            match self.lines.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if data.is_empty() {
                    continue;
                }
                let data = match serde_json::from_str(&data) {
                    Ok(v) => v,
                    Err(e) => return Some(Err(io::Error::new(io::ErrorKind::InvalidData, format!("event data: {e}")))),
                };
                return Some(Ok(SseEvent { event, id, data }));
            }
            let (field, value) = l.split_once(':').map_or((l, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "event" => event = value.to_string(),
                "id" => id = value.parse().ok(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    }
}

/// A client session (`POST /sessions`): a write tagged with it and a
/// sequence number is applied at most once, however often it is retried,
/// so a write whose outcome was unknown (504, a lost connection) can be
/// sent again — to any node — without fear of applying it twice.
/// One write at a time per session: the next sequence number is taken only
/// when the previous write has an answer.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    last_seq: u64,
}

/// Why no session could be opened.
#[derive(Debug)]
pub enum OpenSessionError {
    /// A node refused (e.g. 401/403 without the right token).
    Answer(Response),
    /// No node answered within the patience (or TLS failed).
    Unreachable(String),
}

/// Why a write in a session did not get an answer it could keep.
#[derive(Debug)]
pub enum SessionError {
    /// Every attempt within the patience failed; the last failure. The
    /// write may have been applied (once), or not.
    GaveUp(String),
    /// A request error that retrying cannot fix (a TLS or protocol error).
    Fatal(ClientError),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::GaveUp(last) => write!(f, "no answer while retrying ({last})"),
            SessionError::Fatal(e) => write!(f, "{e}"),
        }
    }
}

impl HttpClient {
    /// Opens a session through `endpoints` in turn, trying again after a
    /// 503, a 504 or a connection error until `patience` has passed (a
    /// session opened twice is harmless: the unused one expires).
    pub fn open_session(&self, endpoints: &[String], patience: Duration) -> Result<Session, OpenSessionError> {
        let until = std::time::Instant::now() + patience;
        let mut last = String::from("no endpoints given");
        for attempt in 0.. {
            let Some(ep) = endpoints.get(attempt % endpoints.len().max(1)) else { break };
            match self.request(ep, "POST", "/sessions", None) {
                Ok(r) if r.status == 200 && r.json()["session"].is_u64() => {
                    return Ok(Session { id: r.json()["session"].as_u64().unwrap_or_default(), last_seq: 0 });
                }
                Ok(r) if r.status == 503 || r.status == 504 => last = format!("{ep}: {} {}", r.status, r.text()),
                Ok(r) => return Err(OpenSessionError::Answer(r)),
                Err(e @ ClientError::Protocol(_)) => return Err(OpenSessionError::Unreachable(format!("{ep}: {e}"))),
                Err(e) => last = format!("{ep}: {e}"),
            }
            if std::time::Instant::now() >= until {
                break;
            }
            pause_after_a_round(attempt, endpoints.len());
        }
        Err(OpenSessionError::Unreachable(format!("no endpoint could open a session; last: {last}")))
    }

    /// Sends a write tagged with `session`'s next sequence number to
    /// `endpoints` in turn, and sends the *same* tagged write again after a
    /// 503, a 504 or a lost connection, until an answer comes or `patience`
    /// has passed. Any answer other than 503/504 is final (2xx, 4xx — a
    /// retry of an applied write gets the first answer again).
    pub fn write_in_session(
        &self,
        endpoints: &[String],
        session: &mut Session,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        patience: Duration,
    ) -> Result<Response, SessionError> {
        session.last_seq += 1;
        let tags = [("raftkv-session", session.id.to_string()), ("raftkv-seq", session.last_seq.to_string())];
        let until = std::time::Instant::now() + patience;
        let mut last = String::from("no endpoints given");
        for attempt in 0.. {
            let Some(ep) = endpoints.get(attempt % endpoints.len().max(1)) else { break };
            match self.request_with(ep, method, path, body, &tags) {
                Ok(r) if r.status == 503 || r.status == 504 => {
                    last = format!("{ep}: {} {}", r.status, r.text());
                }
                Ok(r) => return Ok(r),
                Err(e @ ClientError::Protocol(_)) => return Err(SessionError::Fatal(e)),
                Err(e) => last = format!("{ep}: {e}"),
            }
            if std::time::Instant::now() >= until {
                break;
            }
            pause_after_a_round(attempt, endpoints.len());
        }
        Err(SessionError::GaveUp(last))
    }
}

/// A short pause once every endpoint has been tried: an election takes a
/// few hundred milliseconds, and hammering does not make it shorter.
fn pause_after_a_round(attempt: usize, endpoints: usize) {
    if attempt % endpoints.max(1) == endpoints.max(1) - 1 {
        std::thread::sleep(Duration::from_millis(100));
    }
}
