//! The implemented NVML entry points. Each export is a thin shim: `export()` (panic firewall and
//! `Result` adapter) around a body written against internal helpers, never against another export,
//! so nothing here can be interposed (the library is also linked `-Bsymbolic`).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_uint, c_ulonglong};
use std::sync::atomic::Ordering;

use simgpu_state::{DeviceSpec, Machine};
use vgpu_abi::nvml::*;

use crate::handles::*;
use crate::sampling;

// ---- init and system -----------------------------------------------------------------------------

fn init(symbol: &'static str) -> Ret {
    export(symbol, || {
        let machine = Machine::get().map_err(|_| UNKNOWN)?; // Machine::get printed why
        machine.faults().slow(symbol);
        INIT_COUNT.fetch_add(1, Ordering::AcqRel);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit() -> nvmlReturn_t {
    init("nvmlInit")
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    init("nvmlInit_v2")
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    // NVML_INIT_FLAG_NO_GPUS / NO_ATTACH change nothing here: the machine always has its devices.
    init("nvmlInitWithFlags")
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    export("nvmlShutdown", || {
        INIT_COUNT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| UNINITIALIZED)
    })
}

/// Called by the generated stubs for every function we don't implement.
pub fn not_supported(symbol: &'static str) -> Ret {
    export(symbol, || {
        if INIT_COUNT.load(Ordering::Acquire) > 0 {
            if let Ok(machine) = Machine::get() {
                machine.faults().slow(symbol);
            }
        }
        Err(NOT_SUPPORTED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    error_string(result).as_ptr().cast()
}

/// NVML's messages, NUL-terminated so they can be handed out as C strings.
fn error_string(code: nvmlReturn_t) -> &'static [u8] {
    match code.0 {
        0 => b"Success\0",
        1 => b"Uninitialized\0",
        2 => b"Invalid Argument\0",
        3 => b"Not Supported\0",
        4 => b"Insufficient Permissions\0",
        5 => b"Already Initialized\0",
        6 => b"Not Found\0",
        7 => b"Insufficient Size\0",
        8 => b"Insufficient External Power\0",
        9 => b"Driver Not Loaded\0",
        10 => b"Timeout\0",
        11 => b"Interrupt Request Issue\0",
        12 => b"NVML Shared Library Not Found\0",
        13 => b"Function Not Found\0",
        14 => b"Corrupted infoROM\0",
        15 => b"GPU is lost\0",
        16 => b"GPU requires restart\0",
        17 => b"The operating system has blocked the request.\0",
        18 => b"RM has detected an NVML/RM version mismatch.\0",
        19 => b"In use by another client\0",
        20 => b"Insufficient Memory\0",
        21 => b"No data\0",
        22 => b"The requested vgpu operation is not available on target device, because ECC is enabled\0",
        23 => b"Insufficient resources for request\0",
        24 => b"Frequency not supported\0",
        25 => b"Argument version mismatch\0",
        26 => b"Deprecated\0",
        27 => b"Not Ready\0",
        28 => b"GPU not found\0",
        29 => b"Invalid state\0",
        _ => b"Unknown Error\0",
    }
}

/// The kernel-driver version string a real system with this CUDA version would report.
pub fn driver_version_string(cuda_version: i32) -> &'static str {
    match cuda_version {
        v if v >= 13000 => "580.65.06",
        v if v >= 12090 => "575.57.08",
        v if v >= 12080 => "570.124.06",
        v if v >= 12060 => "560.35.03",
        v if v >= 12040 => "550.54.15",
        v if v >= 12020 => "535.104.05",
        _ => "525.147.05",
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlSystemGetDriverVersion", || {
        let machine = ready("nvmlSystemGetDriverVersion")?;
        put_str(
            version,
            length,
            driver_version_string(machine.driver_version()),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlSystemGetNVMLVersion", || {
        let machine = ready("nvmlSystemGetNVMLVersion")?;
        let text = format!(
            "{}.{}",
            machine.driver_version() / 1000,
            driver_version_string(machine.driver_version())
        );
        put_str(version, length, &text)
    })
}

fn cuda_driver_version(symbol: &'static str, out: *mut c_int) -> Ret {
    export(symbol, || {
        let machine = ready(symbol)?;
        put(out, machine.driver_version())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(
    cudaDriverVersion: *mut c_int,
) -> nvmlReturn_t {
    cuda_driver_version("nvmlSystemGetCudaDriverVersion", cudaDriverVersion)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(
    cudaDriverVersion: *mut c_int,
) -> nvmlReturn_t {
    cuda_driver_version("nvmlSystemGetCudaDriverVersion_v2", cudaDriverVersion)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetProcessName(
    pid: c_uint,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlSystemGetProcessName", || {
        ready("nvmlSystemGetProcessName")?;
        if name.is_null() || length == 0 {
            return Err(INVALID_ARGUMENT);
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| NOT_FOUND)?;
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let mut text = String::from_utf8_lossy(first).into_owned();
        if text.is_empty() {
            text = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map_err(|_| NOT_FOUND)?
                .trim()
                .to_string();
        }
        // NVML truncates the name to the buffer.
        let keep = text.len().min(length as usize - 1);
        let mut cut = keep;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        put_str(name, length, &text[..cut])
    })
}

// ---- enumeration ---------------------------------------------------------------------------------

fn device_count(symbol: &'static str, out: *mut c_uint) -> Ret {
    export(symbol, || {
        let machine = ready(symbol)?;
        put(out, machine.devices().len() as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(deviceCount: *mut c_uint) -> nvmlReturn_t {
    device_count("nvmlDeviceGetCount", deviceCount)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(deviceCount: *mut c_uint) -> nvmlReturn_t {
    device_count("nvmlDeviceGetCount_v2", deviceCount)
}

/// Hand out the handle of `spec`, unless the device is lost (real NVML fails the lookup then).
fn give_handle(machine: &Machine, spec: &DeviceSpec, out: *mut nvmlDevice_t) -> Result<(), Ret> {
    if out.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    if machine.device_lost(spec.index) {
        return Err(GPU_IS_LOST);
    }
    put(out, handle_for(spec.index))
}

fn handle_by_index(symbol: &'static str, index: c_uint, out: *mut nvmlDevice_t) -> Ret {
    export(symbol, || {
        let machine = ready(symbol)?;
        let spec = machine.device(index).ok_or(INVALID_ARGUMENT)?;
        give_handle(machine, spec, out)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    handle_by_index("nvmlDeviceGetHandleByIndex", index, device)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    handle_by_index("nvmlDeviceGetHandleByIndex_v2", index, device)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetHandleByUUID", || {
        let machine = ready("nvmlDeviceGetHandleByUUID")?;
        let wanted = read_str(uuid)?;
        let spec = machine
            .devices()
            .iter()
            .find(|d| d.uuid.eq_ignore_ascii_case(wanted.trim()))
            .ok_or(NOT_FOUND)?;
        give_handle(machine, spec, device)
    })
}

fn handle_by_bus_id(symbol: &'static str, bus_id: *const c_char, out: *mut nvmlDevice_t) -> Ret {
    export(symbol, || {
        let machine = ready(symbol)?;
        let wanted = parse_bus_id(&read_str(bus_id)?).ok_or(INVALID_ARGUMENT)?;
        let spec = machine
            .devices()
            .iter()
            .find(|d| d.pci_parts() == wanted)
            .ok_or(NOT_FOUND)?;
        give_handle(machine, spec, out)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    pciBusId: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    handle_by_bus_id("nvmlDeviceGetHandleByPciBusId", pciBusId, device)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    pciBusId: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    handle_by_bus_id("nvmlDeviceGetHandleByPciBusId_v2", pciBusId, device)
}

// ---- identity ------------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetName", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetName", device)?;
        put_str(name, length, &spec.name)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetUUID", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetUUID", device)?;
        put_str(uuid, length, &spec.uuid)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSerial(
    device: nvmlDevice_t,
    serial: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetSerial", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetSerial", device)?;
        // 13 digits, derived from the UUID so it is stable and unique per device.
        let digits: String = spec
            .uuid
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|b| (b'0' + b % 10) as char)
            .collect();
        put_str(
            serial,
            length,
            &format!("1{}", &digits[..12.min(digits.len())]),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVbiosVersion(
    device: nvmlDevice_t,
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetVbiosVersion", || {
        crate::handles::device("nvmlDeviceGetVbiosVersion", device)?;
        put_str(version, length, "92.00.45.00.06")
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetIndex", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetIndex", device)?;
        put(index, spec.index)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: nvmlDevice_t,
    minorNumber: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetMinorNumber", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetMinorNumber", device)?;
        put(minorNumber, spec.index) // /dev/nvidia<minor>
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBoardId(
    device: nvmlDevice_t,
    boardId: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetBoardId", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetBoardId", device)?;
        let (_, bus, _, _) = spec.pci_parts();
        put(boardId, bus << 8)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMultiGpuBoard(
    device: nvmlDevice_t,
    multiGpuBool: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetMultiGpuBoard", || {
        crate::handles::device("nvmlDeviceGetMultiGpuBoard", device)?;
        put(multiGpuBool, 0)
    })
}

fn pci_info(
    symbol: &'static str,
    device: nvmlDevice_t,
    out: *mut nvmlPciInfo_t,
    legacy_v1: bool,
) -> Ret {
    export(symbol, || {
        let (_, spec) = crate::handles::device(symbol, device)?;
        if out.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let (domain, bus, dev, _function) = spec.pci_parts();
        let legacy = format!("{domain:04X}:{bus:02X}:{dev:02X}.0");
        if legacy_v1 {
            // The original nvmlPciInfo_t: busId[16], five uints, four reserved uints (52 bytes); the
            // current struct has the same first 36 bytes. Write only those and zero the reserved words.
            let mut head: [c_char; 16] = [0; 16];
            fill_array(&mut head, &legacy);
            let words = [
                domain,
                bus,
                dev,
                spec.pci_device_id,
                spec.pci_subsystem_id,
                0,
                0,
                0,
                0,
            ];
            // SAFETY: a legacy caller's struct is 52 bytes: 16 of text, then nine uints.
            unsafe {
                std::ptr::copy_nonoverlapping(head.as_ptr(), out.cast::<c_char>(), 16);
                std::ptr::copy_nonoverlapping(
                    words.as_ptr(),
                    out.cast::<u8>().add(16).cast::<u32>(),
                    words.len(),
                );
            }
            return Ok(());
        }
        let mut info = nvmlPciInfo_t {
            busIdLegacy: [0; 16],
            domain,
            bus,
            device: dev,
            pciDeviceId: spec.pci_device_id,
            pciSubSystemId: spec.pci_subsystem_id,
            busId: [0; 32],
        };
        fill_array(&mut info.busIdLegacy, &legacy);
        fill_array(&mut info.busId, &spec.pci_bus_id);
        put(out, info)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    pci_info("nvmlDeviceGetPciInfo", device, pci, true)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    pci_info("nvmlDeviceGetPciInfo_v2", device, pci, false)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    pci_info("nvmlDeviceGetPciInfo_v3", device, pci, false)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    export("nvmlDeviceGetCudaComputeCapability", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetCudaComputeCapability", device)?;
        if major.is_null() || minor.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        put(major, spec.cc_major as c_int)?;
        put(minor, spec.cc_minor as c_int)
    })
}

/// NVML architecture from the compute capability.
pub fn architecture(spec: &DeviceSpec) -> nvmlDeviceArchitecture_t {
    match (spec.cc_major, spec.cc_minor) {
        (3, _) => NVML_DEVICE_ARCH_KEPLER,
        (5, _) => NVML_DEVICE_ARCH_MAXWELL,
        (6, _) => NVML_DEVICE_ARCH_PASCAL,
        (7, 5) => NVML_DEVICE_ARCH_TURING,
        (7, _) => NVML_DEVICE_ARCH_VOLTA,
        (8, 9) => NVML_DEVICE_ARCH_ADA,
        (8, _) => NVML_DEVICE_ARCH_AMPERE,
        (9, _) => NVML_DEVICE_ARCH_HOPPER,
        (10..=12, _) => NVML_DEVICE_ARCH_BLACKWELL,
        _ => NVML_DEVICE_ARCH_UNKNOWN,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: nvmlDevice_t,
    arch: *mut nvmlDeviceArchitecture_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetArchitecture", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetArchitecture", device)?;
        put(arch, architecture(spec))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBrand(
    device: nvmlDevice_t,
    type_: *mut nvmlBrandType_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetBrand", || {
        crate::handles::device("nvmlDeviceGetBrand", device)?;
        put(type_, nvmlBrandType_t::NVML_BRAND_NVIDIA) // what data-center parts report
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNumGpuCores(
    device: nvmlDevice_t,
    numCores: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetNumGpuCores", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetNumGpuCores", device)?;
        // FP32 cores per SM: 64 on Volta, Turing and GA100; 128 on the rest of Ampere, Ada, Hopper.
        let per_sm = match (spec.cc_major, spec.cc_minor) {
            (7, _) | (8, 0) => 64,
            _ => 128,
        };
        put(numCores, spec.sms * per_sm)
    })
}

// ---- memory and processes ------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetMemoryInfo", || {
        let (machine, spec) = crate::handles::device("nvmlDeviceGetMemoryInfo", device)?;
        let (free, total) = machine.mem_info(spec.index);
        put(
            memory,
            nvmlMemory_t {
                total,
                free,
                used: total - free,
            },
        )
    })
}

/// `nvmlMemory_v2`: `NVML_STRUCT_VERSION(Memory, 2)` = size | 2 << 24.
pub const NVML_MEMORY_V2: c_uint = std::mem::size_of::<nvmlMemory_v2_t>() as c_uint | (2 << 24);

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetMemoryInfo_v2", || {
        let (machine, spec) = crate::handles::device("nvmlDeviceGetMemoryInfo_v2", device)?;
        if memory.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL; the caller sets `version` before the call (the NVML contract).
        let version = unsafe { std::ptr::addr_of!((*memory).version).read_unaligned() };
        if version != NVML_MEMORY_V2 {
            return Err(nvmlReturn_t::NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (free, total) = machine.mem_info(spec.index);
        // The simulated device reserves nothing for the driver: reserved = 0, used + free = total.
        put(
            memory,
            nvmlMemory_v2_t {
                version,
                total,
                reserved: 0,
                free,
                used: total - free,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBAR1MemoryInfo(
    device: nvmlDevice_t,
    bar1Memory: *mut nvmlBAR1Memory_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetBAR1MemoryInfo", || {
        crate::handles::device("nvmlDeviceGetBAR1MemoryInfo", device)?;
        let total = 64u64 << 30;
        let used = 2u64 << 20;
        put(
            bar1Memory,
            nvmlBAR1Memory_t {
                bar1Total: total,
                bar1Free: total - used,
                bar1Used: used,
            },
        )
    })
}

/// NVML's two-call protocol for process lists: `*count` in = room in `out`, out = entries needed
/// or written. With no room and no processes: success and 0.
fn process_list<T>(
    symbol: &'static str,
    device: nvmlDevice_t,
    count: *mut c_uint,
    out: *mut T,
    compute: bool,
    make: impl Fn(u32, u64) -> T,
) -> Ret {
    export(symbol, || {
        let (machine, spec) = crate::handles::device(symbol, device)?;
        if count.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // Simulated work is all compute: graphics and MPS lists are always empty.
        let procs = if compute {
            machine.processes(spec.index)
        } else {
            Vec::new()
        };
        // SAFETY: non-NULL, points at the caller's count.
        let room = unsafe { count.read_unaligned() } as usize;
        put(count, procs.len() as c_uint)?;
        if room < procs.len() {
            return Err(INSUFFICIENT_SIZE);
        }
        if procs.is_empty() {
            return Ok(());
        }
        if out.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        for (i, p) in procs.iter().enumerate() {
            // SAFETY: i < procs.len() <= room, the caller's array length.
            unsafe { out.add(i).write_unaligned(make(p.pid, p.used_bytes)) };
        }
        Ok(())
    })
}

fn info_v1(pid: u32, used: u64) -> nvmlProcessInfo_v1_t {
    nvmlProcessInfo_v1_t {
        pid,
        usedGpuMemory: used,
    }
}

/// gpuInstanceId/computeInstanceId are 0xFFFFFFFF (NVML_VALUE_NOT_AVAILABLE) without MIG.
fn info_v2(pid: u32, used: u64) -> nvmlProcessInfo_v2_t {
    nvmlProcessInfo_v2_t {
        pid,
        usedGpuMemory: used,
        gpuInstanceId: u32::MAX,
        computeInstanceId: u32::MAX,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetComputeRunningProcesses",
        device,
        infoCount,
        infos,
        true,
        info_v1,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v2_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetComputeRunningProcesses_v2",
        device,
        infoCount,
        infos,
        true,
        info_v2,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetComputeRunningProcesses_v3",
        device,
        infoCount,
        infos,
        true,
        info_v2,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetGraphicsRunningProcesses",
        device,
        infoCount,
        infos,
        false,
        info_v1,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v2(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v2_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        device,
        infoCount,
        infos,
        false,
        info_v2,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        device,
        infoCount,
        infos,
        false,
        info_v2,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetMPSComputeRunningProcesses",
        device,
        infoCount,
        infos,
        false,
        info_v1,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_v2_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetMPSComputeRunningProcesses_v2",
        device,
        infoCount,
        infos,
        false,
        info_v2,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    infoCount: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    process_list(
        "nvmlDeviceGetMPSComputeRunningProcesses_v3",
        device,
        infoCount,
        infos,
        false,
        info_v2,
    )
}

// ---- utilization ---------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetUtilizationRates", || {
        let (machine, spec) = crate::handles::device("nvmlDeviceGetUtilizationRates", device)?;
        put(
            utilization,
            nvmlUtilization_t {
                gpu: sampling::gpu_utilization_percent(machine, spec.index),
                memory: 0,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    processSamplesCount: *mut c_uint,
    lastSeenTimeStamp: c_ulonglong,
) -> nvmlReturn_t {
    export("nvmlDeviceGetProcessUtilization", || {
        let (machine, spec) = crate::handles::device("nvmlDeviceGetProcessUtilization", device)?;
        if processSamplesCount.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let samples = sampling::process_samples(machine, spec.index, lastSeenTimeStamp);
        if samples.is_empty() {
            put(processSamplesCount, 0)?;
            return Err(NOT_FOUND);
        }
        // SAFETY: non-NULL, the caller's count.
        let room = unsafe { processSamplesCount.read_unaligned() } as usize;
        put(processSamplesCount, samples.len() as c_uint)?;
        if utilization.is_null() || room < samples.len() {
            return Err(INSUFFICIENT_SIZE);
        }
        for (i, s) in samples.iter().enumerate() {
            let sample = nvmlProcessUtilizationSample_t {
                pid: s.pid,
                timeStamp: s.timestamp_us,
                smUtil: s.sm_util,
                memUtil: 0,
                encUtil: 0,
                decUtil: 0,
            };
            // SAFETY: i < samples.len() <= room, the caller's array length.
            unsafe { utilization.add(i).write_unaligned(sample) };
        }
        Ok(())
    })
}

fn codec_utilization(
    symbol: &'static str,
    device: nvmlDevice_t,
    utilization: *mut c_uint,
    period_us: *mut c_uint,
) -> Ret {
    export(symbol, || {
        crate::handles::device(symbol, device)?;
        if utilization.is_null() || period_us.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        put(utilization, 0)?;
        put(period_us, sampling::SAMPLE_PERIOD_US as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEncoderUtilization(
    device: nvmlDevice_t,
    utilization: *mut c_uint,
    samplingPeriodUs: *mut c_uint,
) -> nvmlReturn_t {
    codec_utilization(
        "nvmlDeviceGetEncoderUtilization",
        device,
        utilization,
        samplingPeriodUs,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDecoderUtilization(
    device: nvmlDevice_t,
    utilization: *mut c_uint,
    samplingPeriodUs: *mut c_uint,
) -> nvmlReturn_t {
    codec_utilization(
        "nvmlDeviceGetDecoderUtilization",
        device,
        utilization,
        samplingPeriodUs,
    )
}

// ---- sensors, clocks, power, modes ---------------------------------------------------------------

/// Board power limit in mW, by product.
fn power_limit_mw(spec: &DeviceSpec) -> u32 {
    let name = spec.name.to_ascii_uppercase();
    if name.contains("H100") || name.contains("H200") {
        700_000
    } else if name.contains("L4") && !name.contains("L40") {
        72_000
    } else if name.contains("T4") {
        70_000
    } else {
        400_000
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensorType: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetTemperature", || {
        let (machine, spec) = crate::handles::device("nvmlDeviceGetTemperature", device)?;
        if sensorType != nvmlTemperatureSensors_t::NVML_TEMPERATURE_GPU {
            return Err(INVALID_ARGUMENT);
        }
        // Warms up with load: 32 °C idle to 72 °C flat out.
        put(
            temp,
            32 + sampling::gpu_utilization_percent(machine, spec.index) * 2 / 5,
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperatureThreshold(
    device: nvmlDevice_t,
    thresholdType: nvmlTemperatureThresholds_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetTemperatureThreshold", || {
        crate::handles::device("nvmlDeviceGetTemperatureThreshold", device)?;
        let value = match thresholdType {
            nvmlTemperatureThresholds_t::NVML_TEMPERATURE_THRESHOLD_SHUTDOWN => 92,
            nvmlTemperatureThresholds_t::NVML_TEMPERATURE_THRESHOLD_SLOWDOWN => 89,
            nvmlTemperatureThresholds_t::NVML_TEMPERATURE_THRESHOLD_MEM_MAX => 95,
            nvmlTemperatureThresholds_t::NVML_TEMPERATURE_THRESHOLD_GPU_MAX => 87,
            _ => return Err(NOT_SUPPORTED),
        };
        put(temp, value)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetPowerUsage", || {
        let (machine, spec) = crate::handles::device("nvmlDeviceGetPowerUsage", device)?;
        let limit = power_limit_mw(spec);
        let idle = limit / 7;
        let util = sampling::gpu_utilization_percent(machine, spec.index);
        put(power, idle + (limit - idle) / 100 * util)
    })
}

fn power_limit(symbol: &'static str, device: nvmlDevice_t, limit: *mut c_uint) -> Ret {
    export(symbol, || {
        let (_, spec) = crate::handles::device(symbol, device)?;
        put(limit, power_limit_mw(spec))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    power_limit("nvmlDeviceGetPowerManagementLimit", device, limit)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    power_limit("nvmlDeviceGetEnforcedPowerLimit", device, limit)
}

fn clock_mhz(spec: &DeviceSpec, clock: nvmlClockType_t) -> Result<c_uint, Ret> {
    match clock {
        nvmlClockType_t::NVML_CLOCK_GRAPHICS | nvmlClockType_t::NVML_CLOCK_SM => Ok(spec.clock_mhz),
        nvmlClockType_t::NVML_CLOCK_MEM => Ok(1215),
        nvmlClockType_t::NVML_CLOCK_VIDEO => Ok(spec.clock_mhz * 9 / 10),
        _ => Err(INVALID_ARGUMENT),
    }
}

fn clock_info(
    symbol: &'static str,
    device: nvmlDevice_t,
    clock: nvmlClockType_t,
    out: *mut c_uint,
) -> Ret {
    export(symbol, || {
        let (_, spec) = crate::handles::device(symbol, device)?;
        put(out, clock_mhz(spec, clock)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    type_: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    clock_info("nvmlDeviceGetClockInfo", device, type_, clock)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: nvmlDevice_t,
    type_: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    clock_info("nvmlDeviceGetMaxClockInfo", device, type_, clock)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClock(
    device: nvmlDevice_t,
    clockType: nvmlClockType_t,
    clockId: nvmlClockId_t,
    clockMHz: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetClock", || {
        let (_, spec) = crate::handles::device("nvmlDeviceGetClock", device)?;
        if clockId.0 >= nvmlClockId_t::NVML_CLOCK_ID_COUNT.0 {
            return Err(INVALID_ARGUMENT);
        }
        put(clockMHz, clock_mhz(spec, clockType)?) // fixed clocks: current = target = default = max
    })
}

fn clock_reasons(symbol: &'static str, device: nvmlDevice_t, out: *mut c_ulonglong) -> Ret {
    export(symbol, || {
        let (machine, spec) = crate::handles::device(symbol, device)?;
        let idle = sampling::gpu_utilization_percent(machine, spec.index) == 0;
        put(
            out,
            if idle {
                nvmlClocksEventReasonGpuIdle as c_ulonglong
            } else {
                0
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: nvmlDevice_t,
    clocksThrottleReasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    clock_reasons(
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        device,
        clocksThrottleReasons,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: nvmlDevice_t,
    clocksEventReasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    clock_reasons(
        "nvmlDeviceGetCurrentClocksEventReasons",
        device,
        clocksEventReasons,
    )
}

fn pstate(symbol: &'static str, device: nvmlDevice_t, out: *mut nvmlPstates_t) -> Ret {
    export(symbol, || {
        crate::handles::device(symbol, device)?;
        put(out, nvmlPstates_t::NVML_PSTATE_0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    device: nvmlDevice_t,
    pState: *mut nvmlPstates_t,
) -> nvmlReturn_t {
    pstate("nvmlDeviceGetPerformanceState", device, pState)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerState(
    device: nvmlDevice_t,
    pState: *mut nvmlPstates_t,
) -> nvmlReturn_t {
    pstate("nvmlDeviceGetPowerState", device, pState)
}

fn enable_state(
    symbol: &'static str,
    device: nvmlDevice_t,
    out: *mut nvmlEnableState_t,
    on: bool,
) -> Ret {
    export(symbol, || {
        crate::handles::device(symbol, device)?;
        put(
            out,
            if on {
                nvmlEnableState_t::NVML_FEATURE_ENABLED
            } else {
                nvmlEnableState_t::NVML_FEATURE_DISABLED
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(
    device: nvmlDevice_t,
    mode: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    enable_state("nvmlDeviceGetPersistenceMode", device, mode, true)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementMode(
    device: nvmlDevice_t,
    mode: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    enable_state("nvmlDeviceGetPowerManagementMode", device, mode, true)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDisplayMode(
    device: nvmlDevice_t,
    display: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    enable_state("nvmlDeviceGetDisplayMode", device, display, false)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDisplayActive(
    device: nvmlDevice_t,
    isActive: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    enable_state("nvmlDeviceGetDisplayActive", device, isActive, false)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(
    device: nvmlDevice_t,
    mode: *mut nvmlComputeMode_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetComputeMode", || {
        crate::handles::device("nvmlDeviceGetComputeMode", device)?;
        put(mode, nvmlComputeMode_t::NVML_COMPUTEMODE_DEFAULT)
    })
}

// ---- MIG: never enabled on the simulated devices -------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    currentMode: *mut c_uint,
    pendingMode: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetMigMode", || {
        crate::handles::device("nvmlDeviceGetMigMode", device)?;
        if currentMode.is_null() || pendingMode.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        put(currentMode, NVML_DEVICE_MIG_DISABLE)?;
        put(pendingMode, NVML_DEVICE_MIG_DISABLE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    isMigDevice: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceIsMigDeviceHandle", || {
        crate::handles::device("nvmlDeviceIsMigDeviceHandle", device)?;
        put(isMigDevice, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    migDevice: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    export("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", || {
        crate::handles::device("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)?;
        if device.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        Err(INVALID_ARGUMENT) // a full-GPU handle is not a MIG device handle
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    export("nvmlDeviceGetMaxMigDeviceCount", || {
        crate::handles::device("nvmlDeviceGetMaxMigDeviceCount", device)?;
        put(count, 0)
    })
}
