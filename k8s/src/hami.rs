//! HAMi's scheduler protocol as the device plugin sees it (hami-contract.md 5.3, 5.4): the pod
//! annotations the scheduler extender writes for `Allocate`, the node lock, and the register annotation
//! the extender reads to learn the node's GPUs.

use serde::Serialize;

use crate::config::NodeConfig;
use crate::gpus::Gpu;

pub const DEVICES_TO_ALLOCATE: &str = "hami.io/vgpu-devices-to-allocate";
pub const DEVICES_ALLOCATED: &str = "hami.io/vgpu-devices-allocated";
pub const VGPU_NODE: &str = "hami.io/vgpu-node";
pub const BIND_PHASE: &str = "hami.io/bind-phase";
pub const BIND_TIME: &str = "hami.io/bind-time";
pub const NODE_LOCK: &str = "hami.io/mutex.lock";
pub const NODE_REGISTER: &str = "hami.io/node-nvidia-register";

pub const PHASE_ALLOCATING: &str = "allocating";
pub const PHASE_SUCCESS: &str = "success";
pub const PHASE_FAILED: &str = "failed";

/// The vendor field HAMi writes for NVIDIA GPUs in allocation annotations.
pub const NVIDIA_VENDOR: &str = "NVIDIA";

/// One device the scheduler chose for a container: `UUID,NVIDIA,<memMiB>,<cores>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenDevice {
    pub uuid: String,
    pub vendor: String,
    pub memory_mib: u64,
    pub cores: u32,
}

/// `hami.io/vgpu-devices-to-allocate` split into its per-container segments (init containers first,
/// then regular containers; an empty segment for a container without GPUs or already allocated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicesAnnotation {
    /// The raw segments, without their `;`. Kept as text so that clearing one segment rewrites nothing
    /// else (fields we do not know survive).
    segments: Vec<String>,
}

impl DevicesAnnotation {
    pub fn parse(value: &str) -> DevicesAnnotation {
        let mut segments: Vec<String> = value.split(';').map(str::to_string).collect();
        // Every segment ends in ';', so the text after the last one is empty.
        if segments.last().is_some_and(|s| s.trim().is_empty()) {
            segments.pop();
        }
        DevicesAnnotation { segments }
    }

    /// The first segment that still lists devices: its position (the container's index among init +
    /// regular containers) and the devices. `Err` when that segment is malformed.
    pub fn next(&self) -> Option<(usize, Result<Vec<ChosenDevice>, String>)> {
        let (i, segment) = self
            .segments
            .iter()
            .enumerate()
            .find(|(_, s)| !s.trim().is_empty())?;
        Some((i, parse_segment(segment)))
    }

    pub fn is_done(&self) -> bool {
        self.segments.iter().all(|s| s.trim().is_empty())
    }

    /// Empties segment `i` (HAMi's plugin does this once it has answered for that container).
    pub fn clear(&mut self, i: usize) {
        if let Some(s) = self.segments.get_mut(i) {
            s.clear();
        }
    }

    pub fn encode(&self) -> String {
        self.segments.iter().map(|s| format!("{s};")).collect()
    }
}

fn parse_segment(segment: &str) -> Result<Vec<ChosenDevice>, String> {
    let mut devices = Vec::new();
    for item in segment.split(':').map(str::trim).filter(|s| !s.is_empty()) {
        let fields: Vec<&str> = item.split(',').map(str::trim).collect();
        if fields.len() < 4 {
            return Err(format!(
                "device {item:?} is not UUID,VENDOR,MEMORY_MIB,CORES"
            ));
        }
        let uuid = fields[0];
        if uuid.is_empty() {
            return Err(format!("device {item:?} has an empty UUID"));
        }
        let memory_mib = fields[2]
            .parse::<u64>()
            .ok()
            .filter(|&m| m > 0 && m <= i32::MAX as u64)
            .ok_or_else(|| {
                format!(
                    "device {item:?}: memory {:?} is not a MiB count in 1..=2147483647",
                    fields[2]
                )
            })?;
        let cores = fields[3]
            .parse::<u32>()
            .ok()
            .filter(|&c| c <= 100)
            .ok_or_else(|| {
                format!(
                    "device {item:?}: cores {:?} is not a percentage in 0..=100",
                    fields[3]
                )
            })?;
        devices.push(ChosenDevice {
            uuid: uuid.to_string(),
            vendor: fields[1].to_string(),
            memory_mib,
            cores,
        });
    }
    if devices.is_empty() {
        return Err(format!("segment {segment:?} lists no device"));
    }
    Ok(devices)
}

/// `hami.io/mutex.lock`: `<RFC3339>,<namespace>,<pod>` (the pod part is absent in old versions).
pub fn parse_node_lock(value: &str) -> Option<(String, String)> {
    let mut parts = value.splitn(3, ',');
    let _time = parts.next()?;
    let namespace = parts.next()?.trim();
    let name = parts.next()?.trim();
    (!namespace.is_empty() && !name.is_empty()).then(|| (namespace.to_string(), name.to_string()))
}

/// One entry of `hami.io/node-nvidia-register`. Field names and `omitempty` behaviour follow HAMi's
/// `DeviceInfo` JSON (zero numbers and empty strings are left out; `health` is always written because
/// a missing one reads as unhealthy).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegisteredDevice {
    pub id: String,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub index: u32,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub count: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub devmem: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub devcore: i64,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub device_type: String,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub numa: i64,
    pub mode: String,
    pub health: bool,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// HAMi prefixes the NVML name with `NVIDIA-` unless it already starts with `NVIDIA`.
pub fn device_type(nvml_name: &str) -> String {
    if nvml_name.starts_with("NVIDIA") {
        nvml_name.to_string()
    } else {
        format!("NVIDIA-{nvml_name}")
    }
}

/// The register annotation's value for the advertised GPUs and their health.
pub fn register_annotation(gpus: &[(Gpu, bool)], config: &NodeConfig) -> String {
    let entries: Vec<RegisteredDevice> = gpus
        .iter()
        .map(|(gpu, healthy)| RegisteredDevice {
            id: gpu.uuid.clone(),
            index: gpu.index,
            count: i64::from(config.split_count),
            devmem: (gpu.memory_mib() as f64 * config.memory_scaling) as i64,
            devcore: (100.0 * config.core_scaling) as i64,
            device_type: device_type(&gpu.name),
            numa: gpu.numa.unwrap_or(0),
            mode: "hami-core".to_string(),
            health: *healthy,
        })
        .collect();
    serde_json::to_string(&entries).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_pop_in_order_and_keep_empty_ones() {
        let mut a = DevicesAnnotation::parse(
            "GPU-aaaa,NVIDIA,3000,30:;;GPU-aaaa,NVIDIA,5000,0:GPU-bbbb,NVIDIA,100,0:;",
        );
        let (i, devices) = a.next().unwrap();
        assert_eq!(i, 0);
        assert_eq!(
            devices.unwrap(),
            vec![ChosenDevice {
                uuid: "GPU-aaaa".into(),
                vendor: "NVIDIA".into(),
                memory_mib: 3000,
                cores: 30
            }]
        );
        a.clear(0);
        assert_eq!(
            a.encode(),
            ";;GPU-aaaa,NVIDIA,5000,0:GPU-bbbb,NVIDIA,100,0:;"
        );
        let (i, devices) = a.next().unwrap();
        assert_eq!((i, devices.unwrap().len()), (2, 2));
        a.clear(2);
        assert!(a.is_done());
        assert_eq!(a.encode(), ";;;");
        assert!(a.next().is_none());
    }

    #[test]
    fn malformed_segments_are_errors() {
        for bad in [
            "GPU-a,NVIDIA,3000:;",
            "GPU-a,NVIDIA,lots,0:;",
            "GPU-a,NVIDIA,0,0:;",
            "GPU-a,NVIDIA,10,101:;",
            ",NVIDIA,1,1:;",
        ] {
            let (_, r) = DevicesAnnotation::parse(bad).next().unwrap();
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn node_lock_names_the_pod() {
        assert_eq!(
            parse_node_lock("2025-04-19T10:30:00Z,my-namespace,my-pod"),
            Some(("my-namespace".into(), "my-pod".into()))
        );
        assert_eq!(parse_node_lock("2025-04-19T10:30:00Z"), None);
    }

    #[test]
    fn register_json_matches_hami_field_names() {
        let gpu = Gpu {
            index: 1,
            uuid: "GPU-b".into(),
            name: "Tesla T4".into(),
            memory_bytes: 16 << 30,
            numa: None,
        };
        let config = NodeConfig {
            split_count: 4,
            ..NodeConfig::default()
        };
        assert_eq!(
            register_annotation(&[(gpu, true)], &config),
            r#"[{"id":"GPU-b","index":1,"count":4,"devmem":16384,"devcore":100,"type":"NVIDIA-Tesla T4","mode":"hami-core","health":true}]"#
        );
    }
}
