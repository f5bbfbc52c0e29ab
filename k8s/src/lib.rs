//! Kubernetes glue for vgpu, packaged apart from the core (the core never depends on it):
//!
//! - the device plugin ([`plugin`]): kubelet device plugin API v1beta1 over unix sockets, GPUs found
//!   through NVML opened at run time ([`nvml`], [`gpus`]), `nvidia.com/gpu` advertised as GPUs × split
//!   count, `Allocate` answering with HAMi's contract (`hami-contract.md` 1.2) either from the node's
//!   fixed slices ([`config`]) or from HAMi's scheduler annotations ([`hami`]);
//! - the node monitor's directory cleanup ([`gc`]), run beside `vgpu exporter`;
//! - the host installer ([`install`]): `libvgpu.so` and `ld.so.preload`, replaced atomically.
//!
//! The API server is reached through a small client of our own ([`kube`]): a handful of calls, no
//! informers, so the plugin stays a small binary that builds quickly.

// First: the logging macros are used by every module below.
#[macro_use]
pub mod log;

pub mod allocate;
pub mod api;
pub mod config;
pub mod gc;
pub mod gpus;
pub mod hami;
pub mod install;
pub mod kube;
pub mod nvml;
pub mod plugin;
pub mod pods;
pub mod preferred;
pub mod time;
