//! GPU health reaching the kubelet: a GPU that turns unhealthy (and back) while the plugin runs
//! produces a new ListAndWatch list. The simulated driver fixes SIMGPU_DEVICE_LOST per process, so the
//! transition is scripted here through the plugin's `GpuSource` seam; the gRPC side is the real thing.
//! (`device_plugin.rs` covers the NVML side: a lost simulated GPU is detected and not advertised.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{within, FakeKubelet, GPU_A, GPU_B};
use vgpu_k8s::allocate::HostLayout;
use vgpu_k8s::api::v1beta1::Empty;
use vgpu_k8s::config::NodeConfig;
use vgpu_k8s::gpus::{Gpu, GpuSource, Health};
use vgpu_k8s::plugin::{Plugin, PluginOptions};

struct ScriptedGpus {
    gpus: Vec<Gpu>,
    health: Arc<Mutex<Vec<Health>>>,
}

impl GpuSource for ScriptedGpus {
    fn discover(&self) -> Result<Vec<(Gpu, Health)>, String> {
        Ok(self
            .gpus
            .iter()
            .cloned()
            .zip(self.health.lock().unwrap().iter().cloned())
            .collect())
    }

    fn health(&self, gpu: &Gpu) -> Health {
        self.health.lock().unwrap()[gpu.index as usize].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_changes_reach_list_and_watch() {
    let dir = common::short_dir("health");
    let hook = common::short_dir("health-hook");
    let mut kubelet = FakeKubelet::start(&dir);
    let gpus = vec![
        Gpu {
            index: 0,
            uuid: GPU_A.into(),
            name: "NVIDIA A100-SXM4-40GB".into(),
            memory_bytes: 40 << 30,
            numa: Some(1),
        },
        Gpu {
            index: 1,
            uuid: GPU_B.into(),
            name: "NVIDIA L4".into(),
            memory_bytes: 24 << 30,
            numa: None,
        },
    ];
    let health = Arc::new(Mutex::new(vec![Health::Healthy, Health::Healthy]));
    let source = Arc::new(ScriptedGpus {
        gpus,
        health: health.clone(),
    });
    let options = PluginOptions {
        plugin_dir: dir.clone(),
        socket_name: "vgpu-health.sock".into(),
        node_name: None,
        layout: HostLayout {
            hook_dir: hook.clone(),
            library_version: "0".into(),
        },
        health_interval: Duration::from_millis(50),
        register_interval: Duration::from_secs(30),
        kubelet_poll_interval: Duration::from_millis(50),
    };
    let config = NodeConfig {
        split_count: 2,
        ..NodeConfig::default()
    };
    let plugin = Plugin::new(options, config, source, None).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(plugin.run(async {
        let _ = stop_rx.await;
    }));

    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let list = |r: &vgpu_k8s::api::v1beta1::ListAndWatchResponse| {
        r.devices
            .iter()
            .map(|d| (d.id.clone(), d.health.clone()))
            .collect::<Vec<_>>()
    };
    let first = within("first list", stream.message())
        .await
        .unwrap()
        .unwrap();
    let ids = |u: &str, h: &str| {
        vec![
            (format!("{u}-0"), h.to_string()),
            (format!("{u}-1"), h.to_string()),
        ]
    };
    assert_eq!(
        list(&first),
        [ids(GPU_A, "Healthy"), ids(GPU_B, "Healthy")].concat()
    );
    // NUMA topology is passed for the GPU that has one.
    assert_eq!(first.devices[0].topology.as_ref().unwrap().nodes[0].id, 1);
    assert!(first.devices[2].topology.is_none());

    health.lock().unwrap()[1] =
        Health::Unhealthy("nvmlDeviceGetMemoryInfo returned 15 (GPU is lost)".into());
    let second = within("list after the GPU is lost", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        list(&second),
        [ids(GPU_A, "Healthy"), ids(GPU_B, "Unhealthy")].concat()
    );

    health.lock().unwrap()[1] = Health::Healthy;
    let third = within("list after recovery", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        list(&third),
        [ids(GPU_A, "Healthy"), ids(GPU_B, "Healthy")].concat()
    );

    // Shutting down ends the stream and removes the socket.
    let _ = stop_tx.send(());
    within("shutdown", running).await.unwrap();
    assert!(within("end of stream", stream.message())
        .await
        .map(|m| m.is_none())
        .unwrap_or(true));
    assert!(!dir.join("vgpu-health.sock").exists());
    let _ = std::fs::remove_dir_all(&hook);
}
