//! The shared state file, byte for byte. Every process of one simulated machine maps it `MAP_SHARED`.
//!
//! ```text
//! offset 0        Header (magic "SIMGPUMC", layout version, sizes, spec hash)
//! offset 1024     the canonical device spec, UTF-8, `spec_len` bytes (one device per line)
//! offset 64 KiB   DeviceState x MAX_DEVICES   (256 B each: hot counters on their own cache lines)
//! DEVICES_END     SlotState x MAX_SLOTS       (the process table, 384 B each; one entry per process)
//! SLOTS_END       RingEntry x RING_CAPACITY per configured device (32 B each: start, end, pid)
//! ```
//!
//! Everything other processes write is an atomic. The header and spec are written once, under the
//! file's `flock`, before the magic is published; after that they are read-only.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::config::MAX_DEVICES;

pub const MAGIC: [u8; 8] = *b"SIMGPUMC";
/// Bump on any change below; a file of another version is refused, never reinterpreted.
/// 2: `DeviceState::lost` (the live lost flag `simgpu-ctl lost` sets).
/// 3: 4096 process slots (was 512), `Header::slot_high_water`.
pub const LAYOUT_VERSION: u32 = 3;
pub const SPEC_OFFSET: usize = 1024;
pub const DEVICES_OFFSET: usize = 64 * 1024;
pub const SPEC_MAX: usize = DEVICES_OFFSET - SPEC_OFFSET;
/// Processes that can be attached at once (dead ones are reclaimed). A process takes one slot
/// however many copies of the machine it opens (libcuda and libnvidia-ml each carry one).
pub const MAX_SLOTS: usize = 4096;
/// Busy intervals kept per device: 2^18 covers 13 s of back-to-back 50 µs kernels.
pub const RING_CAPACITY: u64 = 1 << 18;

#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub device_count: u32,
    pub slot_count: u32,
    pub spec_len: u32,
    pub ring_capacity: u64,
    pub file_bytes: u64,
    pub spec_hash: u64,
    /// Incremented each time the file is (re)initialised: tools can tell a fresh machine apart.
    pub init_generation: AtomicU64,
    /// 1 + the highest slot index ever claimed: scans of the process table stop there, so a
    /// machine that never had more than a few processes does not walk all `MAX_SLOTS` entries.
    /// Only grows (slots never move); a reader clamps it to `MAX_SLOTS`.
    pub slot_high_water: AtomicU32,
}

/// One device's machine-wide counters.
#[repr(C, align(64))]
pub struct DeviceState {
    /// Bytes allocated on the device by all processes (CAS against the device's capacity).
    pub used_bytes: AtomicU64,
    _pad0: [u64; 7],
    /// End of the last reserved kernel slot on the device's timeline (CLOCK_MONOTONIC ns).
    pub busy_until_ns: AtomicU64,
    _pad1: [u64; 7],
    /// Tickets handed out for the busy ring (entry = ticket % RING_CAPACITY).
    pub ring_head: AtomicU64,
    /// Device time reserved by every launch ever (ns).
    pub total_busy_ns: AtomicU64,
    pub launches: AtomicU64,
    _pad2: [u64; 5],
    /// Non-zero while the device is lost machine-wide (`Machine::set_device_lost`). Read on every
    /// allocation and launch, written almost never: its own cache line, away from the counters above.
    pub lost: AtomicU32,
    _pad3: [u32; 15],
}

pub const SLOT_FREE: u64 = 0;
pub const SLOT_CLAIMING: u64 = 1;
pub const SLOT_LIVE: u64 = 2;
pub const SLOT_RECLAIMING: u64 = 3;

/// `owner` word: `kind << 32 | pid` (the pid of the process claiming, owning or reclaiming the slot).
pub fn owner_word(kind: u64, pid: u32) -> u64 {
    (kind << 32) | pid as u64
}
pub fn owner_kind(word: u64) -> u64 {
    word >> 32
}
pub fn owner_pid(word: u64) -> u32 {
    word as u32
}

/// One attached process. Its counters are written only by the owner, except that a reclaimer
/// swaps them to zero once the owner is dead.
#[repr(C, align(64))]
pub struct SlotState {
    pub owner: AtomicU64,
    /// `/proc/<pid>/stat` field 22 of the owner, to tell a reused pid apart.
    pub start_time: AtomicU64,
    pub used_bytes: [AtomicU64; MAX_DEVICES],
    pub busy_ns: [AtomicU64; MAX_DEVICES],
    /// Contexts the process holds per device (a process with a context is listed by NVML even with 0 bytes).
    pub contexts: [AtomicU32; MAX_DEVICES],
}

/// One busy interval. `seq` is `ticket + 1` once the entry is complete (0 while being written), so a
/// reader can tell a torn or overwritten entry from a good one.
#[repr(C)]
pub struct RingEntry {
    pub seq: AtomicU64,
    pub start_ns: AtomicU64,
    pub end_ns: AtomicU64,
    pub pid: AtomicU64,
}

pub const DEVICE_STATE_BYTES: usize = std::mem::size_of::<DeviceState>();
pub const SLOT_BYTES: usize = std::mem::size_of::<SlotState>();
pub const SLOTS_OFFSET: usize = DEVICES_OFFSET + MAX_DEVICES * DEVICE_STATE_BYTES;
pub const RINGS_OFFSET: usize = SLOTS_OFFSET + MAX_SLOTS * SLOT_BYTES;
pub const RING_ENTRY_BYTES: usize = std::mem::size_of::<RingEntry>();

const _: () = assert!(std::mem::size_of::<Header>() <= SPEC_OFFSET);
// `check_header` reads the fields before the atomics by these offsets.
const _: () = assert!(std::mem::offset_of!(Header, version) == 8);
const _: () = assert!(std::mem::offset_of!(Header, slot_count) == 16);
const _: () = assert!(std::mem::offset_of!(Header, ring_capacity) == 24);
const _: () = assert!(std::mem::offset_of!(Header, file_bytes) == 32);
const _: () = assert!(std::mem::offset_of!(Header, init_generation) == 48);
const _: () = assert!(std::mem::offset_of!(Header, slot_high_water) == 56);
const _: () = assert!(DEVICE_STATE_BYTES == 256);
const _: () = assert!(std::mem::offset_of!(DeviceState, lost) == 192);
const _: () = assert!(SLOT_BYTES == 384);
const _: () = assert!(RING_ENTRY_BYTES == 32);
const _: () = assert!(RINGS_OFFSET & 4095 == 0);

/// The file size for `device_count` devices.
pub fn file_bytes(device_count: usize) -> u64 {
    RINGS_OFFSET as u64 + device_count as u64 * RING_CAPACITY * RING_ENTRY_BYTES as u64
}

pub fn ring_offset(dev: usize) -> usize {
    RINGS_OFFSET + dev * RING_CAPACITY as usize * RING_ENTRY_BYTES
}
