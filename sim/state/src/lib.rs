//! Simulated GPU machine state shared by every process of one simulated machine.
//!
//! This crate is the simulated driver's "hardware": `libcuda.so.1` (`sim/cuda`) and
//! `libnvidia-ml.so.1` (`sim/nvml`) are thin front ends over it. See `sim/README.md` for the
//! environment contract.
//!
//! # API (stable names; the simulated libraries code against these)
//!
//! ```text
//! Machine::get() -> Result<&'static Machine, SimError>
//!     process-wide, opened on first use from SIMGPU_STATE (default /tmp/simgpu-<uid>.state),
//!     SIMGPU_DEVICES, SIMGPU_DRIVER_VERSION and the fault variables. A bad config or state file
//!     prints one stderr line naming the variable/file and returns Err (never panics or exits).
//! Machine::open(path, Config) -> Result<Machine, SimError>     (tests, tools: a machine of your own)
//! Machine::attach(path) -> Result<Machine, SimError>   the machine already in `path`, with its own devices
//! Machine::devices() -> &[DeviceSpec]      DeviceSpec { index, name, uuid, mem_bytes, sms, cc_major,
//!                                          cc_minor, pci_bus_id, clock_mhz, pci_device_id, pci_subsystem_id }
//! Machine::device(dev) -> Option<&DeviceSpec>
//! Machine::driver_version() -> i32
//! Machine::alloc(dev, bytes) -> Result<(), SimError>   OutOfMemory | DeviceLost | InvalidDevice | ProcessTableFull
//!     charges the device machine-wide (CAS against capacity) and this process's slot; lock-free.
//!     Does NOT count SIMGPU_FAIL_ALLOC_AT: call faults().should_fail_alloc() once per allocation.
//! Machine::free(dev, bytes)                 gives back at most what this process holds on dev
//!     (all copies of the machine in one process share its slot, so that is the process's total)
//! Machine::mem_info(dev) -> (free, total)   machine-wide, after reclaiming dead processes
//! Machine::process_used(dev) -> u64         this process's bytes on dev
//! Machine::context_created(dev) / context_destroyed(dev)   NVML lists processes with a context
//! Machine::processes(dev) -> Vec<ProcessUsage { pid, used_bytes }>
//! Machine::reclaim_dead() -> usize
//! Machine::launch(dev, duration_ns, not_before_ns) -> (start_ns, end_ns)
//!     reserves the next slot of the device's timeline shared by all processes:
//!     start = max(now, device busy-until, not_before_ns); records (start, end, pid) in the ring.
//! Machine::busy_until(dev) -> u64
//! Machine::now_ns() -> u64                  CLOCK_MONOTONIC ns, one clock for all processes
//! Machine::wait_until(ns)                   sleep, then spin, until the monotonic clock reaches ns
//! Machine::busy_ns(dev, pid: Option<u32>, from_ns, to_ns) -> u64     from the ring
//! Machine::busy_by_pid(dev, from_ns, to_ns) -> Vec<(pid, ns)>
//! Machine::total_busy_ns(dev, pid: Option<u32>) -> u64                cumulative counters
//! Machine::launches(dev) -> u64
//! Machine::faults() -> &Faults    should_fail_alloc(), device_lost(dev), slow(symbol), slow_micros(symbol)
//! Machine::device_lost(dev) -> bool       SIMGPU_DEVICE_LOST names it, or the machine-wide live flag is set;
//!     every place that honours a lost device asks this (one relaxed load beyond the environment check)
//! Machine::set_device_lost(dev, bool) -> Result<(), SimError>   the live flag, seen at once by every process
//! realtime_ns() -> u64            CLOCK_REALTIME ns (NVML timestamps are µs since the epoch)
//! ```
//!
//! # How it is shared
//!
//! The state file (layout in [`layout`]) is created and sized by the first process under an
//! exclusive `flock`, with a magic and layout version; a foreign, corrupt or other-version file is
//! refused with a clear error. Device memory, device timelines and the busy rings live in it and
//! change only through atomics. Each process claims one slot in the process table (pid plus
//! `/proc/<pid>/stat` start time, so a reused pid is told apart); a second copy of the machine in
//! the same process (libcuda and libnvidia-ml each link one) shares that slot. Slots of processes
//! that have exited or were killed are reclaimed, and their memory given back, when an allocation
//! would fail, when memory or processes are listed, and when a registering process finds the
//! table full.

pub mod config;
pub mod faults;
pub mod layout;
mod machine;
mod sys;

pub use config::{Config, DeviceSpec, MAX_DEVICES};
pub use faults::Faults;
pub use machine::{BusyInterval, Machine, ProcessUsage};

/// What can go wrong. `Clone` so every caller of [`Machine::get`] gets the same error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// A malformed environment variable; the message names it.
    InvalidConfig(String),
    /// The state file cannot be opened, or is foreign, corrupt, or in use with other devices.
    StateFile(String),
    OutOfMemory,
    /// The device is lost (`SIMGPU_DEVICE_LOST`, or marked with `Machine::set_device_lost`).
    DeviceLost,
    /// No such device index.
    InvalidDevice,
    /// Every process slot is held by a live process.
    ProcessTableFull,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::InvalidConfig(m) | SimError::StateFile(m) => f.write_str(m),
            SimError::OutOfMemory => f.write_str("out of device memory"),
            SimError::DeviceLost => f.write_str("device lost"),
            SimError::InvalidDevice => f.write_str("no such device"),
            SimError::ProcessTableFull => {
                write!(
                    f,
                    "process table full ({} live processes)",
                    layout::MAX_SLOTS
                )
            }
        }
    }
}

impl std::error::Error for SimError {}

/// CLOCK_REALTIME in ns since the epoch.
pub fn realtime_ns() -> u64 {
    sys::realtime_ns()
}

/// CLOCK_MONOTONIC in ns (the timeline's clock), without a machine.
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

/// Whether `pid` runs (a zombie does not count).
pub fn process_alive(pid: u32) -> bool {
    sys::process_alive(pid, 0)
}
