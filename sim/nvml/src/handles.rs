//! Device handles and the helpers every export shares: init state, argument checks, C strings.

use std::ffi::{c_char, c_uint};
use std::sync::atomic::{AtomicU32, Ordering};

use simgpu_state::{DeviceSpec, Machine, MAX_DEVICES};
use vgpu_abi::nvml::{nvmlDevice_st, nvmlDevice_t, nvmlReturn_t};

pub type Ret = nvmlReturn_t;
pub const SUCCESS: Ret = nvmlReturn_t::NVML_SUCCESS;
pub const UNINITIALIZED: Ret = nvmlReturn_t::NVML_ERROR_UNINITIALIZED;
pub const INVALID_ARGUMENT: Ret = nvmlReturn_t::NVML_ERROR_INVALID_ARGUMENT;
pub const NOT_SUPPORTED: Ret = nvmlReturn_t::NVML_ERROR_NOT_SUPPORTED;
pub const NOT_FOUND: Ret = nvmlReturn_t::NVML_ERROR_NOT_FOUND;
pub const INSUFFICIENT_SIZE: Ret = nvmlReturn_t::NVML_ERROR_INSUFFICIENT_SIZE;
pub const GPU_IS_LOST: Ret = nvmlReturn_t::NVML_ERROR_GPU_IS_LOST;
pub const UNKNOWN: Ret = nvmlReturn_t::NVML_ERROR_UNKNOWN;

/// `nvmlInit*` calls not yet matched by `nvmlShutdown`.
pub static INIT_COUNT: AtomicU32 = AtomicU32::new(0);

/// What a handle points at. Only its address matters: handles are validated by range, never dereferenced.
#[repr(C)]
pub struct DeviceHandle {
    index: u32,
}

static HANDLES: [DeviceHandle; MAX_DEVICES] = {
    let mut table = [const { DeviceHandle { index: 0 } }; MAX_DEVICES];
    let mut i = 0;
    while i < MAX_DEVICES {
        table[i] = DeviceHandle { index: i as u32 };
        i += 1;
    }
    table
};

pub fn handle_for(index: u32) -> nvmlDevice_t {
    let entry: *const DeviceHandle = &HANDLES[index as usize % MAX_DEVICES];
    entry as *mut nvmlDevice_st
}

/// The device index of a handle we gave out, or `None` for anything else.
pub fn index_of(handle: nvmlDevice_t) -> Option<u32> {
    let base = HANDLES.as_ptr() as usize;
    let at = handle as usize;
    let size = std::mem::size_of::<DeviceHandle>();
    let offset = at.checked_sub(base)?;
    let index = offset / size;
    if index * size != offset || index >= MAX_DEVICES {
        return None;
    }
    let index = index as u32;
    debug_assert_eq!(HANDLES[index as usize].index, index);
    Some(index)
}

/// The machine, if NVML is initialised; applies `SIMGPU_SLOW` for `symbol`.
pub fn ready(symbol: &str) -> Result<&'static Machine, Ret> {
    if INIT_COUNT.load(Ordering::Acquire) == 0 {
        return Err(UNINITIALIZED);
    }
    let machine = Machine::get().map_err(|_| UNINITIALIZED)?;
    machine.faults().slow(symbol);
    Ok(machine)
}

/// Init check, handle check, lost-device check: what every per-device query starts with.
pub fn device(
    symbol: &str,
    handle: nvmlDevice_t,
) -> Result<(&'static Machine, &'static DeviceSpec), Ret> {
    let machine = ready(symbol)?;
    let index = index_of(handle).ok_or(INVALID_ARGUMENT)?;
    let spec = machine.device(index).ok_or(INVALID_ARGUMENT)?;
    if machine.device_lost(index) {
        return Err(GPU_IS_LOST);
    }
    Ok((machine, spec))
}

/// Write through a caller's out-pointer; NULL is `NVML_ERROR_INVALID_ARGUMENT`.
pub fn put<T>(out: *mut T, value: T) -> Result<(), Ret> {
    if out.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and the C caller promises it points at a writable T (the NVML contract).
    unsafe { out.write_unaligned(value) };
    Ok(())
}

/// Copy `text` and a NUL into the caller's `length`-byte buffer (`NVML_ERROR_INSUFFICIENT_SIZE` if it
/// does not fit, as NVML does).
pub fn put_str(buf: *mut c_char, length: c_uint, text: &str) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    if (length as usize) < text.len() + 1 {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller's buffer holds `length` >= len + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

/// Copy `text` into a fixed C array field, truncated, NUL-terminated.
pub fn fill_array<const N: usize>(field: &mut [c_char; N], text: &str) {
    field.fill(0);
    for (dst, src) in field.iter_mut().zip(text.bytes().take(N.saturating_sub(1))) {
        *dst = src as c_char;
    }
}

/// Read a caller's C string (NULL is `NVML_ERROR_INVALID_ARGUMENT`).
pub fn read_str(text: *const c_char) -> Result<String, Ret> {
    if text.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: the caller passes a NUL-terminated string (the NVML contract).
    let c = unsafe { std::ffi::CStr::from_ptr(text) };
    Ok(c.to_string_lossy().into_owned())
}

/// The panic firewall and `Result` adapter around every export body.
pub fn export(symbol: &'static str, body: impl FnOnce() -> Result<(), Ret>) -> Ret {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => {
            let line = format!(
                "simgpu-nvml[{}]: internal error in {symbol}\n",
                std::process::id()
            );
            // SAFETY: writing a valid buffer to fd 2.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            UNKNOWN
        }
    }
}

/// `dddd:bb:dd.f` with an optional, 4- or 8-digit domain, any case.
pub fn parse_bus_id(text: &str) -> Option<(u32, u32, u32, u32)> {
    let text = text.trim();
    let mut parts: Vec<&str> = text.split(':').collect();
    if parts.len() == 2 {
        parts.insert(0, "0");
    }
    let [domain, bus, rest] = parts.as_slice() else {
        return None;
    };
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some((hex(domain)?, hex(bus)?, hex(device)?, hex(function)?))
}
