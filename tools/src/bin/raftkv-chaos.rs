//! `raftkv-chaos` (`make chaos`): a soak test of a real raftkv cluster under
//! injected faults, with a linearizability check of everything clients saw.
//!
//! ```text
//! raftkv-chaos --time 120 --nodes 5 --faults all --seed 7
//! raftkv-chaos --faults partitions --unsafe-planted-bug local-reads   # must FAIL
//! ```
//! Nodes snapshot every 100 entries by default (`--snapshot-every`), so
//! InstallSnapshot is under fire too.
//! Needs root for iptables (partition faults). Exit code 0 on PASS, 1 on FAIL.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use raftkv_tools::chaos::{ChaosConfig, parse_faults, run};

#[derive(Parser, Debug)]
#[command(name = "raftkv-chaos", version, about = "Fault-injection soak test with a linearizability checker")]
struct Args {
    /// Seconds of client load and faults (per run).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Cluster size (3 or 5 are the interesting ones).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Faults: all, crashes, pauses, partitions, none, or a list of
    /// kill,kill-leader,pause,pause-leader,partition-leader,partition-halves,one-way,bridge,combined.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Seed of the fault schedule and the clients (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// How many runs, each with its own cluster and seed (seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Where histories and logs go (a new folder per run inside it).
    #[arg(long, default_value = "chaos-runs")]
    out: PathBuf,
    /// Seconds the linearizability search may spend per key.
    #[arg(long, default_value_t = 120)]
    check_budget: u64,
    /// The raftkv binary (default: next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Take a snapshot (and compact the log, keeping 20 entries) every this
    /// many entries, so restarted and partitioned nodes catch up through
    /// InstallSnapshot; 0: the node's default policy.
    #[arg(long, default_value_t = 100)]
    snapshot_every: u64,
    /// More flags for every node, e.g. --node-arg=--max-inflight --node-arg=4.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Make half of the reads lease reads (`?consistency=lease`).
    #[arg(long)]
    lease_reads: bool,
    /// TLS on every connection (mutual between members, certificates made
    /// with scripts/gen-certs.sh) and client tokens on every node.
    #[arg(long)]
    tls: bool,
    /// TESTING ONLY: a deliberate bug the checker must catch. `local-reads`:
    /// the clients read local state (`?consistency=stale`) and record the
    /// reads as linearizable.
    #[arg(long)]
    unsafe_planted_bug: Option<raftkv_tools::chaos::PlantedBug>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let faults = match parse_faults(&a.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("raftkv-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let binary = a.binary.clone().unwrap_or_else(raftkv_tools::node_binary);
    let seed = a.seed.unwrap_or_else(|| u64::from(rand::random::<u16>()));
    let mut all_pass = true;
    for run_no in 0..a.runs {
        let seed = seed + run_no;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let cfg = ChaosConfig {
            binary: binary.clone(),
            nodes: a.nodes,
            duration: Duration::from_secs(a.time),
            faults: faults.clone(),
            seed,
            clients: a.clients,
            keys: a.keys,
            out_dir: a.out.join(format!("{stamp}-n{}-seed{seed}", a.nodes)),
            planted_bug: a.unsafe_planted_bug,
            check_budget: Duration::from_secs(a.check_budget),
            extra_node_args: raftkv_tools::chaos::snapshot_args(a.snapshot_every)
                .into_iter()
                .chain(a.node_args.iter().cloned())
                .collect(),
            lease_reads: a.lease_reads,
            tls: a.tls,
        };
        eprintln!(
            "run {}/{}: {} nodes, {} s, seed {seed}, output {}",
            run_no + 1,
            a.runs,
            a.nodes,
            a.time,
            cfg.out_dir.display()
        );
        match run(&cfg) {
            Ok(report) => {
                print!("{}", report.summary);
                all_pass &= report.pass;
            }
            Err(e) => {
                eprintln!("raftkv-chaos: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if all_pass { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
