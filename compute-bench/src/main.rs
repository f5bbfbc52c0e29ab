//! `vgpu-compute-bench`: how well `CUDA_DEVICE_SM_LIMIT` holds, measured on the simulated driver.
//!
//! Each case is a fresh simulated machine (one device of 16, 108 or 188 SMs) and one or two
//! "containers" (a region file and a limit each) of 1 or 4 worker processes, each a launch loop with
//! libvgpu preloaded (this same binary, `worker` subcommand). All workers start at one instant and
//! run for the case's length; the machine's record of device-busy intervals per process is the
//! ground truth. Printed per container: the target, the mean share over the run, the worst 1-second
//! window after the first second, the time from which on every 1-second window is within ±3
//! points, and pass/miss. A PNG of share over time per case goes into the output folder, with `results.md`.
//!
//! ```text
//! vgpu-compute-bench [--quick | --full] [--seconds S] [--jobs N] [--filter TEXT] [--out DIR]
//! ```
//!
//! Needs `target/release/libvgpu.so` and `target/sim/` (`scripts/build-artifacts.sh`).

mod measure;
mod plot;
mod worker;

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use measure::{Achieved, BIN_NS};
use simgpu_state::{Config, Machine};

/// One container of a case: a region file, a limit, and its workers.
#[derive(Clone, Debug)]
struct Container {
    label: &'static str,
    limit: u32,
    procs: u32,
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    sms: u32,
    kernel: &'static str,
    sync: bool,
    graph_nodes: u32,
    containers: Vec<Container>,
}

impl Case {
    fn slug(&self) -> String {
        self.name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-")
    }
}

fn loop_name(sync: bool) -> &'static str {
    if sync {
        "sync"
    } else {
        "nosync"
    }
}

fn single(limit: u32, sms: u32, kernel: &'static str, sync: bool, procs: u32) -> Case {
    Case {
        name: format!("{limit}% {sms}SM {kernel} {} {procs}p", loop_name(sync)),
        sms,
        kernel,
        sync,
        graph_nodes: 0,
        containers: vec![Container {
            label: "CTR",
            limit,
            procs,
        }],
    }
}

fn two_containers(sms: u32, kernel: &'static str, sync: bool, procs: u32) -> Case {
    Case {
        name: format!("2ctr 30/60% {sms}SM {kernel} {} {procs}p", loop_name(sync)),
        sms,
        kernel,
        sync,
        graph_nodes: 0,
        containers: vec![
            Container {
                label: "A",
                limit: 30,
                procs,
            },
            Container {
                label: "B",
                limit: 60,
                procs,
            },
        ],
    }
}

fn graph(limit: u32, sms: u32, sync: bool, procs: u32) -> Case {
    Case {
        name: format!(
            "graph8 {limit}% {sms}SM k1ms+k50us {} {procs}p",
            loop_name(sync)
        ),
        sms,
        kernel: "k1ms",
        sync,
        graph_nodes: 8,
        containers: vec![Container {
            label: "CTR",
            limit,
            procs,
        }],
    }
}

const KERNELS: [&str; 3] = ["k50us", "k1ms", "k20ms"];

fn full_matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for limit in [10, 25, 50, 75] {
        for sms in [16, 108, 188] {
            for kernel in KERNELS {
                for sync in [false, true] {
                    for procs in [1, 4] {
                        cases.push(single(limit, sms, kernel, sync, procs));
                    }
                }
            }
        }
    }
    for kernel in KERNELS {
        for sync in [false, true] {
            cases.push(two_containers(108, kernel, sync, 1));
        }
    }
    for limit in [10, 25, 50, 75] {
        for sync in [false, true] {
            cases.push(graph(limit, 108, sync, 1));
        }
    }
    cases
}

fn quick_matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for (limit, sms) in [(25, 108), (75, 16), (10, 188)] {
        for kernel in KERNELS {
            cases.push(single(limit, sms, kernel, false, 1));
        }
    }
    cases.push(single(50, 108, "k1ms", true, 4));
    cases.push(single(50, 108, "k50us", true, 1));
    cases.push(two_containers(108, "k1ms", false, 1));
    cases.push(graph(25, 108, false, 1));
    cases
}

struct Options {
    seconds: f64,
    jobs: usize,
    filter: Option<String>,
    out: PathBuf,
    cases: Vec<Case>,
    lib: PathBuf,
    sim: PathBuf,
    /// Re-run a single-container case that fell short without its limit, and note what it reached.
    ceiling: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let root = workspace_root();
    let mut opts = Options {
        seconds: 3.0,
        jobs: 2,
        filter: None,
        out: root.join("target/compute-bench"),
        cases: quick_matrix(),
        lib: root.join("target/release/libvgpu.so"),
        sim: root.join("target/sim"),
        ceiling: true,
    };
    let mut seconds = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => opts.cases = quick_matrix(),
            "--full" => {
                opts.cases = full_matrix();
                opts.seconds = 10.0;
            }
            "--seconds" => {
                seconds = Some(
                    value()?
                        .parse::<f64>()
                        .map_err(|e| format!("--seconds: {e}"))?,
                )
            }
            "--jobs" => opts.jobs = value()?.parse().map_err(|e| format!("--jobs: {e}"))?,
            "--filter" => opts.filter = Some(value()?),
            "--out" => opts.out = PathBuf::from(value()?),
            "--lib" => opts.lib = PathBuf::from(value()?),
            "--sim" => opts.sim = PathBuf::from(value()?),
            "--no-ceiling" => opts.ceiling = false,
            "-h" | "--help" => {
                return Err(
                    "usage: vgpu-compute-bench [--quick | --full] [--seconds S] [--jobs N] \
                            [--filter TEXT] [--out DIR] [--lib libvgpu.so] [--sim DIR] [--no-ceiling]"
                        .into(),
                )
            }
            other => return Err(format!("unknown option {other} (try --help)")),
        }
    }
    if let Some(s) = seconds {
        opts.seconds = s;
    }
    if let Some(f) = &opts.filter {
        // `|` separates alternatives.
        opts.cases
            .retain(|c| f.split('|').any(|part| c.name.contains(part)));
    }
    opts.jobs = opts.jobs.max(1);
    for (path, what) in [
        (&opts.lib, "libvgpu.so"),
        (&opts.sim.join("libcuda.so.1"), "the simulated driver"),
    ] {
        if !path.exists() {
            return Err(format!(
                "{what} not found at {}: run scripts/build-artifacts.sh first",
                path.display()
            ));
        }
    }
    Ok(opts)
}

/// One container's share over time, for the plot: (label, target %, share % per bin).
type Series = (String, f64, Vec<f64>);

/// One table row: one container of one case.
struct Row {
    case: String,
    container: String,
    target: f64,
    result: Result<Achieved, String>,
    note: String,
}

/// Which containers of a case run without their SM limit (a memory limit keeps libvgpu's hooks
/// active): to measure what a workload can reach at all on this host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unlimit {
    /// The case as specified.
    None,
    /// Container `i` unlimited, the others at their limits: what it can take next to them.
    Container(usize),
}

/// Runs one case.
fn run_case(case: &Case, opts: &Options, unlimit: Unlimit) -> (Vec<Row>, Vec<Series>) {
    let fail = |msg: String| {
        let rows = case
            .containers
            .iter()
            .map(|c| Row {
                case: case.name.clone(),
                container: c.label.into(),
                target: f64::from(c.limit),
                result: Err(msg.clone()),
                note: String::new(),
            })
            .collect();
        (rows, Vec::new())
    };
    let dir = opts.out.join("runs").join(case.slug());
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(format!("mkdir {}: {e}", dir.display()));
    }
    let spec = format!("name=SIM-{}SM,sms={},mem=16Gi", case.sms, case.sms);
    let state = dir.join("machine.state");
    let config = match Config::from_lookup(&|k| (k == "SIMGPU_DEVICES").then(|| spec.clone())) {
        Ok(c) => c,
        Err(e) => return fail(format!("device spec: {e}")),
    };
    let machine = match Machine::open(&state, config) {
        Ok(m) => m,
        Err(e) => return fail(format!("simulated machine: {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("current_exe: {e}")),
    };
    let nprocs: u32 = case.containers.iter().map(|c| c.procs).sum();
    let start_ns = simgpu_state::monotonic_ns() + 600_000_000 + u64::from(nprocs) * 150_000_000;
    let run_ns = (opts.seconds * 1e9) as u64;
    let end_ns = start_ns + run_ns;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for (ci, container) in case.containers.iter().enumerate() {
        for _ in 0..container.procs {
            let mut cmd = Command::new(&exe);
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("LD_PRELOAD", &opts.lib)
                .env("LD_LIBRARY_PATH", &opts.sim)
                .env("SIMGPU_STATE", &state)
                .env("SIMGPU_DEVICES", &spec)
                .env(
                    "CUDA_DEVICE_MEMORY_SHARED_CACHE",
                    dir.join(format!("ctr{ci}.cache")),
                )
                .env(
                    "CUDA_DEVICE_SM_LIMIT",
                    if unlimit == Unlimit::Container(ci) {
                        "0".to_string()
                    } else {
                        container.limit.to_string()
                    },
                )
                .env("CUDA_DEVICE_MEMORY_LIMIT", "8g")
                .args(["worker", "--kernel", case.kernel, "--sms"])
                .arg(case.sms.to_string())
                .args(["--sync", if case.sync { "1" } else { "0" }, "--graph-nodes"])
                .arg(case.graph_nodes.to_string())
                .arg("--start-at")
                .arg(start_ns.to_string())
                .arg("--end-at")
                .arg(end_ns.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            match cmd.spawn() {
                Ok(child) => children.push((ci, child)),
                Err(e) => return fail(format!("spawn worker: {e}")),
            }
        }
    }
    let deadline = Instant::now()
        + Duration::from_nanos(end_ns.saturating_sub(simgpu_state::monotonic_ns()))
        + Duration::from_secs(60);
    let mut pids: Vec<Vec<u32>> = vec![Vec::new(); case.containers.len()];
    let mut notes: Vec<String> = vec![String::new(); case.containers.len()];
    let mut errors = Vec::new();
    for (ci, mut child) in children {
        pids[ci].push(child.id());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        match status {
            Some(s) if s.success() => {
                let late = out
                    .split_whitespace()
                    .skip_while(|w| *w != "late_ns")
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if late > 0 {
                    let _ = write!(notes[ci], "worker started {} ms late; ", late / 1_000_000);
                }
            }
            Some(s) => errors.push(format!("worker {s}: {} {}", out.trim(), err.trim())),
            None => errors.push("worker hung, killed".into()),
        }
    }
    if !errors.is_empty() {
        return fail(errors.join("; "));
    }
    let bins = (run_ns / BIN_NS) as usize;
    let intervals = machine.intervals_since(0, start_ns);
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (ci, container) in case.containers.iter().enumerate() {
        let target = f64::from(container.limit);
        let busy = measure::busy_bins(&intervals, &pids[ci], start_ns, bins);
        let achieved = Achieved::from_bins(&busy, target);
        series.push((container.label.to_string(), target, achieved.series.clone()));
        rows.push(Row {
            case: case.name.clone(),
            container: container.label.into(),
            target,
            result: Ok(achieved),
            note: std::mem::take(&mut notes[ci]),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    (rows, series)
}

fn fmt_num(v: f64, unit: &str) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.2}{unit}")
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| case | ctr | target % | achieved mean % | worst 1 s window % | converge s | result |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in rows {
        match &r.result {
            Ok(a) => {
                let verdict = if a.passes(r.target) { "pass" } else { "MISS" };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {}{} |",
                    r.case,
                    r.container,
                    r.target,
                    fmt_num(a.mean, ""),
                    fmt_num(a.worst_window, ""),
                    if a.converge_s.is_nan() {
                        "never".into()
                    } else {
                        fmt_num(a.converge_s, "")
                    },
                    verdict,
                    if r.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.note.trim_end_matches("; "))
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | — | — | — | ERROR: {e} |",
                    r.case, r.container, r.target
                );
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        let code = match worker::Args::parse(&args[1..]).and_then(|a| worker::run(&a)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("worker: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let opts = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&opts.out) {
        eprintln!("cannot create {}: {e}", opts.out.display());
        std::process::exit(2);
    }
    let total = opts.cases.len();
    eprintln!(
        "{total} cases, {} s each, {} at a time; plots in {}",
        opts.seconds,
        opts.jobs,
        opts.out.display()
    );
    let queue = Mutex::new(opts.cases.iter().enumerate().collect::<Vec<_>>());
    let results: Mutex<Vec<(usize, Vec<Row>)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs {
            scope.spawn(|| loop {
                let next = queue.lock().map(|mut q| {
                    if q.is_empty() {
                        None
                    } else {
                        Some(q.remove(0))
                    }
                });
                let Ok(Some((index, case))) = next else { break };
                let (mut rows, series) = run_case(case, &opts, Unlimit::None);
                // A container that fell short: could this workload reach its target on this host
                // at all, next to the case's other containers at their limits? (A synced loop of
                // 50 us kernels pays the host's launch and sync cost per kernel, and waits behind
                // the other container's kernels; CPU contention lowers that ceiling further.)
                if opts.ceiling {
                    for ci in 0..rows.len() {
                        let short = rows[ci].result.as_ref().is_ok_and(|a| {
                            !a.passes(rows[ci].target) && a.mean < rows[ci].target + 3.0
                        });
                        if !short {
                            continue;
                        }
                        let (free, _) = run_case(case, &opts, Unlimit::Container(ci));
                        if let Some(Ok(free)) = free.get(ci).map(|r| &r.result) {
                            let alongside = if rows.len() > 1 {
                                " next to the other container at its limit"
                            } else {
                                ""
                            };
                            let _ = write!(
                                rows[ci].note,
                                "unlimited{alongside}, the same loop reaches {:.1}% (worst 1 s window {:.1}%); ",
                                free.mean, free.worst_window
                            );
                        }
                    }
                }
                if !series.is_empty() {
                    let lines: Vec<plot::Line<'_>> = series
                        .iter()
                        .map(|(label, target, s)| plot::Line {
                            label: label.clone(),
                            target: *target,
                            series: s,
                        })
                        .collect();
                    let png = opts.out.join(format!("{}.png", case.slug()));
                    if let Err(e) = plot::draw(&png, &case.name, &lines) {
                        eprintln!("{e}");
                    }
                }
                let line = table(&rows);
                for l in line.lines().skip(2) {
                    eprintln!("[{:>4.0}s] {l}", started.elapsed().as_secs_f64());
                }
                if let Ok(mut r) = results.lock() {
                    r.push((index, rows));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = results.into_iter().flat_map(|(_, r)| r).collect();
    let text = table(&rows);
    let passed = rows
        .iter()
        .filter(|r| r.result.as_ref().is_ok_and(|a| a.passes(r.target)))
        .count();
    let summary = format!(
        "{passed} of {} rows pass (mean within ±{} points over {} s, converged within {} s, worst 1 s window within ±{} points)\n",
        rows.len(),
        measure::TOLERANCE_POINTS,
        opts.seconds,
        measure::CONVERGE_LIMIT_S,
        measure::TOLERANCE_POINTS
    );
    println!("{text}\n{summary}");
    let _ = std::fs::write(opts.out.join("results.md"), format!("{text}\n{summary}"));
}
