//! Simulated `libcuda.so.1`: the CUDA driver API over a simulated GPU machine (`simgpu-state`).
//!
//! Test and demo infrastructure, never part of libvgpu.so. Device memory is real host memory (so
//! data round-trips), charged to the machine-wide state so several processes share the simulated
//! GPUs' capacity; kernels take simulated time on a per-device timeline shared by every process.
//! See `README.md` in this crate for the environment variables, the module format and what is
//! simulated how.

// `is_multiple_of` is newer than the workspace's minimum Rust (1.85).
#![allow(clippy::manual_is_multiple_of)]

mod context;
mod device;
mod driver;
mod error;
mod exports;
mod graph;
mod handles;
mod kernels;
mod launch;
mod memory;
mod module;
mod proc_address;
mod ranges;
mod stream;
mod sys;
mod visible;
mod vmm;

/// Names of every exported entry point (for tests and tools that compare against `nm -D`).
pub fn exported_symbols() -> impl Iterator<Item = &'static str> {
    exports::EXPORTS.iter().map(|e| e.name)
}
