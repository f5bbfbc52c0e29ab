//! NVML, opened at run time with `dlopen` (the plugin never links `libnvidia-ml.so.1`: the same binary
//! runs on nodes without a driver, and tests point it at the simulated library through
//! `LD_LIBRARY_PATH`). Only the handful of calls the plugin needs; signatures from `vgpu_abi::nvml`.
//!
//! All `unsafe` of the crate lives here, behind safe methods.

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;

use vgpu_abi::nvml::{
    nvmlDevice_t, nvmlMemory_t, nvmlReturn_enum, nvmlReturn_t, PFN_nvmlDeviceGetCount_v2,
    PFN_nvmlDeviceGetHandleByIndex_v2, PFN_nvmlDeviceGetMemoryInfo, PFN_nvmlDeviceGetName,
    PFN_nvmlDeviceGetNumaNodeId, PFN_nvmlDeviceGetUUID, PFN_nvmlInit_v2,
    NVML_DEVICE_NAME_V2_BUFFER_SIZE, NVML_DEVICE_UUID_V2_BUFFER_SIZE,
};

/// The library name the driver installs (and the simulator builds).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// An NVML call that did not return `NVML_SUCCESS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmlError {
    pub function: &'static str,
    pub code: nvmlReturn_t,
}

impl NvmlError {
    /// The device fell off the bus or stopped answering (`NVML_ERROR_GPU_IS_LOST`).
    pub fn is_gpu_lost(&self) -> bool {
        self.code == nvmlReturn_enum::NVML_ERROR_GPU_IS_LOST
    }

    /// The device needs a reset before it can be used again.
    pub fn is_reset_required(&self) -> bool {
        self.code == nvmlReturn_enum::NVML_ERROR_RESET_REQUIRED
    }
}

impl fmt::Display for NvmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.code.0 {
            1 => "uninitialized",
            2 => "invalid argument",
            3 => "not supported",
            9 => "driver not loaded",
            13 => "function not found",
            15 => "GPU is lost",
            16 => "GPU reset required",
            999 => "unknown error",
            _ => "error",
        };
        write!(f, "{} returned {} ({what})", self.function, self.code.0)
    }
}

impl std::error::Error for NvmlError {}

/// A device handle. NVML handles are process-wide and stay valid until `nvmlShutdown`, which we never
/// call while the plugin runs.
#[derive(Clone, Copy, Debug)]
pub struct DeviceHandle(nvmlDevice_t);

// SAFETY: an nvmlDevice_t is an opaque token that NVML accepts from any thread (NVML is thread-safe).
unsafe impl Send for DeviceHandle {}
// SAFETY: as above; the handle is never dereferenced on our side.
unsafe impl Sync for DeviceHandle {}

/// The opened library and the entry points we use. Required ones are resolved at open; the NUMA query
/// is optional (older drivers lack it).
pub struct Nvml {
    device_count: PFN_nvmlDeviceGetCount_v2,
    handle_by_index: PFN_nvmlDeviceGetHandleByIndex_v2,
    uuid: PFN_nvmlDeviceGetUUID,
    name: PFN_nvmlDeviceGetName,
    memory_info: PFN_nvmlDeviceGetMemoryInfo,
    numa_node: Option<PFN_nvmlDeviceGetNumaNodeId>,
    /// Kept open for the life of the process: the function pointers point into it.
    _library: *mut c_void,
}

// SAFETY: the fields are function pointers into a library that stays loaded, and NVML is thread-safe.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

impl Nvml {
    /// `dlopen`s `library` (a name searched like the dynamic linker does, or a path) and runs
    /// `nvmlInit_v2`.
    pub fn open(library: &str) -> Result<Nvml, String> {
        let c_name = CString::new(library)
            .map_err(|_| format!("NVML library name {library:?} has a NUL byte"))?;
        // SAFETY: a valid C string; RTLD_LOCAL keeps NVML's symbols out of the global namespace.
        let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("cannot load {library}: {}", dl_error()));
        }
        // SAFETY: each symbol is resolved from NVML by its exported name, and the PFN_* type is the
        // signature nvml.h declares for that name.
        let nvml = unsafe {
            let init: PFN_nvmlInit_v2 = symbol(handle, c"nvmlInit_v2")?;
            let nvml = Nvml {
                device_count: symbol(handle, c"nvmlDeviceGetCount_v2")?,
                handle_by_index: symbol(handle, c"nvmlDeviceGetHandleByIndex_v2")?,
                uuid: symbol(handle, c"nvmlDeviceGetUUID")?,
                name: symbol(handle, c"nvmlDeviceGetName")?,
                memory_info: symbol(handle, c"nvmlDeviceGetMemoryInfo")?,
                numa_node: symbol(handle, c"nvmlDeviceGetNumaNodeId").ok(),
                _library: handle,
            };
            check("nvmlInit_v2", init()).map_err(|e| e.to_string())?;
            nvml
        };
        Ok(nvml)
    }

    pub fn device_count(&self) -> Result<u32, NvmlError> {
        let mut count = 0;
        // SAFETY: the out-pointer is a live u32.
        check("nvmlDeviceGetCount_v2", unsafe {
            (self.device_count)(&mut count)
        })?;
        Ok(count)
    }

    pub fn device(&self, index: u32) -> Result<DeviceHandle, NvmlError> {
        let mut device: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: the out-pointer is a live handle slot.
        check("nvmlDeviceGetHandleByIndex_v2", unsafe {
            (self.handle_by_index)(index, &mut device)
        })?;
        Ok(DeviceHandle(device))
    }

    pub fn uuid(&self, device: DeviceHandle) -> Result<String, NvmlError> {
        let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
        // SAFETY: the buffer is as long as the length we pass; NVML NUL-terminates what it writes.
        check("nvmlDeviceGetUUID", unsafe {
            (self.uuid)(device.0, buf.as_mut_ptr(), buf.len() as u32)
        })?;
        Ok(c_buffer_to_string(&buf))
    }

    pub fn name(&self, device: DeviceHandle) -> Result<String, NvmlError> {
        let mut buf = [0 as c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE as usize];
        // SAFETY: as for the UUID.
        check("nvmlDeviceGetName", unsafe {
            (self.name)(device.0, buf.as_mut_ptr(), buf.len() as u32)
        })?;
        Ok(c_buffer_to_string(&buf))
    }

    /// Total framebuffer memory in bytes. Also the health probe: a lost GPU fails it.
    pub fn memory_total(&self, device: DeviceHandle) -> Result<u64, NvmlError> {
        let mut memory = nvmlMemory_t {
            total: 0,
            free: 0,
            used: 0,
        };
        // SAFETY: the out-pointer is a live nvmlMemory_t (the v1 struct this entry point takes).
        check("nvmlDeviceGetMemoryInfo", unsafe {
            (self.memory_info)(device.0, &mut memory)
        })?;
        Ok(memory.total)
    }

    /// The device's NUMA node, when the driver knows it.
    pub fn numa_node(&self, device: DeviceHandle) -> Option<i64> {
        let query = self.numa_node?;
        let mut node = 0;
        // SAFETY: the out-pointer is a live u32.
        let rc = unsafe { query(device.0, &mut node) };
        (rc == nvmlReturn_enum::NVML_SUCCESS).then_some(i64::from(node))
    }
}

fn check(function: &'static str, code: nvmlReturn_t) -> Result<(), NvmlError> {
    if code == nvmlReturn_enum::NVML_SUCCESS {
        Ok(())
    } else {
        Err(NvmlError { function, code })
    }
}

/// # Safety
/// `T` must be the function-pointer type of the symbol `name` in the library `handle`.
unsafe fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T, String> {
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: `handle` came from dlopen and `name` is a C string.
    let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if address.is_null() {
        return Err(format!("NVML has no {}", name.to_string_lossy()));
    }
    // SAFETY: the caller guarantees `T` is the symbol's function-pointer type (same size, checked).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&address) })
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl* call on this thread.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-NULL, NUL-terminated.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

fn c_buffer_to_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
