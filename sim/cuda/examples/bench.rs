//! Cost of the simulated driver's hot entry points, called through `dlopen` like a real client.
//!
//! ```text
//! scripts/build-artifacts.sh   # or: cargo build --release -p simgpu-cuda && copy to target/sim
//! cargo run --release -p simgpu-cuda --example bench [-- /path/to/libcuda.so.1]
//! ```
//!
//! Prints one row per entry point: nanoseconds per call (median of 5 rounds). Runs on its own
//! simulated machine (a state file in a temporary folder), so it disturbs nothing.

use std::ffi::{c_void, CString};
use std::os::raw::{c_char, c_int, c_uint};
use std::time::Instant;

type CUresult = c_int;
type Ptr = *mut c_void;

struct Driver {
    lib: Ptr,
}

impl Driver {
    fn open(path: &str) -> Driver {
        let c = CString::new(path).expect("path");
        // SAFETY: dlopen of a library path; the handle is kept for the life of the program.
        let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!lib.is_null(), "cannot dlopen {path}");
        Driver { lib }
    }

    fn sym<T: Copy>(&self, name: &str) -> T {
        let c = CString::new(name).expect("name");
        // SAFETY: looking up a symbol in our handle.
        let p = unsafe { libc::dlsym(self.lib, c.as_ptr()) };
        assert!(!p.is_null(), "no symbol {name}");
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<Ptr>());
        // SAFETY: T is the function pointer type of `name`, as declared in cuda.h.
        unsafe { std::mem::transmute_copy(&p) }
    }
}

fn check(what: &str, rc: CUresult) {
    assert_eq!(rc, 0, "{what} returned {rc}");
}

/// Median ns per call over 5 rounds of `n` calls.
fn measure(n: u32, mut body: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                body();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.total_cmp(b));
    rounds[2]
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| root.join("target/sim/libcuda.so.1").display().to_string());
    let scratch = std::env::temp_dir().join(format!("simgpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    std::env::set_var("SIMGPU_STATE", scratch.join("machine.state"));
    std::env::remove_var("SIMGPU_DEVICES");

    let d = Driver::open(&path);
    let cu_init: unsafe extern "C" fn(c_uint) -> CUresult = d.sym("cuInit");
    let retain: unsafe extern "C" fn(*mut Ptr, c_int) -> CUresult =
        d.sym("cuDevicePrimaryCtxRetain");
    let set_current: unsafe extern "C" fn(Ptr) -> CUresult = d.sym("cuCtxSetCurrent");
    let stream_create: unsafe extern "C" fn(*mut Ptr, c_uint) -> CUresult = d.sym("cuStreamCreate");
    let load: unsafe extern "C" fn(*mut Ptr, *const c_void) -> CUresult = d.sym("cuModuleLoadData");
    let get_function: unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> CUresult =
        d.sym("cuModuleGetFunction");
    type Launch = unsafe extern "C" fn(
        Ptr,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Ptr,
        *mut Ptr,
        *mut Ptr,
    ) -> CUresult;
    let launch: Launch = d.sym("cuLaunchKernel");
    let alloc: unsafe extern "C" fn(*mut u64, usize) -> CUresult = d.sym("cuMemAlloc_v2");
    let free: unsafe extern "C" fn(u64) -> CUresult = d.sym("cuMemFree_v2");
    let info: unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult = d.sym("cuMemGetInfo_v2");
    let ctx_device: unsafe extern "C" fn(*mut c_int) -> CUresult = d.sym("cuCtxGetDevice");
    let query: unsafe extern "C" fn(Ptr) -> CUresult = d.sym("cuStreamQuery");
    type GetProc =
        unsafe extern "C" fn(*const c_char, *mut Ptr, c_int, u64, *mut c_int) -> CUresult;
    let get_proc: GetProc = d.sym("cuGetProcAddress_v2");

    let (mut ctx, mut stream, mut module, mut noop, mut busy) = (
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    let image = b"SIMGPU-MODULE 1\nkernel noop 0\nkernel busy 1\n\0";
    // SAFETY: every call below follows the driver API's contract with valid out-pointers.
    unsafe {
        check("cuInit", cu_init(0));
        check("retain", retain(&mut ctx, 0));
        check("set current", set_current(ctx));
        check("stream", stream_create(&mut stream, 0));
        check("module", load(&mut module, image.as_ptr() as *const c_void));
        check("noop", get_function(&mut noop, module, c"noop".as_ptr()));
        check("busy", get_function(&mut busy, module, c"busy".as_ptr()));
    }

    let mut rows: Vec<(&str, f64)> = Vec::new();
    // SAFETY (all closures): valid handles and out-pointers, as set up above.
    rows.push((
        "cuLaunchKernel (0 ns kernel, async)",
        measure(100_000, || unsafe {
            check(
                "launch",
                launch(
                    noop,
                    1,
                    1,
                    1,
                    128,
                    1,
                    1,
                    0,
                    stream,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                ),
            );
        }),
    ));
    rows.push((
        "cuLaunchKernel (108 blocks, async)",
        measure(100_000, || unsafe {
            check(
                "launch",
                launch(
                    busy,
                    108,
                    1,
                    1,
                    256,
                    1,
                    1,
                    0,
                    stream,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                ),
            );
        }),
    ));
    rows.push((
        "cuMemAlloc_v2 + cuMemFree_v2 (4 KiB)",
        measure(100_000, || unsafe {
            let mut p = 0u64;
            check("alloc", alloc(&mut p, 4096));
            check("free", free(p));
        }),
    ));
    rows.push((
        "cuMemAlloc_v2 + cuMemFree_v2 (64 MiB)",
        measure(20_000, || unsafe {
            let mut p = 0u64;
            check("alloc", alloc(&mut p, 64 << 20));
            check("free", free(p));
        }),
    ));
    rows.push((
        "cuCtxGetDevice",
        measure(200_000, || unsafe {
            let mut dev = 0;
            check("device", ctx_device(&mut dev));
        }),
    ));
    rows.push((
        "cuStreamQuery",
        measure(200_000, || unsafe {
            let _ = query(stream);
        }),
    ));
    rows.push((
        "cuMemGetInfo_v2",
        measure(20_000, || unsafe {
            let (mut f, mut t) = (0usize, 0usize);
            check("info", info(&mut f, &mut t));
        }),
    ));
    rows.push((
        "cuGetProcAddress_v2 (\"cuMemAlloc\")",
        measure(200_000, || unsafe {
            let mut pfn = std::ptr::null_mut();
            check(
                "get proc",
                get_proc(
                    c"cuMemAlloc".as_ptr(),
                    &mut pfn,
                    12000,
                    0,
                    std::ptr::null_mut(),
                ),
            );
        }),
    ));

    println!("| entry point | ns per call |");
    println!("| --- | ---: |");
    for (name, ns) in rows {
        println!("| {name} | {ns:.0} |");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
