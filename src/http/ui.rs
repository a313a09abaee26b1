//! The web view: `GET /ui` serves a page built into the binary (no CDN,
//! nothing fetched from elsewhere); the page reads `GET /ui/events`, a
//! Server-Sent Events stream in which this node sends, every
//! `INTERVAL`, what it knows of every member: its own `/status`, and the
//! latest `/status` each other member answered (asked by one poller per
//! member, so a member that hangs never delays the others), with whether
//! it is up and since when it is down. Each member's timeline events go
//! out once, as they appear.
//!
//! Opening the page costs nothing until it asks for the stream; a stream
//! and its pollers end when the browser goes away.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Value, json};

use super::admin::status_json;
use super::errors::ApiError;
use super::{AppState, peer_client, peer_scheme};
use crate::kv::lease::now_ms;

/// How often the stream sends the cluster's state, and each poller asks
/// its member.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// A member that has not answered `/status` within this is shown as down.
const PEER_TIMEOUT: Duration = Duration::from_millis(1000);

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("content-security-policy", CSP))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

/// `GET /ui`: the page. Open like `/health` (it holds no data; the stream
/// it reads needs what `/status` needs).
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /ui/app.js`
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/app.css`
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// What the stream knows of one other member.
#[derive(Default)]
struct Seen {
    address: String,
    /// The latest `/status` it answered (kept while it is down: the last
    /// thing known of it).
    status: Option<Value>,
    last_ok_ms: Option<u64>,
    down_since_ms: Option<u64>,
    error: Option<String>,
    /// The poller that asks it (0: none yet).
    poller: u64,
}

struct Shared {
    members: RefCell<BTreeMap<u64, Seen>>,
    pollers: std::cell::Cell<u64>,
}

struct Stream {
    state: web::Data<AppState>,
    shared: Rc<Shared>,
    client: awc::Client,
    auth: Option<HeaderValue>,
    ticker: tokio::time::Interval,
    /// The newest timeline event sent, per member.
    sent_events: BTreeMap<u64, (u64, String)>,
    done: bool,
}

/// `GET /ui/events`: the cluster's state as an SSE stream (`event: cluster`).
pub async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize_status(&req)?;
    super::client_api::params(&req, &[])?;
    let client = peer_client(&state.settings, PEER_TIMEOUT, &[]);
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let s = Stream {
        state,
        shared: Rc::new(Shared { members: RefCell::new(BTreeMap::new()), pollers: std::cell::Cell::new(0) }),
        client,
        auth: req.headers().get("authorization").cloned(),
        ticker,
        sent_events: BTreeMap::new(),
        done: false,
    };
    let body = futures_util::stream::unfold(s, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    });
    Ok(super::watch::event_stream(body))
}

impl Stream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        self.ticker.tick().await;
        let me = self.state.settings.id;
        let own = match status_json(&self.state).await {
            Ok(v) => v,
            Err(_) => {
                // Shutting down: end the stream; the page reconnects.
                self.done = true;
                return None;
            }
        };
        self.follow_members(&own);
        let now = now_ms();
        let mut members = vec![json!({
            "id": me,
            "address": self.state.settings.listen.to_string(),
            "up": true,
            "self": true,
            "last_seen_ms": now,
        })];
        let mut statuses = vec![(me, own)];
        for (&id, seen) in self.shared.members.borrow().iter() {
            members.push(json!({
                "id": id,
                "address": seen.address,
                "up": seen.down_since_ms.is_none() && seen.status.is_some(),
                "down_since_ms": seen.down_since_ms,
                "last_seen_ms": seen.last_ok_ms,
                "error": seen.error,
            }));
            statuses.push((id, seen.status.clone().unwrap_or(Value::Null)));
        }
        let mut events = Vec::new();
        for (m, (id, mut status)) in members.iter_mut().zip(statuses) {
            if let Some(list) = status.get_mut("events").map(Value::take) {
                events.extend(self.new_events(id, list));
            }
            m["status"] = status;
        }
        let data = json!({"node": me, "at_ms": now, "interval_ms": INTERVAL.as_millis() as u64, "members": members, "events": events});
        Some(Bytes::from(format!("event: cluster\ndata: {data}\n\n")))
    }

    /// Starts a poller for each member of this node's configuration that
    /// lacks one; forgets members that left it.
    fn follow_members(&mut self, own: &Value) {
        let peers: BTreeMap<u64, String> = own["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_u64()?, p["address"].as_str()?.to_string())))
            .collect();
        let mut members = self.shared.members.borrow_mut();
        members.retain(|id, _| peers.contains_key(id));
        for (id, address) in peers {
            let seen = members.entry(id).or_default();
            if seen.address != address || seen.poller == 0 {
                seen.address = address.clone();
                let token = self.shared.pollers.get() + 1;
                self.shared.pollers.set(token);
                seen.poller = token;
                let url = format!("{}://{address}/status", peer_scheme(&self.state.settings));
                let poller = poll(Rc::downgrade(&self.shared), id, token, url, self.client.clone(), self.auth.clone());
                actix_web::rt::spawn(poller);
            }
        }
    }

    /// The events of `list` (one member's, oldest first) not sent yet.
    fn new_events(&mut self, id: u64, list: Value) -> Vec<Value> {
        let Value::Array(list) = list else { return Vec::new() };
        let key = |e: &Value| (e["at_ms"].as_u64().unwrap_or(0), e["text"].as_str().unwrap_or("").to_string());
        let start = match self.sent_events.get(&id) {
            None => 0,
            Some(last) => match list.iter().rposition(|e| key(e) == *last) {
                Some(i) => i + 1,
                // Fell out of the member's list (or it restarted): what is
                // newer than the last one sent.
                None => list.iter().position(|e| key(e).0 > last.0).unwrap_or(list.len()),
            },
        };
        if let Some(last) = list.last() {
            self.sent_events.insert(id, key(last));
        }
        list.into_iter().skip(start).collect()
    }
}

/// Asks one member for `/status` every `INTERVAL` while the stream lives
/// and this poller is still the member's (`token`).
async fn poll(shared: Weak<Shared>, id: u64, token: u64, url: String, client: awc::Client, auth: Option<HeaderValue>) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut req = client.get(&url).insert_header(("x-raftkv-ui", "1"));
        if let Some(a) = &auth {
            req = req.insert_header(("authorization", a.clone()));
        }
        let answer = match req.send().await {
            Ok(mut r) if r.status().is_success() => {
                r.json::<Value>().limit(4 << 20).await.map_err(|e| format!("unreadable /status: {e}"))
            }
            Ok(mut r) => {
                let body = r.body().await.unwrap_or_default();
                Err(format!("/status answered {}: {}", r.status(), String::from_utf8_lossy(&body)))
            }
            Err(e) => Err(e.to_string()),
        };
        let Some(shared) = shared.upgrade() else { return };
        let mut members = shared.members.borrow_mut();
        let Some(seen) = members.get_mut(&id).filter(|s| s.poller == token) else { return };
        let now = now_ms();
        match answer {
            Ok(v) => {
                seen.status = Some(v);
                seen.last_ok_ms = Some(now);
                seen.down_since_ms = None;
                seen.error = None;
            }
            Err(e) => {
                seen.down_since_ms.get_or_insert(now);
                seen.error = Some(e);
            }
        }
    }
}
