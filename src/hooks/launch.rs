//! The launch entry points. Every one pays the compute limiter (`compute::launch`) before the real
//! call: kernels, `Ex` launches, cooperative launches (the multi-device form once per device), graph
//! replays, and their per-thread-stream (`_ptsz`) forms.
//!
//! Pass-through processes call the driver untouched; a process that failed closed gets
//! `CUDA_ERROR_NOT_PERMITTED`. Arguments are not checked here: the driver returns its own errors
//! (a launch it refuses is refunded).

use std::ffi::{c_uint, c_void};

use vgpu_abi::cuda::{
    CUfunction, CUgraphExec, CUlaunchConfig, CUresult, CUstream, CUDA_LAUNCH_PARAMS,
};

use super::compute::{self, blocks, threads, Placement};
use super::real_cuda;
use crate::limiter::Work;
use crate::runtime::{self, Gate, Runtime};

/// The ready runtime, or the answer for a process that is not enforcing.
enum Verdict {
    Enforce(&'static Runtime),
    Forward,
    Refused,
}

#[inline(always)]
fn verdict() -> Verdict {
    match runtime::gate() {
        Gate::Ready(rt) => Verdict::Enforce(rt),
        Gate::PassThrough => Verdict::Forward,
        Gate::Refused => Verdict::Refused,
    }
}

/// The launch of one kernel with the usual argument list, on `stream` in the current context.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn kernel_on_current(
    f: CUfunction,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    stream: CUstream,
    per_thread: bool,
    submit: impl FnOnce() -> CUresult,
) -> CUresult {
    match verdict() {
        Verdict::Enforce(rt) => compute::launch(
            rt,
            Placement {
                stream,
                per_thread,
                device_of_stream: false,
            },
            Work::kernel(
                f as u64,
                blocks(grid[0], grid[1], grid[2]),
                threads(block[0], block[1], block[2]),
            ),
            submit,
        ),
        Verdict::Forward => submit(),
        Verdict::Refused => runtime::CUDA_REFUSED,
    }
}

/// Body of `cuLaunchKernel`.
#[allow(clippy::too_many_arguments)]
#[inline(always)] // one caller (the export): no second copy of eleven arguments
pub unsafe fn kernel(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_bytes: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    kernel_on_current(f, [gx, gy, gz], [bx, by, bz], stream, false, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe {
            real_cuda().cuLaunchKernel(
                f,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                shared_bytes,
                stream,
                params,
                extra,
            )
        }
    })
}

/// Body of `cuLaunchKernel_ptsz`.
#[allow(clippy::too_many_arguments)]
#[inline(always)] // one caller (the export): no second copy of eleven arguments
pub unsafe fn kernel_ptsz(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_bytes: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    kernel_on_current(f, [gx, gy, gz], [bx, by, bz], stream, true, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe {
            real_cuda().cuLaunchKernel_ptsz(
                f,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                shared_bytes,
                stream,
                params,
                extra,
            )
        }
    })
}

/// Body of `cuLaunchCooperativeKernel`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn cooperative(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_bytes: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    kernel_on_current(f, [gx, gy, gz], [bx, by, bz], stream, false, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe {
            real_cuda().cuLaunchCooperativeKernel(
                f,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                shared_bytes,
                stream,
                params,
            )
        }
    })
}

/// Body of `cuLaunchCooperativeKernel_ptsz`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn cooperative_ptsz(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared_bytes: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    kernel_on_current(f, [gx, gy, gz], [bx, by, bz], stream, true, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe {
            real_cuda().cuLaunchCooperativeKernel_ptsz(
                f,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                shared_bytes,
                stream,
                params,
            )
        }
    })
}

/// `cuLaunchKernelEx[_ptsz]`: the config names the stream, whose context may not be the current one.
fn kernel_ex_with(
    config: *const CUlaunchConfig,
    f: CUfunction,
    per_thread: bool,
    submit: impl FnOnce() -> CUresult,
) -> CUresult {
    let rt = match verdict() {
        Verdict::Enforce(rt) => rt,
        Verdict::Forward => return submit(),
        Verdict::Refused => return runtime::CUDA_REFUSED,
    };
    if config.is_null() {
        return submit(); // the driver's own error
    }
    // SAFETY: a non-NULL config pointer from the caller, read once (the driver reads it too).
    let c = unsafe { &*config };
    compute::launch(
        rt,
        Placement {
            stream: c.hStream,
            per_thread,
            device_of_stream: true,
        },
        Work::kernel(
            f as u64,
            blocks(c.gridDimX, c.gridDimY, c.gridDimZ),
            threads(c.blockDimX, c.blockDimY, c.blockDimZ),
        ),
        submit,
    )
}

/// Body of `cuLaunchKernelEx`.
pub unsafe fn kernel_ex(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    kernel_ex_with(config, f, false, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real_cuda().cuLaunchKernelEx(config, f, params, extra) }
    })
}

/// Body of `cuLaunchKernelEx_ptsz`.
pub unsafe fn kernel_ex_ptsz(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    kernel_ex_with(config, f, true, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real_cuda().cuLaunchKernelEx_ptsz(config, f, params, extra) }
    })
}

/// Body of `cuLaunchCooperativeKernelMultiDevice`: every device in the list pays for its launch.
pub unsafe fn cooperative_multi_device(
    list: *mut CUDA_LAUNCH_PARAMS,
    count: c_uint,
    flags: c_uint,
) -> CUresult {
    let submit = move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real_cuda().cuLaunchCooperativeKernelMultiDevice(list, count, flags) }
    };
    match verdict() {
        Verdict::Enforce(rt) => compute::launch_multi_device(rt, list, count, submit),
        Verdict::Forward => submit(),
        Verdict::Refused => runtime::CUDA_REFUSED,
    }
}

/// `cuGraphLaunch[_ptsz]`: one replay, priced as a whole (its kernels run inside the probe's span).
fn graph_with(
    exec: CUgraphExec,
    stream: CUstream,
    per_thread: bool,
    submit: impl FnOnce() -> CUresult,
) -> CUresult {
    match verdict() {
        Verdict::Enforce(rt) => compute::launch(
            rt,
            Placement {
                stream,
                per_thread,
                device_of_stream: true,
            },
            Work::graph(exec as u64),
            submit,
        ),
        Verdict::Forward => submit(),
        Verdict::Refused => runtime::CUDA_REFUSED,
    }
}

/// Body of `cuGraphLaunch`.
pub unsafe fn graph(exec: CUgraphExec, stream: CUstream) -> CUresult {
    graph_with(exec, stream, false, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real_cuda().cuGraphLaunch(exec, stream) }
    })
}

/// Body of `cuGraphLaunch_ptsz`.
pub unsafe fn graph_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    graph_with(exec, stream, true, move || {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real_cuda().cuGraphLaunch_ptsz(exec, stream) }
    })
}
