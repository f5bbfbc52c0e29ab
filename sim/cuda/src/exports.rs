//! Every exported driver entry point, in one list.
//!
//! The `exports!` macro turns each line into the `#[no_mangle]` C function (a panic firewall around
//! the body, after any `SIMGPU_SLOW` delay), a compile-time check of its signature against the
//! generated `PFN_<name>_v<version>` type named in brackets, and an entry in `EXPORTS`, the
//! name-to-address table behind `cuGetProcAddress`. So exports, signatures and that table cannot
//! drift. A line with empty brackets is an ABI for which cudaTypedefs.h has no type (the CUDA 2.x
//! 32-bit `CUdeviceptr` ABIs and a few early ones); its signature is written from cuda.h's
//! `__CUDA_API_VERSION_INTERNAL` declarations.

#![allow(
    non_snake_case,
    non_camel_case_types,
    clippy::missing_safety_doc,
    clippy::too_many_arguments
)]

use std::ffi::c_void;
use std::os::raw::{c_char, c_int, c_uchar, c_uint, c_ulonglong, c_ushort};

use vgpu_abi::cuda::*;

use crate::error::CuResult;
use crate::handles::Handle;
use crate::memory::{AllocKind, ArrayShape, Direction, Order};
use crate::sys::{self, Out};
use crate::{
    context, device, driver, error, graph, launch, memory, module, proc_address, stream, vmm,
};

/// One exported function: its symbol and address.
pub(crate) struct Export {
    pub name: &'static str,
    pub address: *const (),
}

// SAFETY: the addresses are of functions, immutable for the life of the library.
unsafe impl Sync for Export {}

/// The 32-bit `CUdeviceptr` of the CUDA 2.x/3.0 ABIs.
type CUdeviceptr_v1 = c_uint;

/// `CUDA_ARRAY_DESCRIPTOR` of the 32-bit ABI (cuda.h, `__CUDA_API_VERSION_INTERNAL`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUDA_ARRAY_DESCRIPTOR_v1 {
    pub Width: c_uint,
    pub Height: c_uint,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` of the 32-bit ABI.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUDA_ARRAY3D_DESCRIPTOR_v1 {
    pub Width: c_uint,
    pub Height: c_uint,
    pub Depth: c_uint,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
    pub Flags: c_uint,
}

mod shim {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, Ordering};

    use vgpu_abi::cuda::{cudaError_enum as E, CUresult};

    use crate::error::CuResult;

    /// Run one entry point's body: `SIMGPU_SLOW` first, then the body behind a panic firewall.
    #[inline(always)]
    pub(crate) fn call(symbol: &'static str, body: impl FnOnce() -> CuResult) -> CUresult {
        if let Ok(machine) = simgpu_state::Machine::get() {
            machine.faults().slow(symbol);
        }
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(())) => E::CUDA_SUCCESS,
            Ok(Err(code)) => code,
            Err(_) => {
                static REPORTED: AtomicBool = AtomicBool::new(false);
                if !REPORTED.swap(true, Ordering::Relaxed) {
                    eprintln!("simulated libcuda: internal error (panic) in {symbol}; returning CUDA_ERROR_UNKNOWN");
                }
                E::CUDA_ERROR_UNKNOWN
            }
        }
    }
}

macro_rules! exports {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) [$($pfn:ident)?] => $body:expr ; )*) => {
        $(
            #[no_mangle]
            #[allow(unused_variables)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> CUresult {
                shim::call(stringify!($name), move || -> CuResult { $body })
            }
            $( const _: $pfn = Some($name); )?
        )*
        /// Every export, for `cuGetProcAddress`.
        pub(crate) static EXPORTS: &[Export] = &[ $( Export { name: stringify!($name), address: $name as *const () } ),* ];
    };
}

#[inline]
fn h<T>(p: *mut T) -> Handle {
    p as Handle
}

#[inline]
fn p<T>(handle: Handle) -> *mut T {
    handle as *mut T
}

/// `Ok` once `cuInit` has succeeded: checked before out-pointers, like the driver does.
#[inline]
fn ready() -> CuResult {
    driver::driver().map(|_| ())
}

/// The 32-bit ABIs can only return values that fit.
fn narrow(v: u64) -> CuResult<u32> {
    u32::try_from(v).map_err(|_| CUresult::CUDA_ERROR_INVALID_VALUE)
}

fn put<T>(out: *mut T, value: T) -> CuResult {
    Out::new(out)?.write(value);
    Ok(())
}

fn alloc_to<T>(
    out: *mut T,
    bytes: u64,
    kind: AllocKind,
    low: bool,
    convert: impl FnOnce(u64) -> T,
) -> CuResult {
    ready()?;
    let out = Out::new(out)?;
    let ptr = memory::alloc(bytes, kind, low)?;
    out.write(convert(ptr));
    Ok(())
}

fn make_handle<T>(out: *mut *mut T, make: impl FnOnce() -> CuResult<Handle>) -> CuResult {
    ready()?;
    let out = Out::new(out)?;
    out.write(p(make()?));
    Ok(())
}

fn mem_info(free: *mut usize, total: *mut usize) -> CuResult {
    ready()?;
    let (free, total) = (Out::new(free)?, Out::new(total)?);
    let (f, t) = memory::info()?;
    free.write(f as usize);
    total.write(t as usize);
    Ok(())
}

fn address_range(base: *mut u64, size: *mut usize, ptr: u64) -> CuResult {
    let (b, s) = memory::address_range(ptr)?;
    if let Some(out) = Out::optional(base) {
        out.write(b);
    }
    if let Some(out) = Out::optional(size) {
        out.write(s as usize);
    }
    Ok(())
}

fn kernel_launch(
    f: CUfunction,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_bytes: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    per_thread: bool,
    cooperative: bool,
) -> CuResult {
    launch::launch(launch::Launch {
        func: h(f),
        grid,
        block,
        shared_bytes,
        stream: h(stream),
        per_thread,
        cooperative,
        params,
        extra,
    })
}

fn launch_ex(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    per_thread: bool,
) -> CuResult {
    ready()?;
    let c = sys::read(config)?;
    let cooperative = launch::cooperative_attribute(&c)?;
    kernel_launch(
        f,
        [c.gridDimX, c.gridDimY, c.gridDimZ],
        [c.blockDimX, c.blockDimY, c.blockDimZ],
        c.sharedMemBytes,
        c.hStream,
        params,
        extra,
        per_thread,
        cooperative,
    )
}

fn launch_multi_device(list: *mut CUDA_LAUNCH_PARAMS, count: c_uint, flags: c_uint) -> CuResult {
    ready()?;
    if count == 0 || flags > 3 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    for l in sys::read_array(list as *const CUDA_LAUNCH_PARAMS, count as usize)? {
        if l.hStream.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        kernel_launch(
            l.function,
            [l.gridDimX, l.gridDimY, l.gridDimZ],
            [l.blockDimX, l.blockDimY, l.blockDimZ],
            l.sharedMemBytes,
            l.hStream,
            l.kernelParams,
            std::ptr::null_mut(),
            false,
            true,
        )?;
    }
    Ok(())
}

fn begin_capture(stream: CUstream, mode: u32, per_thread: bool) -> CuResult {
    graph::begin_capture(h(stream), mode, per_thread)
}

fn end_capture(stream: CUstream, graph_out: *mut CUgraph, per_thread: bool) -> CuResult {
    ready()?;
    let out = Out::new(graph_out)?;
    match graph::end_capture(h(stream), per_thread) {
        Ok(g) => {
            out.write(p(g));
            Ok(())
        }
        Err(e) => {
            out.write(std::ptr::null_mut());
            Err(e)
        }
    }
}

fn is_capturing(
    stream: CUstream,
    status: *mut CUstreamCaptureStatus,
    per_thread: bool,
) -> CuResult {
    ready()?;
    let out = Out::new(status)?;
    out.write(CUstreamCaptureStatus(
        graph::capture_info(h(stream), per_thread)?.status,
    ));
    Ok(())
}

fn capture_info(
    stream: CUstream,
    status: *mut CUstreamCaptureStatus,
    id: *mut cuuint64_t,
    graph_out: *mut CUgraph,
    deps: *mut *const CUgraphNode,
    edges: *mut *const CUgraphEdgeData,
    count: *mut usize,
    per_thread: bool,
) -> CuResult {
    ready()?;
    let status = Out::new(status)?;
    let info = graph::capture_info(h(stream), per_thread)?;
    status.write(CUstreamCaptureStatus(info.status));
    if let Some(o) = Out::optional(id) {
        o.write(info.id);
    }
    if let Some(o) = Out::optional(graph_out) {
        o.write(p(info.graph));
    }
    if let Some(o) = Out::optional(deps) {
        o.write(info.deps as *const CUgraphNode);
    }
    if let Some(o) = Out::optional(edges) {
        o.write(std::ptr::null()); // all edges are default edges
    }
    if let Some(o) = Out::optional(count) {
        o.write(info.deps_count);
    }
    Ok(())
}

/// The 5-argument `cuGraphInstantiate`/`_v2`. `phErrorNode` and `logBuffer` are only written on an
/// instantiation error in the driver, and instantiation cannot fail here, so they are not touched
/// (which also keeps a caller that holds the CUDA 12 3-argument ABI safe).
fn instantiate(exec_out: *mut CUgraphExec, graph: CUgraph) -> CuResult {
    ready()?;
    let out = Out::new(exec_out)?;
    out.write(p(graph::instantiate(h(graph))?));
    Ok(())
}

fn instantiate_with_flags(exec_out: *mut CUgraphExec, graph: CUgraph, flags: u64) -> CuResult {
    ready()?;
    let out = Out::new(exec_out)?;
    // AUTO_FREE_ON_LAUNCH (1), UPLOAD (2), DEVICE_LAUNCH (4), USE_NODE_PRIORITY (8).
    if flags & !0xf != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    out.write(p(graph::instantiate(h(graph))?));
    Ok(())
}

fn instantiate_with_params(
    exec_out: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> CuResult {
    ready()?;
    let out = Out::new(exec_out)?;
    let mut prm = sys::read(params as *const CUDA_GRAPH_INSTANTIATE_PARAMS)?;
    if prm.flags & !0xf != 0 {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    let exec = graph::instantiate(h(graph))?;
    prm.hErrNode_out = std::ptr::null_mut();
    prm.result_out = CUgraphInstantiateResult::CUDA_GRAPH_INSTANTIATE_SUCCESS;
    Out::new(params)?.write(prm);
    out.write(p(exec));
    Ok(())
}

fn add_kernel_node(
    node_out: *mut CUgraphNode,
    graph: CUgraph,
    deps: *const CUgraphNode,
    dep_count: usize,
    params: CUDA_KERNEL_NODE_PARAMS_v2,
) -> CuResult {
    let out = Out::new(node_out)?;
    let deps: Vec<Handle> = sys::read_array(deps, dep_count)?
        .into_iter()
        .map(h)
        .collect();
    let func = if params.func.is_null() {
        h(params.kern)
    } else {
        h(params.func)
    };
    let node = graph::add_kernel_node(h(graph), &deps, |drv, state| {
        let (op, _) = launch::kernel_op(
            drv,
            state,
            func,
            [params.gridDimX, params.gridDimY, params.gridDimZ],
            [params.blockDimX, params.blockDimY, params.blockDimZ],
            params.sharedMemBytes,
            false,
            params.kernelParams,
            params.extra,
        )?;
        Ok(op)
    })?;
    out.write(p(node));
    Ok(())
}

fn graph_nodes(graph: CUgraph, nodes: *mut CUgraphNode, count: *mut usize) -> CuResult {
    ready()?;
    // With a buffer, `*count` says how many it holds; we fill what fits and report the total.
    let capacity = if nodes.is_null() {
        0
    } else {
        sys::read(count as *const usize)?
    };
    let count = Out::new(count)?;
    let all = graph::nodes(h(graph))?;
    for (i, n) in all.iter().take(capacity).enumerate() {
        Out::new(nodes.wrapping_add(i))?.write(p(*n));
    }
    count.write(all.len());
    Ok(())
}

fn pool_get(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) -> CuResult {
    ready()?;
    if value.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    match memory::pool_attribute(h(pool), attr.0)? {
        memory::PoolValue::Int(v) => put(value as *mut c_int, v),
        memory::PoolValue::U64(v) => put(value as *mut u64, v),
    }
}

fn pool_set(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) -> CuResult {
    ready()?;
    if value.is_null() {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    }
    memory::set_pool_attribute(
        h(pool),
        attr.0,
        || sys::read(value as *const c_int),
        || sys::read(value as *const u64),
    )
}

/// Write one pointer attribute in its C type; `None` = the pointer is not CUDA memory.
fn pointer_attribute(
    data: *mut c_void,
    attr: u32,
    ptr: u64,
    info: Option<&memory::PointerInfo>,
) -> CuResult {
    let Some(i) = info else {
        return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
    };
    match attr {
        1 => put(data as *mut CUcontext, p(i.ctx)),
        // CU_MEMORYTYPE_HOST (1) for pinned host memory, DEVICE (2) otherwise.
        2 => put(data as *mut c_uint, if i.host { 1 } else { 2 }),
        3 => put(data as *mut u64, ptr),
        4 if i.host || i.managed => put(data as *mut *mut c_void, ptr as *mut c_void),
        4 => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
        6 | 13 => put(data as *mut bool, true), // SYNC_MEMOPS, MAPPED
        7 | 20 => put(data as *mut u64, i.base), // BUFFER_ID, MEMORY_BLOCK_ID
        8 => put(data as *mut bool, i.managed), // IS_MANAGED
        9 => put(data as *mut c_int, i.device as c_int), // DEVICE_ORDINAL
        10 | 15 | 21 => put(data as *mut bool, false), // IPC, RDMA, HW_DECOMPRESS capable
        11 | 19 => put(data as *mut u64, i.base), // RANGE_START_ADDR, MAPPING_BASE_ADDR
        12 | 18 => put(data as *mut usize, i.size as usize), // RANGE_SIZE, MAPPING_SIZE
        14 => put(data as *mut u64, 0),         // ALLOWED_HANDLE_TYPES
        16 => put(data as *mut c_uint, 3),      // ACCESS_FLAGS: read-write
        17 => put(data as *mut CUmemoryPool, p(i.pool)), // MEMPOOL_HANDLE
        _ => Err(CUresult::CUDA_ERROR_INVALID_VALUE),
    }
}

fn pointer_attributes(
    count: c_uint,
    attrs: *mut CUpointer_attribute,
    data: *mut *mut c_void,
    ptr: u64,
) -> CuResult {
    ready()?;
    let attrs = sys::read_array(attrs as *const CUpointer_attribute, count as usize)?;
    let slots = sys::read_array(data as *const *mut c_void, count as usize)?;
    let info = memory::pointer_info(ptr)?;
    for (attr, slot) in attrs.iter().zip(slots) {
        match &info {
            Some(i) => pointer_attribute(slot, attr.0, ptr, Some(i))?,
            // Not CUDA memory: defaults (NULL, 0, false) rather than an error (cuda.h).
            None => match attr.0 {
                1 | 4 | 17 => put(slot as *mut *mut c_void, std::ptr::null_mut())?,
                2 | 16 => put(slot as *mut c_uint, 0)?,
                6 | 8 | 10 | 13 | 15 | 21 => put(slot as *mut bool, false)?,
                9 => put(slot as *mut c_int, -2)?,
                12 | 18 => put(slot as *mut usize, 0)?,
                _ => put(slot as *mut u64, 0)?,
            },
        }
    }
    Ok(())
}

fn module_global(
    dptr: *mut u64,
    bytes: *mut usize,
    module: CUmodule,
    name: *const c_char,
) -> CuResult {
    let (addr, size) = module::get_global(h(module), name)?;
    if let Some(o) = Out::optional(dptr) {
        o.write(addr);
    }
    if let Some(o) = Out::optional(bytes) {
        o.write(size as usize);
    }
    Ok(())
}

fn array_shape(
    w: u64,
    ht: u64,
    d: u64,
    format: CUarray_format,
    channels: u32,
    levels: u32,
) -> ArrayShape {
    ArrayShape {
        width: w,
        height: ht,
        depth: d,
        format: format.0,
        channels,
        levels,
    }
}

fn primary_state(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) -> CuResult {
    ready()?;
    let (flags, active) = (Out::new(flags)?, Out::new(active)?);
    let (f, a) = context::primary_state(dev)?;
    flags.write(f);
    active.write(a as c_int);
    Ok(())
}

fn module_loading_mode() -> CUmoduleLoadingMode {
    // CUDA 12.2+ loads lazily unless CUDA_MODULE_LOADING=EAGER.
    match std::env::var("CUDA_MODULE_LOADING").as_deref() {
        Ok("EAGER") => CUmoduleLoadingMode::CU_MODULE_EAGER_LOADING,
        _ => CUmoduleLoadingMode::CU_MODULE_LAZY_LOADING,
    }
}

fn error_string(
    code: CUresult,
    out: *mut *const c_char,
    lookup: fn(CUresult) -> Option<*const c_char>,
) -> CuResult {
    let out = Out::new(out)?;
    match lookup(code) {
        Some(s) => {
            out.write(s);
            Ok(())
        }
        None => {
            out.write(std::ptr::null());
            Err(CUresult::CUDA_ERROR_INVALID_VALUE)
        }
    }
}

exports! {
    // ---- initialisation, versions, errors, entry points ----
    fn cuInit(Flags: c_uint) [PFN_cuInit_v2000] => driver::init(Flags);
    fn cuDriverGetVersion(driverVersion: *mut c_int) [PFN_cuDriverGetVersion_v2020] => {
        let out = Out::new(driverVersion)?;
        out.write(driver::machine()?.driver_version());
        Ok(())
    };
    fn cuGetErrorName(error: CUresult, pStr: *mut *const c_char) [PFN_cuGetErrorName_v6000] => error_string(error, pStr, error::name);
    fn cuGetErrorString(error: CUresult, pStr: *mut *const c_char) [PFN_cuGetErrorString_v6000] => error_string(error, pStr, error::message);
    fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, driverVersion: c_int, flags: cuuint64_t) [PFN_cuGetProcAddress_v11030] =>
        proc_address::get_proc_address(symbol, pfn, driverVersion, flags, std::ptr::null_mut());
    fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, driverVersion: c_int, flags: cuuint64_t, symbolFound: *mut CUdriverProcAddressQueryResult) [PFN_cuGetProcAddress_v12000] =>
        proc_address::get_proc_address(symbol, pfn, driverVersion, flags, symbolFound);
    fn cuGetExportTable(ppExportTable: *mut *const c_void, pExportTableId: *const CUuuid) [PFN_cuGetExportTable_v3000] =>
        proc_address::get_export_table(ppExportTable, pExportTableId);

    // ---- devices ----
    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) [PFN_cuDeviceGet_v2000] => {
        ready()?;
        let out = Out::new(device)?;
        out.write(device::get(ordinal)?);
        Ok(())
    };
    fn cuDeviceGetCount(count: *mut c_int) [PFN_cuDeviceGetCount_v2000] => {
        ready()?;
        let out = Out::new(count)?;
        out.write(device::count()?);
        Ok(())
    };
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) [PFN_cuDeviceGetName_v2000] => {
        let n = device::with(dev, |d| d.spec.name.clone())?;
        sys::write_c_string(name, len, &n)
    };
    fn cuDeviceGetUuid(uuid: *mut CUuuid, dev: CUdevice) [PFN_cuDeviceGetUuid_v9020] => cuDeviceGetUuid_body(uuid, dev);
    fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) [PFN_cuDeviceGetUuid_v11040] => cuDeviceGetUuid_body(uuid, dev);
    fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) [] => {
        ready()?;
        let out = Out::new(bytes)?;
        out.write(device::with(dev, |d| d.spec.mem_bytes.min(u32::MAX as u64) as c_uint)?);
        Ok(())
    };
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) [PFN_cuDeviceTotalMem_v3020] => {
        ready()?;
        let out = Out::new(bytes)?;
        out.write(device::with(dev, |d| d.spec.mem_bytes as usize)?);
        Ok(())
    };
    fn cuDeviceGetAttribute(pi: *mut c_int, attrib: CUdevice_attribute, dev: CUdevice) [PFN_cuDeviceGetAttribute_v2000] => {
        ready()?;
        let out = Out::new(pi)?;
        let value = device::with(dev, |d| device::attribute(d, attrib.0 as i32))??;
        out.write(value);
        Ok(())
    };
    fn cuDeviceGetPCIBusId(pciBusId: *mut c_char, len: c_int, dev: CUdevice) [PFN_cuDeviceGetPCIBusId_v4010] => {
        let id = device::with(dev, device::pci_bus_id)?;
        sys::write_c_string(pciBusId, len, &id)
    };
    fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, pciBusId: *const c_char) [PFN_cuDeviceGetByPCIBusId_v4010] => {
        ready()?;
        let out = Out::new(dev)?;
        let text = sys::cstr(pciBusId)?.to_str().map_err(|_| CUresult::CUDA_ERROR_INVALID_VALUE)?;
        out.write(device::by_pci_bus_id(text)?);
        Ok(())
    };
    fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: CUdevice) [PFN_cuDeviceComputeCapability_v2000] => {
        ready()?;
        let (major, minor) = (Out::new(major)?, Out::new(minor)?);
        let (a, b) = device::with(dev, |d| (d.spec.cc_major as c_int, d.spec.cc_minor as c_int))?;
        major.write(a);
        minor.write(b);
        Ok(())
    };
    fn cuDeviceGetProperties(prop: *mut CUdevprop, dev: CUdevice) [PFN_cuDeviceGetProperties_v2000] => {
        ready()?;
        let out = Out::new(prop)?;
        out.write(device::with(dev, device::properties)?);
        Ok(())
    };
    fn cuDeviceCanAccessPeer(canAccessPeer: *mut c_int, dev: CUdevice, peerDev: CUdevice) [PFN_cuDeviceCanAccessPeer_v4000] => {
        ready()?;
        let out = Out::new(canAccessPeer)?;
        device::with(dev, |_| ())?;
        device::with(peerDev, |_| ())?;
        out.write(0); // peer access is not simulated
        Ok(())
    };
    fn cuDeviceGetDefaultMemPool(pool_out: *mut CUmemoryPool, dev: CUdevice) [PFN_cuDeviceGetDefaultMemPool_v11020] =>
        make_handle(pool_out, || memory::default_pool(dev));
    fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) [PFN_cuDeviceGetMemPool_v11020] =>
        make_handle(pool, || memory::current_pool(dev));
    fn cuDeviceSetMemPool(dev: CUdevice, pool: CUmemoryPool) [PFN_cuDeviceSetMemPool_v11020] => memory::set_current_pool(dev, h(pool));

    // ---- primary contexts ----
    fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) [PFN_cuDevicePrimaryCtxRetain_v7000] =>
        make_handle(pctx, || context::primary_retain(dev));
    fn cuDevicePrimaryCtxRelease(dev: CUdevice) [PFN_cuDevicePrimaryCtxRelease_v11000] => context::primary_release(dev);
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) [PFN_cuDevicePrimaryCtxRelease_v11000] => context::primary_release(dev);
    fn cuDevicePrimaryCtxReset(dev: CUdevice) [PFN_cuDevicePrimaryCtxReset_v11000] => context::primary_reset(dev);
    fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) [PFN_cuDevicePrimaryCtxReset_v11000] => context::primary_reset(dev);
    fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) [PFN_cuDevicePrimaryCtxGetState_v7000] =>
        primary_state(dev, flags, active);
    fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) [PFN_cuDevicePrimaryCtxSetFlags_v11000] => context::primary_set_flags(dev, flags, false);
    fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) [PFN_cuDevicePrimaryCtxSetFlags_v11000] => context::primary_set_flags(dev, flags, true);

    // ---- contexts ----
    fn cuCtxCreate(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) [PFN_cuCtxCreate_v3020] => make_handle(pctx, || context::create(flags, dev));
    fn cuCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) [PFN_cuCtxCreate_v3020] => make_handle(pctx, || context::create(flags, dev));
    fn cuCtxCreate_v3(pctx: *mut CUcontext, paramsArray: *mut CUexecAffinityParam, numParams: c_int, flags: c_uint, dev: CUdevice) [PFN_cuCtxCreate_v11040] => {
        context::check_exec_affinity(numParams)?;
        make_handle(pctx, || context::create(flags, dev))
    };
    fn cuCtxCreate_v4(pctx: *mut CUcontext, ctxCreateParams: *mut CUctxCreateParams, flags: c_uint, dev: CUdevice) [PFN_cuCtxCreate_v12050] => {
        if !ctxCreateParams.is_null() {
            let prm = sys::read(ctxCreateParams as *const CUctxCreateParams)?;
            context::check_exec_affinity(prm.numExecAffinityParams)?;
            if !prm.cigParams.is_null() {
                return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        make_handle(pctx, || context::create(flags, dev))
    };
    fn cuCtxDestroy(ctx: CUcontext) [PFN_cuCtxDestroy_v4000] => context::destroy_context(h(ctx));
    fn cuCtxDestroy_v2(ctx: CUcontext) [PFN_cuCtxDestroy_v4000] => context::destroy_context(h(ctx));
    fn cuCtxPushCurrent(ctx: CUcontext) [PFN_cuCtxPushCurrent_v4000] => context::push(h(ctx));
    fn cuCtxPushCurrent_v2(ctx: CUcontext) [PFN_cuCtxPushCurrent_v4000] => context::push(h(ctx));
    fn cuCtxPopCurrent(pctx: *mut CUcontext) [PFN_cuCtxPopCurrent_v4000] => cuCtxPopCurrent_body(pctx);
    fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) [PFN_cuCtxPopCurrent_v4000] => cuCtxPopCurrent_body(pctx);
    fn cuCtxSetCurrent(ctx: CUcontext) [PFN_cuCtxSetCurrent_v4000] => context::set_current(h(ctx));
    fn cuCtxGetCurrent(pctx: *mut CUcontext) [PFN_cuCtxGetCurrent_v4000] => make_handle(pctx, context::get_current);
    fn cuCtxGetDevice(device: *mut CUdevice) [PFN_cuCtxGetDevice_v2000] => {
        ready()?;
        let out = Out::new(device)?;
        out.write(context::current_device()?);
        Ok(())
    };
    fn cuCtxSynchronize() [PFN_cuCtxSynchronize_v2000] => context::synchronize();
    fn cuCtxGetApiVersion(ctx: CUcontext, version: *mut c_uint) [PFN_cuCtxGetApiVersion_v3020] => {
        ready()?;
        let out = Out::new(version)?;
        out.write(context::api_version(h(ctx))?);
        Ok(())
    };
    fn cuCtxGetFlags(flags: *mut c_uint) [PFN_cuCtxGetFlags_v7000] => {
        ready()?;
        let out = Out::new(flags)?;
        out.write(context::flags()?);
        Ok(())
    };
    fn cuCtxSetFlags(flags: c_uint) [PFN_cuCtxSetFlags_v12010] => context::set_flags(flags);
    fn cuCtxGetId(ctx: CUcontext, ctxId: *mut c_ulonglong) [PFN_cuCtxGetId_v12000] => {
        ready()?;
        let out = Out::new(ctxId)?;
        out.write(context::id(h(ctx))?);
        Ok(())
    };
    fn cuCtxGetLimit(pvalue: *mut usize, limit: CUlimit) [PFN_cuCtxGetLimit_v3010] => {
        ready()?;
        let out = Out::new(pvalue)?;
        out.write(context::limit(limit.0)?);
        Ok(())
    };
    fn cuCtxSetLimit(limit: CUlimit, value: usize) [PFN_cuCtxSetLimit_v3010] => context::set_limit(limit.0, value);
    fn cuCtxGetCacheConfig(pconfig: *mut CUfunc_cache) [PFN_cuCtxGetCacheConfig_v3020] => {
        ready()?;
        let out = Out::new(pconfig)?;
        out.write(CUfunc_cache(context::cache_config()?));
        Ok(())
    };
    fn cuCtxSetCacheConfig(config: CUfunc_cache) [PFN_cuCtxSetCacheConfig_v3020] => context::set_cache_config(config.0);
    fn cuCtxGetStreamPriorityRange(leastPriority: *mut c_int, greatestPriority: *mut c_int) [PFN_cuCtxGetStreamPriorityRange_v5050] => {
        ready()?;
        if let Some(o) = Out::optional(leastPriority) {
            o.write(stream::LEAST_PRIORITY);
        }
        if let Some(o) = Out::optional(greatestPriority) {
            o.write(stream::GREATEST_PRIORITY);
        }
        Ok(())
    };

    // ---- device memory ----
    fn cuMemAlloc(dptr: *mut CUdeviceptr_v1, bytesize: c_uint) [] =>
        alloc_to(dptr, bytesize as u64, AllocKind::Device, true, |p| p as CUdeviceptr_v1);
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) [PFN_cuMemAlloc_v3020] =>
        alloc_to(dptr, bytesize as u64, AllocKind::Device, false, |p| p);
    fn cuMemAllocPitch(dptr: *mut CUdeviceptr_v1, pPitch: *mut c_uint, WidthInBytes: c_uint, Height: c_uint, ElementSizeBytes: c_uint) [] => {
        ready()?;
        let (dptr, pitch) = (Out::new(dptr)?, Out::new(pPitch)?);
        let (ptr, pitch_bytes) = memory::alloc_pitch(WidthInBytes as u64, Height as u64, ElementSizeBytes, true)?;
        dptr.write(ptr as CUdeviceptr_v1);
        pitch.write(pitch_bytes as c_uint);
        Ok(())
    };
    fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pPitch: *mut usize, WidthInBytes: usize, Height: usize, ElementSizeBytes: c_uint) [PFN_cuMemAllocPitch_v3020] => {
        ready()?;
        let (dptr, pitch) = (Out::new(dptr)?, Out::new(pPitch)?);
        let (ptr, pitch_bytes) = memory::alloc_pitch(WidthInBytes as u64, Height as u64, ElementSizeBytes, false)?;
        dptr.write(ptr);
        pitch.write(pitch_bytes as usize);
        Ok(())
    };
    fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint) [PFN_cuMemAllocManaged_v6000] => {
        // CU_MEM_ATTACH_GLOBAL (1) or CU_MEM_ATTACH_HOST (2).
        if flags != 1 && flags != 2 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        alloc_to(dptr, bytesize as u64, AllocKind::Managed, false, |p| p)
    };
    fn cuMemFree(dptr: CUdeviceptr_v1) [] => memory::free(dptr as u64);
    fn cuMemFree_v2(dptr: CUdeviceptr) [PFN_cuMemFree_v3020] => memory::free(dptr);
    fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) [] => {
        ready()?;
        let (free, total) = (Out::new(free)?, Out::new(total)?);
        let (f, t) = memory::info()?;
        free.write(f.min(u32::MAX as u64) as c_uint);
        total.write(t.min(u32::MAX as u64) as c_uint);
        Ok(())
    };
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) [PFN_cuMemGetInfo_v3020] => mem_info(free, total);
    fn cuMemGetAddressRange(pbase: *mut CUdeviceptr_v1, psize: *mut c_uint, dptr: CUdeviceptr_v1) [] => {
        let (b, s) = memory::address_range(dptr as u64)?;
        if let Some(o) = Out::optional(pbase) {
            o.write(narrow(b)?);
        }
        if let Some(o) = Out::optional(psize) {
            o.write(narrow(s)?);
        }
        Ok(())
    };
    fn cuMemGetAddressRange_v2(pbase: *mut CUdeviceptr, psize: *mut usize, dptr: CUdeviceptr) [PFN_cuMemGetAddressRange_v3020] =>
        address_range(pbase, psize, dptr);
    fn cuPointerGetAttribute(data: *mut c_void, attribute: CUpointer_attribute, ptr: CUdeviceptr) [PFN_cuPointerGetAttribute_v4000] => {
        ready()?;
        if data.is_null() {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        let info = memory::pointer_info(ptr)?;
        pointer_attribute(data, attribute.0, ptr, info.as_ref())
    };
    fn cuPointerGetAttributes(numAttributes: c_uint, attributes: *mut CUpointer_attribute, data: *mut *mut c_void, ptr: CUdeviceptr) [PFN_cuPointerGetAttributes_v7000] =>
        pointer_attributes(numAttributes, attributes, data, ptr);

    // ---- pinned host memory ----
    fn cuMemAllocHost(pp: *mut *mut c_void, bytesize: c_uint) [] => make_handle(pp, || memory::host_alloc(bytesize as u64, 0));
    fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) [PFN_cuMemAllocHost_v3020] => make_handle(pp, || memory::host_alloc(bytesize as u64, 0));
    fn cuMemHostAlloc(pp: *mut *mut c_void, bytesize: usize, Flags: c_uint) [PFN_cuMemHostAlloc_v2020] => make_handle(pp, || memory::host_alloc(bytesize as u64, Flags));
    fn cuMemFreeHost(p: *mut c_void) [PFN_cuMemFreeHost_v2000] => memory::host_free(p as u64);
    fn cuMemHostGetDevicePointer_v2(pdptr: *mut CUdeviceptr, p: *mut c_void, Flags: c_uint) [PFN_cuMemHostGetDevicePointer_v3020] => {
        ready()?;
        let out = Out::new(pdptr)?;
        out.write(memory::host_device_pointer(p as u64, Flags)?);
        Ok(())
    };
    fn cuMemHostGetFlags(pFlags: *mut c_uint, p: *mut c_void) [PFN_cuMemHostGetFlags_v2030] => {
        ready()?;
        let out = Out::new(pFlags)?;
        out.write(memory::host_flags(p as u64)?);
        Ok(())
    };
    fn cuMemHostRegister(p: *mut c_void, bytesize: usize, Flags: c_uint) [PFN_cuMemHostRegister_v6050] => memory::host_register(p as u64, bytesize as u64, Flags);
    fn cuMemHostRegister_v2(p: *mut c_void, bytesize: usize, Flags: c_uint) [PFN_cuMemHostRegister_v6050] => memory::host_register(p as u64, bytesize as u64, Flags);
    fn cuMemHostUnregister(p: *mut c_void) [PFN_cuMemHostUnregister_v4000] => memory::host_unregister(p as u64);

    // ---- stream-ordered allocation and pools ----
    fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytesize: usize, hStream: CUstream) [PFN_cuMemAllocAsync_v11020] => {
        ready()?;
        let out = Out::new(dptr)?;
        out.write(memory::alloc_async(bytesize as u64, None, h(hStream), false)?);
        Ok(())
    };
    fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, hStream: CUstream) [PFN_cuMemAllocAsync_v11020_ptsz] => {
        ready()?;
        let out = Out::new(dptr)?;
        out.write(memory::alloc_async(bytesize as u64, None, h(hStream), true)?);
        Ok(())
    };
    fn cuMemFreeAsync(dptr: CUdeviceptr, hStream: CUstream) [PFN_cuMemFreeAsync_v11020] => memory::free_async(dptr, h(hStream), false);
    fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, hStream: CUstream) [PFN_cuMemFreeAsync_v11020_ptsz] => memory::free_async(dptr, h(hStream), true);
    fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, hStream: CUstream) [PFN_cuMemAllocFromPoolAsync_v11020] => {
        ready()?;
        let out = Out::new(dptr)?;
        out.write(memory::alloc_async(bytesize as u64, Some(h(pool)), h(hStream), false)?);
        Ok(())
    };
    fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, bytesize: usize, pool: CUmemoryPool, hStream: CUstream) [PFN_cuMemAllocFromPoolAsync_v11020_ptsz] => {
        ready()?;
        let out = Out::new(dptr)?;
        out.write(memory::alloc_async(bytesize as u64, Some(h(pool)), h(hStream), true)?);
        Ok(())
    };
    fn cuMemPoolCreate(pool: *mut CUmemoryPool, poolProps: *const CUmemPoolProps) [PFN_cuMemPoolCreate_v11020] => {
        ready()?;
        let out = Out::new(pool)?;
        out.write(p(memory::pool_create(sys::read(poolProps)?)?));
        Ok(())
    };
    fn cuMemPoolDestroy(pool: CUmemoryPool) [PFN_cuMemPoolDestroy_v11020] => memory::pool_destroy(h(pool));
    fn cuMemPoolTrimTo(pool: CUmemoryPool, minBytesToKeep: usize) [PFN_cuMemPoolTrimTo_v11020] => memory::pool_trim_to(h(pool), minBytesToKeep as u64);
    fn cuMemPoolGetAttribute(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) [PFN_cuMemPoolGetAttribute_v11020] => pool_get(pool, attr, value);
    fn cuMemPoolSetAttribute(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) [PFN_cuMemPoolSetAttribute_v11020] => pool_set(pool, attr, value);

    // ---- virtual memory management ----
    fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: c_ulonglong) [PFN_cuMemCreate_v10020] => {
        ready()?;
        let out = Out::new(handle)?;
        out.write(vmm::create(size as u64, &sys::read(prop)?, flags)?);
        Ok(())
    };
    fn cuMemRelease(handle: CUmemGenericAllocationHandle) [PFN_cuMemRelease_v10020] => vmm::release(handle);
    fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, addr: CUdeviceptr, flags: c_ulonglong) [PFN_cuMemAddressReserve_v10020] => {
        ready()?;
        let out = Out::new(ptr)?;
        out.write(vmm::address_reserve(size as u64, alignment as u64, addr, flags)?);
        Ok(())
    };
    fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) [PFN_cuMemAddressFree_v10020] => vmm::address_free(ptr, size as u64);
    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: c_ulonglong) [PFN_cuMemMap_v10020] =>
        vmm::map(ptr, size as u64, offset as u64, handle, flags);
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) [PFN_cuMemUnmap_v10020] => vmm::unmap(ptr, size as u64);
    fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const CUmemAccessDesc, count: usize) [PFN_cuMemSetAccess_v10020] =>
        vmm::set_access(ptr, size as u64, &sys::read_array(desc, count)?);
    fn cuMemGetAccess(flags: *mut c_ulonglong, location: *const CUmemLocation, ptr: CUdeviceptr) [PFN_cuMemGetAccess_v10020] => {
        ready()?;
        let out = Out::new(flags)?;
        let loc = sys::read(location)?;
        out.write(vmm::access(loc.id, ptr)?);
        Ok(())
    };
    fn cuMemGetAllocationGranularity(granularity: *mut usize, prop: *const CUmemAllocationProp, option: CUmemAllocationGranularity_flags) [PFN_cuMemGetAllocationGranularity_v10020] => {
        ready()?;
        let out = Out::new(granularity)?;
        out.write(vmm::granularity(&sys::read(prop)?, option.0)? as usize);
        Ok(())
    };
    fn cuMemGetAllocationPropertiesFromHandle(prop: *mut CUmemAllocationProp, handle: CUmemGenericAllocationHandle) [PFN_cuMemGetAllocationPropertiesFromHandle_v10020] => {
        ready()?;
        let out = Out::new(prop)?;
        out.write(vmm::properties(handle)?);
        Ok(())
    };
    fn cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) [PFN_cuMemRetainAllocationHandle_v11000] => {
        ready()?;
        let out = Out::new(handle)?;
        out.write(vmm::retain(addr as u64)?);
        Ok(())
    };

    // ---- arrays ----
    fn cuArrayCreate(pHandle: *mut CUarray, pAllocateArray: *const CUDA_ARRAY_DESCRIPTOR_v1) [] => {
        ready()?;
        let d = sys::read(pAllocateArray)?;
        make_handle(pHandle, || memory::array_create(array_shape(d.Width as u64, d.Height as u64, 0, d.Format, d.NumChannels, 1), false))
    };
    fn cuArrayCreate_v2(pHandle: *mut CUarray, pAllocateArray: *const CUDA_ARRAY_DESCRIPTOR) [PFN_cuArrayCreate_v3020] => {
        ready()?;
        let d = sys::read(pAllocateArray)?;
        make_handle(pHandle, || memory::array_create(array_shape(d.Width as u64, d.Height as u64, 0, d.Format, d.NumChannels, 1), false))
    };
    fn cuArray3DCreate(pHandle: *mut CUarray, pAllocateArray: *const CUDA_ARRAY3D_DESCRIPTOR_v1) [] => {
        ready()?;
        let d = sys::read(pAllocateArray)?;
        make_handle(pHandle, || memory::array_create(array_shape(d.Width as u64, d.Height as u64, d.Depth as u64, d.Format, d.NumChannels, 1), false))
    };
    fn cuArray3DCreate_v2(pHandle: *mut CUarray, pAllocateArray: *const CUDA_ARRAY3D_DESCRIPTOR) [PFN_cuArray3DCreate_v3020] => {
        ready()?;
        let d = sys::read(pAllocateArray)?;
        make_handle(pHandle, || memory::array_create(array_shape(d.Width as u64, d.Height as u64, d.Depth as u64, d.Format, d.NumChannels, 1), false))
    };
    fn cuArrayDestroy(hArray: CUarray) [PFN_cuArrayDestroy_v2000] => memory::array_destroy(h(hArray), false);
    fn cuMipmappedArrayCreate(pHandle: *mut CUmipmappedArray, pMipmappedArrayDesc: *const CUDA_ARRAY3D_DESCRIPTOR, numMipmapLevels: c_uint) [PFN_cuMipmappedArrayCreate_v5000] => {
        ready()?;
        let d = sys::read(pMipmappedArrayDesc)?;
        make_handle(pHandle, || memory::array_create(array_shape(d.Width as u64, d.Height as u64, d.Depth as u64, d.Format, d.NumChannels, numMipmapLevels), true))
    };
    fn cuMipmappedArrayDestroy(hMipmappedArray: CUmipmappedArray) [PFN_cuMipmappedArrayDestroy_v5000] => memory::array_destroy(h(hMipmappedArray), true);

    // ---- copies ----
    fn cuMemcpyHtoD(dstDevice: CUdeviceptr_v1, srcHost: *const c_void, ByteCount: c_uint) [] =>
        memory::copy(dstDevice as u64, srcHost as u64, ByteCount as u64, Direction::HostToDevice, Order::sync(false));
    fn cuMemcpyHtoD_v2(dstDevice: CUdeviceptr, srcHost: *const c_void, ByteCount: usize) [PFN_cuMemcpyHtoD_v3020] =>
        memory::copy(dstDevice, srcHost as u64, ByteCount as u64, Direction::HostToDevice, Order::sync(false));
    fn cuMemcpyHtoD_v2_ptds(dstDevice: CUdeviceptr, srcHost: *const c_void, ByteCount: usize) [PFN_cuMemcpyHtoD_v7000_ptds] =>
        memory::copy(dstDevice, srcHost as u64, ByteCount as u64, Direction::HostToDevice, Order::sync(true));
    fn cuMemcpyDtoH(dstHost: *mut c_void, srcDevice: CUdeviceptr_v1, ByteCount: c_uint) [] =>
        memory::copy(dstHost as u64, srcDevice as u64, ByteCount as u64, Direction::DeviceToHost, Order::sync(false));
    fn cuMemcpyDtoH_v2(dstHost: *mut c_void, srcDevice: CUdeviceptr, ByteCount: usize) [PFN_cuMemcpyDtoH_v3020] =>
        memory::copy(dstHost as u64, srcDevice, ByteCount as u64, Direction::DeviceToHost, Order::sync(false));
    fn cuMemcpyDtoH_v2_ptds(dstHost: *mut c_void, srcDevice: CUdeviceptr, ByteCount: usize) [PFN_cuMemcpyDtoH_v7000_ptds] =>
        memory::copy(dstHost as u64, srcDevice, ByteCount as u64, Direction::DeviceToHost, Order::sync(true));
    fn cuMemcpyDtoD(dstDevice: CUdeviceptr_v1, srcDevice: CUdeviceptr_v1, ByteCount: c_uint) [] =>
        memory::copy(dstDevice as u64, srcDevice as u64, ByteCount as u64, Direction::DeviceToDevice, Order::sync(false));
    fn cuMemcpyDtoD_v2(dstDevice: CUdeviceptr, srcDevice: CUdeviceptr, ByteCount: usize) [PFN_cuMemcpyDtoD_v3020] =>
        memory::copy(dstDevice, srcDevice, ByteCount as u64, Direction::DeviceToDevice, Order::sync(false));
    fn cuMemcpyDtoD_v2_ptds(dstDevice: CUdeviceptr, srcDevice: CUdeviceptr, ByteCount: usize) [PFN_cuMemcpyDtoD_v7000_ptds] =>
        memory::copy(dstDevice, srcDevice, ByteCount as u64, Direction::DeviceToDevice, Order::sync(true));
    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, ByteCount: usize) [PFN_cuMemcpy_v4000] =>
        memory::copy(dst, src, ByteCount as u64, Direction::Unified, Order::sync(false));
    fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, ByteCount: usize) [PFN_cuMemcpy_v7000_ptds] =>
        memory::copy(dst, src, ByteCount as u64, Direction::Unified, Order::sync(true));
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyAsync_v4000] =>
        memory::copy(dst, src, ByteCount as u64, Direction::Unified, Order::stream(h(hStream), false));
    fn cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyAsync_v7000_ptsz] =>
        memory::copy(dst, src, ByteCount as u64, Direction::Unified, Order::stream(h(hStream), true));
    fn cuMemcpyHtoDAsync(dstDevice: CUdeviceptr_v1, srcHost: *const c_void, ByteCount: c_uint, hStream: CUstream) [] =>
        memory::copy(dstDevice as u64, srcHost as u64, ByteCount as u64, Direction::HostToDevice, Order::stream(h(hStream), false));
    fn cuMemcpyHtoDAsync_v2(dstDevice: CUdeviceptr, srcHost: *const c_void, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyHtoDAsync_v3020] =>
        memory::copy(dstDevice, srcHost as u64, ByteCount as u64, Direction::HostToDevice, Order::stream(h(hStream), false));
    fn cuMemcpyHtoDAsync_v2_ptsz(dstDevice: CUdeviceptr, srcHost: *const c_void, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyHtoDAsync_v7000_ptsz] =>
        memory::copy(dstDevice, srcHost as u64, ByteCount as u64, Direction::HostToDevice, Order::stream(h(hStream), true));
    fn cuMemcpyDtoHAsync(dstHost: *mut c_void, srcDevice: CUdeviceptr_v1, ByteCount: c_uint, hStream: CUstream) [] =>
        memory::copy(dstHost as u64, srcDevice as u64, ByteCount as u64, Direction::DeviceToHost, Order::stream(h(hStream), false));
    fn cuMemcpyDtoHAsync_v2(dstHost: *mut c_void, srcDevice: CUdeviceptr, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyDtoHAsync_v3020] =>
        memory::copy(dstHost as u64, srcDevice, ByteCount as u64, Direction::DeviceToHost, Order::stream(h(hStream), false));
    fn cuMemcpyDtoHAsync_v2_ptsz(dstHost: *mut c_void, srcDevice: CUdeviceptr, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyDtoHAsync_v7000_ptsz] =>
        memory::copy(dstHost as u64, srcDevice, ByteCount as u64, Direction::DeviceToHost, Order::stream(h(hStream), true));
    fn cuMemcpyDtoDAsync(dstDevice: CUdeviceptr_v1, srcDevice: CUdeviceptr_v1, ByteCount: c_uint, hStream: CUstream) [] =>
        memory::copy(dstDevice as u64, srcDevice as u64, ByteCount as u64, Direction::DeviceToDevice, Order::stream(h(hStream), false));
    fn cuMemcpyDtoDAsync_v2(dstDevice: CUdeviceptr, srcDevice: CUdeviceptr, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyDtoDAsync_v3020] =>
        memory::copy(dstDevice, srcDevice, ByteCount as u64, Direction::DeviceToDevice, Order::stream(h(hStream), false));
    fn cuMemcpyDtoDAsync_v2_ptsz(dstDevice: CUdeviceptr, srcDevice: CUdeviceptr, ByteCount: usize, hStream: CUstream) [PFN_cuMemcpyDtoDAsync_v7000_ptsz] =>
        memory::copy(dstDevice, srcDevice, ByteCount as u64, Direction::DeviceToDevice, Order::stream(h(hStream), true));

    // ---- sets ----
    fn cuMemsetD8(dstDevice: CUdeviceptr_v1, uc: c_uchar, N: c_uint) [] => memory::set(dstDevice as u64, uc as u32, 1, N as u64, Order::sync(false));
    fn cuMemsetD8_v2(dstDevice: CUdeviceptr, uc: c_uchar, N: usize) [PFN_cuMemsetD8_v3020] => memory::set(dstDevice, uc as u32, 1, N as u64, Order::sync(false));
    fn cuMemsetD8_v2_ptds(dstDevice: CUdeviceptr, uc: c_uchar, N: usize) [PFN_cuMemsetD8_v7000_ptds] => memory::set(dstDevice, uc as u32, 1, N as u64, Order::sync(true));
    fn cuMemsetD16(dstDevice: CUdeviceptr_v1, us: c_ushort, N: c_uint) [] => memory::set(dstDevice as u64, us as u32, 2, N as u64, Order::sync(false));
    fn cuMemsetD16_v2(dstDevice: CUdeviceptr, us: c_ushort, N: usize) [PFN_cuMemsetD16_v3020] => memory::set(dstDevice, us as u32, 2, N as u64, Order::sync(false));
    fn cuMemsetD16_v2_ptds(dstDevice: CUdeviceptr, us: c_ushort, N: usize) [PFN_cuMemsetD16_v7000_ptds] => memory::set(dstDevice, us as u32, 2, N as u64, Order::sync(true));
    fn cuMemsetD32(dstDevice: CUdeviceptr_v1, ui: c_uint, N: c_uint) [] => memory::set(dstDevice as u64, ui, 4, N as u64, Order::sync(false));
    fn cuMemsetD32_v2(dstDevice: CUdeviceptr, ui: c_uint, N: usize) [PFN_cuMemsetD32_v3020] => memory::set(dstDevice, ui, 4, N as u64, Order::sync(false));
    fn cuMemsetD32_v2_ptds(dstDevice: CUdeviceptr, ui: c_uint, N: usize) [PFN_cuMemsetD32_v7000_ptds] => memory::set(dstDevice, ui, 4, N as u64, Order::sync(true));
    fn cuMemsetD8Async(dstDevice: CUdeviceptr, uc: c_uchar, N: usize, hStream: CUstream) [PFN_cuMemsetD8Async_v3020] =>
        memory::set(dstDevice, uc as u32, 1, N as u64, Order::stream(h(hStream), false));
    fn cuMemsetD8Async_ptsz(dstDevice: CUdeviceptr, uc: c_uchar, N: usize, hStream: CUstream) [PFN_cuMemsetD8Async_v7000_ptsz] =>
        memory::set(dstDevice, uc as u32, 1, N as u64, Order::stream(h(hStream), true));
    fn cuMemsetD16Async(dstDevice: CUdeviceptr, us: c_ushort, N: usize, hStream: CUstream) [PFN_cuMemsetD16Async_v3020] =>
        memory::set(dstDevice, us as u32, 2, N as u64, Order::stream(h(hStream), false));
    fn cuMemsetD16Async_ptsz(dstDevice: CUdeviceptr, us: c_ushort, N: usize, hStream: CUstream) [PFN_cuMemsetD16Async_v7000_ptsz] =>
        memory::set(dstDevice, us as u32, 2, N as u64, Order::stream(h(hStream), true));
    fn cuMemsetD32Async(dstDevice: CUdeviceptr, ui: c_uint, N: usize, hStream: CUstream) [PFN_cuMemsetD32Async_v3020] =>
        memory::set(dstDevice, ui, 4, N as u64, Order::stream(h(hStream), false));
    fn cuMemsetD32Async_ptsz(dstDevice: CUdeviceptr, ui: c_uint, N: usize, hStream: CUstream) [PFN_cuMemsetD32Async_v7000_ptsz] =>
        memory::set(dstDevice, ui, 4, N as u64, Order::stream(h(hStream), true));

    // ---- streams ----
    fn cuStreamCreate(phStream: *mut CUstream, Flags: c_uint) [PFN_cuStreamCreate_v2000] => make_handle(phStream, || stream::create(Flags, 0));
    fn cuStreamCreateWithPriority(phStream: *mut CUstream, flags: c_uint, priority: c_int) [PFN_cuStreamCreateWithPriority_v5050] =>
        make_handle(phStream, || stream::create(flags, priority));
    fn cuStreamDestroy(hStream: CUstream) [PFN_cuStreamDestroy_v4000] => stream::destroy(h(hStream));
    fn cuStreamDestroy_v2(hStream: CUstream) [PFN_cuStreamDestroy_v4000] => stream::destroy(h(hStream));
    fn cuStreamSynchronize(hStream: CUstream) [PFN_cuStreamSynchronize_v2000] => stream::synchronize(h(hStream), false);
    fn cuStreamSynchronize_ptsz(hStream: CUstream) [PFN_cuStreamSynchronize_v7000_ptsz] => stream::synchronize(h(hStream), true);
    fn cuStreamQuery(hStream: CUstream) [PFN_cuStreamQuery_v2000] => stream::query(h(hStream), false);
    fn cuStreamQuery_ptsz(hStream: CUstream) [PFN_cuStreamQuery_v7000_ptsz] => stream::query(h(hStream), true);
    fn cuStreamWaitEvent(hStream: CUstream, hEvent: CUevent, Flags: c_uint) [PFN_cuStreamWaitEvent_v3020] => stream::wait_event(h(hStream), h(hEvent), Flags, false);
    fn cuStreamWaitEvent_ptsz(hStream: CUstream, hEvent: CUevent, Flags: c_uint) [PFN_cuStreamWaitEvent_v7000_ptsz] => stream::wait_event(h(hStream), h(hEvent), Flags, true);
    fn cuStreamGetCtx(hStream: CUstream, pctx: *mut CUcontext) [PFN_cuStreamGetCtx_v9020] => make_handle(pctx, || stream::context_of(h(hStream), false));
    fn cuStreamGetCtx_ptsz(hStream: CUstream, pctx: *mut CUcontext) [PFN_cuStreamGetCtx_v9020_ptsz] => make_handle(pctx, || stream::context_of(h(hStream), true));
    fn cuStreamGetFlags(hStream: CUstream, flags: *mut c_uint) [PFN_cuStreamGetFlags_v5050] => {
        ready()?;
        let out = Out::new(flags)?;
        out.write(stream::flags(h(hStream), false)?);
        Ok(())
    };
    fn cuStreamGetFlags_ptsz(hStream: CUstream, flags: *mut c_uint) [PFN_cuStreamGetFlags_v7000_ptsz] => {
        ready()?;
        let out = Out::new(flags)?;
        out.write(stream::flags(h(hStream), true)?);
        Ok(())
    };
    fn cuStreamGetPriority(hStream: CUstream, priority: *mut c_int) [PFN_cuStreamGetPriority_v5050] => {
        ready()?;
        let out = Out::new(priority)?;
        out.write(stream::priority(h(hStream), false)?);
        Ok(())
    };
    fn cuStreamGetPriority_ptsz(hStream: CUstream, priority: *mut c_int) [PFN_cuStreamGetPriority_v7000_ptsz] => {
        ready()?;
        let out = Out::new(priority)?;
        out.write(stream::priority(h(hStream), true)?);
        Ok(())
    };
    fn cuStreamGetId(hStream: CUstream, streamId: *mut c_ulonglong) [PFN_cuStreamGetId_v12000] => {
        ready()?;
        let out = Out::new(streamId)?;
        out.write(stream::id(h(hStream), false)?);
        Ok(())
    };
    fn cuStreamGetId_ptsz(hStream: CUstream, streamId: *mut c_ulonglong) [PFN_cuStreamGetId_v12000_ptsz] => {
        ready()?;
        let out = Out::new(streamId)?;
        out.write(stream::id(h(hStream), true)?);
        Ok(())
    };

    // ---- events ----
    fn cuEventCreate(phEvent: *mut CUevent, Flags: c_uint) [PFN_cuEventCreate_v2000] => make_handle(phEvent, || stream::event_create(Flags));
    fn cuEventRecord(hEvent: CUevent, hStream: CUstream) [PFN_cuEventRecord_v2000] => stream::event_record(h(hEvent), h(hStream), 0, false);
    fn cuEventRecord_ptsz(hEvent: CUevent, hStream: CUstream) [PFN_cuEventRecord_v7000_ptsz] => stream::event_record(h(hEvent), h(hStream), 0, true);
    fn cuEventRecordWithFlags(hEvent: CUevent, hStream: CUstream, flags: c_uint) [PFN_cuEventRecordWithFlags_v11010] =>
        stream::event_record(h(hEvent), h(hStream), flags, false);
    fn cuEventRecordWithFlags_ptsz(hEvent: CUevent, hStream: CUstream, flags: c_uint) [PFN_cuEventRecordWithFlags_v11010_ptsz] =>
        stream::event_record(h(hEvent), h(hStream), flags, true);
    fn cuEventSynchronize(hEvent: CUevent) [PFN_cuEventSynchronize_v2000] => stream::event_synchronize(h(hEvent));
    fn cuEventQuery(hEvent: CUevent) [PFN_cuEventQuery_v2000] => stream::event_query(h(hEvent));
    fn cuEventElapsedTime(pMilliseconds: *mut f32, hStart: CUevent, hEnd: CUevent) [PFN_cuEventElapsedTime_v2000] => {
        ready()?;
        let out = Out::new(pMilliseconds)?;
        out.write(stream::elapsed_ms(h(hStart), h(hEnd))?);
        Ok(())
    };
    fn cuEventElapsedTime_v2(pMilliseconds: *mut f32, hStart: CUevent, hEnd: CUevent) [PFN_cuEventElapsedTime_v12080] => {
        ready()?;
        let out = Out::new(pMilliseconds)?;
        out.write(stream::elapsed_ms(h(hStart), h(hEnd))?);
        Ok(())
    };
    fn cuEventDestroy(hEvent: CUevent) [PFN_cuEventDestroy_v4000] => stream::event_destroy(h(hEvent));
    fn cuEventDestroy_v2(hEvent: CUevent) [PFN_cuEventDestroy_v4000] => stream::event_destroy(h(hEvent));

    // ---- modules and libraries ----
    fn cuModuleLoad(module: *mut CUmodule, fname: *const c_char) [PFN_cuModuleLoad_v2000] => {
        ready()?;
        let out = Out::new(module)?;
        out.write(p(module::load(module::read_image_file(fname)?)?));
        Ok(())
    };
    fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) [PFN_cuModuleLoadData_v2000] => {
        ready()?;
        let out = Out::new(module)?;
        out.write(p(module::load(module::read_image(image)?)?));
        Ok(())
    };
    fn cuModuleLoadDataEx(module: *mut CUmodule, image: *const c_void, numOptions: c_uint, options: *mut CUjit_option, optionValues: *mut *mut c_void) [PFN_cuModuleLoadDataEx_v2010] => {
        ready()?;
        let out = Out::new(module)?;
        if numOptions > 0 && (options.is_null() || optionValues.is_null()) {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        out.write(p(module::load(module::read_image(image)?)?));
        Ok(())
    };
    fn cuModuleLoadFatBinary(module: *mut CUmodule, fatCubin: *const c_void) [PFN_cuModuleLoadFatBinary_v2000] => {
        ready()?;
        let out = Out::new(module)?;
        out.write(p(module::load(module::read_image(fatCubin)?)?));
        Ok(())
    };
    fn cuModuleUnload(hmod: CUmodule) [PFN_cuModuleUnload_v2000] => module::unload(h(hmod));
    fn cuModuleGetFunction(hfunc: *mut CUfunction, hmod: CUmodule, name: *const c_char) [PFN_cuModuleGetFunction_v2000] =>
        make_handle(hfunc, || module::get_function(h(hmod), name));
    fn cuModuleGetGlobal(dptr: *mut CUdeviceptr_v1, bytes: *mut c_uint, hmod: CUmodule, name: *const c_char) [] => {
        let (addr, size) = module::get_global(h(hmod), name)?;
        if let Some(o) = Out::optional(dptr) {
            o.write(narrow(addr)?);
        }
        if let Some(o) = Out::optional(bytes) {
            o.write(narrow(size)?);
        }
        Ok(())
    };
    fn cuModuleGetGlobal_v2(dptr: *mut CUdeviceptr, bytes: *mut usize, hmod: CUmodule, name: *const c_char) [PFN_cuModuleGetGlobal_v3020] =>
        module_global(dptr, bytes, hmod, name);
    fn cuModuleGetLoadingMode(mode: *mut CUmoduleLoadingMode) [PFN_cuModuleGetLoadingMode_v11070] => {
        ready()?;
        put(mode, module_loading_mode())
    };
    fn cuLibraryLoadData(library: *mut CUlibrary, code: *const c_void, jitOptions: *mut CUjit_option, jitOptionsValues: *mut *mut c_void, numJitOptions: c_uint, libraryOptions: *mut CUlibraryOption, libraryOptionValues: *mut *mut c_void, numLibraryOptions: c_uint) [PFN_cuLibraryLoadData_v12000] => {
        ready()?;
        let out = Out::new(library)?;
        if (numJitOptions > 0 && (jitOptions.is_null() || jitOptionsValues.is_null()))
            || (numLibraryOptions > 0 && (libraryOptions.is_null() || libraryOptionValues.is_null()))
        {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        out.write(p(module::library_load(module::read_image(code)?)?));
        Ok(())
    };
    fn cuLibraryUnload(library: CUlibrary) [PFN_cuLibraryUnload_v12000] => module::library_unload(h(library));
    fn cuLibraryGetKernel(pKernel: *mut CUkernel, library: CUlibrary, name: *const c_char) [PFN_cuLibraryGetKernel_v12000] =>
        make_handle(pKernel, || module::library_kernel(h(library), name));
    fn cuLibraryGetModule(pMod: *mut CUmodule, library: CUlibrary) [PFN_cuLibraryGetModule_v12000] =>
        make_handle(pMod, || module::library_module_handle(h(library)));
    fn cuKernelGetFunction(pFunc: *mut CUfunction, kernel: CUkernel) [PFN_cuKernelGetFunction_v12000] =>
        make_handle(pFunc, || module::kernel_get_function(h(kernel)));

    // ---- launches and functions ----
    fn cuLaunchKernel(f: CUfunction, gridDimX: c_uint, gridDimY: c_uint, gridDimZ: c_uint, blockDimX: c_uint, blockDimY: c_uint, blockDimZ: c_uint, sharedMemBytes: c_uint, hStream: CUstream, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) [PFN_cuLaunchKernel_v4000] =>
        kernel_launch(f, [gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ], sharedMemBytes, hStream, kernelParams, extra, false, false);
    fn cuLaunchKernel_ptsz(f: CUfunction, gridDimX: c_uint, gridDimY: c_uint, gridDimZ: c_uint, blockDimX: c_uint, blockDimY: c_uint, blockDimZ: c_uint, sharedMemBytes: c_uint, hStream: CUstream, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) [PFN_cuLaunchKernel_v7000_ptsz] =>
        kernel_launch(f, [gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ], sharedMemBytes, hStream, kernelParams, extra, true, false);
    fn cuLaunchKernelEx(config: *const CUlaunchConfig, f: CUfunction, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) [PFN_cuLaunchKernelEx_v11060] =>
        launch_ex(config, f, kernelParams, extra, false);
    fn cuLaunchKernelEx_ptsz(config: *const CUlaunchConfig, f: CUfunction, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) [PFN_cuLaunchKernelEx_v11060_ptsz] =>
        launch_ex(config, f, kernelParams, extra, true);
    fn cuLaunchCooperativeKernel(f: CUfunction, gridDimX: c_uint, gridDimY: c_uint, gridDimZ: c_uint, blockDimX: c_uint, blockDimY: c_uint, blockDimZ: c_uint, sharedMemBytes: c_uint, hStream: CUstream, kernelParams: *mut *mut c_void) [PFN_cuLaunchCooperativeKernel_v9000] =>
        kernel_launch(f, [gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ], sharedMemBytes, hStream, kernelParams, std::ptr::null_mut(), false, true);
    fn cuLaunchCooperativeKernel_ptsz(f: CUfunction, gridDimX: c_uint, gridDimY: c_uint, gridDimZ: c_uint, blockDimX: c_uint, blockDimY: c_uint, blockDimZ: c_uint, sharedMemBytes: c_uint, hStream: CUstream, kernelParams: *mut *mut c_void) [PFN_cuLaunchCooperativeKernel_v9000_ptsz] =>
        kernel_launch(f, [gridDimX, gridDimY, gridDimZ], [blockDimX, blockDimY, blockDimZ], sharedMemBytes, hStream, kernelParams, std::ptr::null_mut(), true, true);
    fn cuLaunchCooperativeKernelMultiDevice(launchParamsList: *mut CUDA_LAUNCH_PARAMS, numDevices: c_uint, flags: c_uint) [PFN_cuLaunchCooperativeKernelMultiDevice_v9000] =>
        launch_multi_device(launchParamsList, numDevices, flags);
    fn cuFuncGetAttribute(pi: *mut c_int, attrib: CUfunction_attribute, hfunc: CUfunction) [PFN_cuFuncGetAttribute_v2020] => {
        ready()?;
        let out = Out::new(pi)?;
        out.write(module::attribute(h(hfunc), attrib.0)?);
        Ok(())
    };
    fn cuFuncSetAttribute(hfunc: CUfunction, attrib: CUfunction_attribute, value: c_int) [PFN_cuFuncSetAttribute_v9000] =>
        module::set_attribute(h(hfunc), attrib.0, value);
    fn cuFuncSetCacheConfig(hfunc: CUfunction, config: CUfunc_cache) [PFN_cuFuncSetCacheConfig_v3000] => module::set_cache_config(h(hfunc), config.0);
    fn cuFuncGetModule(hmod: *mut CUmodule, hfunc: CUfunction) [PFN_cuFuncGetModule_v11000] => make_handle(hmod, || module::function_module(h(hfunc)));
    fn cuOccupancyMaxActiveBlocksPerMultiprocessor(numBlocks: *mut c_int, func: CUfunction, blockSize: c_int, dynamicSMemSize: usize) [PFN_cuOccupancyMaxActiveBlocksPerMultiprocessor_v6050] => {
        ready()?;
        let out = Out::new(numBlocks)?;
        out.write(launch::max_active_blocks(h(func), blockSize, dynamicSMemSize as u64)?);
        Ok(())
    };
    fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks: *mut c_int, func: CUfunction, blockSize: c_int, dynamicSMemSize: usize, flags: c_uint) [PFN_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags_v7000] => {
        ready()?;
        let out = Out::new(numBlocks)?;
        if flags > 1 {
            return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        }
        out.write(launch::max_active_blocks(h(func), blockSize, dynamicSMemSize as u64)?);
        Ok(())
    };

    // ---- stream capture ----
    fn cuStreamBeginCapture(hStream: CUstream) [] => begin_capture(hStream, 0, false);
    fn cuStreamBeginCapture_ptsz(hStream: CUstream) [] => begin_capture(hStream, 0, true);
    fn cuStreamBeginCapture_v2(hStream: CUstream, mode: CUstreamCaptureMode) [PFN_cuStreamBeginCapture_v10010] => begin_capture(hStream, mode.0, false);
    fn cuStreamBeginCapture_v2_ptsz(hStream: CUstream, mode: CUstreamCaptureMode) [PFN_cuStreamBeginCapture_v10010_ptsz] => begin_capture(hStream, mode.0, true);
    fn cuStreamEndCapture(hStream: CUstream, phGraph: *mut CUgraph) [PFN_cuStreamEndCapture_v10000] => end_capture(hStream, phGraph, false);
    fn cuStreamEndCapture_ptsz(hStream: CUstream, phGraph: *mut CUgraph) [PFN_cuStreamEndCapture_v10000_ptsz] => end_capture(hStream, phGraph, true);
    fn cuStreamIsCapturing(hStream: CUstream, captureStatus: *mut CUstreamCaptureStatus) [PFN_cuStreamIsCapturing_v10000] => is_capturing(hStream, captureStatus, false);
    fn cuStreamIsCapturing_ptsz(hStream: CUstream, captureStatus: *mut CUstreamCaptureStatus) [PFN_cuStreamIsCapturing_v10000_ptsz] => is_capturing(hStream, captureStatus, true);
    fn cuStreamGetCaptureInfo(hStream: CUstream, captureStatus_out: *mut CUstreamCaptureStatus, id_out: *mut cuuint64_t) [PFN_cuStreamGetCaptureInfo_v10010] =>
        capture_info(hStream, captureStatus_out, id_out, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), false);
    fn cuStreamGetCaptureInfo_ptsz(hStream: CUstream, captureStatus_out: *mut CUstreamCaptureStatus, id_out: *mut cuuint64_t) [PFN_cuStreamGetCaptureInfo_v10010_ptsz] =>
        capture_info(hStream, captureStatus_out, id_out, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), true);
    fn cuStreamGetCaptureInfo_v2(hStream: CUstream, captureStatus_out: *mut CUstreamCaptureStatus, id_out: *mut cuuint64_t, graph_out: *mut CUgraph, dependencies_out: *mut *const CUgraphNode, numDependencies_out: *mut usize) [PFN_cuStreamGetCaptureInfo_v11030] =>
        capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, std::ptr::null_mut(), numDependencies_out, false);
    fn cuStreamGetCaptureInfo_v2_ptsz(hStream: CUstream, captureStatus_out: *mut CUstreamCaptureStatus, id_out: *mut cuuint64_t, graph_out: *mut CUgraph, dependencies_out: *mut *const CUgraphNode, numDependencies_out: *mut usize) [PFN_cuStreamGetCaptureInfo_v11030_ptsz] =>
        capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, std::ptr::null_mut(), numDependencies_out, true);
    fn cuStreamGetCaptureInfo_v3(hStream: CUstream, captureStatus_out: *mut CUstreamCaptureStatus, id_out: *mut cuuint64_t, graph_out: *mut CUgraph, dependencies_out: *mut *const CUgraphNode, edgeData_out: *mut *const CUgraphEdgeData, numDependencies_out: *mut usize) [PFN_cuStreamGetCaptureInfo_v12030] =>
        capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out, numDependencies_out, false);
    fn cuStreamGetCaptureInfo_v3_ptsz(hStream: CUstream, captureStatus_out: *mut CUstreamCaptureStatus, id_out: *mut cuuint64_t, graph_out: *mut CUgraph, dependencies_out: *mut *const CUgraphNode, edgeData_out: *mut *const CUgraphEdgeData, numDependencies_out: *mut usize) [PFN_cuStreamGetCaptureInfo_v12030_ptsz] =>
        capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out, numDependencies_out, true);
    fn cuThreadExchangeStreamCaptureMode(mode: *mut CUstreamCaptureMode) [PFN_cuThreadExchangeStreamCaptureMode_v10010] => {
        ready()?;
        let current = sys::read(mode as *const CUstreamCaptureMode)?;
        let previous = graph::exchange_capture_mode(current.0)?;
        put(mode, CUstreamCaptureMode(previous))
    };

    // ---- graphs ----
    fn cuGraphCreate(phGraph: *mut CUgraph, flags: c_uint) [PFN_cuGraphCreate_v10000] => make_handle(phGraph, || graph::create(flags));
    fn cuGraphAddKernelNode(phGraphNode: *mut CUgraphNode, hGraph: CUgraph, dependencies: *const CUgraphNode, numDependencies: usize, nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v1) [PFN_cuGraphAddKernelNode_v10000] => {
        ready()?;
        let v1 = sys::read(nodeParams)?;
        let v2 = CUDA_KERNEL_NODE_PARAMS_v2 {
            func: v1.func,
            gridDimX: v1.gridDimX,
            gridDimY: v1.gridDimY,
            gridDimZ: v1.gridDimZ,
            blockDimX: v1.blockDimX,
            blockDimY: v1.blockDimY,
            blockDimZ: v1.blockDimZ,
            sharedMemBytes: v1.sharedMemBytes,
            kernelParams: v1.kernelParams,
            extra: v1.extra,
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        };
        add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, v2)
    };
    fn cuGraphAddKernelNode_v2(phGraphNode: *mut CUgraphNode, hGraph: CUgraph, dependencies: *const CUgraphNode, numDependencies: usize, nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v2) [PFN_cuGraphAddKernelNode_v12000] => {
        ready()?;
        add_kernel_node(phGraphNode, hGraph, dependencies, numDependencies, sys::read(nodeParams)?)
    };
    fn cuGraphInstantiate(phGraphExec: *mut CUgraphExec, hGraph: CUgraph, phErrorNode: *mut CUgraphNode, logBuffer: *mut c_char, bufferSize: usize) [] =>
        instantiate(phGraphExec, hGraph);
    fn cuGraphInstantiate_v2(phGraphExec: *mut CUgraphExec, hGraph: CUgraph, phErrorNode: *mut CUgraphNode, logBuffer: *mut c_char, bufferSize: usize) [] =>
        instantiate(phGraphExec, hGraph);
    fn cuGraphInstantiateWithFlags(phGraphExec: *mut CUgraphExec, hGraph: CUgraph, flags: c_ulonglong) [PFN_cuGraphInstantiateWithFlags_v11040] =>
        instantiate_with_flags(phGraphExec, hGraph, flags);
    fn cuGraphInstantiateWithParams(phGraphExec: *mut CUgraphExec, hGraph: CUgraph, instantiateParams: *mut CUDA_GRAPH_INSTANTIATE_PARAMS) [PFN_cuGraphInstantiateWithParams_v12000] =>
        instantiate_with_params(phGraphExec, hGraph, instantiateParams);
    fn cuGraphInstantiateWithParams_ptsz(phGraphExec: *mut CUgraphExec, hGraph: CUgraph, instantiateParams: *mut CUDA_GRAPH_INSTANTIATE_PARAMS) [PFN_cuGraphInstantiateWithParams_v12000_ptsz] =>
        instantiate_with_params(phGraphExec, hGraph, instantiateParams);
    fn cuGraphLaunch(hGraphExec: CUgraphExec, hStream: CUstream) [PFN_cuGraphLaunch_v10000] => graph::launch(h(hGraphExec), h(hStream), false);
    fn cuGraphLaunch_ptsz(hGraphExec: CUgraphExec, hStream: CUstream) [PFN_cuGraphLaunch_v10000_ptsz] => graph::launch(h(hGraphExec), h(hStream), true);
    fn cuGraphUpload(hGraphExec: CUgraphExec, hStream: CUstream) [PFN_cuGraphUpload_v11010] => graph::upload(h(hGraphExec), h(hStream), false);
    fn cuGraphUpload_ptsz(hGraphExec: CUgraphExec, hStream: CUstream) [PFN_cuGraphUpload_v11010_ptsz] => graph::upload(h(hGraphExec), h(hStream), true);
    fn cuGraphDestroy(hGraph: CUgraph) [PFN_cuGraphDestroy_v10000] => graph::destroy(h(hGraph));
    fn cuGraphExecDestroy(hGraphExec: CUgraphExec) [PFN_cuGraphExecDestroy_v10000] => graph::exec_destroy(h(hGraphExec));
    fn cuGraphGetNodes(hGraph: CUgraph, nodes: *mut CUgraphNode, numNodes: *mut usize) [PFN_cuGraphGetNodes_v10000] => graph_nodes(hGraph, nodes, numNodes);
}

fn cuDeviceGetUuid_body(uuid: *mut CUuuid, dev: CUdevice) -> CuResult {
    ready()?;
    let out = Out::new(uuid)?;
    let bytes = device::with(dev, |d| d.uuid)?;
    out.write(CUuuid {
        bytes: bytes.map(|b| b as c_char),
    });
    Ok(())
}

fn cuCtxPopCurrent_body(pctx: *mut CUcontext) -> CuResult {
    let popped = context::pop()?;
    if let Some(o) = Out::optional(pctx) {
        o.write(p(popped));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_export_is_a_declared_driver_symbol() {
        for e in EXPORTS {
            assert!(
                vgpu_abi::proc_table::DECLARED_SYMBOLS
                    .binary_search(&e.name)
                    .is_ok(),
                "{} is not a cuda.h entry point",
                e.name
            );
        }
        let mut names: Vec<&str> = EXPORTS.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EXPORTS.len(), "an export is listed twice");
    }

    #[test]
    fn proc_address_resolves_to_our_own_functions() {
        let v2 = proc_address::resolve("cuGetProcAddress", 12000, 0).unwrap();
        assert_eq!(v2, cuGetProcAddress_v2 as *mut c_void);
        let v1 = proc_address::resolve("cuGetProcAddress", 11030, 0).unwrap();
        assert_eq!(v1, cuGetProcAddress as *mut c_void);
        assert_eq!(
            proc_address::resolve("cuMemAlloc", 3020, 0).unwrap(),
            cuMemAlloc_v2 as *mut c_void
        );
        assert_eq!(
            proc_address::resolve("cuMemAlloc", 2000, 0).unwrap(),
            cuMemAlloc as *mut c_void
        );
        assert_eq!(
            proc_address::resolve("cuLaunchKernel", 12000, 2).unwrap(),
            cuLaunchKernel_ptsz as *mut c_void
        );
        assert_eq!(
            proc_address::resolve("cuMemcpyHtoD", 12000, 2).unwrap(),
            cuMemcpyHtoD_v2_ptds as *mut c_void
        );
        let not_found = proc_address::resolve("cuNoSuchThing", 12000, 0).unwrap_err();
        assert_eq!(
            not_found.1,
            CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
        );
        let too_old = proc_address::resolve("cuLaunchKernel", 3000, 0).unwrap_err();
        assert_eq!(
            too_old.1,
            CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
        );
        // Known to the table but not simulated.
        let unimplemented = proc_address::resolve("cuTexRefSetAddress", 12000, 0).unwrap_err();
        assert_eq!(
            unimplemented,
            (
                CUresult::CUDA_ERROR_NOT_FOUND,
                CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
            )
        );
    }
}
