//! Node configuration: how a GPU is sliced into replicas when no scheduler extender decides, which GPUs
//! are handed out, and the values passed to the library. A TOML file (the ConfigMap in
//! `deploy/configmap.yaml` documents every key), with optional per-node sections:
//!
//! ```toml
//! split_count = 4
//! replica_memory = "25%"
//! [[node]]
//! name = "gpu-node-7"
//! replica_memory = "10Gi"
//! ```
//!
//! A file that does not parse, or whose values for this node are out of range, is reported (the log
//! line names the key and the reason) and the built-in defaults are used; sections for other nodes are
//! not judged, so one node's typo does not take the others down.

use std::path::Path;

use serde::Deserialize;

/// How much memory one replica (`nvidia.com/gpu: 1`) gets on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaMemory {
    /// The GPU's memory divided by the split count, so the replicas of a GPU never oversubscribe it.
    EvenShare,
    /// A percentage of the GPU's memory, 1..=100.
    Percent(u32),
    /// A fixed size in bytes (capped at the GPU's memory).
    Bytes(u64),
}

/// Which replicas `GetPreferredAllocation` suggests, at the GPU level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Fill the fullest GPU first, keeping whole GPUs free.
    Binpack,
    /// Use the emptiest GPU first, one replica per GPU while there are GPUs to spread over.
    Spread,
}

/// `GPU_CORE_UTILIZATION_POLICY` (hami-contract.md 3.6). `Default` sets nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorePolicy {
    Default,
    Force,
    Disable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The extended resource advertised to kubelet.
    pub resource_name: String,
    /// Replicas per GPU (HAMi's `deviceSplitCount`).
    pub split_count: u32,
    pub replica_memory: ReplicaMemory,
    /// SM percent per replica, 0..=100; 0 means no SM limit (HAMi's `defaultCores`).
    pub replica_cores: u32,
    /// Scales `devmem` in the register annotation (HAMi's `deviceMemoryScaling`); > 1 also sets
    /// `CUDA_OVERSUBSCRIBE=true`, which the library accepts and ignores.
    pub memory_scaling: f64,
    /// Scales `devcore` in the register annotation (HAMi's `deviceCoreScaling`).
    pub core_scaling: f64,
    pub preferred_allocation: Policy,
    pub core_policy: CorePolicy,
    /// `LIBCUDA_LOG_LEVEL` for containers, 0..=4.
    pub libcuda_log_level: u32,
    pub use_types: Vec<String>,
    pub exclude_types: Vec<String>,
    pub use_uuids: Vec<String>,
    pub exclude_uuids: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            resource_name: "nvidia.com/gpu".to_string(),
            split_count: 10,
            replica_memory: ReplicaMemory::EvenShare,
            replica_cores: 0,
            memory_scaling: 1.0,
            core_scaling: 1.0,
            preferred_allocation: Policy::Spread,
            core_policy: CorePolicy::Default,
            libcuda_log_level: 1,
            use_types: Vec::new(),
            exclude_types: Vec::new(),
            use_uuids: Vec::new(),
            exclude_uuids: Vec::new(),
        }
    }
}

/// The largest split count accepted: replica IDs and the kubelet's device list stay small.
pub const MAX_SPLIT_COUNT: u32 = 1024;

impl NodeConfig {
    /// Memory of one replica on a GPU with `gpu_memory_bytes`, in MiB (what the library's
    /// `CUDA_DEVICE_MEMORY_LIMIT_<i>` gets, as `<MiB>m`).
    pub fn replica_memory_mib(&self, gpu_memory_bytes: u64) -> u64 {
        let bytes = match self.replica_memory {
            ReplicaMemory::EvenShare => gpu_memory_bytes / u64::from(self.split_count.max(1)),
            ReplicaMemory::Percent(p) => {
                (u128::from(gpu_memory_bytes) * u128::from(p) / 100) as u64
            }
            ReplicaMemory::Bytes(b) => b.min(gpu_memory_bytes),
        };
        bytes >> 20
    }

    /// Reads `path` and picks this node's settings. `Err` names the file, the key and the reason.
    pub fn load(path: &Path, node_name: &str) -> Result<NodeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("node config {}: {e}", path.display()))?;
        NodeConfig::parse(&text, node_name)
            .map_err(|e| format!("node config {}: {e}", path.display()))
    }

    /// Parses the TOML text and picks this node's settings: the top level, overridden by the first
    /// `[[node]]` whose `name` is `node_name`.
    pub fn parse(text: &str, node_name: &str) -> Result<NodeConfig, String> {
        let raw: RawSettings =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
        if raw.name.is_some() {
            return Err("`name` belongs in a [[node]] section, not at the top level".to_string());
        }
        let mut config = NodeConfig::default();
        raw.apply_to(&mut config, "")?;
        let sections = raw.node.unwrap_or_default();
        for (i, section) in sections.iter().enumerate() {
            if section.node.is_some() {
                return Err(format!(
                    "node[{i}]: a [[node]] section cannot hold [[node]] sections"
                ));
            }
            if section.name.is_none() {
                return Err(format!("node[{i}]: `name` is missing"));
            }
        }
        if let Some((i, section)) = sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.name.as_deref() == Some(node_name))
        {
            section.apply_to(&mut config, &format!("node[{i}] ({node_name}): "))?;
        }
        Ok(config)
    }
}

/// The file's shape. Every key optional; unknown keys are errors (a typo must not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    name: Option<String>,
    node: Option<Vec<RawSettings>>,
    resource_name: Option<String>,
    split_count: Option<i64>,
    replica_memory: Option<String>,
    replica_cores: Option<i64>,
    memory_scaling: Option<f64>,
    core_scaling: Option<f64>,
    preferred_allocation: Option<String>,
    core_policy: Option<String>,
    libcuda_log_level: Option<i64>,
    use_types: Option<Vec<String>>,
    exclude_types: Option<Vec<String>>,
    use_uuids: Option<Vec<String>>,
    exclude_uuids: Option<Vec<String>>,
}

impl RawSettings {
    fn apply_to(&self, config: &mut NodeConfig, context: &str) -> Result<(), String> {
        let bad = |key: &str, value: &dyn std::fmt::Debug, expected: &str| {
            format!("{context}{key} = {value:?}: expected {expected}")
        };
        if let Some(v) = &self.resource_name {
            if !valid_resource_name(v) {
                return Err(bad(
                    "resource_name",
                    v,
                    "a resource name like \"nvidia.com/gpu\"",
                ));
            }
            config.resource_name = v.clone();
        }
        if let Some(v) = self.split_count {
            match u32::try_from(v) {
                Ok(n @ 1..=MAX_SPLIT_COUNT) => config.split_count = n,
                _ => {
                    return Err(bad(
                        "split_count",
                        &v,
                        &format!("an integer in 1..={MAX_SPLIT_COUNT}"),
                    ))
                }
            }
        }
        if let Some(v) = &self.replica_memory {
            config.replica_memory = parse_replica_memory(v).ok_or_else(|| {
                bad(
                    "replica_memory",
                    v,
                    "\"even\", a percentage \"1%\"..\"100%\", or a size of at least 1Mi like \"4Gi\" / \"4096m\" (no KB/MB/GB)",
                )
            })?;
        }
        if let Some(v) = self.replica_cores {
            match u32::try_from(v) {
                Ok(n @ 0..=100) => config.replica_cores = n,
                _ => {
                    return Err(bad(
                        "replica_cores",
                        &v,
                        "an integer percentage in 0..=100 (0: no SM limit)",
                    ))
                }
            }
        }
        if let Some(v) = self.memory_scaling {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("memory_scaling", &v, "a number > 0"));
            }
            config.memory_scaling = v;
        }
        if let Some(v) = self.core_scaling {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("core_scaling", &v, "a number > 0"));
            }
            config.core_scaling = v;
        }
        if let Some(v) = &self.preferred_allocation {
            config.preferred_allocation = match v.to_ascii_lowercase().as_str() {
                "binpack" => Policy::Binpack,
                "spread" => Policy::Spread,
                _ => return Err(bad("preferred_allocation", v, "\"binpack\" or \"spread\"")),
            };
        }
        if let Some(v) = &self.core_policy {
            config.core_policy = match v.to_ascii_lowercase().as_str() {
                "default" => CorePolicy::Default,
                "force" => CorePolicy::Force,
                "disable" => CorePolicy::Disable,
                _ => {
                    return Err(bad(
                        "core_policy",
                        v,
                        "\"default\", \"force\" or \"disable\"",
                    ))
                }
            };
        }
        if let Some(v) = self.libcuda_log_level {
            match u32::try_from(v) {
                Ok(n @ 0..=4) => config.libcuda_log_level = n,
                _ => return Err(bad("libcuda_log_level", &v, "an integer in 0..=4")),
            }
        }
        for (key, value, target) in [
            ("use_types", &self.use_types, &mut config.use_types),
            (
                "exclude_types",
                &self.exclude_types,
                &mut config.exclude_types,
            ),
            ("use_uuids", &self.use_uuids, &mut config.use_uuids),
            (
                "exclude_uuids",
                &self.exclude_uuids,
                &mut config.exclude_uuids,
            ),
        ] {
            if let Some(list) = value {
                if list.iter().any(|e| e.trim().is_empty()) {
                    return Err(bad(key, list, "a list of non-empty strings"));
                }
                *target = list.iter().map(|e| e.trim().to_string()).collect();
            }
        }
        Ok(())
    }
}

fn parse_replica_memory(text: &str) -> Option<ReplicaMemory> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("even") {
        return Some(ReplicaMemory::EvenShare);
    }
    if let Some(percent) = text.strip_suffix('%') {
        if percent.is_empty()
            || !percent.bytes().all(|b| b.is_ascii_digit())
            || percent.starts_with('0')
        {
            return None;
        }
        return match percent.parse::<u32>().ok()? {
            p @ 1..=100 => Some(ReplicaMemory::Percent(p)),
            _ => None,
        };
    }
    // The library's own grammar, so a slice never has a size libvgpu.so would refuse. A plain "0" would
    // mean "no limit" there, which a slice must never be.
    // Limits are passed in whole MiB: less than 1 MiB would become "0m", which the library rejects.
    match vgpu_policy::config::parse_size(text) {
        Ok(bytes) if bytes >= 1 << 20 => Some(ReplicaMemory::Bytes(bytes)),
        _ => None,
    }
}

/// `[prefix/]name`, DNS-ish characters only.
fn valid_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        && name.matches('/').count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(NodeConfig::parse("", "n").unwrap(), NodeConfig::default());
    }

    #[test]
    fn node_sections_override_the_top_level() {
        let text = r#"
            split_count = 4
            replica_memory = "25%"
            replica_cores = 25
            [[node]]
            name = "a"
            replica_memory = "10Gi"
            preferred_allocation = "binpack"
            [[node]]
            name = "b"
            split_count = 2
        "#;
        let a = NodeConfig::parse(text, "a").unwrap();
        assert_eq!(
            (a.split_count, a.replica_memory, a.replica_cores),
            (4, ReplicaMemory::Bytes(10 << 30), 25)
        );
        assert_eq!(a.preferred_allocation, Policy::Binpack);
        let b = NodeConfig::parse(text, "b").unwrap();
        assert_eq!(
            (b.split_count, b.replica_memory),
            (2, ReplicaMemory::Percent(25))
        );
        assert_eq!(NodeConfig::parse(text, "other").unwrap().split_count, 4);
    }

    #[test]
    fn another_nodes_bad_value_does_not_matter_here() {
        let text = "[[node]]\nname = \"a\"\nsplit_count = 0\n";
        assert!(NodeConfig::parse(text, "b").is_ok());
        let err = NodeConfig::parse(text, "a").unwrap_err();
        assert!(err.contains("node[0] (a): split_count = 0"), "{err}");
    }

    #[test]
    fn malformed_values_name_the_key() {
        for (text, key) in [
            ("split_count = 0", "split_count"),
            ("replica_memory = \"4GB\"", "replica_memory"),
            ("replica_memory = \"0\"", "replica_memory"),
            ("replica_memory = \"512k\"", "replica_memory"),
            ("replica_memory = \"101%\"", "replica_memory"),
            ("replica_cores = 101", "replica_cores"),
            ("preferred_allocation = \"random\"", "preferred_allocation"),
            ("core_policy = \"Forced\"", "core_policy"),
            ("memory_scaling = 0.0", "memory_scaling"),
            ("use_types = [\"\"]", "use_types"),
            ("splitcount = 3", "splitcount"),
            ("split_count = ", "split_count"),
        ] {
            let err = NodeConfig::parse(text, "n").unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn replica_memory_in_mib() {
        let gib40 = 40u64 << 30;
        let mut c = NodeConfig {
            split_count: 4,
            ..NodeConfig::default()
        };
        assert_eq!(c.replica_memory_mib(gib40), 10240);
        c.replica_memory = ReplicaMemory::Percent(30);
        assert_eq!(c.replica_memory_mib(gib40), 12288);
        c.replica_memory = ReplicaMemory::Bytes(3000 << 20);
        assert_eq!(c.replica_memory_mib(gib40), 3000);
        c.replica_memory = ReplicaMemory::Bytes(1 << 40);
        assert_eq!(c.replica_memory_mib(gib40), 40960);
    }
}
