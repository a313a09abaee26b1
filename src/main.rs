//! The `raftkv` node binary: settings, logging, WAL recovery, then the
//! actors and the HTTP server on one actix system.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use raftkv::config::Args;
use raftkv::metrics::Metrics;
use raftkv::{actors, http, logging, wal};

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
    let (recovered, writer) = match wal::open(&settings.data_dir) {
        Ok(r) => r,
        Err(e) => {
            log::error!(target: "raftkv::storage", "{e}");
            eprintln!("raftkv: error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(s) = &recovered.snapshot {
        // Written only by a node that installs snapshots from its leader,
        // which this build does not do yet (issue 10): never guess.
        let e = format!(
            "the write-ahead log in {} records a snapshot installed at index {} (term {}), which this build \
             cannot restore; run the raftkv release that wrote it",
            settings.data_dir.display(),
            s.index,
            s.term
        );
        log::error!(target: "raftkv::storage", "{e}");
        eprintln!("raftkv: error: {e}");
        return ExitCode::from(1);
    }
    log::info!(
        target: "raftkv::consensus",
        "node {} listening on {} with peers {:?}, data in {}",
        settings.id,
        settings.listen,
        settings.peers,
        settings.data_dir.display()
    );
    let metrics = Arc::new(Metrics::new(settings.id, settings.peers.keys().copied()));
    let result = actix_web::rt::System::new().block_on(async move {
        let node = actors::spawn_node(&settings, recovered, writer, metrics.clone());
        http::serve(settings, node, metrics).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv: error: {e}");
            ExitCode::from(1)
        }
    }
}
