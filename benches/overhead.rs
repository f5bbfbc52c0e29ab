//! What libvgpu adds to a call, measured end to end against the simulated driver: the same C probe
//! (`tests/probes/bench.c`) runs once on the driver alone and once with `LD_PRELOAD=libvgpu.so`, in
//! one run, and this prints the ratio. Shared machines are noisy: read ratios and added nanoseconds,
//! not absolute times. Goal from the issue: under 50 ns added per launch and per memory-info call.
//!
//! `cargo bench -p vgpu --bench overhead [ops|paced|live|register]` after
//! `scripts/build-artifacts.sh`.
//!
//! `paced` is the launch table of compute isolation: launches in bursts with idle gaps (the device
//! busy under 10 % of the time), so that an SM limit never throttles and what is timed is the cost
//! of an unthrottled launch, with no library, with libvgpu forwarding only, with a memory limit,
//! and with an SM limit on 2 and on 1 visible GPUs. Each configuration runs in
//! VGPU_BENCH_PACED_RUNS (default 9) separate processes, interleaved; the table shows the median
//! of their medians (one process's memory layout moves a launch by +-20 ns on its own).
//!
//! Sizes: VGPU_BENCH_ITERS (default 200000), VGPU_BENCH_LIVE (default 1000000), VGPU_BENCH_PROCS
//! (default 1000: the region has 1024 slots, and the simulated machine's process table 4096, one per
//! process).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::SimMachine;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_probe() -> PathBuf {
    let sim = testkit::sim_dir();
    let l = format!("-L{}", sim.display());
    testkit::compile_c(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        "bench",
        &[&l, "-l:libcuda.so.1"],
    )
}

/// Run the probe; returns its `<prefix> ...` lines split into words.
fn run(machine: &SimMachine, preload: bool, args: &[&str]) -> Vec<Vec<String>> {
    run_env(machine, preload, args, &[])
}

fn run_env(
    machine: &SimMachine,
    preload: bool,
    args: &[&str],
    env: &[(&str, &str)],
) -> Vec<Vec<String>> {
    let exe = bench_probe();
    let mut cmd = if preload {
        machine.preloaded(&exe)
    } else {
        machine.command(&exe)
    };
    // A memory limit far above what the bench uses, so the accounting path runs; no SM limit.
    cmd.env("CUDA_DEVICE_MEMORY_LIMIT", "32g")
        .envs(env.iter().copied())
        .args(args);
    let out = testkit::run(&mut cmd, Duration::from_secs(1800));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} (preload {preload}) failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn table(title: &str, rows: &[(String, f64, f64)]) {
    println!("\n{title}");
    println!(
        "{:<38} {:>12} {:>12} {:>12} {:>8}",
        "", "driver ns", "libvgpu ns", "added ns", "ratio"
    );
    for (name, base, ours) in rows {
        println!(
            "{:<38} {:>12.1} {:>12.1} {:>12.1} {:>8.2}",
            name,
            base,
            ours,
            ours - base,
            ours / base
        );
    }
}

fn ops() {
    let iters = env_or("VGPU_BENCH_ITERS", 200_000).to_string();
    let machine = SimMachine::new("bench-ops");
    let parse = |lines: Vec<Vec<String>>| -> BTreeMap<String, f64> {
        lines
            .into_iter()
            .filter(|w| w.len() == 3 && w[0] == "op")
            .map(|w| (w[1].clone(), w[2].parse().unwrap()))
            .collect()
    };
    // Interleave the two runs twice and keep each side's best, to damp a noisy neighbour.
    let mut base = parse(run(&machine, false, &["ops", &iters]));
    let mut ours = parse(run(&machine, true, &["ops", &iters]));
    for (k, v) in parse(run(&machine, false, &["ops", &iters])) {
        base.entry(k).and_modify(|b| *b = b.min(v));
    }
    for (k, v) in parse(run(&machine, true, &["ops", &iters])) {
        ours.entry(k).and_modify(|b| *b = b.min(v));
    }
    let rows: Vec<_> = base.iter().map(|(k, b)| (k.clone(), *b, ours[k])).collect();
    table(
        &format!("per call ({iters} calls, median of 7 rounds, best of 2 runs)"),
        &rows,
    );
}

fn paced() {
    let runs = env_or("VGPU_BENCH_PACED_RUNS", 9).max(1);
    let launches = env_or("VGPU_BENCH_PACED_LAUNCHES", 200_000).to_string();
    let machine = SimMachine::new("bench-paced");
    // (label, preload, environment). The memory limit is far above what the bench uses.
    type Config<'a> = (&'a str, bool, &'a [(&'a str, &'a str)]);
    let configs: [Config; 5] = [
        ("driver alone", false, &[]),
        ("libvgpu, no limit (forwarding)", true, &[]),
        (
            "libvgpu, memory limit",
            true,
            &[("CUDA_DEVICE_MEMORY_LIMIT", "32g")],
        ),
        (
            "libvgpu, SM limit 50 %, 2 GPUs",
            true,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", "32g"),
                ("CUDA_DEVICE_SM_LIMIT", "50"),
            ],
        ),
        (
            "libvgpu, SM limit 50 %, 1 GPU",
            true,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", "32g"),
                ("CUDA_DEVICE_SM_LIMIT", "50"),
                ("CUDA_VISIBLE_DEVICES", "0"),
            ],
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..runs {
        for (i, (_, preload, env)) in configs.iter().enumerate() {
            let exe = bench_probe();
            let mut cmd = if *preload {
                machine.preloaded(&exe)
            } else {
                machine.command(&exe)
            };
            cmd.envs(env.iter().copied()).args(["paced", &launches]);
            let out = testkit::run(&mut cmd, Duration::from_secs(600));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "bench paced failed: {stdout}");
            let ns = stdout
                .lines()
                .find_map(|l| l.strip_prefix("op cuLaunchKernel(paced) "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .expect("paced result");
            samples[i].push(ns);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    let rows: Vec<_> = configs
        .iter()
        .zip(&medians)
        .map(|((label, _, _), ours)| (label.to_string(), medians[0], *ours))
        .collect();
    table(
        &format!(
            "unthrottled cuLaunchKernel, paced (median of {runs} processes; \"driver ns\" is the driver alone)"
        ),
        &rows,
    );
    println!(
        "SM limit over memory limit alone: {:+.1} ns (2 GPUs), {:+.1} ns (1 GPU)",
        medians[3] - medians[2],
        medians[4] - medians[2]
    );
}

fn live() {
    let count = env_or("VGPU_BENCH_LIVE", 1_000_000).to_string();
    let machine = SimMachine::new("bench-live");
    let parse = |lines: Vec<Vec<String>>| -> Vec<(String, f64)> {
        lines
            .into_iter()
            .filter(|w| w.len() == 4 && w[0] == "live")
            .map(|w| (format!("{} live: {}", w[1], w[2]), w[3].parse().unwrap()))
            .collect()
    };
    let base = parse(run(&machine, false, &["live", &count]));
    let ours = parse(run(&machine, true, &["live", &count]));
    let rows: Vec<_> = base
        .iter()
        .zip(&ours)
        .map(|((k, b), (_, o))| (k.clone(), *b, *o))
        .collect();
    table(
        "cost as live allocations grow (pair = cuMemAlloc_v2 + cuMemFree_v2 of 256 B)",
        &rows,
    );
}

fn register() {
    let procs = env_or("VGPU_BENCH_PROCS", 1000).to_string();
    let machine = SimMachine::new("bench-register");
    let parse = |lines: Vec<Vec<String>>| -> Vec<(String, f64)> {
        lines
            .into_iter()
            .filter(|w| w.len() == 3 && w[0] == "register")
            .map(|w| {
                (
                    format!("process #{} first call", w[1]),
                    w[2].parse().unwrap(),
                )
            })
            .collect()
    };
    // A real GPU's context is ~300 MiB; a thousand of them do not fit a 40 GiB device, so the
    // simulated contexts are made small here.
    let env = [("SIMGPU_CONTEXT_BYTES", "1048576")];
    let base_lines = run_env(&machine, false, &["register", &procs], &env);
    let ours_lines = run_env(&machine, true, &["register", &procs], &env);
    for (who, lines) in [("driver", &base_lines), ("libvgpu", &ours_lines)] {
        if let Some(w) = lines
            .iter()
            .find(|w| w.first().map(String::as_str) == Some("register_failed_at"))
        {
            println!(
                "({who}: process #{} could not register: {}; the table stops there)",
                w[1],
                w[2..].join(" ")
            );
        }
    }
    let base = parse(base_lines);
    let ours = parse(ours_lines);
    let rows: Vec<_> = base
        .iter()
        .zip(&ours)
        .map(|((k, b), (_, o))| (k.clone(), *b, *o))
        .collect();
    table(&format!("registration as {procs} live processes join one region (cuInit + context + first allocation)"), &rows);
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks one part.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("ops") {
        ops();
    }
    if wanted("paced") {
        paced();
    }
    if wanted("live") {
        live();
    }
    if wanted("register") {
        register();
    }
}
