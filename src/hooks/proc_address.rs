//! `cuGetProcAddress` (CUDA 11.3 ABI) and `cuGetProcAddress_v2` (12.0 ABI, with `symbolStatus`).
//!
//! libcudart, cuda-bindings and CuPy reach every driver function through here (driver-facts.md), so
//! this is the main front door. We let the real driver answer first: it alone knows which ABI it hands
//! out for a (name, version, flags) request. Then, if its answer is one of the functions we hook, we
//! swap in our hook *for that exact ABI*:
//!
//! 1. The pointer equals the real address of a hooked symbol (our table was resolved from the same
//!    library with `dlsym`): return that symbol's hook. This is the normal case, and it also covers a
//!    request for `cuGetProcAddress` itself, which libcudart makes and then uses for everything.
//! 2. Otherwise, if it equals the real address of another ABI of the same base name, that ABI is not
//!    hooked: pass it through.
//! 3. Otherwise the driver returned an internal entry point. We ask the generated table
//!    (`vgpu_abi::proc_table::resolve`) which ABI it stands for, at `min(requested version, driver
//!    version)` because the driver never hands out an ABI newer than itself. If that version is newer
//!    than the header our table came from, a newer ABI could exist that we do not know, and returning a
//!    hook of another signature would corrupt the caller's stack: we pass the pointer through and warn.
//!
//! Nothing unhooked is touched, `cuGetExportTable` included, and failed lookups are returned as the
//! driver returned them.
//!
//! A process that failed closed still answers lookups: hooked names get their hook, which refuses with
//! `CUDA_ERROR_NOT_PERMITTED` when called, so a client that reaches `cuInit` this way sees the refusal
//! rather than "function not found". Unhooked names get the driver's pointer, or, when there is no
//! driver to ask, the driver's answer for an unknown symbol.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicI32, Ordering};

use vgpu_abi::cuda::{
    cudaError_enum, cuuint64_t, CUdriverProcAddressQueryResult,
    CUdriverProcAddressQueryResult_enum as Status, CUresult,
};
use vgpu_abi::proc_table::{self, Lookup};

use super::real::{self, cuda_library};
use crate::runtime;

const SUCCESS: CUresult = cudaError_enum::CUDA_SUCCESS;

/// Body of `cuGetProcAddress` (11.3 ABI).
pub unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: cuuint64_t,
) -> CUresult {
    let refused = runtime::refused();
    let real = real::real_cuda();
    let result = if refused && real.cuGetProcAddress.is_none() {
        // SAFETY: the caller's arguments, under the driver's contract.
        unsafe { answer_without_driver(symbol, pfn, version, flags, std::ptr::null_mut()) }
    } else {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real.cuGetProcAddress(symbol, pfn, version, flags) }
    };
    if result == SUCCESS {
        // SAFETY: the lookup accepted `symbol` and wrote `*pfn`.
        unsafe { substitute(symbol, pfn, version, flags, refused) };
    }
    result
}

/// Body of `cuGetProcAddress_v2` (12.0 ABI).
pub unsafe fn get_proc_address_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: cuuint64_t,
    symbol_status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    let refused = runtime::refused();
    let real = real::real_cuda();
    let result = if refused && real.cuGetProcAddress_v2.is_none() {
        // SAFETY: the caller's arguments, under the driver's contract.
        unsafe { answer_without_driver(symbol, pfn, version, flags, symbol_status) }
    } else {
        // SAFETY: the caller's arguments, unchanged.
        unsafe { real.cuGetProcAddress_v2(symbol, pfn, version, flags, symbol_status) }
    };
    if result == SUCCESS {
        // SAFETY: the lookup accepted `symbol` and wrote `*pfn`.
        unsafe { substitute(symbol, pfn, version, flags, refused) };
    }
    result
}

/// A process that failed closed and has no real driver to ask: hooked names get our hook (which answers
/// `CUDA_ERROR_NOT_PERMITTED` when called), everything else the driver's answer for an unknown symbol.
/// The lookup itself must succeed for hooked names: cuda-bindings and libcudart look `cuInit` up this
/// way, and a failed lookup reads as "function not found" instead of the refusal.
///
/// # Safety
/// `symbol` is NULL or NUL-terminated; `pfn` and `symbol_status` are NULL or valid for writes.
unsafe fn answer_without_driver(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: cuuint64_t,
    symbol_status: *mut CUdriverProcAddressQueryResult,
) -> CUresult {
    if symbol.is_null() || pfn.is_null() {
        return cudaError_enum::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: checked non-NULL; NUL-terminated by the caller's contract.
    let base = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    let (hook, status) = match proc_table::resolve(base, version, flags) {
        Lookup::Found(name) => match super::cuda_hook(name.as_bytes()) {
            Some(hook) => (hook, Status::CU_GET_PROC_ADDRESS_SUCCESS),
            None => (0, Status::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
        },
        Lookup::VersionNotSufficient => (0, Status::CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT),
        Lookup::NotFound => (0, Status::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
    };
    // SAFETY: checked non-NULL above; `symbol_status` is optional (NULL for the 11.3 ABI).
    unsafe {
        pfn.write(hook as *mut c_void);
        if !symbol_status.is_null() {
            symbol_status.write(status);
        }
    }
    if hook == 0 {
        cudaError_enum::CUDA_ERROR_NOT_FOUND
    } else {
        SUCCESS
    }
}

/// Replaces `*pfn` with our hook when the driver's answer is a function we hook. In a process that
/// failed closed, every ABI of a hooked name becomes a hook, even one newer than our table: a refusing
/// hook reads none of its arguments, so its signature cannot matter.
///
/// # Safety
/// `symbol` is NULL or NUL-terminated; `pfn` is NULL or points to the driver's answer.
unsafe fn substitute(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: cuuint64_t,
    refused: bool,
) {
    if symbol.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: checked non-NULL; the driver just wrote it.
    let answer = unsafe { pfn.read() } as usize;
    if answer == 0 {
        return;
    }
    // SAFETY: checked non-NULL; the driver accepted it as a NUL-terminated name.
    let Ok(base) = unsafe { CStr::from_ptr(symbol) }.to_str() else {
        return;
    };
    let hook = choose(base, answer, version, flags).or_else(|| {
        if !refused {
            return None;
        }
        match proc_table::resolve(base, version.min(proc_table::HEADER_CUDA_VERSION), flags) {
            Lookup::Found(name) => super::cuda_hook(name.as_bytes()),
            Lookup::VersionNotSufficient | Lookup::NotFound => None,
        }
    });
    if let Some(hook) = hook {
        // SAFETY: `pfn` is valid for writes (the driver wrote it).
        unsafe { pfn.write(hook as *mut c_void) };
    }
}

/// Which of our hooks stands for the driver's `answer` to (base, version, flags), if any.
pub(super) fn choose(
    base: &str,
    answer: usize,
    version: c_int,
    flags: cuuint64_t,
) -> Option<usize> {
    let loaded = cuda_library();
    if let Some(hook) = loaded.table.hook_for_real_address(answer) {
        return Some(hook);
    }
    let abis = proc_table::entries(base);
    if !abis
        .iter()
        .any(|abi| super::cuda_hook(abi.symbol.as_bytes()).is_some())
    {
        return None; // nothing of this name is hooked
    }
    if let Some(library) = loaded.library {
        let known_unhooked = abis.iter().any(|abi| {
            let mut name = [0u8; 96];
            c_name(abi.symbol, &mut name).and_then(|n| library.symbol(n)) == Some(answer)
        });
        if known_unhooked {
            return None;
        }
    }
    // An internal entry point: which ABI did the driver mean?
    let driver_version = driver_version();
    let effective = if driver_version > 0 {
        version.min(driver_version)
    } else {
        version
    };
    if effective > proc_table::HEADER_CUDA_VERSION {
        log_warn_limited!(
            "cuGetProcAddress({base}, {version}): the driver answered with an unknown entry point newer than \
             our CUDA {} table; passing it through unhooked",
            proc_table::HEADER_CUDA_VERSION
        );
        return None;
    }
    match proc_table::resolve(base, effective, flags) {
        Lookup::Found(symbol) => super::cuda_hook(symbol.as_bytes()),
        Lookup::VersionNotSufficient | Lookup::NotFound => None,
    }
}

/// `name` NUL-terminated in `buf`.
fn c_name<'b>(name: &str, buf: &'b mut [u8]) -> Option<&'b CStr> {
    let bytes = name.as_bytes();
    if bytes.len() >= buf.len() {
        return None;
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()] = 0;
    CStr::from_bytes_with_nul(&buf[..=bytes.len()]).ok()
}

static DRIVER_VERSION: AtomicI32 = AtomicI32::new(0);

/// `cuDriverGetVersion`, asked once (0 if unknown).
fn driver_version() -> c_int {
    let cached = DRIVER_VERSION.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let mut version: c_int = 0;
    // SAFETY: `version` is a valid out-pointer.
    let result = unsafe { real::real_cuda().cuDriverGetVersion(&mut version) };
    if result != SUCCESS || version <= 0 {
        return 0;
    }
    DRIVER_VERSION.store(version, Ordering::Relaxed);
    version
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_name_terminates_and_refuses_overlong_names() {
        let mut buf = [0u8; 8];
        assert_eq!(
            c_name("cuInit", &mut buf).map(CStr::to_bytes),
            Some(&b"cuInit"[..])
        );
        assert!(c_name("cuMemAllocAsync", &mut buf).is_none());
    }
}
