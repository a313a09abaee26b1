//! Tools around the raftkv node, kept out of its library so that `src/`
//! reads as the node alone:
//!
//! * `chaos` — fault injection against real clusters and a linearizability
//!   checker (`raftkv-chaos`, `make chaos`).
//! * `raftkv-bench` — raftkv against etcd and a ceiling with `wrk`
//!   (`make bench`); `raftkv-ceiling` — that ceiling, an unreplicated
//!   in-memory server of the same API; `raftkv-soak` — snapshots and
//!   compaction over time. `process` — their child processes.

use std::path::PathBuf;

pub mod chaos;
pub mod process;

/// The `raftkv` node binary of this build: beside the running executable,
/// or one level up for test executables (`target/<profile>/deps/`).
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let beside = exe.with_file_name("raftkv");
    if beside.exists() {
        return beside;
    }
    match exe.parent().and_then(|d| d.parent()) {
        Some(up) if up.join("raftkv").exists() => up.join("raftkv"),
        _ => beside,
    }
}
