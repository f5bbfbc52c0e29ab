//! Shared by the loader-level tests: the probes' record format, and stand-in GPU processes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use testkit::SimMachine;

pub const GI: u64 = 1 << 30;
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One tab-separated record: `kind<TAB>[id<TAB>]key=value...`.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: String,
    pub id: Option<String>,
    pub fields: HashMap<String, String>,
}

impl Record {
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} missing in {self:?}"))
    }
    pub fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} not a number in {self:?}"))
    }
}

pub fn parse(output: &str) -> Vec<Record> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split('\t');
            let kind = parts.next().unwrap_or_default().to_string();
            let mut id = None;
            let mut fields = HashMap::new();
            for part in parts {
                match part.split_once('=') {
                    Some((k, v)) => {
                        fields.insert(k.to_string(), v.to_string());
                    }
                    None => id = Some(part.to_string()),
                }
            }
            Record { kind, id, fields }
        })
        .collect()
}

pub fn records<'a>(all: &'a [Record], kind: &str, id: &str) -> Vec<&'a Record> {
    all.iter()
        .filter(|r| r.kind == kind && r.id.as_deref() == Some(id))
        .collect()
}

pub fn one<'a>(all: &'a [Record], kind: &str, id: &str) -> &'a Record {
    let found = records(all, kind, id);
    assert_eq!(found.len(), 1, "expected one {kind} {id} in {all:#?}");
    found[0]
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The C probe, compiled from tests/probes/nvml_probe.c.
pub fn c_probe() -> PathBuf {
    testkit::compile_c(&crate_dir(), "nvml_probe", &[])
}

/// Run the C probe in `mode` against `machine`; returns stdout (the command must succeed).
pub fn query(machine: &SimMachine, mode: &str) -> Vec<Record> {
    parse(&testkit::run_ok(
        machine.command(c_probe()).arg(mode),
        DEADLINE,
    ))
}

/// The nvml-wrapper example, built by `cargo test` next to the test binaries.
pub fn nvml_wrapper_probe() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let probe = profile_dir.join("examples/nvml_wrapper_probe");
    assert!(
        probe.exists(),
        "{} missing: `cargo test -p simgpu-nvml` builds it",
        probe.display()
    );
    probe
}

/// A stand-in GPU process (`simgpu-hold`) that stays alive until dropped (stdin closed) or killed.
pub struct Holder {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub first_line: String,
}

impl Holder {
    pub fn start(machine: &SimMachine, args: &[&str]) -> Holder {
        Holder::start_cmd(
            machine
                .command(env!("CARGO_BIN_EXE_simgpu-hold"))
                .args(args),
        )
    }

    pub fn start_cmd(cmd: &mut Command) -> Holder {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn simgpu-hold");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let first_line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line.trim().to_string(),
            Err(_) => {
                let _ = child.kill();
                panic!("simgpu-hold printed nothing within {DEADLINE:?}");
            }
        };
        let stdin = child.stdin.take();
        Holder {
            child,
            stdin,
            first_line,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the process to end (it does once it has failed, or once stdin is closed).
    pub fn finish(mut self) -> std::process::ExitStatus {
        self.stdin = None;
        wait_with_deadline(&mut self.child)
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        wait_with_deadline(&mut self.child);
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("simgpu-hold did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
