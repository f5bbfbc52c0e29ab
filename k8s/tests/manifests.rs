//! The manifests in deploy/: valid against the Kubernetes API schemas (deploy/validate.sh), and the
//! ConfigMap's documented defaults are the plugin's real defaults.

use std::process::Command;

use vgpu_k8s::config::NodeConfig;

#[test]
fn manifests_validate_against_the_api_schemas() {
    let root = testkit::root();
    assert!(
        root.join(".venv/bin/python").exists(),
        "{} is missing: run `scripts/setup-python.sh && deploy/validate.sh`",
        root.join(".venv").display()
    );
    let out = testkit::run(
        &mut Command::new(root.join("deploy/validate.sh")),
        std::time::Duration::from_secs(300),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/validate.sh failed:\n{text}");
    for kind in [
        "daemonset/vgpu-device-plugin",
        "daemonset/vgpu-installer",
        "daemonset/vgpu-monitor",
        "clusterrole/vgpu-device-plugin",
        "configmap/vgpu-node-config",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind} not validated:\n{text}"
        );
    }
}

/// The `config.toml: |` block of deploy/configmap.yaml, de-indented.
fn embedded_config() -> String {
    let yaml = std::fs::read_to_string(testkit::root().join("deploy/configmap.yaml")).unwrap();
    let mut lines = yaml
        .lines()
        .skip_while(|l| l.trim() != "config.toml: |")
        .skip(1)
        .peekable();
    let indent = lines
        .peek()
        .map(|l| l.len() - l.trim_start().len())
        .unwrap();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn configmap_documents_the_real_defaults() {
    let text = embedded_config();
    assert!(text.contains("split_count = 10"), "{text}");
    assert_eq!(
        NodeConfig::parse(&text, "any-node").unwrap(),
        NodeConfig::default()
    );
    // The commented per-node example is valid too.
    let example: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# [[node]]"))
        .map(|l| l.trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let node = NodeConfig::parse(&example, "gpu-node-7").unwrap();
    assert_eq!((node.split_count, node.replica_cores), (4, 25));
}
