//! `LaunchGate`: the one object the launch hooks talk to.
//!
//! Protocol for one launch (what [`LaunchGate::admit`] does for the hook):
//!
//! 1. [`poll_probes`](LaunchGate::poll_probes): finish due measurements (`cuEventQuery` through the
//!    hook's [`ProbeDriver`]); one relaxed load when none is due.
//! 2. [`before_launch`](LaunchGate::before_launch) → [`Decision::Go`] with a [`Ticket`], or
//!    [`Decision::Wait`]: pause ([`backoff`]) in the launching thread and go back to 1.
//! 3. If the ticket carries a probe, the hook creates two timing events in the current context and
//!    records the first on the launch stream.
//! 4. The real launch. If it carries a probe, record the second event right after it.
//! 5. [`launched`](LaunchGate::launched) with what happened (refunds a refused launch).
//!
//! Nothing here blocks, sleeps or takes a lock: waiting is the launching thread's own loop, so a
//! thread that does not launch never waits on one that does.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::backoff::{backoff, Pause};
use super::bucket::{Acquire, Bucket, BucketParams, SharedBucket, SharedLimiter};
use super::cost::{mix_key, CostEntry, CostTable};
use super::launcher::{Launcher, CREDIT_CHUNK_NS};
use super::priority::{enforcing, mark_active, priority_blocked, RECENT_KERNEL_ACTIVE};
use super::tuning::{
    BURST_WALL_NS, DEFAULT_PRIOR_NS, LEARNING_LEASE_NS, LEARNING_RETRY_NS, MAX_POLL_GAP_NS,
    MAX_PROBES, MIN_POLL_GAP_NS, PRIORITY_RETRY_NS,
};
use super::{Clock, CorePolicy, GateConfig, MAX_DEVICES};

/// The shared words a launch reads or writes, as references into the region (or into a test's
/// local structs).
#[derive(Clone, Copy, Debug)]
pub struct SharedView<'a> {
    /// Region tail `recent_kernel` (offset 2,008,904; hami-contract.md 3.3).
    pub recent_kernel: &'a AtomicI32,
    /// Region tail `utilization_switch` (offset 2,008,900).
    pub utilization_switch: &'a AtomicI32,
    /// Region tail `last_kernel_time` (offset 2,008,912), epoch seconds.
    pub last_kernel_time_s: &'a AtomicU64,
    /// The limiter's part of the vgpu extension.
    pub limiter: &'a SharedLimiter,
}

/// What is being launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    /// `cuLaunchKernel[Ex]`, `cuLaunchCooperativeKernel[MultiDevice]` (per device), `_ptsz` forms.
    Kernel,
    /// `cuGraphLaunch[_ptsz]`: one replay of an executable graph, priced as a whole.
    Graph,
}

/// The launch key and what the hook knows about the launch's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    pub kind: WorkKind,
    /// The `CUfunction` or `CUgraphExec` handle as an integer (process-local identity).
    pub handle: u64,
    /// Blocks in the grid (`gx * gy * gz`); 0 for graphs.
    pub blocks: u64,
    /// Threads per block (`bx * by * bz`); 0 for graphs.
    pub threads_per_block: u32,
    /// Resident blocks per SM (`cuOccupancyMaxActiveBlocksPerMultiprocessor`), 0 if unknown
    /// (taken as 1). Only refines the guess for a new grid size.
    pub blocks_per_sm: u32,
    /// A guess of the device time, 0 if none (e.g. a graph's summed node estimates).
    pub prior_ns: u64,
}

impl Work {
    pub fn kernel(handle: u64, blocks: u64, threads_per_block: u32) -> Work {
        Work {
            kind: WorkKind::Kernel,
            handle,
            blocks,
            threads_per_block,
            blocks_per_sm: 0,
            prior_ns: 0,
        }
    }

    pub fn graph(handle: u64) -> Work {
        Work {
            kind: WorkKind::Graph,
            handle,
            blocks: 0,
            threads_per_block: 0,
            blocks_per_sm: 0,
            prior_ns: 0,
        }
    }

    #[inline]
    fn launch_key(&self, device: usize) -> u64 {
        let kind = match self.kind {
            WorkKind::Kernel => 1,
            WorkKind::Graph => 2,
        };
        mix_key([
            (device as u64) << 8 | kind,
            self.handle,
            self.blocks,
            u64::from(self.threads_per_block),
        ])
    }

    /// Key of the kernel's cost per wave (all grid sizes), or `None` for graphs.
    fn wave_key(&self, device: usize) -> Option<u64> {
        (self.kind == WorkKind::Kernel).then(|| {
            mix_key([
                (device as u64) << 8 | 3,
                self.handle,
                u64::MAX,
                u64::from(self.threads_per_block),
            ])
        })
    }

    /// Waves of blocks the grid takes on a device with `sm_count` SMs (>= 1); 1 if unknown.
    fn waves(&self, sm_count: u32) -> u64 {
        let per_wave = u64::from(sm_count.max(1)) * u64::from(self.blocks_per_sm.max(1));
        self.blocks.div_ceil(per_wave).max(1)
    }
}

/// Why a launch must wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// The container's budget on this device is in debt.
    Budget,
    /// The monitor holds the container for a higher-priority one (`recent_kernel < 0`).
    Priority,
    /// A kernel never measured before, while another never-measured kernel of the container is
    /// being measured on this device (or no probe slot is free): wait for that measurement (keep
    /// polling probes).
    Learning,
}

/// The gate's answer for one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Submit now.
    Go(Ticket),
    /// Do not submit yet: pause (see [`backoff`]), poll probes and ask again. `retry_in_ns` is how
    /// long the wait is expected to last.
    Wait {
        retry_in_ns: u64,
        reason: WaitReason,
    },
}

/// Index of a probe (a measured launch). The hook keeps its two events in an array of
/// [`MAX_PROBES`](super::tuning::MAX_PROBES) pairs indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeId(u8);

impl ProbeId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A launch that was let through. Hand it back with [`LaunchGate::launched`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    device: u8,
    charged_ns: u64,
    probe: Option<ProbeId>,
}

impl Ticket {
    fn free(device: usize) -> Ticket {
        Ticket {
            device: u8::try_from(device).unwrap_or(u8::MAX),
            charged_ns: 0,
            probe: None,
        }
    }

    /// `Some`: record a timing event before and after the launch on its stream.
    pub fn probe(&self) -> Option<ProbeId> {
        self.probe
    }

    /// Device ns charged to the bucket (0 when the launch is not limited).
    pub fn charged_ns(&self) -> u64 {
        self.charged_ns
    }
}

/// What became of a launch the gate let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchOutcome {
    /// The driver accepted it. `probe_recorded`: both events of the ticket's probe were recorded
    /// around it (false if the ticket had no probe or an event call failed).
    Submitted { probe_recorded: bool },
    /// The driver returned an error: nothing was queued, the charge is refunded.
    Refused,
}

/// What the hook found when it queried a probe's second event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// `cuEventQuery` returned success; `cuEventElapsedTime(start, end)` in ns.
    Elapsed { device_ns: u64 },
    /// `CUDA_ERROR_NOT_READY`.
    NotReady,
    /// Any other error: the sample is lost.
    Failed,
}

/// Whether the hook may destroy the probe's events now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeDisposal {
    Keep,
    Release,
}

/// The hook's side of waiting: the driver calls and syscalls the gate must not make itself.
pub trait ProbeDriver {
    /// `cuEventQuery` on the probe's end event and, when ready, `cuEventElapsedTime`.
    fn query(&mut self, probe: ProbeId) -> ProbeResult;
    /// The probe is finished: destroy its events.
    fn release(&mut self, probe: ProbeId);
    /// Carry out one pause in the launching thread (spin, `sched_yield`, `nanosleep`).
    fn pause(&mut self, pause: Pause);
}

/// How many due probes one call polls at most: bounds what a launch can spend on others' samples.
const MAX_POLLS_PER_CALL: usize = 2;

const SLOT_FREE: u32 = 0;
const SLOT_CLAIMED: u32 = 1;
const SLOT_IN_FLIGHT: u32 = 2;
const SLOT_POLLING: u32 = 3;

/// One measurement in progress. Process-local.
#[derive(Debug, Default)]
struct ProbeSlot {
    state: AtomicU32,
    device: AtomicU32,
    /// The container's learning lease this probe holds (an unknown kernel), 0 if none.
    lease: AtomicU64,
    launch_key: AtomicU64,
    /// 0 = none (graphs).
    wave_key: AtomicU64,
    waves: AtomicU64,
    charged_ns: AtomicU64,
    submitted_ns: AtomicU64,
    next_poll_ns: AtomicU64,
}

#[derive(Debug)]
struct DeviceState {
    params: Option<BucketParams>,
    /// 0 until known: the hooks learn it after the application's `cuInit` ([`LaunchGate::set_sm_count`]).
    sm_count: AtomicU32,
    /// The last estimate learned on this device: the charge of a kernel nothing is known about.
    typical_cost_ns: AtomicU64,
}

impl DeviceState {
    fn sm_count(&self) -> u32 {
        self.sm_count.load(Ordering::Relaxed)
    }
}

/// How sure an estimate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Confidence {
    /// Measured for exactly this launch key.
    Known,
    /// Priced from the same kernel at another grid size, or from the hook's prior.
    Derived,
    /// Nothing like it measured on this device.
    Unknown,
}

/// The process's compute limiter. Build one at init (it allocates its tables there), share it by
/// reference between threads; every method takes `&self`.
///
/// `repr(C)` for the order: every launch reads the first fields (and the first devices' limits),
/// so they share the first cache lines; the probe slots, read only while measuring, come last.
#[derive(Debug)]
#[repr(C)]
pub struct LaunchGate {
    /// Earliest `next_poll_ns` over in-flight probes; `u64::MAX` when none. The launch path
    /// compares the clock with it and does nothing else when no probe is due.
    earliest_poll_ns: AtomicU64,
    next_kernel_time_stamp_ns: AtomicU64,
    kernel_time_interval_ns: u64,
    policy: CorePolicy,
    devices: [DeviceState; MAX_DEVICES],
    costs: CostTable,
    probes: [ProbeSlot; MAX_PROBES],
}

/// The fast path: a launch shape this thread paid for recently, whose cost is not due for a new
/// measurement, paid from the thread's credit. `None` when any of that is missing.
#[inline(always)]
fn paid_from_memory(
    launcher: &Launcher,
    work: &Work,
    device: usize,
    now_ns: u64,
) -> Option<Ticket> {
    let cost_ns = launcher.remembered_cost(work, device, now_ns)?;
    launcher.spend(device, cost_ns).then_some(Ticket {
        device: device as u8,
        charged_ns: cost_ns,
        probe: None,
    })
}

impl LaunchGate {
    pub fn new(config: &GateConfig) -> LaunchGate {
        LaunchGate {
            policy: config.policy,
            kernel_time_interval_ns: config.kernel_time_interval_ns,
            devices: std::array::from_fn(|d| {
                let limit = config.devices[d];
                DeviceState {
                    params: limit
                        .effective_percent()
                        .and_then(|percent| BucketParams::new(percent, BURST_WALL_NS)),
                    sm_count: AtomicU32::new(limit.sm_count),
                    typical_cost_ns: AtomicU64::new(0),
                }
            }),
            costs: CostTable::new(),
            probes: std::array::from_fn(|_| ProbeSlot::default()),
            earliest_poll_ns: AtomicU64::new(u64::MAX),
            next_kernel_time_stamp_ns: AtomicU64::new(0),
        }
    }

    /// Once per process after the region is mapped: resets buckets left from another boot and
    /// records each limit for readers. `clock_epoch_s` = `CLOCK_REALTIME - CLOCK_MONOTONIC` in
    /// seconds.
    pub fn attach(&self, view: &SharedView<'_>, clock_epoch_s: u64) {
        for (device, state) in self.devices.iter().enumerate() {
            if let Some(params) = state.params {
                Bucket::new(&view.limiter.buckets[device], params).attach(clock_epoch_s);
            }
        }
    }

    /// Records the SM count of `device` (region index). The hooks build the gate at init, which may
    /// come before the application's `cuInit` (an NVML call first), so they learn SM counts later,
    /// on the first launch. Until then a new grid size of a known kernel is priced as if the device
    /// had one SM per block wave, which only matters for that guess.
    pub fn set_sm_count(&self, device: usize, sm_count: u32) {
        if let Some(state) = self.devices.get(device) {
            state.sm_count.store(sm_count, Ordering::Relaxed);
        }
    }

    /// Whether any device has an SM limit (whatever the policy). When none has, the device of a
    /// launch does not matter to the gate, and the hooks need not look it up.
    pub fn limits_any_device(&self) -> bool {
        self.devices.iter().any(|state| state.params.is_some())
    }

    /// Whether a launch on `device` would be limited now (a limit on the device, and the policy and
    /// `utilization_switch` enforce it). The hooks ask before paying for a stream-capture query:
    /// only a limited launch needs to know that it is being captured.
    #[inline]
    pub fn enforcing_on(&self, view: &SharedView<'_>, device: usize) -> bool {
        self.devices
            .get(device)
            .is_some_and(|state| state.params.is_some())
            && enforcing(self.policy, view.utilization_switch.load(Ordering::Relaxed))
    }

    /// The bucket of `device`, if that device is limited.
    pub fn bucket<'v>(&self, view: &SharedView<'v>, device: usize) -> Option<Bucket<'v>> {
        let params = self.devices.get(device)?.params?;
        let shared: &'v SharedBucket = view.limiter.buckets.get(device)?;
        Some(Bucket::new(shared, params))
    }

    /// Admits one launch: polls due probes, asks [`before_launch`](Self::before_launch), and
    /// pauses in this (the launching) thread until the answer is `Go`. The hook's whole wait loop.
    /// `launcher` is the calling thread's own state (its credit and memo, see [`Launcher`]).
    ///
    /// The common cases are decided inline with the coarse clock (read by the thread at most once
    /// per few launches, [`Launcher::coarse_now`]), the region's `recent_kernel` line, the gate's
    /// first cache lines and the thread's `launcher`: a launch on a device without a limit, and a
    /// remembered kernel with credit left. No shared-bucket access, no cost-table lookup, no write
    /// outside the thread. Anything else (a probe due, a kernel time stamp due, `recent_kernel` not
    /// at its steady value, no memo or no credit) takes the full path, which decides everything
    /// again.
    #[inline(always)]
    pub fn admit<C: Clock, P: ProbeDriver>(
        &self,
        view: &SharedView<'_>,
        device: usize,
        work: &Work,
        clock: &C,
        driver: &mut P,
        launcher: &Launcher,
    ) -> Ticket {
        let now_ns = launcher.coarse_now(clock);
        if now_ns < self.earliest_poll_ns.load(Ordering::Relaxed)
            && now_ns < self.next_kernel_time_stamp_ns.load(Ordering::Relaxed)
            && view.recent_kernel.load(Ordering::Relaxed) == RECENT_KERNEL_ACTIVE
        {
            let Some(state) = self.devices.get(device) else {
                return Ticket::free(device);
            };
            if state.params.is_none()
                || !enforcing(self.policy, view.utilization_switch.load(Ordering::Relaxed))
            {
                return Ticket::free(device);
            }
            if let Some(ticket) = paid_from_memory(launcher, work, device, now_ns) {
                return ticket;
            }
        }
        self.admit_full(view, device, work, clock, driver, launcher)
    }

    /// [`admit`](Self::admit) beyond its inline cases: polls due probes, decides, and waits in
    /// this (the launching) thread until the answer is `Go`. Out of line, so that what waiting
    /// needs (the pauses and their thread-locals) costs the inline path nothing.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn admit_full<C: Clock, P: ProbeDriver>(
        &self,
        view: &SharedView<'_>,
        device: usize,
        work: &Work,
        clock: &C,
        driver: &mut P,
        launcher: &Launcher,
    ) -> Ticket {
        let mut attempt = 0u32;
        loop {
            // A fresh reading: the inline checks may have used the thread's cached one.
            let now_ns = launcher.read_clock(clock);
            self.poll_probes_at(view, now_ns, driver);
            match self.decide(view, device, work, now_ns, clock, Some(launcher)) {
                Decision::Go(ticket) => return ticket,
                Decision::Wait { retry_in_ns, .. } => {
                    driver.pause(backoff(retry_in_ns, attempt));
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Polls up to two due probes through `driver`. One relaxed load when no probe is in flight,
    /// plus a coarse clock read when one is but is not due.
    #[inline]
    pub fn poll_probes<C: Clock, P: ProbeDriver>(
        &self,
        view: &SharedView<'_>,
        clock: &C,
        driver: &mut P,
    ) {
        if self.earliest_poll_ns.load(Ordering::Relaxed) == u64::MAX {
            return;
        }
        self.poll_probes_at(view, clock.coarse_monotonic_ns(), driver);
    }

    /// [`poll_probes`](Self::poll_probes) with the clock already read: one relaxed load and a
    /// compare when no probe is due.
    #[inline]
    fn poll_probes_at<P: ProbeDriver>(&self, view: &SharedView<'_>, now_ns: u64, driver: &mut P) {
        if now_ns < self.earliest_poll_ns.load(Ordering::Relaxed) {
            return;
        }
        for _ in 0..MAX_POLLS_PER_CALL {
            let Some(probe) = self.claim_due_probe(now_ns) else {
                return;
            };
            let result = driver.query(probe);
            if self.probe_result(view, probe, result, now_ns) == ProbeDisposal::Release {
                driver.release(probe);
            }
        }
    }

    /// Decides one launch on `device` (region index) for a caller without thread state: every
    /// limited launch is charged to the shared bucket itself. Never waits.
    ///
    /// Unlimited path (no limit on the device, policy `disable`, or `default` with the switch
    /// off): one relaxed load of the tail line (`recent_kernel`; `utilization_switch` shares its
    /// cache line), no write unless `recent_kernel` changes, one coarse clock read. Limited path:
    /// the same, plus process-local cost table loads and one CAS on the device's bucket line (and
    /// one precise clock read when the coarse one says wait).
    #[inline]
    pub fn before_launch<C: Clock>(
        &self,
        view: &SharedView<'_>,
        device: usize,
        work: &Work,
        clock: &C,
    ) -> Decision {
        self.decide(view, device, work, clock.coarse_monotonic_ns(), clock, None)
    }

    /// [`before_launch`](Self::before_launch) for a thread with its [`Launcher`]: a remembered
    /// launch shape is paid from the thread's credit, and credit is bought in chunks. What
    /// [`admit`](Self::admit) decides with; for callers that run their own wait loop.
    #[inline]
    pub fn before_launch_for<C: Clock>(
        &self,
        view: &SharedView<'_>,
        device: usize,
        work: &Work,
        clock: &C,
        launcher: &Launcher,
    ) -> Decision {
        self.decide(
            view,
            device,
            work,
            clock.coarse_monotonic_ns(),
            clock,
            Some(launcher),
        )
    }

    #[inline]
    fn decide<C: Clock>(
        &self,
        view: &SharedView<'_>,
        device: usize,
        work: &Work,
        coarse_ns: u64,
        clock: &C,
        launcher: Option<&Launcher>,
    ) -> Decision {
        let recent_kernel = view.recent_kernel.load(Ordering::Relaxed);
        if priority_blocked(self.policy, recent_kernel) {
            return Decision::Wait {
                retry_in_ns: PRIORITY_RETRY_NS,
                reason: WaitReason::Priority,
            };
        }
        mark_active(view.recent_kernel, recent_kernel);
        self.stamp_kernel_time(view, coarse_ns, clock);

        let Some(state) = self.devices.get(device) else {
            return Decision::Go(Ticket::free(device));
        };
        let Some(params) = state.params else {
            return Decision::Go(Ticket::free(device));
        };
        if !enforcing(self.policy, view.utilization_switch.load(Ordering::Relaxed)) {
            return Decision::Go(Ticket::free(device));
        }
        if let Some(ticket) = launcher.and_then(|l| paid_from_memory(l, work, device, coarse_ns)) {
            return Decision::Go(ticket);
        }
        let bucket = Bucket::new(&view.limiter.buckets[device], params);
        self.limited_launch(
            view, state, bucket, device, work, coarse_ns, clock, launcher,
        )
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn limited_launch<C: Clock>(
        &self,
        view: &SharedView<'_>,
        state: &DeviceState,
        bucket: Bucket<'_>,
        device: usize,
        work: &Work,
        now_ns: u64,
        clock: &C,
        launcher: Option<&Launcher>,
    ) -> Decision {
        // `now_ns` is the coarse clock, never ahead of the precise one: a grant at coarse time is
        // also a grant at precise time, so only a refusal is checked again with the precise clock.
        let launch_key = work.launch_key(device);
        let known = self
            .costs
            .find(launch_key)
            .and_then(|i| self.costs.entry(i))
            .filter(|entry| entry.estimate_ns() > 0);
        let (cost_ns, confidence, sample_entry): (u64, Confidence, Option<&CostEntry>) = match known
        {
            Some(entry) => (entry.estimate_ns(), Confidence::Known, Some(entry)),
            None => self.guess(state, device, work, launch_key),
        };

        // Whether to measure this launch: always for a guess (until a slot is free), otherwise at
        // most once per SAMPLE_INTERVAL_NS per key (one relaxed load when not due).
        let claimed_sample = sample_entry.is_some_and(|entry| entry.claim_sample(now_ns));
        let uncertain = confidence == Confidence::Unknown;
        let wants_probe = uncertain || claimed_sample;
        let probe = if wants_probe {
            self.claim_free_probe()
        } else {
            None
        };
        let mut lease = 0;
        if uncertain {
            // A guess we cannot measure would stay a guess: wait for a probe slot (probes finish
            // as their kernels do) and for the container's learning lease.
            let taken = match probe {
                Some(_) => bucket.try_take_learning_lease(now_ns, LEARNING_LEASE_NS),
                None => Err(now_ns.saturating_add(LEARNING_RETRY_NS)),
            };
            match taken {
                Ok(held) => lease = held,
                Err(until) => {
                    if let Some(probe) = probe {
                        self.probes[probe.index()]
                            .state
                            .store(SLOT_FREE, Ordering::SeqCst);
                    }
                    if let Some(entry) = sample_entry.filter(|_| claimed_sample) {
                        entry.unclaim_sample();
                    }
                    return Decision::Wait {
                        retry_in_ns: until
                            .saturating_sub(now_ns)
                            .clamp(LEARNING_RETRY_NS, MAX_POLL_GAP_NS),
                        reason: WaitReason::Learning,
                    };
                }
            }
        }
        let give_back = |probe: Option<ProbeId>| {
            if let Some(probe) = probe {
                self.probes[probe.index()]
                    .state
                    .store(SLOT_FREE, Ordering::SeqCst);
            }
            if let Some(entry) = sample_entry.filter(|_| claimed_sample) {
                entry.unclaim_sample();
            }
            if lease != 0 {
                bucket.release_learning_lease(lease);
            }
        };
        if claimed_sample && probe.is_none() {
            if let Some(entry) = sample_entry {
                entry.unclaim_sample();
            }
        }

        // Pay: from the thread's credit if it covers the cost, else buy (the cost, or a whole
        // chunk of credit for a thread with a launcher) from the container's bucket.
        let paid_from_credit = launcher.is_some_and(|l| l.spend(device, cost_ns));
        let mut bought_ns = cost_ns;
        let acquired = if paid_from_credit {
            Acquire::Granted
        } else {
            if let Some(launcher) = launcher {
                if let Some((other, credit)) = launcher.take_credit_elsewhere(device) {
                    if let Some(other_bucket) = self.bucket(view, other) {
                        other_bucket.adjust(-(credit.min(i64::MAX as u64) as i64), now_ns);
                    }
                }
                if launcher.repeats(work, device) {
                    bought_ns = cost_ns.max(CREDIT_CHUNK_NS);
                }
            }
            let mut acquired = bucket.acquire(bought_ns, now_ns);
            if let Acquire::Wait { .. } = acquired {
                let precise_ns = clock.monotonic_ns();
                if precise_ns > now_ns {
                    acquired = bucket.acquire(bought_ns, precise_ns);
                }
            }
            acquired
        };
        match acquired {
            Acquire::Wait { wall_ns } => {
                give_back(probe);
                Decision::Wait {
                    retry_in_ns: wall_ns,
                    reason: WaitReason::Budget,
                }
            }
            Acquire::Granted => {
                if let Some(launcher) = launcher {
                    if !paid_from_credit && bought_ns > cost_ns {
                        launcher.add_credit(device, bought_ns - cost_ns);
                    }
                    // Remember only measured costs, until the kernel is next due for a sample (a
                    // guess must keep going through the table, which learns and probes).
                    if let Some(entry) = sample_entry.filter(|_| confidence == Confidence::Known) {
                        launcher.remember(work, device, cost_ns, entry.sample_due_ns());
                    }
                }
                if let Some(probe) = probe {
                    let slot = &self.probes[probe.index()];
                    slot.device.store(device as u32, Ordering::Relaxed);
                    slot.lease.store(lease, Ordering::Relaxed);
                    slot.launch_key.store(launch_key, Ordering::Relaxed);
                    slot.wave_key
                        .store(work.wave_key(device).unwrap_or(0), Ordering::Relaxed);
                    slot.waves
                        .store(work.waves(state.sm_count()), Ordering::Relaxed);
                    slot.charged_ns.store(cost_ns, Ordering::Relaxed);
                }
                Decision::Go(Ticket {
                    device: device as u8,
                    charged_ns: cost_ns,
                    probe,
                })
            }
        }
    }

    /// Prices a launch whose exact key was never measured. Inserts the key, so later launches of
    /// it find the entry and only one of them claims the sample.
    #[cold]
    fn guess<'s>(
        &'s self,
        state: &DeviceState,
        device: usize,
        work: &Work,
        launch_key: u64,
    ) -> (u64, Confidence, Option<&'s CostEntry>) {
        let entry = self.costs.entry(self.costs.find_or_insert(launch_key));
        let per_wave = work
            .wave_key(device)
            .and_then(|key| self.costs.find(key))
            .and_then(|i| self.costs.entry(i))
            .map_or(0, CostEntry::estimate_ns);
        if per_wave > 0 {
            let cost = per_wave.saturating_mul(work.waves(state.sm_count()));
            return (cost, Confidence::Derived, entry);
        }
        if work.prior_ns > 0 {
            return (work.prior_ns, Confidence::Derived, entry);
        }
        let typical = state.typical_cost_ns.load(Ordering::Relaxed);
        let cost = if typical > 0 {
            typical
        } else {
            DEFAULT_PRIOR_NS
        };
        (cost, Confidence::Unknown, entry)
    }

    fn claim_free_probe(&self) -> Option<ProbeId> {
        self.probes.iter().enumerate().find_map(|(i, slot)| {
            slot.state
                .compare_exchange(SLOT_FREE, SLOT_CLAIMED, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
                .then_some(ProbeId(i as u8))
        })
    }

    /// After the real launch call. Refunds a refused launch; starts the clock on a probe. Reads
    /// no clock for a launch without a probe that the driver took (the common case, inline).
    #[inline(always)]
    pub fn launched<C: Clock>(
        &self,
        view: &SharedView<'_>,
        ticket: Ticket,
        outcome: LaunchOutcome,
        clock: &C,
    ) {
        if ticket.probe.is_none() && (outcome != LaunchOutcome::Refused || ticket.charged_ns == 0) {
            return;
        }
        self.launched_with_effect(view, ticket, outcome, clock);
    }

    #[inline(never)]
    fn launched_with_effect<C: Clock>(
        &self,
        view: &SharedView<'_>,
        ticket: Ticket,
        outcome: LaunchOutcome,
        clock: &C,
    ) {
        let now_ns = clock.coarse_monotonic_ns();
        let device = usize::from(ticket.device);
        if outcome == LaunchOutcome::Refused && ticket.charged_ns > 0 {
            if let Some(bucket) = self.bucket(view, device) {
                bucket.adjust(-(ticket.charged_ns.min(i64::MAX as u64) as i64), now_ns);
            }
        }
        let Some(probe) = ticket.probe else {
            return;
        };
        let slot = &self.probes[probe.index()];
        match outcome {
            LaunchOutcome::Submitted {
                probe_recorded: true,
            } => {
                let next_poll = now_ns
                    .saturating_add(ticket.charged_ns.clamp(MIN_POLL_GAP_NS, MAX_POLL_GAP_NS));
                slot.submitted_ns.store(now_ns, Ordering::Relaxed);
                slot.next_poll_ns.store(next_poll, Ordering::Relaxed);
                slot.state.store(SLOT_IN_FLIGHT, Ordering::SeqCst);
                self.earliest_poll_ns.fetch_min(next_poll, Ordering::SeqCst);
            }
            LaunchOutcome::Submitted {
                probe_recorded: false,
            } => {
                // No measurement will come. A guess stays the charge (if nothing better is
                // known), so that launches of this kernel are not held for learning for ever.
                self.assume_charge(slot);
                self.finish_probe(view, slot);
            }
            LaunchOutcome::Refused => self.finish_probe(view, slot),
        }
    }

    /// A probe due for a query, now owned by the caller until it passes the result to
    /// [`probe_result`](Self::probe_result). `None` (one relaxed load) when none is due.
    pub fn claim_due_probe(&self, now_ns: u64) -> Option<ProbeId> {
        if now_ns < self.earliest_poll_ns.load(Ordering::Relaxed) {
            return None;
        }
        for (i, slot) in self.probes.iter().enumerate() {
            if slot.state.load(Ordering::SeqCst) == SLOT_IN_FLIGHT
                && slot.next_poll_ns.load(Ordering::Relaxed) <= now_ns
                && slot
                    .state
                    .compare_exchange(
                        SLOT_IN_FLIGHT,
                        SLOT_POLLING,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return Some(ProbeId(i as u8));
            }
        }
        self.recompute_earliest_poll();
        None
    }

    /// Recomputes `earliest_poll_ns`. The second pass catches a probe that went in flight while the
    /// first pass ran and whose `fetch_min` our store overwrote (SeqCst orders the two).
    fn recompute_earliest_poll(&self) {
        let earliest = |gate: &LaunchGate| {
            gate.probes
                .iter()
                .filter(|slot| slot.state.load(Ordering::SeqCst) == SLOT_IN_FLIGHT)
                .map(|slot| slot.next_poll_ns.load(Ordering::Relaxed))
                .min()
                .unwrap_or(u64::MAX)
        };
        self.earliest_poll_ns
            .store(earliest(self), Ordering::SeqCst);
        self.earliest_poll_ns
            .fetch_min(earliest(self), Ordering::SeqCst);
    }

    /// What the query of a claimed probe found. On a measurement: learns the cost and corrects the
    /// bucket by `estimate - charged`.
    pub fn probe_result(
        &self,
        view: &SharedView<'_>,
        probe: ProbeId,
        result: ProbeResult,
        now_ns: u64,
    ) -> ProbeDisposal {
        let Some(slot) = self.probes.get(probe.index()) else {
            return ProbeDisposal::Release;
        };
        if slot.state.load(Ordering::SeqCst) != SLOT_POLLING {
            // Not claimed through `claim_due_probe`: a protocol error of the caller. Keep the
            // events; the slot's owner will finish it.
            return ProbeDisposal::Keep;
        }
        let device = slot.device.load(Ordering::Relaxed) as usize;
        match result {
            ProbeResult::NotReady => {
                let age = now_ns.saturating_sub(slot.submitted_ns.load(Ordering::Relaxed));
                let next_poll =
                    now_ns.saturating_add((age / 2).clamp(MIN_POLL_GAP_NS, MAX_POLL_GAP_NS));
                slot.next_poll_ns.store(next_poll, Ordering::Relaxed);
                self.renew_lease(view, slot, device, now_ns);
                slot.state.store(SLOT_IN_FLIGHT, Ordering::SeqCst);
                self.earliest_poll_ns.fetch_min(next_poll, Ordering::SeqCst);
                ProbeDisposal::Keep
            }
            ProbeResult::Failed => {
                self.assume_charge(slot);
                self.finish_probe(view, slot);
                ProbeDisposal::Release
            }
            ProbeResult::Elapsed { device_ns } => {
                self.learn(view, slot, device, device_ns, now_ns);
                self.finish_probe(view, slot);
                ProbeDisposal::Release
            }
        }
    }

    fn learn(
        &self,
        view: &SharedView<'_>,
        slot: &ProbeSlot,
        device: usize,
        sample_ns: u64,
        now_ns: u64,
    ) {
        let key = slot.launch_key.load(Ordering::Relaxed);
        let Some(entry) = self.costs.entry(self.costs.find_or_insert(key)) else {
            return;
        };
        let estimate = entry.record(sample_ns);
        let wave_key = slot.wave_key.load(Ordering::Relaxed);
        if wave_key != 0 {
            let waves = slot.waves.load(Ordering::Relaxed).max(1);
            if let Some(wave_entry) = self.costs.entry(self.costs.find_or_insert(wave_key)) {
                wave_entry.record(sample_ns / waves);
            }
        }
        let Some(state) = self.devices.get(device) else {
            return;
        };
        state.typical_cost_ns.store(estimate, Ordering::Relaxed);
        let charged = slot.charged_ns.load(Ordering::Relaxed);
        if charged == estimate
            || !enforcing(self.policy, view.utilization_switch.load(Ordering::Relaxed))
        {
            return;
        }
        if let Some(bucket) = self.bucket(view, device) {
            let delta = i128::from(estimate) - i128::from(charged);
            let delta = i64::try_from(delta).unwrap_or(if delta > 0 { i64::MAX } else { i64::MIN });
            bucket.adjust(delta, now_ns);
        }
    }

    fn assume_charge(&self, slot: &ProbeSlot) {
        let key = slot.launch_key.load(Ordering::Relaxed);
        if let Some(entry) = self.costs.entry(self.costs.find_or_insert(key)) {
            entry.assume(slot.charged_ns.load(Ordering::Relaxed));
        }
    }

    fn finish_probe(&self, view: &SharedView<'_>, slot: &ProbeSlot) {
        let lease = slot.lease.swap(0, Ordering::Relaxed);
        if lease != 0 {
            let device = slot.device.load(Ordering::Relaxed) as usize;
            if let Some(bucket) = self.bucket(view, device) {
                bucket.release_learning_lease(lease);
            }
        }
        slot.state.store(SLOT_FREE, Ordering::SeqCst);
    }

    /// A probe of an unknown kernel still running keeps the container's learning lease.
    fn renew_lease(&self, view: &SharedView<'_>, slot: &ProbeSlot, device: usize, now_ns: u64) {
        let held = slot.lease.load(Ordering::Relaxed);
        if held == 0 {
            return;
        }
        let renewed = self
            .bucket(view, device)
            .and_then(|bucket| bucket.renew_learning_lease(held, now_ns, LEARNING_LEASE_NS));
        // Lost (we were too slow to renew and another process took it): carry on without it.
        slot.lease.store(renewed.unwrap_or(0), Ordering::Relaxed);
    }

    /// Writes the region's `last_kernel_time` at most once per interval per process (MUST,
    /// hami-contract.md 3.5 item 7; monotonic through `fetch_max`).
    #[inline]
    fn stamp_kernel_time<C: Clock>(&self, view: &SharedView<'_>, now_ns: u64, clock: &C) {
        let next = self.next_kernel_time_stamp_ns.load(Ordering::Relaxed);
        if now_ns < next {
            return;
        }
        if self
            .next_kernel_time_stamp_ns
            .compare_exchange(
                next,
                now_ns.saturating_add(self.kernel_time_interval_ns),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            view.last_kernel_time_s
                .fetch_max(clock.epoch_s(), Ordering::Relaxed);
        }
    }

    /// In a fork child: the parent's probes (and their events) mean nothing here, and a learning
    /// lease they hold is the parent's to give back. Forget them; learned costs stay valid only
    /// if the child uses the same handles, which it does not after re-initialising CUDA, but
    /// they are keyed by handle, so stale entries are simply never hit.
    pub fn forget_probes_after_fork(&self) {
        for slot in &self.probes {
            slot.lease.store(0, Ordering::Relaxed);
            slot.state.store(SLOT_FREE, Ordering::SeqCst);
        }
        self.earliest_poll_ns.store(u64::MAX, Ordering::SeqCst);
    }

    /// Probes in flight (for tests and diagnostics).
    pub fn probes_in_flight(&self) -> usize {
        self.probes
            .iter()
            .filter(|slot| slot.state.load(Ordering::Relaxed) != SLOT_FREE)
            .count()
    }

    /// The learned estimate for `work` on `device`, 0 if none (for tests and diagnostics).
    pub fn estimate_ns(&self, device: usize, work: &Work) -> u64 {
        self.costs
            .find(work.launch_key(device))
            .and_then(|i| self.costs.entry(i))
            .map_or(0, CostEntry::estimate_ns)
    }
}
