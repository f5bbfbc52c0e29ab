//! The kubelet's device plugin API, v1beta1 (generated from `k8s/proto/api.proto`).

#[rustfmt::skip]
pub mod v1beta1;

/// What `RegisterRequest.version` must say.
pub const VERSION: &str = "v1beta1";
/// The kubelet's registration socket, relative to the device plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The kubelet's default device plugin directory.
pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
