//! A read-only copy of a region for tools (`vgpu ps`, the exporter, tests): from a byte buffer, from a
//! read-only mapping of a file another process writes, or from a live [`super::Region`].
//!
//! Every read is bounds-checked; a corrupt or short file gives a [`SnapshotError`] or clamped values
//! (`device_num` to 16, `proc_num` to 0..1024, as the monitor does), never a panic or an
//! out-of-bounds read.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::layout::*;
use crate::sys::mmap::Mapping;

/// Little-endian loads at byte offsets, `None` when out of bounds.
pub trait ByteSource {
    fn byte_len(&self) -> usize;
    fn load_u8(&self, off: usize) -> Option<u8>;
    fn load_u32(&self, off: usize) -> Option<u32>;
    fn load_u64(&self, off: usize) -> Option<u64>;
}

impl ByteSource for [u8] {
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn load_u8(&self, off: usize) -> Option<u8> {
        self.get(off).copied()
    }
    fn load_u32(&self, off: usize) -> Option<u32> {
        let b = self.get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }
    fn load_u64(&self, off: usize) -> Option<u64> {
        let b = self.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

impl ByteSource for Mapping {
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn load_u8(&self, off: usize) -> Option<u8> {
        Some(self.u8_at(off)?.load(Ordering::Relaxed))
    }
    fn load_u32(&self, off: usize) -> Option<u32> {
        Some(self.u32_at(off)?.load(Ordering::Acquire))
    }
    fn load_u64(&self, off: usize) -> Option<u64> {
        Some(self.u64_at(off)?.load(Ordering::Acquire))
    }
}

/// Why a snapshot could not be taken.
#[derive(Debug)]
pub enum SnapshotError {
    Io(std::io::Error),
    /// Shorter than the v1 layout.
    TooShort {
        len: usize,
    },
    /// Magic 0: nobody finished initialising it (yet).
    NotInitialised,
    ForeignMagic(i32),
    UnsupportedMajor(u32),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "cannot read region: {e}"),
            SnapshotError::TooShort { len } => {
                write!(f, "region is {len} bytes, at least {V1_SIZE} expected")
            }
            SnapshotError::NotInitialised => write!(f, "region is not initialised (magic 0)"),
            SnapshotError::ForeignMagic(m) => {
                write!(f, "not a HAMi/vgpu region (magic {m}, expected {V1_MAGIC})")
            }
            SnapshotError::UnsupportedMajor(v) => {
                write!(f, "region major version {v} is not supported")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

/// What follows the v1 layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtensionInfo {
    /// Nothing (a HAMi-core file) or too short to hold one.
    Absent,
    /// Ours, a version this build understands.
    Vgpu {
        version: u32,
        length: u32,
        generation: u64,
    },
    /// Something this build does not understand.
    Unknown { magic: u64, version: u32 },
}

/// One device of the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSnapshot {
    pub index: usize,
    /// Up to the first NUL of `uuids[i]`.
    pub uuid: String,
    /// Bytes; 0 = no limit.
    pub limit: u64,
    /// Percent; 100 (or 0) = no limit.
    pub sm_limit: u64,
    /// The container-wide counter from the vgpu extension, when present.
    pub charged: Option<u64>,
    /// The extension counter is frozen by a recount in progress.
    pub recount_in_progress: bool,
}

/// One slot's usage on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotDeviceUsage {
    pub context: u64,
    pub module: u64,
    pub data: u64,
    pub total: u64,
    pub sm_util: u64,
}

/// One non-free slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSnapshot {
    pub index: usize,
    pub pid: i32,
    pub hostpid: i32,
    /// 0 free/exited, 1 running, 2 suspended.
    pub status: i32,
    /// From the vgpu extension (0 = unknown); `None` without one.
    pub start_time: Option<u64>,
    /// Per device, for the region's devices.
    pub devices: Vec<SlotDeviceUsage>,
}

/// Everything a tool shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionSnapshot {
    pub file_len: usize,
    pub major: u32,
    pub minor: u32,
    /// `device_num` as stored (the `devices` list is clamped to 16).
    pub device_num: u64,
    pub devices: Vec<DeviceSnapshot>,
    /// `proc_num` as stored (slots are read from the clamped range).
    pub proc_num: i32,
    /// Slots in `[0, clamp(proc_num))` with `status != 0` or `pid != 0`.
    pub slots: Vec<SlotSnapshot>,
    pub utilization_switch: i32,
    pub recent_kernel: i32,
    pub priority: i32,
    pub last_kernel_time: u64,
    pub extension: ExtensionInfo,
}

impl RegionSnapshot {
    /// From the bytes of a region file (for example `std::fs::read` of it).
    pub fn read(bytes: &[u8]) -> Result<RegionSnapshot, SnapshotError> {
        RegionSnapshot::from_source(bytes)
    }

    /// Maps the file read-only (never writing, never locking) and reads it.
    pub fn read_file(path: impl AsRef<Path>) -> Result<RegionSnapshot, SnapshotError> {
        let file = File::open(path).map_err(SnapshotError::Io)?;
        let len = file.metadata().map_err(SnapshotError::Io)?.len();
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(REGION_FILE_LEN);
        if len < V1_SIZE {
            return Err(SnapshotError::TooShort { len });
        }
        let map = Mapping::map_file(&file, len, false).map_err(SnapshotError::Io)?;
        RegionSnapshot::from_source(&map)
    }

    /// From any source of bytes laid out as a region.
    pub fn from_source<S: ByteSource + ?Sized>(src: &S) -> Result<RegionSnapshot, SnapshotError> {
        let len = src.byte_len();
        let short = SnapshotError::TooShort { len };
        let magic = src
            .load_u32(OFF_MAGIC)
            .ok_or(SnapshotError::TooShort { len })? as i32;
        if magic == 0 {
            return Err(SnapshotError::NotInitialised);
        }
        if magic != V1_MAGIC {
            return Err(SnapshotError::ForeignMagic(magic));
        }
        if len < V1_SIZE {
            return Err(short);
        }
        let u32_at = |off| src.load_u32(off).unwrap_or(0);
        let i32_at = |off| src.load_u32(off).unwrap_or(0) as i32;
        let u64_at = |off| src.load_u64(off).unwrap_or(0);
        let major = u32_at(OFF_MAJOR);
        if major != V1_MAJOR {
            return Err(SnapshotError::UnsupportedMajor(major));
        }
        let extension = match src.load_u64(OFF_EXT_MAGIC) {
            None | Some(0) => ExtensionInfo::Absent,
            Some(EXTENSION_MAGIC) => {
                let version = u32_at(OFF_EXT_VERSION);
                let length = u32_at(OFF_EXT_LENGTH);
                if version == EXTENSION_VERSION
                    && length as usize >= EXTENSION_LEN
                    && len >= REGION_FILE_LEN
                {
                    ExtensionInfo::Vgpu {
                        version,
                        length,
                        generation: u64_at(OFF_EXT_GENERATION),
                    }
                } else {
                    ExtensionInfo::Unknown {
                        magic: EXTENSION_MAGIC,
                        version,
                    }
                }
            }
            Some(other) => ExtensionInfo::Unknown {
                magic: other,
                version: u32_at(OFF_EXT_VERSION),
            },
        };
        let has_ext = matches!(extension, ExtensionInfo::Vgpu { .. });
        let device_num = u64_at(OFF_DEVICE_NUM);
        let n = device_num.min(MAX_DEVICES as u64) as usize;
        let devices = (0..n)
            .map(|d| {
                let raw: Vec<u8> = (0..UUID_BYTES)
                    .map(|i| src.load_u8(off_uuid(d) + i).unwrap_or(0))
                    .take_while(|&b| b != 0)
                    .collect();
                let charged = if has_ext {
                    src.load_u64(off_device_charged(d))
                } else {
                    None
                };
                DeviceSnapshot {
                    index: d,
                    uuid: String::from_utf8_lossy(&raw).into_owned(),
                    limit: u64_at(off_limit(d)),
                    sm_limit: u64_at(off_sm_limit(d)),
                    charged: charged.map(|c| c & !RECOUNT_FROZEN),
                    recount_in_progress: charged.is_some_and(|c| c & RECOUNT_FROZEN != 0),
                }
            })
            .collect();
        let proc_num = i32_at(OFF_PROC_NUM);
        let scan = proc_num.clamp(0, MAX_SLOTS as i32) as usize;
        let slots = (0..scan)
            .filter_map(|k| {
                let pid = i32_at(off_slot_pid(k));
                let status = i32_at(off_slot_status(k));
                if pid == 0 && status == 0 {
                    return None;
                }
                let devices = (0..n)
                    .map(|d| SlotDeviceUsage {
                        context: u64_at(off_slot_used(k, d, USED_CONTEXT)),
                        module: u64_at(off_slot_used(k, d, USED_MODULE)),
                        data: u64_at(off_slot_used(k, d, USED_DATA)),
                        total: u64_at(off_slot_used(k, d, USED_TOTAL)),
                        sm_util: u64_at(off_slot_sm_util(k, d)),
                    })
                    .collect();
                Some(SlotSnapshot {
                    index: k,
                    pid,
                    hostpid: i32_at(off_slot_hostpid(k)),
                    status,
                    start_time: if has_ext {
                        Some(u64_at(off_slot_start_time(k)))
                    } else {
                        None
                    },
                    devices,
                })
            })
            .collect();
        Ok(RegionSnapshot {
            file_len: len,
            major,
            minor: u32_at(OFF_MINOR),
            device_num,
            devices,
            proc_num,
            slots,
            utilization_switch: i32_at(OFF_UTILIZATION_SWITCH),
            recent_kernel: i32_at(OFF_RECENT_KERNEL),
            priority: i32_at(OFF_PRIORITY),
            last_kernel_time: u64_at(OFF_LAST_KERNEL_TIME),
            extension,
        })
    }

    /// What the monitor reports as the device's usage: Σ `used[d].total` over slots with status ≠ 0.
    pub fn device_used(&self, device: usize) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.status != 0)
            .filter_map(|s| s.devices.get(device))
            .fold(0u64, |acc, u| acc.saturating_add(u.total))
    }
}
