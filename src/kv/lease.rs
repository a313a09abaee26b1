//! Leases: keys that vanish when their owner stops renewing them.
//!
//! A lease is part of the replicated state: granted, renewed and revoked by
//! log entries, its deadline written in the clock of the leader that
//! proposed the entry. Expiry is decided by the leader (it proposes an
//! expiry entry for leases whose deadline its clock has passed) and applied
//! by every node alike, so every node deletes the same keys at the same
//! revision. Because the deadline is in the replicated state, a new leader
//! or a restarted node keeps the remaining time: nothing is reset to the
//! full TTL (etcd resets it on a leader change, etcd #9395).
//!
//! The table's clock is the largest leader clock seen in the log, so time
//! never runs backwards in it, even across leaders whose clocks differ.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::{BufMut, BytesMut};

use crate::codec::{DecodeError, Reader, put_bytes};

/// This node's wall clock in milliseconds since the epoch: what a leader
/// writes into lease entries.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ttl_ms: u64,
    /// When it expires, by the table's clock.
    pub expires_at: u64,
    pub keys: BTreeSet<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Leases {
    by_id: BTreeMap<u64, Lease>,
    by_expiry: BTreeSet<(u64, u64)>,
    /// Which lease a key is attached to.
    key_lease: HashMap<String, u64>,
    clock_ms: u64,
}

impl Leases {
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn get(&self, id: u64) -> Option<&Lease> {
        self.by_id.get(&id)
    }

    pub fn max_id(&self) -> Option<u64> {
        self.by_id.keys().next_back().copied()
    }

    /// Moves the clock to `now_ms` (never back).
    pub fn advance(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    pub fn grant(&mut self, id: u64, ttl_ms: u64) {
        let expires_at = self.clock_ms.saturating_add(ttl_ms);
        self.by_id.insert(id, Lease { ttl_ms, expires_at, keys: BTreeSet::new() });
        self.by_expiry.insert((expires_at, id));
    }

    /// Renews a lease for its whole TTL from now; false if there is none.
    pub fn keep_alive(&mut self, id: u64) -> bool {
        let clock = self.clock_ms;
        let Some(l) = self.by_id.get_mut(&id) else { return false };
        self.by_expiry.remove(&(l.expires_at, id));
        l.expires_at = clock.saturating_add(l.ttl_ms);
        self.by_expiry.insert((l.expires_at, id));
        true
    }

    /// Removes a lease; the keys attached to it (to delete).
    pub fn remove(&mut self, id: u64) -> Option<Vec<String>> {
        let l = self.by_id.remove(&id)?;
        self.by_expiry.remove(&(l.expires_at, id));
        for k in &l.keys {
            self.key_lease.remove(k);
        }
        Some(l.keys.into_iter().collect())
    }

    /// Whether the lease's deadline has passed by the table's clock.
    pub fn expired(&self, id: u64) -> bool {
        self.by_id.get(&id).is_some_and(|l| l.expires_at <= self.clock_ms)
    }

    /// Leases whose deadline is at or before `now_ms` (a leader's clock),
    /// oldest first, at most `max`.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<u64> {
        self.by_expiry.iter().take_while(|(at, _)| *at <= now_ms).take(max).map(|(_, id)| *id).collect()
    }

    /// Attaches `key` to lease `id` (detaching it from any other).
    pub fn attach(&mut self, key: &str, id: u64) {
        self.detach(key);
        if let Some(l) = self.by_id.get_mut(&id) {
            l.keys.insert(key.to_string());
            self.key_lease.insert(key.to_string(), id);
        }
    }

    /// The key was written without a lease or deleted: it is no longer
    /// any lease's.
    pub fn detach(&mut self, key: &str) {
        if self.key_lease.is_empty() {
            return;
        }
        if let Some(id) = self.key_lease.remove(key)
            && let Some(l) = self.by_id.get_mut(&id)
        {
            l.keys.remove(key);
        }
    }

    /// The lease `key` is attached to.
    pub fn lease_of(&self, key: &str) -> Option<u64> {
        self.key_lease.get(key).copied()
    }

    // --- in snapshots ---

    /// `clock_ms`, count, then per lease: id, ttl_ms, expires_at, key
    /// count, keys.
    pub fn write_to(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.clock_ms);
        buf.put_u64_le(self.by_id.len() as u64);
        for (id, l) in &self.by_id {
            buf.put_u64_le(*id);
            buf.put_u64_le(l.ttl_ms);
            buf.put_u64_le(l.expires_at);
            buf.put_u64_le(l.keys.len() as u64);
            for k in &l.keys {
                put_bytes(buf, k.as_bytes());
            }
        }
    }

    pub fn read_from(r: &mut Reader) -> Result<Leases, DecodeError> {
        let mut t = Leases { clock_ms: r.u64("lease clock")?, ..Leases::default() };
        let n = r.u64("lease count")?;
        let mut last = None;
        for _ in 0..n {
            let id = r.u64("lease id")?;
            if last.is_some_and(|l| l >= id) {
                return Err(DecodeError(format!("lease {id} is out of order")));
            }
            last = Some(id);
            let ttl_ms = r.u64("lease ttl")?;
            let expires_at = r.u64("lease expiry")?;
            let count = r.u64("lease key count")?;
            if count > r.remaining() as u64 {
                return Err(DecodeError(format!("lease {id} claims {count} keys")));
            }
            let mut keys = BTreeSet::new();
            for _ in 0..count {
                let k = r.string("lease key")?;
                if t.key_lease.insert(k.clone(), id).is_some() {
                    return Err(DecodeError(format!("key '{k}' is in two leases")));
                }
                keys.insert(k);
            }
            t.by_id.insert(id, Lease { ttl_ms, expires_at, keys });
            t.by_expiry.insert((expires_at, id));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_log_clock_and_keys_follow_their_lease() {
        let mut l = Leases::default();
        l.advance(1_000);
        l.grant(5, 3_000);
        l.attach("a", 5);
        l.attach("b", 5);
        l.advance(500); // an older leader's clock: time does not go back
        assert_eq!(l.clock_ms(), 1_000);
        assert!(l.due(3_999, 10).is_empty());
        assert_eq!(l.due(4_000, 10), [5]);
        l.advance(3_000);
        assert!(l.keep_alive(5));
        assert!(l.due(5_999, 10).is_empty());
        assert!(!l.keep_alive(6));
        l.detach("a");
        assert_eq!(l.lease_of("a"), None);
        assert_eq!(l.lease_of("b"), Some(5));
        let mut buf = BytesMut::new();
        l.write_to(&mut buf);
        let back = Leases::read_from(&mut Reader::new(buf.freeze())).unwrap();
        assert_eq!(back.get(5), l.get(5));
        assert_eq!(back.lease_of("b"), Some(5));
        let mut l = back;
        assert_eq!(l.remove(5), Some(vec!["b".to_string()]));
        assert_eq!(l.lease_of("b"), None);
        assert!(l.is_empty());
    }
}
