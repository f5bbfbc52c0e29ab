//! What every loader-level test needs: the built libraries, a fresh simulated machine, C probes compiled
//! on the fly, and commands that cannot hang the suite.
//!
//! The libraries are built by `scripts/build-artifacts.sh` (the README's test command runs it first); a
//! test that finds them missing fails and prints that command. It never skips.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `<root>/testkit`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit has a parent")
        .to_path_buf()
}

/// `target/release/libvgpu.so`.
pub fn libvgpu() -> PathBuf {
    require(root().join("target/release/libvgpu.so"))
}

/// The folder holding the simulated `libcuda.so.1`, `libcuda.so`, `libnvidia-ml.so.1`, `libnvidia-ml.so`.
pub fn sim_dir() -> PathBuf {
    let dir = root().join("target/sim");
    require(dir.join("libcuda.so.1"));
    require(dir.join("libnvidia-ml.so.1"));
    dir
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `scripts/build-artifacts.sh` (the README's test command does) and try again",
        path.display()
    );
    path
}

/// A fresh scratch folder under `target/test-scratch/`, unique to this test run and call.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = root()
        .join("target/test-scratch")
        .join(format!("{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// One simulated machine: its own shared state file, so tests never see each other's GPUs.
#[derive(Clone, Debug)]
pub struct SimMachine {
    pub dir: PathBuf,
    pub state_file: PathBuf,
    /// `SIMGPU_DEVICES`; `None` = the simulator's default (two GPUs).
    pub devices: Option<String>,
}

impl SimMachine {
    pub fn new(label: &str) -> Self {
        let dir = scratch_dir(label);
        let state_file = dir.join("machine.state");
        SimMachine {
            dir,
            state_file,
            devices: None,
        }
    }

    pub fn with_devices(mut self, spec: &str) -> Self {
        self.devices = Some(spec.to_string());
        self
    }

    /// A command that runs against this machine's simulated driver, without libvgpu.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(
            "LD_LIBRARY_PATH",
            prepend_path(&sim_dir(), std::env::var_os("LD_LIBRARY_PATH")),
        );
        cmd.env("SIMGPU_STATE", &self.state_file);
        match &self.devices {
            Some(spec) => cmd.env("SIMGPU_DEVICES", spec),
            None => cmd.env_remove("SIMGPU_DEVICES"),
        };
        // A test's environment must not leak limits into the programs it runs.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CUDA_DEVICE_")
                || key == "LD_PRELOAD"
                || key == "CUDA_VISIBLE_DEVICES"
            {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// The same command with `libvgpu.so` preloaded and its region file in this machine's folder.
    pub fn preloaded(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.command(program);
        cmd.env("LD_PRELOAD", libvgpu());
        cmd.env(
            "CUDA_DEVICE_MEMORY_SHARED_CACHE",
            self.dir.join("region.cache"),
        );
        cmd
    }

    pub fn region_file(&self) -> PathBuf {
        self.dir.join("region.cache")
    }
}

fn prepend_path(dir: &Path, old: Option<OsString>) -> OsString {
    let mut out = OsString::from(dir);
    if let Some(old) = old.filter(|o| !o.is_empty()) {
        out.push(":");
        out.push(old);
    }
    out
}

/// Compile a C probe from `tests/probes/<name>.c` (relative to `crate_dir`) into `target/probes/`,
/// with `extra` flags (e.g. `["-ldl"]`, or `["-L<sim>", "-lcuda"]`). Recompiled when the source is newer.
pub fn compile_c(crate_dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let src = crate_dir.join("tests/probes").join(format!("{name}.c"));
    let tag: String = extra
        .iter()
        .map(|f| f.replace(['/', ' ', '.', '='], "_"))
        .collect();
    let out_dir = root().join("target/probes");
    std::fs::create_dir_all(&out_dir).expect("create target/probes");
    let exe = out_dir.join(format!(
        "{name}{}{}",
        if tag.is_empty() { "" } else { "-" },
        short_hash(&tag)
    ));
    if let Err(e) = std::fs::metadata(&src) {
        panic!("probe source {}: {e}", src.display());
    }
    // Rebuild when the source or any header beside it is newer than the program.
    let newest_input = std::fs::read_dir(src.parent().expect("probes dir"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path() == src || e.path().extension().is_some_and(|x| x == "h"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    let stale = match std::fs::metadata(&exe).and_then(|m| m.modified()) {
        Ok(built) => newest_input.is_some_and(|n| n > built),
        Err(_) => true,
    };
    if stale {
        // Unique per process and call: two tests of one binary may build the same probe at once.
        static BUILD: AtomicU64 = AtomicU64::new(0);
        let n = BUILD.fetch_add(1, Ordering::Relaxed);
        let tmp = exe.with_extension(format!("tmp{}-{n}", std::process::id()));
        let out = Command::new("cc")
            .args(["-O1", "-g", "-Wall", "-std=gnu11", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .arg(format!("-I{}", crate_dir.join("tests/probes").display()))
            .args(extra)
            .args(["-ldl"])
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "cc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &exe).expect("install probe");
    }
    exe
}

fn short_hash(s: &str) -> String {
    // FNV-1a: a stable name per flag set, no dependency needed.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    if s.is_empty() {
        String::new()
    } else {
        format!("{h:012x}")[..12].to_string()
    }
}

/// Run a command to completion, killing it (and failing the test) after `deadline`. A hang is a failure.
pub fn run(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if started.elapsed() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "{cmd:?} still running after {deadline:?}: killed.\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Run and require exit status 0; returns stdout. Prints both streams on failure.
pub fn run_ok(cmd: &mut Command, deadline: Duration) -> String {
    let out = run(cmd, deadline);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The project's Python (`.venv`, made by `scripts/setup-python.sh`), with pynvml and cuda-bindings.
pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `scripts/setup-python.sh` (the README's test command does)",
        py.display()
    );
    py
}
