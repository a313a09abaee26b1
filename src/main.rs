//! The `raftkv` node binary: settings, logging, recovery (snapshot + WAL), then the
//! actors and the HTTP server on one actix system.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use raftkv::config::Args;
use raftkv::metrics::Metrics;
use raftkv::{actors, cluster, http, logging, recovery};

fn main() -> ExitCode {
    let settings = match Args::parse().resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("raftkv: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(settings.id, &settings.log) {
        eprintln!("raftkv: error: {e}");
        return ExitCode::from(2);
    }
    // A panic anywhere means a broken invariant: stop the whole node rather
    // than leave it running with a dead actor.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        log::error!(target: "raftkv::consensus", "fatal: {info}");
        log::logger().flush();
        std::process::exit(101);
    }));
    // The port first: a node that cannot listen must say so and stop
    // before it touches its data directory or starts any actor.
    let listener = match std::net::TcpListener::bind(settings.listen) {
        Ok(l) => l,
        Err(e) => {
            // The same command run twice: say what the user needs to hear.
            let msg = match raftkv::wal::data_dir_in_use(&settings.data_dir) {
                Some(locked) => locked.to_string(),
                None => format!("cannot listen on {}: {e}", settings.listen),
            };
            log::error!(target: "raftkv::http", "{msg}");
            eprintln!("raftkv: error: {msg}");
            return ExitCode::from(1);
        }
    };
    let recovered = match recovery::recover(&settings.data_dir, settings.wal_segment_bytes) {
        Ok(r) => r,
        Err(e) => {
            log::error!(target: "raftkv::storage", "{e}");
            eprintln!("raftkv: error: {e}");
            return ExitCode::from(1);
        }
    };
    let b = &recovered.boot;
    let fresh = b.hard_state == Default::default() && b.snapshot.is_none() && b.entries.is_empty();
    let identity = match cluster::resolve(&settings, fresh) {
        Ok(f) => f,
        Err(e) => {
            log::error!(target: "raftkv::consensus", "{e}");
            eprintln!("raftkv: error: {e}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        target: "raftkv::consensus",
        "node {} of cluster {} listening on {}, data in {}",
        settings.id,
        cluster::format_id(identity.cluster_id),
        settings.listen,
        settings.data_dir.display()
    );
    // Per-peer series are added as members appear (Consensus).
    let metrics = Arc::new(Metrics::new(settings.id, []));
    let result = actix_web::rt::System::new().block_on(async move {
        let r = recovered;
        let node = actors::spawn_node(&settings, &identity, r.boot, r.store, r.snapshots, r.wal, metrics.clone());
        http::serve(settings, listener, node, metrics).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv: error: {e}");
            ExitCode::from(1)
        }
    }
}
