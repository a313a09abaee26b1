//! The short chaos runs CI does on every change (`make chaos` runs long
//! ones): a real cluster under every kind of fault must stay linearizable,
//! and the same run with a planted bug must be caught.
//! `CHAOS_TEST_SECS` sets the length of each run (default 30).

use std::time::Duration;

use raftkv_tools::chaos::{ChaosConfig, Fault, PlantedBug, run};

fn secs() -> u64 {
    std::env::var("CHAOS_TEST_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

fn config(nodes: u64, seed: u64, faults: Vec<Fault>, secs: u64) -> ChaosConfig {
    let out = std::env::temp_dir().join(format!("raftkv-chaos-test-{}-{nodes}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    ChaosConfig {
        binary: raftkv_tools::node_binary(),
        nodes,
        duration: Duration::from_secs(secs),
        faults,
        seed,
        clients: 5,
        keys: 4,
        out_dir: out,
        planted_bug: None,
        check_budget: Duration::from_secs(60),
        // A snapshot every 100 entries: nodes that were down or cut off
        // catch up through InstallSnapshot while the faults go on.
        extra_node_args: raftkv_tools::chaos::snapshot_args(100),
        lease_reads: false,
        // As in the black-box tests: RAFTKV_TEST_TLS=1 runs them with TLS and tokens.
        tls: std::env::var_os("RAFTKV_TEST_TLS").is_some_and(|v| v == "1"),
    }
}

fn expect_pass(cfg: ChaosConfig) {
    let report = run(&cfg).unwrap_or_else(|e| panic!("chaos run could not start: {e}"));
    eprintln!("{}", report.summary);
    assert!(report.pass, "chaos run failed:\n{}", report.summary);
    assert!(report.ops > 1000, "too few operations to mean anything: {}", report.ops);
    assert!(report.snapshots.0 > 0, "no snapshot was taken: {}", report.summary);
    // The counter (exactly-once increments in sessions) and the bank
    // (transactions) ran and were checked.
    assert!(report.workloads.0 > 10 && report.workloads.1 > 10, "{}", report.summary);
    let _ = std::fs::remove_dir_all(&cfg.out_dir);
}

#[test]
fn three_nodes_under_every_fault_stay_linearizable() {
    let seed = 1000 + u64::from(std::process::id() % 1000);
    let mut cfg = config(3, seed, Fault::ALL.to_vec(), secs());
    // Half the reads trust the leader lease: pauses and kills attack it.
    cfg.lease_reads = true;
    expect_pass(cfg);
}

#[test]
fn five_nodes_under_every_fault_stay_linearizable() {
    let seed = 2000 + u64::from(std::process::id() % 1000);
    let mut cfg = config(5, seed, Fault::ALL.to_vec(), secs());
    // Pipelined replication is off by default; keep it under fire here.
    cfg.extra_node_args.extend(["--max-inflight".into(), "4".into()]);
    expect_pass(cfg);
}

/// Members are replaced (the leader too) and leadership moves while nodes
/// crash and the network splits: no acknowledged write is lost, no read stale.
#[test]
fn membership_changes_under_faults_stay_linearizable() {
    // A seed whose schedule starts with two replacements (the nemesis
    // draws from this list in order of the seed's random numbers).
    let seed = 3041;
    let faults = vec![Fault::Replace, Fault::Transfer, Fault::Kill, Fault::PartitionHalves, Fault::Combined];
    let cfg = config(3, seed, faults, secs());
    let report = run(&cfg).unwrap_or_else(|e| panic!("chaos run could not start: {e}"));
    eprintln!("{}", report.summary);
    assert!(report.pass, "chaos run failed:\n{}", report.summary);
    assert!(report.ops > 1000, "too few operations to mean anything: {}", report.ops);
    let faults = std::fs::read_to_string(cfg.out_dir.join("faults.jsonl")).unwrap_or_default();
    let replaced = faults.lines().any(|l| l.contains("promoted; remove") && l.contains(": ok\""));
    assert!(replaced, "no replacement got through: {faults}");
    let _ = std::fs::remove_dir_all(&cfg.out_dir);
}

/// The checker can fail: nodes that serve linearizable reads from local
/// state (no ReadIndex) are caught.
#[test]
fn a_planted_stale_read_bug_is_caught() {
    let mut cfg = config(3, 7, vec![Fault::PartitionLeader, Fault::PartitionHalves], secs().min(15));
    cfg.planted_bug = Some(PlantedBug::LocalReads);
    let report = run(&cfg).unwrap_or_else(|e| panic!("chaos run could not start: {e}"));
    eprintln!("{}", report.summary);
    assert!(!report.pass, "the planted bug went unnoticed:\n{}", report.summary);
    assert!(report.verdicts.values().any(|v| v.is_violation()), "{}", report.summary);
    assert!(report.summary.contains("NOT LINEARIZABLE"));
    let _ = std::fs::remove_dir_all(&cfg.out_dir);
}
