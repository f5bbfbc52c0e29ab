//! The CUDA driver as a workload sees it: opened with `dlopen("libcuda.so.1")` and resolved with
//! `dlsym`, as libraries like cudarc and ctypes do, so under `vgpu run` every call passes through
//! libvgpu.so's `dlsym` door. Signatures are the generated ones from `vgpu_abi`; each call is wrapped in
//! a safe method that owns the pointers it passes.

use std::ffi::{CStr, CString};

use vgpu_abi::cuda::{
    cudaError_enum, CUcontext, CUdevice, CUdevice_attribute_enum, CUdeviceptr, CUfunction,
    CUmodule, CUresult, PFN_cuCtxCreate_v3020, PFN_cuCtxSynchronize_v2000,
    PFN_cuDeviceGetAttribute_v2000, PFN_cuDeviceGetName_v2000, PFN_cuDeviceGet_v2000,
    PFN_cuGetErrorName_v6000, PFN_cuInit_v2000, PFN_cuLaunchKernel_v4000, PFN_cuMemAlloc_v3020,
    PFN_cuMemFree_v3020, PFN_cuMemGetInfo_v3020, PFN_cuModuleGetFunction_v2000,
    PFN_cuModuleLoadData_v2000,
};

use crate::sys::Library;

/// Calls a resolved entry point (the caller's `// SAFETY:` covers the arguments) and turns its
/// `CUresult` into a `Result`. `Library::function` only returns non-null addresses, so `None` cannot
/// happen; it still becomes an error rather than a panic.
macro_rules! driver_call {
    ($self:ident . $field:ident, $name:literal, ($($arg:expr),* $(,)?)) => {
        match $self.$field {
            Some(function) => $self.check($name, unsafe { function($($arg),*) }),
            None => Err(CudaError {
                call: $name,
                code: cudaError_enum::CUDA_ERROR_NOT_FOUND,
                name: "a missing entry point".into(),
            }),
        }
    };
}

/// A failed driver call: which call, and the driver's code.
#[derive(Debug)]
pub struct CudaError {
    pub call: &'static str,
    pub code: CUresult,
    pub name: String,
}

impl CudaError {
    pub fn is_out_of_memory(&self) -> bool {
        self.code == cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
    }
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed with {} ({})",
            self.call, self.name, self.code.0
        )
    }
}

pub struct Driver {
    get_error_name: PFN_cuGetErrorName_v6000,
    init: PFN_cuInit_v2000,
    device_get: PFN_cuDeviceGet_v2000,
    device_get_name: PFN_cuDeviceGetName_v2000,
    device_get_attribute: PFN_cuDeviceGetAttribute_v2000,
    ctx_create: PFN_cuCtxCreate_v3020,
    ctx_synchronize: PFN_cuCtxSynchronize_v2000,
    mem_get_info: PFN_cuMemGetInfo_v3020,
    mem_alloc: PFN_cuMemAlloc_v3020,
    mem_free: PFN_cuMemFree_v3020,
    module_load_data: PFN_cuModuleLoadData_v2000,
    module_get_function: PFN_cuModuleGetFunction_v2000,
    launch_kernel: PFN_cuLaunchKernel_v4000,
}

/// A device with a context current on this thread.
pub struct Device {
    pub ordinal: i32,
    pub name: String,
    pub sm_count: u32,
}

impl Driver {
    /// Opens the driver and runs `cuInit(0)`.
    pub fn open() -> Result<Driver, String> {
        let lib = Library::open("libcuda.so.1")?;
        // The names are the ABI the PFN type describes (cuMemAlloc_v2 is PFN_cuMemAlloc_v3020, and so on).
        let driver = Driver {
            get_error_name: lib.function("cuGetErrorName")?,
            init: lib.function("cuInit")?,
            device_get: lib.function("cuDeviceGet")?,
            device_get_name: lib.function("cuDeviceGetName")?,
            device_get_attribute: lib.function("cuDeviceGetAttribute")?,
            ctx_create: lib.function("cuCtxCreate_v2")?,
            ctx_synchronize: lib.function("cuCtxSynchronize")?,
            mem_get_info: lib.function("cuMemGetInfo_v2")?,
            mem_alloc: lib.function("cuMemAlloc_v2")?,
            mem_free: lib.function("cuMemFree_v2")?,
            module_load_data: lib.function("cuModuleLoadData")?,
            module_get_function: lib.function("cuModuleGetFunction")?,
            launch_kernel: lib.function("cuLaunchKernel")?,
        };
        // `lib` goes out of scope here, but `Library` never closes its handle, so the function pointers
        // above stay valid for the life of the process.
        // SAFETY: cuInit takes flags by value.
        driver_call!(driver.init, "cuInit", (0)).map_err(|e| e.to_string())?;
        Ok(driver)
    }

    fn check(&self, call_name: &'static str, rc: CUresult) -> Result<(), CudaError> {
        if rc == cudaError_enum::CUDA_SUCCESS {
            return Ok(());
        }
        let mut text: *const std::os::raw::c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string (or leaves it untouched on error).
        let known = match self.get_error_name {
            Some(get_error_name) => {
                (unsafe { get_error_name(rc, &mut text) }) == cudaError_enum::CUDA_SUCCESS
            }
            None => false,
        };
        let name = if known && !text.is_null() {
            // SAFETY: the driver returned a NUL-terminated static string.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        } else {
            "an unknown error".to_string()
        };
        Err(CudaError {
            call: call_name,
            code: rc,
            name,
        })
    }

    /// Device `ordinal`, with a fresh context made current on this thread.
    pub fn open_device(&self, ordinal: i32) -> Result<Device, CudaError> {
        let mut handle: CUdevice = 0;
        // SAFETY: one CUdevice written through a pointer to a local.
        driver_call!(self.device_get, "cuDeviceGet", (&mut handle, ordinal))?;
        let mut name = [0 as std::os::raw::c_char; 128];
        // SAFETY: the driver writes at most len bytes, NUL-terminated, into our buffer.
        driver_call!(
            self.device_get_name,
            "cuDeviceGetName",
            (name.as_mut_ptr(), 128, handle)
        )?;
        // SAFETY: NUL-terminated by the driver (and the buffer starts zeroed).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut sm_count = 0;
        let attr = CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        // SAFETY: one int written through a pointer to a local.
        driver_call!(
            self.device_get_attribute,
            "cuDeviceGetAttribute",
            (&mut sm_count, attr, handle)
        )?;
        let mut context: CUcontext = std::ptr::null_mut();
        // SAFETY: one CUcontext written through a pointer to a local; it stays current on this thread.
        driver_call!(self.ctx_create, "cuCtxCreate_v2", (&mut context, 0, handle))?;
        Ok(Device {
            ordinal,
            name,
            sm_count: sm_count.max(1) as u32,
        })
    }

    /// (free, total) bytes as the process is allowed to see them.
    pub fn memory_info(&self) -> Result<(u64, u64), CudaError> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two usize written through pointers to locals.
        driver_call!(
            self.mem_get_info,
            "cuMemGetInfo_v2",
            (&mut free, &mut total)
        )?;
        Ok((free as u64, total as u64))
    }

    pub fn alloc(&self, bytes: u64) -> Result<CUdeviceptr, CudaError> {
        let mut ptr: CUdeviceptr = 0;
        // SAFETY: one device pointer written through a pointer to a local.
        driver_call!(self.mem_alloc, "cuMemAlloc_v2", (&mut ptr, bytes as usize))?;
        Ok(ptr)
    }

    pub fn free(&self, ptr: CUdeviceptr) -> Result<(), CudaError> {
        // SAFETY: a pointer this process allocated and has not freed.
        driver_call!(self.mem_free, "cuMemFree_v2", (ptr))
    }

    /// Loads a module image (the simulated driver's text format) and returns the named kernel.
    pub fn load_kernel(&self, image: &str, kernel: &str) -> Result<CUfunction, CudaError> {
        let image = CString::new(image).unwrap_or_default();
        let kernel = CString::new(kernel).unwrap_or_default();
        let mut module: CUmodule = std::ptr::null_mut();
        // SAFETY: a NUL-terminated image that outlives the call; one CUmodule written to a local.
        driver_call!(
            self.module_load_data,
            "cuModuleLoadData",
            (&mut module, image.as_ptr().cast())
        )?;
        let mut function: CUfunction = std::ptr::null_mut();
        // SAFETY: the module just loaded, a NUL-terminated name; one CUfunction written to a local.
        driver_call!(
            self.module_get_function,
            "cuModuleGetFunction",
            (&mut function, module, kernel.as_ptr())
        )?;
        Ok(function)
    }

    /// Launches `function` with `grid` blocks of `threads` threads on the default stream, no params.
    pub fn launch(&self, function: CUfunction, grid: u32, threads: u32) -> Result<(), CudaError> {
        // SAFETY: a kernel handle from load_kernel; the simulated kernels we launch take no params, so
        // NULL kernelParams and extra are valid.
        driver_call!(
            self.launch_kernel,
            "cuLaunchKernel",
            (
                function,
                grid,
                1,
                1,
                threads,
                1,
                1,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut()
            )
        )
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        // SAFETY: no arguments; acts on the current context.
        driver_call!(self.ctx_synchronize, "cuCtxSynchronize", ())
    }
}
