//! The node's GPUs: what they are (discovery), whether they still work (health), which of them this
//! plugin hands out (filters from the node configuration), and the replica device IDs kubelet sees.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::NodeConfig;
use crate::nvml::{DeviceHandle, Nvml};

/// One physical GPU as discovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Host NVML index.
    pub index: u32,
    pub uuid: String,
    /// NVML name, e.g. "NVIDIA A100-SXM4-40GB".
    pub name: String,
    /// Total memory in bytes (0 when the GPU could not be asked, e.g. lost at discovery).
    pub memory_bytes: u64,
    pub numa: Option<i64>,
}

impl Gpu {
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes >> 20
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// With the reason, for the log.
    Unhealthy(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Where GPUs come from: NVML in production; tests of the library may script their own.
pub trait GpuSource: Send + Sync + 'static {
    /// Every GPU of the machine, in host index order, with its health at discovery.
    fn discover(&self) -> Result<Vec<(Gpu, Health)>, String>;
    /// Asks the GPU again (polled).
    fn health(&self, gpu: &Gpu) -> Health;
}

/// GPUs through NVML.
pub struct NvmlSource {
    nvml: Nvml,
    handles: Mutex<HashMap<u32, DeviceHandle>>,
}

impl NvmlSource {
    pub fn open(library: &str) -> Result<NvmlSource, String> {
        Ok(NvmlSource {
            nvml: Nvml::open(library)?,
            handles: Mutex::new(HashMap::new()),
        })
    }

    fn handle(&self, index: u32) -> Result<DeviceHandle, crate::nvml::NvmlError> {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handles.get(&index) {
            return Ok(*h);
        }
        let h = self.nvml.device(index)?;
        handles.insert(index, h);
        Ok(h)
    }
}

impl GpuSource for NvmlSource {
    fn discover(&self) -> Result<Vec<(Gpu, Health)>, String> {
        let count = self.nvml.device_count().map_err(|e| e.to_string())?;
        let mut gpus = Vec::new();
        for index in 0..count {
            // A GPU whose identity cannot be read cannot be advertised (its IDs would be unknown);
            // one that answers who it is but not more is advertised as unhealthy.
            let identity = self
                .handle(index)
                .and_then(|h| Ok((h, self.nvml.uuid(h)?, self.nvml.name(h)?)));
            let (handle, uuid, name) = match identity {
                Ok(found) => found,
                Err(e) => {
                    log_error!("GPU {index}: {e}; not advertised");
                    continue;
                }
            };
            let (memory_bytes, health) = match self.nvml.memory_total(handle) {
                Ok(total) => (total, Health::Healthy),
                Err(e) => (0, Health::Unhealthy(e.to_string())),
            };
            let numa = self.nvml.numa_node(handle);
            gpus.push((
                Gpu {
                    index,
                    uuid,
                    name,
                    memory_bytes,
                    numa,
                },
                health,
            ));
        }
        Ok(gpus)
    }

    fn health(&self, gpu: &Gpu) -> Health {
        let probe = self
            .handle(gpu.index)
            .and_then(|h| self.nvml.memory_total(h));
        match probe {
            Ok(_) => Health::Healthy,
            Err(e) if e.is_gpu_lost() || e.is_reset_required() => Health::Unhealthy(e.to_string()),
            // Other errors (not supported, a transient driver hiccup) say nothing about the GPU itself.
            Err(_) => Health::Healthy,
        }
    }
}

/// Applies the node configuration's GPU filters (HAMi's semantics, hami-contract.md 5.2: a type entry
/// matches as a case-insensitive substring of the NVML name; UUIDs match exactly, trimmed). Returns the
/// GPUs kept, and a line per GPU dropped with the reason.
pub fn filter_gpus<T>(gpus: Vec<(Gpu, T)>, config: &NodeConfig) -> (Vec<(Gpu, T)>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (gpu, extra) in gpus {
        let name = gpu.name.to_ascii_lowercase();
        let type_matches = |entry: &String| name.contains(&entry.trim().to_ascii_lowercase());
        let uuid_matches = |entry: &String| entry.trim() == gpu.uuid;
        let reason = if !config.use_types.is_empty() && !config.use_types.iter().any(type_matches) {
            Some(format!(
                "type {:?} is not in use_types {:?}",
                gpu.name, config.use_types
            ))
        } else if config.exclude_types.iter().any(type_matches) {
            Some(format!(
                "type {:?} matches exclude_types {:?}",
                gpu.name, config.exclude_types
            ))
        } else if !config.use_uuids.is_empty() && !config.use_uuids.iter().any(uuid_matches) {
            Some("UUID is not in use_uuids".to_string())
        } else if config.exclude_uuids.iter().any(uuid_matches) {
            Some("UUID is in exclude_uuids".to_string())
        } else {
            None
        };
        match reason {
            Some(r) => dropped.push(format!(
                "GPU {} ({}): {r}; not advertised",
                gpu.index, gpu.uuid
            )),
            None => kept.push((gpu, extra)),
        }
    }
    (kept, dropped)
}

/// Replica `n` of a GPU: `<UUID>-<n>` (HAMi's form; at most 63 characters for a 40-character UUID).
pub fn replica_id(uuid: &str, n: u32) -> String {
    format!("{uuid}-{n}")
}

/// The GPU UUID and replica number of a replica ID.
pub fn parse_replica_id(id: &str) -> Option<(&str, u32)> {
    let (uuid, n) = id.rsplit_once('-')?;
    if uuid.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((uuid, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str, name: &str) -> (Gpu, ()) {
        (
            Gpu {
                index,
                uuid: uuid.into(),
                name: name.into(),
                memory_bytes: 1 << 34,
                numa: None,
            },
            (),
        )
    }

    #[test]
    fn replica_ids_round_trip() {
        let id = replica_id("GPU-0f3a2b1c-aaaa-bbbb-cccc-0123456789ab", 7);
        assert_eq!(id, "GPU-0f3a2b1c-aaaa-bbbb-cccc-0123456789ab-7");
        assert_eq!(
            parse_replica_id(&id),
            Some(("GPU-0f3a2b1c-aaaa-bbbb-cccc-0123456789ab", 7))
        );
        assert_eq!(parse_replica_id("GPU-x-"), None);
        assert_eq!(parse_replica_id("nodash"), None);
        assert_eq!(parse_replica_id("GPU-x-1a"), None);
    }

    #[test]
    fn filters_follow_hami_semantics() {
        let all = vec![
            gpu(0, "GPU-a", "NVIDIA A100-SXM4-40GB"),
            gpu(1, "GPU-b", "NVIDIA L4"),
            gpu(2, "GPU-c", "NVIDIA L4"),
        ];
        let config = NodeConfig {
            use_types: vec!["a100".into()],
            ..NodeConfig::default()
        };
        let (kept, dropped) = filter_gpus(all.clone(), &config);
        assert_eq!(kept.iter().map(|g| g.0.index).collect::<Vec<_>>(), vec![0]);
        assert_eq!(dropped.len(), 2);

        let config = NodeConfig {
            exclude_types: vec!["L4".into()],
            exclude_uuids: vec![" GPU-a ".into()],
            ..NodeConfig::default()
        };
        assert!(filter_gpus(all.clone(), &config).0.is_empty());

        let config = NodeConfig {
            use_uuids: vec!["GPU-c".into(), "GPU-zzz".into()],
            ..NodeConfig::default()
        };
        assert_eq!(
            filter_gpus(all, &config)
                .0
                .iter()
                .map(|g| g.0.index)
                .collect::<Vec<_>>(),
            vec![2]
        );
    }
}
