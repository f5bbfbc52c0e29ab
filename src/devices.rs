//! Device identity: every CUDA ordinal and NVML handle is mapped, by UUID, to one region index, the
//! container NVML index of that GPU (hami-contract.md 2.4). `CUDA_VISIBLE_DEVICES` is never parsed:
//! the driver already applied it to the ordinals, and the UUID says which GPU an ordinal is.
//!
//! The region order is learnt at init from NVML (index order). CUDA ordinals are resolved lazily,
//! because `cuDeviceGetUuid` works only after the application's `cuInit`; an answer is cached only
//! once the driver gave one. Lookups after that are one atomic load.
//!
//! The current context's device is asked on every allocation, launch and memory query, so it has a
//! fast path: a process that sees a single CUDA device (the usual container) knows the answer without
//! asking the driver at all, since every context is on that device. Otherwise the context is asked
//! for (`cuCtxGetCurrent`) and its device comes from a per-thread cache keyed by the context.

use std::ffi::{c_char, c_uint, CStr};
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

use vgpu_abi::cuda::{cudaError_enum, CUcontext, CUdevice, CUuuid};
use vgpu_abi::nvml::{nvmlDevice_t, nvmlReturn_enum};

use crate::hooks::{real_cuda, real_nvml};
use crate::sys::thread_state;

/// Region arrays have 16 entries (hami-contract.md 3.1).
pub const MAX_REGION_DEVICES: usize = 16;
/// CUDA ordinals we remember; a process sees at most the container's GPUs.
const MAX_ORDINALS: usize = 64;
/// NVML handles we remember (one per device; MIG handles are separate objects).
const MAX_NVML_HANDLES: usize = 64;

const UNKNOWN: u8 = u8::MAX;
const UNMAPPED: u8 = u8::MAX - 1;
/// `sole`: the process sees several CUDA devices (or none), so the current context decides.
const SEVERAL: u8 = u8::MAX - 2;

/// UUID of a device as NVML prints it: `GPU-` + 8-4-4-4-12 lowercase hex digits (40 characters).
pub type UuidText = String;

/// The container's devices in region order, and caches from CUDA ordinals and NVML handles to them.
pub struct Devices {
    uuids: Vec<UuidText>,
    by_ordinal: [AtomicU8; MAX_ORDINALS],
    nvml_handles: [AtomicUsize; MAX_NVML_HANDLES],
    nvml_indices: [AtomicU8; MAX_NVML_HANDLES],
    /// When the process sees exactly one CUDA device: its region index (or `UNMAPPED`). `SEVERAL`
    /// when it sees more (or none); `UNKNOWN` until the driver has answered (after `cuInit`).
    sole: AtomicU8,
}

/// Bumped whenever a context is destroyed, so per-thread "current device" caches cannot outlive the
/// context they describe (a new context may reuse the address).
static CONTEXT_GENERATION: AtomicU32 = AtomicU32::new(0);

/// `ThreadState::device_index_plus_one` of a context whose device is not one of the container's.
const CACHED_UNMAPPED: u8 = u8::MAX;

impl Devices {
    /// `uuids[i]` is region index i.
    pub fn new(uuids: Vec<UuidText>) -> Self {
        Devices {
            uuids,
            by_ordinal: [const { AtomicU8::new(UNKNOWN) }; MAX_ORDINALS],
            nvml_handles: [const { AtomicUsize::new(0) }; MAX_NVML_HANDLES],
            nvml_indices: [const { AtomicU8::new(UNKNOWN) }; MAX_NVML_HANDLES],
            sole: AtomicU8::new(UNKNOWN),
        }
    }

    fn index_of_uuid(&self, uuid: &str) -> Option<usize> {
        self.uuids
            .iter()
            .position(|u| u.eq_ignore_ascii_case(uuid))
            .filter(|&i| i < MAX_REGION_DEVICES)
    }

    /// Region index of CUDA ordinal `ordinal`, `None` if it is not one of the container's GPUs (or
    /// the driver cannot say yet).
    pub fn of_cuda_ordinal(&self, ordinal: CUdevice) -> Option<usize> {
        let slot = self.by_ordinal.get(usize::try_from(ordinal).ok()?)?;
        match slot.load(Ordering::Relaxed) {
            UNKNOWN => {
                let uuid = cuda_uuid(ordinal)?;
                let index = self.index_of_uuid(&uuid);
                if index.is_none() {
                    log_warn_once!("CUDA device {ordinal} ({uuid}) is not among the container's GPUs; it is not limited");
                }
                slot.store(index.map_or(UNMAPPED, |i| i as u8), Ordering::Relaxed);
                index
            }
            UNMAPPED => None,
            index => Some(usize::from(index)),
        }
    }

    /// Region index of the current context's device.
    ///
    /// With a single visible device the answer does not depend on the context, and no driver call is
    /// made: an allocation or launch without a current context is then charged to that device, and
    /// given back when the driver refuses it, as every refused call is.
    #[inline]
    pub fn current(&self) -> Option<usize> {
        match self.sole.load(Ordering::Relaxed) {
            SEVERAL => self.current_by_context(),
            UNKNOWN => self.learn_sole_device(),
            UNMAPPED => None,
            index => Some(usize::from(index)),
        }
    }

    /// Whether the process sees exactly one CUDA device, and which (cold: once, after `cuInit`).
    #[cold]
    fn learn_sole_device(&self) -> Option<usize> {
        let mut count = 0;
        // SAFETY: valid out-pointer.
        if unsafe { real_cuda().cuDeviceGetCount(&mut count) } != cudaError_enum::CUDA_SUCCESS {
            return self.current_by_context(); // before cuInit: ask again next time
        }
        if count != 1 {
            self.sole.store(SEVERAL, Ordering::Relaxed);
            return self.current_by_context();
        }
        let index = self.of_cuda_ordinal(0);
        match self.by_ordinal[0].load(Ordering::Relaxed) {
            UNKNOWN => self.current_by_context(), // the driver could not name its UUID yet
            known => {
                self.sole.store(known, Ordering::Relaxed);
                index
            }
        }
    }

    /// Region index of the current context's device, asked of the driver and cached per thread.
    fn current_by_context(&self) -> Option<usize> {
        let mut context: CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        if unsafe { real_cuda().cuCtxGetCurrent(&mut context) } != cudaError_enum::CUDA_SUCCESS
            || context.is_null()
        {
            return None;
        }
        let generation = CONTEXT_GENERATION.load(Ordering::Relaxed);
        let cached = thread_state::with(|state| {
            (state.device_context.get() == context as usize
                && state.device_generation.get() == generation)
                .then(|| state.device_index_plus_one.get())
                .filter(|&plus_one| plus_one != 0)
        });
        if let Some(plus_one) = cached {
            return (plus_one != CACHED_UNMAPPED).then(|| usize::from(plus_one - 1));
        }
        let mut ordinal: CUdevice = 0;
        // SAFETY: valid out-pointer; the current context is the one just read.
        if unsafe { real_cuda().cuCtxGetDevice(&mut ordinal) } != cudaError_enum::CUDA_SUCCESS {
            return None;
        }
        let index = self.of_cuda_ordinal(ordinal);
        thread_state::with(|state| {
            state.device_context.set(context as usize);
            state.device_generation.set(generation);
            // Region indices are below MAX_REGION_DEVICES (16), so index + 1 never reaches the marker.
            state
                .device_index_plus_one
                .set(index.map_or(CACHED_UNMAPPED, |i| i as u8 + 1));
        });
        index
    }

    /// Region index of an NVML device handle.
    pub fn of_nvml_handle(&self, handle: nvmlDevice_t) -> Option<usize> {
        if handle.is_null() {
            return None;
        }
        let key = handle as usize;
        for (slot, index) in self.nvml_handles.iter().zip(&self.nvml_indices) {
            match slot.load(Ordering::Acquire) {
                0 => break,
                k if k == key => match index.load(Ordering::Acquire) {
                    UNKNOWN => break, // being filled by another thread: resolve ourselves
                    UNMAPPED => return None,
                    i => return Some(usize::from(i)),
                },
                _ => {}
            }
        }
        let uuid = nvml_uuid(handle)?;
        let found = self.index_of_uuid(&uuid);
        // Remember it in the first free slot; a full cache just means asking NVML again next time.
        for (slot, index) in self.nvml_handles.iter().zip(&self.nvml_indices) {
            if slot
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                index.store(found.map_or(UNMAPPED, |i| i as u8), Ordering::Release);
                break;
            }
            if slot.load(Ordering::Acquire) == key {
                break;
            }
        }
        found
    }
}

/// Call after a context is destroyed or reset: per-thread caches must look again.
pub fn contexts_changed() {
    CONTEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// NVML's text form of a 16-byte UUID.
pub fn format_uuid(bytes: &[u8; 16]) -> UuidText {
    let mut out = String::with_capacity(40);
    out.push_str("GPU-");
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// The GPU UUID of a CUDA ordinal. `cuDeviceGetUuid` (not `_v2`) on purpose: for a MIG instance it
/// names the parent GPU, which is what NVML's index order and the region list.
fn cuda_uuid(ordinal: CUdevice) -> Option<UuidText> {
    let mut uuid = CUuuid { bytes: [0; 16] };
    let real = real_cuda();
    // SAFETY: valid out-pointer.
    let mut result = unsafe { real.cuDeviceGetUuid(&mut uuid, ordinal) };
    if result == cudaError_enum::CUDA_ERROR_NOT_FOUND {
        // SAFETY: as above.
        result = unsafe { real.cuDeviceGetUuid_v2(&mut uuid, ordinal) };
    }
    if result != cudaError_enum::CUDA_SUCCESS {
        return None;
    }
    Some(format_uuid(&uuid.bytes.map(|b| b as u8)))
}

/// NVML's UUID string of a device handle.
fn nvml_uuid(handle: nvmlDevice_t) -> Option<UuidText> {
    // NVML_DEVICE_UUID_V2_BUFFER_SIZE is 96 (nvml.h).
    let mut buf = [0 as c_char; 96];
    // SAFETY: `buf` holds `buf.len()` bytes; NVML NUL-terminates within that length.
    let result =
        unsafe { real_nvml().nvmlDeviceGetUUID(handle, buf.as_mut_ptr(), buf.len() as c_uint) };
    if result != nvmlReturn_enum::NVML_SUCCESS {
        return None;
    }
    buf[buf.len() - 1] = 0;
    // SAFETY: NUL-terminated (forced above).
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The container's GPUs in NVML index order, from the real NVML. Initialises NVML for our own use;
/// we never shut it down (NVML counts initialisations, so the application's own calls are unaffected).
pub fn enumerate_nvml() -> Result<Vec<UuidText>, String> {
    let real = real_nvml();
    // SAFETY: no arguments.
    let result = unsafe { real.nvmlInit_v2() };
    if result != nvmlReturn_enum::NVML_SUCCESS {
        return Err(format!("nvmlInit_v2 returned {}", result.0));
    }
    let mut count: c_uint = 0;
    // SAFETY: valid out-pointer.
    let result = unsafe { real.nvmlDeviceGetCount_v2(&mut count) };
    if result != nvmlReturn_enum::NVML_SUCCESS {
        return Err(format!("nvmlDeviceGetCount_v2 returned {}", result.0));
    }
    let mut uuids = Vec::with_capacity(count as usize);
    for index in 0..count {
        let mut handle: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let result = unsafe { real.nvmlDeviceGetHandleByIndex_v2(index, &mut handle) };
        if result != nvmlReturn_enum::NVML_SUCCESS {
            return Err(format!(
                "nvmlDeviceGetHandleByIndex_v2({index}) returned {}",
                result.0
            ));
        }
        uuids.push(
            nvml_uuid(handle)
                .ok_or_else(|| format!("nvmlDeviceGetUUID of device {index} failed"))?,
        );
    }
    Ok(uuids)
}

/// Free bytes of the device at NVML index `index`, from the real NVML.
pub fn nvml_free_bytes(index: usize) -> Option<u64> {
    let real = real_nvml();
    let mut handle: nvmlDevice_t = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    if unsafe { real.nvmlDeviceGetHandleByIndex_v2(u32::try_from(index).ok()?, &mut handle) }
        != nvmlReturn_enum::NVML_SUCCESS
    {
        return None;
    }
    let mut memory = vgpu_abi::nvml::nvmlMemory_t {
        total: 0,
        free: 0,
        used: 0,
    };
    // SAFETY: a handle NVML just gave us and a valid out-pointer.
    if unsafe { real.nvmlDeviceGetMemoryInfo(handle, &mut memory) } != nvmlReturn_enum::NVML_SUCCESS
    {
        return None;
    }
    Some(memory.free)
}

/// The GPUs CUDA can see, in ordinal order: the fallback when NVML is unavailable. Region indices
/// then follow CUDA ordinals, which agree with NVML only when `CUDA_VISIBLE_DEVICES` is unset.
pub fn enumerate_cuda() -> Result<Vec<UuidText>, String> {
    let real = real_cuda();
    // SAFETY: plain call; cuInit is idempotent and the application will make it anyway.
    let result = unsafe { real.cuInit(0) };
    if result != cudaError_enum::CUDA_SUCCESS {
        return Err(format!("cuInit returned {}", result.0));
    }
    let mut count = 0;
    // SAFETY: valid out-pointer.
    let result = unsafe { real.cuDeviceGetCount(&mut count) };
    if result != cudaError_enum::CUDA_SUCCESS {
        return Err(format!("cuDeviceGetCount returned {}", result.0));
    }
    (0..count)
        .map(|ordinal| {
            cuda_uuid(ordinal).ok_or_else(|| format!("cuDeviceGetUuid({ordinal}) failed"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_uuids_like_nvml() {
        let bytes = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(
            format_uuid(&bytes),
            "GPU-12345678-9abc-def0-0123-456789abcdef"
        );
        assert_eq!(format_uuid(&bytes).len(), 40);
    }

    #[test]
    fn index_by_uuid_ignores_case() {
        let devices = Devices::new(vec!["GPU-aa".into(), "GPU-BB".into()]);
        assert_eq!(devices.index_of_uuid("gpu-bb"), Some(1));
        assert_eq!(devices.index_of_uuid("GPU-cc"), None);
    }
}
