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
