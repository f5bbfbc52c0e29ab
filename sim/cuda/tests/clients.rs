//! Third-party clients that load the driver their own way: cudarc (Rust, libloading) and NVIDIA's
//! cuda-bindings (Python, cuGetProcAddress).

mod common;
use common::*;

/// `target/<profile>/examples/<name>`: cargo builds this crate's examples along with its tests.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds examples; run it for this crate",
        path.display()
    );
    path
}

#[test]
fn cudarc_round_trips_data_and_runs_a_kernel() {
    let m = SimMachine::new("cuda-cudarc");
    let out = testkit::run_ok(&mut m.command(example("cudarc_client")), DEADLINE);
    for step in ["ok round trip", "ok mem_get_info", "ok kernel", "ok done"] {
        assert!(out.contains(step), "missing {step:?}:\n{out}");
    }
    assert_eq!(field_u64(&out, "ok context", "total"), 40 << 30);
}

#[test]
fn cuda_bindings_round_trips_data() {
    let m = SimMachine::new("cuda-python-bindings");
    let script = crate_dir().join("tests/python/cuda_bindings_roundtrip.py");
    let out = testkit::run_ok(m.command(testkit::python()).arg(script), DEADLINE);
    assert_eq!(field(&out, "ok device", "name"), "NVIDIA_A100-SXM4-40GB");
    assert_eq!(field(&out, "ok device", "driver"), "12090");
    assert_eq!(field_u64(&out, "ok round trip", "free_delta"), 1 << 18);
    assert!(out.contains("ok done"), "{out}");
}
