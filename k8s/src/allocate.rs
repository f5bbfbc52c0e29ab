//! What `Allocate` answers for one container (hami-contract.md 1.2): the library's environment, the
//! per-container host directory, and the mounts that put `libvgpu.so` into the container.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::api::v1beta1::{ContainerAllocateResponse, Mount};
use crate::config::{CorePolicy, NodeConfig};
use crate::gpus::{parse_replica_id, Gpu};

/// Where things live inside the container (fixed by HAMi's layout; the library reads only the env).
pub const CONTAINER_HOOK_DIR: &str = "/usr/local/vgpu";
pub const CONTAINER_LIBRARY: &str = "/usr/local/vgpu/libvgpu.so";
pub const CONTAINER_PRELOAD: &str = "/etc/ld.so.preload";

/// The host side: `hook_dir` holds `libvgpu.so[.<version>]`, `ld.so.preload` and `containers/`.
#[derive(Clone, Debug)]
pub struct HostLayout {
    pub hook_dir: PathBuf,
    /// `libvgpu.so.<version>` is mounted instead of `libvgpu.so` when it exists (HAMi's `GetLibPath`).
    pub library_version: String,
}

impl HostLayout {
    pub fn containers_dir(&self) -> PathBuf {
        self.hook_dir.join("containers")
    }

    pub fn library(&self) -> PathBuf {
        let versioned = self
            .hook_dir
            .join(format!("libvgpu.so.{}", self.library_version));
        if versioned.is_file() {
            versioned
        } else {
            self.hook_dir.join("libvgpu.so")
        }
    }

    pub fn preload(&self) -> PathBuf {
        self.hook_dir.join("ld.so.preload")
    }
}

/// One GPU given to a container, with its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub uuid: String,
    pub memory_mib: u64,
    /// SM percent, 0..=100 (0: no limit).
    pub cores: u32,
}

/// Fixed slices: each requested replica adds the node's per-replica memory and cores on its GPU.
/// GPUs keep the order in which their first replica was requested.
pub fn fixed_slice_grants(
    replica_ids: &[String],
    gpus: &[Gpu],
    config: &NodeConfig,
) -> Result<Vec<Grant>, String> {
    let mut order: Vec<&Gpu> = Vec::new();
    let mut replicas: HashMap<&str, u64> = HashMap::new();
    for id in replica_ids {
        let uuid = parse_replica_id(id)
            .map(|(u, _)| u)
            .ok_or_else(|| format!("device ID {id:?} is not <UUID>-<n>"))?;
        let gpu = gpus
            .iter()
            .find(|g| g.uuid == uuid)
            .ok_or_else(|| format!("device ID {id:?} names no GPU of this plugin"))?;
        let count = replicas.entry(gpu.uuid.as_str()).or_insert(0);
        if *count == 0 {
            order.push(gpu);
        }
        *count += 1;
    }
    Ok(order
        .into_iter()
        .map(|gpu| {
            let n = replicas[gpu.uuid.as_str()];
            Grant {
                uuid: gpu.uuid.clone(),
                memory_mib: (n * config.replica_memory_mib(gpu.memory_bytes)).min(gpu.memory_mib()),
                cores: (n * u64::from(config.replica_cores)).min(100) as u32,
            }
        })
        .collect())
}

/// The container the answer is for, as far as it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerTarget {
    /// `<podUID>_<container>` (HAMi's name, which the node monitor parses), or `unknown-<random>`
    /// when the pod could not be found.
    pub dir_name: String,
    /// The container's env has `CUDA_DISABLE_CONTROL` set to a true value: no preload mount.
    pub disable_control: bool,
    /// `nvidia.com/priority` of the container, passed as `CUDA_TASK_PRIORITY`.
    pub priority: Option<u64>,
}

impl ContainerTarget {
    pub fn new(pod_uid: &str, container: &str) -> ContainerTarget {
        ContainerTarget {
            dir_name: format!("{pod_uid}_{container}"),
            disable_control: false,
            priority: None,
        }
    }
}

/// The response for one container. `cache_name` is the region file's name in the container's directory
/// (HAMi uses a random UUID; any `*.cache` name works, it just has to be the only one there).
pub fn container_response(
    grants: &[Grant],
    target: &ContainerTarget,
    config: &NodeConfig,
    layout: &HostLayout,
    cache_name: &str,
) -> ContainerAllocateResponse {
    let mut envs = HashMap::new();
    let uuids: Vec<&str> = grants.iter().map(|g| g.uuid.as_str()).collect();
    envs.insert("NVIDIA_VISIBLE_DEVICES".to_string(), uuids.join(","));
    for (i, grant) in grants.iter().enumerate() {
        envs.insert(
            format!("CUDA_DEVICE_MEMORY_LIMIT_{i}"),
            format!("{}m", grant.memory_mib),
        );
    }
    // One SM limit for all devices, the first device's (HAMi does the same).
    envs.insert(
        "CUDA_DEVICE_SM_LIMIT".to_string(),
        grants.first().map(|g| g.cores).unwrap_or(0).to_string(),
    );
    envs.insert(
        "CUDA_DEVICE_MEMORY_SHARED_CACHE".to_string(),
        format!("{CONTAINER_HOOK_DIR}/{cache_name}"),
    );
    envs.insert(
        "LIBCUDA_LOG_LEVEL".to_string(),
        config.libcuda_log_level.to_string(),
    );
    if config.memory_scaling > 1.0 {
        envs.insert("CUDA_OVERSUBSCRIBE".to_string(), "true".to_string());
    }
    match config.core_policy {
        CorePolicy::Default => {}
        CorePolicy::Force => {
            envs.insert(
                "GPU_CORE_UTILIZATION_POLICY".to_string(),
                "force".to_string(),
            );
        }
        CorePolicy::Disable => {
            envs.insert(
                "GPU_CORE_UTILIZATION_POLICY".to_string(),
                "disable".to_string(),
            );
        }
    }
    if let Some(priority) = target.priority {
        envs.insert("CUDA_TASK_PRIORITY".to_string(), priority.to_string());
    }

    let mount = |container: &str, host: &Path, read_only: bool| Mount {
        container_path: container.to_string(),
        host_path: host.to_string_lossy().into_owned(),
        read_only,
    };
    // The directory first: the library mount sits inside it, so a runtime that mounts in order
    // gets the right result too.
    let mut mounts = vec![
        mount(
            CONTAINER_HOOK_DIR,
            &layout.containers_dir().join(&target.dir_name),
            false,
        ),
        mount(CONTAINER_LIBRARY, &layout.library(), true),
    ];
    if !target.disable_control {
        mounts.push(mount(CONTAINER_PRELOAD, &layout.preload(), true));
    }
    // Not mounted: HAMi's /tmp/vgpulock. vgpu takes no node-global locks (hami-contract.md 1.4), and a
    // directory shared writable by every container on the node is only a liability.
    ContainerAllocateResponse {
        envs,
        mounts,
        ..Default::default()
    }
}

/// Creates the container's host directory afresh, mode 0777 (processes in the container run as any
/// user), with an empty `libvgpu.so` placeholder for the library's bind mount to land on.
pub fn prepare_container_dir(layout: &HostLayout, dir_name: &str) -> std::io::Result<PathBuf> {
    if dir_name.is_empty() || dir_name.contains('/') || dir_name.starts_with('.') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad directory name {dir_name:?}"),
        ));
    }
    let dir = layout.containers_dir().join(dir_name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    std::fs::File::create(dir.join("libvgpu.so"))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> Vec<Gpu> {
        vec![
            Gpu {
                index: 0,
                uuid: "GPU-a".into(),
                name: "A".into(),
                memory_bytes: 40 << 30,
                numa: None,
            },
            Gpu {
                index: 1,
                uuid: "GPU-b".into(),
                name: "B".into(),
                memory_bytes: 24 << 30,
                numa: None,
            },
        ]
    }

    #[test]
    fn fixed_slices_add_up_per_gpu() {
        let config = NodeConfig {
            split_count: 4,
            replica_cores: 30,
            ..NodeConfig::default()
        };
        let ids: Vec<String> = ["GPU-b-1", "GPU-a-0", "GPU-b-3", "GPU-b-2", "GPU-b-0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let grants = fixed_slice_grants(&ids, &gpus(), &config).unwrap();
        assert_eq!(
            grants,
            vec![
                Grant {
                    uuid: "GPU-b".into(),
                    memory_mib: 24576,
                    cores: 100
                },
                Grant {
                    uuid: "GPU-a".into(),
                    memory_mib: 10240,
                    cores: 30
                },
            ]
        );
        assert!(fixed_slice_grants(&["GPU-z-0".to_string()], &gpus(), &config).is_err());
        assert!(fixed_slice_grants(&["bogus".to_string()], &gpus(), &config).is_err());
    }

    #[test]
    fn response_carries_the_contract() {
        let layout = HostLayout {
            hook_dir: "/usr/local/vgpu".into(),
            library_version: "0.0.0-none".into(),
        };
        let grants = vec![
            Grant {
                uuid: "GPU-a".into(),
                memory_mib: 3000,
                cores: 30,
            },
            Grant {
                uuid: "GPU-b".into(),
                memory_mib: 5000,
                cores: 0,
            },
        ];
        let mut target = ContainerTarget::new("uid1", "main");
        target.priority = Some(0);
        let config = NodeConfig {
            core_policy: CorePolicy::Force,
            ..NodeConfig::default()
        };
        let r = container_response(&grants, &target, &config, &layout, "x.cache");
        assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(r.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], "3000m");
        assert_eq!(r.envs["CUDA_DEVICE_MEMORY_LIMIT_1"], "5000m");
        assert_eq!(r.envs["CUDA_DEVICE_SM_LIMIT"], "30");
        assert_eq!(
            r.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"],
            "/usr/local/vgpu/x.cache"
        );
        assert_eq!(r.envs["GPU_CORE_UTILIZATION_POLICY"], "force");
        assert_eq!(r.envs["CUDA_TASK_PRIORITY"], "0");
        assert_eq!(r.mounts.len(), 3);
        assert_eq!(
            r.mounts[0].host_path,
            "/usr/local/vgpu/containers/uid1_main"
        );
        assert_eq!(r.mounts[2].container_path, "/etc/ld.so.preload");
        target.disable_control = true;
        let r = container_response(&grants, &target, &config, &layout, "x.cache");
        assert!(r
            .mounts
            .iter()
            .all(|m| m.container_path != "/etc/ld.so.preload"));
    }
}
