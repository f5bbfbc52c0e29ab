//! Device queries: names, UUIDs, PCI ids, memory size, attributes and properties.
//!
//! Attribute values are those of the real architecture the compute capability names (A100 for 8.0,
//! L4 for 8.9, H100 for 9.0, ...), with the SM count, clock, PCI location and memory from the
//! device's spec.

use simgpu_state::DeviceSpec;
use vgpu_abi::cuda::{cudaError_enum as E, CUdevprop};

use crate::driver::{driver, Device};
use crate::error::CuResult;

/// `CU_DEVICE_ATTRIBUTE_MAX` in cuda.h 12.9: attributes at or past it are invalid.
const ATTRIBUTE_MAX: i32 = 144;

pub(crate) fn count() -> CuResult<i32> {
    Ok(driver()?.devices.len() as i32)
}

pub(crate) fn get(ordinal: i32) -> CuResult<i32> {
    driver()?.device(ordinal)?;
    Ok(ordinal)
}

pub(crate) fn with<T>(dev: i32, f: impl FnOnce(&Device) -> T) -> CuResult<T> {
    Ok(f(driver()?.device(dev)?))
}

/// `0000:3B:00.0`: the form the CUDA driver prints (4-digit domain, upper-case hex).
pub(crate) fn pci_bus_id(device: &Device) -> String {
    let (domain, bus, dev, function) = device.pci;
    format!("{domain:04X}:{bus:02X}:{dev:02X}.{function:X}")
}

/// Parse `[domain:]bus:device[.function]` (any hex case, 4- or 8-digit domain).
pub(crate) fn parse_pci_bus_id(text: &str) -> Option<(u32, u32, u32, u32)> {
    let (address, function) = match text.trim().rsplit_once('.') {
        Some((a, f)) => (a, u32::from_str_radix(f, 16).ok()?),
        None => (text.trim(), 0),
    };
    let parts: Vec<&str> = address.split(':').collect();
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    match parts.as_slice() {
        [domain, bus, dev] => Some((hex(domain)?, hex(bus)?, hex(dev)?, function)),
        [bus, dev] => Some((0, hex(bus)?, hex(dev)?, function)),
        _ => None,
    }
}

pub(crate) fn by_pci_bus_id(text: &str) -> CuResult<i32> {
    let drv = driver()?;
    let wanted = parse_pci_bus_id(text).ok_or(E::CUDA_ERROR_INVALID_VALUE)?;
    drv.devices
        .iter()
        .position(|d| (d.pci.0, d.pci.1, d.pci.2) == (wanted.0, wanted.1, wanted.2))
        .map(|i| i as i32)
        .ok_or(E::CUDA_ERROR_INVALID_DEVICE)
}

fn cc(spec: &DeviceSpec) -> u32 {
    spec.cc_major * 10 + spec.cc_minor
}

fn max_threads_per_sm(spec: &DeviceSpec) -> i32 {
    match cc(spec) {
        75 => 1024,
        86 | 87 | 89 => 1536,
        _ => 2048,
    }
}

fn max_blocks_per_sm(spec: &DeviceSpec) -> i32 {
    match cc(spec) {
        75 | 86 => 16,
        89 => 24,
        _ => 32,
    }
}

fn shared_memory_per_sm(spec: &DeviceSpec) -> i32 {
    match cc(spec) {
        70 | 72 => 98_304,
        75 => 65_536,
        80 | 87 => 167_936,
        90 => 233_472,
        _ => 102_400,
    }
}

/// Dynamic shared memory a block may opt in to (`MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`).
pub(crate) fn shared_memory_optin(spec: &DeviceSpec) -> i32 {
    shared_memory_per_sm(spec) - 1024
}

fn l2_bytes(spec: &DeviceSpec) -> i32 {
    match cc(spec) {
        80 => 40 << 20,
        89 => 48 << 20,
        90 => 50 << 20,
        _ => 6 << 20,
    }
}

/// Blocks of `block_threads` threads using `dynamic_shared` bytes that fit on one SM at once.
pub(crate) fn max_active_blocks_per_sm(
    spec: &DeviceSpec,
    block_threads: u32,
    dynamic_shared: u64,
) -> u32 {
    if block_threads == 0 || block_threads > 1024 {
        return 0;
    }
    let warps_rounded = block_threads.div_ceil(32) * 32;
    let mut blocks =
        (max_threads_per_sm(spec) as u32 / warps_rounded).min(max_blocks_per_sm(spec) as u32);
    if dynamic_shared > 0 {
        blocks = blocks.min((shared_memory_per_sm(spec) as u64 / (dynamic_shared + 1024)) as u32);
    }
    blocks
}

/// `cuDeviceGetAttribute`: a value for every attribute below `CU_DEVICE_ATTRIBUTE_MAX` (0 for the
/// ones this simulation has nothing to say about, as the driver answers for unsupported features).
pub(crate) fn attribute(device: &Device, attr: i32) -> CuResult<i32> {
    if !(1..ATTRIBUTE_MAX).contains(&attr) {
        return Err(E::CUDA_ERROR_INVALID_VALUE);
    }
    let spec = &device.spec;
    let (domain, bus, slot, _) = device.pci;
    let hopper = spec.cc_major >= 9;
    let datacenter = matches!(cc(spec), 70 | 80 | 90);
    Ok(match attr {
        1 => 1024,                                          // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                                      // MAX_BLOCK_DIM_X/Y
        4 => 64,                                            // MAX_BLOCK_DIM_Z
        5 => i32::MAX,                                      // MAX_GRID_DIM_X
        6 | 7 => 65_535,                                    // MAX_GRID_DIM_Y/Z
        8 => 49_152,                                        // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 65_536,                                        // TOTAL_CONSTANT_MEMORY
        10 => 32,                                           // WARP_SIZE
        11 => i32::MAX,                                     // MAX_PITCH
        12 => 65_536,                                       // MAX_REGISTERS_PER_BLOCK
        13 => (spec.clock_mhz as i32).saturating_mul(1000), // CLOCK_RATE (kHz)
        14 => 512,                                          // TEXTURE_ALIGNMENT
        15 => 1,                                            // GPU_OVERLAP
        16 => spec.sms as i32,                              // MULTIPROCESSOR_COUNT
        17 | 18 => 0,                                       // KERNEL_EXEC_TIMEOUT, INTEGRATED
        19 => 1,                                            // CAN_MAP_HOST_MEMORY
        20 => 0,                                            // COMPUTE_MODE: default
        21 => 131_072,                                      // MAXIMUM_TEXTURE1D_WIDTH
        22 => 131_072,                                      // MAXIMUM_TEXTURE2D_WIDTH
        23 => 65_536,                                       // MAXIMUM_TEXTURE2D_HEIGHT
        24..=26 => 16_384,                                  // MAXIMUM_TEXTURE3D_*
        27 | 28 => 32_768,       // MAXIMUM_TEXTURE2D_LAYERED_WIDTH/HEIGHT
        29 => 2048,              // MAXIMUM_TEXTURE2D_LAYERED_LAYERS
        30 => 512,               // SURFACE_ALIGNMENT
        31 => 1,                 // CONCURRENT_KERNELS
        32 => datacenter as i32, // ECC_ENABLED
        33 => bus as i32,        // PCI_BUS_ID
        34 => slot as i32,       // PCI_DEVICE_ID
        35 => 0,                 // TCC_DRIVER
        36 => {
            if datacenter {
                1_593_000
            } else {
                6_251_000
            }
        } // MEMORY_CLOCK_RATE (kHz)
        37 => {
            if datacenter {
                5120
            } else {
                192
            }
        } // GLOBAL_MEMORY_BUS_WIDTH
        38 => l2_bytes(spec),    // L2_CACHE_SIZE
        39 => max_threads_per_sm(spec), // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 2,                 // ASYNC_ENGINE_COUNT
        41 => 1,                 // UNIFIED_ADDRESSING
        42 => 32_768,            // MAXIMUM_TEXTURE1D_LAYERED_WIDTH
        43 => 2048,              // MAXIMUM_TEXTURE1D_LAYERED_LAYERS
        44 => 1,                 // CAN_TEX2D_GATHER
        45 | 46 => 32_768,       // MAXIMUM_TEXTURE2D_GATHER_*
        47 | 48 => 8192,         // MAXIMUM_TEXTURE3D_*_ALTERNATE
        49 => 32_768,
        50 => domain as i32, // PCI_DOMAIN_ID
        51 => 32,            // TEXTURE_PITCH_ALIGNMENT
        52 | 53 => 32_768,   // MAXIMUM_TEXTURECUBEMAP_*
        54 => 2046,
        55 => 32_768,  // MAXIMUM_SURFACE1D_WIDTH
        56 => 131_072, // MAXIMUM_SURFACE2D_WIDTH
        57 => 65_536,
        58..=60 => 16_384, // MAXIMUM_SURFACE3D_*
        61 => 32_768,
        62 => 2048,
        63 | 64 => 32_768,
        65 => 2048,
        66 | 67 => 32_768,
        68 => 2046,
        69 => 268_435_456, // MAXIMUM_TEXTURE1D_LINEAR_WIDTH
        70 => 131_072,
        71 => 65_000,
        72 => 2_097_120,
        73 | 74 => 32_768,
        75 => spec.cc_major as i32, // COMPUTE_CAPABILITY_MAJOR
        76 => spec.cc_minor as i32, // COMPUTE_CAPABILITY_MINOR
        77 => 32_768,
        78..=80 => 1,                     // STREAM_PRIORITIES, GLOBAL/LOCAL_L1_CACHE
        81 => shared_memory_per_sm(spec), // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65_536,                     // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 1,                          // MANAGED_MEMORY
        84 => 0,                          // MULTI_GPU_BOARD
        85 => spec.index as i32,          // MULTI_GPU_BOARD_GROUP_ID
        87 => {
            if datacenter {
                2
            } else {
                64
            }
        } // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        89 | 90 => 1,                     // CONCURRENT_MANAGED_ACCESS, COMPUTE_PREEMPTION
        95 | 96 => 1,                     // COOPERATIVE_LAUNCH, _MULTI_DEVICE_LAUNCH
        97 => shared_memory_optin(spec),  // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        99 => 1,                          // HOST_REGISTER_SUPPORTED
        102 => 1,                         // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        106 => max_blocks_per_sm(spec),   // MAX_BLOCKS_PER_MULTIPROCESSOR
        108 => l2_bytes(spec) / 4 * 3,    // MAX_PERSISTING_L2_CACHE_SIZE
        109 => 134_213_632,               // MAX_ACCESS_POLICY_WINDOW_SIZE
        111 => 1024,                      // RESERVED_SHARED_MEMORY_PER_BLOCK
        113 => 1,                         // READ_ONLY_HOST_REGISTER_SUPPORTED
        115 => 1,                         // MEMORY_POOLS_SUPPORTED
        120 | 127 => hopper as i32,       // CLUSTER_LAUNCH, TENSOR_MAP_ACCESS
        126 => {
            if hopper {
                4
            } else {
                1
            }
        } // MEM_SYNC_DOMAIN_COUNT
        131 | 134 => -1,                  // NUMA_ID, HOST_NUMA_ID: none
        139 => spec.pci_device_id as i32, // GPU_PCI_DEVICE_ID
        140 => spec.pci_subsystem_id as i32, // GPU_PCI_SUBSYSTEM_ID
        _ => 0,
    })
}

/// `cuDeviceGetProperties` (the CUDA 2.0 struct).
pub(crate) fn properties(device: &Device) -> CUdevprop {
    let a = |attr| attribute(device, attr).unwrap_or(0);
    CUdevprop {
        maxThreadsPerBlock: a(1),
        maxThreadsDim: [a(2), a(3), a(4)],
        maxGridSize: [a(5), a(6), a(7)],
        sharedMemPerBlock: a(8),
        totalConstantMemory: a(9),
        SIMDWidth: a(10),
        memPitch: a(11),
        regsPerBlock: a(12),
        clockRate: a(13),
        textureAlign: a(14),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_bus_ids_round_trip() {
        assert_eq!(parse_pci_bus_id("00000000:3B:00.0"), Some((0, 0x3b, 0, 0)));
        assert_eq!(parse_pci_bus_id("0000:3b:00.0"), Some((0, 0x3b, 0, 0)));
        assert_eq!(parse_pci_bus_id("3b:00.1"), Some((0, 0x3b, 0, 1)));
        assert_eq!(parse_pci_bus_id("zz:00.0"), None);
        assert_eq!(parse_pci_bus_id("nonsense"), None);
    }
}
