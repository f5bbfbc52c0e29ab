//! What the device plugin tests share: an in-test kubelet that speaks the real v1beta1 protocol over
//! unix sockets, an in-test API server on 127.0.0.1 that records every request, and the plugin binary
//! run against the simulated NVML.
#![allow(dead_code, unused_imports)]

pub mod apiserver;
pub mod kubelet;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub use apiserver::FakeApiServer;
pub use kubelet::FakeKubelet;

/// Two simulated GPUs with fixed UUIDs.
pub const GPU_A: &str = "GPU-aaaaaaaa-0000-4000-8000-000000000001";
pub const GPU_B: &str = "GPU-bbbbbbbb-0000-4000-8000-000000000002";
pub const DEVICES: &str = "name=NVIDIA A100-SXM4-40GB,uuid=GPU-aaaaaaaa-0000-4000-8000-000000000001,mem=40Gi,pci=00000000:3B:00.0;\
name=NVIDIA L4,uuid=GPU-bbbbbbbb-0000-4000-8000-000000000002,mem=24Gi,pci=00000000:5E:00.0";
pub const NODE: &str = "node-a";

/// A deadline for anything a test awaits: a hang fails the test instead of the suite.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing after {DEADLINE:?}"),
    }
}

/// The `vgpu-device-plugin serve` process, killed when dropped. Its stderr goes to a file the test
/// can read (the log is part of the behaviour: reasons for bad input are reported there).
pub struct PluginProcess {
    child: Child,
    pub log: PathBuf,
}

pub struct Setup {
    pub machine: testkit::SimMachine,
    pub plugin_dir: PathBuf,
    pub hook_dir: PathBuf,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(label: &str, config: &str) -> Setup {
        let machine = testkit::SimMachine::new(label).with_devices(DEVICES);
        // unix socket paths are limited to 108 bytes: keep the kubelet directory short.
        let plugin_dir = short_dir(label);
        let hook_dir = machine.dir.join("vgpu");
        std::fs::create_dir_all(hook_dir.join("containers")).unwrap();
        std::fs::write(hook_dir.join("libvgpu.so"), b"\x7fELF placeholder").unwrap();
        std::fs::write(
            hook_dir.join("ld.so.preload"),
            b"/usr/local/vgpu/libvgpu.so\n",
        )
        .unwrap();
        let config_path = machine.dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        Setup {
            machine,
            plugin_dir,
            hook_dir,
            config: config_path,
        }
    }

    /// Starts the plugin. `api` is the in-test API server, if any; `extra_env` e.g. SIMGPU_DEVICE_LOST.
    pub fn start_plugin(
        &self,
        api: Option<&FakeApiServer>,
        extra_env: &[(&str, &str)],
    ) -> PluginProcess {
        let log = self.machine.dir.join(format!("plugin-{}.log", now_nanos()));
        let mut cmd = self
            .machine
            .command(env!("CARGO_BIN_EXE_vgpu-device-plugin"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--plugin-dir")
            .arg(&self.plugin_dir)
            .arg("--hook-dir")
            .arg(&self.hook_dir)
            .args([
                "--node-name",
                NODE,
                "--health-interval",
                "100ms",
                "--register-interval",
                "200ms",
            ])
            .args(["--kubelet-poll-interval", "100ms"]);
        match api {
            Some(api) => cmd.args(["--api-server", &api.url()]),
            None => cmd.arg("--no-api-server"),
        };
        cmd.env_remove("KUBERNETES_SERVICE_HOST");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let stderr = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the plugin");
        PluginProcess { child, log }
    }
}

impl PluginProcess {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (the plugin logs asynchronously to the test).
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the plugin exited ({status}) before logging {needle:?}; log:\n{text}");
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no {needle:?} in the plugin's log after {DEADLINE:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- plugin log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A fresh, short directory under /tmp (unix socket paths must stay under 108 bytes).
pub fn short_dir(label: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/vgpu-k8s-{}-{}-{}",
        label,
        std::process::id(),
        now_nanos() % 1_000_000_000
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
