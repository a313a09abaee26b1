//! `make bench` keeps working: a smoke run of `raftkv-bench` with 1-second
//! loads against raftkv and the ceiling (etcd is left out here; the full
//! comparison is `make bench`), and the cluster with TLS and tokens. Needs
//! `wrk` and `openssl` (installed by .ci/run).

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_raftkv-bench");

#[test]
fn bench_measures_every_load_and_the_recovery_time() {
    let dir = std::env::temp_dir().join(format!("raftkv-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("BENCHMARKS.md");
    // Fixed ports, so they must stay below the kernel's ephemeral range
    // (32768 and up by default): there, other tests' client connections
    // can hold a port just when a node wants to listen on it (seen in CI:
    // a node that could not bind left the cluster without a majority).
    let port_base = 20_000 + (std::process::id() % 12_000) as u16;
    let out = Command::new(BENCH)
        .current_dir(&dir)
        .args(["--no-etcd", "--seconds", "1", "--kills", "1", "--port-base", &port_base.to_string()])
        .arg("--report")
        .arg(&report)
        .env_remove("BENCH_QUICK")
        .output()
        .expect("run raftkv-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "raftkv-bench failed:\n{stderr}");
    let md = std::fs::read_to_string(&report).unwrap();
    let rows: Vec<Vec<String>> = md
        .lines()
        .filter(|l| l.starts_with("| PUT") || l.starts_with("| GET"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    for (load, conns) in [("PUT", "1"), ("PUT", "16"), ("PUT", "64"), ("PUT", "256"), ("GET linearizable", "64")] {
        for system in ["raftkv", "raftkv TLS+tokens", "ceiling"] {
            let row = rows
                .iter()
                .find(|r| r[1] == load && r[2] == conns && r[3] == system)
                .unwrap_or_else(|| panic!("no row for {system} {load} c={conns} in:\n{md}"));
            let rps: f64 = row[4].parse().unwrap();
            assert!(rps > 0.0, "{system} {load} c={conns}: {rps} req/s");
            assert_eq!(row[9], "0", "{system} {load} c={conns} had errors:\n{md}");
        }
    }
    assert!(rows.iter().any(|r| r[1] == "GET stale/serializable" && r[3] == "raftkv"));
    assert!(md.contains("Leader `kill -9` → first acknowledged write"), "{md}");
    assert!(
        md.contains(
            "Leader `SIGTERM` (hands leadership over, then exits) → first acknowledged write (1 stops): median"
        ),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
