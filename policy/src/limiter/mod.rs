//! Compute isolation: how much of each GPU a container may keep busy (`CUDA_DEVICE_SM_LIMIT`).
//!
//! The design and its reasoning are in `docs/compute-isolation.md`. In short:
//!
//! - **Budget.** One token bucket per device per container, in the region ([`SharedBucket`], an
//!   extension after HAMi's v1 layout), shared by every process of the container. Tokens are
//!   nanoseconds of device time; they refill at `limit %` of wall time up to a burst cap. The bucket
//!   is one `AtomicU64` in GCRA form (the instant the debt is paid off), so refill is lazy and a
//!   launch is one CAS.
//! - **Charge at submission.** A launch is charged its *estimated* device time before it is
//!   submitted, so work queued but not yet run is already paid for (unsynced loops cannot queue
//!   more than the budget). Debt is allowed: a launch goes when the balance is not negative, so a
//!   20 ms kernel under a 10 % limit works without a 20 ms burst.
//! - **Measure the container's own work.** Estimates come from CUDA event pairs around sampled
//!   launches (one kernel per pair, never a span of many), polled without blocking by later
//!   launches. A per-launch-key estimator rejects samples inflated by other tenants (time slicing
//!   only ever adds time). A probe's result corrects the bucket by `estimate - charged`. No host PID
//!   and no NVML per-process sample is needed.
//! - **Policy.** `GPU_CORE_UTILIZATION_POLICY` and the region's `utilization_switch`/`recent_kernel`
//!   (hami-contract.md 3.6) decide whether a launch is limited or held.
//!
//! Everything here is safe Rust with no globals, FFI or syscalls: the clock and the measurements are
//! passed in, and the shared state is reached through references, so tests run it on local structs
//! and a discrete-time simulator (`sim`, tests only).
//!
//! How a launch hook uses it: see [`LaunchGate`].

mod backoff;
mod bucket;
mod cost;
mod gate;
mod launcher;
mod priority;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use backoff::{backoff, Pause};
pub use bucket::{Acquire, Bucket, BucketParams, SharedBucket, SharedLimiter};
pub use gate::{
    Decision, LaunchGate, LaunchOutcome, ProbeDisposal, ProbeDriver, ProbeId, ProbeResult,
    SharedView, Ticket, WaitReason, Work, WorkKind,
};
pub use launcher::{Launcher, CREDIT_CHUNK_NS};
pub use priority::{enforcing, priority_blocked};

/// Devices a container can have (HAMi's region arrays are 16 long, hami-contract.md 3.1).
pub const MAX_DEVICES: usize = 16;

/// `GPU_CORE_UTILIZATION_POLICY` (hami-contract.md 2.1, 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CorePolicy {
    /// The limit holds while the region's `utilization_switch` is 1 (contention seen by the
    /// monitor, or no monitor at all: it starts at 1). Priority blocking is honoured.
    #[default]
    Default,
    /// The limit always holds. Priority blocking is honoured.
    Force,
    /// No limit and no priority blocking.
    Disable,
}

/// The clock, injected: the hooks pass the system clocks, tests a manual one.
pub trait Clock {
    /// `CLOCK_MONOTONIC` in nanoseconds. Every process of a container must read the same clock,
    /// because the shared buckets compare instants written by different processes.
    fn monotonic_ns(&self) -> u64;
    /// The same clock at coarse resolution (`CLOCK_MONOTONIC_COARSE`, a few ns to read), for
    /// decisions that need only milliseconds: when to stamp `last_kernel_time`. An unlimited
    /// launch reads only this clock.
    fn coarse_monotonic_ns(&self) -> u64 {
        self.monotonic_ns()
    }
    /// Seconds since the Unix epoch (`CLOCK_REALTIME`), for the region's `last_kernel_time`. Read
    /// at most once per `kernel_time_interval_ns`.
    fn epoch_s(&self) -> u64;
}

/// The limit of one device, as the hooks resolved it at init (config + device identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceLimit {
    /// `CUDA_DEVICE_SM_LIMIT[_<i>]` in percent. 0 or >= 100 means no limit.
    pub sm_limit_percent: u32,
    /// Streaming multiprocessors of the device (`CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`); only
    /// used to guess the cost of a new grid size of an already measured kernel. 0 = unknown.
    pub sm_count: u32,
}

impl DeviceLimit {
    /// The limit that is really enforced: `Some(1..=99)`, or `None` for no limit.
    pub fn effective_percent(&self) -> Option<u32> {
        (1..100)
            .contains(&self.sm_limit_percent)
            .then_some(self.sm_limit_percent)
    }
}

/// Everything the gate needs from the configuration, resolved once at init.
#[derive(Clone, Copy, Debug)]
pub struct GateConfig {
    /// Indexed like the region's per-device arrays (the container NVML index, hami-contract.md 2.4).
    pub devices: [DeviceLimit; MAX_DEVICES],
    pub policy: CorePolicy,
    /// Minimum gap between writes of the region's `last_kernel_time` (`RECORD_KERNEL_INTERVAL`,
    /// seconds in the environment, default 1).
    pub kernel_time_interval_ns: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            devices: [DeviceLimit::default(); MAX_DEVICES],
            policy: CorePolicy::Default,
            kernel_time_interval_ns: 1_000_000_000,
        }
    }
}

/// Tuning constants, in one place so the design note and the simulator tables refer to the same
/// numbers. Each says where it comes from.
pub mod tuning {
    /// Credit a bucket can save while idle, as wall time (at 30 % that is 15 ms of device time).
    /// Large enough to absorb a launcher's sleep overshoot and a short CPU pause without losing
    /// share; small enough that a burst after idle moves a 10 s mean by < 0.5 point. Chosen with
    /// the simulator (`limiter::tests::accuracy_table`).
    pub const BURST_WALL_NS: u64 = 50_000_000;
    /// A bucket whose debt is further in the future than this is not believed (the region outlived
    /// a reboot, or was corrupted) and is reset. Legitimate debt is one launch's cost / rate: a
    /// 10 s kernel at 1 % is 1000 s.
    pub const MAX_DEBT_WALL_NS: u64 = 3_600_000_000_000;
    /// A bucket whose recorded clock epoch differs from ours by more than this was written in
    /// another boot (CLOCK_MONOTONIC restarted) and is reset at attach.
    pub const CLOCK_EPOCH_TOLERANCE_S: u64 = 60;
    /// How often one launch key is re-measured once known. Bounds how long a changed kernel cost
    /// is charged wrongly; each sample costs the hook about two event records and a query.
    pub const SAMPLE_INTERVAL_NS: u64 = 5_000_000;
    /// Probes (event pairs) one process may have in flight, over all devices.
    pub const MAX_PROBES: usize = 16;
    /// How long the learning lease (one never-measured kernel in flight per container and device)
    /// lasts without renewal; its holder renews it each time it finds the probe not ready. A dead
    /// holder blocks the container's new kernels for at most this long.
    pub const LEARNING_LEASE_NS: u64 = 50_000_000;
    /// Charge of a launch when nothing is known about it or anything like it on the device.
    pub const DEFAULT_PRIOR_NS: u64 = 100_000;
    /// How soon a launch held by priority (`recent_kernel < 0`) looks again. The contract asks for
    /// a resume within 100 ms of the monitor clearing it.
    pub const PRIORITY_RETRY_NS: u64 = 10_000_000;
    /// How soon a launch held for learning (too many uncertain launches in flight) looks again.
    pub const LEARNING_RETRY_NS: u64 = 50_000;
    /// Probe polling: never sooner than this after the previous query of the same probe ...
    pub const MIN_POLL_GAP_NS: u64 = 10_000;
    /// ... and never later than this.
    pub const MAX_POLL_GAP_NS: u64 = 2_000_000;
    /// Cost table: entries per process (64 B each) and how far a key may sit from its home slot.
    pub const COST_TABLE_ENTRIES: usize = 1024;
    pub const COST_TABLE_PROBE: usize = 8;
    /// Estimator: samples per half of the windowed minimum (the floor covers the last 8..16).
    pub const FLOOR_WINDOW_HALF: u64 = 8;
    /// Estimator bands above the floor: narrow = floor * (1 + 1/16), wide = floor * (1 + 1/4).
    /// Samples above the wide band are taken as inflated by work queued ahead and ignored. The
    /// narrow mean is charged while samples cluster at the floor (queueing spreads them: a wide
    /// band would let that into the mean; the two-container table lost 4 points with it); the
    /// wide mean when the kernel's own run time varies (a narrow mean would under-charge by half
    /// the variation: +5 points at 75 % with +-10 % jitter). `cost.rs` has the rule.
    pub const NARROW_BAND_SHIFT: u32 = 4;
    pub const WIDE_BAND_SHIFT: u32 = 2;
    /// Weight of one sample in the narrow-share moving average: 1/8.
    pub const RATIO_SHIFT: u32 = 3;
    /// Weight of a clean sample in the mean: 1/8.
    pub const MEAN_SHIFT: u32 = 3;
    /// Back-off: spin below this wait, yield below `YIELD_MAX_NS`, sleep above.
    pub const SPIN_MAX_NS: u64 = 2_000;
    pub const YIELD_MAX_NS: u64 = 100_000;
    /// A sleep is shortened by this much, because the kernel wakes us late (timer slack, 50 us by
    /// default on Linux, plus scheduling); the last stretch is yielded.
    pub const SLEEP_EARLY_NS: u64 = 60_000;
    /// No single sleep is longer than this, so credits, corrections and a cleared `recent_kernel`
    /// are seen soon. Far from HAMi-core's `sleep(1)`.
    pub const MAX_SLEEP_NS: u64 = 20_000_000;
}
