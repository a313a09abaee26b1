//! Fault injection against real clusters (`make chaos`): a driver starts a
//! cluster of the release binary on distinct loopback addresses, runs
//! concurrent clients that record every operation, lets a nemesis crash,
//! pause and partition nodes, heals, reads everything back, and checks the
//! history for linearizability per key.
//!
//! * `checker.rs` — the Wing–Gong–Lowe linearizability search.
//! * `cluster.rs` — node processes, signals, iptables rules.
//! * `run.rs` — clients, nemesis, report.
//! * `workloads.rs` — a counter of CAS loops and a bank of transactions,
//!   both in client sessions: exactly-once writes and atomicity.
//! * `watchers.rs` — watch streams through the faults, checked against the
//!   whole history and the final state.

pub mod checker;
pub mod cluster;
pub mod run;
pub mod watchers;
pub mod workloads;

pub use run::{ChaosConfig, Fault, PlantedBug, Report, parse_faults, run};

/// Node flags for a snapshot every `every` entries, keeping a tail of 20 and
/// small WAL segments so purging runs too; none for 0 (the node's defaults).
pub fn snapshot_args(every: u64) -> Vec<String> {
    if every == 0 {
        return Vec::new();
    }
    let every = every.to_string();
    let flags = [
        "--snapshot-entries",
        &every,
        "--snapshot-log-ratio",
        "0",
        "--snapshot-keep-entries",
        "20",
        "--wal-segment-bytes",
        "16384",
    ];
    flags.iter().map(|s| s.to_string()).collect()
}
