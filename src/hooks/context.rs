//! Contexts hold device memory of their own (hundreds of MiB on real GPUs), charged to
//! `context_size` (hami-contract.md 3.5 item 5).
//!
//! The size is not known before the call, so it is measured: the drop of the device's free memory
//! across the call, as NVML reports it. Another process allocating at the same moment adds noise to
//! one measurement; that is the price of not guessing a per-GPU constant. If the container cannot
//! afford the context, the context is destroyed again and the call fails with
//! `CUDA_ERROR_OUT_OF_MEMORY`: nothing allocated, nothing charged.
//!
//! The primary context exists once per device and is reference-counted: only a retain that finds it
//! inactive creates it (and is charged); the release or reset that leaves it inactive gives the charge
//! back.

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};

use vgpu_abi::cuda::{
    cudaError_enum, CUcontext, CUctxCreateParams, CUdevice, CUexecAffinityParam, CUresult,
};

use super::real_cuda;
use crate::alloc_table::Key;
use crate::devices::{self, MAX_REGION_DEVICES};
use crate::region::{ChargeRecord, MemKind};
use crate::runtime::{self, Gate, Runtime};

const SUCCESS: CUresult = cudaError_enum::CUDA_SUCCESS;

/// Bytes charged for each device's primary context (region index).
static PRIMARY_CHARGED: [AtomicU64; MAX_REGION_DEVICES] =
    [const { AtomicU64::new(0) }; MAX_REGION_DEVICES];

fn target(dev: CUdevice) -> Result<Option<(&'static Runtime, usize)>, CUresult> {
    match runtime::gate() {
        Gate::Ready(rt) => Ok(rt.devices().of_cuda_ordinal(dev).map(|index| (rt, index))),
        Gate::PassThrough => Ok(None),
        Gate::Refused => Err(runtime::CUDA_REFUSED),
    }
}

/// Runs `create` and measures what it took from the device. `destroy` undoes it if the container
/// cannot afford it.
fn charged_create(
    dev: CUdevice,
    create: impl FnOnce() -> CUresult,
    destroy: impl FnOnce() -> CUresult,
    on_charged: impl FnOnce(&'static Runtime, ChargeRecord),
) -> CUresult {
    let (rt, device) = match target(dev) {
        Err(code) => return code,
        Ok(None) => return create(),
        Ok(Some(found)) => found,
    };
    let before = rt.device_free_bytes(device);
    let result = create();
    if result != SUCCESS {
        return result;
    }
    let (Some(before), Some(after)) = (before, rt.device_free_bytes(device)) else {
        return result;
    };
    let size = before.saturating_sub(after);
    if size == 0 {
        return result;
    }
    match rt.reserve(device, size, MemKind::Context) {
        Ok(charge) => {
            on_charged(rt, charge.commit_untracked());
            result
        }
        Err(code) => {
            let _ = destroy();
            code
        }
    }
}

fn create_with(pctx: *mut CUcontext, dev: CUdevice, create: impl FnOnce() -> CUresult) -> CUresult {
    charged_create(
        dev,
        create,
        // SAFETY: `pctx` was written by the successful create.
        || unsafe { real_cuda().cuCtxDestroy_v2(pctx.read()) },
        // SAFETY: as above.
        |rt, record| {
            // A full table gives the charge back: the context then goes uncounted, not refused.
            let _ = rt.track(Key::Context(unsafe { pctx.read() } as u64), record);
        },
    )
}

/// Body of `cuCtxCreate_v2`.
pub unsafe fn create(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    create_with(pctx, dev, || unsafe {
        real_cuda().cuCtxCreate_v2(pctx, flags, dev)
    })
}

/// Body of `cuCtxCreate` (CUDA 2.0 ABI, same arguments).
pub unsafe fn create_v1(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    create_with(pctx, dev, || unsafe {
        real_cuda().cuCtxCreate(pctx, flags, dev)
    })
}

/// Body of `cuCtxCreate_v3` (execution affinity).
pub unsafe fn create_v3(
    pctx: *mut CUcontext,
    params: *mut CUexecAffinityParam,
    count: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    create_with(pctx, dev, || unsafe {
        real_cuda().cuCtxCreate_v3(pctx, params, count, flags, dev)
    })
}

/// Body of `cuCtxCreate_v4` (`CUctxCreateParams`).
pub unsafe fn create_v4(
    pctx: *mut CUcontext,
    params: *mut CUctxCreateParams,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    create_with(pctx, dev, || unsafe {
        real_cuda().cuCtxCreate_v4(pctx, params, flags, dev)
    })
}

fn destroy_with(ctx: CUcontext, destroy: impl FnOnce() -> CUresult) -> CUresult {
    let rt = match runtime::gate() {
        Gate::Ready(rt) => rt,
        Gate::PassThrough => return destroy(),
        Gate::Refused => return runtime::CUDA_REFUSED,
    };
    let record = rt.untrack(Key::Context(ctx as u64));
    let result = destroy();
    devices::contexts_changed();
    match record {
        Some(record) if result == SUCCESS => rt.release(record),
        Some(record) => {
            let _ = rt.track(Key::Context(ctx as u64), record);
        }
        None => {}
    }
    result
}

/// Body of `cuCtxDestroy_v2`.
pub unsafe fn destroy(ctx: CUcontext) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    destroy_with(ctx, || unsafe { real_cuda().cuCtxDestroy_v2(ctx) })
}

/// Body of `cuCtxDestroy` (CUDA 2.0 ABI).
pub unsafe fn destroy_v1(ctx: CUcontext) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    destroy_with(ctx, || unsafe { real_cuda().cuCtxDestroy(ctx) })
}

/// Whether the device's primary context is active (`None` if the driver cannot say).
fn primary_active(dev: CUdevice) -> Option<bool> {
    let (mut flags, mut active): (c_uint, c_int) = (0, 0);
    // SAFETY: valid out-pointers.
    let result = unsafe { real_cuda().cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) };
    (result == SUCCESS).then_some(active != 0)
}

/// Body of `cuDevicePrimaryCtxRetain`: the retain that creates the context is charged.
pub unsafe fn primary_retain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let retain = || unsafe { real.cuDevicePrimaryCtxRetain(pctx, dev) };
    if primary_active(dev) != Some(false) {
        // Already created (or unknown): a retain only counts a reference.
        return match runtime::gate() {
            Gate::Refused => runtime::CUDA_REFUSED,
            _ => retain(),
        };
    }
    charged_create(
        dev,
        retain,
        // SAFETY: releasing the reference just taken.
        || unsafe { real.cuDevicePrimaryCtxRelease_v2(dev) },
        |rt, record| {
            if let Some(slot) = PRIMARY_CHARGED.get(usize::from(record.device)) {
                slot.fetch_add(record.bytes, Ordering::Relaxed);
            } else {
                rt.release(record);
            }
        },
    )
}

/// Gives back the primary context's charge once the driver reports it inactive.
fn after_primary_release(dev: CUdevice, result: CUresult) -> CUresult {
    if result != SUCCESS {
        return result;
    }
    devices::contexts_changed();
    if primary_active(dev) == Some(false) {
        if let Ok(Some((rt, device))) = target(dev) {
            if let Some(slot) = PRIMARY_CHARGED.get(device) {
                let bytes = slot.swap(0, Ordering::Relaxed);
                rt.release(ChargeRecord {
                    device: device as u16,
                    bytes,
                    kind: MemKind::Context,
                });
            }
        }
    }
    result
}

fn gated(call: impl FnOnce() -> CUresult) -> CUresult {
    match runtime::gate() {
        Gate::Refused => runtime::CUDA_REFUSED,
        _ => call(),
    }
}

/// Body of `cuDevicePrimaryCtxRelease_v2`.
pub unsafe fn primary_release(dev: CUdevice) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    let result = gated(|| unsafe { real_cuda().cuDevicePrimaryCtxRelease_v2(dev) });
    after_primary_release(dev, result)
}

/// Body of `cuDevicePrimaryCtxRelease` (pre-11.0 ABI, same argument).
pub unsafe fn primary_release_v1(dev: CUdevice) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    let result = gated(|| unsafe { real_cuda().cuDevicePrimaryCtxRelease(dev) });
    after_primary_release(dev, result)
}

/// Body of `cuDevicePrimaryCtxReset_v2`: destroys the primary context's resources.
pub unsafe fn primary_reset(dev: CUdevice) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    let result = gated(|| unsafe { real_cuda().cuDevicePrimaryCtxReset_v2(dev) });
    after_primary_release(dev, result)
}

/// Body of `cuDevicePrimaryCtxReset` (pre-11.0 ABI).
pub unsafe fn primary_reset_v1(dev: CUdevice) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    let result = gated(|| unsafe { real_cuda().cuDevicePrimaryCtxReset(dev) });
    after_primary_release(dev, result)
}
