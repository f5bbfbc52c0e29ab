//! The parts of Kubernetes objects the plugin reads, and how `Allocate` finds the pod it is answering
//! for (kubelet does not say).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::hami;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "creationTimestamp")]
    pub creation_timestamp: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    #[serde(rename = "nodeName")]
    pub node_name: String,
    #[serde(rename = "initContainers")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodStatus {
    pub phase: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Container {
    pub name: String,
    pub env: Vec<EnvVar>,
    pub resources: Resources,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct EnvVar {
    pub name: String,
    /// Absent for `valueFrom` variables, which the plugin cannot resolve.
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub limits: BTreeMap<String, serde_json::Value>,
    pub requests: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodList {
    pub items: Vec<Pod>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Node {
    pub metadata: ObjectMeta,
}

impl Pod {
    /// Init containers first, then regular containers: the order of HAMi's annotation segments.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.spec
            .init_containers
            .iter()
            .chain(self.spec.containers.iter())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.get(key).map(String::as_str)
    }

    pub fn display_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

impl Container {
    /// Whole units of an extended resource: the limit (kubelet's source of truth for extended
    /// resources), else the request.
    pub fn resource_count(&self, resource: &str) -> u64 {
        self.resources
            .limits
            .get(resource)
            .or_else(|| self.resources.requests.get(resource))
            .and_then(quantity_as_u64)
            .unwrap_or(0)
    }

    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    /// `CUDA_DISABLE_CONTROL` parsed like Go's `strconv.ParseBool` true values (HAMi's plugin does).
    pub fn disables_control(&self) -> bool {
        matches!(
            self.env_value("CUDA_DISABLE_CONTROL"),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

/// An integer quantity (`"2"` or `2`); extended resources must be whole numbers.
fn quantity_as_u64(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// HAMi's choice of pod for `Allocate` (hami-contract.md 5.3): the pod named in the node lock if it is
/// still waiting for devices; otherwise the pending pod on this node with `bind-time`, a bind phase of
/// `allocating` (or `success` with segments left) and `vgpu-node` = this node, the earliest bound first.
pub fn find_hami_pod<'a>(
    pods: &'a [Pod],
    node_name: &str,
    node_lock: Option<&str>,
) -> Option<&'a Pod> {
    let waiting = |p: &&Pod| {
        p.status.phase == "Pending"
            && p.annotation(hami::VGPU_NODE) == Some(node_name)
            && p.annotation(hami::BIND_TIME).is_some()
            && matches!(
                p.annotation(hami::BIND_PHASE),
                Some(hami::PHASE_ALLOCATING | hami::PHASE_SUCCESS)
            )
            && p.annotation(hami::DEVICES_TO_ALLOCATE)
                .is_some_and(|v| !hami::DevicesAnnotation::parse(v).is_done())
    };
    if let Some((namespace, name)) = node_lock.and_then(hami::parse_node_lock) {
        if let Some(pod) = pods
            .iter()
            .filter(waiting)
            .find(|p| p.metadata.namespace == namespace && p.metadata.name == name)
        {
            return Some(pod);
        }
    }
    pods.iter().filter(waiting).min_by_key(|p| {
        let bind_time: u64 = p
            .annotation(hami::BIND_TIME)
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u64::MAX);
        (bind_time, p.metadata.creation_timestamp.clone())
    })
}

/// Without a scheduler extender, the container kubelet is admitting: a pending pod on this node (not
/// one placed by HAMi's scheduler) with a container asking for exactly `count` of `resource` that has not been answered yet (`answered` says
/// which are), the oldest pod first and containers in order. kubelet admits one pod at a time and asks
/// for its containers in order, so this is exact unless two pods with the same request are admitted in
/// the same instant; then their names may swap, never their limits (every slice is the same).
pub fn find_fixed_slice_container<'a>(
    pods: &'a [Pod],
    resource: &str,
    count: u64,
    answered: impl Fn(&Pod, &Container) -> bool,
) -> Option<(&'a Pod, &'a Container)> {
    // Pods HAMi's scheduler placed are answered from their annotations (or failed), never here.
    let mut candidates: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.status.phase == "Pending" && p.annotation(hami::DEVICES_TO_ALLOCATE).is_none()
        })
        .collect();
    candidates.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    candidates.into_iter().find_map(|pod| {
        pod.all_containers()
            .find(|c| c.resource_count(resource) == count && !answered(pod, c))
            .map(|c| (pod, c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reads_resources_env_and_disable_control() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2"}},
                 "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]},
                {"name": "b", "resources": {"requests": {"nvidia.com/gpu": 1}},
                 "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "yes"}, {"name": "X", "valueFrom": {}}]}
            ]},
            "status": {"phase": "Pending"}
        }));
        let c: Vec<&Container> = p.all_containers().collect();
        assert_eq!(c[0].resource_count("nvidia.com/gpu"), 2);
        assert_eq!(c[1].resource_count("nvidia.com/gpu"), 1);
        assert!(c[0].disables_control());
        assert!(
            !c[1].disables_control(),
            "only Go ParseBool's true spellings count"
        );
    }

    #[test]
    fn hami_pod_prefers_the_node_lock_then_earliest_bind() {
        let mk = |name: &str, bind: &str| {
            pod(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "uid": name, "annotations": {
                    "hami.io/vgpu-node": "n1", "hami.io/bind-time": bind, "hami.io/bind-phase": "allocating",
                    "hami.io/vgpu-devices-to-allocate": "GPU-a,NVIDIA,100,0:;"}},
                "status": {"phase": "Pending"}
            }))
        };
        let pods = vec![mk("late", "200"), mk("early", "100")];
        assert_eq!(
            find_hami_pod(&pods, "n1", None).unwrap().metadata.name,
            "early"
        );
        assert_eq!(
            find_hami_pod(&pods, "n1", Some("2025-01-01T00:00:00Z,ns,late"))
                .unwrap()
                .metadata
                .name,
            "late"
        );
        assert!(find_hami_pod(&pods, "n2", None).is_none());
    }
}
