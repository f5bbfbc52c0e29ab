//! `vgpu`: run programs under GPU limits, look at what the limited processes use, export it to
//! Prometheus, and show it all on a simulated GPU.

mod demo;
mod exporter;
mod format;
mod limits;
mod locate;
mod ps;
mod regions;
mod run;
mod sys;
mod workload;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vgpu",
    version,
    max_term_width = 80,
    about = "GPU sharing for containers: run programs under memory and compute limits, and watch them",
    after_help = "Examples:
  vgpu demo                                  two containers sharing a simulated GPU
  vgpu run --memory 4Gi --cores 30 -- python train.py
  vgpu ps /usr/local/vgpu/containers         every container's processes on this node
  vgpu exporter --listen :9394               Prometheus metrics, HAMi's names"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Ps(PsArgs),
    Top(TopArgs),
    Exporter(ExporterArgs),
    Demo(DemoArgs),
    /// Small CUDA programs for the demo and the tests (not for people).
    #[command(name = "__workload", hide = true)]
    Workload {
        #[command(subcommand)]
        kind: WorkloadKind,
    },
}

/// Run a command with libvgpu.so preloaded and GPU limits set.
///
/// The limits go into the command's environment as HAMi-core's variables (CUDA_DEVICE_MEMORY_LIMIT,
/// CUDA_DEVICE_SM_LIMIT, or their _<i> forms with --devices), replacing any inherited ones. Every flag is
/// checked before anything runs. vgpu exits with the command's status, or 128 + the signal that killed
/// it. libvgpu.so is taken from $VGPU_LIBRARY, else next to this binary, else ../lib.
#[derive(Args)]
#[command(after_help = "Examples:
  vgpu run --memory 4Gi --cores 30 -- python train.py
  vgpu run --memory 8Gi --devices 0,1 -- ./serve     8 GiB on each of GPUs 0 and 1
  vgpu run --memory 2Gi --region /tmp/a.cache -- ./job
                                 processes that share a region share its limits")]
struct RunArgs {
    /// Device memory limit: DIGITS[UNIT], UNIT k/Ki/KiB, m/Mi/MiB, g/Gi/GiB, t/Ti/TiB (powers of 1024);
    /// 0 = no limit.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Compute limit, percent of the device's SMs (0..100; 0 and 100 = no limit).
    #[arg(long, value_name = "PERCENT")]
    cores: Option<String>,
    /// Apply the limits to these device indices only (comma list, 0..15), one variable per device.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Region file shared by the processes of one container (CUDA_DEVICE_MEMORY_SHARED_CACHE).
    #[arg(long, value_name = "PATH")]
    region: Option<PathBuf>,
    /// Task priority for HAMi's monitor (CUDA_TASK_PRIORITY): 0 high, 1 low.
    #[arg(long, value_name = "N")]
    priority: Option<String>,
    /// The command and its arguments (after --).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

/// List the processes of a region file, or of every region under a directory.
///
/// One row per process and device: memory used of the device's limit, the process's recent SM share
/// (as the library last sampled it) and its state. A slot whose process is gone is shown as "dead", and
/// one whose pid now belongs to a later process as "dead (pid reused)". Liveness is judged in vgpu's own
/// PID namespace: run it inside the container, or on the host with VGPU_PID_NAMESPACE=host to use the
/// host pids the library recorded. Exit status 1 when a region could not be read.
#[derive(Args)]
#[command(after_help = "Examples:
  vgpu ps                             this container's region, else the node's
  vgpu ps /usr/local/vgpu/containers  every container on a HAMi node
  vgpu ps /tmp/a.cache --json")]
struct PsArgs {
    /// A region file, or a directory holding them (HAMi's containers/<podUID>_<ctr>/*.cache layout).
    /// Default: $CUDA_DEVICE_MEMORY_SHARED_CACHE, else /usr/local/vgpu/containers, else
    /// /tmp/cudevshr.cache.
    path: Option<PathBuf>,
    /// Print JSON (every field of every region) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Watch the processes of one or more regions, redrawn every second (q or Ctrl-C quits).
#[derive(Args)]
#[command(after_help = "Examples:
  vgpu top /usr/local/vgpu/containers
  vgpu top /tmp/a.cache --interval 0.5")]
struct TopArgs {
    /// Same as for `vgpu ps`.
    path: Option<PathBuf>,
    /// Seconds between redraws.
    #[arg(long, default_value = "1", value_name = "SECONDS")]
    interval: f64,
    /// Stop after this many redraws.
    #[arg(short = 'n', long, value_name = "N")]
    count: Option<u64>,
}

/// Serve Prometheus metrics for every region under a directory, with HAMi's names and labels.
///
/// Series: hami_vgpu_memory_used_bytes, hami_vgpu_memory_limit_bytes,
/// hami_container_device_memory_bytes, hami_vgpu_memory_{context,module,buffer}_bytes,
/// hami_container_device_utilization_ratio, hami_container_last_kernel_elapsed_seconds, labelled
/// namespace, pod, container, vdevice_index, device_uuid and zone="vGPU". Without the Kubernetes API the
/// pod's name and namespace are unknown: `pod` is the pod UID from the directory name <podUID>_<ctr>,
/// `container` the container name, and `namespace` is empty. Unreadable regions are skipped and logged
/// once. The bound address is printed first (useful with port 0).
#[derive(Args)]
#[command(after_help = "Examples:
  vgpu exporter              :9394 and /usr/local/vgpu/containers (HAMi's)
  vgpu exporter --listen 127.0.0.1:0 --dir /tmp/regions
  curl -s localhost:9394/metrics | grep hami_vgpu_memory_used_bytes")]
struct ExporterArgs {
    /// Address to listen on: HOST:PORT, or :PORT for every interface.
    #[arg(long, default_value = ":9394", value_name = "ADDR")]
    listen: String,
    /// Directory of per-container region directories.
    #[arg(long, default_value = "/usr/local/vgpu/containers", value_name = "DIR")]
    dir: PathBuf,
}

/// Show what vgpu does, on a simulated GPU: two containers, one memory limit hit, one compute share.
///
/// Needs the simulated driver (target/sim, or $VGPU_SIM_DIR) and libvgpu.so, both built by
/// scripts/build-artifacts.sh. Takes under a minute; nothing outside a temporary directory is touched.
#[derive(Args)]
#[command(after_help = "Examples:
  scripts/demo.sh            build everything, then run this
  vgpu demo --seconds 10")]
struct DemoArgs {
    /// How long the compute-limited container runs.
    #[arg(long, default_value = "15", value_name = "SECONDS")]
    seconds: u64,
    /// Keep the temporary directory (regions, simulator state) for a look afterwards.
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand)]
enum WorkloadKind {
    /// Allocate device memory in chunks until a total or out of memory; exit 2 on out of memory.
    Alloc {
        #[arg(long, default_value = "256Mi")]
        chunk: String,
        #[arg(long)]
        total: Option<String>,
        #[arg(long, default_value_t = 0)]
        device: i32,
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
        #[arg(long, default_value_t = 0.0)]
        hold_secs: f64,
    },
    /// Launch kernels of a fixed device time in a loop and report the achieved share.
    Burn {
        #[arg(long, default_value_t = 1000)]
        kernel_us: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 0)]
        device: i32,
        #[arg(long, default_value_t = 1000)]
        report_ms: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let (name, outcome) = match cli.command {
        Command::Run(args) => ("run", run_command(args)),
        Command::Ps(args) => (
            "ps",
            ps::ps(
                &args.path.unwrap_or_else(regions::default_location),
                args.json,
            ),
        ),
        Command::Top(args) => {
            let interval_ms = (args.interval.clamp(0.1, 3600.0) * 1000.0) as u64;
            (
                "top",
                ps::top(
                    &args.path.unwrap_or_else(regions::default_location),
                    interval_ms,
                    args.count,
                ),
            )
        }
        Command::Exporter(args) => ("exporter", exporter::serve(&args.listen, &args.dir)),
        Command::Demo(args) => (
            "demo",
            demo::demo(Duration::from_secs(args.seconds.clamp(3, 120)), args.keep),
        ),
        Command::Workload { kind } => ("__workload", run_workload(kind)),
    };
    let code = match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("vgpu {name}: {message}");
            1
        }
    };
    std::process::exit(code);
}

/// Usage errors exit 2, like clap's own, before anything runs.
const EXIT_USAGE: i32 = 2;

fn run_command(args: RunArgs) -> Result<i32, String> {
    let plan = match run::RunPlan::new(
        args.memory.as_deref(),
        args.cores.as_deref(),
        args.devices.as_deref(),
        args.region,
        args.priority.as_deref(),
    ) {
        Ok(plan) => plan,
        Err(message) => {
            let message = format::wrap(&format!("vgpu run: {message}"), 79, 4);
            eprintln!("{message}\nNothing was run. See `vgpu run --help`.");
            return Ok(EXIT_USAGE);
        }
    };
    run::run(&plan, &args.command)
}

fn run_workload(kind: WorkloadKind) -> Result<i32, String> {
    match kind {
        WorkloadKind::Alloc {
            chunk,
            total,
            device,
            pace_ms,
            hold_secs,
        } => {
            let chunk_bytes = limits::parse_memory(&chunk).map_err(|e| format!("--chunk: {e}"))?;
            let total_bytes = total
                .map(|t| limits::parse_memory(&t).map_err(|e| format!("--total: {e}")))
                .transpose()?;
            if chunk_bytes == 0 {
                return Err("--chunk must be more than 0".into());
            }
            Ok(workload::alloc(&workload::AllocOptions {
                device,
                chunk_bytes,
                total_bytes,
                pace: Duration::from_millis(pace_ms),
                hold: Duration::from_secs_f64(hold_secs.clamp(0.0, 86_400.0)),
            }))
        }
        WorkloadKind::Burn {
            kernel_us,
            seconds,
            device,
            report_ms,
        } => Ok(workload::burn(&workload::BurnOptions {
            device,
            kernel_us: kernel_us.max(1),
            duration: Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0)),
            report_every: Duration::from_millis(report_ms.max(10)),
        })),
    }
}
