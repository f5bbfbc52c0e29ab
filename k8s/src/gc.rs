//! The node monitor's cleanup: per-container directories (`<hook>/containers/<podUID>_<container>`)
//! whose pod is no longer on this node are removed, once older than a grace period (HAMi's monitor
//! does the same after `HAMI_RESYNC_INTERVAL`, 5 minutes). The grace covers the race between listing
//! the pods and a new pod's `Allocate` creating its directory.
//!
//! Directories not named `<pod UID>_<container>` (e.g. `unknown-*` from an `Allocate` that could not
//! identify its pod) are never touched: nothing says whether they are still in use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::kube::KubeClient;

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub dir: PathBuf,
    pub node_name: String,
    pub grace: Duration,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub kept: usize,
}

/// The pod UID of a directory name `<uid>_<container>`, if it has that shape.
pub fn pod_uid_of(dir_name: &str) -> Option<&str> {
    let (uid, container) = dir_name.split_once('_')?;
    let shape_ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    (shape_ok && !container.is_empty()).then_some(uid)
}

/// Which entries to remove: named for a pod that is not in `live_uids`, and last modified more than
/// `grace` before `now`.
pub fn plan_removals(
    entries: &[(String, SystemTime)],
    live_uids: &HashSet<String>,
    now: SystemTime,
    grace: Duration,
) -> Vec<String> {
    entries
        .iter()
        .filter(|(name, modified)| {
            let Some(uid) = pod_uid_of(name) else {
                return false;
            };
            let old_enough = now
                .duration_since(*modified)
                .map(|age| age >= grace)
                .unwrap_or(false);
            !live_uids.contains(uid) && old_enough
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// One pass: list the node's pods, then remove the directories of pods that are gone. If the pods
/// cannot be listed nothing is removed.
pub async fn gc_once(kube: &KubeClient, options: &GcOptions) -> Result<GcReport, String> {
    let pods = kube
        .list_node_pods(&options.node_name)
        .await
        .map_err(|e| format!("cannot list the pods of node {}: {e}", options.node_name))?;
    let live: HashSet<String> = pods.into_iter().map(|p| p.metadata.uid).collect();
    let entries = read_entries(&options.dir)?;
    let plan = plan_removals(&entries, &live, SystemTime::now(), options.grace);
    let mut report = GcReport {
        kept: entries.len() - plan.len(),
        ..GcReport::default()
    };
    for name in plan {
        let path = options.dir.join(&name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                log_info!(
                    "removed {} (its pod is no longer on node {})",
                    path.display(),
                    options.node_name
                );
                report.removed.push(name);
            }
            Err(e) => log_warn!("cannot remove {}: {e}", path.display()),
        }
    }
    Ok(report)
}

fn read_entries(dir: &Path) -> Result<Vec<(String, SystemTime)>, String> {
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut entries = Vec::new();
    for entry in listing.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        // Only real directories: a symlink planted here must not make us delete its target.
        if !meta.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        entries.push((name, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f2b8c1e-9d4a-4b7e-8f00-0123456789ab";
    const GONE: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

    #[test]
    fn names_must_look_like_pod_directories() {
        assert_eq!(pod_uid_of(&format!("{UID}_main")), Some(UID));
        assert_eq!(pod_uid_of(&format!("{UID}_")), None);
        assert_eq!(pod_uid_of("unknown-1234_main"), None);
        assert_eq!(pod_uid_of("lost+found"), None);
    }

    #[test]
    fn removes_only_gone_and_old_enough() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let old = now - Duration::from_secs(600);
        let fresh = now - Duration::from_secs(10);
        let entries = vec![
            (format!("{UID}_main"), old),
            (format!("{GONE}_main"), old),
            (format!("{GONE}_side"), fresh),
            ("unknown-12_main".to_string(), old),
        ];
        let live = HashSet::from([UID.to_string()]);
        assert_eq!(
            plan_removals(&entries, &live, now, Duration::from_secs(300)),
            vec![format!("{GONE}_main")]
        );
    }
}
