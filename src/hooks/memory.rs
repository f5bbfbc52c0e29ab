//! Device memory: reserve before calling the driver, commit on success, give back on failure, and on
//! free give back exactly what the allocation charged.
//!
//! Every body starts the same way: ask the runtime (one load). Pass-through processes and devices
//! outside the container's list go straight to the driver; a refused process gets
//! `CUDA_ERROR_NOT_PERMITTED`. A request over the limit gets `CUDA_ERROR_OUT_OF_MEMORY` without the
//! driver being called. Arguments are never checked here: the driver returns its own errors, and we read
//! an out-pointer only after the driver reported success.
//!
//! Stream-ordered allocations (`cuMemAllocAsync`, `cuMemAllocFromPoolAsync`) are charged per
//! allocation, like `cuMemAlloc`, and given back by `cuMemFreeAsync` or `cuMemFree`. Why not the pools'
//! `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`: a pool shrinks at synchronisation points we never see (its
//! release threshold), so deltas observed at our calls would be stale, and charging a delta after the
//! call breaks "reserve before the driver is called". Per-allocation charges keep that protocol exact,
//! and a pool's reserved memory never exceeds the peak of its live allocations (plus its granularity),
//! which the limit already bounds. The gap: memory one pool keeps cached after frees while another
//! pool allocates, which could take a container with several pools and high release thresholds past its
//! limit by that cache. `cuMemPoolTrimTo` and pool destruction change no charge.

use std::ffi::c_uint;

use vgpu_abi::cuda::{
    cudaError_enum, CUarray, CUarray_format, CUarray_format_enum as F, CUdeviceptr,
    CUmemAllocationProp, CUmemGenericAllocationHandle, CUmemLocationType_enum, CUmemoryPool,
    CUmipmappedArray, CUresult, CUstream, CUDA_ARRAY3D_DESCRIPTOR, CUDA_ARRAY_DESCRIPTOR,
};

use super::legacy::{CUDA_ARRAY3D_DESCRIPTOR_v1, CUDA_ARRAY_DESCRIPTOR_v1};
use super::real_cuda;
use crate::alloc_table::Key;
use crate::region::MemKind;
use crate::runtime::{self, Gate, Runtime};

const SUCCESS: CUresult = cudaError_enum::CUDA_SUCCESS;

/// The runtime and the region index of the current context's device, or what to do instead.
enum Target {
    /// Enforce on this device.
    Device(&'static Runtime, usize),
    /// Not ours to count: call the driver unchanged.
    Forward,
    /// The process failed closed.
    Refused,
}

fn current_target() -> Target {
    match runtime::gate() {
        Gate::Ready(rt) => match rt.devices().current() {
            Some(device) => Target::Device(rt, device),
            None => Target::Forward,
        },
        Gate::PassThrough => Target::Forward,
        Gate::Refused => Target::Refused,
    }
}

/// Reserve, call `allocate`, then commit under the new object's key or give back. The shape every
/// allocation shares. `undo` frees the new object if it cannot be recorded (a full table).
fn charged_alloc(
    bytes: u64,
    allocate: impl FnOnce() -> CUresult,
    key_after_success: impl FnOnce() -> Key,
    undo: impl FnOnce(Key) -> CUresult,
    forward: impl FnOnce() -> CUresult,
) -> CUresult {
    let (rt, device) = match current_target() {
        Target::Device(rt, device) => (rt, device),
        Target::Forward => return forward(),
        Target::Refused => return runtime::CUDA_REFUSED,
    };
    // Reserve first: two processes racing for the last GiB must not both get it.
    let charge = match rt.reserve(device, bytes, MemKind::Data) {
        Ok(charge) => charge,
        Err(code) => return code,
    };
    let result = allocate();
    if result != SUCCESS {
        return result; // dropping `charge` gives the bytes back
    }
    let key = key_after_success();
    if let Err(error) = charge.commit(key) {
        let _ = undo(key);
        log_warn_limited!(
            "cannot record a new allocation ({error}); freed it and reporting out of memory"
        );
        return cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY;
    }
    SUCCESS
}

fn free_device_pointer(key: Key) -> CUresult {
    match key {
        // SAFETY: freeing the allocation the driver just made.
        Key::DevicePtr(pointer) => unsafe { real_cuda().cuMemFree_v2(pointer) },
        _ => SUCCESS,
    }
}

/// Body of `cuMemAlloc_v2`.
pub unsafe fn alloc(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        bytesize as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAlloc_v2(dptr, bytesize) },
        // SAFETY: the driver succeeded, so it wrote a device pointer through `dptr`.
        || Key::DevicePtr(unsafe { dptr.read() }),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAlloc_v2(dptr, bytesize) },
    )
}

/// Body of `cuMemAlloc` (CUDA 2.0 ABI: 32-bit size and pointer).
pub unsafe fn alloc_v1(dptr: *mut u32, bytesize: c_uint) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        u64::from(bytesize),
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAlloc(dptr, bytesize) },
        // SAFETY: the driver succeeded, so it wrote a device pointer through `dptr`.
        || Key::DevicePtr(u64::from(unsafe { dptr.read() })),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAlloc(dptr, bytesize) },
    )
}

/// Body of `cuMemAllocManaged`: charged in full on the current device, as HAMi-core does.
pub unsafe fn alloc_managed(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        bytesize as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocManaged(dptr, bytesize, flags) },
        // SAFETY: the driver succeeded, so it wrote a pointer through `dptr`.
        || Key::DevicePtr(unsafe { dptr.read() }),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAllocManaged(dptr, bytesize, flags) },
    )
}

/// Body of `cuMemAllocAsync`.
pub unsafe fn alloc_async(dptr: *mut CUdeviceptr, bytesize: usize, stream: CUstream) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        bytesize as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocAsync(dptr, bytesize, stream) },
        // SAFETY: the driver succeeded, so it wrote a device pointer through `dptr`.
        || Key::DevicePtr(unsafe { dptr.read() }),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAllocAsync(dptr, bytesize, stream) },
    )
}

/// Body of `cuMemAllocAsync_ptsz`.
pub unsafe fn alloc_async_ptsz(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: CUstream,
) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        bytesize as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocAsync_ptsz(dptr, bytesize, stream) },
        // SAFETY: the driver succeeded, so it wrote a device pointer through `dptr`.
        || Key::DevicePtr(unsafe { dptr.read() }),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAllocAsync_ptsz(dptr, bytesize, stream) },
    )
}

/// Body of `cuMemAllocFromPoolAsync`.
pub unsafe fn alloc_from_pool_async(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        bytesize as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocFromPoolAsync(dptr, bytesize, pool, stream) },
        // SAFETY: the driver succeeded, so it wrote a device pointer through `dptr`.
        || Key::DevicePtr(unsafe { dptr.read() }),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAllocFromPoolAsync(dptr, bytesize, pool, stream) },
    )
}

/// Body of `cuMemAllocFromPoolAsync_ptsz`.
pub unsafe fn alloc_from_pool_async_ptsz(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    let real = real_cuda();
    charged_alloc(
        bytesize as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocFromPoolAsync_ptsz(dptr, bytesize, pool, stream) },
        // SAFETY: the driver succeeded, so it wrote a device pointer through `dptr`.
        || Key::DevicePtr(unsafe { dptr.read() }),
        free_device_pointer,
        // SAFETY: as above.
        || unsafe { real.cuMemAllocFromPoolAsync_ptsz(dptr, bytesize, pool, stream) },
    )
}

/// An upper bound of the row pitch the driver may choose for `width` bytes: real drivers align rows
/// to at most 512 bytes (`CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT` is 32 to 512 on every GPU so far).
/// Only the reservation uses it; the charge is corrected to `pitch × height` from the driver's answer.
fn pitch_estimate(width: u64) -> u64 {
    width.saturating_add(511) & !511
}

/// The shared body of both pitch ABIs. `read_pitch` is called only after success.
fn charged_alloc_pitch(
    width: u64,
    height: u64,
    allocate: impl FnOnce() -> CUresult,
    read_result: impl FnOnce() -> (u64, u64),
    free: impl FnOnce(u64) -> CUresult,
    forward: impl FnOnce() -> CUresult,
) -> CUresult {
    let (rt, device) = match current_target() {
        Target::Device(rt, device) => (rt, device),
        Target::Forward => return forward(),
        Target::Refused => return runtime::CUDA_REFUSED,
    };
    let estimate = pitch_estimate(width).saturating_mul(height);
    let charge = match rt.reserve(device, estimate, MemKind::Data) {
        Ok(charge) => charge,
        Err(code) => return code,
    };
    let result = allocate();
    if result != SUCCESS {
        return result;
    }
    let (pointer, pitch) = read_result();
    let actual = pitch.saturating_mul(height);
    let mut record = charge.commit_untracked();
    if actual > record.bytes {
        // A pitch wider than our bound: charge the rest too, or undo the allocation.
        match rt.reserve(device, actual - record.bytes, MemKind::Data) {
            Ok(extra) => record.bytes += extra.commit_untracked().bytes,
            Err(code) => {
                let _ = free(pointer);
                rt.release(record);
                return code;
            }
        }
    } else if actual < record.bytes {
        rt.release(crate::region::ChargeRecord {
            bytes: record.bytes - actual,
            ..record
        });
        record.bytes = actual;
    }
    if !rt.track(Key::DevicePtr(pointer), record) {
        let _ = free(pointer);
        return cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY;
    }
    SUCCESS
}

/// Body of `cuMemAllocPitch_v2`: charges `pitch × height`, the driver's own answer.
pub unsafe fn alloc_pitch(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element_size: c_uint,
) -> CUresult {
    let real = real_cuda();
    charged_alloc_pitch(
        width as u64,
        height as u64,
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocPitch_v2(dptr, pitch, width, height, element_size) },
        // SAFETY: the driver succeeded, so it wrote both out-pointers.
        || unsafe { (dptr.read(), pitch.read() as u64) },
        // SAFETY: undoing the allocation just made.
        |pointer| unsafe { real.cuMemFree_v2(pointer) },
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocPitch_v2(dptr, pitch, width, height, element_size) },
    )
}

/// Body of `cuMemAllocPitch` (CUDA 2.0 ABI).
pub unsafe fn alloc_pitch_v1(
    dptr: *mut u32,
    pitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    element_size: c_uint,
) -> CUresult {
    let real = real_cuda();
    charged_alloc_pitch(
        u64::from(width),
        u64::from(height),
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocPitch(dptr, pitch, width, height, element_size) },
        // SAFETY: the driver succeeded, so it wrote both out-pointers.
        || unsafe { (u64::from(dptr.read()), u64::from(pitch.read())) },
        // SAFETY: undoing the allocation just made.
        |pointer| unsafe { real.cuMemFree(pointer as u32) },
        // SAFETY: the caller's arguments, unchanged.
        || unsafe { real.cuMemAllocPitch(dptr, pitch, width, height, element_size) },
    )
}

/// Frees through `free`, then gives back what `key` was charged. A key we never saw (allocated before
/// we were ready, on a device outside the container, or by a pass-through call) is freed untouched.
fn charged_free(key: Key, free: impl FnOnce() -> CUresult) -> CUresult {
    let rt = match runtime::gate() {
        Gate::Ready(rt) => rt,
        Gate::PassThrough => return free(),
        Gate::Refused => return runtime::CUDA_REFUSED,
    };
    // Take the record out first: once the driver has freed the memory, another thread may be handed
    // the same address and record it before we could remove ours.
    let record = rt.untrack(key);
    let result = free();
    if let Some(record) = record {
        if result == SUCCESS {
            rt.release(record);
        } else {
            rt.track(key, record); // the driver kept it: so do we
        }
    }
    result
}

/// Body of `cuMemFree_v2`.
pub unsafe fn free(dptr: CUdeviceptr) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    charged_free(Key::DevicePtr(dptr), || unsafe {
        real_cuda().cuMemFree_v2(dptr)
    })
}

/// Body of `cuMemFree` (CUDA 2.0 ABI).
pub unsafe fn free_v1(dptr: u32) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    charged_free(Key::DevicePtr(u64::from(dptr)), || unsafe {
        real_cuda().cuMemFree(dptr)
    })
}

/// Body of `cuMemFreeAsync`: the charge is given back when the free is enqueued.
pub unsafe fn free_async(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    charged_free(Key::DevicePtr(dptr), || unsafe {
        real_cuda().cuMemFreeAsync(dptr, stream)
    })
}

/// Body of `cuMemFreeAsync_ptsz`.
pub unsafe fn free_async_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    // SAFETY: the caller's arguments, unchanged.
    charged_free(Key::DevicePtr(dptr), || unsafe {
        real_cuda().cuMemFreeAsync_ptsz(dptr, stream)
    })
}

/// Body of `cuMemCreate`: physical memory of the virtual memory API, charged at creation when it lives
/// on a device (host and host-NUMA locations are not device memory).
pub unsafe fn create(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let forward = || unsafe { real.cuMemCreate(handle, size, prop, flags) };
    let rt = match runtime::gate() {
        Gate::Ready(rt) => rt,
        Gate::PassThrough => return forward(),
        Gate::Refused => return runtime::CUDA_REFUSED,
    };
    if prop.is_null() {
        return forward();
    }
    // SAFETY: non-NULL; the caller promises a valid property struct.
    let location = unsafe { (*prop).location };
    if location.type_ != CUmemLocationType_enum::CU_MEM_LOCATION_TYPE_DEVICE {
        return forward();
    }
    let Some(device) = rt.devices().of_cuda_ordinal(location.id) else {
        return forward();
    };
    let charge = match rt.reserve(device, size as u64, MemKind::Data) {
        Ok(charge) => charge,
        Err(code) => return code,
    };
    let result = forward();
    if result != SUCCESS {
        return result;
    }
    // SAFETY: the driver succeeded, so it wrote the handle.
    let created = unsafe { handle.read() };
    if charge.commit(Key::VmmHandle(created)).is_err() {
        // SAFETY: undoing the creation just made.
        let _ = unsafe { real.cuMemRelease(created) };
        return cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY;
    }
    SUCCESS
}

/// Body of `cuMemRelease`. (The driver frees the memory once the handle is released and unmapped; we
/// give the charge back at the release.)
pub unsafe fn release(handle: CUmemGenericAllocationHandle) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    charged_free(Key::VmmHandle(handle), || unsafe {
        real_cuda().cuMemRelease(handle)
    })
}

/// Bytes per channel element of an array format (cuda.h `CUarray_format`). Formats we do not know are
/// charged as 4 bytes per channel, the widest plain format.
fn format_bytes(format: CUarray_format) -> (u64, u64) {
    // (numerator, denominator) bytes per element per channel, for the subsampled video formats.
    match format {
        F::CU_AD_FORMAT_UNSIGNED_INT8 | F::CU_AD_FORMAT_SIGNED_INT8 => (1, 1),
        F::CU_AD_FORMAT_UNORM_INT8X1 | F::CU_AD_FORMAT_SNORM_INT8X1 => (1, 1),
        F::CU_AD_FORMAT_UNORM_INT8X2 | F::CU_AD_FORMAT_SNORM_INT8X2 => (2, 1),
        F::CU_AD_FORMAT_UNORM_INT8X4 | F::CU_AD_FORMAT_SNORM_INT8X4 => (4, 1),
        F::CU_AD_FORMAT_UNSIGNED_INT16 | F::CU_AD_FORMAT_SIGNED_INT16 | F::CU_AD_FORMAT_HALF => {
            (2, 1)
        }
        F::CU_AD_FORMAT_UNORM_INT16X1 | F::CU_AD_FORMAT_SNORM_INT16X1 => (2, 1),
        F::CU_AD_FORMAT_UNORM_INT16X2 | F::CU_AD_FORMAT_SNORM_INT16X2 => (4, 1),
        F::CU_AD_FORMAT_UNORM_INT16X4 | F::CU_AD_FORMAT_SNORM_INT16X4 => (8, 1),
        F::CU_AD_FORMAT_UNSIGNED_INT32 | F::CU_AD_FORMAT_SIGNED_INT32 | F::CU_AD_FORMAT_FLOAT => {
            (4, 1)
        }
        F::CU_AD_FORMAT_NV12 => (3, 2),
        _ => (4, 1),
    }
}

/// Bytes of an array or of all levels of a mipmapped array (a lower bound of what the driver
/// allocates; arrays are not charged at all by HAMi-core, hami-contract.md 6).
pub fn array_bytes(
    width: u64,
    height: u64,
    depth: u64,
    format: CUarray_format,
    channels: u64,
    levels: u32,
) -> u64 {
    let (num, den) = format_bytes(format);
    let mut total: u64 = 0;
    for level in 0..levels.clamp(1, 64) {
        let dim = |d: u64| if d == 0 { 1 } else { (d >> level).max(1) };
        let elements = dim(width)
            .saturating_mul(dim(height))
            .saturating_mul(dim(depth));
        total = total
            .saturating_add(elements.saturating_mul(channels.max(1)).saturating_mul(num) / den);
    }
    total
}

/// `charged_alloc` for a `CUarray` handle written to `handle`.
fn charged_array(bytes: u64, handle: *mut CUarray, forward: impl Fn() -> CUresult) -> CUresult {
    charged_alloc(
        bytes,
        &forward,
        // SAFETY: the driver succeeded, so it wrote the handle.
        || Key::Array(unsafe { handle.read() } as u64),
        // SAFETY: undoing the creation just made.
        |_| unsafe { real_cuda().cuArrayDestroy(handle.read()) },
        &forward,
    )
}

/// Body of `cuArrayCreate_v2`.
pub unsafe fn array_create(handle: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let forward = || unsafe { real.cuArrayCreate_v2(handle, desc) };
    if desc.is_null() {
        return forward();
    }
    // SAFETY: non-NULL; the caller promises a valid descriptor.
    let d = unsafe { desc.read() };
    let bytes = array_bytes(
        d.Width as u64,
        d.Height as u64,
        0,
        d.Format,
        u64::from(d.NumChannels),
        1,
    );
    // SAFETY: the driver succeeded, so it wrote the handle.
    charged_array(bytes, handle, forward)
}

/// Body of `cuArrayCreate` (CUDA 2.0 descriptor).
pub unsafe fn array_create_v1(
    handle: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR_v1,
) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let forward = || unsafe { real.cuArrayCreate(handle, desc) };
    if desc.is_null() {
        return forward();
    }
    // SAFETY: non-NULL; the caller promises a valid descriptor.
    let d = unsafe { desc.read() };
    let bytes = array_bytes(
        u64::from(d.Width),
        u64::from(d.Height),
        0,
        d.Format,
        u64::from(d.NumChannels),
        1,
    );
    // SAFETY: the driver succeeded, so it wrote the handle.
    charged_array(bytes, handle, forward)
}

/// Body of `cuArray3DCreate_v2`.
pub unsafe fn array_3d_create(
    handle: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let forward = || unsafe { real.cuArray3DCreate_v2(handle, desc) };
    if desc.is_null() {
        return forward();
    }
    // SAFETY: non-NULL; the caller promises a valid descriptor.
    let d = unsafe { desc.read() };
    let bytes = array_bytes(
        d.Width as u64,
        d.Height as u64,
        d.Depth as u64,
        d.Format,
        u64::from(d.NumChannels),
        1,
    );
    // SAFETY: the driver succeeded, so it wrote the handle.
    charged_array(bytes, handle, forward)
}

/// Body of `cuArray3DCreate` (CUDA 2.0 descriptor).
pub unsafe fn array_3d_create_v1(
    handle: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR_v1,
) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let forward = || unsafe { real.cuArray3DCreate(handle, desc) };
    if desc.is_null() {
        return forward();
    }
    // SAFETY: non-NULL; the caller promises a valid descriptor.
    let d = unsafe { desc.read() };
    let bytes = array_bytes(
        u64::from(d.Width),
        u64::from(d.Height),
        u64::from(d.Depth),
        d.Format,
        u64::from(d.NumChannels),
        1,
    );
    // SAFETY: the driver succeeded, so it wrote the handle.
    charged_array(bytes, handle, forward)
}

/// Body of `cuArrayDestroy`.
pub unsafe fn array_destroy(array: CUarray) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    charged_free(Key::Array(array as u64), || unsafe {
        real_cuda().cuArrayDestroy(array)
    })
}

/// Body of `cuMipmappedArrayCreate`: every level is charged.
pub unsafe fn mipmapped_array_create(
    handle: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    let real = real_cuda();
    // SAFETY: the caller's arguments, unchanged.
    let forward = || unsafe { real.cuMipmappedArrayCreate(handle, desc, levels) };
    if desc.is_null() {
        return forward();
    }
    // SAFETY: non-NULL; the caller promises a valid descriptor.
    let d = unsafe { desc.read() };
    let bytes = array_bytes(
        d.Width as u64,
        d.Height as u64,
        d.Depth as u64,
        d.Format,
        u64::from(d.NumChannels),
        levels,
    );
    // SAFETY: the driver succeeded, so it wrote the handle.
    charged_alloc(
        bytes,
        forward,
        // SAFETY: the driver succeeded, so it wrote the handle.
        || Key::MipmappedArray(unsafe { handle.read() } as u64),
        // SAFETY: undoing the creation just made.
        |_| unsafe { real.cuMipmappedArrayDestroy(handle.read()) },
        forward,
    )
}

/// Body of `cuMipmappedArrayDestroy`.
pub unsafe fn mipmapped_array_destroy(array: CUmipmappedArray) -> CUresult {
    // SAFETY: the caller's argument, unchanged.
    charged_free(Key::MipmappedArray(array as u64), || unsafe {
        real_cuda().cuMipmappedArrayDestroy(array)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_sizes() {
        assert_eq!(
            array_bytes(1024, 0, 0, F::CU_AD_FORMAT_FLOAT, 4, 1),
            16 * 1024
        );
        assert_eq!(
            array_bytes(64, 64, 0, F::CU_AD_FORMAT_UNSIGNED_INT8, 1, 1),
            4096
        );
        assert_eq!(array_bytes(8, 8, 8, F::CU_AD_FORMAT_HALF, 2, 1), 2048);
        // Mip chain of a 4x4 single-byte image: 16 + 4 + 1.
        assert_eq!(
            array_bytes(4, 4, 0, F::CU_AD_FORMAT_UNSIGNED_INT8, 1, 3),
            21
        );
        // Unknown formats count 4 bytes per channel; overflow saturates.
        assert_eq!(array_bytes(10, 0, 0, CUarray_format(0x7777), 1, 1), 40);
        assert_eq!(
            array_bytes(u64::MAX, u64::MAX, 0, F::CU_AD_FORMAT_FLOAT, 1, 1),
            u64::MAX
        );
    }

    #[test]
    fn pitch_bound_covers_512_byte_alignment() {
        assert_eq!(pitch_estimate(1), 512);
        assert_eq!(pitch_estimate(512), 512);
        assert_eq!(pitch_estimate(513), 1024);
        assert_eq!(pitch_estimate(u64::MAX), !511);
    }
}
