//! vgpu's policy, as plain Rust with no hooks and no globals: what libvgpu.so enforces and what the
//! tools read. `config` parses the HAMi environment (fail closed); `region` is the shared region file
//! in HAMi-core's v1 layout plus vgpu's extension; `accounting` and `alloc_table` charge and release
//! device memory; `limiter` is the compute limiter. `sys` holds the few OS calls they need (file
//! mappings, kernel-released locks, process liveness), each behind a safe signature.
//!
//! libvgpu.so re-exports these modules. The `vgpu` command and the Kubernetes glue depend on this crate
//! rather than on libvgpu's rlib, so they never link the interposed `dlsym` or the CUDA exports.

pub mod sys {
    //! Every OS call the policy needs, behind safe signatures with `// SAFETY:` notes.
    pub mod lock;
    pub mod mmap;
    pub mod proc_info;
}

pub mod accounting;
pub mod alloc_table;
pub mod config;
pub mod limiter;
pub mod region;
