//! THE list of intercepted symbols. Adding a hook is one line here plus its body.
//!
//! Sections:
//! - `cuda`: exported CUDA symbols with a body (`symbol => body;`). The body takes the symbol's exact
//!   arguments; its signature comes from the generated `PFN_` type of that ABI (build.rs), and the
//!   export is checked against `pfn::<symbol>` at compile time.
//! - `cuda_uses`: real entry points our own code calls; resolved into the table, not exported.
//! - `nvml`, `nvml_uses`: the same for NVML.
//!
//! Every symbol here is one ABI: `cuMemAlloc` is the 32-bit CUDA 2.0 ABI and `cuMemAlloc_v2` the
//! 3.2 one, and `cuGetProcAddress` hands out whichever the caller asked for (`proc_address.rs`).

use super::{capture, context, info, init, launch, memory, nvml, proc_address};

hooks! {
    cuda {
        // Initialisation and the lookup front door.
        cuInit => init::cu_init;
        cuGetProcAddress => proc_address::get_proc_address;
        cuGetProcAddress_v2 => proc_address::get_proc_address_v2;

        // Device memory: reserve, call, commit or release.
        cuMemAlloc => memory::alloc_v1;
        cuMemAlloc_v2 => memory::alloc;
        cuMemAllocPitch => memory::alloc_pitch_v1;
        cuMemAllocPitch_v2 => memory::alloc_pitch;
        cuMemAllocManaged => memory::alloc_managed;
        cuMemFree => memory::free_v1;
        cuMemFree_v2 => memory::free;
        cuMemAllocAsync => memory::alloc_async;
        cuMemAllocAsync_ptsz => memory::alloc_async_ptsz;
        cuMemAllocFromPoolAsync => memory::alloc_from_pool_async;
        cuMemAllocFromPoolAsync_ptsz => memory::alloc_from_pool_async_ptsz;
        cuMemFreeAsync => memory::free_async;
        cuMemFreeAsync_ptsz => memory::free_async_ptsz;
        cuMemCreate => memory::create;
        cuMemRelease => memory::release;
        cuArrayCreate => memory::array_create_v1;
        cuArrayCreate_v2 => memory::array_create;
        cuArray3DCreate => memory::array_3d_create_v1;
        cuArray3DCreate_v2 => memory::array_3d_create;
        cuArrayDestroy => memory::array_destroy;
        cuMipmappedArrayCreate => memory::mipmapped_array_create;
        cuMipmappedArrayDestroy => memory::mipmapped_array_destroy;

        // Contexts hold device memory of their own.
        cuCtxCreate => context::create_v1;
        cuCtxCreate_v2 => context::create;
        cuCtxCreate_v3 => context::create_v3;
        cuCtxCreate_v4 => context::create_v4;
        cuCtxDestroy => context::destroy_v1;
        cuCtxDestroy_v2 => context::destroy;
        cuDevicePrimaryCtxRetain => context::primary_retain;
        cuDevicePrimaryCtxRelease => context::primary_release_v1;
        cuDevicePrimaryCtxRelease_v2 => context::primary_release;
        cuDevicePrimaryCtxReset => context::primary_reset_v1;
        cuDevicePrimaryCtxReset_v2 => context::primary_reset;

        // What the process sees.
        cuMemGetInfo => info::mem_get_info_v1;
        cuMemGetInfo_v2 => info::mem_get_info;
        cuDeviceTotalMem => info::device_total_mem_v1;
        cuDeviceTotalMem_v2 => info::device_total_mem;

        // Every launch path pays the compute limiter (compute.rs).
        cuLaunchKernel => launch::kernel;
        cuLaunchKernel_ptsz => launch::kernel_ptsz;
        cuLaunchKernelEx => launch::kernel_ex;
        cuLaunchKernelEx_ptsz => launch::kernel_ex_ptsz;
        cuLaunchCooperativeKernel => launch::cooperative;
        cuLaunchCooperativeKernel_ptsz => launch::cooperative_ptsz;
        cuLaunchCooperativeKernelMultiDevice => launch::cooperative_multi_device;
        cuGraphLaunch => launch::graph;
        cuGraphLaunch_ptsz => launch::graph_ptsz;

        // Captures in progress, so that launches ask the driver about capture only while one is.
        cuStreamBeginCapture => capture::begin_v1;
        cuStreamBeginCapture_ptsz => capture::begin_v1_ptsz;
        cuStreamBeginCapture_v2 => capture::begin;
        cuStreamBeginCapture_v2_ptsz => capture::begin_ptsz;
        cuStreamBeginCaptureToGraph => capture::begin_to_graph;
        cuStreamBeginCaptureToGraph_ptsz => capture::begin_to_graph_ptsz;
        cuStreamEndCapture => capture::end;
        cuStreamEndCapture_ptsz => capture::end_ptsz;
    }
    cuda_uses {
        cuDriverGetVersion,
        cuDeviceGetCount,
        cuDeviceGetUuid,
        cuDeviceGetUuid_v2,
        cuDeviceGetAttribute,
        cuCtxGetCurrent,
        cuCtxGetDevice,
        cuCtxPushCurrent_v2,
        cuCtxPopCurrent_v2,
        cuDevicePrimaryCtxGetState,
        // The limiter's probes and the device and capture state of a launch's stream.
        cuEventCreate,
        cuEventRecord,
        cuEventRecord_ptsz,
        cuEventQuery,
        cuEventElapsedTime,
        cuEventDestroy_v2,
        cuStreamGetCtx,
        cuStreamGetCtx_ptsz,
        cuStreamIsCapturing,
        cuStreamIsCapturing_ptsz,
    }
    nvml {
        nvmlInit => nvml::init_v1;
        nvmlInit_v2 => nvml::init;
        nvmlInitWithFlags => nvml::init_with_flags;
        nvmlDeviceGetMemoryInfo => nvml::memory_info;
        nvmlDeviceGetMemoryInfo_v2 => nvml::memory_info_v2;
    }
    nvml_uses {
        nvmlDeviceGetCount_v2,
        nvmlDeviceGetHandleByIndex_v2,
        nvmlDeviceGetUUID,
    }
}
