//! The shared region: one file per container (`CUDA_DEVICE_MEMORY_SHARED_CACHE`), mapped by every
//! process of the container and read by the node monitor. Its first 2,008,952 bytes are HAMi-core's v1
//! layout byte for byte (hami-contract.md section 3, pinned in [`layout`]); a vgpu extension follows at
//! 2,011,136 (0x1EB000) with its own magic, version and length.
//!
//! # API (used by the hooks)
//!
//! - [`Region::open`]`(path, &RegionSetup)`: create or attach under the file lock and validate
//!   (3.5, 3.7, 2.4). Errors are [`RegionError`]s, each one line; the caller fails closed.
//! - [`Region::register`]`(pid, start_time) -> SlotId` and [`Region::unregister`]`(slot)`.
//! - [`Region::reserve`]`(slot, device, bytes, kind) -> Result<Reservation, OverLimit>`;
//!   [`Reservation::commit`] keeps the charge, dropping the reservation gives it back;
//!   [`Region::release`] returns a committed charge (saturating).
//! - [`Region::reclaim_dead`] (call when a reserve fails, then retry once).
//! - Views: [`Region::device_used`], [`Region::device_limit`], [`Region::sm_limit`],
//!   [`Region::slot_used`], [`Region::device_count`], [`Region::uuid`], [`Region::snapshot`].
//! - Limiter accessors: [`Region::limiter_view`] (the words the compute limiter shares),
//!   [`Region::utilization_switch`], [`Region::recent_kernel`],
//!   [`Region::mark_kernel_launched`], [`Region::stamp_last_kernel_time`], [`Region::priority`],
//!   [`Region::set_slot_sm_util`].
//! - Tools (CLI, exporter): [`RegionSnapshot::read`] on bytes or [`RegionSnapshot::read_file`]
//!   (a read-only mapping); both bounds-check everything and never panic on a corrupt file.
//!
//! # Locking
//!
//! Creation, (re)initialisation, registration, unregistration and reclaiming take an `F_OFD_SETLKW`
//! lock on the whole file ([`crate::sys::lock`]); the kernel drops it if the holder dies. Nothing else
//! locks: the hot path is atomics only, and no lock is ever held across a driver call.
//!
//! # Charging, and why a SIGKILL can neither leak nor overshoot
//!
//! Each device has a container-wide counter `charged[d]` in the extension. A reservation is:
//!
//! 1. `inflight[slot] += 1` (the slot's in-flight counter, in the extension);
//! 2. CAS `charged[d]` from `c` to `c + bytes`, refused when that passes `limit[d]`: check and charge
//!    are one atomic step across processes, so two processes racing for the last GiB cannot both win;
//! 3. add `bytes` to the slot's `used[d].<kind>` and `.total` (the v1 fields the monitor reads);
//! 4. `inflight[slot] -= 1`.
//!
//! A release goes the other way round: in-flight up, the slot's counters down (saturating), the device
//! counter down, in-flight down. So for every slot, at every instant, *what the slot added to
//! `charged[d]` ≥ its `used[d].total`*, and `charged[d] ≥ Σ used[d].total`. The device counter can run
//! ahead of the slots, never behind; the limit bound applies to `charged[d]`, so the container can never
//! exceed its limit, whatever instruction a process dies on.
//!
//! What a process killed between steps 2 and 3 leaves behind is `charged[d]` holding bytes that no
//! slot records. Those bytes are recovered by a **recount**, run under the file lock by
//! [`Region::reclaim_dead`] (and therefore within one failed allocation):
//!
//! - freeze `charged[d]` by setting its bit 63 ([`layout::RECOUNT_FROZEN`]); every reserve and release
//!   checks the bit *after* raising its slot's in-flight count and backs off (leaving the count) while it
//!   is set, so from then on no slot's counters for any device change;
//! - wait until every live slot's in-flight count is 0 (a slot that turns out dead is reclaimed on the
//!   spot); the SeqCst pairing "raise in-flight, then read the counter" against "freeze, then read
//!   in-flight" guarantees each operation is either seen in flight or backs off;
//! - store `charged[d] = Σ used[d].total` over live slots, which also clears the freeze.
//!
//! If a live slot stays in flight for ~200 ms (a stopped process), the recount gives up, unfreezes the
//! counter unchanged and subtracts only what dead slots recorded: safe (by the inequality above), and
//! the small remainder is recovered by a later recount. A reclaimer that dies while the counter is
//! frozen leaves the lock free: the next lock holder, or a waiting reserve that finds the lock free,
//! finishes the recount.
//!
//! Dead slots: a slot is dead when its pid is gone, or alive with a start time different from the one
//! recorded at registration (pid reuse after a container restart). Reclaiming zeroes its counters,
//! then `status = 0`, then `pid = 0` (3.5.4), and recounts the devices it had charged.
//!
//! # Files found at start-up (3.7)
//!
//! | found | outcome |
//! |---|---|
//! | empty, or no magic yet | initialise |
//! | v1 magic, major 1, our extension, same devices and limits | attach |
//! | same, but other devices or limits | re-initialise if no registered process is alive, else [`RegionError::LimitMismatch`] |
//! | v1 magic, major 1, no extension (HAMi-core) | re-initialise if no registered process is alive, else [`RegionError::HamiCoreInUse`] |
//! | another magic at 0 | [`RegionError::ForeignMagic`] |
//! | major ≠ 1 | [`RegionError::UnsupportedMajor`] |
//! | shorter than 2,008,952 B with magic | [`RegionError::Truncated`] |
//! | another extension magic or version | [`RegionError::UnknownExtension`], [`RegionError::UnsupportedExtensionVersion`] |
//!
//! The file is never shrunk, truncated, unlinked or replaced; initialising writes every field and the
//! v1 magic last (release), after the file has reached its full size.

pub mod layout;
mod snapshot;

pub use layout::{MAX_DEVICES, MAX_SLOTS, REGION_FILE_LEN};
pub use snapshot::{
    ByteSource, DeviceSnapshot, ExtensionInfo, RegionSnapshot, SlotDeviceUsage, SlotSnapshot,
    SnapshotError,
};

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::limiter::{SharedLimiter, SharedView};
use crate::sys::lock::FileLock;
use crate::sys::mmap::{grow_file, Mapping};
use crate::sys::proc_info;
use layout::*;

/// What kind of device memory a charge is, i.e. which `device_memory_t` field it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemKind {
    /// `context_size`: context overhead.
    Context = 0,
    /// `module_size`: module images.
    Module = 1,
    /// `data_size`: allocations.
    Data = 2,
}

impl MemKind {
    fn field(self) -> usize {
        match self {
            MemKind::Context => USED_CONTEXT,
            MemKind::Module => USED_MODULE,
            MemKind::Data => USED_DATA,
        }
    }

    /// Inverse of `as u8`.
    pub fn from_u8(v: u8) -> Option<MemKind> {
        match v {
            0 => Some(MemKind::Context),
            1 => Some(MemKind::Module),
            2 => Some(MemKind::Data),
            _ => None,
        }
    }
}

/// One device of the container, at its region index (= container NVML index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSetup {
    /// NVML UUID (`GPU-…`); at most 95 bytes are stored.
    pub uuid: String,
    /// Bytes; `None` = no limit.
    pub memory_limit: Option<u64>,
    /// 1..=99; `None` = no limit (stored as 100, as HAMi-core does).
    pub sm_limit_percent: Option<u32>,
}

/// What this process expects the region to hold.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RegionSetup {
    /// At most [`MAX_DEVICES`], indexed by container NVML index.
    pub devices: Vec<DeviceSetup>,
    /// `CUDA_TASK_PRIORITY`.
    pub priority: i32,
}

/// A process slot index (0..1024). Slots never move while their process lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(u16);

impl SlotId {
    /// The slot's index in `procs[]`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// A slot id from an index, clamped into range (for indices known to be valid).
    pub fn clamped(index: usize) -> SlotId {
        SlotId(index.min(MAX_SLOTS - 1) as u16)
    }

    /// A slot id from an index, if in range.
    pub fn from_index(index: usize) -> Option<SlotId> {
        if index < MAX_SLOTS {
            u16::try_from(index).ok().map(SlotId)
        } else {
            None
        }
    }
}

/// A refused reservation: granting it would take the container past its limit on `device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverLimit {
    pub device: usize,
    pub requested: u64,
    /// Container-wide bytes charged on the device when the request was refused.
    pub used: u64,
    /// The device's limit; 0 when the device is not in the region at all (then every request is
    /// refused: there is nothing to charge it to).
    pub limit: u64,
}

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.limit == 0 {
            write!(
                f,
                "device {} is not in the region; refusing {} bytes",
                self.device, self.requested
            )
        } else {
            write!(
                f,
                "device {} over its memory limit: {} bytes requested, {} of {} bytes in use",
                self.device, self.requested, self.used, self.limit
            )
        }
    }
}

/// What a committed charge was, so its release can give back exactly that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChargeRecord {
    pub device: u16,
    pub bytes: u64,
    pub kind: MemKind,
}

/// Bytes charged by one slot on one device (`device_memory_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotUsage {
    pub context: u64,
    pub module: u64,
    pub data: u64,
    pub total: u64,
}

/// What [`Region::reclaim_dead`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReclaimReport {
    /// Slots of dead processes freed.
    pub slots_freed: u32,
    /// Bytes those slots had recorded, given back.
    pub bytes_freed: u64,
    /// Devices whose counter was recounted (bit d = device d).
    pub recounted: u16,
    /// Devices whose recount gave up because a live slot stayed in flight (bit d = device d).
    pub recount_timeouts: u16,
}

/// Whether a pid names a live process, and its start time if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Dead,
    Alive { start_time: Option<u64> },
}

/// How the region learns whether a slot's owner lives. [`SystemProbe`] asks the kernel; tests inject
/// fakes.
pub trait ProcessProbe: Send + Sync {
    fn probe(&self, pid: i32) -> Liveness;

    /// Whether a process with this pid exists, whoever it is: the cheap half of [`probe`]
    /// (`kill(pid, 0)`, about half a microsecond, where reading a start time costs about ten).
    ///
    /// [`probe`]: ProcessProbe::probe
    fn exists(&self, pid: i32) -> bool {
        !matches!(self.probe(pid), Liveness::Dead)
    }
}

/// `kill(pid, 0)` and `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemProbe;

impl ProcessProbe for SystemProbe {
    fn probe(&self, pid: i32) -> Liveness {
        if proc_info::pid_alive(pid) {
            Liveness::Alive {
                start_time: proc_info::process_start_time(pid),
            }
        } else {
            Liveness::Dead
        }
    }

    fn exists(&self, pid: i32) -> bool {
        proc_info::pid_alive(pid)
    }
}

/// Why the region cannot be used. `Display` is one line naming the file.
#[derive(Debug)]
pub enum RegionError {
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    ForeignMagic {
        path: PathBuf,
        magic: i32,
    },
    UnsupportedMajor {
        path: PathBuf,
        major: u32,
    },
    Truncated {
        path: PathBuf,
        len: u64,
        needed: u64,
    },
    UnknownExtension {
        path: PathBuf,
        magic: u64,
    },
    UnsupportedExtensionVersion {
        path: PathBuf,
        version: u32,
    },
    BadExtensionLength {
        path: PathBuf,
        length: u32,
    },
    HamiCoreInUse {
        path: PathBuf,
        pids: Vec<i32>,
    },
    LimitMismatch {
        path: PathBuf,
        detail: String,
    },
    InvalidSetup(String),
    SlotsFull {
        path: PathBuf,
    },
    InvalidSlot(usize),
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionError::Io { path, action, error } => write!(f, "region {}: cannot {action}: {error}", path.display()),
            RegionError::ForeignMagic { path, magic } => write!(
                f,
                "region {}: not a HAMi/vgpu region (magic {magic}, expected {V1_MAGIC}); not touching it",
                path.display()
            ),
            RegionError::UnsupportedMajor { path, major } => {
                write!(f, "region {}: major version {major} is not supported (expected {V1_MAJOR})", path.display())
            }
            RegionError::Truncated { path, len, needed } => {
                write!(f, "region {}: file is {len} bytes, at least {needed} expected", path.display())
            }
            RegionError::UnknownExtension { path, magic } => {
                write!(f, "region {}: unknown extension (magic {magic:#018x}) after the v1 layout", path.display())
            }
            RegionError::UnsupportedExtensionVersion { path, version } => write!(
                f,
                "region {}: vgpu extension version {version} is not supported (expected {EXTENSION_VERSION})",
                path.display()
            ),
            RegionError::BadExtensionLength { path, length } => write!(
                f,
                "region {}: vgpu extension length {length} is shorter than {EXTENSION_LEN}",
                path.display()
            ),
            RegionError::HamiCoreInUse { path, pids } => write!(
                f,
                "region {}: written by HAMi-core and still used by live processes {pids:?}; not re-initialising it",
                path.display()
            ),
            RegionError::LimitMismatch { path, detail } => write!(
                f,
                "region {}: live processes use other limits ({detail}); refusing to attach",
                path.display()
            ),
            RegionError::InvalidSetup(why) => write!(f, "region setup: {why}"),
            RegionError::SlotsFull { path } => {
                write!(f, "region {}: all {MAX_SLOTS} process slots are in use", path.display())
            }
            RegionError::InvalidSlot(i) => write!(f, "region slot {i} is out of range"),
        }
    }
}

impl std::error::Error for RegionError {}

/// Mask of the byte count in a device counter.
const CHARGE_MASK: u64 = !RECOUNT_FROZEN;
/// Largest value a counter may reach (bit 63 is the freeze flag).
const MAX_CHARGE: u64 = CHARGE_MASK;
/// Back-off rounds a recount waits for in-flight slots, ≈200 ms in total (see `Backoff`).
const RECOUNT_WAIT_ROUNDS: u32 = 300;
/// Back-off rounds a frozen-counter waiter lets pass between checks for an orphaned freeze (≈20 ms).
const ORPHAN_CHECK_ROUNDS: u32 = 90;
/// Start times [`Region::any_dead_slot`] reads per call: about 0.3 ms of `/proc` reads, and every
/// slot of a region with up to this many processes, each time.
pub const REUSE_CHECKS_PER_LOOK: usize = 32;

/// Spin, then yield, then sleep with doubling up to 1 ms. Used only off the fast path.
struct Backoff {
    round: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff { round: 0 }
    }

    fn wait(&mut self) {
        self.round = self.round.saturating_add(1);
        if self.round <= 32 {
            std::hint::spin_loop();
        } else if self.round <= 64 {
            std::thread::yield_now();
        } else {
            let micros = 10u64 << (self.round - 64).min(7);
            std::thread::sleep(std::time::Duration::from_micros(micros.min(1000)));
        }
    }
}

/// How a file looked under the lock, before mapping it.
enum Found {
    Fresh,
    HamiCore,
    Ours,
}

/// A mapped, validated region. Cheap to share between threads (`&Region` everywhere).
pub struct Region {
    map: Mapping,
    file: File,
    path: PathBuf,
    setup: RegionSetup,
    probe: Box<dyn ProcessProbe>,
    /// Generation of the region contents this process validated.
    generation: AtomicU64,
    /// Where [`Region::any_dead_slot`] continues its start-time checks.
    reuse_check_cursor: AtomicUsize,
    /// Info lines from opening (re-initialised a stale region, priority differs, ...).
    notices: Vec<String>,
    // Targets for accessors whose offset is out of range. Unreachable once `open` has validated the
    // mapping length; they keep the accessors total without a panic path.
    spare_u64: AtomicU64,
    spare_u32: AtomicU32,
    spare_i32: AtomicI32,
    spare_u8: AtomicU8,
    spare_limiter: SharedLimiter,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("path", &self.path)
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

/// A reservation taken by [`Region::reserve`]: already charged. [`Reservation::commit`] keeps it;
/// dropping it uncommitted gives the bytes back.
#[must_use = "dropping a reservation gives its bytes back"]
#[derive(Debug)]
pub struct Reservation<'r> {
    region: &'r Region,
    slot: SlotId,
    record: ChargeRecord,
    armed: bool,
}

impl Reservation<'_> {
    /// Keeps the charge; the returned record is what the matching release must give back.
    pub fn commit(mut self) -> ChargeRecord {
        self.armed = false;
        self.record
    }

    /// What this reservation charged.
    pub fn record(&self) -> ChargeRecord {
        self.record
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            let r = self.record;
            self.region
                .release(self.slot, usize::from(r.device), r.bytes, r.kind);
        }
    }
}

fn io_err<'p>(path: &'p Path, action: &'static str) -> impl FnOnce(io::Error) -> RegionError + 'p {
    move |error| RegionError::Io {
        path: path.to_path_buf(),
        action,
        error,
    }
}

fn uuid_bytes(uuid: &str) -> [u8; UUID_BYTES] {
    let mut out = [0u8; UUID_BYTES];
    for (dst, src) in out
        .iter_mut()
        .zip(uuid.as_bytes().iter().take(UUID_BYTES - 1))
    {
        *dst = *src;
    }
    out
}

impl Region {
    /// Opens (creating if needed) and validates the region at `path` for `setup`, with the kernel as
    /// the judge of process liveness.
    pub fn open(path: impl AsRef<Path>, setup: &RegionSetup) -> Result<Region, RegionError> {
        Region::open_with_probe(path, setup, Box::new(SystemProbe))
    }

    /// [`Region::open`] with an injected liveness probe (tests).
    pub fn open_with_probe(
        path: impl AsRef<Path>,
        setup: &RegionSetup,
        probe: Box<dyn ProcessProbe>,
    ) -> Result<Region, RegionError> {
        let path = path.as_ref();
        if setup.devices.len() > MAX_DEVICES {
            return Err(RegionError::InvalidSetup(format!(
                "{} devices, at most {MAX_DEVICES} fit the region",
                setup.devices.len()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let lock = FileLock::lock(&file, path).map_err(io_err(path, "lock"))?;
        let meta = file.metadata().map_err(io_err(path, "stat"))?;
        if meta.len() == 0 && meta.permissions().mode() & 0o777 != 0o666 {
            // We created it: make it shared like HAMi-core's (mode 0666) without touching the process
            // umask. Best effort: a file that stays narrower only limits other users.
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
        }
        let found = inspect(&file, path, meta.len())?;
        let mut probe = probe;
        if let Found::HamiCore = found {
            // Decide before growing: a file that HAMi-core processes still use must stay exactly
            // as it is (its slots are read at the file's own length; start times, which only our
            // extension holds, read as unknown).
            let len = usize::try_from(meta.len()).unwrap_or(V1_SIZE);
            let map = Mapping::map_file(&file, len, false).map_err(io_err(path, "map"))?;
            let file = file.try_clone().map_err(io_err(path, "dup"))?;
            let current = Region::with_parts(map, file, path, setup, probe);
            let live = current.live_pids();
            if !live.is_empty() {
                return Err(RegionError::HamiCoreInUse {
                    path: path.to_path_buf(),
                    pids: live,
                });
            }
            probe = current.probe;
        }
        grow_file(&file, REGION_FILE_LEN as u64).map_err(io_err(path, "grow"))?;
        let map = Mapping::map_file(&file, REGION_FILE_LEN, true).map_err(io_err(path, "map"))?;
        let mut region = Region::with_parts(map, file, path, setup, probe);
        match found {
            Found::Fresh => region.initialise(),
            Found::HamiCore => {
                let live = region.live_pids();
                if !live.is_empty() {
                    return Err(RegionError::HamiCoreInUse {
                        path: path.to_path_buf(),
                        pids: live,
                    });
                }
                region.initialise();
                region.notices.push(format!(
                    "region {}: re-initialised a HAMi-core region with no live process",
                    path.display()
                ));
            }
            Found::Ours => {
                region.fix_orphaned_freezes();
                if let Some(note) = region.validate_locked()? {
                    region.notices.push(note);
                }
            }
        }
        region.generation.store(
            region.u64(OFF_EXT_GENERATION).load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        drop(lock);
        Ok(region)
    }

    fn with_parts(
        map: Mapping,
        file: File,
        path: &Path,
        setup: &RegionSetup,
        probe: Box<dyn ProcessProbe>,
    ) -> Region {
        Region {
            map,
            file,
            path: path.to_path_buf(),
            setup: setup.clone(),
            probe,
            generation: AtomicU64::new(0),
            reuse_check_cursor: AtomicUsize::new(0),
            notices: Vec::new(),
            spare_u64: AtomicU64::new(0),
            spare_u32: AtomicU32::new(0),
            spare_i32: AtomicI32::new(0),
            spare_u8: AtomicU8::new(0),
            spare_limiter: SharedLimiter::default(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Info lines produced while opening, for the caller to log.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    // ---- field access -----------------------------------------------------------------------------

    fn u64(&self, off: usize) -> &AtomicU64 {
        self.map.u64_at(off).unwrap_or(&self.spare_u64)
    }
    fn u32(&self, off: usize) -> &AtomicU32 {
        self.map.u32_at(off).unwrap_or(&self.spare_u32)
    }
    fn i32(&self, off: usize) -> &AtomicI32 {
        self.map.i32_at(off).unwrap_or(&self.spare_i32)
    }
    fn u8(&self, off: usize) -> &AtomicU8 {
        self.map.u8_at(off).unwrap_or(&self.spare_u8)
    }
    fn charged(&self, device: usize) -> &AtomicU64 {
        self.u64(off_device_charged(device))
    }
    fn inflight(&self, slot: usize) -> &AtomicU32 {
        self.u32(off_slot_inflight(slot))
    }
    fn used(&self, slot: usize, device: usize, field: usize) -> &AtomicU64 {
        self.u64(off_slot_used(slot, device, field))
    }

    /// Stores 0 into every word of `[start, end)` that is not already 0 (untouched pages of a fresh
    /// file stay untouched).
    fn zero_range(&self, start: usize, end: usize) {
        let mut off = start;
        while off + 8 <= end {
            let w = self.u64(off);
            if w.load(Ordering::Relaxed) != 0 {
                w.store(0, Ordering::Relaxed);
            }
            off += 8;
        }
    }

    // ---- initialisation and validation (under the file lock) ---------------------------------------

    /// Writes every field for `self.setup`, the v1 magic last.
    fn initialise(&self) {
        let old_generation = self.u64(OFF_EXT_GENERATION).load(Ordering::Relaxed);
        // Readers that check the magic see "not ready" while we rewrite.
        self.i32(OFF_MAGIC).store(0, Ordering::SeqCst);
        self.zero_range(0, REGION_FILE_LEN);
        self.u32(OFF_MAJOR).store(V1_MAJOR, Ordering::Relaxed);
        self.u32(OFF_MINOR).store(V1_MINOR, Ordering::Relaxed);
        let n = self.setup.devices.len().min(MAX_DEVICES);
        self.u64(OFF_DEVICE_NUM).store(n as u64, Ordering::Relaxed);
        for d in 0..MAX_DEVICES {
            let dev = self.setup.devices.get(d);
            if let Some(dev) = dev {
                for (i, b) in uuid_bytes(&dev.uuid).iter().enumerate() {
                    self.u8(off_uuid(d) + i).store(*b, Ordering::Relaxed);
                }
            }
            let limit = dev.and_then(|x| x.memory_limit).unwrap_or(0);
            let sm = dev.and_then(|x| x.sm_limit_percent).unwrap_or(100);
            self.u64(off_limit(d)).store(limit, Ordering::Relaxed);
            self.u64(off_sm_limit(d))
                .store(u64::from(sm), Ordering::Relaxed);
        }
        self.i32(OFF_PROC_NUM).store(0, Ordering::Relaxed);
        self.i32(OFF_UTILIZATION_SWITCH).store(1, Ordering::Relaxed);
        self.i32(OFF_RECENT_KERNEL).store(2, Ordering::Relaxed);
        self.i32(OFF_PRIORITY)
            .store(self.setup.priority, Ordering::Relaxed);
        self.u64(OFF_LAST_KERNEL_TIME).store(0, Ordering::Relaxed);
        self.u32(OFF_EXT_VERSION)
            .store(EXTENSION_VERSION, Ordering::Relaxed);
        self.u32(OFF_EXT_LENGTH)
            .store(EXTENSION_LEN as u32, Ordering::Relaxed);
        self.u64(OFF_EXT_GENERATION)
            .store(old_generation.wrapping_add(1), Ordering::Relaxed);
        self.u64(OFF_EXT_MAGIC)
            .store(EXTENSION_MAGIC, Ordering::Release);
        self.i32(OFF_MAGIC).store(V1_MAGIC, Ordering::SeqCst);
        self.generation
            .store(old_generation.wrapping_add(1), Ordering::Relaxed);
    }

    /// Differences between the region's device block and our setup, or `None` when they agree.
    fn setup_mismatch(&self) -> Option<String> {
        let mut diffs = Vec::new();
        let n = self.u64(OFF_DEVICE_NUM).load(Ordering::Acquire);
        if n != self.setup.devices.len() as u64 {
            diffs.push(format!(
                "region has {n} devices, this process {}",
                self.setup.devices.len()
            ));
        }
        for (d, dev) in self.setup.devices.iter().enumerate().take(MAX_DEVICES) {
            let want = uuid_bytes(&dev.uuid);
            let same_uuid = want
                .iter()
                .enumerate()
                .all(|(i, b)| self.u8(off_uuid(d) + i).load(Ordering::Relaxed) == *b);
            if !same_uuid {
                diffs.push(format!(
                    "device {d}: region uuid {:?}, this process {:?}",
                    self.uuid(d),
                    dev.uuid
                ));
            }
            let limit = self.u64(off_limit(d)).load(Ordering::Relaxed);
            let want_limit = dev.memory_limit.unwrap_or(0);
            if limit != want_limit {
                diffs.push(format!("device {d}: region limit {limit} bytes, this process {want_limit} bytes (0 = none)"));
            }
            let sm = self.u64(off_sm_limit(d)).load(Ordering::Relaxed);
            let want_sm = u64::from(dev.sm_limit_percent.unwrap_or(100));
            if sm != want_sm {
                diffs.push(format!(
                    "device {d}: region SM limit {sm}%, this process {want_sm}%"
                ));
            }
        }
        if diffs.is_empty() {
            None
        } else {
            Some(diffs.join("; "))
        }
    }

    /// Checks an existing vgpu region against our setup (lock held): agree, re-initialise a stale one,
    /// or fail closed when live processes use other limits. Returns an info line when it did something.
    fn validate_locked(&self) -> Result<Option<String>, RegionError> {
        if self.i32(OFF_MAGIC).load(Ordering::Acquire) != V1_MAGIC {
            // A creator died half-way since we last looked.
            self.initialise();
            return Ok(None);
        }
        let mut note = None;
        if let Some(detail) = self.setup_mismatch() {
            let live = self.live_pids();
            if !live.is_empty() {
                return Err(RegionError::LimitMismatch {
                    path: self.path.clone(),
                    detail: format!("{detail}; live pids {live:?}"),
                });
            }
            self.initialise();
            note = Some(format!(
                "region {}: re-initialised a stale region with no live process ({detail})",
                self.path.display()
            ));
        } else {
            let prio = self.priority();
            if prio != self.setup.priority {
                note = Some(format!(
                    "region {}: keeps priority {prio} set by its creator (this process asked for {})",
                    self.path.display(),
                    self.setup.priority
                ));
            }
        }
        self.generation.store(
            self.u64(OFF_EXT_GENERATION).load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        Ok(note)
    }

    /// Takes the file lock and finishes any recount a dead holder left frozen.
    fn lock(&self) -> Result<FileLock, RegionError> {
        let lock = FileLock::lock(&self.file, &self.path).map_err(io_err(&self.path, "lock"))?;
        self.fix_orphaned_freezes();
        Ok(lock)
    }

    /// With the lock held, a frozen counter belongs to a holder that died: recount it.
    fn fix_orphaned_freezes(&self) {
        for d in 0..MAX_DEVICES {
            if self.charged(d).load(Ordering::SeqCst) & RECOUNT_FROZEN != 0 {
                let _ = self.recount_locked(d);
            }
        }
    }

    // ---- slots ------------------------------------------------------------------------------------

    fn slot_pid(&self, slot: usize) -> i32 {
        self.i32(off_slot_pid(slot)).load(Ordering::Acquire)
    }
    fn slot_status(&self, slot: usize) -> i32 {
        self.i32(off_slot_status(slot)).load(Ordering::Acquire)
    }
    fn slot_is_free(&self, slot: usize) -> bool {
        self.slot_pid(slot) == 0 && self.slot_status(slot) == 0
    }

    /// Whether a non-free slot's owner is alive and is the process that registered it.
    fn slot_is_live(&self, slot: usize) -> bool {
        let pid = self.slot_pid(slot);
        if pid <= 0 {
            return false;
        }
        match self.probe.probe(pid) {
            Liveness::Dead => false,
            Liveness::Alive { start_time } => {
                let recorded = self.u64(off_slot_start_time(slot)).load(Ordering::Acquire);
                match start_time {
                    Some(now) if recorded != 0 => now == recorded,
                    _ => true,
                }
            }
        }
    }

    /// Pids of registered processes that are alive (scanning every slot, not only `proc_num`).
    fn live_pids(&self) -> Vec<i32> {
        (0..MAX_SLOTS)
            .filter(|&k| self.slot_status(k) != 0 && self.slot_is_live(k))
            .map(|k| self.slot_pid(k))
            .collect()
    }

    /// Claims the lowest free slot for `(pid, start_time)` (`start_time` from `/proc/<pid>/stat`
    /// field 22; 0 if unknown). Call once per process image, and again in a forked child with the
    /// child's pid.
    ///
    /// Under the lock it first frees any slot that names this pid: a previous image of this process
    /// (same start time, before an `exec`) or a dead process whose pid we now have. That costs a
    /// liveness look only for those slots, so registering stays cheap however many processes share
    /// the region. The other dead slots are reclaimed by the periodic sweep and when a reservation is
    /// refused ([`Region::reclaim_dead`]); here only when no slot is free.
    pub fn register(&self, pid: i32, start_time: u64) -> Result<SlotId, RegionError> {
        let _lock = self.lock()?;
        if self.u64(OFF_EXT_GENERATION).load(Ordering::Acquire)
            != self.generation.load(Ordering::Relaxed)
            || self.i32(OFF_MAGIC).load(Ordering::Acquire) != V1_MAGIC
        {
            self.validate_locked()?;
        }
        self.free_own_pid_slots_locked(pid, start_time);
        let mut slot = self.lowest_free_slot();
        if slot.is_none() {
            let _ = self.reclaim_dead_locked();
            slot = self.lowest_free_slot();
        }
        let Some(k) = slot else {
            return Err(RegionError::SlotsFull {
                path: self.path.clone(),
            });
        };
        self.zero_range(off_slot(k), off_slot(k + 1));
        self.inflight(k).store(0, Ordering::Relaxed);
        self.u64(off_slot_start_time(k))
            .store(start_time, Ordering::Relaxed);
        self.i32(off_slot_hostpid(k)).store(0, Ordering::Relaxed);
        self.i32(off_slot_pid(k)).store(pid, Ordering::Release);
        self.i32(off_slot_status(k)).store(1, Ordering::Release);
        let top = (k + 1) as i32;
        self.i32(OFF_PROC_NUM).fetch_max(top, Ordering::AcqRel);
        Ok(SlotId(k as u16))
    }

    fn lowest_free_slot(&self) -> Option<usize> {
        (0..MAX_SLOTS).find(|&k| self.slot_is_free(k))
    }

    /// Frees the slots that name `pid` but cannot belong to a live process other than the caller: the
    /// same start time (an earlier image of the caller), or a start time the pid no longer has. Their
    /// usage is given back by recounting the devices they had charged (lock held).
    fn free_own_pid_slots_locked(&self, pid: i32, start_time: u64) {
        let mut taken_totals = [0u64; MAX_DEVICES];
        let mut suspect = [false; MAX_DEVICES];
        let mut freed = false;
        for k in 0..self.slot_scan_end() {
            if self.slot_is_free(k) || self.slot_pid(k) != pid {
                continue;
            }
            let same_image = self.u64(off_slot_start_time(k)).load(Ordering::Acquire) == start_time;
            if !same_image && self.slot_is_live(k) {
                continue; // start times unknown: it cannot be told apart from a live process
            }
            let was_inflight = self.inflight(k).load(Ordering::Acquire) != 0;
            let taken = self.free_dead_slot(k);
            for d in 0..MAX_DEVICES {
                taken_totals[d] = taken_totals[d].saturating_add(taken[d]);
                suspect[d] |= taken[d] > 0 || was_inflight;
            }
            freed = true;
        }
        if !freed {
            return;
        }
        for d in 0..MAX_DEVICES {
            if suspect[d] && !self.recount_locked(d) {
                // Safe fallback, as in reclaim: a slot's usage never exceeds what it added.
                self.sub_charged(d, taken_totals[d]);
            }
        }
        self.lower_proc_num();
    }

    /// Gives the slot's usage back to the device counters and frees the slot (counters zeroed, then
    /// `status = 0`, then `pid = 0`). Call at process exit, when no other thread still allocates.
    pub fn unregister(&self, slot: SlotId) -> Result<(), RegionError> {
        let k = slot.index();
        let _lock = self.lock()?;
        for d in 0..MAX_DEVICES {
            let given = self.take_slot_usage(k, d);
            if given > 0 {
                self.sub_charged(d, given);
            }
        }
        self.release_slot(k);
        self.lower_proc_num();
        Ok(())
    }

    /// Zeroes `used[device]` of a slot and returns the total it held.
    fn take_slot_usage(&self, slot: usize, device: usize) -> u64 {
        for field in [USED_CONTEXT, USED_MODULE, USED_DATA] {
            self.used(slot, device, field).store(0, Ordering::Relaxed);
        }
        self.used(slot, device, USED_TOTAL)
            .swap(0, Ordering::AcqRel)
    }

    /// Marks a slot free: status first, then pid (3.5.4); clears its extension words.
    fn release_slot(&self, slot: usize) {
        self.i32(off_slot_status(slot)).store(0, Ordering::Release);
        self.u64(off_slot_start_time(slot))
            .store(0, Ordering::Relaxed);
        self.inflight(slot).store(0, Ordering::Relaxed);
        self.i32(off_slot_hostpid(slot)).store(0, Ordering::Relaxed);
        self.i32(off_slot_pid(slot)).store(0, Ordering::Release);
    }

    /// Zeroes a dead slot's counters and frees it, *without* touching the device counters (the caller
    /// recounts). Returns the bytes it had recorded per device.
    fn free_dead_slot(&self, slot: usize) -> [u64; MAX_DEVICES] {
        let mut taken = [0u64; MAX_DEVICES];
        for (d, t) in taken.iter_mut().enumerate() {
            *t = self.take_slot_usage(slot, d);
            self.u64(off_slot_sm_util(slot, d))
                .store(0, Ordering::Relaxed);
        }
        self.release_slot(slot);
        taken
    }

    /// `proc_num` = 1 + the highest slot in use.
    fn lower_proc_num(&self) {
        let top = (0..MAX_SLOTS)
            .rev()
            .find(|&k| !self.slot_is_free(k))
            .map_or(0, |k| k + 1);
        self.i32(OFF_PROC_NUM).store(top as i32, Ordering::Release);
    }

    /// Whether any registered slot belongs to a process that is gone (or whose pid was reused). Takes
    /// no lock: a cheap look before [`Region::reclaim_dead`], for callers that sweep periodically.
    ///
    /// Every slot's pid is checked for existence (`kill(pid, 0)`, cheap), but start times, which tell
    /// a reused pid from the process that registered (a `/proc` read, twenty times dearer), only for
    /// [`REUSE_CHECKS_PER_LOOK`] slots per call, round robin. So a process's first memory call stays
    /// cheap with a thousand neighbours, a dead process is still seen at the next look, and a reused
    /// pid within `slots / REUSE_CHECKS_PER_LOOK` looks; [`Region::reclaim_dead`] (a refused
    /// reservation) and the registration of the pid's new owner check it at once.
    pub fn any_dead_slot(&self) -> bool {
        let end = self.slot_scan_end();
        let registered = |k: usize| !self.slot_is_free(k);
        if (0..end).any(|k| registered(k) && !self.probe.exists(self.slot_pid(k))) {
            return true;
        }
        if end == 0 {
            return false;
        }
        let checks = end.min(REUSE_CHECKS_PER_LOOK);
        let first = self.reuse_check_cursor.fetch_add(checks, Ordering::Relaxed) % end;
        (0..checks)
            .map(|i| (first + i) % end)
            .any(|k| registered(k) && !self.slot_is_live(k))
    }

    /// Frees the slots of dead processes and gives their usage back (recounting the devices they had
    /// charged, and any device whose counter has drifted from its slots). Call when a reservation is
    /// refused, then retry it once: a dead process's usage comes back within one allocation.
    pub fn reclaim_dead(&self) -> Result<ReclaimReport, RegionError> {
        let _lock = self.lock()?;
        Ok(self.reclaim_dead_locked())
    }

    fn reclaim_dead_locked(&self) -> ReclaimReport {
        let mut report = ReclaimReport::default();
        let mut dead_totals = [0u64; MAX_DEVICES];
        let mut suspect = [false; MAX_DEVICES];
        for k in 0..self.slot_scan_end() {
            if self.slot_is_free(k) || self.slot_is_live(k) {
                continue;
            }
            let was_inflight = self.inflight(k).load(Ordering::Acquire) != 0;
            let taken = self.free_dead_slot(k);
            report.slots_freed += 1;
            for d in 0..MAX_DEVICES {
                dead_totals[d] = dead_totals[d].saturating_add(taken[d]);
                report.bytes_freed = report.bytes_freed.saturating_add(taken[d]);
                if taken[d] > 0 || was_inflight {
                    suspect[d] = true;
                }
            }
        }
        // A counter above what live slots record has leaked (a death between charging the device and
        // recording it in the slot, or a reclaimer that died half-way): recount it too.
        let totals = self.slot_totals(self.slot_scan_end());
        for (d, s) in suspect.iter_mut().enumerate() {
            if self.charged(d).load(Ordering::Acquire) & CHARGE_MASK != totals[d] {
                *s = true;
            }
        }
        for d in 0..MAX_DEVICES {
            if !suspect[d] {
                continue;
            }
            if self.recount_locked(d) {
                report.recounted |= 1 << d;
            } else {
                report.recount_timeouts |= 1 << d;
                // Safe fallback: a slot's recorded usage never exceeds what it added to the counter.
                self.sub_charged(d, dead_totals[d]);
            }
        }
        if report.slots_freed > 0 {
            self.lower_proc_num();
        }
        report
    }

    /// End of the slot range that can hold registered processes: `proc_num`, which only lock holders
    /// write. Scans that only look for work use it; the recount, which must not miss a slot, and the
    /// search for a free slot scan all 1024.
    fn slot_scan_end(&self) -> usize {
        self.i32(OFF_PROC_NUM)
            .load(Ordering::Acquire)
            .clamp(0, MAX_SLOTS as i32) as usize
    }

    /// Σ `used[d].total` over registered slots in `[0, end)`, every device in one pass.
    fn slot_totals(&self, end: usize) -> [u64; MAX_DEVICES] {
        let mut totals = [0u64; MAX_DEVICES];
        for k in (0..end).filter(|&k| self.slot_status(k) != 0) {
            for (d, t) in totals.iter_mut().enumerate() {
                *t = t.saturating_add(self.used(k, d, USED_TOTAL).load(Ordering::Acquire));
            }
        }
        totals
    }

    fn sum_slot_totals(&self, device: usize) -> u64 {
        (0..MAX_SLOTS)
            .filter(|&k| self.slot_status(k) != 0)
            .map(|k| self.used(k, device, USED_TOTAL).load(Ordering::Acquire))
            .fold(0u64, u64::saturating_add)
    }

    /// Recounts `charged[device]` from the live slots (lock held; see the module docs). Returns false
    /// when a live slot stayed in flight too long; the counter is then unfrozen unchanged.
    fn recount_locked(&self, device: usize) -> bool {
        let counter = self.charged(device);
        // Freeze (or adopt an orphaned freeze).
        let mut cur = counter.load(Ordering::SeqCst);
        while cur & RECOUNT_FROZEN == 0 {
            match counter.compare_exchange_weak(
                cur,
                cur | RECOUNT_FROZEN,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        // Wait for every live slot to leave its counter update.
        let mut backoff = Backoff::new();
        for k in 0..MAX_SLOTS {
            if self.slot_status(k) == 0 {
                continue;
            }
            while self.inflight(k).load(Ordering::SeqCst) != 0 {
                if !self.slot_is_live(k) {
                    self.free_dead_slot(k);
                    break;
                }
                if backoff.round >= RECOUNT_WAIT_ROUNDS {
                    counter.fetch_and(CHARGE_MASK, Ordering::SeqCst);
                    return false;
                }
                backoff.wait();
            }
        }
        let total = self.sum_slot_totals(device).min(MAX_CHARGE);
        counter.store(total, Ordering::SeqCst);
        true
    }

    /// Saturating subtraction on a device counter (keeps a freeze bit if one is set).
    fn sub_charged(&self, device: usize, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let counter = self.charged(device);
        let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            Some((cur & RECOUNT_FROZEN) | (cur & CHARGE_MASK).saturating_sub(bytes))
        });
    }

    /// Waits while `charged[device]` is frozen. A freeze lasts one recount (well under a second); if
    /// the lock is found free while the counter is still frozen, the recount's owner died and this
    /// caller finishes it.
    fn wait_unfrozen(&self, device: usize) {
        let mut backoff = Backoff::new();
        let mut rounds_since_check = 0;
        while self.charged(device).load(Ordering::SeqCst) & RECOUNT_FROZEN != 0 {
            backoff.wait();
            rounds_since_check += 1;
            if rounds_since_check >= ORPHAN_CHECK_ROUNDS {
                rounds_since_check = 0;
                if let Ok(Some(_lock)) = FileLock::try_lock(&self.file, &self.path) {
                    self.fix_orphaned_freezes();
                }
            }
        }
    }

    // ---- charging ---------------------------------------------------------------------------------

    /// Charges `bytes` of `kind` on `device` to `slot`, refused if the container would exceed the
    /// device's limit. Check and charge are one CAS on the container-wide counter. Zero bytes charge
    /// nothing and always succeed.
    pub fn reserve(
        &self,
        slot: SlotId,
        device: usize,
        bytes: u64,
        kind: MemKind,
    ) -> Result<Reservation<'_>, OverLimit> {
        let k = slot.index();
        let over = |used: u64, limit: u64| OverLimit {
            device,
            requested: bytes,
            used,
            limit,
        };
        if device >= self.device_count() || k >= MAX_SLOTS {
            return Err(over(0, 0));
        }
        let record = ChargeRecord {
            device: device as u16,
            bytes,
            kind,
        };
        if bytes == 0 {
            return Ok(Reservation {
                region: self,
                slot,
                record,
                armed: false,
            });
        }
        let limit = self.u64(off_limit(device)).load(Ordering::Relaxed);
        let bound = if limit == 0 {
            MAX_CHARGE
        } else {
            limit.min(MAX_CHARGE)
        };
        let counter = self.charged(device);
        let inflight = self.inflight(k);
        'retry: loop {
            inflight.fetch_add(1, Ordering::SeqCst);
            let mut cur = counter.load(Ordering::SeqCst);
            loop {
                if cur & RECOUNT_FROZEN != 0 {
                    inflight.fetch_sub(1, Ordering::Release);
                    self.wait_unfrozen(device);
                    continue 'retry;
                }
                let next = match cur.checked_add(bytes) {
                    Some(n) if n <= bound => n,
                    _ => {
                        inflight.fetch_sub(1, Ordering::Release);
                        return Err(over(cur, limit));
                    }
                };
                match counter.compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => break 'retry,
                    Err(seen) => cur = seen,
                }
            }
        }
        self.used(k, device, kind.field())
            .fetch_add(bytes, Ordering::Relaxed);
        self.used(k, device, USED_TOTAL)
            .fetch_add(bytes, Ordering::Relaxed);
        inflight.fetch_sub(1, Ordering::Release);
        Ok(Reservation {
            region: self,
            slot,
            record,
            armed: true,
        })
    }

    /// Gives back up to `bytes` of `kind` on `device` charged to `slot`; never takes a counter below
    /// zero. Returns the bytes actually given back.
    pub fn release(&self, slot: SlotId, device: usize, bytes: u64, kind: MemKind) -> u64 {
        let k = slot.index();
        if bytes == 0 || device >= MAX_DEVICES || k >= MAX_SLOTS {
            return 0;
        }
        let counter = self.charged(device);
        let inflight = self.inflight(k);
        let kind_counter = self.used(k, device, kind.field());
        let total = self.used(k, device, USED_TOTAL);
        'retry: loop {
            inflight.fetch_add(1, Ordering::SeqCst);
            if counter.load(Ordering::SeqCst) & RECOUNT_FROZEN != 0 {
                inflight.fetch_sub(1, Ordering::Release);
                self.wait_unfrozen(device);
                continue 'retry;
            }
            // Slot first, device counter second: a death in between leaves the device counter high
            // (recovered by a recount), never low.
            let taken = kind_counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(bytes))
                })
                .map_or(0, |old| old.min(bytes));
            if taken == 0 {
                inflight.fetch_sub(1, Ordering::Release);
                return 0;
            }
            let _ = total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(taken))
            });
            let mut cur = counter.load(Ordering::SeqCst);
            loop {
                if cur & RECOUNT_FROZEN != 0 {
                    // A recount started and waits for us: put the slot back as it was, step out.
                    kind_counter.fetch_add(taken, Ordering::Relaxed);
                    total.fetch_add(taken, Ordering::Relaxed);
                    inflight.fetch_sub(1, Ordering::Release);
                    self.wait_unfrozen(device);
                    continue 'retry;
                }
                match counter.compare_exchange_weak(
                    cur,
                    cur.saturating_sub(taken),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => break,
                    Err(seen) => cur = seen,
                }
            }
            inflight.fetch_sub(1, Ordering::Release);
            return taken;
        }
    }

    /// [`Region::release`] of a committed record.
    pub fn release_record(&self, slot: SlotId, record: ChargeRecord) -> u64 {
        self.release(slot, usize::from(record.device), record.bytes, record.kind)
    }

    // ---- views ------------------------------------------------------------------------------------

    /// Devices in the region (`device_num`, at most 16).
    pub fn device_count(&self) -> usize {
        (self.u64(OFF_DEVICE_NUM).load(Ordering::Relaxed) as usize).min(MAX_DEVICES)
    }

    /// Container-wide bytes charged on `device` (including reservations in flight).
    pub fn device_used(&self, device: usize) -> u64 {
        if device >= MAX_DEVICES {
            return 0;
        }
        self.charged(device).load(Ordering::Relaxed) & CHARGE_MASK
    }

    /// The device's memory limit in bytes; `None` = no limit or no such device.
    pub fn device_limit(&self, device: usize) -> Option<u64> {
        if device >= self.device_count() {
            return None;
        }
        Some(self.u64(off_limit(device)).load(Ordering::Relaxed)).filter(|&l| l != 0)
    }

    /// The device's SM limit in percent (1..=99); `None` when 0, ≥ 100 or no such device.
    pub fn sm_limit(&self, device: usize) -> Option<u32> {
        if device >= self.device_count() {
            return None;
        }
        let v = self.u64(off_sm_limit(device)).load(Ordering::Relaxed);
        if (1..100).contains(&v) {
            Some(v as u32)
        } else {
            None
        }
    }

    /// The device's UUID as stored (up to the first NUL).
    pub fn uuid(&self, device: usize) -> String {
        if device >= MAX_DEVICES {
            return String::new();
        }
        let bytes: Vec<u8> = (0..UUID_BYTES)
            .map(|i| self.u8(off_uuid(device) + i).load(Ordering::Relaxed))
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What `slot` has charged on `device`.
    pub fn slot_used(&self, slot: SlotId, device: usize) -> SlotUsage {
        let (k, d) = (slot.index(), device);
        if d >= MAX_DEVICES {
            return SlotUsage::default();
        }
        SlotUsage {
            context: self.used(k, d, USED_CONTEXT).load(Ordering::Relaxed),
            module: self.used(k, d, USED_MODULE).load(Ordering::Relaxed),
            data: self.used(k, d, USED_DATA).load(Ordering::Relaxed),
            total: self.used(k, d, USED_TOTAL).load(Ordering::Relaxed),
        }
    }

    /// The pid registered in `slot` (0 when free).
    pub fn slot_pid_of(&self, slot: SlotId) -> i32 {
        self.slot_pid(slot.index())
    }

    /// Records the host pid of a slot once known (3.2 `hostpid`).
    pub fn set_hostpid(&self, slot: SlotId, hostpid: i32) {
        self.i32(off_slot_hostpid(slot.index()))
            .store(hostpid, Ordering::Relaxed);
    }

    /// Records a slot's SM utilisation percentage on a device (3.5.6, read by the monitor).
    pub fn set_slot_sm_util(&self, slot: SlotId, device: usize, percent: u64) {
        if device < MAX_DEVICES {
            self.u64(off_slot_sm_util(slot.index(), device))
                .store(percent.min(100), Ordering::Relaxed);
        }
    }

    /// A consistent-enough copy of everything, for tools.
    pub fn snapshot(&self) -> Result<RegionSnapshot, SnapshotError> {
        RegionSnapshot::from_source(&self.map)
    }

    // ---- limiter accessors ------------------------------------------------------------------------

    /// The shared words the compute limiter reads and writes on every launch: the tail's
    /// `recent_kernel`, `utilization_switch` and `last_kernel_time`, and the extension's
    /// [`SharedLimiter`] (one token bucket per device).
    pub fn limiter_view(&self) -> SharedView<'_> {
        SharedView {
            recent_kernel: self.i32(OFF_RECENT_KERNEL),
            utilization_switch: self.i32(OFF_UTILIZATION_SWITCH),
            last_kernel_time_s: self.u64(OFF_LAST_KERNEL_TIME),
            limiter: self.shared_limiter(),
        }
    }

    /// The extension's [`SharedLimiter`], in the mapping.
    fn shared_limiter(&self) -> &SharedLimiter {
        let fits = OFF_EXT_LIMITER
            .checked_add(std::mem::size_of::<SharedLimiter>())
            .is_some_and(|end| end <= self.map.len());
        match self.map.u64_at(OFF_EXT_LIMITER) {
            Some(first) if fits => {
                let start: *const AtomicU64 = first;
                // SAFETY: `[OFF_EXT_LIMITER, +2048)` lies inside the mapping (checked above), which
                // lives as long as `self` (the reference borrows it). The address is 128-aligned:
                // the mapping is page-aligned and layout.rs pins the offset's alignment. Every field
                // of `SharedLimiter` is an atomic integer, so any bytes another process wrote are a
                // valid value, and all access goes through atomics (no data race in Rust's model).
                // The pointer comes from the mapping's base through `Mapping::u64_at`; a typed view
                // accessor on `Mapping` (sys/mmap.rs) would state the wider extent directly.
                unsafe { &*start.cast::<SharedLimiter>() }
            }
            // Unreachable once `open` validated the length; keeps this total without a panic path.
            _ => &self.spare_limiter,
        }
    }

    /// `utilization_switch` (written by the monitor): 1 = the SM limit applies under policy `default`.
    pub fn utilization_switch(&self) -> i32 {
        self.i32(OFF_UTILIZATION_SWITCH).load(Ordering::Relaxed)
    }

    /// `recent_kernel`: negative while the monitor blocks this container for a higher priority one.
    pub fn recent_kernel(&self) -> i32 {
        self.i32(OFF_RECENT_KERNEL).load(Ordering::Relaxed)
    }

    /// Notes a kernel launch: moves `recent_kernel` from a value ≥ 0 to 2 (3.6), writing only when it
    /// changes and never over a negative value. Returns false when the container is blocked
    /// (`recent_kernel < 0`); the caller then waits before submitting (unless the policy disables it).
    pub fn mark_kernel_launched(&self) -> bool {
        let word = self.i32(OFF_RECENT_KERNEL);
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            if cur < 0 {
                return false;
            }
            if cur == 2 {
                return true;
            }
            match word.compare_exchange_weak(cur, 2, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Raises `last_kernel_time` to `now_secs` (epoch seconds) if that is later; never moves it back.
    /// Returns whether it wrote. Rate-limiting by `RECORD_KERNEL_INTERVAL` is the caller's.
    pub fn stamp_last_kernel_time(&self, now_secs: u64) -> bool {
        let word = self.u64(OFF_LAST_KERNEL_TIME);
        let mut cur = word.load(Ordering::Relaxed);
        while now_secs > cur {
            match word.compare_exchange_weak(cur, now_secs, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
        false
    }

    /// `last_kernel_time` in epoch seconds.
    pub fn last_kernel_time(&self) -> u64 {
        self.u64(OFF_LAST_KERNEL_TIME).load(Ordering::Relaxed)
    }

    /// The region's `priority` (0 high, 1 low).
    pub fn priority(&self) -> i32 {
        self.i32(OFF_PRIORITY).load(Ordering::Relaxed)
    }
}

/// Reads what is at the start of the file (lock held, nothing mapped yet) and decides.
fn inspect(file: &File, path: &Path, len: u64) -> Result<Found, RegionError> {
    let read_u32 = |off: u64| -> Result<u32, RegionError> {
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, off)
            .map_err(io_err(path, "read"))?;
        Ok(u32::from_le_bytes(b))
    };
    let read_u64 = |off: u64| -> Result<u64, RegionError> {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off)
            .map_err(io_err(path, "read"))?;
        Ok(u64::from_le_bytes(b))
    };
    if len < 4 {
        return Ok(Found::Fresh);
    }
    let magic = read_u32(OFF_MAGIC as u64)? as i32;
    if magic == 0 {
        return Ok(Found::Fresh);
    }
    if magic != V1_MAGIC {
        return Err(RegionError::ForeignMagic {
            path: path.to_path_buf(),
            magic,
        });
    }
    if len < V1_SIZE as u64 {
        return Err(RegionError::Truncated {
            path: path.to_path_buf(),
            len,
            needed: V1_SIZE as u64,
        });
    }
    let major = read_u32(OFF_MAJOR as u64)?;
    if major != V1_MAJOR {
        return Err(RegionError::UnsupportedMajor {
            path: path.to_path_buf(),
            major,
        });
    }
    if len < (OFF_EXT_LENGTH + 4) as u64 {
        return Ok(Found::HamiCore);
    }
    let ext_magic = read_u64(OFF_EXT_MAGIC as u64)?;
    if ext_magic == 0 {
        return Ok(Found::HamiCore);
    }
    if ext_magic != EXTENSION_MAGIC {
        return Err(RegionError::UnknownExtension {
            path: path.to_path_buf(),
            magic: ext_magic,
        });
    }
    let version = read_u32(OFF_EXT_VERSION as u64)?;
    if version != EXTENSION_VERSION {
        return Err(RegionError::UnsupportedExtensionVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let length = read_u32(OFF_EXT_LENGTH as u64)?;
    if (length as usize) < EXTENSION_LEN {
        return Err(RegionError::BadExtensionLength {
            path: path.to_path_buf(),
            length,
        });
    }
    let needed = (EXTENSION_OFFSET + length as usize) as u64;
    if len < needed {
        return Err(RegionError::Truncated {
            path: path.to_path_buf(),
            len,
            needed,
        });
    }
    Ok(Found::Ours)
}

#[cfg(test)]
mod tests;
