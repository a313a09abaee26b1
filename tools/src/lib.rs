//! Tools around the raftkv node, kept out of its library so that `src/`
//! reads as the node alone:
//!
//! * `chaos` — fault injection against real clusters and a linearizability
//!   checker (`raftkv-chaos`, `make chaos`).
//! * `raftkv-bench` — raftkv against etcd and a ceiling with `wrk`
//!   (`make bench`); `raftkv-ceiling` — that ceiling, an unreplicated
//!   in-memory server of the same API; `raftkv-soak` — snapshots and
//!   compaction over time. `process` — their child processes; `watchers`
//!   — watch streams for the benchmark.

use std::path::PathBuf;

pub mod chaos;
pub mod process;
pub mod watchers;

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

/// A CA (made once) and member certificates in `dir` for `(id, ip)` pairs,
/// by the repository's `scripts/gen-certs.sh` (openssl): `dir/ca.pem`,
/// `dir/node<id>.pem`, `dir/node<id>-key.pem`. Existing files are kept.
pub fn gen_certs(dir: &std::path::Path, members: &[(u64, std::net::IpAddr)]) -> Result<(), String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-certs.sh");
    let out = std::process::Command::new(&script)
        .arg(dir)
        .args(members.iter().map(|(id, ip)| format!("{id}={ip}")))
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The flags that give node `id` its certificate, the CA and the tokens
/// file, for certificates made by [`gen_certs`] in `certs`.
pub fn tls_node_args(certs: &std::path::Path, id: u64, tokens_file: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (flag, file) in [
        ("--cert-file", format!("node{id}.pem")),
        ("--key-file", format!("node{id}-key.pem")),
        ("--trusted-ca-file", "ca.pem".to_string()),
    ] {
        args.push(flag.into());
        args.push(certs.join(file).into());
    }
    args.push("--tokens-file".into());
    args.push(tokens_file.into());
    args
}
