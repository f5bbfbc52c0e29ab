//! Third-party clients that load the driver their own way: cudarc and nvml-wrapper (Rust, libloading),
//! pynvml (ctypes) and cuda-bindings (cuGetProcAddress). Each runs under LD_PRELOAD against the
//! simulated driver and must see the limit.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;

/// Above the 304 MiB a simulated context costs.
const LIMIT: u64 = GIB;

fn client(name: &str) -> PathBuf {
    let path = testkit::root().join("target/release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/build-artifacts.sh` (it builds the vgpu-test-clients bins)",
        path.display()
    );
    path
}

fn python_script(name: &str) -> PathBuf {
    crate_dir().join("tests/python").join(name)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON `{l}`: {e}")))
        .collect()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// An OOM-loop client's report: exactly the chunks that fit, then CUDA_ERROR_OUT_OF_MEMORY, and every
/// byte back after freeing.
fn assert_oom_report(v: &Value, chunk: u64, label: &str) {
    assert_eq!(n(v, "total"), LIMIT, "{label}: total {v}");
    assert_eq!(
        n(v, "error_code"),
        2,
        "{label}: the refusal must be CUDA_ERROR_OUT_OF_MEMORY: {v}"
    );
    let free_before = n(v, "free_before");
    assert!(free_before <= LIMIT, "{label}: {v}");
    assert_eq!(
        n(v, "chunks"),
        free_before / chunk,
        "{label}: chunks that fit in {free_before} free bytes: {v}"
    );
    assert!(n(v, "chunks") >= 1, "{label}: not one chunk fit: {v}");
    assert_eq!(
        n(v, "free_after"),
        free_before,
        "{label}: freeing gave back a different amount: {v}"
    );
    if let Some(full) = v.get("free_full").and_then(Value::as_u64) {
        assert_eq!(full, free_before - n(v, "chunks") * chunk, "{label}: {v}");
    }
}

#[test]
fn cudarc_gets_exactly_the_chunks_that_fit() {
    let machine = SimMachine::new("client-cudarc");
    let _dump = DumpOnFailure(machine.region_file());
    for chunk in [8 * MIB, 10 * MIB] {
        let mut cmd = machine.preloaded(client("cudarc_oom"));
        cmd.env("CUDA_DEVICE_MEMORY_LIMIT", "1g")
            .arg(chunk.to_string());
        let out = run_probe_ok(&mut cmd, Some(&machine.region_file()));
        let v = json_lines(&out)
            .pop()
            .unwrap_or_else(|| panic!("no JSON from cudarc_oom:\n{out}"));
        assert_oom_report(&v, chunk, &format!("cudarc, chunk {chunk}"));
    }
    assert_eq!(checked_region(&machine).device_used(0), 0);
}

/// A process of the container that holds `bytes` on device 0 while a client looks.
fn holder(machine: &SimMachine, env: &[(&str, &str)], bytes: u64) -> (Shell, u64) {
    let mut sh = Shell::preloaded(machine, env);
    sh.start(0);
    sh.ok(&format!("alloc {bytes}"));
    let used = region(machine).device_used(0);
    assert!(used >= bytes);
    (sh, used)
}

const TWO_LIMITS: &[(&str, &str)] = &[
    ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
    ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
];

#[test]
fn nvml_wrapper_shows_the_limit_as_total_and_the_containers_usage() {
    let machine = SimMachine::new("client-nvml-wrapper");
    let _dump = DumpOnFailure(machine.region_file());
    let (_holder, used0) = holder(&machine, TWO_LIMITS, 24 * MIB);
    let mut cmd = machine.preloaded(client("nvml_meminfo"));
    cmd.envs(TWO_LIMITS.iter().copied());
    let out = run_probe_ok(&mut cmd, Some(&machine.region_file()));
    let devices = json_lines(&out);
    assert!(devices.len() >= 2, "{out}");
    let r = region(&machine);
    for (d, limit) in [(0usize, GIB), (1, 2 * GIB)] {
        let v = &devices[d];
        assert_eq!(n(v, "total"), limit, "device {d}: {v}");
        assert_eq!(
            n(v, "used"),
            r.device_used(d),
            "device {d}: used must be the region's usage: {v}\n{}",
            r.dump()
        );
        assert_eq!(
            n(v, "free"),
            limit.saturating_sub(n(v, "used") + n(v, "reserved")),
            "device {d}: {v}"
        );
    }
    assert_eq!(n(&devices[0], "used"), used0);
}

#[test]
fn pynvml_shows_the_limit_as_total() {
    let machine = SimMachine::new("client-pynvml");
    let _dump = DumpOnFailure(machine.region_file());
    let (_holder, used0) = holder(&machine, TWO_LIMITS, 24 * MIB);
    let mut cmd = machine.preloaded(testkit::python());
    cmd.envs(TWO_LIMITS.iter().copied())
        .arg(python_script("pynvml_meminfo.py"));
    let out = run_probe_ok(&mut cmd, Some(&machine.region_file()));
    let devices = json_lines(&out);
    assert!(devices.len() >= 2, "{out}");
    for (d, limit) in [(0usize, GIB), (1, 2 * GIB)] {
        let v = &devices[d];
        assert_eq!(
            n(v, "total"),
            limit,
            "nvmlDeviceGetMemoryInfo device {d}: {v}"
        );
        assert_eq!(
            n(v, "total2"),
            limit,
            "nvmlDeviceGetMemoryInfo_v2 device {d}: {v}"
        );
        assert_eq!(n(v, "free"), limit - n(v, "used"), "device {d}: {v}");
        assert_eq!(n(v, "used2"), n(v, "used"), "device {d}: {v}");
    }
    assert_eq!(n(&devices[0], "used"), used0, "{out}");
    let uuids: Vec<&str> = devices
        .iter()
        .map(|v| v["uuid"].as_str().unwrap())
        .collect();
    let r = region(&machine);
    assert_eq!(
        &r.uuids[..uuids.len()],
        &uuids[..],
        "region uuids follow NVML order\n{}",
        r.dump()
    );
}

#[test]
fn cuda_bindings_gets_out_of_memory_past_the_limit() {
    let machine = SimMachine::new("client-cuda-bindings");
    let _dump = DumpOnFailure(machine.region_file());
    let chunk = 8 * MIB;
    let mut cmd = machine.preloaded(testkit::python());
    cmd.env("CUDA_DEVICE_MEMORY_LIMIT", "1g")
        .arg(python_script("cuda_bindings_oom.py"))
        .arg(chunk.to_string());
    let out = run_probe_ok(&mut cmd, Some(&machine.region_file()));
    let v = json_lines(&out)
        .pop()
        .unwrap_or_else(|| panic!("no JSON:\n{out}"));
    assert_oom_report(&v, chunk, "cuda-bindings");
    assert_eq!(checked_region(&machine).device_used(0), 0);
}

#[test]
fn python_clients_fail_closed_on_a_malformed_limit() {
    let machine = SimMachine::new("client-python-bad");
    for (script, want) in [("pynvml_meminfo.py", 4), ("cuda_bindings_oom.py", 800)] {
        let mut cmd = machine.preloaded(testkit::python());
        cmd.env("CUDA_DEVICE_MEMORY_LIMIT", "1.5g")
            .arg(python_script(script))
            .arg("--init-only");
        let (_, out, err) = run_probe(&mut cmd);
        let v = json_lines(&out)
            .pop()
            .unwrap_or_else(|| panic!("{script}: no JSON\n{out}\n{err}"));
        assert_eq!(n(&v, "error_code"), want, "{script}: {v}\n{err}");
        assert!(
            err.contains("CUDA_DEVICE_MEMORY_LIMIT"),
            "{script}: the error must name the variable:\n{err}"
        );
    }
}
