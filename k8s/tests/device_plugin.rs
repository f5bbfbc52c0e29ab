//! The device plugin end to end: the real binary against the simulated NVML, an in-test kubelet over
//! the v1beta1 protocol, and an in-test API server that records what the plugin writes.

mod common;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tonic::Code;

use common::apiserver::pod;
use common::{within, FakeApiServer, FakeKubelet, Setup, GPU_A, GPU_B, NODE};
use vgpu_k8s::api::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, Device, Empty, ListAndWatchResponse, Mount,
    PreferredAllocationRequest,
};

const SLICES: &str = "split_count = 4\nreplica_memory = \"25%\"\nreplica_cores = 25\n";

fn ids(list: &[String]) -> Vec<String> {
    list.to_vec()
}

fn replica(uuid: &str, n: u32) -> String {
    format!("{uuid}-{n}")
}

fn device_summary(response: &ListAndWatchResponse) -> Vec<(String, String)> {
    response
        .devices
        .iter()
        .map(|d: &Device| (d.id.clone(), d.health.clone()))
        .collect()
}

fn healthy_replicas(uuids: &[&str], split: u32) -> Vec<(String, String)> {
    uuids
        .iter()
        .flat_map(|u| (0..split).map(move |n| (replica(u, n), "Healthy".to_string())))
        .collect()
}

async fn allocate(
    client: &mut vgpu_k8s::api::v1beta1::device_plugin_client::DevicePluginClient<
        tonic::transport::Channel,
    >,
    devices: &[String],
) -> Result<ContainerAllocateResponse, tonic::Status> {
    let request = AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: devices.to_vec(),
        }],
    };
    let mut response = within("Allocate", client.allocate(request))
        .await?
        .into_inner();
    assert_eq!(response.container_responses.len(), 1);
    Ok(response.container_responses.remove(0))
}

fn mount(container: &str, host: &std::path::Path, read_only: bool) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        read_only,
    }
}

/// The envs, with the random cache file name checked and replaced by `<cache>`.
fn envs(response: &ContainerAllocateResponse) -> BTreeMap<String, String> {
    let mut envs: BTreeMap<String, String> = response.envs.clone().into_iter().collect();
    let cache = envs
        .get("CUDA_DEVICE_MEMORY_SHARED_CACHE")
        .cloned()
        .expect("a cache path");
    let name = cache
        .strip_prefix("/usr/local/vgpu/")
        .and_then(|n| n.strip_suffix(".cache"))
        .expect("HAMi's cache path form");
    assert_eq!(name.len(), 36, "a UUID names the cache file: {cache}");
    envs.insert(
        "CUDA_DEVICE_MEMORY_SHARED_CACHE".into(),
        "/usr/local/vgpu/<cache>".into(),
    );
    envs
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_lists_every_replica() {
    let setup = Setup::new("register", SLICES);
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let _plugin = setup.start_plugin(None, &[]);

    let registration = kubelet.next_registration().await;
    assert_eq!(registration.version, "v1beta1");
    assert_eq!(registration.endpoint, "vgpu.sock");
    assert_eq!(registration.resource_name, "nvidia.com/gpu");
    let options = registration.options.expect("options");
    assert!(options.get_preferred_allocation_available);
    assert!(!options.pre_start_required);

    let mut client = kubelet.connect(&registration.endpoint).await;
    let options = within("options", client.get_device_plugin_options(Empty {}))
        .await
        .unwrap()
        .into_inner();
    assert!(options.get_preferred_allocation_available);
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let first = within("first list", stream.message())
        .await
        .unwrap()
        .expect("a device list");
    assert_eq!(device_summary(&first), healthy_replicas(&[GPU_A, GPU_B], 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gpu_is_not_advertised() {
    let setup = Setup::new("lost", SLICES);
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let mut plugin = setup.start_plugin(None, &[("SIMGPU_DEVICE_LOST", "1")]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let first = within("first list", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device_summary(&first), healthy_replicas(&[GPU_A], 4));
    plugin.wait_for_log(
        "GPU 1: nvmlDeviceGetHandleByIndex_v2 returned 15 (GPU is lost); not advertised",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_binpack_and_spread() {
    // GPU A has replicas 1 and 3 free (busy), GPU B has all four free.
    let available: Vec<String> = vec![
        replica(GPU_A, 1),
        replica(GPU_A, 3),
        replica(GPU_B, 0),
        replica(GPU_B, 1),
        replica(GPU_B, 2),
        replica(GPU_B, 3),
    ];
    for (policy, size, must, expected) in [
        (
            "binpack",
            3,
            vec![],
            vec![replica(GPU_A, 1), replica(GPU_A, 3), replica(GPU_B, 0)],
        ),
        (
            "spread",
            3,
            vec![],
            vec![replica(GPU_B, 0), replica(GPU_A, 1), replica(GPU_B, 1)],
        ),
        (
            "spread",
            2,
            vec![replica(GPU_B, 2)],
            vec![replica(GPU_B, 2), replica(GPU_A, 1)],
        ),
        (
            "binpack",
            2,
            vec![replica(GPU_B, 2)],
            vec![replica(GPU_B, 2), replica(GPU_B, 0)],
        ),
    ] {
        let setup = Setup::new(
            policy,
            &format!("{SLICES}preferred_allocation = \"{policy}\"\n"),
        );
        let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
        let _plugin = setup.start_plugin(None, &[]);
        let registration = kubelet.next_registration().await;
        let mut client = kubelet.connect(&registration.endpoint).await;
        let request = PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: ids(&available),
                must_include_device_i_ds: must.clone(),
                allocation_size: size,
            }],
        };
        let response = within(
            "GetPreferredAllocation",
            client.get_preferred_allocation(request),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(response.container_responses.len(), 1);
        assert_eq!(
            response.container_responses[0].device_i_ds, expected,
            "{policy}, size {size}, must {must:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_fixed_slices_exact_response() {
    let setup = Setup::new("fixed", SLICES);
    let api = FakeApiServer::start();
    api.add_node(NODE, json!({}));
    api.add_pod(pod("ml", "train", "11111111-2222-4333-8444-555555555555", json!([
        {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "2", "nvidia.com/priority": "0"}}},
        {"name": "sidecar", "resources": {"limits": {"nvidia.com/gpu": "1"}},
         "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]}
    ])));
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let _plugin = setup.start_plugin(Some(&api), &[]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;

    // Two replicas of GPU A (40 GiB): 2 × 25 % memory, 2 × 25 % SM.
    let main = allocate(&mut client, &[replica(GPU_A, 0), replica(GPU_A, 1)])
        .await
        .unwrap();
    assert_eq!(
        envs(&main),
        map(&[
            ("NVIDIA_VISIBLE_DEVICES", GPU_A),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "20480m"),
            ("CUDA_DEVICE_SM_LIMIT", "50"),
            ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/usr/local/vgpu/<cache>"),
            ("LIBCUDA_LOG_LEVEL", "1"),
            ("CUDA_TASK_PRIORITY", "0"),
        ])
    );
    let main_dir = setup
        .hook_dir
        .join("containers/11111111-2222-4333-8444-555555555555_main");
    assert_eq!(
        main.mounts,
        vec![
            mount("/usr/local/vgpu", &main_dir, false),
            mount(
                "/usr/local/vgpu/libvgpu.so",
                &setup.hook_dir.join("libvgpu.so"),
                true
            ),
            mount(
                "/etc/ld.so.preload",
                &setup.hook_dir.join("ld.so.preload"),
                true
            ),
        ]
    );
    assert!(main.devices.is_empty() && main.annotations.is_empty() && main.cdi_devices.is_empty());
    assert_eq!(common::mode_of(&main_dir), 0o777);
    assert_eq!(
        std::fs::read(main_dir.join("libvgpu.so")).unwrap(),
        b"",
        "an empty mount point for the library"
    );

    // The next container with one replica: the sidecar, which opted out of the preload.
    // A versioned library now exists on the host: it is mounted instead.
    let versioned = setup
        .hook_dir
        .join(format!("libvgpu.so.{}", env!("CARGO_PKG_VERSION")));
    std::fs::write(&versioned, b"\x7fELF v").unwrap();
    let sidecar = allocate(&mut client, &[replica(GPU_B, 2)]).await.unwrap();
    assert_eq!(
        envs(&sidecar),
        map(&[
            ("NVIDIA_VISIBLE_DEVICES", GPU_B),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "6144m"),
            ("CUDA_DEVICE_SM_LIMIT", "25"),
            ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/usr/local/vgpu/<cache>"),
            ("LIBCUDA_LOG_LEVEL", "1"),
        ])
    );
    assert_eq!(
        sidecar.mounts,
        vec![
            mount(
                "/usr/local/vgpu",
                &setup
                    .hook_dir
                    .join("containers/11111111-2222-4333-8444-555555555555_sidecar"),
                false
            ),
            mount("/usr/local/vgpu/libvgpu.so", &versioned, true),
        ]
    );
    assert_ne!(
        main.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"],
        sidecar.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"]
    );
    // Fixed slices write nothing to the API server.
    assert!(
        api.writes()
            .iter()
            .all(|w| w.path.starts_with("/api/v1/nodes/")),
        "{:?}",
        api.writes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_without_api_server_still_limits() {
    let setup = Setup::new("noapi", "split_count = 2\n");
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let _plugin = setup.start_plugin(None, &[]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;
    let response = allocate(&mut client, &[replica(GPU_B, 1)]).await.unwrap();
    // Even shares by default: 24 GiB / 2.
    assert_eq!(response.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], "12288m");
    assert_eq!(response.envs["CUDA_DEVICE_SM_LIMIT"], "0");
    assert_eq!(
        response.mounts.len(),
        3,
        "the preload stays: nothing says the container opted out"
    );
    assert!(
        response.mounts[0]
            .host_path
            .contains("/containers/unknown-"),
        "{:?}",
        response.mounts[0]
    );
}

fn hami_pod(name: &str, uid: &str, to_allocate: &str, containers: Value) -> Value {
    let mut p = pod("ml", name, uid, containers);
    p["metadata"]["annotations"] = json!({
        "hami.io/vgpu-node": NODE,
        "hami.io/bind-time": "1764400000",
        "hami.io/bind-phase": "allocating",
        "hami.io/vgpu-devices-to-allocate": to_allocate,
        "hami.io/vgpu-devices-allocated": to_allocate,
    });
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_follows_hami_annotations() {
    let setup = Setup::new("hami", SLICES);
    let api = FakeApiServer::start();
    let lock = "2025-11-29T10:00:00Z,ml,hpod";
    api.add_node(NODE, json!({"hami.io/mutex.lock": lock}));
    let uid = "99999999-8888-4777-8666-555555555555";
    let to_allocate =
        format!("{GPU_B},NVIDIA,3000,30:;;{GPU_A},NVIDIA,5000,0:{GPU_B},NVIDIA,2000,0:;");
    api.add_pod(hami_pod(
        "hpod",
        uid,
        &to_allocate,
        json!([
            {"name": "first", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
            {"name": "nogpu"},
            {"name": "third", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
        ]),
    ));
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let _plugin = setup.start_plugin(Some(&api), &[]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;
    api.clear_requests();

    // kubelet's replica choice does not matter: the scheduler's devices and limits are used.
    let first = allocate(&mut client, &[replica(GPU_A, 3)]).await.unwrap();
    assert_eq!(
        envs(&first),
        map(&[
            ("NVIDIA_VISIBLE_DEVICES", GPU_B),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m"),
            ("CUDA_DEVICE_SM_LIMIT", "30"),
            ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/usr/local/vgpu/<cache>"),
            ("LIBCUDA_LOG_LEVEL", "1"),
        ])
    );
    assert_eq!(
        first.mounts[0].host_path,
        setup
            .hook_dir
            .join(format!("containers/{uid}_first"))
            .to_string_lossy()
    );
    let pod_patches: Vec<Value> = api
        .writes()
        .into_iter()
        .filter(|w| w.path == "/api/v1/namespaces/ml/pods/hpod")
        .map(|w| w.body.unwrap())
        .collect();
    assert_eq!(
        pod_patches,
        vec![json!({"metadata": {"annotations": {
            "hami.io/vgpu-devices-to-allocate": format!(";;{GPU_A},NVIDIA,5000,0:{GPU_B},NVIDIA,2000,0:;")}}})]
    );
    assert_eq!(
        api.node(NODE)["metadata"]["annotations"]["hami.io/mutex.lock"],
        lock,
        "the lock stays until the last segment"
    );

    let third = allocate(&mut client, &[replica(GPU_A, 0), replica(GPU_A, 1)])
        .await
        .unwrap();
    assert_eq!(
        envs(&third),
        map(&[
            ("NVIDIA_VISIBLE_DEVICES", &format!("{GPU_A},{GPU_B}")),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "5000m"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2000m"),
            ("CUDA_DEVICE_SM_LIMIT", "0"),
            ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/usr/local/vgpu/<cache>"),
            ("LIBCUDA_LOG_LEVEL", "1"),
        ])
    );
    assert_eq!(
        third.mounts[0].host_path,
        setup
            .hook_dir
            .join(format!("containers/{uid}_third"))
            .to_string_lossy()
    );
    let annotations = api.pod("ml", "hpod")["metadata"]["annotations"].clone();
    assert_eq!(annotations["hami.io/vgpu-devices-to-allocate"], ";;;");
    assert_eq!(annotations["hami.io/bind-phase"], "success");
    assert_eq!(
        annotations["hami.io/vgpu-devices-allocated"],
        to_allocate.as_str(),
        "the permanent record is untouched"
    );
    let node_patch = api
        .writes()
        .into_iter()
        .find(|w| {
            w.path == format!("/api/v1/nodes/{NODE}")
                && w.body.as_ref().unwrap().to_string().contains("mutex")
        })
        .expect("the node lock is released");
    assert_eq!(
        node_patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        node_patch.body.unwrap(),
        json!({"metadata": {"annotations": {"hami.io/mutex.lock": null}}})
    );
    assert!(api.node(NODE)["metadata"]["annotations"]
        .get("hami.io/mutex.lock")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_annotation_fails_that_pod_and_serving_goes_on() {
    let setup = Setup::new("badann", SLICES);
    let api = FakeApiServer::start();
    api.add_node(
        NODE,
        json!({"hami.io/mutex.lock": "2025-11-29T10:00:00Z,ml,broken"}),
    );
    api.add_pod(hami_pod(
        "broken",
        "12121212-3434-4565-8787-909090909090",
        &format!("{GPU_A},NVIDIA,lots,0:;"),
        json!([
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
        ]),
    ));
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let mut plugin = setup.start_plugin(Some(&api), &[]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;

    let error = allocate(&mut client, &[replica(GPU_A, 0)])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error
            .message()
            .contains("memory \"lots\" is not a MiB count"),
        "{}",
        error.message()
    );
    let annotations = api.pod("ml", "broken")["metadata"]["annotations"].clone();
    assert_eq!(annotations["hami.io/bind-phase"], "failed");
    assert!(
        api.node(NODE)["metadata"]["annotations"]
            .get("hami.io/mutex.lock")
            .is_none(),
        "the lock is released"
    );
    let event = api
        .writes()
        .into_iter()
        .find(|w| w.path == "/api/v1/namespaces/ml/events")
        .expect("an event on the pod");
    let event = event.body.unwrap();
    assert_eq!(event["involvedObject"]["name"], "broken");
    assert_eq!(
        event["involvedObject"]["uid"],
        "12121212-3434-4565-8787-909090909090"
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "VgpuAllocationFailed");
    assert!(
        event["message"].as_str().unwrap().contains("lots"),
        "{event}"
    );
    plugin.wait_for_log("memory \"lots\" is not a MiB count");

    // A GPU the node does not have is refused the same way.
    api.add_pod(hami_pod(
        "elsewhere",
        "23232323-4545-4676-8989-010101010101",
        "GPU-ffffffff-0000-4000-8000-00000000000f,NVIDIA,100,0:;",
        json!([
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
        ]),
    ));
    let error = allocate(&mut client, &[replica(GPU_A, 0)])
        .await
        .unwrap_err();
    assert!(
        error.message().contains("is not a GPU this plugin serves"),
        "{}",
        error.message()
    );
    assert_eq!(
        api.pod("ml", "elsewhere")["metadata"]["annotations"]["hami.io/bind-phase"],
        "failed"
    );

    // The scheduler chose one GPU, kubelet asks for two: refused.
    api.add_pod(hami_pod(
        "count",
        "34343434-5656-4787-8a9a-121212121212",
        &format!("{GPU_B},NVIDIA,100,0:;"),
        json!([
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
        ]),
    ));
    let error = allocate(&mut client, &[replica(GPU_A, 0), replica(GPU_B, 0)])
        .await
        .unwrap_err();
    assert!(
        error
            .message()
            .contains("chose 1 device(s) but kubelet asks for 2"),
        "{}",
        error.message()
    );

    // Other pods are still served.
    api.add_pod(pod(
        "ml",
        "fine",
        "45454545-6767-4898-8b0b-232323232323",
        json!([
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
        ]),
    ));
    let fine = allocate(&mut client, &[replica(GPU_B, 3)]).await.unwrap();
    assert_eq!(fine.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], "6144m");
    assert!(
        fine.mounts[0]
            .host_path
            .ends_with("45454545-6767-4898-8b0b-232323232323_main"),
        "{:?}",
        fine.mounts[0]
    );
    assert!(plugin.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_config_is_reported_and_defaults_serve() {
    let setup = Setup::new("badconf", "split_count = 0\nreplica_memory = \"4GB\"\n");
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let mut plugin = setup.start_plugin(None, &[]);
    let registration = kubelet.next_registration().await;
    let log = plugin.wait_for_log("using the built-in defaults");
    assert!(
        log.contains("split_count = 0: expected an integer in 1..=1024"),
        "{log}"
    );
    let mut client = kubelet.connect(&registration.endpoint).await;
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let first = within("first list", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        device_summary(&first),
        healthy_replicas(&[GPU_A, GPU_B], 10)
    );
    let response = allocate(&mut client, &[replica(GPU_A, 9)]).await.unwrap();
    assert_eq!(
        response.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], "4096m",
        "40 GiB / 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_means_register_again() {
    let setup = Setup::new("restart", SLICES);
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let _plugin = setup.start_plugin(None, &[]);
    let first = kubelet.next_registration().await;
    let socket = setup.plugin_dir.join(&first.endpoint);
    assert!(socket.exists());

    kubelet.restart().await;
    let second = kubelet.next_registration().await;
    assert_eq!(second.endpoint, first.endpoint);
    assert_eq!(second.resource_name, "nvidia.com/gpu");
    assert!(socket.exists(), "the plugin serves on a new socket");
    let mut client = kubelet.connect(&second.endpoint).await;
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let list = within("list after restart", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device_summary(&list), healthy_replicas(&[GPU_A, GPU_B], 4));
    let response = allocate(&mut client, &[replica(GPU_A, 2)]).await.unwrap();
    assert_eq!(response.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], "10240m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_annotation_and_filters() {
    let setup = Setup::new(
        "filters",
        "split_count = 5\nexclude_types = [\"L4\"]\nmemory_scaling = 1.5\ncore_policy = \"disable\"\n",
    );
    let api = FakeApiServer::start();
    api.add_node(NODE, json!({"unrelated": "kept"}));
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let mut plugin = setup.start_plugin(Some(&api), &[]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let first = within("first list", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        device_summary(&first),
        healthy_replicas(&[GPU_A], 5),
        "the L4 is excluded"
    );
    plugin.wait_for_log("node-a: hami.io/node-nvidia-register updated");
    let annotations = api.node(NODE)["metadata"]["annotations"].clone();
    assert_eq!(annotations["unrelated"], "kept");
    let registered: Value = serde_json::from_str(
        annotations["hami.io/node-nvidia-register"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        registered,
        json!([{"id": GPU_A, "count": 5, "devmem": 61440, "devcore": 100, "type": "NVIDIA A100-SXM4-40GB",
                "mode": "hami-core", "health": true}])
    );
    // Patched only on change: more register intervals pass without another write.
    let writes_before = api.writes().len();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(api.writes().len(), writes_before, "{:?}", api.writes());
    let log = plugin.log_text();
    assert!(log.contains("matches exclude_types"), "{log}");
    // An oversubscribing memory scaling is passed on as HAMi does.
    let response = allocate(&mut client, &[replica(GPU_A, 0)]).await.unwrap();
    assert_eq!(response.envs["CUDA_OVERSUBSCRIBE"], "true");
    assert_eq!(response.envs["GPU_CORE_UTILIZATION_POLICY"], "disable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_is_retried() {
    let setup = Setup::new("refused", SLICES);
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    kubelet.refuse_next(2);
    let mut plugin = setup.start_plugin(None, &[]);
    let registration = kubelet.next_registration().await;
    assert_eq!(registration.resource_name, "nvidia.com/gpu");
    let log = plugin.wait_for_log("registered nvidia.com/gpu");
    assert_eq!(
        log.matches("already taken (test); retrying in").count(),
        2,
        "{log}"
    );
}
