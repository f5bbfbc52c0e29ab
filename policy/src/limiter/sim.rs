//! A discrete-event simulator for tuning and testing the limiter without a driver (tests only).
//!
//! Devices run one operation at a time. Containers hold processes; every process has its own
//! `LaunchGate` (as a real process would) and shares its container's buckets and policy words. A
//! process runs a launch loop through the gate exactly as the hooks do: poll due probes, ask the
//! gate, pause on `Wait` per `backoff`, launch on `Go` with event probes when asked. Its loop either
//! never syncs (the queue is bounded like a real stream's) or syncs after every launch.
//!
//! Scheduling between the processes of a device:
//! - `Fifo`: operations run in submission order across all submitters (the brief's model, and the
//!   simulated driver's);
//! - `TimeSlice`: round-robin between processes with work, `quantum_ns` each, preempting long
//!   kernels, like a GPU time-slicing contexts. Here an event pair around a kernel also spans other
//!   tenants' slices, which is what the cost estimator has to see through.
//!
//! Virtual time only: the results are deterministic, so tests may assert on them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use super::gate::{LaunchGate, ProbeDriver, ProbeId, ProbeResult, SharedView, Work};
use super::launcher::Launcher;
use super::{
    backoff, Clock, Decision, GateConfig, LaunchOutcome, Pause, SharedLimiter, WaitReason,
};

/// Stands in for a container's region: the tail words and the limiter extension.
#[derive(Debug)]
pub(crate) struct LocalShared {
    pub recent_kernel: AtomicI32,
    pub utilization_switch: AtomicI32,
    pub last_kernel_time_s: AtomicU64,
    pub limiter: Box<SharedLimiter>,
}

impl LocalShared {
    pub fn new() -> LocalShared {
        LocalShared {
            // Initial values written at region creation (hami-contract.md 3.3).
            recent_kernel: AtomicI32::new(2),
            utilization_switch: AtomicI32::new(1),
            last_kernel_time_s: AtomicU64::new(0),
            limiter: Box::default(),
        }
    }

    pub fn view(&self) -> SharedView<'_> {
        SharedView {
            recent_kernel: &self.recent_kernel,
            utilization_switch: &self.utilization_switch,
            last_kernel_time_s: &self.last_kernel_time_s,
            limiter: &self.limiter,
        }
    }
}

/// A manual clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SimClock(pub u64);

impl Clock for SimClock {
    fn monotonic_ns(&self) -> u64 {
        self.0
    }
    fn epoch_s(&self) -> u64 {
        1_700_000_000 + self.0 / 1_000_000_000
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheduling {
    Fifo,
    TimeSlice { quantum_ns: u64 },
}

/// When the first event of a probe (recorded just before the kernel) gets its timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventModel {
    /// When the stream reaches it: at submission, or when the stream's previous work ends. Time
    /// the kernel then spends queued behind other processes' work counts in the pair. This is what
    /// the simulated driver does (`sim/cuda/src/stream.rs`), and the harder case.
    StreamReady,
    /// When the kernel starts running.
    KernelStart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoopKind {
    /// Launch, launch, launch: never waits for the GPU (only for a full queue).
    Unsynced,
    /// Launch, then synchronize the stream, then launch again.
    Synced,
}

/// One thing a process launches, in a cycle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub work: Work,
    /// Device time it really takes (before jitter).
    pub duration_ns: u64,
}

impl Item {
    /// A kernel as the simulated driver prices it: `ceil(blocks / sms) * ns_per_block *
    /// ceil(threads / 256)`. Grid = `waves * sms` blocks of 256 threads, so it takes `duration_ns`
    /// on any device size while its block count scales with the device.
    pub fn kernel(handle: u64, duration_ns: u64, sm_count: u32, waves: u64) -> Item {
        let blocks = u64::from(sm_count) * waves;
        Item {
            work: Work::kernel(handle, blocks, 256),
            duration_ns: (duration_ns / waves) * waves,
        }
    }

    /// One replay of a graph whose kernel nodes take `node_ns` in total.
    pub fn graph(handle: u64, node_ns: &[u64]) -> Item {
        Item {
            work: Work::graph(handle),
            duration_ns: node_ns.iter().sum(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ProcessSpec {
    pub container: usize,
    pub device: usize,
    pub loop_kind: LoopKind,
    pub items: Vec<Item>,
    /// When the process starts launching.
    pub start_ns: u64,
    /// Stops launching at this instant (u64::MAX = runs to the end).
    pub stop_ns: u64,
}

/// A change to a container's policy words at an instant (what the monitor would write).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Script {
    RecentKernel {
        at_ns: u64,
        container: usize,
        value: i32,
    },
    UtilizationSwitch {
        at_ns: u64,
        container: usize,
        value: i32,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct SimConfig {
    pub devices: usize,
    pub scheduling: Scheduling,
    pub events: EventModel,
    pub duration_ns: u64,
    /// CPU time of one launch call (cuLaunchKernel on a real driver: ~2-5 us).
    pub launch_overhead_ns: u64,
    /// Extra CPU time of a probed launch (two event records; creation amortised).
    pub probe_overhead_ns: u64,
    /// From the stream going idle to the synchronize call returning.
    pub sync_overhead_ns: u64,
    /// Operations a stream holds before a launch blocks (the driver's push buffer).
    pub queue_capacity: usize,
    /// Each kernel's duration varies uniformly by +- this many per mille.
    pub jitter_permille: u64,
    /// How late a sleep wakes up (timer slack + scheduling): uniform in this range.
    pub sleep_late_ns: (u64, u64),
    /// What one `sched_yield` costs: uniform in this range.
    pub yield_ns: (u64, u64),
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 1,
            scheduling: Scheduling::Fifo,
            events: EventModel::StreamReady,
            duration_ns: 10_000_000_000,
            launch_overhead_ns: 4_000,
            probe_overhead_ns: 6_000,
            sync_overhead_ns: 5_000,
            queue_capacity: 1024,
            jitter_permille: 0,
            sleep_late_ns: (20_000, 100_000),
            yield_ns: (1_000, 10_000),
            seed: 1,
        }
    }
}

/// Length of one accounting bucket of the results.
pub(crate) const BIN_NS: u64 = 100_000_000;

#[derive(Debug, Default, Clone)]
pub(crate) struct ProcessStats {
    pub launches: u64,
    pub probes: u64,
    pub waits_budget: u64,
    pub waits_priority: u64,
    pub waits_learning: u64,
    /// Launch instants (only kept when asked for, see `Sim::record_launches`).
    pub launch_times: Vec<u64>,
    /// The gate's estimate for each item at the end, next to the item's true duration.
    pub estimates: Vec<(u64, u64)>,
}

#[derive(Debug)]
pub(crate) struct SimResult {
    /// `busy[container][device][bin]`: device ns spent on the container's work in each bin.
    pub busy: Vec<Vec<Vec<u64>>>,
    pub processes: Vec<ProcessStats>,
    pub duration_ns: u64,
}

impl SimResult {
    /// Share of `device` the container used over `[from, to)` (bins), in percent.
    pub fn share_percent(&self, container: usize, device: usize, from_ns: u64, to_ns: u64) -> f64 {
        let bins = &self.busy[container][device];
        let first = (from_ns / BIN_NS) as usize;
        let last = ((to_ns / BIN_NS) as usize).min(bins.len());
        let busy: u64 = bins[first..last].iter().sum();
        let span = (last - first) as u64 * BIN_NS;
        100.0 * busy as f64 / span as f64
    }

    /// Mean share over the whole run.
    pub fn mean_percent(&self, container: usize, device: usize) -> f64 {
        self.share_percent(container, device, 0, self.duration_ns)
    }

    /// The worst deviation from `target` among 1-second windows starting at 1 s, 2 s, ...
    pub fn worst_second_after_first(&self, container: usize, device: usize, target: f64) -> f64 {
        let seconds = self.duration_ns / 1_000_000_000;
        (1..seconds)
            .map(|s| {
                let share = self.share_percent(
                    container,
                    device,
                    s * 1_000_000_000,
                    (s + 1) * 1_000_000_000,
                );
                share - target
            })
            .fold(
                0.0,
                |worst: f64, d| if d.abs() > worst.abs() { d } else { worst },
            )
    }
}

#[derive(Clone, Copy, Debug)]
struct Op {
    seq: u64,
    remaining_ns: u64,
    probe: Option<ProbeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcState {
    /// Runs its next step at `wake_ns`.
    Ready,
    /// Waits for its stream to drain (synced loop).
    SyncWait,
    /// Waits for room in its stream.
    QueueFull,
    Done,
}

#[derive(Clone, Copy, Debug, Default)]
struct ProbeRecord {
    start_ns: Option<u64>,
    end_ns: Option<u64>,
}

struct Proc {
    spec: ProcessSpec,
    gate: LaunchGate,
    /// The launching thread's credit and memo, as the hooks keep one per thread.
    launcher: Launcher,
    state: ProcState,
    wake_ns: u64,
    next_item: usize,
    attempt: u32,
    queue: VecDeque<Op>,
    probes: Vec<ProbeRecord>,
    stats: ProcessStats,
}

struct Device {
    /// Process whose head operation runs, and since when (for accounting).
    running: Option<usize>,
    /// Time-slice mode: the process that owns the current slice and when the slice ends.
    slice_owner: Option<usize>,
    slice_end_ns: u64,
}

/// The probe driver of one simulated process: queries its probe records.
struct SimProbes<'a> {
    records: &'a mut Vec<ProbeRecord>,
    now_ns: u64,
}

impl ProbeDriver for SimProbes<'_> {
    fn query(&mut self, probe: ProbeId) -> ProbeResult {
        let record = self.records[probe.index()];
        match (record.start_ns, record.end_ns) {
            (Some(start), Some(end)) if end <= self.now_ns => ProbeResult::Elapsed {
                device_ns: end - start,
            },
            _ => ProbeResult::NotReady,
        }
    }
    fn release(&mut self, probe: ProbeId) {
        self.records[probe.index()] = ProbeRecord::default();
    }
    fn pause(&mut self, _pause: Pause) {}
}

pub(crate) struct Sim {
    config: SimConfig,
    containers: Vec<LocalShared>,
    procs: Vec<Proc>,
    devices: Vec<Device>,
    scripts: Vec<Script>,
    busy: Vec<Vec<Vec<u64>>>,
    seq: u64,
    rng: u64,
    pub record_launches: bool,
}

impl Sim {
    /// `containers[c]` is the gate config every process of container `c` uses.
    pub fn new(config: SimConfig, containers: &[GateConfig], processes: Vec<ProcessSpec>) -> Sim {
        let shared: Vec<LocalShared> = containers.iter().map(|_| LocalShared::new()).collect();
        let bins = config.duration_ns.div_ceil(BIN_NS) as usize;
        let procs = processes
            .into_iter()
            .map(|spec| {
                let gate = LaunchGate::new(&containers[spec.container]);
                gate.attach(&shared[spec.container].view(), 1_700_000_000);
                Proc {
                    wake_ns: spec.start_ns,
                    spec,
                    gate,
                    launcher: Launcher::new(),
                    state: ProcState::Ready,
                    next_item: 0,
                    attempt: 0,
                    queue: VecDeque::new(),
                    probes: vec![ProbeRecord::default(); super::tuning::MAX_PROBES],
                    stats: ProcessStats::default(),
                }
            })
            .collect();
        Sim {
            busy: vec![vec![vec![0; bins]; config.devices]; containers.len()],
            devices: (0..config.devices)
                .map(|_| Device {
                    running: None,
                    slice_owner: None,
                    slice_end_ns: 0,
                })
                .collect(),
            rng: config.seed.max(1),
            config,
            containers: shared,
            procs,
            scripts: Vec::new(),
            seq: 0,
            record_launches: false,
        }
    }

    pub fn script(&mut self, script: Script) {
        self.scripts.push(script);
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self, (low, high): (u64, u64)) -> u64 {
        low + self.random() % (high - low + 1)
    }

    fn jittered(&mut self, duration_ns: u64) -> u64 {
        let j = self.config.jitter_permille;
        if j == 0 {
            return duration_ns;
        }
        let r = self.random() % (2 * j + 1); // 0..=2j
        let factor = 1000 + r - j; // 1000-j ..= 1000+j
        (duration_ns * factor / 1000).max(1)
    }

    pub fn run(mut self) -> SimResult {
        let end = self.config.duration_ns;
        let mut now = 0u64;
        // Start of the interval not yet accounted on each device.
        let mut accounted = vec![0u64; self.devices.len()];
        self.scripts.sort_by_key(|s| match s {
            Script::RecentKernel { at_ns, .. } | Script::UtilizationSwitch { at_ns, .. } => *at_ns,
        });
        let mut next_script = 0;
        loop {
            // Next instant something happens.
            let mut next = u64::MAX;
            for (d, device) in self.devices.iter().enumerate() {
                if let Some(p) = device.running {
                    let op_end = accounted[d] + self.procs[p].queue[0].remaining_ns;
                    next = next.min(op_end);
                    if let Scheduling::TimeSlice { .. } = self.config.scheduling {
                        next = next.min(device.slice_end_ns.max(accounted[d]));
                    }
                }
            }
            for proc in &self.procs {
                if proc.state == ProcState::Ready {
                    next = next.min(proc.wake_ns);
                }
            }
            if let Some(script) = self.scripts.get(next_script) {
                let (Script::RecentKernel { at_ns, .. } | Script::UtilizationSwitch { at_ns, .. }) =
                    script;
                next = next.min(*at_ns);
            }
            let t = next.min(end).max(now);
            // Run the devices up to t.
            for (d, from) in accounted.iter_mut().enumerate() {
                self.advance_device(d, *from, t);
                *from = t;
            }
            now = t;
            if now >= end {
                break;
            }
            while let Some(script) = self.scripts.get(next_script).copied() {
                match script {
                    Script::RecentKernel {
                        at_ns,
                        container,
                        value,
                    } if at_ns <= now => {
                        self.containers[container]
                            .recent_kernel
                            .store(value, Ordering::Relaxed);
                    }
                    Script::UtilizationSwitch {
                        at_ns,
                        container,
                        value,
                    } if at_ns <= now => {
                        self.containers[container]
                            .utilization_switch
                            .store(value, Ordering::Relaxed);
                    }
                    _ => break,
                }
                next_script += 1;
            }
            for p in 0..self.procs.len() {
                if self.procs[p].state == ProcState::Ready && self.procs[p].wake_ns <= now {
                    self.step(p, now);
                }
            }
            for d in 0..self.devices.len() {
                self.schedule(d, now);
            }
        }
        SimResult {
            busy: self.busy,
            processes: self
                .procs
                .into_iter()
                .map(|p| {
                    let mut stats = p.stats;
                    stats.estimates = p
                        .spec
                        .items
                        .iter()
                        .map(|item| {
                            (
                                p.gate.estimate_ns(p.spec.device, &item.work),
                                item.duration_ns,
                            )
                        })
                        .collect();
                    stats
                })
                .collect(),
            duration_ns: end,
        }
    }

    /// Runs device `d` from `from` to `to`: accounts busy time, finishes operations, preempts.
    fn advance_device(&mut self, d: usize, from: u64, to: u64) {
        let Some(p) = self.devices[d].running else {
            return;
        };
        let container = self.procs[p].spec.container;
        let op = &mut self.procs[p].queue[0];
        let ran = (to - from).min(op.remaining_ns);
        op.remaining_ns -= ran;
        // Account [from, from + ran) into bins.
        let mut start = from;
        let stop = from + ran;
        while start < stop {
            let bin = (start / BIN_NS) as usize;
            let bin_end = ((bin as u64) + 1) * BIN_NS;
            let piece = stop.min(bin_end) - start;
            if let Some(slot) = self.busy[container][d].get_mut(bin) {
                *slot += piece;
            }
            start += piece;
        }
        if op.remaining_ns == 0 {
            let done = self.procs[p].queue.pop_front();
            if let Some(id) = done.and_then(|op| op.probe) {
                self.procs[p].probes[id.index()].end_ns = Some(stop);
            }
            if self.config.events == EventModel::StreamReady {
                // The stream reaches the next operation's start event now.
                if let Some(id) = self.procs[p].queue.front().and_then(|op| op.probe) {
                    let record = &mut self.procs[p].probes[id.index()];
                    record.start_ns.get_or_insert(stop);
                }
            }
            self.devices[d].running = None;
            let proc = &mut self.procs[p];
            match proc.state {
                ProcState::SyncWait if proc.queue.is_empty() => {
                    proc.state = ProcState::Ready;
                    proc.wake_ns = stop + self.config.sync_overhead_ns;
                }
                ProcState::QueueFull if proc.queue.len() < self.config.queue_capacity => {
                    proc.state = ProcState::Ready;
                    proc.wake_ns = stop;
                }
                _ => {}
            }
            // Start the next operation at once (at `stop`, which may be before `to`).
            self.schedule(d, stop);
            if stop < to {
                self.advance_device(d, stop, to);
            }
        } else if let Scheduling::TimeSlice { .. } = self.config.scheduling {
            if to >= self.devices[d].slice_end_ns {
                // Slice over: preempt; the next owner is chosen by `schedule`.
                self.devices[d].running = None;
                self.schedule(d, to);
            }
        }
    }

    /// Starts an operation on an idle device.
    fn schedule(&mut self, d: usize, now: u64) {
        if self.devices[d].running.is_some() {
            return;
        }
        let candidates = (0..self.procs.len())
            .filter(|&p| self.procs[p].spec.device == d && !self.procs[p].queue.is_empty());
        let chosen = match self.config.scheduling {
            Scheduling::Fifo => candidates.min_by_key(|&p| self.procs[p].queue[0].seq),
            Scheduling::TimeSlice { quantum_ns } => {
                let list: Vec<usize> = candidates.collect();
                let owner = self.devices[d].slice_owner;
                let keep = owner.filter(|o| list.contains(o) && now < self.devices[d].slice_end_ns);
                let chosen = keep.or_else(|| {
                    // Round robin: the first process after the last owner.
                    let after = owner.map_or(0, |o| o + 1);
                    list.iter()
                        .copied()
                        .find(|&p| p >= after)
                        .or_else(|| list.first().copied())
                });
                if let Some(p) = chosen {
                    if keep.is_none() {
                        self.devices[d].slice_owner = Some(p);
                        self.devices[d].slice_end_ns = now + quantum_ns;
                    }
                }
                chosen
            }
        };
        if let Some(p) = chosen {
            self.devices[d].running = Some(p);
            if self.config.events == EventModel::KernelStart {
                let Some(id) = self.procs[p].queue[0].probe else {
                    return;
                };
                let record = &mut self.procs[p].probes[id.index()];
                record.start_ns.get_or_insert(now);
            }
        }
    }

    /// One step of process `p`'s launch loop at `now`.
    fn step(&mut self, p: usize, now: u64) {
        if now >= self.procs[p].spec.stop_ns {
            self.procs[p].state = ProcState::Done;
            return;
        }
        let container = self.procs[p].spec.container;
        let device = self.procs[p].spec.device;
        let item = self.procs[p].spec.items[self.procs[p].next_item];
        let clock = SimClock(now);
        let view = self.containers[container].view();
        let proc = &mut self.procs[p];
        let mut driver = SimProbes {
            records: &mut proc.probes,
            now_ns: now,
        };
        proc.gate.poll_probes(&view, &clock, &mut driver);
        match proc
            .gate
            .before_launch_for(&view, device, &item.work, &clock, &proc.launcher)
        {
            Decision::Go(ticket) => {
                proc.attempt = 0;
                proc.stats.launches += 1;
                if self.record_launches {
                    proc.stats.launch_times.push(now);
                }
                let mut cpu = self.config.launch_overhead_ns;
                if let Some(id) = ticket.probe() {
                    proc.probes[id.index()] = ProbeRecord::default();
                    if self.config.events == EventModel::StreamReady && proc.queue.is_empty() {
                        proc.probes[id.index()].start_ns = Some(now);
                    }
                    proc.stats.probes += 1;
                    cpu += self.config.probe_overhead_ns;
                }
                proc.gate.launched(
                    &view,
                    ticket,
                    LaunchOutcome::Submitted {
                        probe_recorded: ticket.probe().is_some(),
                    },
                    &clock,
                );
                proc.next_item = (proc.next_item + 1) % proc.spec.items.len();
                self.seq += 1;
                let seq = self.seq;
                let duration = self.jittered(item.duration_ns);
                let proc = &mut self.procs[p];
                proc.queue.push_back(Op {
                    seq,
                    remaining_ns: duration,
                    probe: ticket.probe(),
                });
                match proc.spec.loop_kind {
                    LoopKind::Synced => proc.state = ProcState::SyncWait,
                    LoopKind::Unsynced => {
                        proc.wake_ns = now + cpu;
                        if proc.queue.len() >= self.config.queue_capacity {
                            proc.state = ProcState::QueueFull;
                        }
                    }
                }
                self.schedule(device, now);
            }
            Decision::Wait {
                retry_in_ns,
                reason,
            } => {
                match reason {
                    WaitReason::Budget => proc.stats.waits_budget += 1,
                    WaitReason::Priority => proc.stats.waits_priority += 1,
                    WaitReason::Learning => proc.stats.waits_learning += 1,
                }
                let pause = backoff(retry_in_ns, proc.attempt);
                proc.attempt = proc.attempt.saturating_add(1);
                let took = match pause {
                    Pause::Spin { iterations } => u64::from(iterations) * 16,
                    Pause::Yield => self.uniform(self.config.yield_ns),
                    Pause::Sleep { ns } => ns + self.uniform(self.config.sleep_late_ns),
                };
                self.procs[p].wake_ns = now + took.max(1);
            }
        }
    }
}
