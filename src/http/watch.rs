//! Watches and blocking reads (API.md "Watch").
//!
//! `GET /kv/{key}?watch=true` and `GET /kv?prefix=p&watch=true` answer with
//! a stream of Server-Sent Events: plain HTTP that `curl -N` prints as it
//! comes and a browser's `EventSource` consumes (and resumes, sending
//! `Last-Event-ID`) with no library. Every change is one event whose data
//! is a JSON object; the last event of each revision carries the revision
//! as its SSE `id`, so the id a client last saw always marks a revision it
//! has seen *whole* (a transaction changes several keys at one revision).
//! `progress` events carry the revision up to which everything has been
//! sent. A watch is served by the node it is sent to, from what that node
//! has applied; a follower streams the same events in the same order as
//! the leader, perhaps a little later.
//!
//! `GET /kv/{key}?wait=30s&after_revision=n` (Consul's blocking query)
//! answers like a GET, as soon as the key changes after revision n or when
//! the wait is over; `Raftkv-Revision` says up to which revision it has
//! looked, the `after_revision` of the next call.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use super::errors::ApiError;
use crate::actors::messages::{GetApplied, StartWatch, WatchRefused, WatchStarted};
use crate::actors::watch_hub::{Cancelled, Unregister, WatchHub, WatchItem};
use crate::kv::watch::{Event, Filter};
use crate::raft::Index;

/// Most events put into one chunk of the stream.
const CHUNK_EVENTS: usize = 256;
/// Longest blocking read (Consul's limit too).
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Without `wait`, a blocking read waits this long.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const REVISION_HEADER: &str = "raftkv-revision";

/// Whether the request asks for a watch (`watch=true`).
pub fn wants_watch(p: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    match p.get("watch").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::bad_request("invalid_parameter", format!("watch must be true or false, not '{v}'"))
            .with("parameter", json!("watch"))),
    }
}

fn revision_param(p: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = p.get(name) else { return Ok(None) };
    match v.parse::<u64>() {
        Ok(n) => Ok(Some(n)),
        Err(_) => {
            Err(ApiError::bad_request("invalid_parameter", format!("{name} must be a non-negative integer, not '{v}'"))
                .with("parameter", json!(name)))
        }
    }
}

/// `30s`, `500ms`, `2m` (at most 10 minutes).
pub fn parse_wait(v: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_parameter",
            format!("wait must be a duration like 30s, 500ms or 2m (at most 10m), not '{v}'"),
        )
        .with("parameter", json!("wait"))
    };
    let (num, unit) = v.find(|c: char| !c.is_ascii_digit()).map_or((v, ""), |i| v.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d > MAX_WAIT { Err(bad()) } else { Ok(d) }
}

/// Checks the parameters of a request that may watch or wait: `Some` for
/// a watch; otherwise the blocking read asked for, if any.
pub fn mode(p: &BTreeMap<String, String>) -> Result<Mode, ApiError> {
    let misplaced = |name: &str, why: &str| {
        ApiError::bad_request("invalid_parameter", format!("{name} {why}")).with("parameter", json!(name))
    };
    if wants_watch(p)? {
        for name in ["consistency", "limit", "wait", "after_revision"] {
            if p.contains_key(name) {
                return Err(misplaced(name, "does not go with watch=true (a watch streams what this node applies)"));
            }
        }
        return Ok(Mode::Watch);
    }
    if p.contains_key("from_revision") {
        return Err(misplaced(
            "from_revision",
            "is for watches (add watch=true); a blocking read takes after_revision",
        ));
    }
    match (revision_param(p, "after_revision")?, p.get("wait")) {
        (None, None) => Ok(Mode::Read),
        (None, Some(_)) => Err(misplaced("wait", "needs after_revision: the revision to wait for a change after")),
        (Some(after), wait) => {
            Ok(Mode::Wait { after, wait: wait.map(|w| parse_wait(w)).transpose()?.unwrap_or(DEFAULT_WAIT) })
        }
    }
}

pub enum Mode {
    Read,
    Watch,
    Wait { after: u64, wait: Duration },
}

/// A registered watcher: unregistered when dropped (its client went away
/// or its answer was sent), so the hub does not keep it until the next
/// progress note finds its channel closed.
struct Registered {
    id: u64,
    hub: actix::Addr<WatchHub>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.hub.do_send(Unregister(self.id));
    }
}

type Started = (WatchStarted, mpsc::Receiver<WatchItem>, oneshot::Receiver<Cancelled>, Registered);

/// Registers a watcher of `filter` from revision `from` on this node.
async fn start(state: &AppState, filter: Filter, from: Option<u64>, buffer: usize) -> Result<Started, ApiError> {
    let (tx, rx) = mpsc::channel(buffer);
    let (cancel, cancelled) = oneshot::channel();
    let answer = state
        .node
        .state_machine
        .send(StartWatch { filter, from, tx, cancel })
        .await
        .map_err(|_| ApiError::no_leader("the node is shutting down"))?;
    match answer {
        Ok(started) => {
            let reg = Registered { id: started.id, hub: state.node.watch_hub.clone() };
            Ok((started, rx, cancelled, reg))
        }
        Err(WatchRefused::Compacted { oldest, current }) => Err(compacted(from.unwrap_or(0), oldest, current)),
        Err(WatchRefused::TooMany { limit }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watchers",
            format!(
                "node {} serves {limit} watchers, its limit (--max-watchers); try another node or later",
                state.settings.id
            ),
        )),
    }
}

fn compacted(from: u64, oldest: Index, current: Index) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "revision_compacted",
        format!(
            "revision {from} is older than the history this node keeps (it starts at {oldest}); read the current \
             state and watch from its revision, or from {oldest} if missing changes in between is acceptable"
        ),
    )
    .with("oldest_revision", json!(oldest))
    .with("current_revision", json!(current))
}

// --- streams ---------------------------------------------------------------------

/// The revision to start from: `Last-Event-ID` (a resuming `EventSource`,
/// which repeats the original URL) wins over `from_revision`.
fn start_revision(req: &HttpRequest, p: &BTreeMap<String, String>) -> Result<Option<u64>, ApiError> {
    if let Some(v) = req.headers().get("last-event-id") {
        let id = v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_header", "Last-Event-ID must be a revision (a non-negative integer)")
                .with("header", json!("last-event-id"))
        })?;
        return Ok(Some(id + 1));
    }
    match revision_param(p, "from_revision")? {
        Some(0) => {
            Err(ApiError::bad_request("invalid_parameter", "from_revision must be at least 1 (omit it to start now)")
                .with("parameter", json!("from_revision")))
        }
        r => Ok(r),
    }
}

/// Answers a watch request with its event stream.
pub async fn stream(
    state: &AppState,
    req: &HttpRequest,
    filter: Filter,
    p: &BTreeMap<String, String>,
) -> Result<HttpResponse, ApiError> {
    let from = start_revision(req, p)?;
    let (started, rx, cancelled, registered) = start(state, filter.clone(), from, state.settings.watch_buffer).await?;
    let from = from.unwrap_or(started.after + 1);
    let w = Stream {
        filter,
        from,
        backlog: started.backlog.into_iter(),
        carry: None,
        after: started.after,
        sent: from - 1,
        greeted: false,
        rx,
        cancelled,
        done: false,
        _registered: registered,
    };
    let body = futures_util::stream::unfold(w, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), w))
    });
    Ok(event_stream(body))
}

/// A Server-Sent Events answer from a stream of chunks: never cached,
/// never buffered by a proxy.
pub(super) fn event_stream(
    body: impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

struct Stream {
    filter: Filter,
    /// The first revision asked for.
    from: u64,
    backlog: <imbl::Vector<Arc<Event>> as IntoIterator>::IntoIter,
    /// The first event of the next backlog chunk.
    carry: Option<Arc<Event>>,
    /// Where the backlog ends and the live events begin.
    after: Index,
    /// Everything up to this revision has been sent.
    sent: u64,
    /// Whether the first progress event (the revision the stream is at
    /// once the backlog is sent) went out.
    greeted: bool,
    rx: mpsc::Receiver<WatchItem>,
    cancelled: oneshot::Receiver<Cancelled>,
    done: bool,
    _registered: Registered,
}

fn put_event(out: &mut String, e: &Event, last_of_revision: bool) {
    let kind = match e.kind {
        crate::kv::watch::EventKind::Put => "put",
        crate::kv::watch::EventKind::Delete => "delete",
    };
    let _ = write!(out, "event: {kind}\ndata: {}\n", e.json());
    if last_of_revision {
        let _ = writeln!(out, "id: {}", e.revision);
    }
    out.push('\n');
}

fn put_progress(out: &mut String, revision: u64) {
    let _ = write!(out, "event: progress\ndata: {{\"type\":\"progress\",\"revision\":{revision}}}\nid: {revision}\n\n");
}

impl Stream {
    /// Writes a run of events (in revision order), each revision whole.
    fn put_events<'a>(&mut self, out: &mut String, events: impl IntoIterator<Item = &'a Arc<Event>>) {
        let mut pending: Option<&Arc<Event>> = None;
        for e in events {
            // `sent` moves once per call, at the end: a revision is never
            // cut in two.
            if e.revision < self.from || e.revision <= self.sent {
                continue;
            }
            if let Some(p) = pending.replace(e) {
                put_event(out, p, p.revision != e.revision);
            }
        }
        if let Some(p) = pending {
            put_event(out, p, true);
            self.sent = p.revision;
        }
    }

    /// The next piece of the stream, never empty: an empty chunk would end
    /// the HTTP body (it is the terminating chunk of chunked encoding), and
    /// one comes whenever everything received was already sent — e.g. a
    /// watch resumed from a revision a lagging follower has not reached:
    /// the hub sends what follows its applied index, the stream skips what
    /// is before `from`.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let chunk = self.next_piece().await?;
            if !chunk.is_empty() {
                return Some(chunk);
            }
        }
    }

    async fn next_piece(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if !self.greeted {
            // From the history: CHUNK_EVENTS matching events or a few more
            // (a revision goes whole into one chunk).
            let mut batch: Vec<Arc<Event>> = self.carry.take().into_iter().collect();
            for e in self.backlog.by_ref() {
                if !self.filter.matches(&e.key) {
                    continue;
                }
                if batch.len() >= CHUNK_EVENTS && batch.last().is_some_and(|l| l.revision != e.revision) {
                    self.carry = Some(e);
                    self.put_events(&mut out, &batch);
                    return Some(Bytes::from(out));
                }
                batch.push(e);
            }
            self.put_events(&mut out, &batch);
            self.greeted = true;
            self.sent = self.sent.max(self.after);
            put_progress(&mut out, self.sent);
            return Some(Bytes::from(out));
        }
        match self.rx.recv().await {
            Some(item) => {
                // What else is waiting goes in the same write (no waiting
                // for more: a change is written as soon as it comes).
                self.put_item(&mut out, item);
                while out.len() < 64 << 10 {
                    match self.rx.try_recv() {
                        Ok(item) => self.put_item(&mut out, item),
                        Err(_) => break,
                    }
                }
            }
            None => {
                self.done = true;
                let (reason, detail) = match self.cancelled.try_recv() {
                    Ok(Cancelled::SlowWatcher) => (
                        "slow_watcher",
                        json!({"error": "this watcher read more slowly than changes came and its buffer \
                                         (--watch-buffer) filled up; resume from resume_from_revision"}),
                    ),
                    Ok(Cancelled::HistoryGap { oldest }) => (
                        "history_gap",
                        json!({"error": "this node installed a snapshot that does not hold the changes the \
                                         watcher had not seen yet; resume from resume_from_revision (or \
                                         re-read the state if that is older than oldest_revision)",
                               "oldest_revision": oldest}),
                    ),
                    Err(_) => ("shutdown", json!({"error": "the node is shutting down; resume on another node"})),
                };
                let mut data = detail;
                data["type"] = json!("cancelled");
                data["reason"] = json!(reason);
                data["resume_from_revision"] = json!(self.sent + 1);
                let _ = write!(out, "event: cancelled\ndata: {data}\n\n");
            }
        }
        Some(Bytes::from(out))
    }

    fn put_item(&mut self, out: &mut String, item: WatchItem) {
        match item {
            WatchItem::Events(evs) => self.put_events(out, &evs),
            // Written even when nothing moved: a quiet watcher hears from
            // the node every interval and can tell a live stream from a
            // dead connection.
            WatchItem::Progress(r) => {
                self.sent = self.sent.max(r);
                put_progress(out, self.sent);
            }
        }
    }
}

// --- blocking reads ----------------------------------------------------------------

/// Waits until a key of `filter` changes after revision `after`, or for
/// `wait`; returns the revision up to which it has looked.
pub async fn block(state: &AppState, filter: Filter, after: u64, wait: Duration) -> Result<u64, ApiError> {
    let (started, mut rx, _cancelled, _registered) = match start(state, filter.clone(), Some(after + 1), 4).await {
        Ok(s) => s,
        // The history no longer reaches back to `after`: the key may have
        // changed since, so answer now.
        Err(e) if e.code == "revision_compacted" => {
            return state
                .node
                .state_machine
                .send(GetApplied)
                .await
                .map_err(|_| ApiError::no_leader("the node is shutting down"));
        }
        Err(e) => return Err(e),
    };
    if let Some(e) = started.backlog.iter().filter(|e| filter.matches(&e.key)).last() {
        return Ok(e.revision);
    }
    // What this node has applied (not `after`, which may be ahead of it).
    let mut seen = started.after;
    let waited = tokio::time::timeout(wait, async {
        loop {
            match rx.recv().await {
                // The watch started at `after + 1`, but the hub sends what
                // follows the applied index, which may be lower.
                Some(WatchItem::Events(evs)) => match evs.last() {
                    Some(e) if e.revision > after => return e.revision,
                    Some(e) => seen = seen.max(e.revision),
                    None => {}
                },
                Some(WatchItem::Progress(r)) => seen = seen.max(r),
                None => return seen,
            }
        }
    })
    .await;
    Ok(waited.unwrap_or(seen))
}
