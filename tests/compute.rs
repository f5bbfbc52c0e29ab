//! Compute isolation (`CUDA_DEVICE_SM_LIMIT`) end to end: real launch loops (`tests/probes/
//! compute_loop.c`) with libvgpu preloaded against the simulated driver, judged by the simulated
//! machine's own record of device-busy time per process (crate `simgpu-state`).
//!
//! The bounds are deliberately loose (a 20 % limit must stay under 50 %, an unlimited loop above
//! 80 %): these tests check that the limiter engages on every path, not how accurate it is. The
//! accuracy figures come from `compute-bench`.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simgpu_state::{Config, Machine};
use testkit::SimMachine;

/// `recent_kernel` in the region tail (hami-contract.md 3.3).
const RECENT_KERNEL_OFFSET: u64 = 2_008_904;
const DEADLINE: Duration = Duration::from_secs(60);

fn probe() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    testkit::compile_c(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        "compute_loop",
        &[],
    )
}

/// The simulated machine as the test sees it (same state file and devices as the children).
fn ground_truth(sim: &SimMachine) -> Machine {
    let spec = sim.devices.clone();
    let config = Config::from_lookup(&|key| match key {
        "SIMGPU_DEVICES" => spec.clone(),
        _ => None,
    })
    .expect("device spec");
    Machine::open(&sim.state_file, config).expect("open the simulated machine")
}

/// A probe run that has been started.
struct Run {
    child: Child,
    label: String,
}

impl Run {
    fn start(mut cmd: Command, label: &str) -> Run {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Run {
            child: cmd.spawn().expect("spawn compute_loop"),
            label: label.to_string(),
        }
    }

    /// Waits for a successful exit and returns the probe's `key value` lines.
    fn finish(mut self) -> Report {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{}: still running after {DEADLINE:?}, killed", self.label);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).ok();
        }
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut err).ok();
        }
        assert!(
            status.success(),
            "{}: exit {status}\nstdout:\n{out}\nstderr:\n{err}",
            self.label
        );
        Report {
            label: self.label,
            pid: self.child.id(),
            text: out,
        }
    }
}

struct Report {
    label: String,
    pid: u32,
    text: String,
}

impl Report {
    fn value(&self, key: &str) -> u64 {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no `{key}` in\n{}", self.label, self.text))
    }

    /// Device time this process got on `device`, as a share of its launch loop's wall time.
    fn share(&self, machine: &Machine, device: u32) -> f64 {
        let busy = machine.busy_ns(device, Some(self.pid), 0, u64::MAX);
        busy as f64 / self.value("wall_ns") as f64
    }
}

/// A preloaded probe run on `sim` with `env` and `args`.
fn loop_cmd(sim: &SimMachine, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = sim.preloaded(probe());
    cmd.env_remove("GPU_CORE_UTILIZATION_POLICY");
    cmd.envs(env.iter().copied());
    cmd.args(args);
    cmd
}

fn run_share(sim: &SimMachine, env: &[(&str, &str)], args: &[&str], device: u32) -> f64 {
    let machine = ground_truth(sim);
    let report = Run::start(loop_cmd(sim, env, args), &format!("{env:?} {args:?}")).finish();
    report.share(&machine, device)
}

#[test]
fn a_limited_loop_is_throttled_and_an_unlimited_one_is_not() {
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "limited, synced",
            vec![("CUDA_DEVICE_SM_LIMIT", "20")],
            vec!["--sync"],
        ),
        (
            "limited, unsynced",
            vec![("CUDA_DEVICE_SM_LIMIT", "20")],
            vec![],
        ),
        // A memory limit keeps libvgpu active (not pass-through) without any SM limit.
        (
            "unlimited",
            vec![("CUDA_DEVICE_MEMORY_LIMIT", "1g")],
            vec!["--sync"],
        ),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(label, env, args)| {
            let sim = SimMachine::new("compute-basic");
            let machine = ground_truth(&sim);
            let mut all = vec!["--seconds", "2"];
            all.extend(args);
            let run = Run::start(loop_cmd(&sim, &env, &all), label);
            (label, machine, run)
        })
        .collect();
    for (label, machine, run) in runs {
        let report = run.finish();
        let share = report.share(&machine, 0);
        eprintln!("{label}: {:.1} % of the device", share * 100.0);
        if label == "unlimited" {
            assert!(share > 0.8, "{label}: got {share:.3}, expected > 0.8");
        } else {
            assert!(
                (0.05..0.5).contains(&share),
                "{label}: got {share:.3}, expected a throttled 20 % (< 0.5)"
            );
        }
    }
}

#[test]
fn every_launch_api_pays() {
    // Graph replays are paid for their kernels (4 per replay here), `Ex` launches on the stream's
    // context, cooperative launches, and the per-thread-stream forms.
    let apis = ["ptsz", "ex", "ex_ptsz", "coop", "graph"];
    let runs: Vec<_> = apis
        .iter()
        .map(|api| {
            let sim = SimMachine::new("compute-api");
            let machine = ground_truth(&sim);
            let cmd = loop_cmd(
                &sim,
                &[("CUDA_DEVICE_SM_LIMIT", "20")],
                &["--api", api, "--seconds", "2"],
            );
            (*api, machine, Run::start(cmd, api))
        })
        .collect();
    for (api, machine, run) in runs {
        let report = run.finish();
        let share = report.share(&machine, 0);
        eprintln!("{api}: {:.1} % of the device", share * 100.0);
        assert!(report.value("launches") > 0);
        assert!(
            (0.05..0.5).contains(&share),
            "{api}: got {share:.3}, expected a throttled 20 % (< 0.5)"
        );
    }
}

#[test]
fn graph_replays_are_throttled_like_kernels() {
    let sim = SimMachine::new("compute-graph");
    let limited = run_share(
        &sim,
        &[("CUDA_DEVICE_SM_LIMIT", "20")],
        &["--api", "graph", "--graph-nodes", "8", "--seconds", "2"],
        0,
    );
    let sim = SimMachine::new("compute-graph-free");
    let free = run_share(
        &sim,
        &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")],
        &[
            "--api",
            "graph",
            "--graph-nodes",
            "8",
            "--seconds",
            "2",
            "--sync",
        ],
        0,
    );
    eprintln!("graph: limited {limited:.3}, unlimited {free:.3}");
    assert!(
        (0.05..0.5).contains(&limited),
        "limited graph loop: {limited:.3}"
    );
    assert!(free > 0.8, "unlimited graph loop: {free:.3}");
}

#[test]
fn two_devices_have_independent_budgets() {
    // Two processes of one container, one per device, different limits; and one process driving
    // both devices with the multi-device cooperative launch.
    let spec = "name=SIM-A,sms=108,mem=16Gi;name=SIM-B,sms=58,mem=16Gi";
    let sim = SimMachine::new("compute-two").with_devices(spec);
    let machine = ground_truth(&sim);
    let env = [
        ("CUDA_DEVICE_SM_LIMIT_0", "20"),
        ("CUDA_DEVICE_SM_LIMIT_1", "60"),
    ];
    let a = Run::start(
        loop_cmd(&sim, &env, &["--device", "0", "--seconds", "2", "--sync"]),
        "dev0",
    );
    let b = Run::start(
        loop_cmd(&sim, &env, &["--device", "1", "--seconds", "2", "--sync"]),
        "dev1",
    );
    let (a, b) = (a.finish(), b.finish());
    let (share0, share1) = (a.share(&machine, 0), b.share(&machine, 1));
    eprintln!("two processes: device 0 {share0:.3} (20 %), device 1 {share1:.3} (60 %)");
    assert!(
        (0.05..0.4).contains(&share0),
        "device 0 at 20 %: {share0:.3}"
    );
    assert!(
        (0.45..0.85).contains(&share1),
        "device 1 at 60 % is not held back by device 0: {share1:.3}"
    );
    // Nothing leaked onto the other device.
    assert_eq!(machine.busy_ns(1, Some(a.pid), 0, u64::MAX), 0);
    assert_eq!(machine.busy_ns(0, Some(b.pid), 0, u64::MAX), 0);

    let sim = SimMachine::new("compute-multi").with_devices(spec);
    let machine = ground_truth(&sim);
    let multi = Run::start(
        loop_cmd(&sim, &env, &["--api", "multi", "--seconds", "2", "--sync"]),
        "multi",
    )
    .finish();
    let (m0, m1) = (multi.share(&machine, 0), multi.share(&machine, 1));
    eprintln!("multi-device launch: device 0 {m0:.3}, device 1 {m1:.3}");
    // Both devices run each launch, so the slower budget (20 %) paces both; what matters is that
    // each device paid for its own part: neither got more than its limit allows.
    assert!((0.05..0.4).contains(&m0), "multi-device, device 0: {m0:.3}");
    assert!((0.05..0.4).contains(&m1), "multi-device, device 1: {m1:.3}");
}

#[test]
fn the_container_budget_is_shared_by_its_processes() {
    let sim = SimMachine::new("compute-shared");
    let machine = ground_truth(&sim);
    let runs: Vec<Run> = (0..3)
        .map(|i| {
            Run::start(
                loop_cmd(&sim, &[("CUDA_DEVICE_SM_LIMIT", "30")], &["--seconds", "2"]),
                &format!("proc{i}"),
            )
        })
        .collect();
    let reports: Vec<Report> = runs.into_iter().map(Run::finish).collect();
    let total: f64 = reports.iter().map(|r| r.share(&machine, 0)).sum();
    eprintln!(
        "three processes at a shared 30 %: {:.1} % together",
        total * 100.0
    );
    assert!(
        (0.1..0.5).contains(&total),
        "three processes of one container at 30 %: {total:.3} together"
    );
}

#[test]
fn policy_disable_never_throttles() {
    let sim = SimMachine::new("compute-disable");
    let share = run_share(
        &sim,
        &[
            ("CUDA_DEVICE_SM_LIMIT", "20"),
            ("GPU_CORE_UTILIZATION_POLICY", "disable"),
        ],
        &["--seconds", "2", "--sync"],
        0,
    );
    eprintln!("disable: {share:.3}");
    assert!(share > 0.8, "policy disable, 20 % limit: {share:.3}");
}

#[test]
fn a_negative_recent_kernel_holds_launches_until_cleared() {
    priority_hold(&[("CUDA_DEVICE_SM_LIMIT", "50")]);
}

#[test]
fn a_negative_recent_kernel_holds_a_container_without_an_sm_limit_too() {
    // hami-contract.md 3.6: vgpu honours priority blocking for any limit (HAMi#132).
    priority_hold(&[("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
}

fn priority_hold(env: &[(&str, &str)]) {
    let sim = SimMachine::new("compute-priority");
    let machine = ground_truth(&sim);
    let run = Run::start(
        loop_cmd(
            &sim,
            env,
            &["--seconds", "5", "--sync", "--kernel", "sleep_500us"],
        ),
        "priority",
    );
    let started = Instant::now();
    while machine.launches(0) < 20 {
        assert!(started.elapsed() < DEADLINE, "the loop never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let region = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(sim.region_file())
        .expect("region file");
    let write_recent = |value: i32| {
        region
            .write_all_at(&value.to_le_bytes(), RECENT_KERNEL_OFFSET)
            .expect("write recent_kernel")
    };
    // The monitor blocks the container for a higher-priority one.
    write_recent(-1);
    std::thread::sleep(Duration::from_millis(300));
    let held_at = machine.launches(0);
    std::thread::sleep(Duration::from_millis(1000));
    let still = machine.launches(0);
    assert!(
        still <= held_at + 1,
        "launches went on while recent_kernel was -1: {held_at} -> {still}"
    );
    let mut word = [0u8; 4];
    region
        .read_exact_at(&mut word, RECENT_KERNEL_OFFSET)
        .unwrap();
    assert_eq!(
        i32::from_le_bytes(word),
        -1,
        "a launch must never overwrite -1"
    );
    // Cleared: launches resume (and mark the container active again).
    write_recent(0);
    let cleared = Instant::now();
    while machine.launches(0) < still + 20 {
        assert!(
            cleared.elapsed() < Duration::from_secs(10),
            "launches did not resume after recent_kernel was cleared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    region
        .read_exact_at(&mut word, RECENT_KERNEL_OFFSET)
        .unwrap();
    assert_eq!(
        i32::from_le_bytes(word),
        2,
        "a launch marks the container active"
    );
    run.finish();
}

#[test]
fn a_thread_that_does_not_launch_is_never_blocked() {
    // 20 ms kernels at 10 %: the launching thread waits about 180 ms before each launch. The other
    // thread sleeps 1 ms at a time and counts; it would count a handful if it were held too.
    let sim = SimMachine::new("compute-ticker");
    let machine = ground_truth(&sim);
    let report = Run::start(
        loop_cmd(
            &sim,
            &[("CUDA_DEVICE_SM_LIMIT", "10")],
            &[
                "--seconds",
                "2",
                "--sync",
                "--kernel",
                "sleep_20000us",
                "--ticker",
            ],
        ),
        "ticker",
    )
    .finish();
    let share = report.share(&machine, 0);
    let ticks = report.value("ticks");
    eprintln!(
        "launcher {share:.3} of the device, {} launches; ticker {ticks} ticks, longest gap {} ms",
        report.value("launches"),
        report.value("max_tick_gap_ns") / 1_000_000
    );
    assert!(share < 0.3, "the launcher is throttled: {share:.3}");
    assert!(
        ticks > 300,
        "the non-launching thread kept ticking: {ticks} ticks in 2 s"
    );
}
