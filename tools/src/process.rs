//! Child processes for the benchmark drivers (`raftkv-bench`, `raftkv-soak`).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr in the file `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let f = fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `kill -TERM`, without waiting for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
    }

    /// Waits for the process to exit (after `terminate`).
    pub fn wait(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 50 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
