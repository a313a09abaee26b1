//! Watchers under the faults: each follows every key the linearizability
//! clients write (prefix `key`) from revision 1, through random members,
//! reconnecting — from the revision after the last one it saw whole —
//! whenever its stream breaks, stalls, or is cancelled, and every few
//! seconds anyway. After healing, one
//! uninterrupted watch gives the whole history, and every watcher's
//! history must equal it; the history itself must be in order, without a
//! duplicate, and chained per key (each event's `prev_revision` is the
//! revision of the key's event before it, so a missed event shows), and
//! replaying it must give the state every node reads back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftkv::client::{HttpClient, SseEvent};
use raftkv::raft::SplitMix64;

use super::workloads::Env;

pub const PREFIX: &str = "key";

/// A change as a watcher saw it: revision, key, value (None: deleted),
/// previous revision.
pub type Change = (u64, String, Option<String>, u64);

/// A stream that sends nothing for this long (progress comes every 5 s)
/// is given up (a paused or isolated node) and the watch resumed elsewhere.
const STALL: Duration = Duration::from_secs(12);

enum Got {
    Event(SseEvent),
    /// The stream ended (or broke).
    End,
}

/// Opens a watch from `from` on `addr`, read on a thread of its own so a
/// stalled connection can be abandoned.
fn open(http: &HttpClient, addr: &str, from: u64) -> Result<mpsc::Receiver<Got>, String> {
    let path = format!("/kv?prefix={PREFIX}&watch=true&from_revision={from}");
    let stream = match http.watch(addr, &path, &[]) {
        Ok(Ok(s)) => s,
        Ok(Err(r)) if r.status == 410 => return Err(format!("GAP: {addr} refused revision {from}: {}", r.text())),
        Ok(Err(r)) => return Err(format!("{addr}: {} {}", r.status, r.text())),
        Err(e) => return Err(format!("{addr}: {e}")),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in stream {
            let Ok(ev) = ev else { break };
            if tx.send(Got::Event(ev)).is_err() {
                return;
            }
        }
        let _ = tx.send(Got::End);
    });
    Ok(rx)
}

/// What one watcher saw, and how often it had to resume.
#[derive(Debug, Default)]
pub struct Watched {
    pub changes: Vec<Change>,
    pub resumes: usize,
    /// Resumes refused because the revision was no longer held: a watcher
    /// that resumes promptly should never see one.
    pub gaps: Vec<String>,
}

/// Follows the prefix until the run stops and it has seen `target()`
/// (set once the cluster is healed; 0 before).
pub fn watcher(env: &Env<'_>, seed: u64, target: &std::sync::atomic::AtomicU64, give_up: Instant) -> Watched {
    let mut rng = SplitMix64(seed);
    let mut w = Watched::default();
    let mut from = 1;
    let mut pending: Vec<Change> = Vec::new();
    loop {
        let members: Vec<String> = env.members.lock().unwrap().iter().map(|(_, a)| a.clone()).collect();
        let addr = members[(rng.next_u64() % members.len() as u64) as usize].clone();
        let rx = match open(env.http, &addr, from) {
            Ok(rx) => rx,
            Err(e) => {
                if e.starts_with("GAP") {
                    w.gaps.push(e);
                    return w;
                }
                if Instant::now() > give_up {
                    return w;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        pending.clear();
        // Besides when its stream breaks, a watcher moves to another node
        // on its own every few seconds: more resumes, from more places.
        let switch_at = Instant::now() + Duration::from_millis(2000 + rng.next_u64() % 4000);
        loop {
            let wait = STALL.min(switch_at.saturating_duration_since(Instant::now()));
            let got = match rx.recv_timeout(wait) {
                Ok(Got::Event(ev)) => ev,
                Ok(Got::End) | Err(_) => break,
            };
            match got.event.as_str() {
                "put" | "delete" => {
                    let d = &got.data;
                    pending.push((
                        d["revision"].as_u64().unwrap_or(0),
                        d["key"].as_str().unwrap_or("").to_string(),
                        d["value"].as_str().map(str::to_string),
                        d["prev_revision"].as_u64().unwrap_or(u64::MAX),
                    ));
                }
                "cancelled" => {
                    if let Some(r) = got.data["resume_from_revision"].as_u64() {
                        from = r;
                    }
                    break;
                }
                _ => {}
            }
            if let Some(id) = got.id {
                w.changes.append(&mut pending);
                from = id + 1;
                let t = target.load(std::sync::atomic::Ordering::SeqCst);
                if t > 0 && id >= t {
                    return w;
                }
            }
        }
        w.resumes += 1;
        if Instant::now() > give_up {
            return w;
        }
    }
}

/// Checks the watchers' histories (each followed up to `target`, the
/// commit index once the clients stopped) against `truth` (one
/// uninterrupted watch after healing, up to `at`), and `truth` against
/// itself and against the final state (`finals`: key → value, as one
/// linearizable list read at revision `at`). Returns whether all holds,
/// and lines for the summary.
pub fn check(
    truth: &[Change],
    target: u64,
    at: u64,
    watchers: &[Watched],
    finals: &BTreeMap<String, Option<String>>,
) -> (bool, String) {
    let mut ok = true;
    let mut s = String::new();
    let mut problems = Vec::new();
    // In revision order, no duplicate, chained per key.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let mut state: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for (i, c) in truth.iter().enumerate() {
        if i > 0 && truth[i - 1].0 > c.0 {
            problems.push(format!("history out of order at {:?} after {:?}", c, truth[i - 1]));
        }
        let before = last.get(c.1.as_str()).copied().unwrap_or(0);
        let deleted = state.get(c.1.as_str()).is_some_and(|v| v.is_none());
        // After a delete the key does not exist: the next put has prev 0.
        let want = if deleted { 0 } else { before };
        if c.3 != want {
            problems.push(format!(
                "{} at {}: prev_revision {} but the key's last event was at {want} (a missed event)",
                c.1, c.0, c.3
            ));
        }
        last.insert(&c.1, c.0);
        state.insert(&c.1, c.2.as_deref());
    }
    if at == 0 || finals.is_empty() {
        problems.push("the final state could not be read".to_string());
    }
    if truth.last().is_some_and(|c| c.0 > at.max(target)) {
        problems.push(format!("the history goes past the final revision {}", at.max(target)));
    }
    // Replaying it gives what every node reads back.
    for (key, value) in finals {
        let replayed = state.get(key.as_str()).copied().flatten();
        if replayed != value.as_deref() {
            problems.push(format!("{key}: the history replays to {replayed:?}, the nodes read {value:?}"));
        }
    }
    for (i, w) in watchers.iter().enumerate() {
        for g in &w.gaps {
            problems.push(format!("watcher {i}: {g}"));
        }
        let end = w.changes.last().map_or(0, |c| c.0);
        let expected: Vec<&Change> = truth.iter().filter(|c| c.0 <= end).collect();
        let got: Vec<&Change> = w.changes.iter().collect();
        let last_before_target = truth.iter().rfind(|c| c.0 <= target).map_or(0, |c| c.0);
        if got != expected {
            let at = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
            problems.push(format!(
                "watcher {i}: saw {} changes, the history has {} up to revision {end}; first difference at #{at}: {:?} vs {:?}",
                got.len(),
                expected.len(),
                got.get(at),
                expected.get(at)
            ));
        } else if end < last_before_target {
            problems.push(format!("watcher {i}: stopped at revision {end}, before {last_before_target}"));
        }
    }
    if !problems.is_empty() {
        ok = false;
    }
    let _ = writeln!(
        s,
        "watchers: {} watchers, {} changes each, {} resumes in all: {}",
        watchers.len(),
        truth.len(),
        watchers.iter().map(|w| w.resumes).sum::<usize>(),
        if ok { "every one saw the whole history, in order, once".to_string() } else { "FAILED".to_string() }
    );
    for p in problems.iter().take(20) {
        let _ = writeln!(s, "  {p}");
    }
    (ok, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: u64, key: &str, prev: u64) -> Change {
        (rev, key.to_string(), Some(format!("v{rev}")), prev)
    }

    #[test]
    fn the_check_catches_a_missed_a_repeated_and_a_reordered_event() {
        let truth = vec![put(2, "key0", 0), put(3, "key1", 0), put(5, "key0", 2), (6, "key1".into(), None, 3)];
        let finals: BTreeMap<String, Option<String>> =
            [("key0".to_string(), Some("v5".to_string())), ("key1".to_string(), None)].into();
        let all = |changes: Vec<Change>| Watched { changes, resumes: 1, gaps: vec![] };
        assert!(check(&truth, 6, 6, &[all(truth.clone())], &finals).0);
        // A watcher that missed one, saw one twice, or stopped early.
        let mut missed = truth.clone();
        missed.remove(2);
        let mut twice = truth.clone();
        twice.insert(1, truth[1].clone());
        for w in [missed.clone(), twice, truth[..2].to_vec()] {
            assert!(!check(&truth, 6, 6, &[all(w)], &finals).0);
        }
        // A history with a hole in a key's chain, or out of order.
        assert!(!check(&missed, 6, 6, &[all(missed.clone())], &finals).0);
        let mut swapped = truth.clone();
        swapped.swap(0, 1);
        assert!(!check(&swapped, 6, 6, &[all(swapped.clone())], &finals).0);
        // A history that does not replay to what the nodes read.
        let other: BTreeMap<String, Option<String>> = [("key0".to_string(), Some("v2".to_string()))].into();
        assert!(!check(&truth, 6, 6, &[all(truth.clone())], &other).0);
    }

    #[test]
    fn a_write_that_commits_after_the_watchers_stopped_is_replayed_not_missed() {
        // The watchers followed up to 6; a write whose client gave up
        // commits at 8, before the final list is read at 9.
        let mut truth = vec![put(2, "key0", 0), put(3, "key1", 0), put(5, "key0", 2)];
        let watched = Watched { changes: truth.clone(), resumes: 0, gaps: vec![] };
        truth.push(put(8, "key0", 5));
        let finals: BTreeMap<String, Option<String>> =
            [("key0".to_string(), Some("v8".to_string())), ("key1".to_string(), Some("v3".to_string()))].into();
        assert!(check(&truth, 6, 9, std::slice::from_ref(&watched), &finals).0);
        // A watcher that stopped before the target still fails, and so does
        // a final state the history does not replay to.
        let short = Watched { changes: truth[..2].to_vec(), resumes: 0, gaps: vec![] };
        assert!(!check(&truth, 6, 9, &[short], &finals).0);
        assert!(!check(&truth[..3], 6, 9, &[watched], &finals).0);
    }
}
