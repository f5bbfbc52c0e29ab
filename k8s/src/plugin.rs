//! The device plugin: serves `DevicePlugin` on a unix socket in the kubelet's device plugin directory,
//! registers with the kubelet, re-registers when the kubelet restarts, polls GPU health, keeps HAMi's
//! register annotation current, and answers `Allocate`.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::allocate::{self, ContainerTarget, Grant, HostLayout};
use crate::api::v1beta1::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::api::v1beta1::registration_client::RegistrationClient;
use crate::api::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    NumaNode, PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, RegisterRequest, TopologyInfo,
};
use crate::api::{self, HEALTHY, UNHEALTHY};
use crate::config::NodeConfig;
use crate::gpus::{filter_gpus, replica_id, Gpu, GpuSource, Health};
use crate::hami::{self, DevicesAnnotation};
use crate::kube::{random_uuid, KubeClient};
use crate::pods::{self, Pod};
use crate::preferred::preferred_allocation;

/// How the plugin runs (flags of `vgpu-device-plugin serve`).
#[derive(Clone, Debug)]
pub struct PluginOptions {
    /// The kubelet's device plugin directory (holds `kubelet.sock` and our socket).
    pub plugin_dir: PathBuf,
    /// Our socket's file name in `plugin_dir`.
    pub socket_name: String,
    /// This node (for the API server: pods on it, its annotations). `None`: no pod lookups.
    pub node_name: Option<String>,
    pub layout: HostLayout,
    pub health_interval: Duration,
    pub register_interval: Duration,
    /// How often the kubelet socket and ours are checked (kubelet restarts).
    pub kubelet_poll_interval: Duration,
}

pub struct Plugin {
    options: PluginOptions,
    config: NodeConfig,
    /// The advertised GPUs (after filters), host index order.
    gpus: Vec<Gpu>,
    source: Arc<dyn GpuSource>,
    /// Health per advertised GPU; ListAndWatch streams follow it.
    health: watch::Sender<Vec<Health>>,
    kube: Option<KubeClient>,
    /// One `Allocate` at a time: each reads and then patches the pods' annotations.
    allocate_lock: tokio::sync::Mutex<()>,
    /// Containers answered in fixed-slice mode (directory names), so the next one is picked.
    answered: Mutex<HashSet<String>>,
}

impl Plugin {
    /// Discovers the GPUs, applies the node configuration's filters, and logs what is advertised.
    pub fn new(
        options: PluginOptions,
        config: NodeConfig,
        source: Arc<dyn GpuSource>,
        kube: Option<KubeClient>,
    ) -> Result<Arc<Plugin>, String> {
        let discovered = source.discover()?;
        let (kept, dropped) = filter_gpus(discovered, &config);
        for line in dropped {
            log_info!("{line}");
        }
        if kept.is_empty() {
            log_warn!(
                "no GPU to advertise: {} is advertised with 0 devices",
                config.resource_name
            );
        }
        for (gpu, health) in &kept {
            log_info!(
                "GPU {} {} {:?}: {} MiB, {} replicas of {} MiB{}, {}",
                gpu.index,
                gpu.uuid,
                gpu.name,
                gpu.memory_mib(),
                config.split_count,
                config.replica_memory_mib(gpu.memory_bytes),
                if config.replica_cores > 0 {
                    format!(" and {}% SM", config.replica_cores)
                } else {
                    String::new()
                },
                match health {
                    Health::Healthy => "healthy".to_string(),
                    Health::Unhealthy(why) => format!("unhealthy: {why}"),
                }
            );
        }
        let (gpus, health): (Vec<Gpu>, Vec<Health>) = kept.into_iter().unzip();
        let (health, _) = watch::channel(health);
        Ok(Arc::new(Plugin {
            options,
            config,
            gpus,
            source,
            health,
            kube,
            allocate_lock: tokio::sync::Mutex::new(()),
            answered: Mutex::new(HashSet::new()),
        }))
    }

    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    fn socket_path(&self) -> PathBuf {
        self.options.plugin_dir.join(&self.options.socket_name)
    }

    fn device_list(&self, health: &[Health]) -> Vec<Device> {
        let mut devices = Vec::new();
        for (gpu, h) in self.gpus.iter().zip(health) {
            let topology = gpu.numa.map(|id| TopologyInfo {
                nodes: vec![NumaNode { id }],
            });
            for n in 0..self.config.split_count {
                devices.push(Device {
                    id: replica_id(&gpu.uuid, n),
                    health: if h.is_healthy() { HEALTHY } else { UNHEALTHY }.to_string(),
                    topology: topology.clone(),
                });
            }
        }
        devices
    }

    /// Runs until `shutdown` resolves: the gRPC server, registration and re-registration, the health
    /// poll and the register annotation.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let health_task = tokio::spawn(self.clone().health_loop());
        let register_task = tokio::spawn(self.clone().register_annotation_loop());
        let (stop_tx, stop_rx) = watch::channel(false);
        let serve_task = tokio::spawn(self.clone().serve_loop(stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), serve_task).await;
        health_task.abort();
        register_task.abort();
        let _ = std::fs::remove_file(self.socket_path());
        log_info!("stopped");
    }

    /// Keeps our socket served and registered: re-binds when the kubelet wiped the directory (it does
    /// on restart) and registers again whenever `kubelet.sock` is a new file.
    async fn serve_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let kubelet_socket = self.options.plugin_dir.join(api::KUBELET_SOCKET);
        let mut server: Option<RunningServer> = None;
        let mut registered_with: Option<FileIdentity> = None;
        // After a failed registration, wait before the next try (doubling, at most 30 s).
        let mut retry_delay = Duration::ZERO;
        let mut next_try = tokio::time::Instant::now();
        // A directory that stays unusable is logged once, not every poll.
        let mut last_bind_error: Option<String> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let ours_present = server.as_ref().is_some_and(|s| s.still_bound());
            if !ours_present {
                if let Some(old) = server.take() {
                    log_info!(
                        "our socket {} is gone (kubelet restarted?): serving anew",
                        self.socket_path().display()
                    );
                    old.stop().await;
                }
                match self.clone().start_server() {
                    Ok(s) => {
                        server = Some(s);
                        last_bind_error = None;
                    }
                    Err(e) => {
                        let message =
                            format!("cannot serve on {}: {e}", self.socket_path().display());
                        if last_bind_error.as_ref() != Some(&message) {
                            log_error!(
                                "{message}; trying again every {:?}",
                                self.options.kubelet_poll_interval
                            );
                            last_bind_error = Some(message);
                        }
                    }
                }
                registered_with = None;
                next_try = tokio::time::Instant::now();
            }
            let kubelet = file_identity(&kubelet_socket);
            let due = tokio::time::Instant::now() >= next_try;
            if server.is_some() && due {
                if let Some(id) = kubelet.filter(|id| registered_with != Some(*id)) {
                    match self.register(&kubelet_socket).await {
                        Ok(()) => {
                            log_info!(
                                "registered {} with the kubelet at {} (endpoint {})",
                                self.config.resource_name,
                                kubelet_socket.display(),
                                self.options.socket_name
                            );
                            registered_with = Some(id);
                            retry_delay = Duration::ZERO;
                        }
                        Err(e) => {
                            retry_delay = (retry_delay * 2)
                                .clamp(self.options.kubelet_poll_interval, Duration::from_secs(30));
                            next_try = tokio::time::Instant::now() + retry_delay;
                            log_warn!(
                                "registration with {} failed: {e}; retrying in {retry_delay:?}",
                                kubelet_socket.display()
                            );
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.kubelet_poll_interval) => {}
                _ = stop.changed() => {}
            }
        }
        if let Some(s) = server.take() {
            s.stop().await;
        }
    }

    fn start_server(self: Arc<Self>) -> std::io::Result<RunningServer> {
        let path = self.socket_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        let identity = file_identity(&path);
        let (stop_tx, stop_rx) = watch::channel(false);
        let service = DevicePluginService {
            plugin: self.clone(),
            stop: stop_rx.clone(),
        };
        let mut stop_signal = stop_rx;
        let task = tokio::spawn(async move {
            let result = Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = stop_signal.wait_for(|stopped| *stopped).await;
                })
                .await;
            if let Err(e) = result {
                log_error!("gRPC server: {e}");
            }
        });
        log_info!("serving the device plugin API on {}", path.display());
        Ok(RunningServer {
            path,
            identity,
            stop: stop_tx,
            task,
        })
    }

    async fn register(&self, kubelet_socket: &Path) -> Result<(), String> {
        let path = kubelet_socket.to_path_buf();
        // The URI is a placeholder: the connector below always dials the unix socket.
        let channel = Endpoint::from_static("http://[::1]:1")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = RegisterRequest {
            version: api::VERSION.to_string(),
            endpoint: self.options.socket_name.clone(),
            resource_name: self.config.resource_name.clone(),
            options: Some(plugin_options()),
        };
        RegistrationClient::new(channel)
            .register(request)
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(())
    }

    async fn health_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.options.health_interval).await;
            let plugin = self.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || {
                plugin
                    .gpus
                    .iter()
                    .map(|g| plugin.source.health(g))
                    .collect::<Vec<Health>>()
            })
            .await
            else {
                continue;
            };
            self.health.send_if_modified(|current| {
                if *current == now {
                    return false;
                }
                for ((gpu, before), after) in self.gpus.iter().zip(current.iter()).zip(now.iter()) {
                    if before != after {
                        match after {
                            Health::Healthy => {
                                log_info!("GPU {} {} is healthy again", gpu.index, gpu.uuid)
                            }
                            Health::Unhealthy(why) => {
                                log_error!("GPU {} {} is unhealthy: {why}", gpu.index, gpu.uuid)
                            }
                        }
                    }
                }
                *current = now.clone();
                true
            });
        }
    }

    /// HAMi's scheduler learns the node's GPUs from `hami.io/node-nvidia-register`: written when it
    /// differs from what the node carries, checked every `register_interval` and on health changes.
    async fn register_annotation_loop(self: Arc<Self>) {
        let (Some(kube), Some(node)) = (self.kube.clone(), self.options.node_name.clone()) else {
            return;
        };
        let mut health = self.health.subscribe();
        loop {
            let snapshot: Vec<(Gpu, bool)> = self
                .gpus
                .iter()
                .cloned()
                .zip(health.borrow_and_update().iter().map(Health::is_healthy))
                .collect();
            let value = hami::register_annotation(&snapshot, &self.config);
            match kube.get_node(&node).await {
                Ok(n) if n.metadata.annotations.get(hami::NODE_REGISTER) == Some(&value) => {}
                Ok(_) => {
                    let patch = BTreeMap::from([(hami::NODE_REGISTER.to_string(), Some(value))]);
                    match kube.patch_node_annotations(&node, &patch).await {
                        Ok(()) => log_info!("node {node}: {} updated", hami::NODE_REGISTER),
                        Err(e) => {
                            log_warn!("node {node}: cannot write {}: {e}", hami::NODE_REGISTER)
                        }
                    }
                }
                Err(e) => log_warn!(
                    "node {node}: cannot read it to update {}: {e}",
                    hami::NODE_REGISTER
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.register_interval) => {}
                _ = health.changed() => {}
            }
        }
    }

    // ---- Allocate -----------------------------------------------------------------------------

    async fn allocate_container(
        &self,
        replica_ids: &[String],
    ) -> Result<ContainerAllocateResponse, Status> {
        let context = match (&self.kube, &self.options.node_name) {
            (Some(kube), Some(node)) => match kube.list_node_pods(node).await {
                Ok(pods) => Some((kube, node.as_str(), pods)),
                Err(e) => {
                    log_warn!("Allocate: cannot list the pods of node {node}: {e}; answering without the pod");
                    None
                }
            },
            _ => None,
        };
        let Some((kube, node, pods)) = context else {
            return self.allocate_fixed(replica_ids, None).await;
        };
        // HAMi's scheduler annotations take precedence: the node lock names the pod being bound.
        let looks_hami = pods
            .iter()
            .any(|p| p.annotation(hami::DEVICES_TO_ALLOCATE).is_some());
        let lock = if looks_hami {
            match kube.get_node(node).await {
                Ok(n) => n.metadata.annotations.get(hami::NODE_LOCK).cloned(),
                Err(e) => {
                    log_warn!("Allocate: cannot read node {node}: {e}");
                    None
                }
            }
        } else {
            None
        };
        if let Some(pod) = pods::find_hami_pod(&pods, node, lock.as_deref()) {
            return self
                .allocate_hami(kube, node, pod, lock.as_deref(), replica_ids)
                .await;
        }
        let containers_dir = self.options.layout.containers_dir();
        let found = {
            let answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
            pods::find_fixed_slice_container(
                &pods,
                &self.config.resource_name,
                replica_ids.len() as u64,
                |p, c| {
                    let dir = format!("{}_{}", p.metadata.uid, c.name);
                    answered.contains(&dir) || containers_dir.join(&dir).exists()
                },
            )
            .map(|(p, c)| (p.clone(), c.clone()))
        };
        if found.is_none() {
            log_warn!(
                "Allocate: no pending pod on node {node} has a container asking for {} {}; answering without the pod",
                replica_ids.len(),
                self.config.resource_name
            );
        }
        self.allocate_fixed(replica_ids, found.as_ref().map(|(p, c)| (p, c)))
            .await
    }

    /// Fixed slices from the node configuration.
    async fn allocate_fixed(
        &self,
        replica_ids: &[String],
        pod: Option<(&Pod, &pods::Container)>,
    ) -> Result<ContainerAllocateResponse, Status> {
        let grants = match allocate::fixed_slice_grants(replica_ids, &self.gpus, &self.config) {
            Ok(g) => g,
            Err(reason) => {
                let reason = format!("Allocate {replica_ids:?}: {reason}");
                if let Some((p, _)) = pod {
                    self.report_failure(p, &reason).await;
                }
                log_error!("{reason}");
                return Err(Status::invalid_argument(reason));
            }
        };
        let target = match pod {
            Some((p, c)) => self.target(p, c),
            None => ContainerTarget {
                dir_name: format!("unknown-{}", crate::kube::random_hex(8)),
                disable_control: false,
                priority: None,
            },
        };
        let response = self.answer(&grants, &target, pod.map(|(p, _)| p))?;
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.dir_name.clone());
        Ok(response)
    }

    /// HAMi's protocol (hami-contract.md 5.3): take the pod's next segment, answer with exactly those
    /// devices and limits, clear the segment, and on the last one mark the bind a success and release
    /// the node lock. Anything wrong fails the bind, releases the lock and says why on the pod.
    async fn allocate_hami(
        &self,
        kube: &KubeClient,
        node: &str,
        pod: &Pod,
        lock: Option<&str>,
        replica_ids: &[String],
    ) -> Result<ContainerAllocateResponse, Status> {
        let mut annotation =
            DevicesAnnotation::parse(pod.annotation(hami::DEVICES_TO_ALLOCATE).unwrap_or(""));
        let checked = (|| {
            let (index, devices) = annotation.next().ok_or("no segment left")?;
            let devices = devices?;
            if devices.len() != replica_ids.len() {
                return Err(format!(
                    "the scheduler chose {} device(s) but kubelet asks for {}",
                    devices.len(),
                    replica_ids.len()
                ));
            }
            for d in &devices {
                if !self.gpus.iter().any(|g| g.uuid == d.uuid) {
                    return Err(format!(
                        "GPU {} is not a GPU this plugin serves on node {node}",
                        d.uuid
                    ));
                }
            }
            let container = pod.all_containers().nth(index).ok_or_else(|| {
                format!("segment {index} has no matching container (the pod has fewer)")
            })?;
            Ok((index, devices, container))
        })();
        let (index, devices, container) = match checked {
            Ok(found) => found,
            Err(reason) => {
                let reason = format!(
                    "{} on pod {}: {reason}",
                    hami::DEVICES_TO_ALLOCATE,
                    pod.display_name()
                );
                log_error!("Allocate: {reason}");
                self.fail_hami(kube, node, pod, lock, &reason).await;
                return Err(Status::invalid_argument(reason));
            }
        };
        let grants: Vec<Grant> = devices
            .iter()
            .map(|d| Grant {
                uuid: d.uuid.clone(),
                memory_mib: d.memory_mib,
                cores: d.cores,
            })
            .collect();
        let target = self.target(pod, container);
        let response = match self.answer(&grants, &target, Some(pod)) {
            Ok(r) => r,
            Err(status) => {
                self.fail_hami(kube, node, pod, lock, status.message())
                    .await;
                return Err(status);
            }
        };
        annotation.clear(index);
        let mut patch = BTreeMap::from([(
            hami::DEVICES_TO_ALLOCATE.to_string(),
            Some(annotation.encode()),
        )]);
        if annotation.is_done() {
            patch.insert(
                hami::BIND_PHASE.to_string(),
                Some(hami::PHASE_SUCCESS.to_string()),
            );
        }
        if let Err(e) = kube
            .patch_pod_annotations(&pod.metadata.namespace, &pod.metadata.name, &patch)
            .await
        {
            let reason = format!("cannot update pod {}: {e}", pod.display_name());
            log_error!("Allocate: {reason}");
            self.fail_hami(kube, node, pod, lock, &reason).await;
            return Err(Status::unavailable(reason));
        }
        log_info!(
            "Allocate: pod {} container {} gets {} (scheduler's choice)",
            pod.display_name(),
            container.name,
            describe(&grants)
        );
        if annotation.is_done() {
            self.release_node_lock(kube, node, pod, lock).await;
        }
        Ok(response)
    }

    async fn fail_hami(
        &self,
        kube: &KubeClient,
        node: &str,
        pod: &Pod,
        lock: Option<&str>,
        reason: &str,
    ) {
        let patch = BTreeMap::from([(
            hami::BIND_PHASE.to_string(),
            Some(hami::PHASE_FAILED.to_string()),
        )]);
        if let Err(e) = kube
            .patch_pod_annotations(&pod.metadata.namespace, &pod.metadata.name, &patch)
            .await
        {
            log_error!(
                "pod {}: cannot set {}=failed: {e}",
                pod.display_name(),
                hami::BIND_PHASE
            );
        }
        self.report_failure(pod, reason).await;
        self.release_node_lock(kube, node, pod, lock).await;
    }

    /// Removes the node lock if it is this pod's (or names no pod, the old format).
    async fn release_node_lock(
        &self,
        kube: &KubeClient,
        node: &str,
        pod: &Pod,
        lock: Option<&str>,
    ) {
        let Some(lock) = lock else { return };
        let ours = match hami::parse_node_lock(lock) {
            Some((ns, name)) => ns == pod.metadata.namespace && name == pod.metadata.name,
            None => true,
        };
        if !ours {
            return;
        }
        let patch = BTreeMap::from([(hami::NODE_LOCK.to_string(), None)]);
        match kube.patch_node_annotations(node, &patch).await {
            Ok(()) => log_info!("node {node}: lock of pod {} released", pod.display_name()),
            Err(e) => log_error!("node {node}: cannot release {}: {e}", hami::NODE_LOCK),
        }
    }

    /// A Warning event on the pod, so `kubectl describe pod` says why it cannot start.
    async fn report_failure(&self, pod: &Pod, reason: &str) {
        if let Some(kube) = &self.kube {
            if let Err(e) = kube
                .pod_event(pod, "Warning", "VgpuAllocationFailed", reason)
                .await
            {
                log_warn!("pod {}: cannot record an event: {e}", pod.display_name());
            }
        }
    }

    fn target(&self, pod: &Pod, container: &pods::Container) -> ContainerTarget {
        let mut target = ContainerTarget::new(&pod.metadata.uid, &container.name);
        target.disable_control = container.disables_control();
        let priority = container.resource_count("nvidia.com/priority");
        let asked = container
            .resources
            .limits
            .contains_key("nvidia.com/priority")
            || container
                .resources
                .requests
                .contains_key("nvidia.com/priority");
        target.priority = asked.then_some(priority);
        target
    }

    fn answer(
        &self,
        grants: &[Grant],
        target: &ContainerTarget,
        pod: Option<&Pod>,
    ) -> Result<ContainerAllocateResponse, Status> {
        if let Err(e) = allocate::prepare_container_dir(&self.options.layout, &target.dir_name) {
            let reason = format!(
                "cannot create {}: {e}",
                self.options
                    .layout
                    .containers_dir()
                    .join(&target.dir_name)
                    .display()
            );
            log_error!("Allocate: {reason}");
            return Err(Status::internal(reason));
        }
        let cache_name = format!("{}.cache", random_uuid());
        let response = allocate::container_response(
            grants,
            target,
            &self.config,
            &self.options.layout,
            &cache_name,
        );
        if pod.is_none() || !target.dir_name.contains('_') {
            log_info!("Allocate: {} for {}", describe(grants), target.dir_name);
        } else if let Some(p) = pod {
            log_info!(
                "Allocate: pod {} ({}) gets {}",
                p.display_name(),
                target.dir_name,
                describe(grants)
            );
        }
        if target.disable_control {
            log_info!(
                "Allocate: {} sets CUDA_DISABLE_CONTROL: no /etc/ld.so.preload mount",
                target.dir_name
            );
        }
        Ok(response)
    }
}

fn describe(grants: &[Grant]) -> String {
    grants
        .iter()
        .map(|g| format!("{} ({} MiB, {}% SM)", g.uuid, g.memory_mib, g.cores))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plugin_options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Which file a path is: a recreated socket is a new inode, or (when the inode number is reused at
/// once) a new change time.
type FileIdentity = (u64, u64, i64, i64);

fn file_identity(path: &Path) -> Option<FileIdentity> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

struct RunningServer {
    path: PathBuf,
    identity: Option<FileIdentity>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    fn still_bound(&self) -> bool {
        !self.task.is_finished()
            && self.identity.is_some()
            && file_identity(&self.path) == self.identity
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The gRPC face of the plugin. `stop` ends this server's ListAndWatch streams, so a graceful shutdown
/// does not wait for them forever.
struct DevicePluginService {
    plugin: Arc<Plugin>,
    stop: watch::Receiver<bool>,
}

type ListAndWatchStream = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<ListAndWatchResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = ListAndWatchStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let plugin = self.plugin.clone();
        let mut health = plugin.health.subscribe();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let devices = plugin.device_list(&health.borrow_and_update());
                if tx.send(Ok(ListAndWatchResponse { devices })).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = health.changed() => if changed.is_err() { break },
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let order: Vec<String> = self.plugin.gpus.iter().map(|g| g.uuid.clone()).collect();
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|r| ContainerPreferredAllocationResponse {
                device_i_ds: preferred_allocation(
                    &r.available_device_i_ds,
                    &r.must_include_device_i_ds,
                    usize::try_from(r.allocation_size).unwrap_or(0),
                    self.plugin.config.preferred_allocation,
                    &order,
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let _one_at_a_time = self.plugin.allocate_lock.lock().await;
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            container_responses.push(
                self.plugin
                    .allocate_container(&container.devices_ids)
                    .await?,
            );
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
