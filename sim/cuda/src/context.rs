//! Contexts: primary contexts (retain/release/reset), created contexts, and the per-thread stack.
//!
//! Every context costs `Driver::context_bytes` of device memory, charged to the machine when it is
//! made and given back when it is destroyed, so the machine's (and NVML's) view of a process matches
//! a real GPU's: a process that only created a context already uses a few hundred MiB.

use vgpu_abi::cuda::cudaError_enum as E;

use crate::driver::{self, driver, Driver, State};
use crate::error::CuResult;
use crate::handles::Handle;
use crate::{memory, stream};

/// `CU_LIMIT_*` values we keep (cuda.h 12.9 declares 0..=9).
const LIMIT_COUNT: usize = 10;
const DEFAULT_LIMITS: [usize; LIMIT_COUNT] = [
    1024,    // STACK_SIZE
    1 << 20, // PRINTF_FIFO_SIZE
    8 << 20, // MALLOC_HEAP_SIZE
    2,       // DEV_RUNTIME_SYNC_DEPTH
    2048,    // DEV_RUNTIME_PENDING_LAUNCH_COUNT
    64,      // MAX_L2_FETCH_GRANULARITY
    0,       // PERSISTING_L2_CACHE_SIZE
    0,       // SHMEM_SIZE
    0,       // CIG_ENABLED
    0,       // CIG_SHMEM_FALLBACK_ENABLED
];
/// The version `cuCtxGetApiVersion` reports: contexts made by the `_v2` ABIs.
const CONTEXT_API_VERSION: u32 = 3020;
/// Every defined `CU_CTX_*` flag bit (scheduling, map-host, lmem, coredump, sync-memops).
const CONTEXT_FLAGS_MASK: u32 = 0xff;

pub(crate) struct Context {
    pub device: u32,
    pub flags: u32,
    pub primary: bool,
    pub id: u64,
    /// This context's legacy default stream (`CU_STREAM_LEGACY`, and NULL for non-`_ptsz` calls).
    pub legacy: Handle,
    /// The latest end time of work queued on this context's blocking streams (the legacy stream
    /// waits for all of it).
    pub blocking_tail_ns: u64,
    pub limits: [usize; LIMIT_COUNT],
    pub cache_config: u32,
}

/// One device's primary context.
#[derive(Default)]
pub(crate) struct Primary {
    pub ctx: Option<Handle>,
    pub refs: u32,
    pub flags: u32,
}

fn check_flags(flags: u32) -> CuResult {
    let sched = flags & 0x7;
    if flags & !CONTEXT_FLAGS_MASK != 0 || !matches!(sched, 0 | 1 | 2 | 4) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

/// Make a context on `dev` and charge its memory.
fn make(drv: &Driver, state: &mut State, dev: u32, flags: u32, primary: bool) -> CuResult<Handle> {
    if drv.device_lost(dev) {
        return Err(E::CUDA_ERROR_DEVICE_UNAVAILABLE);
    }
    drv.charge_internal(dev, drv.context_bytes)?;
    drv.context_created(dev);
    let id = state.next_id();
    let ctx = state.contexts.insert(Context {
        device: dev,
        flags,
        primary,
        id,
        legacy: 0,
        blocking_tail_ns: 0,
        limits: DEFAULT_LIMITS,
        cache_config: 0,
    });
    let legacy = stream::make_stream(state, ctx, stream::StreamKind::Legacy, 0, 0);
    if let Some(c) = state.contexts.get_mut(ctx) {
        c.legacy = legacy;
    }
    Ok(ctx)
}

/// Destroy a context and everything in it (its allocations go back to the machine).
fn destroy(drv: &Driver, state: &mut State, ctx: Handle) {
    let Some(device) = state.contexts.get(ctx).map(|c| c.device) else {
        return;
    };
    memory::free_context_memory(drv, state, ctx);
    crate::module::unload_context_modules(drv, state, ctx);
    stream::remove_context_streams(state, ctx);
    state.contexts.remove(ctx);
    drv.uncharge(device, drv.context_bytes);
    drv.context_destroyed(device);
    driver::forget_context(ctx);
}

/// `cuCtxCreate` (all ABIs): make a context and push it on the calling thread's stack.
pub(crate) fn create(flags: u32, dev: i32) -> CuResult<Handle> {
    let drv = driver()?;
    drv.device(dev)?;
    check_flags(flags)?;
    let mut state = drv.lock();
    let ctx = make(drv, &mut state, dev as u32, flags, false)?;
    driver::push_context(ctx);
    Ok(ctx)
}

/// `cuCtxCreate_v3` / `_v4` with execution-affinity parameters: only MPS supports them.
pub(crate) fn check_exec_affinity(count: i32) -> CuResult {
    match count {
        0 => Ok(()),
        n if n < 0 => Err(E::CUDA_ERROR_INVALID_VALUE),
        _ => Err(E::CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY),
    }
}

/// `cuCtxDestroy`: not for primary contexts (those are released).
pub(crate) fn destroy_context(ctx: Handle) -> CuResult {
    let drv = driver()?;
    let mut state = drv.lock();
    match state.contexts.get(ctx) {
        Some(c) if !c.primary => {}
        _ => return Err(E::CUDA_ERROR_INVALID_CONTEXT),
    }
    destroy(drv, &mut state, ctx);
    Ok(())
}

pub(crate) fn primary_retain(dev: i32) -> CuResult<Handle> {
    let drv = driver()?;
    drv.device(dev)?;
    let mut state = drv.lock();
    let d = dev as usize;
    let ctx = match state.primary[d].ctx {
        Some(ctx) => ctx,
        None => {
            let flags = state.primary[d].flags;
            let ctx = make(drv, &mut state, dev as u32, flags, true)?;
            state.primary[d].ctx = Some(ctx);
            ctx
        }
    };
    state.primary[d].refs += 1;
    Ok(ctx)
}

pub(crate) fn primary_release(dev: i32) -> CuResult {
    let drv = driver()?;
    drv.device(dev)?;
    let mut state = drv.lock();
    let d = dev as usize;
    if state.primary[d].refs == 0 {
        return Err(E::CUDA_ERROR_INVALID_CONTEXT);
    }
    state.primary[d].refs -= 1;
    if state.primary[d].refs == 0 {
        if let Some(ctx) = state.primary[d].ctx.take() {
            destroy(drv, &mut state, ctx);
        }
    }
    Ok(())
}

/// `cuDevicePrimaryCtxReset`: destroy the primary context and everything in it, whatever its count.
pub(crate) fn primary_reset(dev: i32) -> CuResult {
    let drv = driver()?;
    drv.device(dev)?;
    let mut state = drv.lock();
    let d = dev as usize;
    state.primary[d].refs = 0;
    if let Some(ctx) = state.primary[d].ctx.take() {
        destroy(drv, &mut state, ctx);
    }
    Ok(())
}

/// `(flags, active)` of a device's primary context.
pub(crate) fn primary_state(dev: i32) -> CuResult<(u32, bool)> {
    let drv = driver()?;
    drv.device(dev)?;
    let state = drv.lock();
    let p = &state.primary[dev as usize];
    Ok((p.flags, p.ctx.is_some()))
}

/// `cuDevicePrimaryCtxSetFlags`: the old ABI refuses while the context is active, `_v2` does not.
pub(crate) fn primary_set_flags(dev: i32, flags: u32, allow_active: bool) -> CuResult {
    let drv = driver()?;
    drv.device(dev)?;
    check_flags(flags)?;
    let mut state = drv.lock();
    let d = dev as usize;
    if !allow_active && state.primary[d].ctx.is_some() {
        return Err(E::CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE);
    }
    state.primary[d].flags = flags;
    if let Some(ctx) = state.primary[d].ctx {
        if let Some(c) = state.contexts.get_mut(ctx) {
            c.flags = flags;
        }
    }
    Ok(())
}

pub(crate) fn push(ctx: Handle) -> CuResult {
    let drv = driver()?;
    if !drv.lock().contexts.contains(ctx) {
        return Err(E::CUDA_ERROR_INVALID_CONTEXT);
    }
    driver::push_context(ctx);
    Ok(())
}

pub(crate) fn pop() -> CuResult<Handle> {
    driver()?;
    driver::pop_context().ok_or(E::CUDA_ERROR_INVALID_CONTEXT)
}

pub(crate) fn set_current(ctx: Handle) -> CuResult {
    let drv = driver()?;
    if ctx == 0 {
        driver::set_current_context(None);
        return Ok(());
    }
    if !drv.lock().contexts.contains(ctx) {
        return Err(E::CUDA_ERROR_INVALID_CONTEXT);
    }
    driver::set_current_context(Some(ctx));
    Ok(())
}

pub(crate) fn get_current() -> CuResult<Handle> {
    driver()?;
    Ok(driver::current_context().unwrap_or(0))
}

pub(crate) fn current_device() -> CuResult<i32> {
    Ok(driver()?.lock().current_device()? as i32)
}

/// `ctx`, or the current context when `ctx` is NULL.
fn context_or_current(state: &State, ctx: Handle) -> CuResult<&Context> {
    if ctx == 0 {
        return Ok(state.current()?.1);
    }
    state.contexts.get(ctx).ok_or(E::CUDA_ERROR_INVALID_CONTEXT)
}

pub(crate) fn api_version(ctx: Handle) -> CuResult<u32> {
    let state = driver()?.lock();
    context_or_current(&state, ctx)?;
    Ok(CONTEXT_API_VERSION)
}

pub(crate) fn id(ctx: Handle) -> CuResult<u64> {
    let state = driver()?.lock();
    Ok(context_or_current(&state, ctx)?.id)
}

pub(crate) fn flags() -> CuResult<u32> {
    Ok(driver()?.lock().current()?.1.flags)
}

pub(crate) fn set_flags(flags: u32) -> CuResult {
    check_flags(flags)?;
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    if let Some(c) = state.contexts.get_mut(ctx) {
        c.flags = flags;
    }
    Ok(())
}

pub(crate) fn limit(limit: u32) -> CuResult<usize> {
    let state = driver()?.lock();
    let (_, ctx) = state.current()?;
    ctx.limits
        .get(limit as usize)
        .copied()
        .ok_or(E::CUDA_ERROR_UNSUPPORTED_LIMIT)
}

pub(crate) fn set_limit(limit: u32, value: usize) -> CuResult {
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    let c = state
        .contexts
        .get_mut(ctx)
        .ok_or(E::CUDA_ERROR_INVALID_CONTEXT)?;
    *c.limits
        .get_mut(limit as usize)
        .ok_or(E::CUDA_ERROR_UNSUPPORTED_LIMIT)? = value;
    Ok(())
}

pub(crate) fn cache_config() -> CuResult<u32> {
    Ok(driver()?.lock().current()?.1.cache_config)
}

pub(crate) fn set_cache_config(config: u32) -> CuResult {
    if config > 3 {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let mut state = driver()?.lock();
    let (ctx, _) = state.current()?;
    if let Some(c) = state.contexts.get_mut(ctx) {
        c.cache_config = config;
    }
    Ok(())
}

/// `cuCtxSynchronize`: wait for everything queued in the current context.
pub(crate) fn synchronize() -> CuResult {
    let drv = driver()?;
    let until = {
        let mut state = drv.lock();
        let (ctx, c) = state.current()?;
        let device = c.device;
        if drv.device_lost(device) {
            return Err(E::CUDA_ERROR_LAUNCH_FAILED);
        }
        let until = stream::context_idle_at(&state, ctx);
        memory::trim_pools_after_sync(drv, &mut state, Some(device));
        until
    };
    drv.wait_until(until);
    Ok(())
}
