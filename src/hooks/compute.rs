//! Placeholder for the compute limiter (the token bucket comes later; design.md "Compute isolation").
//!
//! `before_launch` is called by every launch hook with the region index of the launching context's
//! device (`None` when it is not known), after the runtime is ready. It may wait (bounded back-off) or
//! refuse with an error code; today it admits every launch at the cost of an inlined no-op.

use vgpu_abi::cuda::CUresult;

use crate::runtime::Runtime;

/// Decides whether a kernel may be submitted now.
#[inline(always)]
pub fn before_launch(_runtime: &Runtime, _device: Option<usize>) -> Result<(), CUresult> {
    Ok(())
}
