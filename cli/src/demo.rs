//! `vgpu demo`: two "containers" (two region files) share one simulated GPU. `alpha` asks for more
//! memory than its limit and gets an ordinary out-of-memory error; `beta` runs kernels back to back
//! under a compute limit, and the table shows the share of the GPU it really gets.
//!
//! Everything runs as a user would run it: each container is `vgpu run ... -- vgpu __workload ...`,
//! against the simulated driver, with its own region under a temporary HAMi-style directory.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::format;
use crate::regions;

const GPU_SPEC: &str = "name=NVIDIA A100-SXM4-40GB,mem=40Gi,sms=108,cc=8.0";
const GPU_TEXT: &str = "NVIDIA A100 (40 GiB, 108 SMs)";

const ALPHA_MEMORY: &str = "1Gi";
const ALPHA_MEMORY_BYTES: u64 = 1 << 30;
const ALPHA_CHUNK: &str = "256Mi";
const BETA_MEMORY: &str = "2Gi";
const BETA_CORES: u64 = 30;
const BETA_KERNEL_US: u64 = 2000;

/// One demo container: its `vgpu run` process and everything it printed.
struct Container {
    name: &'static str,
    limits: String,
    region: PathBuf,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    exit: Option<i32>,
}

impl Container {
    fn start(
        name: &'static str,
        limits: String,
        region: PathBuf,
        mut cmd: Command,
    ) -> Result<Container, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        // Both streams: the workload reports on stdout, libvgpu.so logs on stderr.
        if let Some(out) = child.stdout.take() {
            collect_lines(out, Arc::clone(&lines));
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, Arc::clone(&lines));
        }
        Ok(Container {
            name,
            limits,
            region,
            child,
            lines,
            exit: None,
        })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn poll_exit(&mut self) {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(crate::run::exit_code(status));
            }
        }
    }

    fn stop(&mut self) {
        self.poll_exit();
        if self.exit.is_none() {
            // SIGTERM, not std's SIGKILL: `vgpu run` passes it on to the workload, which then exits
            // the way a stopped container's process would.
            crate::sys::terminate(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.exit.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                self.poll_exit();
            }
            if self.exit.is_none() {
                let _ = self.child.kill();
                if let Ok(status) = self.child.wait() {
                    self.exit = Some(crate::run::exit_code(status));
                }
            }
        }
    }

    fn out_of_memory_line(&self) -> Option<String> {
        self.lines()
            .into_iter()
            .find(|l| l.starts_with("alloc: out of memory"))
    }

    fn shares(&self) -> Vec<u64> {
        self.lines()
            .iter()
            .filter_map(|l| crate::workload::parse_share_line(l))
            .collect()
    }

    /// Memory used on device 0 and its limit, from the region file (None until the process created it).
    fn memory(&self) -> Option<(u64, u64)> {
        let snapshot = regions::read_snapshot(&self.region).ok()?;
        let limit = snapshot.devices.first().map_or(0, |d| d.limit_bytes);
        Some((snapshot.device_totals(0).total_bytes, limit))
    }

    /// The container's usage of device 0 by kind, from the region.
    fn usage(&self) -> Option<regions::DeviceUsage> {
        Some(regions::read_snapshot(&self.region).ok()?.device_totals(0))
    }

    /// A few words on what the workload is doing now.
    fn state(&self) -> String {
        let lines = self.lines();
        if let Some(code) = self.exit {
            if self.out_of_memory_line().is_some() {
                return "stopped after OOM".into();
            }
            return if code == 0 {
                "done".into()
            } else {
                format!("exited {code}")
            };
        }
        let last = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("alloc:") || l.starts_with("burn:"));
        match last {
            None => "starting".into(),
            Some(l) if l.starts_with("alloc: out of memory") => "out of memory".into(),
            Some(l) if l.starts_with("alloc: holding") => {
                if self.out_of_memory_line().is_some() {
                    "out of memory".into()
                } else {
                    "holding".into()
                }
            }
            Some(l) if l.starts_with("alloc: +") => "allocating".into(),
            Some(l) if l.starts_with("burn:") => "running kernels".into(),
            Some(_) => "running".into(),
        }
    }
}

fn collect_lines(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        }
    });
}

/// A temporary directory removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn demo(duration: Duration, keep: bool) -> Result<i32, String> {
    let library = crate::locate::libvgpu()?;
    let sim = crate::locate::sim_dir()?;
    let vgpu = std::env::current_exe().map_err(|e| format!("cannot find the vgpu binary: {e}"))?;
    let work = WorkDir {
        path: std::env::temp_dir().join(format!("vgpu-demo-{}", std::process::id())),
        keep,
    };
    let containers_dir = work.path.join("containers");
    let _ = std::fs::remove_dir_all(&work.path);
    for name in ["demo-pod-a_alpha", "demo-pod-b_beta"] {
        std::fs::create_dir_all(containers_dir.join(name))
            .map_err(|e| format!("{}: {e}", work.path.display()))?;
    }
    let interactive = crate::sys::is_terminal(1);

    say(&format!(
        "vgpu demo: two containers share one simulated {GPU_TEXT}"
    ));
    say("");
    say(&format!("  alpha  --memory {ALPHA_MEMORY}              allocates {ALPHA_CHUNK} at a time, wants 2 GiB"));
    say(&format!(
        "  beta   --memory {BETA_MEMORY} --cores {BETA_CORES}   runs {} ms kernels back to back for {} s",
        BETA_KERNEL_US / 1000,
        duration.as_secs()
    ));
    say("");
    say(&format!(
        "Simulator state and region files: {}",
        work.path.display()
    ));
    say("");

    let base = |region: &Path, limits: &[&str], workload: &[String]| {
        let mut cmd = Command::new(&vgpu);
        cmd.arg("run")
            .args(limits)
            .arg("--region")
            .arg(region)
            .arg("--")
            .arg(&vgpu)
            .arg("__workload")
            .args(workload);
        let mut ld_path = sim.clone().into_os_string();
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|o| !o.is_empty()) {
            ld_path.push(":");
            ld_path.push(old);
        }
        cmd.env("LD_LIBRARY_PATH", ld_path)
            .env("SIMGPU_STATE", work.path.join("machine.state"))
            .env("SIMGPU_DEVICES", GPU_SPEC)
            .env("VGPU_LIBRARY", &library);
        cmd
    };

    let alpha_region = containers_dir.join("demo-pod-a_alpha/vgpu.cache");
    let beta_region = containers_dir.join("demo-pod-b_beta/vgpu.cache");
    let hold_secs = (duration.as_secs() + 30).to_string();
    let alpha_cmd = base(
        &alpha_region,
        &["--memory", ALPHA_MEMORY],
        &[
            "alloc",
            "--chunk",
            ALPHA_CHUNK,
            "--total",
            "2Gi",
            "--pace-ms",
            "500",
            "--hold-secs",
            &hold_secs,
        ]
        .map(String::from),
    );
    let cores = BETA_CORES.to_string();
    let beta_cmd = base(
        &beta_region,
        &["--memory", BETA_MEMORY, "--cores", &cores],
        &[
            "burn".to_string(),
            "--kernel-us".into(),
            BETA_KERNEL_US.to_string(),
            "--seconds".into(),
            duration.as_secs().to_string(),
        ],
    );
    let mut alpha = Container::start("alpha", ALPHA_MEMORY.to_string(), alpha_region, alpha_cmd)?;
    let mut beta = match Container::start(
        "beta",
        format!("{BETA_MEMORY}, {BETA_CORES}% SMs"),
        beta_region,
        beta_cmd,
    ) {
        Ok(b) => b,
        Err(e) => {
            alpha.stop();
            return Err(e);
        }
    };

    let started = Instant::now();
    let deadline = duration + Duration::from_secs(20);
    let mut drawn_lines = 0usize;
    let mut last_plain = None::<Instant>;
    loop {
        alpha.poll_exit();
        beta.poll_exit();
        let finished = beta.exit.is_some() || started.elapsed() > deadline;
        let table = live_table(started.elapsed(), &[&alpha, &beta]);
        if interactive {
            // Redraw in place: up over the previous table, clear to the end of the screen.
            if drawn_lines > 0 {
                print!("\x1b[{drawn_lines}A\x1b[J");
            }
            print!("{table}");
            drawn_lines = table.lines().count();
        } else if finished
            || last_plain.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(3))
        {
            // Not a terminal (a log, a pipe): a snapshot every few seconds instead of a redraw.
            println!("{table}");
            last_plain = Some(Instant::now());
        }
        let _ = std::io::stdout().flush();
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(1000));
    }

    say("");
    say(&format!(
        "`vgpu ps {}` while alpha still holds its memory:",
        containers_dir.display()
    ));
    say("");
    if let Ok(reports) = crate::ps::gather(&containers_dir) {
        for line in crate::ps::render_table(&reports, 78).lines() {
            say(format!("  {line}").trim_end());
        }
    }
    let alpha_usage = alpha.usage();
    alpha.stop();
    beta.stop();
    say("");
    let ok = summary(&alpha, alpha_usage, &beta);
    if keep {
        say(&format!(
            "\nKept {} (regions under containers/).",
            work.path.display()
        ));
    }
    Ok(if ok { 0 } else { 1 })
}

fn say(line: &str) {
    println!("{line}");
}

/// `text` indented by `indent` and wrapped to 80 columns, continuation lines indented by `hang`.
fn say_wrapped(indent: usize, hang: usize, text: &str) {
    let pad = " ".repeat(indent);
    say(&format!(
        "{pad}{}",
        format::wrap(text.trim(), 80 - indent, hang)
    ));
}

fn live_table(elapsed: Duration, containers: &[&Container]) -> String {
    let mut out = format!(
        "  {:<9}  {:<16}  {:<21}  {:>8}  {}\n",
        format!("t={:>2}s", elapsed.as_secs()),
        "LIMITS",
        "MEMORY USED / LIMIT",
        "SM SHARE",
        "STATE"
    );
    for c in containers {
        let memory = match c.memory() {
            Some((used, limit)) => format::used_of_limit(used, limit),
            None => "-".to_string(),
        };
        let share = c
            .shares()
            .last()
            .map_or("-".to_string(), |s| format!("{s}%"));
        let line = format!(
            "  {:<9}  {:<16}  {:<21}  {:>8}  {}",
            c.name,
            c.limits,
            memory,
            share,
            c.state()
        );
        out.push_str(&format::fit(&line, 80));
        out.push('\n');
    }
    out
}

/// Says what happened, in words. Returns whether the demo showed what it should.
fn summary(alpha: &Container, alpha_usage: Option<regions::DeviceUsage>, beta: &Container) -> bool {
    let mut ok = true;
    say("What happened:");
    match alpha.out_of_memory_line() {
        Some(line) => {
            say(&format!(
                "  alpha hit its {} limit. The program was told:",
                format::bytes(ALPHA_MEMORY_BYTES)
            ));
            say_wrapped(4, 4, line.trim_start_matches("alloc: "));
            if let Some(usage) = alpha_usage.filter(|u| u.context_bytes > 0) {
                say_wrapped(
                    4,
                    4,
                    &format!(
                        "Of the {} in use, {} is its CUDA context: vgpu counts that too, as HAMi-core does.",
                        format::bytes(usage.total_bytes),
                        format::bytes(usage.context_bytes)
                    ),
                );
            }
            say_wrapped(
                4,
                4,
                "The GPU had plenty free: vgpu refused the allocation, and the program saw an \
                 ordinary CUDA out-of-memory error.",
            );
            // The library's own line about it (LIBCUDA_LOG_LEVEL 1 and up), if it wrote one.
            if let Some(log) = alpha
                .lines()
                .iter()
                .find(|l| l.starts_with("vgpu[") && l.contains("limit"))
            {
                say("    libvgpu.so logged:");
                say_wrapped(6, 6, log);
            }
        }
        None => {
            ok = false;
            say("  alpha did NOT hit its memory limit. What it printed:");
            for line in alpha.lines().iter().rev().take(6).rev() {
                say(&format!("    {}", format::fit(line, 76)));
            }
        }
    }
    let shares = beta.shares();
    let average = beta
        .lines()
        .iter()
        .find_map(|l| {
            l.strip_prefix("burn: done: ")
                .and_then(|r| r.split("average share ").nth(1))
                .and_then(|s| s.trim_end_matches('%').parse::<u64>().ok())
        })
        .or_else(|| (!shares.is_empty()).then(|| shares.iter().sum::<u64>() / shares.len() as u64));
    match average {
        Some(share) if share <= BETA_CORES + 15 => say_wrapped(
            2,
            4,
            &format!(
                "beta was limited to {BETA_CORES}% of the GPU and got {share}% of its time on average; \
                 unlimited, its back-to-back kernels would keep the GPU busy all the time."
            ),
        ),
        Some(share) => say_wrapped(
            2,
            4,
            &format!(
                "beta got {share}% of the GPU's time although its compute limit is {BETA_CORES}%: \
                 this libvgpu.so did not throttle it (is the compute limiter built in?)."
            ),
        ),
        None => {
            ok = false;
            say("  beta did not report its share. What it printed:");
            for line in beta.lines().iter().rev().take(6).rev() {
                say(&format!("    {}", format::fit(line, 76)));
            }
        }
    }
    ok
}
