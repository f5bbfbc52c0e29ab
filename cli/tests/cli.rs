//! The `vgpu` command run as a user runs it. Tests that start CUDA workloads need libvgpu.so and the
//! simulated driver (`scripts/build-artifacts.sh`); the rest need only the binary.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::SimMachine;

const DEADLINE: Duration = Duration::from_secs(60);

fn vgpu() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vgpu"))
}

/// A machine with one small simulated GPU, and `vgpu` commands that use it.
fn machine(label: &str) -> SimMachine {
    SimMachine::new(label).with_devices("name=Test GPU,mem=8Gi,sms=16")
}

/// `vgpu ARGS` against this machine's simulated driver, with the built libvgpu.so.
fn vgpu_on(m: &SimMachine, args: &[&str]) -> Command {
    let mut cmd = m.command(vgpu());
    cmd.env("VGPU_LIBRARY", testkit::libvgpu()).args(args);
    cmd
}

/// `vgpu run LIMITS --region REGION -- vgpu __workload WORKLOAD`.
fn workload(m: &SimMachine, region: &Path, limits: &[&str], workload: &[&str]) -> Command {
    let mut cmd = vgpu_on(m, &["run"]);
    cmd.args(limits)
        .arg("--region")
        .arg(region)
        .arg("--")
        .arg(vgpu())
        .arg("__workload")
        .args(workload);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running child whose stdout lines arrive on a channel, so a test can wait for one with a deadline.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line starting with `prefix`; fails the test on a deadline or an early exit.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line starting with {prefix:?}; output so far:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SIGTERM to `vgpu run`, which forwards it to the workload.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "vgpu run did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid_in(line: &str) -> i64 {
    line.split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

// ---------------------------------------------------------------------------------------------------
// vgpu run

#[test]
fn bad_flags_are_explained_before_anything_runs() {
    let dir = testkit::scratch_dir("cli-bad-flags");
    let marker = dir.join("ran");
    for (flags, mentions) in [
        (vec!["--memory", "1.5g"], "--memory"),
        (vec!["--memory", "4GB"], "--memory"),
        (vec!["--memory", "0m"], "--memory"),
        (vec!["--cores", "101"], "--cores"),
        (vec!["--cores", "30", "--devices", "0,0"], "--devices"),
        (vec!["--memory", "1Gi", "--devices", "16"], "--devices"),
    ] {
        let mut cmd = Command::new(vgpu());
        cmd.arg("run")
            .args(&flags)
            .arg("--")
            .arg("touch")
            .arg(&marker);
        let out = testkit::run(&mut cmd, DEADLINE);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(mentions) && stderr.contains("Nothing was run"),
            "{flags:?}: {stderr}"
        );
        assert!(!marker.exists(), "{flags:?}: the command ran");
    }
}

#[test]
fn run_returns_the_command_status_and_128_plus_signal() {
    let m = machine("cli-status");
    let out = testkit::run(
        &mut vgpu_on(&m, &["run", "--memory", "1Gi", "--", "sh", "-c", "exit 7"]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = testkit::run(
        &mut vgpu_on(&m, &["run", "--", "sh", "-c", "kill -TERM $$"]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out.stderr));
    let out = testkit::run(
        &mut vgpu_on(&m, &["run", "--", "/nonexistent/program"]),
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_sets_the_library_and_the_limits() {
    let m = machine("cli-env");
    let mut cmd = vgpu_on(
        &m,
        &[
            "run",
            "--memory",
            "1Gi",
            "--cores",
            "30",
            "--devices",
            "0,1",
            "--",
            "env",
        ],
    );
    cmd.env("CUDA_DEVICE_MEMORY_LIMIT", "9Gi"); // inherited limits must not survive the flags
    let stdout = testkit::run_ok(&mut cmd, DEADLINE);
    let vars: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("CUDA_DEVICE_MEMORY_LIMIT_0"), Some(&"1Gi"));
    assert_eq!(vars.get("CUDA_DEVICE_MEMORY_LIMIT_1"), Some(&"1Gi"));
    assert_eq!(vars.get("CUDA_DEVICE_SM_LIMIT_0"), Some(&"30"));
    assert_eq!(vars.get("CUDA_DEVICE_SM_LIMIT_1"), Some(&"30"));
    assert_eq!(vars.get("CUDA_DEVICE_MEMORY_LIMIT"), None);
    let preload = vars.get("LD_PRELOAD").expect("LD_PRELOAD set");
    assert!(
        preload
            .split(':')
            .next()
            .is_some_and(|p| p.ends_with("libvgpu.so")),
        "{preload}"
    );
}

#[test]
fn allocating_past_the_limit_gets_out_of_memory() {
    let m = machine("cli-oom");
    let region = m.dir.join("region.cache");
    let mut cmd = workload(
        &m,
        &region,
        &["--memory", "1Gi"],
        &["alloc", "--chunk", "256Mi", "--total", "2Gi"],
    );
    let out = testkit::run(&mut cmd, DEADLINE);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let oom = stdout
        .lines()
        .find(|l| l.starts_with("alloc: out of memory"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        oom.contains("cuMemAlloc_v2 of 256 MiB failed with CUDA_ERROR_OUT_OF_MEMORY (2)"),
        "{oom}"
    );
    // Refused at the limit: at most 1 GiB was handed out (less when the context counts too), never
    // the 2 GiB asked for.
    let granted = stdout
        .lines()
        .filter(|l| l.starts_with("alloc: +256 MiB"))
        .count();
    assert!(
        (1..=4).contains(&granted),
        "{granted} chunks of 256 MiB under a 1 GiB limit:\n{stdout}"
    );

    // The same program under a limit it fits in gets everything it asks for: the refusal was vgpu's.
    let mut cmd = workload(
        &m,
        &region,
        &["--memory", "4Gi"],
        &["alloc", "--chunk", "256Mi", "--total", "2Gi"],
    );
    let stdout = testkit::run_ok(&mut cmd, DEADLINE);
    assert!(stdout.contains("alloc: reached 2.00 GiB"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------------
// vgpu ps and top

fn ps_json(path: &Path) -> (Option<i32>, serde_json::Value) {
    let out = testkit::run(
        Command::new(vgpu()).arg("ps").arg(path).arg("--json"),
        DEADLINE,
    );
    let value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ps --json is not JSON ({e}):\n{}", text(&out.stdout)));
    (out.status.code(), value)
}

#[test]
fn ps_shows_a_live_process_and_then_its_dead_slot() {
    let m = machine("cli-ps");
    let region = m.dir.join("region.cache");
    let mut holder = Running::start(workload(
        &m,
        &region,
        &["--memory", "1Gi"],
        &[
            "alloc",
            "--chunk",
            "512Mi",
            "--total",
            "512Mi",
            "--hold-secs",
            "120",
        ],
    ));
    let pid = pid_in(&holder.wait_for("alloc: pid"));
    holder.wait_for("alloc: holding");

    let (code, json) = ps_json(&region);
    assert_eq!(code, Some(0), "{json}");
    let region_json = &json["regions"][0];
    assert_eq!(region_json["error"], serde_json::Value::Null, "{json}");
    assert_eq!(
        region_json["devices"][0]["limit_bytes"],
        1u64 << 30,
        "{json}"
    );
    let process = region_json["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} not in {json}"));
    assert_eq!(process["state"], "running", "{process}");
    assert_eq!(process["alive"], true);
    let used = process["devices"][0]["used_bytes"]
        .as_u64()
        .expect("used_bytes");
    assert!(used >= 512 << 20, "used {used} < 512 MiB: {process}");
    assert!(
        region_json["devices"][0]["used_bytes"].as_u64() >= Some(512 << 20),
        "{json}"
    );

    // The table says the same, in 80 columns.
    let table = testkit::run_ok(Command::new(vgpu()).arg("ps").arg(&region), DEADLINE);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .expect("row");
    assert!(
        row.contains("/ 1.00 GiB") && row.ends_with("running"),
        "{table}"
    );
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");

    // Killed by SIGTERM without a chance to clean up (the library installs no signal handlers, and no
    // other process has reclaimed the slot yet): the slot stays, and ps says its process is gone.
    holder.stop();
    let (_, json) = ps_json(&region);
    let process = json["regions"][0]["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
        .cloned()
        .unwrap_or_else(|| panic!("the dead slot of {pid} is gone: {json}"));
    assert_eq!(process["alive"], false, "{process}");
    assert_eq!(process["state"], "dead", "{process}");
}

#[test]
fn ps_and_exporter_report_corrupt_regions_without_failing() {
    let dir = testkit::scratch_dir("cli-corrupt");
    let good = dir.join("pod-good_main");
    let bad = dir.join("pod-bad_main");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&bad).unwrap();
    // 636 MiB of data + 64 MiB of context = 700 MiB.
    std::fs::write(good.join("r.cache"), synthetic_region(1 << 30, 636 << 20)).unwrap();
    let mut wrong_magic = synthetic_region(1 << 30, 0);
    wrong_magic[0..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    std::fs::write(bad.join("r.cache"), wrong_magic).unwrap();
    std::fs::write(
        bad.join("truncated.cache"),
        &synthetic_region(1 << 30, 0)[..4096],
    )
    .unwrap();

    let out = testkit::run(Command::new(vgpu()).arg("ps").arg(&dir), DEADLINE);
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert_eq!(table.matches("unreadable").count(), 2, "{table}");
    assert!(table.contains("700 MiB / 1.00 GiB"), "{table}");

    let (code, json) = ps_json(&dir);
    assert_eq!(code, Some(1));
    let errors: Vec<bool> = json["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].is_string())
        .collect();
    assert_eq!(errors, [true, true, false], "{json}");

    let exporter = Exporter::start(&dir);
    let metrics = parse_exposition(&exporter.scrape());
    let used = metrics.series("hami_vgpu_memory_used_bytes");
    assert_eq!(used.len(), 1, "only the good region: {used:?}");
    assert_eq!(used[0].labels["pod"], "pod-good");
    assert_eq!(used[0].value, (700u64 << 20) as f64);
    assert_eq!(
        metrics.value("vgpu_exporter_region_files", &[("state", "unreadable")]),
        Some(2.0)
    );
    // Deleted between scrapes: still serving.
    std::fs::remove_dir_all(&good).unwrap();
    let metrics = parse_exposition(&exporter.scrape());
    assert!(metrics.series("hami_vgpu_memory_used_bytes").is_empty());
    let log = exporter.stop();
    assert!(
        log.contains("skipping") && log.contains("truncated.cache"),
        "{log}"
    );
}

#[test]
fn top_redraws_and_stops() {
    let dir = testkit::scratch_dir("cli-top");
    std::fs::write(
        dir.join("r.cache"),
        synthetic_region(2 << 30, (1 << 30) - (64 << 20)),
    )
    .unwrap();
    let stdout = testkit::run_ok(
        Command::new(vgpu())
            .args(["top", "-n", "2", "--interval", "0.1"])
            .arg(dir.join("r.cache")),
        DEADLINE,
    );
    assert_eq!(stdout.matches("vgpu top").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("1.00 GiB / 2.00 GiB").count(), 4, "{stdout}");
}

#[test]
fn every_command_has_help_with_examples_in_80_columns() {
    for sub in [
        &[][..],
        &["run"],
        &["ps"],
        &["top"],
        &["exporter"],
        &["demo"],
    ] {
        let mut cmd = Command::new(vgpu());
        cmd.args(sub).arg("--help").env("COLUMNS", "200");
        let out = testkit::run_ok(&mut cmd, DEADLINE);
        assert!(out.contains("Examples:"), "{sub:?}:\n{out}");
        for line in out.lines() {
            assert!(
                line.chars().count() <= 80,
                "{sub:?}: {} columns: {line}",
                line.chars().count()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// vgpu exporter

struct Exporter {
    child: Child,
    address: String,
    stderr_path: PathBuf,
}

impl Exporter {
    fn start(dir: &Path) -> Exporter {
        let stderr_path = dir.with_extension("exporter.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(vgpu())
            .args(["exporter", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn exporter");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let address = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|a| a.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        Exporter {
            child,
            address,
            stderr_path,
        }
    }

    fn get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("header end");
        (head.to_string(), body.to_string())
    }

    fn scrape(&self) -> String {
        let (head, body) = self.get("/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.parse().ok())
            .expect("Content-Length");
        assert_eq!(length, body.len());
        body
    }

    /// Stops it and returns what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HAMI_FAMILIES: [&str; 8] = [
    "hami_vgpu_memory_used_bytes",
    "hami_vgpu_memory_limit_bytes",
    "hami_container_device_memory_bytes",
    "hami_vgpu_memory_context_bytes",
    "hami_vgpu_memory_module_bytes",
    "hami_vgpu_memory_buffer_bytes",
    "hami_container_device_utilization_ratio",
    "hami_container_last_kernel_elapsed_seconds",
];

#[test]
fn exporter_serves_hami_metrics_for_a_live_container() {
    let m = machine("cli-exporter");
    let containers = m.dir.join("containers");
    let ctr_dir = containers.join("5f0c7a8e-3b1d-4c2a-9e6f-7d8c9b0a1e2f_trainer");
    std::fs::create_dir_all(&ctr_dir).unwrap();
    let region = ctr_dir.join("vgpu.cache");
    let mut holder = Running::start(workload(
        &m,
        &region,
        &["--memory", "2Gi"],
        &[
            "alloc",
            "--chunk",
            "256Mi",
            "--total",
            "768Mi",
            "--hold-secs",
            "120",
        ],
    ));
    holder.wait_for("alloc: holding");

    let exporter = Exporter::start(&containers);
    let metrics = parse_exposition(&exporter.scrape());
    for family in HAMI_FAMILIES.iter().take(7) {
        assert_eq!(
            metrics.types.get(*family).map(String::as_str),
            Some("gauge"),
            "{family}"
        );
        let series = metrics.series(family);
        assert_eq!(series.len(), 1, "{family}: {series:?}");
        let labels: Vec<&str> = series[0].labels.keys().map(String::as_str).collect();
        assert_eq!(
            labels,
            [
                "container",
                "device_uuid",
                "namespace",
                "pod",
                "vdevice_index",
                "zone"
            ],
            "{family}"
        );
        assert_eq!(
            series[0].labels["pod"],
            "5f0c7a8e-3b1d-4c2a-9e6f-7d8c9b0a1e2f"
        );
        assert_eq!(series[0].labels["container"], "trainer");
        assert_eq!(series[0].labels["vdevice_index"], "0");
        assert_eq!(series[0].labels["zone"], "vGPU");
        assert!(
            series[0].labels["device_uuid"].starts_with("GPU-"),
            "{:?}",
            series[0].labels
        );
    }
    let one = |name: &str| metrics.series(name)[0].value;
    assert_eq!(one("hami_vgpu_memory_limit_bytes"), (2u64 << 30) as f64);
    assert!(one("hami_vgpu_memory_used_bytes") >= (768u64 << 20) as f64);
    assert_eq!(
        one("hami_container_device_memory_bytes"),
        one("hami_vgpu_memory_used_bytes")
    );
    assert!(one("hami_vgpu_memory_buffer_bytes") >= (768u64 << 20) as f64);

    let (head, _) = exporter.get("/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    holder.stop();
    exporter.stop();
}

#[test]
fn exporter_reads_a_region_written_from_the_contract() {
    // Independent of libvgpu.so: a region laid out from hami-contract.md section 3 alone.
    let dir = testkit::scratch_dir("cli-exporter-synthetic");
    let ctr = dir.join("pod-x_ctr");
    std::fs::create_dir_all(&ctr).unwrap();
    std::fs::write(ctr.join("r.cache"), synthetic_region(3 << 30, 1 << 30)).unwrap();
    std::fs::write(ctr.join("libvgpu.so"), b"").unwrap(); // HAMi's bind-mount placeholder: ignored
    let exporter = Exporter::start(&dir);
    let metrics = parse_exposition(&exporter.scrape());
    let labels = [
        ("namespace", ""),
        ("pod", "pod-x"),
        ("container", "ctr"),
        ("vdevice_index", "0"),
        ("device_uuid", SYNTHETIC_UUID),
        ("zone", "vGPU"),
    ];
    assert_eq!(
        metrics.value("hami_vgpu_memory_limit_bytes", &labels),
        Some((3u64 << 30) as f64)
    );
    assert_eq!(
        metrics.value("hami_vgpu_memory_used_bytes", &labels),
        Some(((1u64 << 30) + (64 << 20)) as f64)
    );
    assert_eq!(
        metrics.value("hami_vgpu_memory_context_bytes", &labels),
        Some((64u64 << 20) as f64)
    );
    assert_eq!(
        metrics.value("hami_vgpu_memory_buffer_bytes", &labels),
        Some((1u64 << 30) as f64)
    );
    assert_eq!(
        metrics.value("hami_container_device_utilization_ratio", &labels),
        Some(42.0)
    );
    let elapsed = metrics
        .value("hami_container_last_kernel_elapsed_seconds", &labels)
        .expect("last kernel");
    assert!(elapsed >= 0.0, "{elapsed}");
    // The exited slot (status 0) is not counted, as HAMi's monitor does not count it.
    exporter.stop();
}

// ---------------------------------------------------------------------------------------------------
// vgpu demo

#[test]
fn the_demo_shows_the_memory_limit_and_the_compute_share() {
    let _ = (testkit::libvgpu(), testkit::sim_dir());
    let mut cmd = Command::new(vgpu());
    cmd.args(["demo", "--seconds", "3"])
        .env("VGPU_LIBRARY", testkit::libvgpu())
        .env("VGPU_SIM_DIR", testkit::sim_dir());
    let out = testkit::run(&mut cmd, Duration::from_secs(90));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("alpha hit its 1.00 GiB limit"), "{stdout}");
    assert!(stdout.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{stdout}");
    assert!(stdout.contains("beta"), "{stdout}");
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= 80,
            "longer than 80 columns: {line:?}\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// A region file from hami-contract.md section 3, and a strict Prometheus text-format parser.

const SYNTHETIC_UUID: &str = "GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

/// One device with `limit` bytes; slot 0 (pid 1, running) uses `data` + 64 MiB of context and 42% SM;
/// slot 1 has exited (status 0) and must not count.
fn synthetic_region(limit: u64, data: u64) -> Vec<u8> {
    let mut b = vec![0u8; 2_008_953];
    let put32 =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 4, 1); // major
    put32(&mut b, 8, 2); // minor
    put64(&mut b, 56, 1); // device_num
    b[64..64 + SYNTHETIC_UUID.len()].copy_from_slice(SYNTHETIC_UUID.as_bytes());
    put64(&mut b, 1600, limit);
    put64(&mut b, 1728, 100);
    for (k, pid, status, data, sm) in [(0usize, 1u32, 1u32, data, 42u64), (1, 0, 0, 5 << 30, 7)] {
        let slot = 1856 + 1960 * k;
        put32(&mut b, slot, pid);
        let context = 64u64 << 20;
        put64(&mut b, slot + 8, context);
        put64(&mut b, slot + 8 + 16, data);
        put64(&mut b, slot + 8 + 32, context + data);
        put64(&mut b, slot + 1160 + 16, sm);
        put32(&mut b, slot + 1928, status);
    }
    put32(&mut b, 2_008_896, 2); // proc_num
    put32(&mut b, 2_008_900, 1); // utilization_switch
    put32(&mut b, 2_008_908, 1); // priority
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    put64(&mut b, 2_008_912, now - 5);
    put32(&mut b, 0, 19_920_718); // magic last, as the library writes it
    b
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    helps: HashMap<String, String>,
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn series(&self, name: &str) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the text exposition format strictly: HELP/TYPE at most once per family and before its
/// samples, a TYPE for every family, families not interleaved, label syntax and escapes, float values,
/// no duplicate series, a final newline.
fn parse_exposition(body: &str) -> Exposition {
    assert!(body.ends_with('\n'), "the body must end with a newline");
    let mut out = Exposition::default();
    let mut finished_families: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut seen_series = std::collections::HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            let keyword = words.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a comment
            }
            let name = words
                .next()
                .unwrap_or_else(|| panic!("{at}: no metric name"));
            let text = words.next().unwrap_or("");
            assert!(is_metric_name(name), "{at}: bad metric name");
            assert!(
                !finished_families.contains(&name.to_string()),
                "{at}: family {name} interleaved"
            );
            assert!(
                out.samples.last().is_none_or(|s| s.name != name),
                "{at}: {keyword} after samples"
            );
            if current.as_deref() != Some(name) {
                if let Some(previous) = current.take() {
                    finished_families.push(previous);
                }
                current = Some(name.to_string());
            }
            let map = if keyword == "HELP" {
                &mut out.helps
            } else {
                &mut out.types
            };
            if keyword == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&text),
                    "{at}: unknown type"
                );
            }
            assert!(
                map.insert(name.to_string(), text.to_string()).is_none(),
                "{at}: second {keyword}"
            );
            continue;
        }
        assert!(!line.is_empty(), "{at}: empty line");
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("{at}: no value"));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "{at}: bad metric name");
        assert!(out.types.contains_key(name), "{at}: sample before its TYPE");
        assert!(
            !finished_families.contains(&name.to_string()),
            "{at}: family {name} interleaved"
        );
        assert_eq!(
            current.as_deref(),
            Some(name),
            "{at}: sample outside its family's block"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest
                    .find('=')
                    .unwrap_or_else(|| panic!("{at}: label without ="));
                let label = &rest[..eq];
                assert!(is_label_name(label), "{at}: bad label name {label:?}");
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("{at}: unquoted label value"));
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("{at}: bad escape {other:?}"),
                        },
                        Some((_, '\n')) | None => panic!("{at}: unterminated label value"),
                        Some((_, c)) => value.push(c),
                    }
                };
                assert!(
                    labels.insert(label.to_string(), value).is_none(),
                    "{at}: label {label} twice"
                );
                rest = &rest[end + 1..];
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                } else {
                    assert!(rest.starts_with('}'), "{at}: expected , or }}");
                }
            }
        }
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before value"))
            .split(' ');
        let value_text = fields.next().unwrap_or("");
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{at}: bad value {v:?}")),
        };
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .unwrap_or_else(|_| panic!("{at}: bad timestamp"));
        }
        assert!(fields.next().is_none(), "{at}: trailing fields");
        assert!(
            seen_series.insert(format!("{name}{labels:?}")),
            "{at}: duplicate series"
        );
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

#[test]
fn the_exposition_parser_is_strict() {
    let good = "# HELP a x\n# TYPE a gauge\na{l=\"v\\\"q\"} 1\na 2.5\n";
    assert_eq!(parse_exposition(good).samples.len(), 2);
    for bad in [
        "a 1\n",                                      // no TYPE
        "# TYPE a gauge\na{l=v} 1\n",                 // unquoted
        "# TYPE a gauge\na 1\na 1\n",                 // duplicate series
        "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n", // a interleaved
        "# TYPE a gauge\na x\n",                      // bad value
        "# TYPE a gauge\na 1",                        // no final newline
        "# TYPE a gauge\na{l=\"\\x\"} 1\n",           // bad escape
    ] {
        let result = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}
