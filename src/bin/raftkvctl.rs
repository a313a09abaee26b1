//! `raftkvctl`: a command-line client for a raftkv cluster.
//!
//! ```text
//! raftkvctl put name Alice          raftkvctl get name
//! raftkvctl cas name Bob --if-value Alice
//! raftkvctl delete name             raftkvctl list --prefix app/
//! raftkvctl status                  raftkvctl log set 'info,raftkv::election=trace'
//! raftkvctl                          (interactive prompt with history and completion)
//! ```
//!
//! Endpoints are tried in order: a node that cannot be reached, or that
//! answers 503 (nothing was done), is skipped for the next one. Exit codes:
//! 0 ok, 1 error, 2 usage, 3 not found, 4 precondition failed,
//! 5 unavailable (no leader, no node reachable), 6 timeout (outcome unknown),
//! 7 rejected as invalid, 8 not authorized, 9 refused by the cluster's
//! state (a membership change in progress, a learner behind, ...).

use std::borrow::Cow;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use raftkv::client::{ClientError, HttpClient, OpenSessionError, Response, SessionError};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::{Editor, Helper, Hinter, Validator};
use serde_json::{Value, json};

const DEFAULT_ENDPOINTS: &str = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003";

#[derive(Parser, Debug)]
#[command(name = "raftkvctl", version, about = "Command-line client for a raftkv cluster")]
struct Cli {
    /// Nodes to talk to (host:port), tried in order.
    #[arg(long, env = "RAFTKV_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Bearer token for nodes that require one (--tokens-file on the node).
    #[arg(long, env = "RAFTKV_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Talk TLS (https) to the nodes, trusting only the CA certificates in
    /// this PEM file (`make cluster TLS=1` writes .cluster/tls/ca.pem).
    #[arg(long, env = "RAFTKV_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// With --cacert: a client certificate (PEM) to present, with --key.
    /// Not needed for the key-value and admin API (tokens are).
    #[arg(long = "cert", id = "client_cert", env = "RAFTKV_CERT", global = true, requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long = "key", id = "client_key", env = "RAFTKV_KEY", global = true, requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
    /// Seconds to wait for each request.
    #[arg(long, default_value_t = 5.0, global = true)]
    timeout: f64,
    /// Writes without a client session: a write whose answer is lost is
    /// then reported as "may or may not have taken effect" (exit 6) instead
    /// of being retried. By default writes (put, cas, delete, txn) carry a
    /// session, and one whose outcome is unknown is sent again, to the next
    /// endpoint, with the same sequence number — applied once either way.
    #[arg(long, env = "RAFTKV_NO_SESSION", global = true)]
    no_session: bool,
    /// With a session: how long to go on retrying a write whose outcome is
    /// unknown (seconds).
    #[arg(long, default_value_t = 30.0, global = true)]
    retry_for: f64,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Read a key.
    Get {
        key: String,
        /// linearizable (default), lease or stale.
        #[arg(long)]
        consistency: Option<String>,
    },
    /// Write a key (with --lease: the key is deleted when the lease ends).
    Put {
        key: String,
        value: String,
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Write a key only if its current value or revision is as given.
    Cas {
        key: String,
        value: String,
        /// Required current value.
        #[arg(long, required_unless_present = "if_revision", conflicts_with = "if_revision")]
        if_value: Option<String>,
        /// Required current revision (0: the key must not exist).
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Only if the key's revision is this.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Run a transaction (POST /txn) read as JSON from FILE or, without
    /// one or with "-", from standard input: {"compare": [...],
    /// "success": [...], "failure": [...]}. Exit 4 when the comparisons did
    /// not hold (the failure operations ran; their results are printed).
    Txn { file: Option<std::path::PathBuf> },
    /// List keys, sorted, optionally under a prefix.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        consistency: Option<String>,
    },
    /// Follow the changes of a key (or of every key under --prefix) as they
    /// happen, one line per change. A broken stream is resumed on the next
    /// endpoint from the last revision seen, so no change is missed or
    /// printed twice.
    Watch {
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        /// Start at this revision (default: with the next change).
        #[arg(long)]
        from_revision: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Role, term, indexes and lag of every endpoint.
    Status,
    /// Take a snapshot now on every endpoint (or --node only): each node
    /// writes its state to a snapshot file and compacts its log.
    Snapshot {
        #[arg(long)]
        node: Option<String>,
    },
    /// Hand leadership to node --to (default: the most up-to-date voter),
    /// e.g. before taking the leader down; waits until it leads.
    TransferLeader {
        #[arg(long)]
        to: Option<u64>,
    },
    /// The cluster's members; add, promote or remove one (one change at a
    /// time, each answered once committed).
    Member {
        #[command(subcommand)]
        action: MemberCmd,
    },
    /// Leases: keys that are deleted when their lease is not renewed.
    Lease {
        #[command(subcommand)]
        action: LeaseCmd,
    },
    /// Leadership.
    Leader {
        #[command(subcommand)]
        action: LeaderCmd,
    },
    /// Show or change the per-actor log filter of the nodes.
    Log {
        #[command(subcommand)]
        action: LogCmd,
    },
    /// Client tokens (no node is contacted).
    Token {
        #[command(subcommand)]
        action: TokenCmd,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum LeaseCmd {
    /// A new lease of TTL seconds; prints its id.
    Grant { ttl: u64 },
    /// Renew the lease for its whole TTL (once).
    Keepalive { id: u64 },
    /// End the lease now and delete its keys.
    Revoke { id: u64 },
    /// TTL, time left and keys.
    Show { id: u64 },
}

#[derive(Subcommand, Debug, Clone)]
enum MemberCmd {
    /// Every member with its role and, from the leader, how far behind it is.
    List,
    /// Add a new member as a learner: it receives the data but does not vote
    /// (start the node itself with --join instead to have it ask by itself).
    Add { id: u64, address: String },
    /// Make a learner a voter; refused while it is far behind the leader
    /// unless --wait gives it that many seconds to catch up (or to wait
    /// out an election).
    Promote {
        id: u64,
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
    },
    /// Remove a member (the leader too: it hands over once the change commits).
    Remove { id: u64 },
}

#[derive(Subcommand, Debug, Clone)]
enum LeaderCmd {
    /// Hand leadership to --to (default: the most up-to-date voter); waits until it leads.
    Transfer {
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum TokenCmd {
    /// Make a random token for NAME with ROLE (read, write or admin): prints
    /// the token (give it to the client) and the line for the nodes'
    /// tokens file (which holds only its hash).
    New { name: String, role: String },
}

#[derive(Subcommand, Debug, Clone)]
enum LogCmd {
    /// Show each node's filter.
    Get,
    /// Set the filter (RUST_LOG syntax) on every endpoint, or on --node only.
    Set {
        filter: String,
        #[arg(long)]
        node: Option<String>,
    },
}

/// A failure, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

struct Ctl {
    endpoints: Vec<String>,
    output: Output,
    http: HttpClient,
    /// Writes carry a session (opened at the first write), see --no-session.
    sessions: bool,
    session: std::cell::RefCell<Option<raftkv::client::Session>>,
    retry_for: Duration,
}

/// Percent-encodes a key for the URL path; `/` stays as is.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_query(v: &str) -> String {
    encode_key(v).replace('/', "%2F")
}

/// Maps an error response to an exit code and message.
fn failure_of(r: &Response) -> Failure {
    let body = r.json();
    let msg = body["error"].as_str().map(str::to_string).unwrap_or_else(|| r.text());
    let code = match r.status {
        404 => 3,
        412 => 4,
        503 => 5,
        504 => 6,
        400 | 405 | 413 => 7,
        401 | 403 => 8,
        409 | 410 => 9,
        _ => 1,
    };
    let mut message = format!("{msg} (HTTP {}, {})", r.status, body["code"].as_str().unwrap_or("?"));
    if r.status == 412 {
        message = match &body["current"] {
            Value::Null => format!("precondition failed: '{}' does not exist", body["key"].as_str().unwrap_or("")),
            cur => format!("precondition failed: current value is {} (revision {})", cur["value"], cur["revision"]),
        };
    }
    Failure::new(code, message)
}

impl Ctl {
    fn member(&self, action: &MemberCmd) -> Result<String, Failure> {
        let changed = |v: &Value| {
            let list = v["members"].as_array().cloned().unwrap_or_default();
            let roles: Vec<String> =
                list.iter().map(|m| format!("{} ({})", m["id"], m["role"].as_str().unwrap_or("?"))).collect();
            format!(
                "OK: {} (log index {}); members now {}",
                v["change"].as_str().unwrap_or("?"),
                v["index"],
                roles.join(", ")
            )
        };
        match action {
            MemberCmd::List => {
                let mut v = self.ok(self.send("GET", "/cluster/members", None)?)?;
                // Replication progress is the leader's to show: ask it.
                if v["leader"] != v["node"]
                    && let Some(addr) = v["members"]
                        .as_array()
                        .and_then(|ms| ms.iter().find(|m| m["id"] == v["leader"]))
                        .and_then(|m| m["address"].as_str())
                    && let Ok(r) = self.http.get(addr, "/cluster/members")
                    && r.status == 200
                {
                    v = r.json();
                }
                Ok(self.render(&v, || {
                    let mut out = format!(
                        "cluster {}  leader {}  term {}  configuration at index {}{}\n{:<4} {:<22} {:<8} {:>10} {:>8} {:>10}",
                        v["cluster_id"].as_str().unwrap_or("?"),
                        v["leader"],
                        v["term"],
                        v["config_index"],
                        if v["config_committed"] == true { "" } else { " (not committed yet)" },
                        "ID",
                        "ADDRESS",
                        "ROLE",
                        "MATCH",
                        "LAG",
                        "REACHABLE"
                    );
                    for m in v["members"].as_array().into_iter().flatten() {
                        let num = |f: &str| m[f].as_u64().map_or("-".to_string(), |n| n.to_string());
                        out += &format!(
                            "\n{:<4} {:<22} {:<8} {:>10} {:>8} {:>10}",
                            m["id"].as_u64().unwrap_or(0),
                            m["address"].as_str().unwrap_or(""),
                            m["role"].as_str().unwrap_or(""),
                            num("match_index"),
                            num("lag"),
                            m["reachable"].as_bool().map_or("-", |r| if r { "yes" } else { "no" })
                        );
                    }
                    if let Some(r) = v["removed"].as_array().filter(|r| !r.is_empty()) {
                        let ids: Vec<String> = r.iter().map(Value::to_string).collect();
                        out += &format!("\nremoved ids (never reused): {}", ids.join(", "));
                    }
                    out
                }))
            }
            MemberCmd::Add { id, address } => {
                let body = json!({"id": id, "address": address, "learner": true});
                let v = self.ok(self.send("POST", "/cluster/members", Some(&body))?)?;
                Ok(self.render(&v, || changed(&v)))
            }
            MemberCmd::Promote { id, wait } => {
                let until = std::time::Instant::now() + Duration::from_secs_f64(wait.max(0.0));
                let path = format!("/cluster/members/{id}/promote");
                loop {
                    let r = match self.send("POST", &path, None) {
                        // No leader just now (an election): nothing was done, so wait on.
                        Err(f) if f.code == 5 && std::time::Instant::now() < until => {
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        }
                        r => r?,
                    };
                    let code = r.json()["code"].as_str().unwrap_or_default().to_string();
                    // Waiting covers a node that is still joining, too.
                    let passing = matches!(code.as_str(), "learner_behind" | "change_in_progress" | "unknown_member");
                    if (r.status == 409 || r.status == 404) && passing && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    let v = self.ok(r)?;
                    return Ok(self.render(&v, || changed(&v)));
                }
            }
            MemberCmd::Remove { id } => {
                let v = self.ok(self.send("DELETE", &format!("/cluster/members/{id}"), None)?)?;
                Ok(self.render(&v, || changed(&v)))
            }
        }
    }

    /// A key-value write in this invocation's session: retried with the
    /// same sequence number until it has an answer (see --no-session).
    fn send_in_session(&self, method: &str, path: &str, body: Option<&str>) -> Result<Response, Failure> {
        for reopened in [false, true] {
            let mut slot = self.session.borrow_mut();
            if slot.is_none() {
                *slot = Some(self.http.open_session(&self.endpoints, self.retry_for).map_err(|e| match e {
                    OpenSessionError::Answer(r) => failure_of(&r),
                    OpenSessionError::Unreachable(why) => Failure::new(5, why),
                })?);
            }
            let session = slot.as_mut().expect("opened");
            let body = body.map(str::as_bytes);
            match self.http.write_in_session(&self.endpoints, session, method, path, body, self.retry_for) {
                // The session expired (an idle prompt): nothing was applied,
                // so the write goes again in a new session.
                Ok(r) if r.status == 410 && !reopened && r.json()["code"] == "session_expired" => *slot = None,
                Ok(r) => return Ok(r),
                Err(SessionError::Fatal(e)) => return Err(Failure::new(1, e.to_string())),
                Err(SessionError::GaveUp(last)) => {
                    return Err(Failure::new(
                        6,
                        format!(
                            "no answer within {} s of retrying ({last}); the write may have been applied (once) or \
                             not: read the key to know",
                            self.retry_for.as_secs_f64()
                        ),
                    ));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Sends to the first endpoint that takes the request. Falls over on
    /// connection errors and on 503 (which promises nothing was done).
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response, Failure> {
        let body = body.map(|b| b.to_string());
        if self.sessions && method != "GET" && (path.starts_with("/kv/") || path == "/txn") {
            return self.send_in_session(method, path, body.as_deref());
        }
        let mut last = String::from("no endpoints given");
        for ep in &self.endpoints {
            match self.http.request(ep, method, path, body.as_deref().map(str::as_bytes)) {
                Ok(r) if r.status == 503 => last = format!("{ep}: {}", failure_of(&r).message),
                Ok(r) => return Ok(r),
                Err(e @ ClientError::Connect(_)) => last = format!("{ep}: {e}"),
                Err(e) if method == "GET" => last = format!("{ep}: {e}"),
                Err(e) => {
                    return Err(Failure::new(6, format!("{ep}: {e}; the request may or may not have taken effect")));
                }
            }
        }
        Err(Failure::new(5, format!("no endpoint could serve the request; last: {last}")))
    }

    /// `watch`: prints each change as it comes; resumes a broken stream on
    /// the next endpoint from the revision after the last one seen whole.
    fn watch(
        &self,
        key: Option<&str>,
        prefix: Option<&str>,
        mut from: Option<u64>,
        count: Option<u64>,
    ) -> Result<String, Failure> {
        let base = match (key, prefix) {
            (Some(k), _) => format!("/kv/{}?watch=true", encode_key(k)),
            (None, p) => format!("/kv?prefix={}&watch=true", encode_query(p.unwrap_or(""))),
        };
        if from == Some(0) {
            return Err(Failure::new(2, "--from-revision must be at least 1"));
        }
        let mut printed = 0u64;
        let mut failures = 0usize;
        let mut ep = 0usize;
        loop {
            if count.is_some_and(|c| printed >= c) {
                return Ok(String::new());
            }
            let endpoint = &self.endpoints[ep % self.endpoints.len()];
            let path = match from {
                Some(f) => format!("{base}&from_revision={f}"),
                None => base.clone(),
            };
            let stream = match self.http.watch(endpoint, &path, &[]) {
                Ok(Ok(s)) => s,
                Ok(Err(r)) if r.status == 503 => {
                    failures += 1;
                    ep += 1;
                    if failures >= 3 * self.endpoints.len() {
                        return Err(Failure::new(
                            5,
                            format!("no endpoint serves watches; last: {}", failure_of(&r).message),
                        ));
                    }
                    continue;
                }
                Ok(Err(r)) => return Err(failure_of(&r)),
                Err(e) => {
                    failures += 1;
                    ep += 1;
                    if failures >= 3 * self.endpoints.len() {
                        return Err(Failure::new(
                            5,
                            format!("no endpoint could serve the watch; last: {endpoint}: {e}"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            failures = 0;
            let mut pending: Vec<Value> = Vec::new();
            for ev in stream {
                let Ok(ev) = ev else { break };
                match ev.event.as_str() {
                    "put" | "delete" => pending.push(ev.data),
                    "cancelled" => {
                        eprintln!("raftkvctl: {endpoint} ended the watch ({}); resuming", text(&ev.data["reason"]));
                        from = ev.data["resume_from_revision"].as_u64().or(from);
                        break;
                    }
                    _ => {}
                }
                // Printed when its revision is whole (the event with the id).
                if let Some(id) = ev.id {
                    for e in pending.drain(..) {
                        if count.is_some_and(|c| printed >= c) {
                            return Ok(String::new());
                        }
                        print_out(&self.render(&e, || match e["type"].as_str() {
                            Some("put") => {
                                format!("PUT {} = {} (revision {})", text(&e["key"]), text(&e["value"]), e["revision"])
                            }
                            _ => format!("DELETE {} (revision {})", text(&e["key"]), e["revision"]),
                        }));
                        printed += 1;
                    }
                    from = Some(id + 1);
                    if count.is_some_and(|c| printed >= c) {
                        return Ok(String::new());
                    }
                }
            }
            if count.is_some_and(|c| printed >= c) {
                return Ok(String::new());
            }
            ep += 1;
        }
    }

    fn ok(&self, r: Response) -> Result<Value, Failure> {
        if (200..300).contains(&r.status) { Ok(r.json()) } else { Err(failure_of(&r)) }
    }

    fn run(&self, cmd: &Cmd) -> Result<String, Failure> {
        match cmd {
            Cmd::Get { key, consistency } => {
                let q = consistency.as_ref().map(|c| format!("?consistency={}", encode_query(c))).unwrap_or_default();
                let v = self.ok(self.send("GET", &format!("/kv/{}{q}", encode_key(key)), None)?)?;
                Ok(self.items(&v, std::slice::from_ref(&v)))
            }
            Cmd::Put { key, value, lease } => {
                let mut body = json!({"value": value});
                if let Some(l) = lease {
                    body["lease"] = json!(l);
                }
                let v = self.ok(self.send("PUT", &format!("/kv/{}", encode_key(key)), Some(&body))?)?;
                Ok(self.render(&v, || format!("OK (revision {})", v["revision"])))
            }
            Cmd::Cas { key, value, if_value, if_revision } => {
                let body = match (if_value, if_revision) {
                    (Some(old), _) => json!({"value": value, "if_value": old}),
                    (None, Some(r)) => json!({"value": value, "if_revision": r}),
                    (None, None) => return Err(Failure::new(2, "cas needs --if-value or --if-revision")),
                };
                let v = self.ok(self.send("PUT", &format!("/kv/{}", encode_key(key)), Some(&body))?)?;
                Ok(self.render(&v, || format!("OK (revision {})", v["revision"])))
            }
            Cmd::Delete { key, if_revision } => {
                let q = if_revision.map(|r| format!("?if_revision={r}")).unwrap_or_default();
                let v = self.ok(self.send("DELETE", &format!("/kv/{}{q}", encode_key(key)), None)?)?;
                Ok(self.render(&v, || {
                    if v["deleted"] == true {
                        format!("deleted (revision {})", v["revision"])
                    } else {
                        format!("not found, nothing deleted (revision {})", v["revision"])
                    }
                }))
            }
            Cmd::List { prefix, limit, consistency } => {
                let mut q = vec![format!("prefix={}", encode_query(prefix))];
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                if let Some(c) = consistency {
                    q.push(format!("consistency={}", encode_query(c)));
                }
                let v = self.ok(self.send("GET", &format!("/kv?{}", q.join("&")), None)?)?;
                let items = v["items"].as_array().cloned().unwrap_or_default();
                Ok(self.items(&v, &items))
            }
            Cmd::Txn { file } => {
                let text = match file.as_deref().filter(|f| f.as_os_str() != "-") {
                    Some(f) => {
                        std::fs::read_to_string(f).map_err(|e| Failure::new(2, format!("{}: {e}", f.display())))?
                    }
                    None => std::io::read_to_string(std::io::stdin())
                        .map_err(|e| Failure::new(2, format!("reading the transaction from stdin: {e}")))?,
                };
                let body: Value = serde_json::from_str(&text)
                    .map_err(|e| Failure::new(7, format!("the transaction is not valid JSON: {e}")))?;
                let v = self.ok(self.send("POST", "/txn", Some(&body))?)?;
                let out = self.render(&v, || txn_table(&v));
                if v["succeeded"] == true {
                    return Ok(out);
                }
                print_out(&out);
                Err(Failure::new(4, "the comparisons did not hold; the failure operations ran"))
            }
            Cmd::Watch { key, prefix, from_revision, count } => {
                self.watch(key.as_deref(), prefix.as_deref(), *from_revision, *count)
            }
            Cmd::Status => self.status(),
            Cmd::Snapshot { node } => self.snapshot(node.as_deref()),
            Cmd::TransferLeader { to } | Cmd::Leader { action: LeaderCmd::Transfer { to } } => {
                let body = match to {
                    Some(id) => json!({"to": id}),
                    None => json!({}),
                };
                let v = self.ok(self.send("POST", "/admin/transfer-leader", Some(&body))?)?;
                Ok(self.render(&v, || {
                    if v["leader"] == v["previous_leader"] {
                        format!("node {} already leads (term {})", v["leader"], v["term"])
                    } else {
                        format!(
                            "node {} leads now (term {}; was node {})",
                            v["leader"], v["term"], v["previous_leader"]
                        )
                    }
                }))
            }
            Cmd::Token { action: TokenCmd::New { name, role } } => {
                let Some(role) = raftkv::auth::Role::parse(role) else {
                    return Err(Failure::new(2, format!("role {role:?} is not read, write or admin")));
                };
                if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
                    return Err(Failure::new(2, "the name must be one word without '#'"));
                }
                let token = raftkv::auth::new_token();
                let line = raftkv::auth::token_line(name, role, &token);
                let v = json!({"name": name, "role": role.as_str(), "token": token, "tokens_file_line": line});
                Ok(self.render(&v, || format!("token: {token}\ntokens file line: {line}")))
            }
            Cmd::Member { action } => self.member(action),
            Cmd::Lease { action } => {
                let (method, path, body) = match action {
                    LeaseCmd::Grant { ttl } => ("POST", "/leases".to_string(), Some(json!({"ttl_seconds": ttl}))),
                    LeaseCmd::Keepalive { id } => ("POST", format!("/leases/{id}/keepalive"), None),
                    LeaseCmd::Revoke { id } => ("DELETE", format!("/leases/{id}"), None),
                    LeaseCmd::Show { id } => ("GET", format!("/leases/{id}"), None),
                };
                let v = self.ok(self.send(method, &path, body.as_ref())?)?;
                Ok(self.render(&v, || match action {
                    LeaseCmd::Grant { .. } => format!("lease {} granted, TTL {} s", v["id"], v["ttl_seconds"]),
                    LeaseCmd::Keepalive { .. } => format!("lease {} renewed for {} s", v["id"], v["ttl_seconds"]),
                    LeaseCmd::Revoke { .. } => format!("lease {} revoked, {} keys deleted", v["id"], v["deleted_keys"]),
                    LeaseCmd::Show { .. } => format!(
                        "lease {}: TTL {} s, {} ms left, keys: {}",
                        v["id"],
                        v["ttl_seconds"],
                        v["remaining_ms"],
                        v["keys"].as_array().map_or(String::new(), |k| k
                            .iter()
                            .map(text)
                            .collect::<Vec<_>>()
                            .join(" "))
                    ),
                }))
            }
            Cmd::Log { action: LogCmd::Get } => self.log(None, None),
            Cmd::Log { action: LogCmd::Set { filter, node } } => self.log(Some(filter), node.as_deref()),
        }
    }

    fn render(&self, v: &Value, table: impl FnOnce() -> String) -> String {
        match self.output {
            Output::Json => v.to_string(),
            Output::Table => table(),
        }
    }

    fn items(&self, whole: &Value, items: &[Value]) -> String {
        self.render(whole, || {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    vec![
                        i["key"].as_str().unwrap_or("").to_string(),
                        i["value"].as_str().unwrap_or("").to_string(),
                        i["revision"].to_string(),
                    ]
                })
                .collect();
            table(&["KEY", "VALUE", "REVISION"], &rows)
        })
    }

    fn status(&self) -> Result<String, Failure> {
        let statuses: Vec<(String, Option<Value>)> = self
            .endpoints
            .iter()
            .map(|ep| {
                let s = self.http.get(ep, "/status").ok().filter(|r| r.status == 200).map(|r| r.json());
                (ep.clone(), s)
            })
            .collect();
        if statuses.iter().all(|(_, s)| s.is_none()) {
            return Err(Failure::new(5, "no endpoint answered /status"));
        }
        if self.output == Output::Json {
            let all: Vec<Value> = statuses
                .iter()
                .map(|(ep, s)| s.clone().unwrap_or_else(|| json!({"address": ep, "error": "unreachable"})))
                .collect();
            return Ok(Value::Array(all).to_string());
        }
        let leader_last = statuses
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .find(|s| s["role"] == "leader")
            .and_then(|s| s["last_log_index"].as_u64());
        let rows: Vec<Vec<String>> = statuses
            .iter()
            .map(|(ep, s)| match s {
                None => {
                    let mut row = vec!["?".into(), ep.clone(), "unreachable".into()];
                    row.resize(9, String::new());
                    row
                }
                Some(s) => {
                    let applied = s["applied_index"].as_u64().unwrap_or(0);
                    vec![
                        s["id"].to_string(),
                        ep.clone(),
                        s["role"].as_str().unwrap_or("?").to_string(),
                        s["term"].to_string(),
                        s["leader"].as_u64().map_or("-".into(), |l| l.to_string()),
                        s["commit_index"].to_string(),
                        applied.to_string(),
                        leader_last.map_or("-".into(), |l| l.saturating_sub(applied).to_string()),
                        s["log"]["snapshot_index"].to_string(),
                    ]
                }
            })
            .collect();
        Ok(table(&["NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "SNAPSHOT"], &rows))
    }

    fn snapshot(&self, only: Option<&str>) -> Result<String, Failure> {
        let targets: Vec<&String> = self.endpoints.iter().filter(|e| only.is_none_or(|n| n == e.as_str())).collect();
        if targets.is_empty() {
            return Err(Failure::new(2, format!("--node {} is not one of the endpoints", only.unwrap_or(""))));
        }
        let (mut rows, mut all, mut failed) = (Vec::new(), Vec::new(), None);
        for ep in targets {
            match self.http.request(ep, "POST", "/admin/snapshot", None) {
                Ok(r) if r.status == 200 => {
                    let v = r.json();
                    rows.push(vec![
                        ep.clone(),
                        v["index"].to_string(),
                        v["term"].to_string(),
                        v["bytes"].to_string(),
                        format!("{:.1}", v["duration_ms"].as_f64().unwrap_or(0.0)),
                        v["path"].as_str().unwrap_or("").to_string(),
                    ]);
                    all.push(json!({"endpoint": ep, "snapshot": v}));
                }
                Ok(r) => {
                    let f = failure_of(&r);
                    rows.push(vec![ep.clone(), format!("error: {}", f.message)]);
                    all.push(json!({"endpoint": ep, "error": f.message.clone()}));
                    failed.get_or_insert(f);
                }
                Err(e) => {
                    rows.push(vec![ep.clone(), format!("error: {e}")]);
                    all.push(json!({"endpoint": ep, "error": e.to_string()}));
                    failed.get_or_insert(Failure::new(5, format!("{ep}: {e}")));
                }
            }
        }
        let out = match self.output {
            Output::Json => Value::Array(all).to_string(),
            Output::Table => table(&["NODE", "INDEX", "TERM", "BYTES", "MS", "FILE"], &rows),
        };
        match failed {
            Some(f) => Err(Failure::new(f.code, format!("{out}\n{}", f.message))),
            None => Ok(out),
        }
    }

    fn log(&self, set: Option<&String>, only: Option<&str>) -> Result<String, Failure> {
        let targets: Vec<&String> = self.endpoints.iter().filter(|e| only.is_none_or(|n| n == e.as_str())).collect();
        if targets.is_empty() {
            return Err(Failure::new(2, format!("--node {} is not one of the endpoints", only.unwrap_or(""))));
        }
        let mut rows = Vec::new();
        let mut all = Vec::new();
        let mut failed = None;
        for ep in targets {
            let r = match set {
                Some(f) => {
                    self.http.request(ep, "PUT", "/admin/log", Some(json!({"filter": f}).to_string().as_bytes()))
                }
                None => self.http.get(ep, "/admin/log"),
            };
            match r {
                Ok(r) if r.status == 200 => {
                    let v = r.json();
                    rows.push(vec![ep.clone(), v["filter"].as_str().unwrap_or("").to_string()]);
                    all.push(json!({"address": ep, "filter": v["filter"]}));
                }
                Ok(r) => {
                    let f = failure_of(&r);
                    rows.push(vec![ep.clone(), format!("error: {}", f.message)]);
                    failed = Some(f);
                }
                Err(e) => {
                    rows.push(vec![ep.clone(), format!("unreachable: {e}")]);
                    failed.get_or_insert(Failure::new(5, format!("{ep}: {e}")));
                }
            }
        }
        if let (Some(f), Some(_)) = (failed, set) {
            return Err(Failure::new(f.code, format!("{}\n{}", table(&["NODE", "FILTER"], &rows), f.message)));
        }
        Ok(match self.output {
            Output::Json => Value::Array(all).to_string(),
            Output::Table => table(&["NODE", "FILTER"], &rows),
        })
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|s| s.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

// --- interactive prompt -------------------------------------------------------------

/// Splits a line into words; "double" and 'single' quotes group words.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') => cur.push(chars.next().unwrap_or('\\')),
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unclosed quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[derive(Parser, Debug)]
#[command(name = "raftkvctl", no_binary_name = true, disable_help_flag = true, disable_version_flag = true)]
struct Line {
    #[command(subcommand)]
    cmd: Cmd,
}

const COMMANDS: &[&str] = &[
    "get", "put", "cas", "delete", "txn", "list", "watch", "lease", "status", "snapshot", "member", "leader", "log",
    "token", "help", "exit", "quit",
];

#[derive(Helper, Hinter, Validator)]
struct Complete {
    endpoints: Vec<String>,
    /// The session's client (TLS, token) with a short timeout.
    http: HttpClient,
}

impl Highlighter for Complete {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Completer for Complete {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        let before = &line[..pos];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        let words: Vec<&str> = before.split_whitespace().collect();
        let first_word = start == 0;
        if first_word {
            return Ok((start, COMMANDS.iter().filter(|c| c.starts_with(word)).map(|c| c.to_string()).collect()));
        }
        // Second word of a key command: complete key names from the cluster.
        let key_cmd = matches!(words.first().copied(), Some("get" | "put" | "cas" | "delete"));
        if key_cmd && (words.len() == 1 || (words.len() == 2 && !before.ends_with(' '))) {
            let http = &self.http;
            let path = format!("/kv?prefix={}&limit=50", encode_query(word));
            for ep in &self.endpoints {
                if let Ok(r) = http.get(ep, &path) {
                    let keys = r.json()["items"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|i| i["key"].as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    return Ok((start, keys));
                }
            }
        }
        if words.first() == Some(&"log") && words.len() <= 2 {
            return Ok((start, ["get", "set"].iter().filter(|c| c.starts_with(word)).map(|c| c.to_string()).collect()));
        }
        Ok((start, Vec::new()))
    }
}

fn interactive(ctl: &Ctl) -> ExitCode {
    let mut rl: Editor<Complete, rustyline::history::DefaultHistory> = match Editor::new() {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("raftkvctl: cannot open the terminal: {e}");
            return ExitCode::from(1);
        }
    };
    rl.set_helper(Some(Complete {
        endpoints: ctl.endpoints.clone(),
        http: ctl.http.clone().with_timeouts(Duration::from_millis(500), Duration::from_millis(500)),
    }));
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".raftkvctl_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!(
        "raftkv interactive client; endpoints {}. Type 'help' for commands, 'exit' to leave.",
        ctl.endpoints.join(",")
    );
    let mut status = 0u8;
    loop {
        let line = match rl.readline("raftkv> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("raftkvctl: {e}");
                status = 1;
                break;
            }
        };
        let words = match split_words(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(line.as_str());
        match words[0].as_str() {
            "exit" | "quit" => break,
            "help" => {
                println!(
                    "commands:\n  get <key> [--consistency stale|lease]\n  put <key> <value>\n  \
                     cas <key> <value> --if-value <old> | --if-revision <n>\n  delete <key> [--if-revision <n>]\n  \
                     list [--prefix <p>] [--limit <n>]\n  status\n  log get | log set <filter>\n  exit"
                );
                continue;
            }
            _ => {}
        }
        match Line::try_parse_from(&words) {
            Ok(Line { cmd }) => match ctl.run(&cmd) {
                Ok(out) => print_out(&out),
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    status = f.code;
                }
            },
            Err(e) => eprintln!("{}", e.to_string().trim_end()),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    ExitCode::from(status)
}

fn client(cli: &Cli) -> Result<HttpClient, String> {
    let mut http = HttpClient::new(Duration::from_secs_f64(cli.timeout)).with_token(cli.token.clone());
    if let Some(ca) = &cli.cacert {
        http = http.with_ca_file(ca)?;
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        if cli.cacert.is_none() {
            return Err("--cert needs --cacert (a client certificate is only sent over TLS)".into());
        }
        http = http.with_client_cert(cert, key)?;
    }
    Ok(http)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoints: Vec<String> = cli.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        eprintln!("raftkvctl: --endpoints must name at least one node");
        return ExitCode::from(2);
    }
    if !(cli.timeout > 0.0 && cli.timeout.is_finite()) {
        eprintln!("raftkvctl: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    if cli.token.as_ref().is_some_and(|t| t.chars().any(|c| c.is_control() || c.is_whitespace())) {
        eprintln!("raftkvctl: --token must not contain spaces or control characters");
        return ExitCode::from(2);
    }
    let http = match client(&cli) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("raftkvctl: {e}");
            return ExitCode::from(2);
        }
    };
    if !(cli.retry_for >= 0.0 && cli.retry_for.is_finite()) {
        eprintln!("raftkvctl: --retry-for must be a number of seconds");
        return ExitCode::from(2);
    }
    let ctl = Ctl {
        endpoints,
        output: cli.output,
        http,
        sessions: !cli.no_session,
        session: std::cell::RefCell::new(None),
        retry_for: Duration::from_secs_f64(cli.retry_for),
    };
    match &cli.command {
        None => interactive(&ctl),
        Some(cmd) => match ctl.run(cmd) {
            Ok(out) => {
                if !out.is_empty() {
                    print_out(&out);
                }
                ExitCode::SUCCESS
            }
            Err(f) => {
                eprintln!("raftkvctl: {}", f.message);
                ExitCode::from(f.code)
            }
        },
    }
}

/// Prints a command's output. A reader that went away (`raftkvctl list |
/// head`) ends the program quietly, as it does for other Unix tools,
/// instead of a panic about a broken pipe.
fn print_out(out: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("raftkvctl: writing the output: {e}");
        std::process::exit(1);
    }
}

/// A transaction's answer as lines: the outcome, then one per operation.
fn txn_table(v: &Value) -> String {
    let mut out = if v["succeeded"] == true {
        format!("SUCCEEDED (revision {})", v["revision"])
    } else {
        format!("FAILED: the comparisons did not hold (revision {})", v["revision"])
    };
    for r in v["results"].as_array().into_iter().flatten() {
        let line = if let Some(p) = r.get("put") {
            format!("put {}: revision {}", text(&p["key"]), p["revision"])
        } else if let Some(d) = r.get("delete") {
            let what = if d["deleted"] == true { "deleted" } else { "not found" };
            format!("delete {}: {what}", text(&d["key"]))
        } else if let Some(g) = r.get("get") {
            if g["found"] == true {
                format!("get {}: {} (revision {})", text(&g["key"]), text(&g["value"]), g["revision"])
            } else {
                format!("get {}: not found", text(&g["key"]))
            }
        } else {
            r.to_string()
        };
        out += &format!("\n{line}");
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        assert_eq!(split_words(r#"put "my key" 'a b' c"#).unwrap(), ["put", "my key", "a b", "c"]);
        assert_eq!(split_words(r#"put k "say \"hi\"""#).unwrap(), ["put", "k", "say \"hi\""]);
        assert_eq!(split_words(r#"put k """#).unwrap(), ["put", "k", ""]);
        assert!(split_words(r#"put "open"#).is_err());
    }

    #[test]
    fn keys_are_escaped_but_slashes_kept() {
        assert_eq!(encode_key("a/b c%"), "a/b%20c%25");
        assert_eq!(encode_query("a/b"), "a%2Fb");
    }
}
