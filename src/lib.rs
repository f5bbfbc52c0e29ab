//! libvgpu: GPU memory and compute isolation for containers, loaded with LD_PRELOAD.
//!
//! Layout: `sys` holds every `unsafe`/libc call behind safe signatures; `config`, `region`, `accounting`,
//! `alloc_table` and `limiter` are the policy, re-exported from the `vgpu-policy` crate (safe Rust,
//! unit-tested without preloading, shared with the tools); `hooks` is the one declarative list of
//! intercepted symbols and the bodies behind them; `runtime` is the lazily initialised state.

// First, so that every later module sees `log_warn!` and friends by name (they are also exported at
// the crate root as `crate::log_warn!`).
#[macro_use]
pub mod log;

pub mod sys;

pub use vgpu_policy::{accounting, alloc_table, config, limiter, region};

mod devices;
mod hooks;
mod runtime;

/// Every CUDA and NVML symbol libvgpu.so exports as a hook (it also exports `dlsym`), in the order of
/// `src/hooks/list.rs`. For tests that compare it with `nm -D --defined-only`.
pub use hooks::HOOKED_SYMBOLS;
