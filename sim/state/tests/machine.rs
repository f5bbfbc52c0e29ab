//! The shared machine: several `Machine`s (and processes) on one state file.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simgpu_state::{Config, Machine, SimError};

fn scratch(label: &str) -> PathBuf {
    testkit::scratch_dir(&format!("simgpu-state-{label}")).join("machine.state")
}

fn config(spec: &str) -> Config {
    let spec = spec.to_string();
    Config::from_lookup(&|k| (k == "SIMGPU_DEVICES").then(|| spec.clone())).unwrap()
}

const GI: u64 = 1 << 30;

#[test]
fn alloc_past_capacity_fails_machine_wide() {
    let path = scratch("capacity");
    let a = Machine::open(&path, config("mem=4Gi;mem=1Gi")).unwrap();
    let b = Machine::open(&path, config("mem=4Gi;mem=1Gi")).unwrap();
    assert_eq!(a.mem_info(0), (4 * GI, 4 * GI));
    a.alloc(0, 3 * GI).unwrap();
    assert_eq!(b.mem_info(0), (GI, 4 * GI), "b sees a's allocation");
    assert_eq!(b.alloc(0, 2 * GI), Err(SimError::OutOfMemory));
    b.alloc(0, GI).unwrap();
    assert_eq!(a.alloc(0, 1), Err(SimError::OutOfMemory));
    // The other device is independent.
    a.alloc(1, GI).unwrap();
    assert_eq!(a.alloc(1, 1), Err(SimError::OutOfMemory));
    // a and b are one process, so one slot holds both charges.
    assert_eq!(a.process_used(0), 4 * GI);
    b.free(0, GI);
    assert_eq!(a.mem_info(0), (GI, 4 * GI));
    // Freeing more than the process holds gives back only what it holds.
    b.free(0, 10 * GI);
    assert_eq!(a.mem_info(0), (4 * GI, 4 * GI));
    a.free(0, 3 * GI);
    assert_eq!(a.mem_info(0), (4 * GI, 4 * GI));
    assert_eq!(b.process_used(0), 0);
    assert_eq!(a.alloc(7, 1), Err(SimError::InvalidDevice));
    assert_eq!(a.mem_info(7), (0, 0));
    // Both are this pid: the process list merges them.
    a.alloc(0, 5).unwrap();
    b.alloc(0, 7).unwrap();
    let procs = a.processes(0);
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].pid, std::process::id());
    assert_eq!(procs[0].used_bytes, 12);
}

#[test]
fn racing_threads_never_overcommit() {
    let path = scratch("race");
    let m = Machine::open(&path, config("mem=1000")).unwrap();
    let won = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    if m.alloc(0, 3).is_ok() {
                        won.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(won.into_inner(), 999);
    assert_eq!(m.mem_info(0), (1, 1000));
}

#[test]
fn devices_and_driver_version_come_from_config() {
    let path = scratch("devices");
    let m = Machine::open(&path, Config::default_machine()).unwrap();
    assert_eq!(m.devices().len(), 2);
    assert_eq!(m.devices()[1].name, "NVIDIA L4");
    assert_eq!(m.driver_version(), 12090);
    assert_eq!(m.device(1).unwrap().sms, 58);
    assert!(m.device(2).is_none());
}

#[test]
fn timeline_serializes_launches_across_machines() {
    let path = scratch("timeline");
    let a = Machine::open(&path, config("mem=1Gi")).unwrap();
    let b = Machine::open(&path, config("mem=1Gi")).unwrap();
    let mut all = Vec::new();
    std::thread::scope(|s| {
        let ha = s.spawn(|| (0..500).map(|_| a.launch(0, 1_000, 0)).collect::<Vec<_>>());
        let hb = s.spawn(|| (0..500).map(|_| b.launch(0, 2_000, 0)).collect::<Vec<_>>());
        all.extend(ha.join().unwrap());
        all.extend(hb.join().unwrap());
    });
    all.sort();
    for w in all.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {:?} then {:?}", w[0], w[1]);
    }
    for (s, e) in &all {
        assert!(e - s == 1_000 || e - s == 2_000);
    }
    let expect = 500 * 1_000 + 500 * 2_000;
    assert_eq!(a.total_busy_ns(0, None), expect);
    assert_eq!(a.launches(0), 1000);
    let end = all.last().unwrap().1;
    assert_eq!(a.busy_until(0), end);
    let first = all.first().unwrap().0;
    assert_eq!(b.busy_ns(0, None, first, end), expect);
    assert_eq!(b.busy_ns(0, Some(std::process::id()), 0, u64::MAX), expect);
    assert_eq!(b.busy_ns(0, Some(1), 0, u64::MAX), 0);
    // not_before: a launch queued behind a stream's tail starts there.
    let later = end.max(a.now_ns()) + 1_000_000_000; // far enough ahead of any clock
    assert_eq!(a.launch(0, 10, later), (later, later + 10));
}

#[test]
fn busy_ns_clips_to_the_window_and_splits_by_pid() {
    let path = scratch("busy");
    let m = Machine::open(&path, config("mem=1Gi;mem=1Gi")).unwrap();
    let t0 = m.now_ns() + 60_000_000_000; // well in the future, so the slots are exactly where we put them
    assert_eq!(m.launch(1, 100, t0), (t0, t0 + 100));
    assert_eq!(m.launch(1, 100, t0 + 1_000), (t0 + 1_000, t0 + 1_100));
    assert_eq!(m.busy_ns(1, None, t0 + 50, t0 + 1_050), 100);
    assert_eq!(m.busy_ns(1, None, t0, t0 + 2_000), 200);
    assert_eq!(m.busy_ns(1, None, t0 + 100, t0 + 1_000), 0);
    assert_eq!(
        m.busy_ns(0, None, 0, u64::MAX),
        0,
        "the other device is idle"
    );
    assert_eq!(
        m.busy_by_pid(1, t0, t0 + 2_000),
        vec![(std::process::id(), 200)]
    );
    assert_eq!(m.total_busy_ns(1, Some(std::process::id())), 200);
    assert_eq!(m.intervals_since(1, t0 + 100).len(), 1);
}

#[test]
fn wait_until_reaches_the_deadline() {
    let path = scratch("wait");
    let m = Machine::open(&path, config("mem=1Gi")).unwrap();
    let (_, end) = m.launch(0, 2_000_000, 0);
    m.wait_until(end);
    assert!(m.now_ns() >= end);
}

#[test]
fn foreign_or_corrupt_files_are_refused_and_left_alone() {
    let path = scratch("foreign");
    std::fs::write(&path, b"this is somebody else's file, not a GPU").unwrap();
    match Machine::open(&path, Config::default_machine()) {
        Err(SimError::StateFile(msg)) => assert!(msg.contains("foreign magic"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is somebody else's file, not a GPU"
    );

    // Our magic but a truncated body: corrupt.
    let path = scratch("truncated");
    drop(Machine::open(&path, Config::default_machine()).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(100_000).unwrap();
    match Machine::open(&path, Config::default_machine()) {
        Err(SimError::StateFile(msg)) => assert!(msg.contains("inconsistent header"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // Another layout version.
    let path = scratch("version");
    drop(Machine::open(&path, Config::default_machine()).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 99;
    std::fs::write(&path, &bytes).unwrap();
    match Machine::open(&path, Config::default_machine()) {
        Err(SimError::StateFile(msg)) => assert!(msg.contains("layout version 99"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn another_spec_rebuilds_an_unused_machine_and_refuses_a_used_one() {
    let path = scratch("respec");
    let a = Machine::open(&path, config("mem=1Gi")).unwrap();
    match Machine::open(&path, config("mem=2Gi")) {
        Err(SimError::StateFile(msg)) => assert!(msg.contains("other devices"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(a);
    // Our own pid is still live and registered (the slot outlives the dropped Machine until the
    // process exits), so only a child process can show the rebuild: a fresh file stands in.
    let path2 = scratch("respec2");
    std::fs::copy(&path, &path2).unwrap();
    // Rewrite the owner pids to a dead one: the machine is then unused.
    let dead = dead_pid();
    let mut bytes = std::fs::read(&path2).unwrap();
    mark_all_slots_owned_by(&mut bytes, dead);
    std::fs::write(&path2, &bytes).unwrap();
    let b = Machine::open(&path2, config("mem=2Gi")).unwrap();
    assert_eq!(b.mem_info(0), (2 * GI, 2 * GI));
}

/// A pid that no process has now: a child we started and reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn mark_all_slots_owned_by(bytes: &mut [u8], pid: u32) {
    use simgpu_state::layout::*;
    for i in 0..MAX_SLOTS {
        let at = SLOTS_OFFSET + i * SLOT_BYTES;
        let owner = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if owner_kind(owner) == SLOT_LIVE {
            bytes[at..at + 8].copy_from_slice(&owner_word(SLOT_LIVE, pid).to_le_bytes());
        }
    }
}

#[test]
fn a_dead_process_memory_comes_back() {
    let path = scratch("dead-slot");
    let m = Machine::open(&path, config("mem=4Gi")).unwrap();
    // A child allocates 3 GiB and exits without freeing it.
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_allocates_and_waits",
            "--test-threads",
            "1",
        ])
        .env("SIMGPU_TEST_CHILD_STATE", &path)
        .env("SIMGPU_TEST_CHILD_SECONDS", "0")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Still charged in the file, as nobody has looked since.
    let bytes = std::fs::read(&path).unwrap();
    let at = simgpu_state::layout::DEVICES_OFFSET;
    assert_eq!(bytes[at..at + 8], (3 * GI).to_le_bytes());
    assert_eq!(
        m.processes(0).iter().map(|p| p.pid).collect::<Vec<_>>(),
        Vec::<u32>::new()
    );
    assert_eq!(m.mem_info(0), (4 * GI, 4 * GI));
    m.alloc(0, 2 * GI).unwrap();
    assert_eq!(m.process_used(0), 2 * GI);
}

/// Run as a child process by `a_killed_process_memory_comes_back` and `a_dead_process_memory_comes_back`:
/// allocate, report, then wait `SIMGPU_TEST_CHILD_SECONDS` (default 60) and exit without freeing.
#[test]
fn child_allocates_and_waits() {
    let Ok(path) = std::env::var("SIMGPU_TEST_CHILD_STATE") else {
        return;
    };
    let seconds = std::env::var("SIMGPU_TEST_CHILD_SECONDS").map_or(60, |s| s.parse().unwrap());
    let m = Machine::open(std::path::Path::new(&path), config("mem=4Gi")).unwrap();
    m.alloc(0, 3 * GI).unwrap();
    std::fs::write(format!("{path}.ready"), b"1").unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    std::mem::forget(m);
}

#[test]
fn a_killed_process_memory_comes_back() {
    let path = scratch("sigkill");
    let m = Machine::open(&path, config("mem=4Gi")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_allocates_and_waits",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SIMGPU_TEST_CHILD_STATE", &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ready = PathBuf::from(format!("{}.ready", path.display()));
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "child never allocated"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(m.mem_info(0), (GI, 4 * GI));
    let procs = m.processes(0);
    assert_eq!(procs.len(), 1);
    assert_eq!((procs[0].pid, procs[0].used_bytes), (child.id(), 3 * GI));
    assert_eq!(m.alloc(0, 2 * GI), Err(SimError::OutOfMemory));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The failing allocation reclaims the dead child's slot by itself.
    m.alloc(0, 2 * GI).unwrap();
    assert_eq!(m.mem_info(0), (2 * GI, 4 * GI));
    assert!(m.processes(0).iter().all(|p| p.pid != child.id()));
}

#[test]
fn the_live_lost_flag_is_machine_wide_and_clears() {
    let path = scratch("live-lost");
    let a = Machine::open(&path, config("mem=4Gi;mem=2Gi")).unwrap();
    let b = Machine::open(&path, config("mem=4Gi;mem=2Gi")).unwrap();
    a.alloc(1, GI).unwrap();
    assert!(!a.device_lost(1));

    b.set_device_lost(1, true).unwrap();
    assert!(a.device_lost(1), "a sees b's flag at once");
    assert!(!a.device_lost(0), "the other device is not lost");
    assert_eq!(a.alloc(1, 1), Err(SimError::DeviceLost));
    a.alloc(0, 1).unwrap();
    // What was allocated before stays charged while the device is lost.
    assert_eq!(b.mem_info(1), (GI, 2 * GI));
    // The flag lives in the file, byte for byte where the layout says.
    let bytes = std::fs::read(&path).unwrap();
    let at = simgpu_state::layout::DEVICES_OFFSET + simgpu_state::layout::DEVICE_STATE_BYTES + 192;
    assert_eq!(bytes[at..at + 4], 1u32.to_le_bytes());
    assert_eq!(bytes[at - 256..at - 256 + 4], [0; 4], "device 0's flag");

    a.set_device_lost(1, false).unwrap();
    assert!(!b.device_lost(1));
    b.alloc(1, GI).unwrap();
    assert_eq!(a.mem_info(1), (0, 2 * GI));
    assert_eq!(a.set_device_lost(2, true), Err(SimError::InvalidDevice));
    assert!(!a.device_lost(2));
}

#[test]
fn clearing_the_live_flag_does_not_undo_simgpu_device_lost() {
    let path = scratch("env-lost");
    let mut lost_env = config("mem=4Gi;mem=2Gi");
    lost_env.faults = simgpu_state::Faults::from_lookup(
        &|k| (k == "SIMGPU_DEVICE_LOST").then(|| "0".to_string()),
        2,
    )
    .unwrap();
    let env = Machine::open(&path, lost_env).unwrap();
    let plain = Machine::open(&path, config("mem=4Gi;mem=2Gi")).unwrap();
    assert!(env.device_lost(0) && !plain.device_lost(0));
    plain.set_device_lost(0, false).unwrap();
    assert!(env.device_lost(0));
    assert_eq!(env.alloc(0, 1), Err(SimError::DeviceLost));
    plain.alloc(0, 1).unwrap();
}

#[test]
fn attach_uses_the_stored_devices_and_never_creates_or_rebuilds() {
    let path = scratch("attach");
    let spec = "name=NVIDIA L4,mem=3Gi;name=NVIDIA H100 80GB HBM3,sms=7";
    let owner = Machine::open(&path, config(spec)).unwrap();
    let tool = Machine::attach(&path).unwrap();
    assert_eq!(tool.devices(), owner.devices());
    tool.set_device_lost(1, true).unwrap();
    assert!(owner.device_lost(1));
    owner.alloc(0, GI).unwrap();
    assert_eq!(tool.mem_info(0), (2 * GI, 3 * GI));

    let missing = scratch("attach-missing");
    match Machine::attach(&missing) {
        Err(SimError::StateFile(msg)) => assert!(msg.contains("no simulated machine"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!missing.exists(), "attach created a file");

    let empty = scratch("attach-empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Machine::attach(&empty),
        Err(SimError::StateFile(_))
    ));
    assert_eq!(std::fs::read(&empty).unwrap(), b"");

    let foreign = scratch("attach-foreign");
    std::fs::write(&foreign, b"somebody else's file").unwrap();
    match Machine::attach(&foreign) {
        Err(SimError::StateFile(msg)) => assert!(msg.contains("foreign magic"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), b"somebody else's file");
}
