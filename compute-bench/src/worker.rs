//! The workload process: `vgpu-compute-bench worker ...`, started by the bench with libvgpu
//! preloaded and the simulated driver on its library path.
//!
//! It opens the driver the way many clients do (`dlopen("libcuda.so.1")` + `dlsym`, so the
//! preloaded library answers), loads a simulated module, waits for the common start instant, and
//! launches one kernel (or replays one graph) in a loop until the end instant, synchronising after
//! each launch or never.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::time::Duration;

type CUresult = c_int;
type Handle = *mut c_void;

/// The simulated module every worker loads: kernels of 50 µs, 1 ms and 20 ms when launched with a
/// grid of 2 x the device's SMs (2 block-waves; sim/cuda/src/kernels.rs has the formula), so the
/// same case takes the same device time on any size of GPU.
pub const MODULE: &str =
    "SIMGPU-MODULE 1\nkernel k50us 25000\nkernel k1ms 500000\nkernel k20ms 10000000\n\0";

/// CUDA_SUCCESS.
const SUCCESS: CUresult = 0;
const STREAM_NON_BLOCKING: c_uint = 1;
const CAPTURE_MODE_RELAXED: c_int = 2;

pub struct Args {
    pub kernel: String,
    pub sms: u32,
    pub sync: bool,
    /// Kernels per replayed graph, 0 = plain launches. The graph cycles through `kernel` and k50us.
    pub graph_nodes: u32,
    pub start_at_ns: u64,
    pub end_at_ns: u64,
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut out = Args {
            kernel: "k1ms".into(),
            sms: 108,
            sync: false,
            graph_nodes: 0,
            start_at_ns: 0,
            end_at_ns: 0,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--kernel" => out.kernel = value()?,
                "--sms" => out.sms = value()?.parse().map_err(|e| format!("--sms: {e}"))?,
                "--sync" => out.sync = value()? == "1",
                "--graph-nodes" => {
                    out.graph_nodes = value()?
                        .parse()
                        .map_err(|e| format!("--graph-nodes: {e}"))?
                }
                "--start-at" => {
                    out.start_at_ns = value()?.parse().map_err(|e| format!("--start-at: {e}"))?
                }
                "--end-at" => {
                    out.end_at_ns = value()?.parse().map_err(|e| format!("--end-at: {e}"))?
                }
                other => return Err(format!("worker: unknown option {other}")),
            }
        }
        Ok(out)
    }
}

struct Driver {
    lib: Handle,
}

impl Driver {
    fn open() -> Result<Driver, String> {
        let name = c"libcuda.so.1";
        // SAFETY: a NUL-terminated name; RTLD_NOW resolves everything up front.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        if lib.is_null() {
            return Err(format!("dlopen libcuda.so.1: {}", dl_error()));
        }
        Ok(Driver { lib })
    }

    /// The entry point `name` as a function pointer of type `F` (an `extern "C" fn`).
    fn sym<F: Copy>(&self, name: &str) -> Result<F, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a handle from dlopen and a NUL-terminated name.
        let p = unsafe { libc::dlsym(self.lib, c.as_ptr()) };
        if p.is_null() {
            return Err(format!("dlsym {name}: {}", dl_error()));
        }
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: `F` is the C signature of `name` (declared below from cuda.h); same size as a
        // pointer (checked).
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libdl.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn check(what: &str, rc: CUresult) -> Result<(), String> {
    if rc == SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} returned {rc}"))
    }
}

fn monotonic_ns() -> u64 {
    simgpu_state::monotonic_ns()
}

fn sleep_until(ns: u64) {
    let now = monotonic_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

type Launch = unsafe extern "C" fn(
    Handle,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    Handle,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;

/// Runs the workload; prints `launches N late_ns N`.
pub fn run(args: &Args) -> Result<(), String> {
    let drv = Driver::open()?;
    let cu_init: unsafe extern "C" fn(c_uint) -> CUresult = drv.sym("cuInit")?;
    let device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CUresult = drv.sym("cuDeviceGet")?;
    let retain: unsafe extern "C" fn(*mut Handle, c_int) -> CUresult =
        drv.sym("cuDevicePrimaryCtxRetain")?;
    let set_current: unsafe extern "C" fn(Handle) -> CUresult = drv.sym("cuCtxSetCurrent")?;
    let stream_create: unsafe extern "C" fn(*mut Handle, c_uint) -> CUresult =
        drv.sym("cuStreamCreate")?;
    let stream_sync: unsafe extern "C" fn(Handle) -> CUresult = drv.sym("cuStreamSynchronize")?;
    let module_load: unsafe extern "C" fn(*mut Handle, *const c_void) -> CUresult =
        drv.sym("cuModuleLoadData")?;
    let get_function: unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CUresult =
        drv.sym("cuModuleGetFunction")?;
    let launch: Launch = drv.sym("cuLaunchKernel")?;
    let begin_capture: unsafe extern "C" fn(Handle, c_int) -> CUresult =
        drv.sym("cuStreamBeginCapture_v2")?;
    let end_capture: unsafe extern "C" fn(Handle, *mut Handle) -> CUresult =
        drv.sym("cuStreamEndCapture")?;
    let instantiate: unsafe extern "C" fn(*mut Handle, Handle, u64) -> CUresult =
        drv.sym("cuGraphInstantiateWithFlags")?;
    let graph_launch: unsafe extern "C" fn(Handle, Handle) -> CUresult =
        drv.sym("cuGraphLaunch")?;

    let grid = 2 * args.sms.max(1);
    let block = 256;
    let mut ctx: Handle = std::ptr::null_mut();
    let mut stream: Handle = std::ptr::null_mut();
    let mut module: Handle = std::ptr::null_mut();
    let mut function: Handle = std::ptr::null_mut();
    let mut small: Handle = std::ptr::null_mut();
    let mut exec: Handle = std::ptr::null_mut();
    let name = CString::new(args.kernel.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: each call gets valid out-pointers and handles the driver returned before it.
    unsafe {
        check("cuInit", cu_init(0))?;
        let mut dev = 0;
        check("cuDeviceGet", device_get(&mut dev, 0))?;
        check("cuDevicePrimaryCtxRetain", retain(&mut ctx, dev))?;
        check("cuCtxSetCurrent", set_current(ctx))?;
        check(
            "cuStreamCreate",
            stream_create(&mut stream, STREAM_NON_BLOCKING),
        )?;
        check(
            "cuModuleLoadData",
            module_load(&mut module, MODULE.as_ptr().cast()),
        )?;
        check(
            "cuModuleGetFunction",
            get_function(&mut function, module, name.as_ptr()),
        )?;
        check(
            "cuModuleGetFunction k50us",
            get_function(&mut small, module, c"k50us".as_ptr()),
        )?;
        if args.graph_nodes > 0 {
            check(
                "cuStreamBeginCapture_v2",
                begin_capture(stream, CAPTURE_MODE_RELAXED),
            )?;
            for node in 0..args.graph_nodes {
                let f = if node % 2 == 0 { function } else { small };
                let rc = launch(
                    f,
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    0,
                    stream,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                check("cuLaunchKernel (capture)", rc)?;
            }
            let mut graph: Handle = std::ptr::null_mut();
            check("cuStreamEndCapture", end_capture(stream, &mut graph))?;
            check(
                "cuGraphInstantiateWithFlags",
                instantiate(&mut exec, graph, 0),
            )?;
        }
    }
    let late_ns = monotonic_ns().saturating_sub(args.start_at_ns);
    sleep_until(args.start_at_ns);
    let mut launches = 0u64;
    while monotonic_ns() < args.end_at_ns {
        // SAFETY: handles created above; no kernel parameters.
        let rc = unsafe {
            if args.graph_nodes > 0 {
                graph_launch(exec, stream)
            } else {
                launch(
                    function,
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    0,
                    stream,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            }
        };
        check("launch", rc)?;
        launches += 1;
        if args.sync {
            // SAFETY: a stream created above.
            check("cuStreamSynchronize", unsafe { stream_sync(stream) })?;
        }
    }
    // SAFETY: as above.
    check("cuStreamSynchronize", unsafe { stream_sync(stream) })?;
    println!("launches {launches} late_ns {late_ns}");
    Ok(())
}
