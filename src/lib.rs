//! libvgpu: GPU memory and compute isolation for containers, loaded with LD_PRELOAD.
//!
//! Layout: `sys` holds every `unsafe`/libc call behind safe signatures; `config`, `region`, `accounting`
//! and `alloc_table` are policy (safe Rust, unit-tested without preloading); `hooks` is the one declarative
//! list of intercepted symbols and the bodies behind them; `runtime` is the lazily initialised state.

pub mod sys;

pub mod log;

pub mod accounting;
pub mod alloc_table;
pub mod config;
pub mod region;

mod devices;
mod hooks;
mod runtime;
