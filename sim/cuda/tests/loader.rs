//! How programs reach the simulated driver: dlopen + dlsym and cuGetProcAddress, and the symbolic
//! binding that keeps a preloaded library out of the driver's own calls.

mod common;
use common::*;

#[test]
fn dlopen_and_get_proc_address_resolve_our_own_exports() {
    let m = SimMachine::new("cuda-proc-address");
    let out = run_probe(&mut m.command(dlopen_probe("cu_proc_address")));
    assert_eq!(field(&out, "driver", "version"), "12090");
}

/// The simulated driver is linked `-Bsymbolic`, like the real `libcuda.so`: with a library preloaded
/// that defines some driver symbols, the program's direct calls reach the preloaded ones, but the
/// driver's `cuGetProcAddress` table and its internal calls stay inside the driver. Without the
/// flag, the table would hand out the preloaded functions and tests of an interposer would pass
/// for the wrong reason (see driver-facts.md, "Symbolic binding").
#[test]
fn symbolic_binding_keeps_the_driver_table_its_own() {
    let preload = probe_with("cu_marker_preload", &["-shared", "-fPIC"]);
    let m = SimMachine::new("cuda-symbolic");
    let out = run_probe(
        m.command(linked_probe("cu_symbolic"))
            .env("LD_PRELOAD", &preload),
    );
    assert!(out.contains("driver table: own functions"), "{out}");
    // And without the preload, the direct calls reach the driver (the marker really was the preload).
    let plain = testkit::run(&mut m.command(linked_probe("cu_symbolic")), DEADLINE);
    assert!(
        !plain.status.success(),
        "the probe must notice that direct calls were not interposed"
    );
}
