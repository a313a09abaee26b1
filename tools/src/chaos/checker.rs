//! Linearizability checking of per-key register histories (read, write,
//! compare-and-set), with the Wing–Gong search as improved by Lowe and used
//! by Knossos and Porcupine: walk the history in time order, linearize an
//! operation whose call is minimal, backtrack when a return is reached whose
//! operation could not be placed, and memoise (set of linearized ops, state)
//! pairs already explored.
//!
//! Operations whose outcome is unknown (timeout, connection lost) may take
//! effect at any time after their invocation, or never: they have no return
//! event. A key is checked on its own (linearizability is compositional).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What an operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A read that returned this value (`None`: the key did not exist).
    Read(Option<String>),
    /// A write of this value.
    Write(String),
    /// A compare-and-set that succeeded: the value was `expect`, now `new`.
    Cas { expect: String, new: String },
}

/// One operation in a key's history. Times are in any monotonic unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp {
    pub id: usize,
    pub call: u64,
    /// `None`: the outcome is unknown (it may or may not have happened).
    pub ret: Option<u64>,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable. `window` is the shortest prefix's tail that shows
    /// it: the operations around the first one that cannot be placed.
    Violation {
        witness: usize,
        window: Vec<usize>,
    },
    /// The search ran out of time.
    Unknown,
}

impl Verdict {
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation { .. })
    }
}

/// Unknown writes whose value nobody ever observed can be dropped: any
/// linearization that includes one stays valid without it, because no read
/// or successful compare-and-set depends on that value.
fn prune(ops: &[HistoryOp]) -> Vec<HistoryOp> {
    let observed: HashSet<&str> = ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::Read(Some(v)) => Some(v.as_str()),
            Action::Cas { expect, .. } => Some(expect.as_str()),
            _ => None,
        })
        .collect();
    ops.iter()
        .filter(|o| match (&o.action, o.ret) {
            (Action::Read(_), None) => false,
            (Action::Write(v), None) | (Action::Cas { new: v, .. }, None) => observed.contains(v.as_str()),
            _ => true,
        })
        .cloned()
        .collect()
}

#[derive(Clone, Copy)]
struct Entry {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
    /// For a call, the index of its return entry (usize::MAX for unknown ops).
    partner: usize,
}

const NONE: usize = usize::MAX;

/// Runs the search. `Ok(true)`: linearizable; `Ok(false)`: not; `Err`: out of time.
fn search(ops: &[HistoryOp], deadline: Instant) -> Result<bool, ()> {
    // Intern values: state 0 is "absent".
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &str| {
        let n = ids.len() as u32 + 1;
        *ids.entry(v.to_string()).or_insert(n)
    };
    #[derive(Clone, Copy)]
    enum Step {
        Read(u32),
        Write(u32),
        Cas(u32, u32),
    }
    let steps: Vec<Step> = ops
        .iter()
        .map(|o| match &o.action {
            Action::Read(None) => Step::Read(0),
            Action::Read(Some(v)) => Step::Read(intern(v)),
            Action::Write(v) => Step::Write(intern(v)),
            Action::Cas { expect, new } => Step::Cas(intern(expect), intern(new)),
        })
        .collect();

    // Events in time order; at equal times calls come first (concurrent).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, true, i));
        if let Some(r) = o.ret {
            events.push((r, false, i));
        }
    }
    events.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // Entry 0 is the head sentinel.
    let mut list: Vec<Entry> = Vec::with_capacity(events.len() + 1);
    list.push(Entry { prev: NONE, next: NONE, op: NONE, is_call: false, partner: NONE });
    let mut ret_entry = vec![NONE; ops.len()];
    let mut call_entry = vec![NONE; ops.len()];
    for &(_, is_call, op) in &events {
        let idx = list.len();
        let prev = idx - 1;
        list[prev].next = idx;
        list.push(Entry { prev, next: NONE, op, is_call, partner: NONE });
        if is_call {
            call_entry[op] = idx;
        } else {
            ret_entry[op] = idx;
        }
    }
    for op in 0..ops.len() {
        list[call_entry[op]].partner = ret_entry[op];
    }

    fn unlink(list: &mut [Entry], e: usize) {
        let (p, n) = (list[e].prev, list[e].next);
        list[p].next = n;
        if n != NONE {
            list[n].prev = p;
        }
    }
    fn relink(list: &mut [Entry], e: usize) {
        let (p, n) = (list[e].prev, list[e].next);
        list[p].next = e;
        if n != NONE {
            list[n].prev = e;
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: u32 = 0;
    let mut cache: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut calls: Vec<(usize, u32)> = Vec::new();
    let mut entry = list[0].next;
    let mut iterations = 0u64;
    while entry != NONE {
        iterations += 1;
        if iterations.is_multiple_of(4096) && Instant::now() > deadline {
            return Err(());
        }
        let e = list[entry];
        if e.is_call {
            let next_state = match steps[e.op] {
                Step::Read(v) => (v == state).then_some(state),
                Step::Write(v) => Some(v),
                Step::Cas(expect, new) => (expect == state).then_some(new),
            };
            if let Some(ns) = next_state {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((linearized.clone(), ns)) {
                    calls.push((entry, state));
                    state = ns;
                    unlink(&mut list, entry);
                    if e.partner != NONE {
                        unlink(&mut list, e.partner);
                    }
                    entry = list[0].next;
                    continue;
                }
                linearized[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else {
            // A return whose operation is not yet linearized: go back.
            let Some((call, prev_state)) = calls.pop() else { return Ok(false) };
            let op = list[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            let partner = list[call].partner;
            if partner != NONE {
                relink(&mut list, partner);
            }
            relink(&mut list, call);
            entry = list[call].next;
        }
        // Only unknown operations left unplaced before the end: done.
        if entry == NONE {
            break;
        }
    }
    // Every operation with a return was lifted (otherwise the walk would
    // have stopped at its return); unknown ones may stay unplaced.
    Ok(true)
}

/// The history up to time `t`: operations completed by then keep their
/// outcome; those still running become unknown.
fn prefix(ops: &[HistoryOp], t: u64) -> Vec<HistoryOp> {
    ops.iter()
        .filter(|o| o.call <= t)
        .map(|o| {
            let mut o = o.clone();
            if o.ret.is_some_and(|r| r > t) {
                o.ret = None;
            }
            o
        })
        .collect()
}

/// Checks one key's history within `budget`.
pub fn check(ops: &[HistoryOp], budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let pruned = prune(ops);
    match search(&pruned, deadline) {
        Ok(true) => Verdict::Linearizable,
        Err(()) => Verdict::Unknown,
        Ok(false) => {
            // Shortest failing prefix, by binary search over return times
            // (a prefix that fails keeps failing as the history grows).
            let mut rets: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
            rets.sort_unstable();
            rets.dedup();
            let (mut lo, mut hi) = (0, rets.len() - 1);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match search(&prune(&prefix(ops, rets[mid])), deadline) {
                    Ok(false) => hi = mid,
                    Ok(true) => lo = mid + 1,
                    Err(()) => break,
                }
            }
            let t = rets[hi];
            let witness = ops.iter().find(|o| o.ret == Some(t)).expect("a return at t");
            // The window: everything overlapping the witness, back to the
            // last write that completed before the witness began.
            let last_write_before = ops
                .iter()
                .filter(|o| !matches!(o.action, Action::Read(_)) && o.ret.is_some_and(|r| r < witness.call))
                .map(|o| o.call)
                .max()
                .unwrap_or(0);
            let from = last_write_before.min(witness.call);
            let mut window: Vec<&HistoryOp> =
                ops.iter().filter(|o| o.call <= t && o.ret.is_none_or(|r| r >= from)).collect();
            window.sort_by_key(|o| (o.call, o.id));
            Verdict::Violation { witness: witness.id, window: window.iter().map(|o| o.id).collect() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: usize, call: u64, ret: Option<u64>, action: Action) -> HistoryOp {
        HistoryOp { id, call, ret, action }
    }
    fn w(v: &str) -> Action {
        Action::Write(v.into())
    }
    fn r(v: Option<&str>) -> Action {
        Action::Read(v.map(str::to_string))
    }
    fn cas(e: &str, n: &str) -> Action {
        Action::Cas { expect: e.into(), new: n.into() }
    }
    const T: Duration = Duration::from_secs(5);

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [op(0, 0, Some(10), w("1")), op(1, 20, Some(30), w("2")), op(2, 40, Some(50), r(Some("1")))];
        let v = check(&h, T);
        assert_eq!(v, Verdict::Violation { witness: 2, window: vec![1, 2] });
    }

    #[test]
    fn read_of_a_value_never_written_is_caught() {
        assert!(check(&[op(0, 0, Some(10), r(Some("7")))], T).is_violation());
        let h = [op(0, 0, Some(10), w("a")), op(1, 5, Some(15), r(Some("b")))];
        assert!(check(&h, T).is_violation());
    }

    #[test]
    fn two_readers_seeing_two_writes_in_opposite_orders_is_caught() {
        let h = [
            op(0, 0, Some(100), w("a")),
            op(1, 0, Some(100), w("b")),
            op(2, 110, Some(120), r(Some("a"))),
            op(3, 130, Some(140), r(Some("b"))),
            op(4, 110, Some(120), r(Some("b"))),
            op(5, 130, Some(140), r(Some("a"))),
        ];
        assert!(check(&h, T).is_violation());
    }

    #[test]
    fn reads_concurrent_with_a_write_may_see_old_or_new() {
        let h = [
            op(0, 0, Some(10), w("old")),
            op(1, 20, Some(60), w("new")),
            op(2, 25, Some(30), r(Some("new"))),
            op(3, 35, Some(40), r(Some("new"))),
            op(4, 70, Some(80), r(Some("new"))),
        ];
        assert_eq!(check(&h, T), Verdict::Linearizable);
        // ...but once a reader saw the new value, a later read cannot see the old one.
        let h2 = [h[0].clone(), h[1].clone(), h[2].clone(), op(3, 35, Some(40), r(Some("old")))];
        assert!(check(&h2, T).is_violation());
    }

    #[test]
    fn unknown_writes_may_happen_late_or_never() {
        // Timed-out write observed long after it was sent.
        let h = [op(0, 0, None, w("x")), op(1, 10, Some(20), r(None)), op(2, 500, Some(510), r(Some("x")))];
        assert_eq!(check(&h, T), Verdict::Linearizable);
        // Timed-out write never observed.
        let h = [op(0, 0, Some(5), w("a")), op(1, 10, None, w("lost")), op(2, 30, Some(40), r(Some("a")))];
        assert_eq!(check(&h, T), Verdict::Linearizable);
        // But it cannot take effect before it was sent.
        let h = [op(0, 0, Some(5), r(Some("x"))), op(1, 10, None, w("x"))];
        assert!(check(&h, T).is_violation());
    }

    #[test]
    fn compare_and_set_needs_the_expected_value() {
        let ok = [op(0, 0, Some(5), w("a")), op(1, 10, Some(20), cas("a", "b")), op(2, 30, Some(40), r(Some("b")))];
        assert_eq!(check(&ok, T), Verdict::Linearizable);
        let bad = [op(0, 0, Some(5), w("a")), op(1, 10, Some(20), cas("z", "b"))];
        assert!(check(&bad, T).is_violation());
        // Two successful CAS from the same expected value cannot both happen.
        let double =
            [op(0, 0, Some(5), w("a")), op(1, 10, Some(20), cas("a", "b")), op(2, 10, Some(20), cas("a", "c"))];
        assert!(check(&double, T).is_violation());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = [op(0, 0, Some(5), w("a")), op(1, 10, Some(20), w("b")), op(2, 100, Some(110), r(Some("a")))];
        assert!(check(&h, T).is_violation());
    }

    #[test]
    fn long_sequential_history_is_fast() {
        let mut h = Vec::new();
        for i in 0..5000u64 {
            h.push(op(2 * i as usize, i * 10, Some(i * 10 + 3), w(&format!("v{i}"))));
            h.push(op(2 * i as usize + 1, i * 10 + 4, Some(i * 10 + 8), r(Some(&format!("v{i}")))));
        }
        assert_eq!(check(&h, Duration::from_secs(20)), Verdict::Linearizable);
    }
}
