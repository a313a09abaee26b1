//! A small blocking HTTP/1.1 client: one request per connection, with
//! connect and read timeouts. Used by `raftkvctl` and the black-box tests,
//! where pulling in an async runtime or a large client crate buys nothing.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

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
    /// The connection could not be made: the request was never sent.
    Connect(io::Error),
    /// The request was (maybe partly) sent but no full answer came back.
    Io(io::Error),
    /// The answer was not HTTP.
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

#[derive(Clone)]
pub struct HttpClient {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<String>,
    /// Sent with every request too.
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new(Duration::from_secs(10))
    }
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Self {
        HttpClient { connect_timeout: timeout.min(Duration::from_secs(2)), timeout, token: None, headers: Vec::new() }
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

    pub fn get(&self, addr: &str, path: &str) -> Result<Response, ClientError> {
        self.request(addr, "GET", path, None)
    }

    pub fn put_json(&self, addr: &str, path: &str, body: &serde_json::Value) -> Result<Response, ClientError> {
        self.request(addr, "PUT", path, Some(body.to_string().as_bytes()))
    }

    pub fn delete(&self, addr: &str, path: &str) -> Result<Response, ClientError> {
        self.request(addr, "DELETE", path, None)
    }

    /// Sends one request to `addr` (host:port) and reads the whole answer.
    pub fn request(&self, addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, ClientError> {
        let target: SocketAddr = addr
            .to_socket_addrs()
            .map_err(ClientError::Connect)?
            .next()
            .ok_or_else(|| ClientError::Connect(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
        let mut stream = TcpStream::connect_timeout(&target, self.connect_timeout).map_err(ClientError::Connect)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(ClientError::Io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(ClientError::Io)?;
        let _ = stream.set_nodelay(true);
        let body = body.unwrap_or(&[]);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).map_err(ClientError::Io)?;
        read_response(stream)
    }
}

fn read_response(stream: TcpStream) -> Result<Response, ClientError> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(ClientError::Io)?;
    if line.is_empty() {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a response",
        )));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(ClientError::Io)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(ClientError::Io)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| ClientError::Protocol(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).map_err(ClientError::Io)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).map_err(ClientError::Io)?;
    } else {
        r.read_to_end(&mut body).map_err(ClientError::Io)?;
    }
    Ok(Response { status, headers, body })
}
