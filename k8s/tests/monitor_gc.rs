//! `vgpu-device-plugin monitor-gc`: directories of pods that are gone are removed, everything else
//! stays; with the API server down nothing is removed.

mod common;

use std::process::Command;

use common::apiserver::pod;
use common::{FakeApiServer, NODE};
use serde_json::json;

const LIVE: &str = "3f2b8c1e-9d4a-4b7e-8f00-0123456789ab";
const GONE: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

fn gc(api: &FakeApiServer, dir: &std::path::Path, grace: &str) -> std::process::Output {
    testkit::run(
        Command::new(env!("CARGO_BIN_EXE_vgpu-device-plugin"))
            .args([
                "monitor-gc",
                "--once",
                "--node-name",
                NODE,
                "--grace",
                grace,
                "--api-server",
                &api.url(),
            ])
            .arg("--dir")
            .arg(dir),
        common::DEADLINE,
    )
}

#[test]
fn removes_directories_of_pods_that_are_gone() {
    let dir = testkit::scratch_dir("gc").join("containers");
    for name in [
        format!("{LIVE}_main"),
        format!("{GONE}_main"),
        format!("{GONE}_sidecar"),
        "unknown-0011_main".into(),
        "notes".into(),
    ] {
        std::fs::create_dir_all(dir.join(&name)).unwrap();
        std::fs::write(dir.join(&name).join("x.cache"), b"region").unwrap();
    }
    std::fs::write(dir.join(format!("{GONE}_file")), b"a file, not a directory").unwrap();
    let api = FakeApiServer::start();
    api.add_pod(pod("ml", "alive", LIVE, json!([{"name": "main"}])));
    // A pod with the gone UID on another node does not keep its directory here.
    let mut elsewhere = pod("ml", "elsewhere", GONE, json!([{"name": "main"}]));
    elsewhere["spec"]["nodeName"] = json!("node-b");
    api.add_pod(elsewhere);

    // Within the grace period nothing is removed.
    let out = gc(&api, &dir, "1h");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join(format!("{GONE}_main")).exists());

    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = gc(&api, &dir, "10ms");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected = vec![
        format!("{LIVE}_main"),
        format!("{GONE}_file"),
        "notes".to_string(),
        "unknown-0011_main".to_string(),
    ];
    expected.sort();
    assert_eq!(left, expected, "{log}");
    assert!(log.contains("removed 2 director(ies), kept 3"), "{log}");
    let listed = api.requests();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[1].path,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a"
    );
}

#[test]
fn api_server_down_removes_nothing() {
    let dir = testkit::scratch_dir("gc-down").join("containers");
    std::fs::create_dir_all(dir.join(format!("{GONE}_main"))).unwrap();
    let api = FakeApiServer::start();
    api.set_failing(true);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = gc(&api, &dir, "10ms");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        log.contains("cannot list the pods of node node-a") && log.contains("500"),
        "{log}"
    );
    assert!(dir.join(format!("{GONE}_main")).exists());
}
