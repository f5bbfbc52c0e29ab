//! NVML hooks: initialisation (where a refused process is told so) and the memory view.

use std::ffi::c_uint;

use vgpu_abi::nvml::{nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t, nvmlReturn_enum, nvmlReturn_t};

use super::real_nvml;
use crate::runtime::{self, Gate};

/// Body of `nvmlInit` (the pre-v2 ABI).
pub unsafe fn init_v1() -> nvmlReturn_t {
    if runtime::refused() {
        return runtime::NVML_REFUSED;
    }
    // SAFETY: no arguments.
    unsafe { real_nvml().nvmlInit() }
}

/// Body of `nvmlInit_v2`.
pub unsafe fn init() -> nvmlReturn_t {
    if runtime::refused() {
        return runtime::NVML_REFUSED;
    }
    // SAFETY: no arguments.
    unsafe { real_nvml().nvmlInit_v2() }
}

/// Body of `nvmlInitWithFlags`.
pub unsafe fn init_with_flags(flags: c_uint) -> nvmlReturn_t {
    if runtime::refused() {
        return runtime::NVML_REFUSED;
    }
    // SAFETY: the caller's argument, unchanged.
    unsafe { real_nvml().nvmlInitWithFlags(flags) }
}

/// Body of `nvmlDeviceGetMemoryInfo`: total = min(limit, real), used = the container's usage,
/// free = total − used, never below 0 (hami-contract.md 6).
pub unsafe fn memory_info(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t {
    // SAFETY: the caller's arguments; the driver handles NULL and bad handles itself.
    let result = unsafe { real_nvml().nvmlDeviceGetMemoryInfo(device, memory) };
    if result != nvmlReturn_enum::NVML_SUCCESS || memory.is_null() {
        return result;
    }
    if let Gate::Ready(rt) = runtime::gate() {
        if let Some(view) = rt
            .devices()
            .of_nvml_handle(device)
            .and_then(|index| rt.memory_view(index))
        {
            // SAFETY: non-NULL, and the driver just filled it.
            let m = unsafe { &mut *memory };
            let (total, used, free) = view.nvml(m.total, m.free, 0);
            (m.total, m.used, m.free) = (total, used, free);
        }
    }
    result
}

/// Body of `nvmlDeviceGetMemoryInfo_v2` (`reserved` is kept, and counts against free).
pub unsafe fn memory_info_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) -> nvmlReturn_t {
    // SAFETY: the caller's arguments; the driver checks the struct version itself.
    let result = unsafe { real_nvml().nvmlDeviceGetMemoryInfo_v2(device, memory) };
    if result != nvmlReturn_enum::NVML_SUCCESS || memory.is_null() {
        return result;
    }
    if let Gate::Ready(rt) = runtime::gate() {
        if let Some(view) = rt
            .devices()
            .of_nvml_handle(device)
            .and_then(|index| rt.memory_view(index))
        {
            // SAFETY: non-NULL, and the driver just filled it.
            let m = unsafe { &mut *memory };
            let (total, used, free) = view.nvml(m.total, m.free, m.reserved);
            (m.total, m.used, m.free) = (total, used, free);
        }
    }
    result
}
