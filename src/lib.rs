//! raftkv: a small, strongly consistent key-value store replicated with
//! Raft. See README.md for the tour and DESIGN notes for the contract.
//!
//! * `raft` — the consensus rules, pure (no IO, no clock, no randomness).
//! * `state_machine` — what consensus replicates: apply, snapshot, restore.
//! * `kv` — the key-value state machine, pure.
//! * `codec`, `wal`, `snapshot` — binary formats of peer messages, the
//!   write-ahead log and snapshot files; `recovery` — start-up from them;
//!   `cluster` — the cluster's identity file and joining (`--join`).
//! * `actors` (in `actors/`) — the actix actors that do the IO around them.
//! * `http` — the actix-web front door: client API, operations, Raft RPCs.
//! * `config`, `logging`, `metrics` — settings, per-actor logs, Prometheus.
//! * `auth` — client tokens with roles and the cluster secret for peers.
//! * `client` — a small blocking HTTP client for the CLI and the tests.
//! * `timeline` — elections, leader, membership and snapshot events for
//!   people (`/status`, the web view at `/ui`).
//!
//! The chaos tester and the benchmark live in `tools/` (`raftkv-tools`).

pub mod auth;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod http;
pub mod kv;
pub mod logging;
pub mod metrics;
pub mod raft;
pub mod recovery;
pub mod snapshot;
pub mod state_machine;
pub mod timeline;
pub mod tls;
pub mod wal;

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod client;
