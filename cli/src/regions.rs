//! Finding region files and turning their bytes into what the commands show.
//!
//! A region is read as a plain copy of the file (`std::fs::read`), never mapped: a file that shrinks or
//! disappears while we read it gives a short or failed read, which is reported, instead of SIGBUS.

use std::path::{Path, PathBuf};

use vgpu_policy::region::{
    ExtensionInfo, Liveness, ProcessProbe as _, RegionSnapshot, SystemProbe,
};

/// A region file and the container it belongs to, as far as its path tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionFile {
    pub path: PathBuf,
    /// From the directory name `<podUID>_<container>` (HAMi's `/usr/local/vgpu/containers/` layout);
    /// empty when the path does not follow it.
    pub pod_uid: String,
    pub container: String,
}

impl RegionFile {
    pub fn new(path: PathBuf) -> RegionFile {
        let dir_name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        let (pod_uid, container) = match dir_name.as_deref().and_then(|n| n.split_once('_')) {
            // Pod UIDs are UUIDs and container names DNS labels: neither holds '_', so the first one splits.
            Some((pod, ctr)) if !pod.is_empty() && !ctr.is_empty() => {
                (pod.to_string(), ctr.to_string())
            }
            _ => (String::new(), String::new()),
        };
        RegionFile {
            path,
            pod_uid,
            container,
        }
    }
}

/// Where `vgpu ps` looks when given no path: this container's region, else the node's layout.
pub fn default_location() -> PathBuf {
    if let Some(path) =
        std::env::var_os("CUDA_DEVICE_MEMORY_SHARED_CACHE").filter(|p| !p.is_empty())
    {
        return PathBuf::from(path);
    }
    let node = Path::new("/usr/local/vgpu/containers");
    if node.is_dir() {
        return node.to_path_buf();
    }
    PathBuf::from("/tmp/cudevshr.cache")
}

/// The region files at `location`: the file itself, or under a directory every `*.cache` in it, in its
/// subdirectories (`containers/<podUID>_<ctr>/*.cache`), and under a `containers/` subdirectory (when
/// given the host's `/usr/local/vgpu`). Sorted, so output is stable.
pub fn discover(location: &Path) -> std::io::Result<Vec<RegionFile>> {
    let meta = std::fs::metadata(location)?;
    if !meta.is_dir() {
        return Ok(vec![RegionFile::new(location.to_path_buf())]);
    }
    let mut found = Vec::new();
    collect_cache_files(location, &mut found);
    for sub in sorted_entries(location) {
        if sub.is_dir() {
            collect_cache_files(&sub, &mut found);
            if sub.file_name().is_some_and(|n| n == "containers") {
                for container_dir in sorted_entries(&sub) {
                    if container_dir.is_dir() {
                        collect_cache_files(&container_dir, &mut found);
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found.into_iter().map(RegionFile::new).collect())
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn collect_cache_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for path in sorted_entries(dir) {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        // The library's bind-mount placeholder sits next to the region (hami-contract.md 1.2); skip it
        // as HAMi's monitor does.
        if name.ends_with(".cache") && !name.contains("libvgpu.so") && path.is_file() {
            out.push(path);
        }
    }
}

/// One device of a region's device block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The region index (the container's NVML index).
    pub index: usize,
    pub uuid: String,
    /// Bytes; 0 = no limit.
    pub limit_bytes: u64,
    /// Percent; 0 or 100 = no limit.
    pub sm_limit_percent: u64,
    /// The container-wide charge counter of vgpu's extension (None in a HAMi-core region).
    pub charged_bytes: Option<u64>,
}

/// One process's usage of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceUsage {
    pub context_bytes: u64,
    pub module_bytes: u64,
    pub data_bytes: u64,
    pub total_bytes: u64,
    pub sm_util_percent: u64,
}

/// A process slot that is, or was, in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: usize,
    pub pid: i32,
    pub hostpid: i32,
    /// HAMi's status: 0 exited/free, 1 running, 2 suspended.
    pub status: i32,
    /// The process's start time as the library recorded it, in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`), when the region has vgpu's extension.
    pub start_time_ticks: Option<u64>,
    /// Indexed like `Snapshot::devices`.
    pub usage: Vec<DeviceUsage>,
}

/// Everything the commands show from one region file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub major_version: u32,
    pub minor_version: u32,
    pub priority: i32,
    pub utilization_switch: i32,
    pub recent_kernel: i32,
    /// Epoch seconds; 0 = never.
    pub last_kernel_time: u64,
    pub devices: Vec<DeviceInfo>,
    pub slots: Vec<SlotInfo>,
    /// Whether vgpu's extension (start times, reservation counters) is present.
    pub has_vgpu_extension: bool,
}

impl Snapshot {
    /// HAMi's aggregation (hami-contract.md 3.4): sums over slots with status != 0, whatever their pid.
    pub fn device_totals(&self, device: usize) -> DeviceUsage {
        let mut sum = DeviceUsage::default();
        for slot in self.slots.iter().filter(|s| s.status != 0) {
            if let Some(u) = slot.usage.get(device) {
                sum.context_bytes = sum.context_bytes.saturating_add(u.context_bytes);
                sum.module_bytes = sum.module_bytes.saturating_add(u.module_bytes);
                sum.data_bytes = sum.data_bytes.saturating_add(u.data_bytes);
                sum.total_bytes = sum.total_bytes.saturating_add(u.total_bytes);
                sum.sm_util_percent = sum.sm_util_percent.saturating_add(u.sm_util_percent);
            }
        }
        sum
    }
}

/// Reads and decodes one region file with the library's own reader (`vgpu_policy::region`), from a copy of
/// its bytes.
pub fn read_snapshot(path: &Path) -> Result<Snapshot, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let region = RegionSnapshot::read(&bytes).map_err(|e| e.to_string())?;
    Ok(Snapshot::from(region))
}

impl From<RegionSnapshot> for Snapshot {
    fn from(r: RegionSnapshot) -> Snapshot {
        Snapshot {
            major_version: r.major,
            minor_version: r.minor,
            priority: r.priority,
            utilization_switch: r.utilization_switch,
            recent_kernel: r.recent_kernel,
            last_kernel_time: r.last_kernel_time,
            devices: r
                .devices
                .into_iter()
                .map(|d| DeviceInfo {
                    index: d.index,
                    uuid: d.uuid,
                    limit_bytes: d.limit,
                    sm_limit_percent: d.sm_limit,
                    charged_bytes: d.charged,
                })
                .collect(),
            slots: r
                .slots
                .into_iter()
                .map(|s| SlotInfo {
                    slot: s.index,
                    pid: s.pid,
                    hostpid: s.hostpid,
                    status: s.status,
                    // 0 = the library did not know it.
                    start_time_ticks: s.start_time.filter(|&t| t != 0),
                    usage: s
                        .devices
                        .into_iter()
                        .map(|u| DeviceUsage {
                            context_bytes: u.context,
                            module_bytes: u.module,
                            data_bytes: u.data,
                            total_bytes: u.total,
                            sm_util_percent: u.sm_util,
                        })
                        .collect(),
                })
                .collect(),
            has_vgpu_extension: matches!(r.extension, ExtensionInfo::Vgpu { .. }),
        }
    }
}

/// What a slot's process is doing, as far as we can tell from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    Suspended,
    /// The slot says running but no process has that pid (killed without cleaning up).
    Dead,
    /// A process has that pid but started at another time: the pid was reused.
    PidReused,
    /// status 0: the process exited and cleaned up (or the slot was reclaimed).
    Exited,
}

impl ProcessState {
    pub fn label(self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Suspended => "suspended",
            ProcessState::Dead => "dead",
            ProcessState::PidReused => "dead (pid reused)",
            ProcessState::Exited => "exited",
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, ProcessState::Running | ProcessState::Suspended)
    }
}

/// Judges a slot by its pid in *our* PID namespace. Inside the container (or on a machine without
/// containers) that is the namespace the library wrote; on the host, `hostpid` is used when the library
/// knew it, and otherwise the answer can be wrong, which `vgpu ps --help` says.
pub fn process_state(slot: &SlotInfo) -> ProcessState {
    let base = match slot.status {
        0 => return ProcessState::Exited,
        2 => ProcessState::Suspended,
        _ => ProcessState::Running,
    };
    let pid = if in_container_namespace() || slot.hostpid <= 0 {
        slot.pid
    } else {
        slot.hostpid
    };
    // The library's own rule (the one its reclaim uses): gone, or alive with another start time.
    match SystemProbe.probe(pid) {
        Liveness::Dead => return ProcessState::Dead,
        Liveness::Alive {
            start_time: Some(actual),
        } => {
            if slot
                .start_time_ticks
                .is_some_and(|recorded| recorded != actual)
            {
                return ProcessState::PidReused;
            }
        }
        Liveness::Alive { start_time: None } => {}
    }
    base
}

/// Whether we run in the same PID namespace as the processes of the region. We cannot know for sure;
/// we assume yes unless `VGPU_PID_NAMESPACE=host` says we are on the host looking into containers.
fn in_container_namespace() -> bool {
    std::env::var("VGPU_PID_NAMESPACE")
        .map(|v| v != "host")
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_and_container_come_from_the_directory_name() {
        let r = RegionFile::new(PathBuf::from(
            "/usr/local/vgpu/containers/1b2c-3d_trainer/abc.cache",
        ));
        assert_eq!(
            (r.pod_uid.as_str(), r.container.as_str()),
            ("1b2c-3d", "trainer")
        );
        let plain = RegionFile::new(PathBuf::from("/tmp/cudevshr.cache"));
        assert_eq!((plain.pod_uid.as_str(), plain.container.as_str()), ("", ""));
    }

    #[test]
    fn states_follow_pid_and_start_time() {
        let me = std::process::id() as i32;
        let Liveness::Alive {
            start_time: Some(started),
        } = SystemProbe.probe(me)
        else {
            panic!("cannot read our own start time")
        };
        let slot = |pid, status, start| SlotInfo {
            slot: 0,
            pid,
            hostpid: 0,
            status,
            start_time_ticks: start,
            usage: Vec::new(),
        };
        assert_eq!(
            process_state(&slot(me, 1, Some(started))),
            ProcessState::Running
        );
        assert_eq!(process_state(&slot(me, 1, None)), ProcessState::Running);
        assert_eq!(
            process_state(&slot(me, 2, Some(started))),
            ProcessState::Suspended
        );
        assert_eq!(
            process_state(&slot(me, 1, Some(started + 1))),
            ProcessState::PidReused
        );
        assert_eq!(
            process_state(&slot(me, 0, Some(started))),
            ProcessState::Exited
        );
        // Past the kernel's pid_max: never a live process.
        assert_eq!(
            process_state(&slot(i32::MAX - 1, 1, None)),
            ProcessState::Dead
        );
    }

    #[test]
    fn discovery_follows_the_hami_layout_and_skips_the_placeholder() {
        let dir = std::env::temp_dir().join(format!("vgpu-cli-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = dir.join("containers/pod-a_main");
        let b = dir.join("containers/pod-b_side");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("x.cache"), b"").unwrap();
        std::fs::write(a.join("libvgpu.so"), b"").unwrap();
        std::fs::write(b.join("y.cache"), b"").unwrap();
        std::fs::write(b.join("notes.txt"), b"").unwrap();
        for root in [dir.clone(), dir.join("containers")] {
            let found = discover(&root).unwrap();
            let names: Vec<String> = found
                .iter()
                .map(|r| format!("{}_{}", r.pod_uid, r.container))
                .collect();
            assert_eq!(
                names,
                ["pod-a_main", "pod-b_side"],
                "from {}",
                root.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
