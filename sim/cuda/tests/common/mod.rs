//! Helpers shared by this crate's loader-level tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

pub use testkit::SimMachine;

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `testkit::compile_c` names its temporary output after the process id, so two tests of one binary
/// compiling the same probe at once would collide: compile one at a time.
fn compile(name: &str, flags: &[&str]) -> PathBuf {
    static COMPILING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    testkit::compile_c(crate_dir(), name, flags)
}

/// A probe linked against the simulated driver like a program built with `-lcuda`.
pub fn linked_probe(name: &str) -> PathBuf {
    let sim = testkit::sim_dir();
    compile(name, &[&format!("-L{}", sim.display()), "-l:libcuda.so.1"])
}

/// A probe that loads the driver itself (dlopen).
pub fn dlopen_probe(name: &str) -> PathBuf {
    compile(name, &[])
}

/// A probe built with extra flags.
pub fn probe_with(name: &str, flags: &[&str]) -> PathBuf {
    compile(name, flags)
}

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Run to completion; require success and a closing `ok N checks` line. Returns stdout.
pub fn run_probe(cmd: &mut Command) -> String {
    let out = testkit::run_ok(cmd, DEADLINE);
    assert!(
        out.lines().any(|l| l.starts_with("ok ")),
        "no `ok` line:\n{out}"
    );
    out
}

/// The value of `key=` on the first line starting with `prefix`.
pub fn field<'a>(out: &'a str, prefix: &str, key: &str) -> &'a str {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"));
    let pat = format!("{key}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + pat.len();
    line[start..].split_whitespace().next().unwrap_or("")
}

pub fn field_u64(out: &str, prefix: &str, key: &str) -> u64 {
    let v = field(out, prefix, key);
    v.parse()
        .unwrap_or_else(|_| panic!("{key}={v:?} is not a number"))
}
