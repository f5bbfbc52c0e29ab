//! GPU health end to end: the real `vgpu-device-plugin serve` against the simulated NVML and the
//! in-test kubelet. While the plugin runs, `simgpu-ctl lost 1 on` (another process) marks GPU 1 lost
//! machine-wide; ListAndWatch must then report that GPU's replicas Unhealthy, and Healthy again after
//! `simgpu-ctl lost 1 off`. (`health.rs` covers the same transitions through the `GpuSource` seam.)

mod common;

use std::path::PathBuf;

use common::{within, FakeKubelet, Setup, GPU_A, GPU_B};
use vgpu_k8s::api::v1beta1::{Empty, ListAndWatchResponse};

const SPLIT: u32 = 2;

/// `simgpu-ctl`, built with the simulated NVML by `scripts/build-artifacts.sh`.
fn simgpu_ctl() -> PathBuf {
    let ctl = testkit::root().join("target/release/simgpu-ctl");
    assert!(
        ctl.exists(),
        "{} is missing: run `scripts/build-artifacts.sh` (the README's test command does) and try again",
        ctl.display()
    );
    ctl
}

fn set_lost(setup: &Setup, index: u32, on: bool) {
    let state = if on { "on" } else { "off" };
    let out = testkit::run_ok(
        setup
            .machine
            .command(simgpu_ctl())
            .args(["lost", &index.to_string(), state]),
        common::DEADLINE,
    );
    assert_eq!(out.trim(), format!("device={index} lost={state}"));
}

fn summary(response: &ListAndWatchResponse) -> Vec<(String, String)> {
    response
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.health.clone()))
        .collect()
}

fn replicas(uuid: &str, health: &str) -> Vec<(String, String)> {
    (0..SPLIT)
        .map(|n| (format!("{uuid}-{n}"), health.to_string()))
        .collect()
}

/// The next list that differs from `previous` (a repeated list tells the kubelet nothing new).
async fn next_change(
    stream: &mut tonic::Streaming<ListAndWatchResponse>,
    previous: &[(String, String)],
    what: &str,
) -> Vec<(String, String)> {
    loop {
        let response = within(what, stream.message())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: the stream ended"));
        let list = summary(&response);
        if list != previous {
            return list;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_lost_while_serving_turns_unhealthy_and_back() {
    let setup = Setup::new("health-sim", &format!("split_count = {SPLIT}\n"));
    let mut kubelet = FakeKubelet::start(&setup.plugin_dir);
    let mut plugin = setup.start_plugin(None, &[]);
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.connect(&registration.endpoint).await;
    let mut stream = within("ListAndWatch", client.list_and_watch(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let first = within("first list", stream.message())
        .await
        .unwrap()
        .expect("a device list");
    let healthy = [replicas(GPU_A, "Healthy"), replicas(GPU_B, "Healthy")].concat();
    assert_eq!(summary(&first), healthy);

    set_lost(&setup, 1, true);
    let lost = next_change(&mut stream, &healthy, "the list after GPU 1 is lost").await;
    assert_eq!(
        lost,
        [replicas(GPU_A, "Healthy"), replicas(GPU_B, "Unhealthy")].concat()
    );
    let log = plugin.wait_for_log(&format!("GPU 1 {GPU_B} is unhealthy"));
    assert!(log.contains("GPU is lost"), "{log}");

    set_lost(&setup, 1, false);
    let recovered = next_change(&mut stream, &lost, "the list after GPU 1 recovers").await;
    assert_eq!(recovered, healthy);
    plugin.wait_for_log(&format!("GPU 1 {GPU_B} is healthy again"));
    assert!(plugin.is_running());
}
