//! Per-actor logging that can be switched at run time.
//!
//! Every actor logs under its own target (`raftkv::election`,
//! `raftkv::consensus`, `raftkv::replication::<peer>`, `raftkv::storage`,
//! `raftkv::state_machine`, `raftkv::http`). The filter uses `RUST_LOG`
//! syntax (`info,raftkv::election=trace,raftkv::replication::3=debug`) and
//! can be replaced while the node runs (`PUT /admin/log`). Lines are
//! formatted by `env_logger`: time, node id, level, target, message.

use std::io::Write;
use std::sync::{OnceLock, RwLock};

use log::{LevelFilter, Log, Metadata, Record};

struct DynLogger {
    filter: RwLock<(String, env_filter::Filter)>,
    out: env_logger::Logger,
}

static LOGGER: OnceLock<DynLogger> = OnceLock::new();

/// The log targets of the actors, for documentation and `GET /admin/log`.
pub const TARGETS: &[&str] = &[
    "raftkv::election",
    "raftkv::consensus",
    "raftkv::replication",
    "raftkv::storage",
    "raftkv::snapshot",
    "raftkv::state_machine",
    "raftkv::http",
];

fn parse(spec: &str) -> Result<env_filter::Filter, String> {
    let mut b = env_filter::Builder::new();
    b.try_parse(spec).map_err(|e| format!("invalid log filter '{spec}': {e}"))?;
    Ok(b.build())
}

impl Log for DynLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        self.filter.read().expect("log filter lock").1.enabled(m)
    }

    fn log(&self, r: &Record) {
        if self.filter.read().expect("log filter lock").1.matches(r) {
            self.out.log(r);
        }
    }

    fn flush(&self) {
        self.out.flush();
    }
}

/// Installs the logger for node `node_id` with filter `spec`.
pub fn init(node_id: u64, spec: &str) -> Result<(), String> {
    let filter = parse(spec)?;
    let out = env_logger::Builder::new()
        .filter_level(LevelFilter::Trace)
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} node{} {:<5} {}: {}",
                buf.timestamp_micros(),
                node_id,
                record.level(),
                record.target(),
                record.args()
            )
        })
        .build();
    let max = filter.filter();
    let logger = LOGGER.get_or_init(|| DynLogger { filter: RwLock::new((spec.to_string(), filter)), out });
    log::set_logger(logger).map_err(|_| "logger already installed".to_string())?;
    log::set_max_level(max);
    Ok(())
}

/// Replaces the filter; returns the new one. Invalid specs change nothing.
pub fn set_filter(spec: &str) -> Result<String, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("log filter must not be empty (use \"off\" to silence)".into());
    }
    let filter = parse(spec)?;
    let logger = LOGGER.get().ok_or("logging is not initialised")?;
    let max = filter.filter();
    *logger.filter.write().expect("log filter lock") = (spec.to_string(), filter);
    log::set_max_level(max);
    Ok(spec.to_string())
}

/// The filter now in force.
pub fn current_filter() -> String {
    LOGGER.get().map(|l| l.filter.read().expect("log filter lock").0.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn invalid_filters_are_rejected() {
        assert!(super::parse("info,raftkv::election=trace").is_ok());
        assert!(super::parse("raftkv::election=loud").is_err());
    }
}
