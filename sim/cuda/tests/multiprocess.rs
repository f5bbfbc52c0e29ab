//! Several processes on one simulated machine: memory capacity is shared, a killed process's memory
//! comes back, kernels of different processes take turns on a device; and fault injection.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A child that is killed when the test ends, whatever happens.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `cu_tool hold`, wait for its `alloc=` line, return it running.
fn hold(cmd: &mut Command) -> (Holder, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let holder = Holder(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DEADLINE).expect("holder printed nothing");
    (holder, line)
}

fn small_machine(label: &str) -> SimMachine {
    SimMachine::new(label).with_devices("name=Sim-Small,mem=1Gi,sms=16")
}

fn tool(m: &SimMachine) -> Command {
    let mut cmd = m.command(linked_probe("cu_tool"));
    cmd.env("SIMGPU_CONTEXT_BYTES", "0");
    cmd
}

#[test]
fn processes_share_capacity_and_a_killed_process_gives_its_memory_back() {
    let m = small_machine("cuda-mp-capacity");
    // One process alone cannot take more than the device has.
    let out = testkit::run_ok(
        tool(&m).args(["alloc", "0", &(1025 * MIB).to_string()]),
        DEADLINE,
    );
    assert_eq!(
        field(&out, "alloc", "alloc"),
        "2",
        "CUDA_ERROR_OUT_OF_MEMORY: {out}"
    );
    assert_eq!(
        field_u64(&out, "alloc", "free"),
        1024 * MIB,
        "a refused allocation charges nothing"
    );
    let (mut first, line) = hold(tool(&m).args(["hold", "0", &(700 * MIB).to_string()]));
    assert!(line.starts_with("alloc=0 "), "first process: {line}");
    assert_eq!(field_u64(&line, "alloc", "free"), 324 * MIB);

    // The second process sees the first one's memory as used and cannot take 700 MiB more.
    let out = testkit::run_ok(
        tool(&m).args(["alloc", "0", &(700 * MIB).to_string()]),
        DEADLINE,
    );
    assert_eq!(
        field(&out, "alloc", "alloc"),
        "2",
        "CUDA_ERROR_OUT_OF_MEMORY: {out}"
    );
    let out = testkit::run_ok(
        tool(&m).args(["alloc", "0", &(300 * MIB).to_string()]),
        DEADLINE,
    );
    assert_eq!(field(&out, "alloc", "alloc"), "0", "{out}");

    // SIGKILL: no chance to free anything; the machine reclaims the dead process's memory.
    first.0.kill().expect("kill");
    first.0.wait().expect("wait");
    let out = testkit::run_ok(
        tool(&m).args(["alloc", "0", &(700 * MIB).to_string()]),
        DEADLINE,
    );
    assert_eq!(field(&out, "alloc", "alloc"), "0", "after the kill: {out}");
}

#[test]
fn kernels_of_two_processes_take_turns_on_one_device() {
    let m = small_machine("cuda-mp-timeline");
    let started = Instant::now();
    let spawn = || {
        tool(&m)
            .args(["kernels", "10", "10000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        a.wait_with_output().expect("wait"),
        b.wait_with_output().expect("wait"),
    );
    let wall = started.elapsed();
    assert!(a.status.success() && b.status.success());
    // 2 processes x 10 kernels x 10 ms on one device: at least 200 ms, whatever the overlap.
    assert!(
        wall >= Duration::from_millis(200),
        "ran concurrently: {wall:?}"
    );
    for out in [&a.stdout, &b.stdout] {
        let out = String::from_utf8_lossy(out);
        let ms: f64 = field(&out, "elapsed", "elapsed_ms").parse().unwrap();
        assert!(ms >= 100.0, "{out}");
    }
}

#[test]
fn fail_alloc_at_fails_exactly_the_nth_allocation() {
    let m = small_machine("cuda-fault-alloc");
    let out = testkit::run_ok(
        tool(&m)
            .args(["allocs", "5", "1048576"])
            .env("SIMGPU_FAIL_ALLOC_AT", "3"),
        DEADLINE,
    );
    let codes: Vec<&str> = (1..=5)
        .map(|i| field(&out, &format!("alloc{i}="), &format!("alloc{i}")))
        .collect();
    assert_eq!(codes, ["0", "0", "2", "0", "0"], "{out}");
}

#[test]
fn a_lost_device_is_unavailable_and_the_others_work() {
    let m = SimMachine::new("cuda-fault-lost");
    let out = testkit::run_ok(
        tool(&m)
            .args(["retain", "1"])
            .env("SIMGPU_DEVICE_LOST", "1"),
        DEADLINE,
    );
    assert_eq!(
        field(&out, "retain", "retain"),
        "46",
        "CUDA_ERROR_DEVICE_UNAVAILABLE: {out}"
    );
    let out = testkit::run_ok(
        tool(&m)
            .args(["retain", "0"])
            .env("SIMGPU_DEVICE_LOST", "1"),
        DEADLINE,
    );
    assert_eq!(field(&out, "retain", "retain"), "0", "{out}");
}

#[test]
fn slow_makes_one_entry_point_wait() {
    let m = SimMachine::new("cuda-fault-slow");
    let out = testkit::run_ok(
        tool(&m)
            .args(["timed_info"])
            .env("SIMGPU_SLOW", "cuMemGetInfo_v2:30000"),
        DEADLINE,
    );
    let ms: f64 = field(&out, "elapsed", "elapsed_ms").parse().unwrap();
    assert!(ms >= 30.0, "{out}");
}
