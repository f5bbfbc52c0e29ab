//! Helpers shared by this crate's loader-level tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use testkit::SimMachine;

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A probe linked against the simulated driver like a program built with `-lcuda`.
pub fn linked_probe(name: &str) -> PathBuf {
    let sim = testkit::sim_dir();
    testkit::compile_c(crate_dir(), name, &[&format!("-L{}", sim.display()), "-l:libcuda.so.1"])
}

/// A probe that loads the driver itself (dlopen).
pub fn dlopen_probe(name: &str) -> PathBuf {
    testkit::compile_c(crate_dir(), name, &[])
}

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Run to completion; require success and a closing `ok N checks` line. Returns stdout.
pub fn run_probe(cmd: &mut Command) -> String {
    let out = testkit::run_ok(cmd, DEADLINE);
    assert!(out.lines().any(|l| l.starts_with("ok ")), "no `ok` line:\n{out}");
    out
}

/// The value of `key=` on the first line starting with `prefix`.
pub fn field<'a>(out: &'a str, prefix: &str, key: &str) -> &'a str {
    let line = out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"));
    let pat = format!("{key}=");
    let start = line.find(&pat).unwrap_or_else(|| panic!("no {key}= in {line:?}")) + pat.len();
    line[start..].split_whitespace().next().unwrap_or("")
}

pub fn field_u64(out: &str, prefix: &str, key: &str) -> u64 {
    let v = field(out, prefix, key);
    v.parse().unwrap_or_else(|_| panic!("{key}={v:?} is not a number"))
}
