//! The machine: the mapped state file plus this process's view of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::config::{Config, DeviceSpec, MAX_DEVICES};
use crate::faults::Faults;
use crate::layout::*;
use crate::sys;
use crate::SimError;

/// One simulated GPU machine, shared by every process that opens the same state file.
pub struct Machine {
    map: sys::Mapping,
    path: PathBuf,
    /// The state file's device and inode, to lock that same file again when registering after a
    /// fork (`None` if fstat failed: registration then goes without the lock).
    file_identity: Option<sys::FileIdentity>,
    devices: Vec<DeviceSpec>,
    driver_version: i32,
    faults: Faults,
    /// `fork_generation << 32 | (slot index + 1)`; `slot index + 1 == u32::MAX` while registering.
    slot_cache: AtomicU64,
    /// Monotonic ns before which `mem_info` skips its dead-process scan.
    next_mem_info_reclaim_ns: AtomicU64,
}

/// A real driver frees a dead process's memory at once; the simulator finds dead processes by
/// scanning its process table (a `kill(pid, 0)` and a `/proc` read per live process), so
/// `mem_info` scans at most this often per process. Allocations that would fail still scan every time.
const MEM_INFO_RECLAIM_INTERVAL_NS: u64 = 10_000_000;

/// A process's share of one device, as NVML lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    pub used_bytes: u64,
}

/// One reserved stretch of a device's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyInterval {
    pub start_ns: u64,
    pub end_ns: u64,
    pub pid: u32,
}

const REGISTERING: u64 = u32::MAX as u64;

/// Whether the caller of `register` already holds the state file's lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileLock {
    Held,
    Take,
}

impl Machine {
    /// The process-wide machine, opened on first use from `SIMGPU_STATE` and `SIMGPU_DEVICES`
    /// (plus `SIMGPU_DRIVER_VERSION` and the fault variables). A bad configuration or state file is
    /// reported once on stderr and every call returns the same error; nothing panics or exits.
    pub fn get() -> Result<&'static Machine, SimError> {
        static MACHINE: OnceLock<Result<Machine, SimError>> = OnceLock::new();
        let opened = MACHINE.get_or_init(|| {
            let opened = Config::from_env()
                .and_then(|config| Machine::open(&crate::config::state_path_from_env(), config));
            if let Err(e) = &opened {
                sys::stderr_line(&format!("simulated GPU machine unavailable: {e}"));
            }
            opened
        });
        match opened {
            Ok(m) => Ok(m),
            Err(e) => Err(e.clone()),
        }
    }

    /// Open (or create) the machine in `path` with `config`, and register this process in it.
    /// A file created for a different device spec is re-initialised when no live process uses it,
    /// and refused otherwise. A foreign or corrupt file is refused and left untouched.
    pub fn open(path: &Path, config: Config) -> Result<Machine, SimError> {
        sys::register_atfork();
        let state_err = |what: &str, e: std::io::Error| {
            SimError::StateFile(format!("{}: {what}: {e}", path.display()))
        };
        let file =
            sys::LockedFile::open_locked(path).map_err(|e| state_err("cannot open and lock", e))?;
        Machine::open_locked(path, file, config)
    }

    /// Attach to the machine that already lives in `path`, with the devices it was made for, whatever
    /// `SIMGPU_DEVICES` says (what a tool like `simgpu-ctl` wants: it must never rebuild a machine).
    /// No fault variables apply; the driver version is the default. A missing, empty, foreign or
    /// corrupt file is an error and is left untouched.
    pub fn attach(path: &Path) -> Result<Machine, SimError> {
        sys::register_atfork();
        let state_err = |what: &str, e: std::io::Error| {
            SimError::StateFile(format!("{}: {what}: {e}", path.display()))
        };
        if !path.exists() {
            return Err(SimError::StateFile(format!(
                "{}: no simulated machine there (none has been started with this SIMGPU_STATE)",
                path.display()
            )));
        }
        let file =
            sys::LockedFile::open_locked(path).map_err(|e| state_err("cannot open and lock", e))?;
        let size = file.size().map_err(|e| state_err("fstat", e))?;
        let mut head = vec![0u8; DEVICES_OFFSET];
        let got = file
            .read_prefix(&mut head)
            .map_err(|e| state_err("read", e))?;
        if size == 0 || got < 8 || head[..8] == [0u8; 8] {
            return Err(SimError::StateFile(format!(
                "{}: empty, no simulated machine there yet",
                path.display()
            )));
        }
        check_header(path, &head[..got], size)?;
        let spec_len = u32::from_le_bytes([head[20], head[21], head[22], head[23]]) as usize;
        let spec = head
            .get(SPEC_OFFSET..SPEC_OFFSET + spec_len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| {
                SimError::StateFile(format!("{}: unreadable device spec", path.display()))
            })?;
        let devices = crate::config::parse_devices(spec).map_err(|e| {
            SimError::StateFile(format!("{}: stored device spec: {e}", path.display()))
        })?;
        let config = Config {
            devices,
            driver_version: crate::config::DEFAULT_DRIVER_VERSION,
            faults: Faults::none(),
        };
        // The stored spec is canonical, so it reads back as the same machine and is never rebuilt.
        Machine::open_locked(path, file, config)
    }

    /// `open` once `file` is locked; the lock is released when this returns.
    fn open_locked(
        path: &Path,
        file: sys::LockedFile,
        config: Config,
    ) -> Result<Machine, SimError> {
        let state_err = |what: &str, e: std::io::Error| {
            SimError::StateFile(format!("{}: {what}: {e}", path.display()))
        };
        let spec: String = config
            .devices
            .iter()
            .map(|d| d.canonical() + "\n")
            .collect();
        if spec.len() > SPEC_MAX {
            return Err(SimError::InvalidConfig(
                "SIMGPU_DEVICES: device spec too long".into(),
            ));
        }
        let want_bytes = file_bytes(config.devices.len());
        let size = file.size().map_err(|e| state_err("fstat", e))?;
        let mut head = [0u8; 64];
        let got = file
            .read_prefix(&mut head)
            .map_err(|e| state_err("read", e))?;

        let mut map = None;
        if size > 0 && got >= 8 && head[..8] != [0u8; 8] {
            check_header(path, &head[..got], size)?;
            let existing = file.map(size as usize).map_err(|e| state_err("mmap", e))?;
            let same_spec = {
                let header = header_of(&existing);
                let len = (header.spec_len as usize).min(SPEC_MAX);
                // SAFETY: the spec area lies inside the mapping (size checked against file_bytes).
                let stored =
                    unsafe { std::slice::from_raw_parts(existing.as_ptr().add(SPEC_OFFSET), len) };
                stored == spec.as_bytes()
            };
            if same_spec {
                map = Some(existing);
            } else {
                // Another configuration: only a machine nobody uses can be rebuilt.
                let live = live_owner_pids(&existing);
                if let Some(pid) = live.first() {
                    return Err(SimError::StateFile(format!(
                        "{} holds a machine with other devices (in use by pid {pid}); use the same SIMGPU_DEVICES \
                         or another SIMGPU_STATE",
                        path.display()
                    )));
                }
            }
        }
        let map = match map {
            Some(m) => m,
            None => {
                // Fresh (or abandoned) file: truncating to 0 first zeroes every byte of the old machine.
                file.set_size(0).map_err(|e| state_err("truncate", e))?;
                file.set_size(want_bytes)
                    .map_err(|e| state_err("resize", e))?;
                let map = file
                    .map(want_bytes as usize)
                    .map_err(|e| state_err("mmap", e))?;
                initialise(&map, &config, &spec);
                map
            }
        };
        let machine = Machine {
            map,
            path: path.to_path_buf(),
            file_identity: file.identity().ok(),
            devices: config.devices,
            driver_version: config.driver_version,
            faults: config.faults,
            slot_cache: AtomicU64::new(0),
            next_mem_info_reclaim_ns: AtomicU64::new(0),
        };
        // Register while still holding the lock, so a concurrent re-initialisation sees us as live.
        let generation = sys::FORK_GENERATION.load(Ordering::Relaxed) as u64;
        machine.register(generation, FileLock::Held)?;
        drop(file);
        Ok(machine)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn devices(&self) -> &[DeviceSpec] {
        &self.devices
    }

    pub fn device(&self, dev: u32) -> Option<&DeviceSpec> {
        self.devices.get(dev as usize)
    }

    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Whether device `dev` is lost: named by this process's `SIMGPU_DEVICE_LOST`, or marked lost
    /// machine-wide with [`Machine::set_device_lost`] (by any process, at any time). One relaxed load
    /// on top of the environment check: cheap enough for every allocation and launch.
    #[inline]
    pub fn device_lost(&self, dev: u32) -> bool {
        self.faults.device_lost(dev)
            || self
                .device_pair(dev)
                .is_ok_and(|(_, state)| state.lost.load(Ordering::Relaxed) != 0)
    }

    /// Mark device `dev` lost (or recovered) for every process of the machine, from now on: their
    /// CUDA calls on it fail and NVML answers `NVML_ERROR_GPU_IS_LOST`, as with `SIMGPU_DEVICE_LOST`.
    /// Memory already allocated stays charged. Clearing does not undo `SIMGPU_DEVICE_LOST`.
    pub fn set_device_lost(&self, dev: u32, lost: bool) -> Result<(), SimError> {
        let (_, state) = self.device_pair(dev)?;
        state.lost.store(lost as u32, Ordering::Relaxed);
        Ok(())
    }

    /// CLOCK_MONOTONIC in ns: the same clock in every process, the timeline's clock.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        sys::monotonic_ns()
    }

    /// Block until the monotonic clock reaches `ns` (how synchronisation waits for simulated work).
    pub fn wait_until(&self, ns: u64) {
        sys::wait_until_ns(ns)
    }

    // ---- memory -------------------------------------------------------------------------------

    /// Charge `bytes` on device `dev`: machine-wide (fails past capacity) and to this process.
    /// Lock-free: one CAS on the device counter and one add on this process's slot.
    /// Does not consult `SIMGPU_FAIL_ALLOC_AT` (the caller does, with `faults().should_fail_alloc()`).
    #[inline]
    pub fn alloc(&self, dev: u32, bytes: u64) -> Result<(), SimError> {
        let (spec, state) = self.device_pair(dev)?;
        if self.faults.device_lost(dev) || state.lost.load(Ordering::Relaxed) != 0 {
            return Err(SimError::DeviceLost);
        }
        let slot = self.slot()?;
        if !try_charge(&state.used_bytes, bytes, spec.mem_bytes) {
            // Dead processes may still hold memory: give it back, then try once more.
            self.reclaim_dead();
            if !try_charge(&state.used_bytes, bytes, spec.mem_bytes) {
                return Err(SimError::OutOfMemory);
            }
        }
        slot.used_bytes[dev as usize].fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Give back `bytes` this process charged on `dev` (never more than it holds there).
    #[inline]
    pub fn free(&self, dev: u32, bytes: u64) {
        let Ok((_, state)) = self.device_pair(dev) else {
            return;
        };
        let Ok(slot) = self.slot() else { return };
        // Every thread of the process, and both copies of the machine in it, share the slot: take
        // at most what it holds in one atomic step, so two racing frees cannot go below zero.
        let held = slot.used_bytes[dev as usize]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held - bytes.min(held))
            })
            .unwrap_or(0);
        let amount = bytes.min(held);
        let _ = state
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(amount))
            });
    }

    /// `(free, total)` bytes of `dev` machine-wide, after giving back dead processes' memory.
    /// Unknown device: `(0, 0)`.
    pub fn mem_info(&self, dev: u32) -> (u64, u64) {
        let Ok((spec, state)) = self.device_pair(dev) else {
            return (0, 0);
        };
        let now = crate::monotonic_ns();
        let due = self.next_mem_info_reclaim_ns.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_mem_info_reclaim_ns
                .compare_exchange(
                    due,
                    now + MEM_INFO_RECLAIM_INTERVAL_NS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.reclaim_dead();
        }
        let used = state.used_bytes.load(Ordering::Acquire).min(spec.mem_bytes);
        (spec.mem_bytes - used, spec.mem_bytes)
    }

    /// Bytes this process holds on `dev`.
    pub fn process_used(&self, dev: u32) -> u64 {
        match (self.device_pair(dev), self.slot()) {
            (Ok(_), Ok(slot)) => slot.used_bytes[dev as usize].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Note that this process created a context on `dev` (NVML lists it even with no memory).
    pub fn context_created(&self, dev: u32) {
        if let (Ok(_), Ok(slot)) = (self.device_pair(dev), self.slot()) {
            slot.contexts[dev as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Note that this process destroyed a context on `dev`.
    pub fn context_destroyed(&self, dev: u32) {
        if let (Ok(_), Ok(slot)) = (self.device_pair(dev), self.slot()) {
            let _ = slot.contexts[dev as usize].fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |c| c.checked_sub(1),
            );
        }
    }

    /// Live processes with memory or a context on `dev`, one entry per pid, after reclaiming dead ones.
    pub fn processes(&self, dev: u32) -> Vec<ProcessUsage> {
        let mut out: Vec<ProcessUsage> = Vec::new();
        if self.device_pair(dev).is_err() {
            return out;
        }
        self.reclaim_dead();
        let d = dev as usize;
        for slot in self.slots() {
            let owner = slot.owner.load(Ordering::Acquire);
            if owner_kind(owner) != SLOT_LIVE {
                continue;
            }
            let used = slot.used_bytes[d].load(Ordering::Relaxed);
            if used == 0 && slot.contexts[d].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let pid = owner_pid(owner);
            match out.iter_mut().find(|p| p.pid == pid) {
                Some(p) => p.used_bytes += used,
                None => out.push(ProcessUsage {
                    pid,
                    used_bytes: used,
                }),
            }
        }
        out
    }

    /// Free the slots of processes that have exited (or were killed) and give their memory back.
    /// Returns how many slots were reclaimed. Costs a `kill(pid, 0)` and a `/proc` read per live slot.
    pub fn reclaim_dead(&self) -> usize {
        let mut reclaimed = 0;
        for slot in self.slots() {
            let owner = slot.owner.load(Ordering::Acquire);
            let (kind, pid) = (owner_kind(owner), owner_pid(owner));
            let dead = match kind {
                SLOT_FREE => false,
                SLOT_LIVE => !sys::process_alive(pid, slot.start_time.load(Ordering::Acquire)),
                // A claimer or reclaimer that died half-way: the pid alone tells.
                _ => !sys::process_alive(pid, 0),
            };
            if !dead {
                continue;
            }
            let me = sys::getpid();
            if slot
                .owner
                .compare_exchange(
                    owner,
                    owner_word(SLOT_RECLAIMING, me),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue; // someone else got there first
            }
            for (dev, state) in self.device_states().enumerate() {
                // swap, then subtract: if we die in between the bytes leak, they are never returned twice.
                let held = slot.used_bytes[dev].swap(0, Ordering::AcqRel);
                if held > 0 {
                    let _ =
                        state
                            .used_bytes
                            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                                Some(u.saturating_sub(held))
                            });
                }
            }
            clear_slot(slot);
            slot.owner
                .store(owner_word(SLOT_FREE, 0), Ordering::Release);
            reclaimed += 1;
        }
        reclaimed
    }

    // ---- time ---------------------------------------------------------------------------------

    /// Reserve the next `duration_ns` of device `dev`'s timeline, shared by every process:
    /// `start = max(now, busy_until, not_before_ns)`, `end = start + duration_ns`. Records the
    /// interval for this process and returns `(start_ns, end_ns)`. Unknown device: `(now, now)`.
    #[inline]
    pub fn launch(&self, dev: u32, duration_ns: u64, not_before_ns: u64) -> (u64, u64) {
        let now = self.now_ns();
        let Ok((_, state)) = self.device_pair(dev) else {
            return (now, now);
        };
        let mut busy = state.busy_until_ns.load(Ordering::Acquire);
        let (start, end) = loop {
            let start = now.max(busy).max(not_before_ns);
            let end = start.saturating_add(duration_ns);
            match state.busy_until_ns.compare_exchange_weak(
                busy,
                end,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break (start, end),
                Err(seen) => busy = seen,
            }
        };
        let pid = match self.slot() {
            Ok(slot) => {
                slot.busy_ns[dev as usize].fetch_add(duration_ns, Ordering::Relaxed);
                owner_pid(slot.owner.load(Ordering::Relaxed))
            }
            Err(_) => sys::getpid(),
        };
        state
            .total_busy_ns
            .fetch_add(duration_ns, Ordering::Relaxed);
        state.launches.fetch_add(1, Ordering::Relaxed);
        let ticket = state.ring_head.fetch_add(1, Ordering::AcqRel);
        let entry = self.ring_entry(dev as usize, ticket);
        // A seqlock write: readers accept the entry only if seq reads ticket+1 before and after.
        entry.seq.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        entry.start_ns.store(start, Ordering::Relaxed);
        entry.end_ns.store(end, Ordering::Relaxed);
        entry.pid.store(pid as u64, Ordering::Relaxed);
        entry.seq.store(ticket + 1, Ordering::Release);
        (start, end)
    }

    /// When device `dev` finishes everything reserved so far (CLOCK_MONOTONIC ns).
    pub fn busy_until(&self, dev: u32) -> u64 {
        self.device_pair(dev)
            .map(|(_, s)| s.busy_until_ns.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Device time of `dev` in `[from_ns, to_ns)` that went to `pid` (or to anyone with `None`),
    /// computed from the busy ring. Exact while the window is younger than the ring's reach
    /// (`RING_CAPACITY` launches back); older intervals have been overwritten.
    pub fn busy_ns(&self, dev: u32, pid: Option<u32>, from_ns: u64, to_ns: u64) -> u64 {
        let mut total = 0;
        self.for_each_interval(dev, from_ns, |iv| {
            if pid.is_none_or(|p| p == iv.pid) {
                total += overlap(iv, from_ns, to_ns);
            }
        });
        total
    }

    /// Device time of `dev` in `[from_ns, to_ns)` per pid (unordered), from the busy ring.
    pub fn busy_by_pid(&self, dev: u32, from_ns: u64, to_ns: u64) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = Vec::new();
        self.for_each_interval(dev, from_ns, |iv| {
            let ns = overlap(iv, from_ns, to_ns);
            if ns == 0 {
                return;
            }
            match out.iter_mut().find(|(p, _)| *p == iv.pid) {
                Some((_, t)) => *t += ns,
                None => out.push((iv.pid, ns)),
            }
        });
        out
    }

    /// Recorded intervals of `dev` that end after `from_ns`, newest first.
    pub fn intervals_since(&self, dev: u32, from_ns: u64) -> Vec<BusyInterval> {
        let mut out = Vec::new();
        self.for_each_interval(dev, from_ns, |iv| {
            if iv.end_ns > from_ns {
                out.push(iv)
            }
        });
        out
    }

    /// Device time ever reserved on `dev`: by every process (`None`), or by the live process `pid`
    /// (its counter goes when its slot is reclaimed).
    pub fn total_busy_ns(&self, dev: u32, pid: Option<u32>) -> u64 {
        let Ok((_, state)) = self.device_pair(dev) else {
            return 0;
        };
        match pid {
            None => state.total_busy_ns.load(Ordering::Relaxed),
            Some(pid) => self
                .slots()
                .filter(|s| {
                    let o = s.owner.load(Ordering::Acquire);
                    owner_kind(o) == SLOT_LIVE && owner_pid(o) == pid
                })
                .map(|s| s.busy_ns[dev as usize].load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// Kernel launches ever reserved on `dev`.
    pub fn launches(&self, dev: u32) -> u64 {
        self.device_pair(dev)
            .map(|(_, s)| s.launches.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    // ---- internals ----------------------------------------------------------------------------

    fn for_each_interval(&self, dev: u32, from_ns: u64, mut f: impl FnMut(BusyInterval)) {
        let Ok((_, state)) = self.device_pair(dev) else {
            return;
        };
        let head = state.ring_head.load(Ordering::Acquire);
        let oldest = head.saturating_sub(RING_CAPACITY);
        // Entries are in reservation order, which is start order up to racing launchers; stop after a
        // long run of intervals that all ended before the window.
        let mut ended_before = 0u32;
        let mut ticket = head;
        while ticket > oldest && ended_before < 4096 {
            ticket -= 1;
            let entry = self.ring_entry(dev as usize, ticket);
            let seq = entry.seq.load(Ordering::Acquire);
            let iv = BusyInterval {
                start_ns: entry.start_ns.load(Ordering::Relaxed),
                end_ns: entry.end_ns.load(Ordering::Relaxed),
                pid: entry.pid.load(Ordering::Relaxed) as u32,
            };
            fence(Ordering::Acquire);
            if seq != ticket + 1 || entry.seq.load(Ordering::Relaxed) != seq {
                continue; // being written, or already overwritten by a newer lap
            }
            if iv.end_ns <= from_ns {
                ended_before += 1;
            } else {
                ended_before = 0;
            }
            f(iv);
        }
    }

    #[inline]
    fn device_pair(&self, dev: u32) -> Result<(&DeviceSpec, &DeviceState), SimError> {
        let spec = self
            .devices
            .get(dev as usize)
            .ok_or(SimError::InvalidDevice)?;
        // SAFETY: dev < device_count <= MAX_DEVICES, so the record lies inside the mapping.
        let state = unsafe {
            &*(self
                .map
                .as_ptr()
                .add(DEVICES_OFFSET + dev as usize * DEVICE_STATE_BYTES)
                as *const DeviceState)
        };
        Ok((spec, state))
    }

    fn device_states(&self) -> impl Iterator<Item = &DeviceState> {
        (0..self.devices.len() as u32).filter_map(|d| self.device_pair(d).ok().map(|(_, s)| s))
    }

    /// Every slot that has ever been claimed (up to the high-water mark).
    fn slots(&self) -> impl Iterator<Item = &SlotState> {
        (0..slot_limit(&self.map)).map(|i| self.slot_at(i))
    }

    fn slot_at(&self, i: usize) -> &SlotState {
        // SAFETY: i < MAX_SLOTS; the slot table lies inside the mapping.
        unsafe { &*(self.map.as_ptr().add(SLOTS_OFFSET + i * SLOT_BYTES) as *const SlotState) }
    }

    #[inline]
    fn ring_entry(&self, dev: usize, ticket: u64) -> &RingEntry {
        let at = ring_offset(dev) + (ticket % RING_CAPACITY) as usize * RING_ENTRY_BYTES;
        // SAFETY: dev < device_count and the index is below RING_CAPACITY, so the entry is mapped.
        unsafe { &*(self.map.as_ptr().add(at) as *const RingEntry) }
    }

    /// This process's slot, registered on first use and again after a fork.
    #[inline]
    fn slot(&self) -> Result<&SlotState, SimError> {
        let generation = sys::FORK_GENERATION.load(Ordering::Relaxed) as u64;
        let cached = self.slot_cache.load(Ordering::Acquire);
        if cached >> 32 == generation && cached as u32 as u64 != REGISTERING && cached as u32 != 0 {
            return Ok(self.slot_at(cached as u32 as usize - 1));
        }
        self.register(generation, FileLock::Take)
    }

    #[cold]
    fn register(&self, generation: u64, lock: FileLock) -> Result<&SlotState, SimError> {
        loop {
            let cached = self.slot_cache.load(Ordering::Acquire);
            if cached >> 32 == generation {
                match cached as u32 as u64 {
                    REGISTERING => {
                        std::thread::yield_now(); // another thread of ours is registering
                        continue;
                    }
                    0 => {}
                    index => return Ok(self.slot_at(index as usize - 1)),
                }
            }
            let claim = generation << 32 | REGISTERING;
            if self
                .slot_cache
                .compare_exchange(cached, claim, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let result = {
                // The other copy of the machine in this process (libcuda and libnvidia-ml each link
                // one) registers under the same lock, so the two cannot both miss each other's slot
                // and claim two. Without the lock (the file was replaced) they still stay correct,
                // only possibly with two slots.
                let _locked = match lock {
                    FileLock::Held => None,
                    FileLock::Take => self
                        .file_identity
                        .and_then(|id| sys::LockedFile::reopen_locked(&self.path, id)),
                };
                match self.find_or_claim_slot() {
                    // Dead processes may still hold slots. Finding them costs a `/proc` read per
                    // live slot (a thousand processes registering at once would spend seconds on it),
                    // so registration looks only when the table is full; memory of the dead comes back
                    // anyway when anyone lists memory or processes, or an allocation would fail.
                    Err(SimError::ProcessTableFull) => {
                        self.reclaim_dead();
                        self.find_or_claim_slot()
                    }
                    other => other,
                }
            };
            let word = match &result {
                Ok(index) => generation << 32 | (*index as u64 + 1),
                Err(_) => generation << 32, // not registered: the next call tries again
            };
            self.slot_cache.store(word, Ordering::Release);
            return result.map(|index| self.slot_at(index));
        }
    }

    /// The slot of this process: the one its other copy of the machine already holds (same pid
    /// and start time), or a free one. Both copies then charge the same counters, which are
    /// atomics, and the slot is reclaimed only once the process is dead.
    fn find_or_claim_slot(&self) -> Result<usize, SimError> {
        let pid = sys::getpid();
        let start_time = sys::process_start_time(pid).unwrap_or(0);
        let live = owner_word(SLOT_LIVE, pid);
        for (i, slot) in self.slots().enumerate() {
            if slot.owner.load(Ordering::Acquire) == live
                && slot.start_time.load(Ordering::Relaxed) == start_time
            {
                return Ok(i);
            }
        }
        for i in 0..MAX_SLOTS {
            let slot = self.slot_at(i);
            if slot.owner.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let claiming = owner_word(SLOT_CLAIMING, pid);
            if slot
                .owner
                .compare_exchange(0, claiming, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Scans stop at the high-water mark: raise it before anyone can depend on the slot.
            header_of(&self.map)
                .slot_high_water
                .fetch_max(i as u32 + 1, Ordering::AcqRel);
            clear_slot(slot);
            slot.start_time.store(start_time, Ordering::Relaxed);
            slot.owner.store(live, Ordering::Release);
            return Ok(i);
        }
        Err(SimError::ProcessTableFull)
    }
}

fn try_charge(used: &AtomicU64, bytes: u64, capacity: u64) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        u.checked_add(bytes).filter(|n| *n <= capacity)
    })
    .is_ok()
}

fn overlap(iv: BusyInterval, from_ns: u64, to_ns: u64) -> u64 {
    iv.end_ns
        .min(to_ns)
        .saturating_sub(iv.start_ns.max(from_ns))
}

fn clear_slot(slot: &SlotState) {
    slot.start_time.store(0, Ordering::Relaxed);
    for d in 0..MAX_DEVICES {
        slot.used_bytes[d].store(0, Ordering::Relaxed);
        slot.busy_ns[d].store(0, Ordering::Relaxed);
        slot.contexts[d].store(0, Ordering::Relaxed);
    }
}

fn header_of(map: &sys::Mapping) -> &Header {
    // SAFETY: every mapping is at least RINGS_OFFSET bytes (checked before mapping) and page aligned.
    unsafe { &*(map.as_ptr() as *const Header) }
}

fn check_header(path: &Path, head: &[u8], size: u64) -> Result<(), SimError> {
    let corrupt = |why: String| {
        SimError::StateFile(format!(
            "{} is not a simulated GPU state file of layout {LAYOUT_VERSION} ({why}); remove it or choose another \
             SIMGPU_STATE",
            path.display()
        ))
    };
    if head[..8] != MAGIC {
        return Err(corrupt(format!("foreign magic {:02x?}", &head[..8])));
    }
    if head.len() < std::mem::size_of::<Header>() {
        return Err(corrupt("too short".into()));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(8);
    if version != LAYOUT_VERSION {
        return Err(corrupt(format!("layout version {version}")));
    }
    let (device_count, slot_count, spec_len) = (
        u32_at(12) as usize,
        u32_at(16) as usize,
        u32_at(20) as usize,
    );
    let (ring_capacity, file_bytes_field) = (u64_at(24), u64_at(32));
    if device_count == 0
        || device_count > MAX_DEVICES
        || slot_count != MAX_SLOTS
        || spec_len > SPEC_MAX
        || ring_capacity != RING_CAPACITY
        || file_bytes_field != file_bytes(device_count)
        || size != file_bytes_field
    {
        return Err(corrupt(format!(
            "inconsistent header: {device_count} devices, {slot_count} slots, ring {ring_capacity}, {file_bytes_field} \
             bytes declared, {size} on disk"
        )));
    }
    Ok(())
}

/// 1 + the highest slot index ever claimed in `map`, at most `MAX_SLOTS`.
fn slot_limit(map: &sys::Mapping) -> usize {
    (header_of(map).slot_high_water.load(Ordering::Acquire) as usize).min(MAX_SLOTS)
}

fn live_owner_pids(map: &sys::Mapping) -> Vec<u32> {
    let mut pids = Vec::new();
    for i in 0..slot_limit(map) {
        // SAFETY: the slot table lies inside any validated mapping.
        let slot =
            unsafe { &*(map.as_ptr().add(SLOTS_OFFSET + i * SLOT_BYTES) as *const SlotState) };
        let owner = slot.owner.load(Ordering::Acquire);
        let alive = match owner_kind(owner) {
            SLOT_FREE => false,
            SLOT_LIVE => {
                sys::process_alive(owner_pid(owner), slot.start_time.load(Ordering::Acquire))
            }
            _ => sys::process_alive(owner_pid(owner), 0),
        };
        if alive {
            pids.push(owner_pid(owner));
        }
    }
    pids
}

/// Fill a zeroed mapping: spec, then the header, magic last.
fn initialise(map: &sys::Mapping, config: &Config, spec: &str) {
    let base = map.as_ptr();
    // SAFETY: the mapping is RINGS_OFFSET+ bytes, we hold the file lock and nobody else has it mapped
    // as a valid machine yet (no magic), so plain writes cannot race with readers.
    unsafe {
        std::ptr::copy_nonoverlapping(spec.as_ptr(), base.add(SPEC_OFFSET), spec.len());
        let header = base as *mut Header;
        (*header).version = LAYOUT_VERSION;
        (*header).device_count = config.devices.len() as u32;
        (*header).slot_count = MAX_SLOTS as u32;
        (*header).spec_len = spec.len() as u32;
        (*header).ring_capacity = RING_CAPACITY;
        (*header).file_bytes = file_bytes(config.devices.len());
        (*header).spec_hash = crate::config::fnv1a(spec.as_bytes());
        (*header).init_generation.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        (*header).magic = MAGIC;
    }
}
