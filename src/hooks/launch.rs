//! What every launch hook does before the real launch: note that the container is active, and ask the
//! compute limiter.
//!
//! This is the hottest path we have. The common case is one relaxed load of the runtime state, the
//! per-thread current-device cache, one relaxed load of `recent_kernel`, and the limiter's own fast path:
//! no allocation, lock, formatting or syscall.

use vgpu_abi::cuda::CUresult;

use super::compute;
use crate::runtime::{self, Gate};

/// `Ok(())` to submit the launch now, `Err(code)` to refuse it.
#[inline(always)]
pub fn before_launch() -> Result<(), CUresult> {
    match runtime::gate() {
        Gate::Ready(rt) => {
            // Only a write when the value changes: a launch loop must not bounce the cache line
            // between processes (design.md, "Compute isolation").
            rt.mark_kernel_launched();
            compute::before_launch(rt, rt.devices().current())
        }
        Gate::PassThrough => Ok(()),
        Gate::Refused => Err(runtime::CUDA_REFUSED),
    }
}
