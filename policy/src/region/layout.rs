//! The region's bytes: HAMi-core's v1 layout (hami-contract.md section 3) and the vgpu extension after
//! it. These `#[repr(C)]` structs are layout descriptions only; nothing ever builds one or takes a
//! reference to one. Code reaches a field through its offset (from `offset_of!` on these structs) and an
//! atomic view of the mapping. Every offset and size the contract lists is pinned below, so a layout
//! change fails the build.

use std::mem::{offset_of, size_of};

use crate::limiter::SharedLimiter;

/// `initialized_flag` of a finished region (hami-contract.md 3.1).
pub const V1_MAGIC: i32 = 19_920_718;
/// Major version the monitor requires.
pub const V1_MAJOR: u32 = 1;
/// Minor version HAMi-core writes; kept so tools print the same.
pub const V1_MINOR: u32 = 2;
/// Device arrays in the v1 layout.
pub const MAX_DEVICES: usize = 16;
/// Process slots in the v1 layout.
pub const MAX_SLOTS: usize = 1024;
/// `sizeof(shared_region_t)` on LP64 glibc (`v1.MinSize()`).
pub const V1_SIZE: usize = 2_008_952;
/// UUID field width.
pub const UUID_BYTES: usize = 96;

/// `device_memory_t` (64 B).
#[repr(C)]
pub struct DeviceMemoryV1 {
    pub context_size: u64,
    pub module_size: u64,
    pub data_size: u64,
    pub offset: u64,
    pub total: u64,
    pub unused: [u64; 3],
}

/// `device_util_t` (48 B).
#[repr(C)]
pub struct DeviceUtilV1 {
    pub dec_util: u64,
    pub enc_util: u64,
    pub sm_util: u64,
    pub unused: [u64; 3],
}

/// `shrreg_proc_slot_t` (1960 B).
#[repr(C)]
pub struct ProcessSlotV1 {
    pub pid: i32,
    pub hostpid: i32,
    pub used: [DeviceMemoryV1; MAX_DEVICES],
    pub monitorused: [u64; MAX_DEVICES],
    pub device_util: [DeviceUtilV1; MAX_DEVICES],
    pub status: i32,
    pub padding: u32,
    pub seqlock: u64,
    pub unused: [u64; 2],
}

/// `shared_region_t` (2,008,952 B). `sem_t` is 32 bytes and 8-aligned on LP64 glibc; it is modelled as
/// `[u64; 4]` and left zero by vgpu.
#[repr(C)]
pub struct SharedRegionV1 {
    pub initialized_flag: i32,
    pub major_version: u32,
    pub minor_version: u32,
    pub sm_init_flag: i32,
    pub owner_pid: u64,
    pub sem: [u64; 4],
    pub device_num: u64,
    pub uuids: [[u8; UUID_BYTES]; MAX_DEVICES],
    pub limit: [u64; MAX_DEVICES],
    pub sm_limit: [u64; MAX_DEVICES],
    pub procs: [ProcessSlotV1; MAX_SLOTS],
    pub proc_num: i32,
    pub utilization_switch: i32,
    pub recent_kernel: i32,
    pub priority: i32,
    pub last_kernel_time: u64,
    pub sem_postinit: [u64; 4],
}

// hami-contract.md 3.1: header.
const _: () = assert!(offset_of!(SharedRegionV1, initialized_flag) == 0);
const _: () = assert!(offset_of!(SharedRegionV1, major_version) == 4);
const _: () = assert!(offset_of!(SharedRegionV1, minor_version) == 8);
const _: () = assert!(offset_of!(SharedRegionV1, sm_init_flag) == 12);
const _: () = assert!(offset_of!(SharedRegionV1, owner_pid) == 16);
const _: () = assert!(offset_of!(SharedRegionV1, sem) == 24);
const _: () = assert!(offset_of!(SharedRegionV1, device_num) == 56);
const _: () = assert!(offset_of!(SharedRegionV1, uuids) == 64);
const _: () = assert!(offset_of!(SharedRegionV1, limit) == 1600);
const _: () = assert!(offset_of!(SharedRegionV1, sm_limit) == 1728);
const _: () = assert!(offset_of!(SharedRegionV1, procs) == 1856);
// 3.3: tail.
const _: () = assert!(offset_of!(SharedRegionV1, proc_num) == 2_008_896);
const _: () = assert!(offset_of!(SharedRegionV1, utilization_switch) == 2_008_900);
const _: () = assert!(offset_of!(SharedRegionV1, recent_kernel) == 2_008_904);
const _: () = assert!(offset_of!(SharedRegionV1, priority) == 2_008_908);
const _: () = assert!(offset_of!(SharedRegionV1, last_kernel_time) == 2_008_912);
const _: () = assert!(offset_of!(SharedRegionV1, sem_postinit) == 2_008_920);
const _: () = assert!(size_of::<SharedRegionV1>() == V1_SIZE);
// 3.2: slot.
const _: () = assert!(size_of::<ProcessSlotV1>() == 1960);
const _: () = assert!(offset_of!(ProcessSlotV1, pid) == 0);
const _: () = assert!(offset_of!(ProcessSlotV1, hostpid) == 4);
const _: () = assert!(offset_of!(ProcessSlotV1, used) == 8);
const _: () = assert!(offset_of!(ProcessSlotV1, monitorused) == 1032);
const _: () = assert!(offset_of!(ProcessSlotV1, device_util) == 1160);
const _: () = assert!(offset_of!(ProcessSlotV1, status) == 1928);
const _: () = assert!(offset_of!(ProcessSlotV1, padding) == 1932);
const _: () = assert!(offset_of!(ProcessSlotV1, seqlock) == 1936);
const _: () = assert!(offset_of!(ProcessSlotV1, unused) == 1944);
const _: () = assert!(size_of::<DeviceMemoryV1>() == 64);
const _: () = assert!(offset_of!(DeviceMemoryV1, context_size) == 0);
const _: () = assert!(offset_of!(DeviceMemoryV1, module_size) == 8);
const _: () = assert!(offset_of!(DeviceMemoryV1, data_size) == 16);
const _: () = assert!(offset_of!(DeviceMemoryV1, offset) == 24);
const _: () = assert!(offset_of!(DeviceMemoryV1, total) == 32);
const _: () = assert!(size_of::<DeviceUtilV1>() == 48);
const _: () = assert!(offset_of!(DeviceUtilV1, sm_util) == 16);

// ---- vgpu extension -------------------------------------------------------------------------------

/// Where the extension starts: the first page boundary after the v1 struct (0x1EB000,
/// hami-contract.md 3.7). The monitor ignores everything from 2,008,952 on.
pub const EXTENSION_OFFSET: usize = 2_011_136;
/// `b"vgpu-ext"` read as a little-endian u64.
pub const EXTENSION_MAGIC: u64 = u64::from_le_bytes(*b"vgpu-ext");
/// Extension layout version. A different version is refused (fail closed); later fields may be
/// appended without a version change, which `length` then reports.
///
/// History: 1 reserved 16 cache lines for the compute limiter between the device counters and the
/// slots; 2 replaced them with [`SharedLimiter`] (2048 B, 128-aligned), which moved the slots.
pub const EXTENSION_VERSION: u32 = 2;

/// Extension header (64 B).
#[repr(C)]
pub struct ExtensionHeader {
    pub magic: u64,
    pub version: u32,
    /// `size_of::<VgpuExtension>()` of the writer; at least ours to be accepted.
    pub length: u32,
    /// Bumped on every (re)initialisation, so a process can tell the region was reset under it.
    pub generation: u64,
    pub reserved: [u64; 5],
}

/// Container-wide charge of one device, on its own cache line (64 B).
#[repr(C)]
pub struct DeviceChargeExt {
    /// Bytes charged on this device by the container's live processes, including reservations whose
    /// driver call is still running. Bit 63 ([`RECOUNT_FROZEN`]) is set while a recount runs.
    pub charged: u64,
    pub reserved: [u64; 7],
}

/// Bit 63 of [`DeviceChargeExt::charged`]: a recount holds the counter (see the module docs).
pub const RECOUNT_FROZEN: u64 = 1 << 63;

/// Per-slot vgpu state, on its own cache line (64 B).
#[repr(C)]
pub struct SlotExt {
    /// Start time of the slot's process (`/proc/<pid>/stat` field 22), 0 when unknown or free.
    pub start_time: u64,
    /// Number of the process's threads between entering and leaving a counter update.
    pub inflight: u32,
    pub flags: u32,
    pub reserved: [u64; 6],
}

/// The extension (68,736 B).
#[repr(C)]
pub struct VgpuExtension {
    pub header: ExtensionHeader,
    pub devices: [DeviceChargeExt; MAX_DEVICES],
    /// Zero; puts `limiter` on a 128-byte boundary (its buckets are 128 B apart so that two devices
    /// never share a cache line or an adjacent-line prefetch pair).
    pub limiter_padding: [u64; 8],
    /// The compute limiter's shared state: one token bucket per device, indexed like the v1
    /// per-device arrays (`docs/compute-isolation.md` section 7). All zero is a fresh state, so
    /// (re)initialising the region only has to zero it.
    pub limiter: SharedLimiter,
    pub slots: [SlotExt; MAX_SLOTS],
}

const _: () = assert!(EXTENSION_OFFSET == 0x1EB000);
const _: () = assert!(EXTENSION_OFFSET > V1_SIZE);
const _: () = assert!(size_of::<ExtensionHeader>() == 64);
const _: () = assert!(offset_of!(ExtensionHeader, magic) == 0);
const _: () = assert!(offset_of!(ExtensionHeader, version) == 8);
const _: () = assert!(offset_of!(ExtensionHeader, length) == 12);
const _: () = assert!(offset_of!(ExtensionHeader, generation) == 16);
const _: () = assert!(size_of::<DeviceChargeExt>() == 64);
const _: () = assert!(size_of::<SlotExt>() == 64);
const _: () = assert!(offset_of!(SlotExt, start_time) == 0);
const _: () = assert!(offset_of!(SlotExt, inflight) == 8);
const _: () = assert!(offset_of!(VgpuExtension, devices) == 64);
const _: () = assert!(offset_of!(VgpuExtension, limiter_padding) == 64 + 1024);
const _: () = assert!(offset_of!(VgpuExtension, limiter) == 1152);
const _: () = assert!(size_of::<SharedLimiter>() == 2048);
const _: () = assert!(offset_of!(VgpuExtension, slots) == 1152 + 2048);
const _: () = assert!(size_of::<VgpuExtension>() == 68_736);
// The extension starts on a page boundary, so 128-aligned inside it is 128-aligned in the mapping.
const _: () = assert!((EXTENSION_OFFSET + offset_of!(VgpuExtension, limiter)).is_multiple_of(128));

/// Size of the extension we write.
pub const EXTENSION_LEN: usize = size_of::<VgpuExtension>();
/// Length of a region file written by vgpu (the v1 struct, padding to the page, the extension).
pub const REGION_FILE_LEN: usize = EXTENSION_OFFSET + EXTENSION_LEN;

// ---- offsets used by the accessors ----------------------------------------------------------------

pub const OFF_MAGIC: usize = offset_of!(SharedRegionV1, initialized_flag);
pub const OFF_MAJOR: usize = offset_of!(SharedRegionV1, major_version);
pub const OFF_MINOR: usize = offset_of!(SharedRegionV1, minor_version);
pub const OFF_SM_INIT_FLAG: usize = offset_of!(SharedRegionV1, sm_init_flag);
pub const OFF_OWNER_PID: usize = offset_of!(SharedRegionV1, owner_pid);
pub const OFF_SEM: usize = offset_of!(SharedRegionV1, sem);
pub const OFF_DEVICE_NUM: usize = offset_of!(SharedRegionV1, device_num);
pub const OFF_PROC_NUM: usize = offset_of!(SharedRegionV1, proc_num);
pub const OFF_UTILIZATION_SWITCH: usize = offset_of!(SharedRegionV1, utilization_switch);
pub const OFF_RECENT_KERNEL: usize = offset_of!(SharedRegionV1, recent_kernel);
pub const OFF_PRIORITY: usize = offset_of!(SharedRegionV1, priority);
pub const OFF_LAST_KERNEL_TIME: usize = offset_of!(SharedRegionV1, last_kernel_time);
pub const OFF_SEM_POSTINIT: usize = offset_of!(SharedRegionV1, sem_postinit);

pub const fn off_uuid(device: usize) -> usize {
    offset_of!(SharedRegionV1, uuids) + device * UUID_BYTES
}
pub const fn off_limit(device: usize) -> usize {
    offset_of!(SharedRegionV1, limit) + device * 8
}
pub const fn off_sm_limit(device: usize) -> usize {
    offset_of!(SharedRegionV1, sm_limit) + device * 8
}
pub const fn off_slot(slot: usize) -> usize {
    offset_of!(SharedRegionV1, procs) + slot * size_of::<ProcessSlotV1>()
}
pub const fn off_slot_pid(slot: usize) -> usize {
    off_slot(slot) + offset_of!(ProcessSlotV1, pid)
}
pub const fn off_slot_hostpid(slot: usize) -> usize {
    off_slot(slot) + offset_of!(ProcessSlotV1, hostpid)
}
pub const fn off_slot_status(slot: usize) -> usize {
    off_slot(slot) + offset_of!(ProcessSlotV1, status)
}
/// `used[device]` field at `field` (one of the `DeviceMemoryV1` offsets) in `slot`.
pub const fn off_slot_used(slot: usize, device: usize, field: usize) -> usize {
    off_slot(slot) + offset_of!(ProcessSlotV1, used) + device * size_of::<DeviceMemoryV1>() + field
}
pub const USED_CONTEXT: usize = offset_of!(DeviceMemoryV1, context_size);
pub const USED_MODULE: usize = offset_of!(DeviceMemoryV1, module_size);
pub const USED_DATA: usize = offset_of!(DeviceMemoryV1, data_size);
pub const USED_TOTAL: usize = offset_of!(DeviceMemoryV1, total);
pub const fn off_slot_sm_util(slot: usize, device: usize) -> usize {
    off_slot(slot)
        + offset_of!(ProcessSlotV1, device_util)
        + device * size_of::<DeviceUtilV1>()
        + offset_of!(DeviceUtilV1, sm_util)
}

pub const OFF_EXT_MAGIC: usize = EXTENSION_OFFSET + offset_of!(ExtensionHeader, magic);
pub const OFF_EXT_VERSION: usize = EXTENSION_OFFSET + offset_of!(ExtensionHeader, version);
pub const OFF_EXT_LENGTH: usize = EXTENSION_OFFSET + offset_of!(ExtensionHeader, length);
pub const OFF_EXT_GENERATION: usize = EXTENSION_OFFSET + offset_of!(ExtensionHeader, generation);
pub const fn off_device_charged(device: usize) -> usize {
    EXTENSION_OFFSET + offset_of!(VgpuExtension, devices) + device * size_of::<DeviceChargeExt>()
}
/// Where the limiter's [`SharedLimiter`] lies in the file.
pub const OFF_EXT_LIMITER: usize = EXTENSION_OFFSET + offset_of!(VgpuExtension, limiter);
pub const fn off_slot_start_time(slot: usize) -> usize {
    EXTENSION_OFFSET + offset_of!(VgpuExtension, slots) + slot * size_of::<SlotExt>()
}
pub const fn off_slot_inflight(slot: usize) -> usize {
    off_slot_start_time(slot) + offset_of!(SlotExt, inflight)
}

// Spot checks of the derived offsets against the contract's formulas.
const _: () = assert!(off_uuid(15) == 64 + 96 * 15);
const _: () = assert!(off_limit(3) == 1600 + 24);
const _: () = assert!(off_sm_limit(15) == 1728 + 120);
const _: () = assert!(off_slot(1023) == 1856 + 1960 * 1023);
const _: () = assert!(off_slot_used(2, 5, USED_TOTAL) == 1856 + 1960 * 2 + 8 + 64 * 5 + 32);
const _: () = assert!(off_slot_sm_util(1, 15) == 1856 + 1960 + 1160 + 48 * 15 + 16);
const _: () = assert!(off_slot_status(7) == 1856 + 1960 * 7 + 1928);
const _: () = assert!(off_slot_inflight(1023) + 4 <= REGION_FILE_LEN);
