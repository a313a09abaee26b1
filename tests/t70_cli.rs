//! `raftkvctl` against a running cluster: commands, output formats, exit
//! codes, failover to the next endpoint, and the interactive prompt.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const CTL: &str = env!("CARGO_BIN_EXE_raftkvctl");

fn endpoints(c: &Cluster) -> String {
    c.ids().iter().map(|&id| c.addr(id)).collect::<Vec<_>>().join(",")
}

thread_local! {
    /// The environment raftkvctl needs for this test's cluster (TLS, token).
    static CTL_ENV: std::cell::RefCell<Vec<(String, Option<std::ffi::OsString>)>> = Default::default();
}

/// Starts a cluster and remembers what raftkvctl needs to reach it.
fn cluster(n: u64) -> Cluster {
    let c = Cluster::start(n);
    let mut probe = Command::new(CTL);
    c.ctl_env(&mut probe);
    let env = probe.get_envs().map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_owned()))).collect();
    CTL_ENV.with(|e| *e.borrow_mut() = env);
    c
}

/// A raftkvctl command with this test's environment.
fn ctl_cmd() -> Command {
    let mut cmd = Command::new(CTL);
    CTL_ENV.with(|e| {
        for (k, v) in e.borrow().iter() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
    });
    cmd
}

fn ctl(eps: &str, args: &[&str]) -> Output {
    ctl_cmd().arg("--endpoints").arg(eps).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn commands_outputs_and_exit_codes() {
    let c = cluster(3);
    c.wait_leader(Duration::from_secs(10));
    let eps = endpoints(&c);

    let put = ctl(&eps, &["put", "name", "Alice"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&put).starts_with("OK (revision "));

    let get = ctl(&eps, &["get", "name"]);
    assert_eq!(get.status.code(), Some(0));
    assert!(stdout(&get).contains("name  Alice"), "{}", stdout(&get));
    let json_get = ctl(&eps, &["-o", "json", "get", "name"]);
    let v: serde_json::Value = serde_json::from_slice(&json_get.stdout).unwrap();
    assert_eq!(v["value"], "Alice");

    let failed_cas = ctl(&eps, &["cas", "name", "Bob", "--if-value", "Carol"]);
    assert_eq!(failed_cas.status.code(), Some(4), "precondition failed");
    assert!(stderr(&failed_cas).contains("Alice"), "{}", stderr(&failed_cas));
    assert!(ctl(&eps, &["cas", "name", "Bob", "--if-value", "Alice"]).status.success());
    let rev = v["revision"].as_u64().unwrap().to_string();
    assert_eq!(ctl(&eps, &["cas", "name", "X", "--if-revision", &rev]).status.code(), Some(4));

    assert!(ctl(&eps, &["put", "app/one", "1"]).status.success());
    assert!(ctl(&eps, &["put", "app/two words", "2"]).status.success());
    let list = ctl(&eps, &["list", "--prefix", "app/"]);
    let out = stdout(&list);
    assert!(out.contains("app/one") && out.contains("app/two words") && !out.contains("name"), "{out}");

    let missing = ctl(&eps, &["get", "nope"]);
    assert_eq!(missing.status.code(), Some(3), "not found");
    assert!(stderr(&missing).contains("not found"));
    let del = ctl(&eps, &["delete", "name"]);
    assert!(stdout(&del).starts_with("deleted"));
    assert_eq!(ctl(&eps, &["get", "name"]).status.code(), Some(3));

    assert_eq!(ctl(&eps, &["cas", "k", "v"]).status.code(), Some(2), "usage error: no condition");
    assert_eq!(ctl(&eps, &["get", "k", "--consistency", "eventual"]).status.code(), Some(7), "rejected by the server");

    let status = ctl(&eps, &["status"]);
    let out = stdout(&status);
    assert!(out.lines().next().unwrap().starts_with("NODE"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("leader ") || l.contains("follower")).count(), 3, "{out}");

    let log = ctl(&eps, &["log", "set", "info,raftkv::election=debug"]);
    assert!(log.status.success(), "{}", stderr(&log));
    for id in c.ids() {
        assert_eq!(c.client.get(&c.addr(id), "/admin/log").unwrap().json()["filter"], "info,raftkv::election=debug");
    }
    assert_eq!(ctl(&eps, &["log", "set", "raftkv=loud"]).status.code(), Some(7));
}

#[test]
fn a_reader_that_goes_away_ends_it_quietly() {
    let c = cluster(3);
    c.wait_leader(Duration::from_secs(10));
    // `raftkvctl status | head -0`: the pipe's reader is gone before the
    // output is written.
    let mut child = ctl_cmd()
        .arg("--endpoints")
        .arg(endpoints(&c))
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn fails_over_to_the_next_endpoint_and_reports_no_leader() {
    let mut c = cluster(3);
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = c.followers(leader)[0];
    c.kill(victim);
    // The dead node first: the CLI must move on to the next one.
    let eps = format!("{},{}", c.addr(victim), c.addr(leader));
    let put = ctl(&eps, &["put", "k", "v"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&ctl(&eps, &["get", "k"])).contains("k    v"));
    let status = stdout(&ctl(&eps, &["status"]));
    assert!(status.contains("unreachable"), "{status}");

    // Nothing reachable at all: exit code 5.
    let none = ctl(&c.addr(victim), &["get", "k"]);
    assert_eq!(none.status.code(), Some(5));
    assert!(stderr(&none).contains("no endpoint"), "{}", stderr(&none));
}

#[test]
fn interactive_prompt_reads_commands_from_stdin() {
    let c = cluster(3);
    c.wait_leader(Duration::from_secs(10));
    let mut child = ctl_cmd()
        .arg("--endpoints")
        .arg(endpoints(&c))
        .env("HOME", &c.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"put name Alice\nget name\nput 'my key' \"two words\"\nlist\nget missing\nfrobnicate\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(so.contains("OK (revision"), "{so}");
    assert!(so.contains("name  Alice"), "{so}");
    assert!(so.contains("my key") && so.contains("two words"), "{so}");
    assert!(se.contains("not found"), "{se}");
    assert!(se.contains("unrecognized subcommand 'frobnicate'"), "{se}");
    assert_eq!(out.status.code(), Some(3), "the last failing command sets the exit code");
    assert_eq!(c.get(1, "my%20key").json()["value"], "two words");
}

/// Through a real pseudo-terminal (`script` from util-linux), with tab completion.
#[test]
fn interactive_prompt_through_a_terminal_completes_commands() {
    let c = cluster(3);
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.put(1, "completion-key", "done").status, 200);
    let cmd = format!("{CTL} --endpoints {}", endpoints(&c));
    let mut script = Command::new("script");
    for (k, v) in ctl_cmd().get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let mut child = script
        .args(["-qefc", &cmd, "/dev/null"])
        .env("HOME", &c.dir)
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    // "ge<TAB> complet<TAB>" completes to "get completion-key".
    // Input queues in the terminal; completion runs before the next key is read.
    stdin.write_all(b"ge\t complet\t\rexit\r").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let so = stdout(&out);
    assert!(so.contains("raftkv> "), "prompt shown: {so}");
    assert!(so.contains("completion-key  done"), "completed and ran the command: {so}");
}
