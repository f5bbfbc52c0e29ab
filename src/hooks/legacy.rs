//! The CUDA 2.x array descriptors, which `cuda.h` declares only under `__CUDA_API_VERSION_INTERNAL`
//! (so the committed bindings lack them). Layout from cuda.h 12.9, `CUDA_ARRAY_DESCRIPTOR_v1_st` and
//! `CUDA_ARRAY3D_DESCRIPTOR_v1_st`: `unsigned int` sizes instead of `size_t`.

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::c_uint;

use vgpu_abi::cuda::CUarray_format;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUDA_ARRAY_DESCRIPTOR_v1 {
    pub Width: c_uint,
    pub Height: c_uint,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUDA_ARRAY3D_DESCRIPTOR_v1 {
    pub Width: c_uint,
    pub Height: c_uint,
    pub Depth: c_uint,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
    pub Flags: c_uint,
}
