//! The driver API's argument checks, devices, contexts, memory, launches and graphs, through C probes
//! linked with `-lcuda` against the simulated driver.

mod common;
use common::*;

#[test]
fn error_codes_and_context_stack() {
    let m = SimMachine::new("cuda-api-errors");
    let out = run_probe(&mut m.command(linked_probe("cu_api_errors")));
    assert_eq!(field(&out, "driver", "version"), "12090");
}

#[test]
fn driver_version_comes_from_the_environment() {
    let m = SimMachine::new("cuda-driver-version");
    let out = run_probe(
        m.command(linked_probe("cu_api_errors"))
            .env("SIMGPU_DRIVER_VERSION", "12040"),
    );
    assert_eq!(field(&out, "driver", "version"), "12040");
}

#[test]
fn devices_match_the_configured_machine() {
    let spec = "name=Sim-T4,mem=16Gi,sms=40,cc=7.5,pci=00000000:3B:00.0,clock_mhz=1590,\
                uuid=GPU-01234567-89ab-cdef-0123-456789abcdef;name=Sim-H100,mem=80Gi,sms=132,cc=9.0";
    let m = SimMachine::new("cuda-devices").with_devices(spec);
    let out = run_probe(&mut m.command(linked_probe("cu_devices")));
    assert_eq!(field(&out, "count", "count"), "2");
    assert_eq!(field(&out, "dev0", "name"), "Sim-T4");
    assert_eq!(field_u64(&out, "dev0", "mem"), 16 << 30);
    assert_eq!(field(&out, "dev0", "sms"), "40");
    assert_eq!(field(&out, "dev0", "cc"), "7.5");
    assert_eq!(field(&out, "dev0", "clock_khz"), "1590000");
    assert_eq!(field(&out, "dev0", "pci"), "0000:3B:00.0");
    assert_eq!(field(&out, "dev0", "bus"), "59");
    assert_eq!(
        field(&out, "dev0", "uuid"),
        "0123456789abcdef0123456789abcdef",
        "the NVML UUID's hex"
    );
    assert_eq!(field(&out, "dev1", "name"), "Sim-H100");
    assert_eq!(field_u64(&out, "dev1", "mem"), 80 << 30);
    assert_eq!(field(&out, "dev1", "cc"), "9.0");
}

#[test]
fn default_machine_has_an_a100_and_an_l4() {
    let m = SimMachine::new("cuda-default-devices");
    let out = run_probe(&mut m.command(linked_probe("cu_devices")));
    assert_eq!(field(&out, "count", "count"), "2");
    assert!(
        out.contains("dev0 name=NVIDIA A100-SXM4-40GB mem=42949672960 sms=108 cc=8.0"),
        "{out}"
    );
    assert!(
        out.contains("dev1 name=NVIDIA L4 mem=25769803776 sms=58 cc=8.9"),
        "{out}"
    );
}

#[test]
fn memory_charges_round_trips_pools_vmm_arrays() {
    let m = SimMachine::new("cuda-memory");
    let out = run_probe(
        m.command(linked_probe("cu_memory"))
            .env("SIMGPU_CONTEXT_BYTES", "64Mi"),
    );
    // Every context costs SIMGPU_CONTEXT_BYTES of device memory.
    assert_eq!(field_u64(&out, "context", "used"), 64 << 20);
    assert_eq!(field_u64(&out, "second context", "used"), 64 << 20);
}

#[test]
fn context_cost_defaults_to_304_mib() {
    let m = SimMachine::new("cuda-context-default");
    let out = run_probe(&mut m.command(linked_probe("cu_memory")));
    assert_eq!(field_u64(&out, "context", "used"), 304 << 20);
}

#[test]
fn modules_kernels_streams_events_graphs() {
    let m = SimMachine::new("cuda-launch");
    let module = m.dir.join("kernels.simgpu");
    std::fs::write(
        &module,
        "SIMGPU-MODULE 1\n# from a file\nkernel from_file 10\n",
    )
    .unwrap();
    let out = run_probe(m.command(linked_probe("cu_launch")).arg(&module));
    // Lower bounds, asserted in the probe too; printed here for the log.
    for what in ["sleep", "event", "graph"] {
        let ms: f64 = field(&out, what, "elapsed_ms").parse().unwrap();
        assert!(ms >= 20.0, "{what}: {ms} ms");
    }
}

#[test]
fn many_threads_share_a_context() {
    let m = SimMachine::new("cuda-threads");
    run_probe(&mut m.command(linked_probe("cu_threads")));
}

#[test]
fn fork_before_init_works_and_after_init_the_child_is_refused() {
    let m = SimMachine::new("cuda-fork");
    let out = run_probe(m.command(linked_probe("cu_fork")).arg("before"));
    assert_eq!(field(&out, "child", "child"), "0", "{out}");
    let out = run_probe(m.command(linked_probe("cu_fork")).arg("after"));
    assert_eq!(
        field(&out, "child", "child"),
        "3",
        "CUDA_ERROR_NOT_INITIALIZED: {out}"
    );
}
