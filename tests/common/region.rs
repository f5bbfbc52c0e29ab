//! An independent reader of the region file, written from `hami-contract.md` section 3 alone (the way
//! HAMi's monitor reads it). It shares no code with the library on purpose: if both were wrong the
//! same way, a test comparing them would still pass.

use std::fmt::Write as _;
use std::path::Path;

/// `initialized_flag` at offset 0.
pub const MAGIC: i32 = 19920718;
/// `sizeof` of the v1 struct; the file is one byte longer (HAMi-core writes a 0 at `sizeof`).
pub const V1_STRUCT_SIZE: usize = 2_008_952;
pub const V1_FILE_SIZE: usize = 2_008_953;
pub const MAX_DEVICES: usize = 16;
pub const MAX_SLOTS: usize = 1024;

const OFF_MAJOR: usize = 4;
const OFF_MINOR: usize = 8;
const OFF_DEVICE_NUM: usize = 56;
const OFF_UUIDS: usize = 64;
const UUID_LEN: usize = 96;
const OFF_LIMIT: usize = 1600;
const OFF_SM_LIMIT: usize = 1728;
const OFF_SLOTS: usize = 1856;
const SLOT_SIZE: usize = 1960;
const SLOT_OFF_PID: usize = 0;
const SLOT_OFF_HOSTPID: usize = 4;
const SLOT_OFF_USED: usize = 8;
const USED_SIZE: usize = 64;
const SLOT_OFF_STATUS: usize = 1928;
const OFF_PROC_NUM: usize = 2_008_896;
const OFF_UTILIZATION_SWITCH: usize = 2_008_900;
const OFF_RECENT_KERNEL: usize = 2_008_904;
const OFF_PRIORITY: usize = 2_008_908;
const OFF_LAST_KERNEL_TIME: usize = 2_008_912;

/// `device_memory_t`: what one process holds on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    pub context_size: u64,
    pub module_size: u64,
    pub data_size: u64,
    pub offset: u64,
    pub total: u64,
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub index: usize,
    pub pid: i32,
    pub hostpid: i32,
    pub status: i32,
    pub used: [DeviceMemory; MAX_DEVICES],
}

#[derive(Clone, Debug)]
pub struct Region {
    pub file_size: usize,
    pub magic: i32,
    pub major: u32,
    pub minor: u32,
    pub device_num: u64,
    pub uuids: Vec<String>,
    /// The raw 96 bytes of each uuid field (the monitor's feedback key).
    pub uuid_bytes: Vec<[u8; UUID_LEN]>,
    pub limit: [u64; MAX_DEVICES],
    pub sm_limit: [u64; MAX_DEVICES],
    pub proc_num: i32,
    pub utilization_switch: i32,
    pub recent_kernel: i32,
    pub priority: i32,
    pub last_kernel_time: u64,
    /// Slots `[0, clamp(proc_num))`, as the monitor scans them.
    pub slots: Vec<Slot>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

impl Region {
    pub fn read(path: &Path) -> Result<Region, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Region::parse(&bytes)
    }

    /// Parse the bytes the way the monitor does: magic, major 1, size at least the v1 struct.
    pub fn parse(b: &[u8]) -> Result<Region, String> {
        if b.len() < V1_STRUCT_SIZE {
            return Err(format!(
                "region is {} bytes, v1 needs at least {V1_STRUCT_SIZE}",
                b.len()
            ));
        }
        let magic = i32_at(b, 0);
        if magic != MAGIC {
            return Err(format!("region magic is {magic}, want {MAGIC}"));
        }
        let device_num = u64_at(b, OFF_DEVICE_NUM);
        let mut uuids = Vec::new();
        let mut uuid_bytes = Vec::new();
        for d in 0..MAX_DEVICES {
            let raw: [u8; UUID_LEN] = b[OFF_UUIDS + UUID_LEN * d..OFF_UUIDS + UUID_LEN * (d + 1)]
                .try_into()
                .unwrap();
            let end = raw.iter().position(|&c| c == 0).unwrap_or(UUID_LEN);
            uuids.push(String::from_utf8_lossy(&raw[..end]).into_owned());
            uuid_bytes.push(raw);
        }
        let mut limit = [0u64; MAX_DEVICES];
        let mut sm_limit = [0u64; MAX_DEVICES];
        for d in 0..MAX_DEVICES {
            limit[d] = u64_at(b, OFF_LIMIT + 8 * d);
            sm_limit[d] = u64_at(b, OFF_SM_LIMIT + 8 * d);
        }
        let proc_num = i32_at(b, OFF_PROC_NUM);
        let scanned = proc_num.clamp(0, MAX_SLOTS as i32) as usize;
        let mut slots = Vec::with_capacity(scanned);
        for k in 0..scanned {
            let s = OFF_SLOTS + SLOT_SIZE * k;
            let mut used = [DeviceMemory::default(); MAX_DEVICES];
            for (d, u) in used.iter_mut().enumerate() {
                let m = s + SLOT_OFF_USED + USED_SIZE * d;
                *u = DeviceMemory {
                    context_size: u64_at(b, m),
                    module_size: u64_at(b, m + 8),
                    data_size: u64_at(b, m + 16),
                    offset: u64_at(b, m + 24),
                    total: u64_at(b, m + 32),
                };
            }
            slots.push(Slot {
                index: k,
                pid: i32_at(b, s + SLOT_OFF_PID),
                hostpid: i32_at(b, s + SLOT_OFF_HOSTPID),
                status: i32_at(b, s + SLOT_OFF_STATUS),
                used,
            });
        }
        Ok(Region {
            file_size: b.len(),
            magic,
            major: u32_at(b, OFF_MAJOR),
            minor: u32_at(b, OFF_MINOR),
            device_num,
            uuids,
            uuid_bytes,
            limit,
            sm_limit,
            proc_num,
            utilization_switch: i32_at(b, OFF_UTILIZATION_SWITCH),
            recent_kernel: i32_at(b, OFF_RECENT_KERNEL),
            priority: i32_at(b, OFF_PRIORITY),
            last_kernel_time: u64_at(b, OFF_LAST_KERNEL_TIME),
            slots,
        })
    }

    /// Slots the monitor counts (`status != 0`).
    pub fn live_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.status != 0)
    }

    /// What the monitor reports as the container's usage of region device `d`: Σ `used[d].total`.
    pub fn device_used(&self, d: usize) -> u64 {
        self.live_slots().map(|s| s.used[d].total).sum()
    }

    /// The counted slot of a process, if it has one.
    pub fn slot_of(&self, pid: u32) -> Option<&Slot> {
        self.live_slots().find(|s| s.pid == pid as i32)
    }

    /// The region index of a device, by its NVML UUID.
    pub fn index_of_uuid(&self, uuid: &str) -> Option<usize> {
        let n = (self.device_num as usize).min(MAX_DEVICES);
        self.uuids[..n].iter().position(|u| u == uuid)
    }

    /// The invariants every region must satisfy at any instant (section 3.5): counters add up,
    /// uuids are NUL-padded, and no device outside `device_num` carries usage.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = (self.device_num as usize).min(MAX_DEVICES);
        for (d, raw) in self.uuid_bytes.iter().enumerate() {
            let end = raw.iter().position(|&c| c == 0).unwrap_or(UUID_LEN);
            if raw[end..].iter().any(|&c| c != 0) {
                return Err(format!("uuids[{d}] is not NUL-padded"));
            }
            if d < n && end == 0 {
                return Err(format!("uuids[{d}] is empty but device_num is {n}"));
            }
        }
        for s in &self.slots {
            for (d, u) in s.used.iter().enumerate() {
                let parts = u
                    .context_size
                    .checked_add(u.module_size)
                    .and_then(|x| x.checked_add(u.data_size));
                if parts != Some(u.total) {
                    return Err(format!(
                        "slot {} (pid {}) device {d}: total {} != context {} + module {} + data {}",
                        s.index, s.pid, u.total, u.context_size, u.module_size, u.data_size
                    ));
                }
                if d >= n && u.total != 0 {
                    return Err(format!(
                        "slot {} charges device {d} beyond device_num {n}",
                        s.index
                    ));
                }
            }
            if s.status == 0 && s.used.iter().any(|u| u.total != 0) {
                return Err(format!(
                    "free slot {} (pid {}) still holds bytes",
                    s.index, s.pid
                ));
            }
        }
        Ok(())
    }

    /// A readable dump for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "region: size {} magic {} v{}.{} device_num {} proc_num {} priority {} utilization_switch {} recent_kernel {} last_kernel_time {}",
            self.file_size,
            self.magic,
            self.major,
            self.minor,
            self.device_num,
            self.proc_num,
            self.priority,
            self.utilization_switch,
            self.recent_kernel,
            self.last_kernel_time
        );
        let n = (self.device_num as usize).min(MAX_DEVICES);
        for d in 0..n {
            let _ = writeln!(
                out,
                "  device {d}: uuid {} limit {} sm_limit {} used {}",
                self.uuids[d],
                self.limit[d],
                self.sm_limit[d],
                self.device_used(d)
            );
        }
        for s in &self.slots {
            if s.status == 0 && s.pid == 0 && s.used.iter().all(|u| u.total == 0) {
                continue;
            }
            let _ = write!(
                out,
                "  slot {}: pid {} hostpid {} status {}",
                s.index, s.pid, s.hostpid, s.status
            );
            for (d, u) in s.used.iter().enumerate() {
                if *u != DeviceMemory::default() {
                    let _ = write!(
                        out,
                        " | dev {d}: total {} (ctx {} module {} data {})",
                        u.total, u.context_size, u.module_size, u.data_size
                    );
                }
            }
            out.push('\n');
        }
        out
    }
}

/// The dump of whatever is at `path` (or why it cannot be read).
pub fn dump_file(path: &Path) -> String {
    match Region::read(path) {
        Ok(r) => r.dump(),
        Err(e) => format!("region {}: {e}", path.display()),
    }
}

/// Prints the region when the test that owns it fails (panics), so a failure always shows the state.
pub struct DumpOnFailure(pub std::path::PathBuf);

impl Drop for DumpOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- region state at failure ---\n{}", dump_file(&self.0));
        }
    }
}

#[cfg(test)]
mod layout {
    use super::*;

    #[test]
    fn offsets_follow_the_contract() {
        // The last slot ends where the tail begins (3.2, 3.3).
        assert_eq!(OFF_SLOTS + SLOT_SIZE * MAX_SLOTS, 1856 + 1960 * 1024);
        assert_eq!(OFF_SLOTS + SLOT_SIZE * MAX_SLOTS, 2_008_896);
        assert_eq!(OFF_PROC_NUM, 2_008_896);
        assert_eq!(OFF_UUIDS + UUID_LEN * MAX_DEVICES, OFF_LIMIT);
        assert_eq!(OFF_LIMIT + 8 * MAX_DEVICES, OFF_SM_LIMIT);
        assert_eq!(OFF_SM_LIMIT + 8 * MAX_DEVICES, OFF_SLOTS);
        assert_eq!(SLOT_OFF_USED + USED_SIZE * MAX_DEVICES, 1032);
        assert_eq!(1032 + 8 * MAX_DEVICES + 48 * MAX_DEVICES, SLOT_OFF_STATUS);
    }

    #[test]
    fn parses_a_hand_built_region() {
        let mut b = vec![0u8; V1_FILE_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[56..64].copy_from_slice(&1u64.to_le_bytes());
        b[64..68].copy_from_slice(b"GPU-");
        b[1600..1608].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let slot = OFF_SLOTS + SLOT_SIZE * 3;
        b[slot..slot + 4].copy_from_slice(&42i32.to_le_bytes());
        b[slot + SLOT_OFF_STATUS..slot + SLOT_OFF_STATUS + 4].copy_from_slice(&1i32.to_le_bytes());
        b[slot + 8 + 16..slot + 8 + 24].copy_from_slice(&7u64.to_le_bytes());
        b[slot + 8 + 32..slot + 8 + 40].copy_from_slice(&7u64.to_le_bytes());
        b[OFF_PROC_NUM..OFF_PROC_NUM + 4].copy_from_slice(&4i32.to_le_bytes());
        let r = Region::parse(&b).unwrap();
        assert_eq!(r.slots.len(), 4);
        assert_eq!(r.device_used(0), 7);
        assert_eq!(r.slot_of(42).unwrap().index, 3);
        assert_eq!(r.limit[0], 64 << 20);
        r.check_invariants().unwrap();
        assert!(Region::parse(&b[..1000]).is_err());
    }
}
