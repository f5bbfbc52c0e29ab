//! What the process sees of device memory: `cuMemGetInfo` and `cuDeviceTotalMem`, all ABIs.
//!
//! The real function is always called first, with the caller's own pointers, so NULL pointers and bad
//! devices get the driver's own answer. Only a successful answer for a limited device is adjusted.

use std::ffi::c_uint;

use vgpu_abi::cuda::{cudaError_enum, CUdevice, CUresult};

use super::real_cuda;
use crate::runtime::{self, Gate};

/// Body of `cuMemGetInfo_v2`: total = min(limit, real total), free = min(limit − used, real free).
#[inline(always)] // one caller, the export
pub unsafe fn mem_get_info(free: *mut usize, total: *mut usize) -> CUresult {
    if let Gate::Refused = runtime::gate() {
        return runtime::CUDA_REFUSED;
    }
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real_cuda().cuMemGetInfo_v2(free, total) };
    if result != cudaError_enum::CUDA_SUCCESS || free.is_null() || total.is_null() {
        return result;
    }
    if let Some(view) = current_view() {
        // SAFETY: both non-NULL, and the driver just wrote them.
        unsafe {
            let (f, t) = view.cuda(free.read() as u64, total.read() as u64);
            free.write(f as usize);
            total.write(t as usize);
        }
    }
    result
}

/// Body of `cuMemGetInfo` (32-bit ABI): as `_v2`, then clamped to `u32` the way the old ABI is.
pub unsafe fn mem_get_info_v1(free: *mut c_uint, total: *mut c_uint) -> CUresult {
    if let Gate::Refused = runtime::gate() {
        return runtime::CUDA_REFUSED;
    }
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real_cuda().cuMemGetInfo(free, total) };
    if result != cudaError_enum::CUDA_SUCCESS || free.is_null() || total.is_null() {
        return result;
    }
    if let Some(view) = current_view() {
        // The 32-bit answer may already be clamped; ask the 64-bit ABI for the real numbers.
        let (mut real_free, mut real_total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        if unsafe { real_cuda().cuMemGetInfo_v2(&mut real_free, &mut real_total) }
            == cudaError_enum::CUDA_SUCCESS
        {
            let (f, t) = view.cuda(real_free as u64, real_total as u64);
            // SAFETY: both non-NULL, and the driver just wrote them.
            unsafe {
                free.write(f.min(u64::from(u32::MAX)) as c_uint);
                total.write(t.min(u64::from(u32::MAX)) as c_uint);
            }
        }
    }
    result
}

/// Body of `cuDeviceTotalMem_v2`: min(limit, real); the real value when the device is unlimited.
pub unsafe fn device_total_mem(bytes: *mut usize, dev: CUdevice) -> CUresult {
    if let Gate::Refused = runtime::gate() {
        return runtime::CUDA_REFUSED;
    }
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real_cuda().cuDeviceTotalMem_v2(bytes, dev) };
    if result != cudaError_enum::CUDA_SUCCESS || bytes.is_null() {
        return result;
    }
    if let Some(limit) = device_limit(dev) {
        // SAFETY: non-NULL, and the driver just wrote it.
        unsafe { bytes.write((bytes.read() as u64).min(limit) as usize) };
    }
    result
}

/// Body of `cuDeviceTotalMem` (32-bit ABI).
pub unsafe fn device_total_mem_v1(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    if let Gate::Refused = runtime::gate() {
        return runtime::CUDA_REFUSED;
    }
    // SAFETY: the caller's arguments, unchanged.
    let result = unsafe { real_cuda().cuDeviceTotalMem(bytes, dev) };
    if result != cudaError_enum::CUDA_SUCCESS || bytes.is_null() {
        return result;
    }
    if let Some(limit) = device_limit(dev) {
        // SAFETY: non-NULL, and the driver just wrote it.
        unsafe { bytes.write(u64::from(bytes.read()).min(limit) as c_uint) };
    }
    result
}

fn current_view() -> Option<runtime::MemoryView> {
    match runtime::gate() {
        Gate::Ready(rt) => rt
            .devices()
            .current()
            .and_then(|index| rt.memory_view(index)),
        _ => None,
    }
}

fn device_limit(dev: CUdevice) -> Option<u64> {
    match runtime::gate() {
        Gate::Ready(rt) => rt
            .devices()
            .of_cuda_ordinal(dev)
            .and_then(|index| rt.memory_limit(index)),
        _ => None,
    }
}
