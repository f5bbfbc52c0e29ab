//! `vgpu-device-plugin`: the Kubernetes side of vgpu on a node.
//!
//! - `serve`: the device plugin (kubelet API v1beta1; HAMi's scheduler protocol when its annotations
//!   are present, fixed slices from the node configuration otherwise);
//! - `monitor-gc`: removes per-container directories of pods that are gone (runs beside
//!   `vgpu exporter` in the node monitor);
//! - `install`: puts `libvgpu.so` and `ld.so.preload` on the host, atomically.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use vgpu_k8s::allocate::HostLayout;
use vgpu_k8s::config::NodeConfig;
use vgpu_k8s::gc::{gc_once, GcOptions};
use vgpu_k8s::gpus::NvmlSource;
use vgpu_k8s::kube::KubeClient;
use vgpu_k8s::plugin::{Plugin, PluginOptions};
use vgpu_k8s::{api, log_error, log_info, log_warn, nvml};

#[derive(Parser)]
#[command(
    name = "vgpu-device-plugin",
    version,
    about = "vgpu's Kubernetes device plugin, node monitor cleanup and host installer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve(ServeArgs),
    MonitorGc(GcArgs),
    Install(InstallArgs),
}

/// How to reach the API server. Default: in-cluster (service account) when KUBERNETES_SERVICE_HOST is
/// set, else none.
#[derive(Args)]
struct ApiArgs {
    /// API server base URL (http:// or https://), instead of the in-cluster address.
    #[arg(long, value_name = "URL")]
    api_server: Option<String>,
    /// Bearer token file for --api-server.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA bundle for an https --api-server.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Run without the API server even in a cluster (fixed slices, no pod names, no annotations).
    #[arg(long, conflicts_with = "api_server")]
    no_api_server: bool,
    /// This node's name. Default: $NODE_NAME (set it from spec.nodeName with the downward API).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
}

impl ApiArgs {
    fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }

    fn client(&self) -> Result<Option<KubeClient>, String> {
        if self.no_api_server {
            return Ok(None);
        }
        match &self.api_server {
            Some(url) => {
                KubeClient::new(url, self.token_file.clone(), self.ca_file.as_deref()).map(Some)
            }
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                KubeClient::in_cluster().map(Some)
            }
            None => Ok(None),
        }
    }
}

/// Serve the kubelet device plugin API for the node's GPUs.
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Node configuration (TOML; deploy/configmap.yaml documents it). Missing flag: built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The kubelet's device plugin directory.
    #[arg(long, value_name = "DIR", default_value = api::DEFAULT_PLUGIN_DIR)]
    plugin_dir: PathBuf,
    /// Our socket's name in --plugin-dir.
    #[arg(long, value_name = "NAME", default_value = "vgpu.sock")]
    socket_name: String,
    /// Host directory with libvgpu.so, ld.so.preload and containers/ (HAMi's layout).
    #[arg(long, value_name = "DIR", default_value = "/usr/local/vgpu")]
    hook_dir: PathBuf,
    /// NVML library to dlopen.
    #[arg(long, value_name = "LIB", default_value = nvml::DEFAULT_LIBRARY)]
    nvml_library: String,
    /// How often GPU health is polled.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    health_interval: Duration,
    /// How often the hami.io/node-nvidia-register annotation is checked.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    register_interval: Duration,
    /// How often the kubelet socket is checked for a kubelet restart.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    kubelet_poll_interval: Duration,
}

/// Remove per-container directories of pods that are no longer on this node.
#[derive(Args)]
struct GcArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The containers directory.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/vgpu/containers")]
    dir: PathBuf,
    /// Time between passes.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    interval: Duration,
    /// A directory is removed only once this old (its pod may be starting).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    grace: Duration,
    /// One pass, then exit.
    #[arg(long)]
    once: bool,
}

/// Install libvgpu.so and ld.so.preload into the host directory (temp file + rename).
#[derive(Args)]
struct InstallArgs {
    /// The library to install.
    #[arg(long, value_name = "FILE", default_value = "/opt/vgpu/lib/libvgpu.so")]
    library: PathBuf,
    /// Host directory (mounted from the host).
    #[arg(long, value_name = "DIR", default_value = "/usr/local/vgpu")]
    hook_dir: PathBuf,
    /// Also written as libvgpu.so.<VERSION>, which Allocate prefers.
    #[arg(long, value_name = "VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    library_version: String,
    /// Keep running after installing (the DaemonSet's container), until SIGTERM.
    #[arg(long)]
    stay: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (ms, s, m, h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(d)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log_error!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::MonitorGc(args) => monitor_gc(args).await,
            Command::Install(args) => install(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log_error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let node_name = args.api.node_name();
    let config = match &args.config {
        None => NodeConfig::default(),
        Some(path) => match NodeConfig::load(path, node_name.as_deref().unwrap_or("")) {
            Ok(c) => c,
            Err(e) => {
                // Keep serving: the defaults hand out even shares, which never oversubscribe a GPU.
                log_error!("{e}; using the built-in defaults (even shares, split count 10) until it is fixed and the plugin restarts");
                NodeConfig::default()
            }
        },
    };
    let kube = args.api.client()?;
    match (&kube, &node_name) {
        (Some(_), Some(node)) => log_info!("node {node}: pods are looked up through the API server"),
        (Some(_), None) => log_warn!("no node name (--node-name or $NODE_NAME): pods cannot be looked up"),
        (None, _) => log_warn!("no API server: fixed slices only, without pod names, CUDA_DISABLE_CONTROL or HAMi annotations"),
    }
    let source = NvmlSource::open(&args.nvml_library)?;
    let options = PluginOptions {
        plugin_dir: args.plugin_dir,
        socket_name: args.socket_name,
        node_name,
        layout: HostLayout {
            hook_dir: args.hook_dir,
            library_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        health_interval: args.health_interval,
        register_interval: args.register_interval,
        kubelet_poll_interval: args.kubelet_poll_interval,
    };
    let plugin = Plugin::new(options, config, Arc::new(source), kube)?;
    plugin.run(terminated()).await;
    Ok(())
}

async fn monitor_gc(args: GcArgs) -> Result<(), String> {
    let kube = args
        .api
        .client()?
        .ok_or("monitor-gc needs the API server (in a cluster, or --api-server)")?;
    let node_name = args
        .api
        .node_name()
        .ok_or("monitor-gc needs --node-name or $NODE_NAME")?;
    let options = GcOptions {
        dir: args.dir,
        node_name,
        grace: args.grace,
    };
    let mut stop = std::pin::pin!(terminated());
    loop {
        match gc_once(&kube, &options).await {
            Ok(report) if args.once => {
                log_info!(
                    "removed {} director(ies), kept {}",
                    report.removed.len(),
                    report.kept
                );
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if args.once => return Err(e),
            Err(e) => log_warn!("{e}; nothing removed this time"),
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

async fn install(args: InstallArgs) -> Result<(), String> {
    let actions = vgpu_k8s::install::install(&args.library, &args.hook_dir, &args.library_version)
        .map_err(|e| format!("install into {}: {e}", args.hook_dir.display()))?;
    for line in actions {
        log_info!("{line}");
    }
    if args.stay {
        terminated().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
