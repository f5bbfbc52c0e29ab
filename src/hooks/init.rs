//! `cuInit`: the first driver call of almost every program, and where a refused process learns it.

use std::ffi::c_uint;

use vgpu_abi::cuda::CUresult;

use super::real_cuda;
use crate::runtime::{self, Gate};

/// Body of `cuInit`. A process that failed closed gets `CUDA_ERROR_NOT_PERMITTED` and the real driver
/// is never initialised, so every later driver call fails too (hami-contract.md 2.3).
pub unsafe fn cu_init(flags: c_uint) -> CUresult {
    if let Gate::Refused = runtime::gate() {
        return runtime::CUDA_REFUSED;
    }
    // SAFETY: the caller's argument, unchanged.
    unsafe { real_cuda().cuInit(flags) }
}
