//! `cuGetProcAddress` and `cuGetExportTable`.
//!
//! The table that maps a request (base name, CUDA version, flags) to an exported symbol is generated
//! from NVIDIA's headers (`vgpu_abi::proc_table`). The pointer handed back is always our own export
//! of that symbol, from the static table `exports::EXPORTS`, never `dlsym`: with a library preloaded,
//! `dlsym` would return the preloaded library's function instead of ours.

use std::ffi::c_void;
use std::os::raw::c_char;
use std::sync::OnceLock;

use vgpu_abi::cuda::{cudaError_enum as E, CUdriverProcAddressQueryResult};
use vgpu_abi::proc_table::{self, Lookup, FLAG_LEGACY_STREAM, FLAG_PER_THREAD_DEFAULT_STREAM};

use crate::driver;
use crate::error::CuResult;
use crate::exports::EXPORTS;
use crate::sys::{self, Out};

/// Our exports sorted by name, for binary search.
fn sorted_exports() -> &'static [(&'static str, usize)] {
    static SORTED: OnceLock<Vec<(&'static str, usize)>> = OnceLock::new();
    SORTED.get_or_init(|| {
        let mut v: Vec<(&'static str, usize)> = EXPORTS
            .iter()
            .map(|e| (e.name, e.address as usize))
            .collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    })
}

/// The address of our export `symbol`, if we implement it.
pub(crate) fn export(symbol: &str) -> Option<*mut c_void> {
    let table = sorted_exports();
    table
        .binary_search_by_key(&symbol, |e| e.0)
        .ok()
        .map(|i| table[i].1 as *mut c_void)
}

/// What `cuGetProcAddress` answers, without the out-pointer plumbing.
pub(crate) fn resolve(
    symbol: &str,
    version: i32,
    flags: u64,
) -> Result<*mut c_void, (E, CUdriverProcAddressQueryResult)> {
    use CUdriverProcAddressQueryResult as Q;
    match proc_table::resolve(symbol, version, flags) {
        Lookup::Found(name) => match export(name) {
            Some(p) => Ok(p),
            None => Err((
                E::CUDA_ERROR_NOT_FOUND,
                Q::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
            )),
        },
        Lookup::VersionNotSufficient => Err((
            E::CUDA_ERROR_NOT_FOUND,
            Q::CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT,
        )),
        Lookup::NotFound => Err((
            E::CUDA_ERROR_NOT_FOUND,
            Q::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
        )),
    }
}

/// `cuGetProcAddress` (both ABIs; `status` is NULL for the CUDA 11.3 one). Works before `cuInit`,
/// as libcudart relies on.
pub(crate) fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut CUdriverProcAddressQueryResult,
) -> CuResult {
    let pfn = Out::new(pfn)?;
    let symbol = sys::cstr(symbol)?;
    let status = Out::optional(status);
    // The requested version may not exceed the driver's (NVIDIA driver API reference, "Driver Entry
    // Point Access"); flags are DEFAULT (0), LEGACY_STREAM (1) or PER_THREAD_DEFAULT_STREAM (2).
    let driver_version = driver::machine()?.driver_version();
    if version > driver_version
        || flags & !(FLAG_LEGACY_STREAM | FLAG_PER_THREAD_DEFAULT_STREAM) != 0
    {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let found = match symbol.to_str() {
        Ok(name) => resolve(name, version, flags),
        Err(_) => Err((
            E::CUDA_ERROR_NOT_FOUND,
            CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
        )),
    };
    match found {
        Ok(p) => {
            pfn.write(p);
            if let Some(s) = status {
                s.write(CUdriverProcAddressQueryResult::CU_GET_PROC_ADDRESS_SUCCESS);
            }
            Ok(())
        }
        Err((code, query)) => {
            pfn.write(std::ptr::null_mut());
            if let Some(s) = status {
                s.write(query);
            }
            Err(code)
        }
    }
}

/// `cuGetExportTable`: the driver's private tables (used by libcudart) cannot be simulated.
pub(crate) fn get_export_table(
    table: *mut *const c_void,
    id: *const vgpu_abi::cuda::CUuuid,
) -> CuResult {
    let table = Out::new(table)?;
    if id.is_null() {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    table.write(std::ptr::null());
    Err(E::CUDA_ERROR_NOT_SUPPORTED)
}
