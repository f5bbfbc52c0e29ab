//! Helpers shared by the loader-level and multi-process tests: building the C probes, driving the
//! interactive `cushell` probe, parsing its replies, and reading the region (see `region.rs`).
#![allow(dead_code)]

pub mod region;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use region::{DumpOnFailure, Region};
pub use testkit::{run, SimMachine};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// How long any single probe run may take before the test calls it a hang.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn probes_dir() -> PathBuf {
    crate_dir().join("tests/probes")
}

/// `testkit::compile_c` keyed on the `.c` file's age only, and its temporary name is per process: so
/// serialise compiles within this test binary and rebuild when a shared header is newer.
fn compile(name: &str, flags: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exe = testkit::compile_c(&crate_dir(), name, flags);
    let newest_header = ["cuda_min.h", "probe_common.h"]
        .iter()
        .filter_map(|h| {
            std::fs::metadata(probes_dir().join(h))
                .ok()?
                .modified()
                .ok()
        })
        .max();
    let built = std::fs::metadata(&exe).ok().and_then(|m| m.modified().ok());
    if newest_header > built {
        let _ = std::fs::remove_file(&exe);
        return testkit::compile_c(&crate_dir(), name, flags);
    }
    exe
}

/// A probe built with extra compiler/linker flags.
pub fn probe_with(name: &str, flags: &[&str]) -> PathBuf {
    compile(name, flags)
}

/// A probe that reaches the driver by dlopen/dlsym only.
pub fn probe(name: &str) -> PathBuf {
    compile(name, &[])
}

/// A probe linked against the simulated `libcuda.so.1` (and `libnvidia-ml.so.1`), like a program built
/// with `-lcuda`.
pub fn linked_probe(name: &str) -> PathBuf {
    let sim = testkit::sim_dir();
    let l = format!("-L{}", sim.display());
    // --no-as-needed: a probe whose references are all weak must still get DT_NEEDED entries.
    compile(
        name,
        &[
            &l,
            "-Wl,--no-as-needed",
            "-l:libcuda.so.1",
            "-l:libnvidia-ml.so.1",
        ],
    )
}

/// A shared library from `tests/probes/<name>.c` (`-shared -fPIC` plus `extra`).
pub fn shared_probe(name: &str, extra: &[&str]) -> PathBuf {
    let mut flags = vec!["-shared", "-fPIC"];
    flags.extend_from_slice(extra);
    compile(name, &flags)
}

/// The names `libvgpu.so` exports (`nm -D --defined-only`): the ground truth for "is this hooked".
pub fn vgpu_exports() -> HashSet<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(testkit::libvgpu())
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .collect()
}

/// `key=value` tokens of one reply line.
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One reply of `cushell`: `= code=<n> key=value ...`.
#[derive(Clone, Debug)]
pub struct Reply {
    pub line: String,
    pub kv: BTreeMap<String, String>,
}

impl Reply {
    pub fn code(&self) -> i64 {
        self.int("code")
    }
    pub fn int(&self, key: &str) -> i64 {
        self.kv
            .get(key)
            .unwrap_or_else(|| panic!("reply `{}` has no {key}", self.line))
            .parse()
            .unwrap_or_else(|e| panic!("reply `{}`: {key}: {e}", self.line))
    }
    pub fn u64(&self, key: &str) -> u64 {
        self.kv
            .get(key)
            .unwrap_or_else(|| panic!("reply `{}` has no {key}", self.line))
            .parse()
            .unwrap_or_else(|e| panic!("reply `{}`: {key}: {e}", self.line))
    }
    pub fn str(&self, key: &str) -> &str {
        self.kv
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("reply `{}` has no {key}", self.line))
    }
}

/// The `cushell` probe running as a child: send a command, read its one reply line. Killed on drop; a
/// command that does not answer within its deadline fails the test (with stderr and the region).
pub struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::sync::Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    region: Option<PathBuf>,
    pub deadline: Duration,
    pub label: String,
}

impl Shell {
    /// `cushell` with libvgpu preloaded on `machine`, plus `env`.
    pub fn preloaded(machine: &SimMachine, env: &[(&str, &str)]) -> Shell {
        let mut cmd = machine.preloaded(probe("cushell"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Shell::spawn(cmd, Some(machine.region_file()), "preloaded")
    }

    /// `cushell` against the simulated driver alone (the driver's own answers, for comparison).
    pub fn bare(machine: &SimMachine, env: &[(&str, &str)]) -> Shell {
        let mut cmd = machine.command(probe("cushell"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Shell::spawn(cmd, None, "bare")
    }

    pub fn spawn(mut cmd: Command, region: Option<PathBuf>, label: &str) -> Shell {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_buf = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = err_buf.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Shell {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            stderr: err_buf,
            stderr_reader: Some(stderr_reader),
            region,
            deadline: Duration::from_secs(30),
            label: label.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn context(&self) -> String {
        let region = self
            .region
            .as_ref()
            .map(|p| region::dump_file(p))
            .unwrap_or_default();
        format!(
            "[{} pid {}] stderr:\n{}\n{}",
            self.label,
            self.child.id(),
            self.stderr(),
            region
        )
    }

    /// Send one command without waiting for its reply.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if let Err(e) = writeln!(stdin, "{command}").and_then(|_| stdin.flush()) {
            panic!("send `{command}`: {e}\n{}", self.context());
        }
    }

    /// The next line the child prints (a reply or a line of an exec'd program).
    pub fn next_line(&mut self, what: &str) -> String {
        let started = Instant::now();
        match self.lines.recv_timeout(self.deadline) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!(
                    "`{what}`: no answer within {:?}: killed.\n{}",
                    started.elapsed(),
                    self.context()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "`{what}`: the probe exited ({status:?}) without answering.\n{}",
                    self.context()
                )
            }
        }
    }

    /// Send a command and return its reply.
    pub fn cmd(&mut self, command: &str) -> Reply {
        self.send(command);
        loop {
            let line = self.next_line(command);
            if let Some(rest) = line.strip_prefix("= ") {
                return Reply {
                    line: rest.to_string(),
                    kv: parse_kv(rest),
                };
            }
            if line.starts_with("FAIL") {
                panic!("`{command}`: {line}\n{}", self.context());
            }
        }
    }

    /// A command that must return `code=0`.
    pub fn ok(&mut self, command: &str) -> Reply {
        let r = self.cmd(command);
        if r.code() != 0 {
            panic!(
                "`{command}` answered `{}`, want code=0\n{}",
                r.line,
                self.context()
            );
        }
        r
    }

    /// A command that must return exactly `code`.
    pub fn expect(&mut self, command: &str, code: i64) -> Reply {
        let r = self.cmd(command);
        if r.code() != code {
            panic!(
                "`{command}` answered `{}`, want code={code}\n{}",
                r.line,
                self.context()
            );
        }
        r
    }

    /// cuInit + primary context of `ordinal`.
    pub fn start(&mut self, ordinal: u32) {
        self.ok("init");
        self.ok(&format!("ctx {ordinal}"));
    }

    /// `cuMemGetInfo_v2` of the current context: (free, total).
    pub fn info(&mut self) -> (u64, u64) {
        let r = self.ok("info");
        (r.u64("free"), r.u64("total"))
    }

    /// Ask the shell to exit normally and wait for it.
    pub fn exit(self) -> std::process::ExitStatus {
        self.exit_with_stderr().0
    }

    /// Exit normally; returns the status and everything the process wrote to stderr (complete: read
    /// after the process closed it).
    pub fn exit_with_stderr(mut self) -> (std::process::ExitStatus, String) {
        let status = self.wait_exit();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.send("exit");
        self.stdin.take();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > self.deadline {
                let _ = self.child.kill();
                panic!(
                    "shell did not exit within {:?}\n{}",
                    self.deadline,
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL the shell and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Close stdin and wait for the child, returning its status and everything it printed after.
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.stdin.take();
        let started = Instant::now();
        let mut rest = Vec::new();
        loop {
            while let Ok(line) = self.lines.try_recv() {
                rest.push(line);
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(20));
                while let Ok(line) = self.lines.try_recv() {
                    rest.push(line);
                }
                return (status, rest);
            }
            if started.elapsed() > self.deadline {
                let _ = self.child.kill();
                panic!(
                    "shell did not finish within {:?}\n{}",
                    self.deadline,
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} shell stderr ---\n{}", self.label, self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read the region, failing the test with a clear message when it cannot be parsed.
pub fn region(machine: &SimMachine) -> Region {
    Region::read(&machine.region_file()).unwrap_or_else(|e| panic!("{e}"))
}

/// Read the region and check the invariants that hold at every instant.
pub fn checked_region(machine: &SimMachine) -> Region {
    let r = region(machine);
    if let Err(e) = r.check_invariants() {
        panic!("region invariant broken: {e}\n{}", r.dump());
    }
    r
}

/// Run a probe to completion with a deadline; returns (exit ok, stdout, stderr).
pub fn run_probe(cmd: &mut Command) -> (bool, String, String) {
    let out = run(cmd, DEADLINE);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a probe that must exit 0; returns stdout. On failure shows both streams and the region.
pub fn run_probe_ok(cmd: &mut Command, region_file: Option<&Path>) -> String {
    let out = run(cmd, DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let region = region_file.map(region::dump_file).unwrap_or_default();
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{region}",
            out.status
        );
    }
    stdout
}

/// Lines of `stdout` that start with `prefix ` (prefix removed).
pub fn lines_with<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix).and_then(|r| r.strip_prefix(' ')))
        .collect()
}

/// The probe's `scenario ...` line as key/values.
pub fn scenario(stdout: &str) -> BTreeMap<String, String> {
    let line = lines_with(stdout, "scenario")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no scenario line in:\n{stdout}"));
    parse_kv(line)
}

/// `CUDA_DEVICE_MEMORY_LIMIT` as the tests write it.
pub fn mib(n: u64) -> String {
    format!("{n}m")
}
