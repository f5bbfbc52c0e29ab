//! The ABI that libvgpu, the simulated driver and the tools share: types generated from NVIDIA's public
//! headers (CUDA 12.9), and the table behind `cuGetProcAddress`. Nothing here links against a driver.
//!
//! Regenerate with `tools/gen-abi.sh`; the generated files are committed so a fresh machine needs only
//! cargo and a C compiler.

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all
)]
pub mod cuda {
    //! `cuda.h` types and one `PFN_<name>_v<version>` type per ABI (from `cudaTypedefs.h`).
    include!("generated/cuda.rs");
}

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all
)]
pub mod nvml {
    //! `nvml.h` types, plus one `PFN_<name>` type per declared function and `NVML_FUNCTIONS`.
    include!("generated/nvml.rs");
}

pub mod proc_table;
