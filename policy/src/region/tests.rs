//! Region tests on temp files: the contract's bytes, every start-up case of 3.7, slots, reclaim, and
//! charging under threads, forked processes and random operation sequences.

use super::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A scratch folder removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_path(name: &str) -> (TempDir, PathBuf) {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vgpu-region-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("region.cache");
    (TempDir(dir), path)
}

/// Processes that exist only in the test: pid -> start time.
#[derive(Clone, Default)]
struct FakeProcs(Arc<Mutex<HashMap<i32, u64>>>);

impl FakeProcs {
    fn spawn(&self, pid: i32, start: u64) {
        self.0.lock().unwrap().insert(pid, start);
    }
    fn kill(&self, pid: i32) {
        self.0.lock().unwrap().remove(&pid);
    }
}

impl ProcessProbe for FakeProcs {
    fn probe(&self, pid: i32) -> Liveness {
        match self.0.lock().unwrap().get(&pid) {
            Some(&s) => Liveness::Alive {
                start_time: Some(s),
            },
            None => Liveness::Dead,
        }
    }
}

fn uuid(i: usize) -> String {
    format!("GPU-{i:08x}-1111-2222-3333-444455556666")
}

fn setup(limits: &[Option<u64>]) -> RegionSetup {
    RegionSetup {
        devices: limits
            .iter()
            .enumerate()
            .map(|(i, &l)| DeviceSetup {
                uuid: uuid(i),
                memory_limit: l,
                sm_limit_percent: if i == 0 { Some(30) } else { None },
            })
            .collect(),
        priority: 1,
    }
}

fn open(path: &Path, s: &RegionSetup, procs: &FakeProcs) -> Result<Region, RegionError> {
    Region::open_with_probe(path, s, Box::new(procs.clone()))
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn le_i32(b: &[u8], off: usize) -> i32 {
    le_u32(b, off) as i32
}
fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn create_writes_the_contract_header() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = temp_path("create");
    let procs = FakeProcs::default();
    let r = open(&path, &setup(&[Some(GIB), None]), &procs).unwrap();
    let b = std::fs::read(&path).unwrap();
    assert_eq!(b.len(), REGION_FILE_LEN);
    assert!(b.len() >= 2_008_953, "at least HAMi-core's file size");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o666
    );
    assert_eq!(le_i32(&b, 0), 19_920_718);
    assert_eq!(le_u32(&b, 4), 1);
    assert_eq!(le_u32(&b, 8), 2);
    assert_eq!(le_i32(&b, 12), 0);
    assert_eq!(le_u64(&b, 16), 0, "owner_pid stays zero");
    assert!(b[24..56].iter().all(|&x| x == 0), "sem stays zero");
    assert_eq!(le_u64(&b, 56), 2);
    assert_eq!(&b[64..64 + 40], uuid(0).as_bytes());
    assert!(
        b[64 + 40..64 + 96].iter().all(|&x| x == 0),
        "uuid NUL-padded to 96"
    );
    assert_eq!(&b[160..160 + 40], uuid(1).as_bytes());
    assert!(
        b[64 + 2 * 96..1600].iter().all(|&x| x == 0),
        "absent devices have no uuid"
    );
    assert_eq!(le_u64(&b, 1600), GIB);
    assert_eq!(le_u64(&b, 1608), 0, "no limit = 0");
    assert_eq!(le_u64(&b, 1728), 30);
    assert_eq!(le_u64(&b, 1736), 100, "no SM limit = 100");
    assert_eq!(le_i32(&b, 2_008_896), 0, "proc_num");
    assert_eq!(le_i32(&b, 2_008_900), 1, "utilization_switch");
    assert_eq!(le_i32(&b, 2_008_904), 2, "recent_kernel");
    assert_eq!(le_i32(&b, 2_008_908), 1, "priority");
    assert_eq!(le_u64(&b, 2_008_912), 0);
    assert!(
        b[2_008_920..2_008_952].iter().all(|&x| x == 0),
        "sem_postinit stays zero"
    );
    assert_eq!(le_u64(&b, 0x1EB000), u64::from_le_bytes(*b"vgpu-ext"));
    assert_eq!(le_u32(&b, 0x1EB000 + 8), 2, "extension version");
    assert_eq!(le_u32(&b, 0x1EB000 + 12) as usize, layout::EXTENSION_LEN);
    assert_eq!(r.device_count(), 2);
    assert_eq!(r.uuid(1), uuid(1));
    assert_eq!(r.device_limit(0), Some(GIB));
    assert_eq!(r.device_limit(1), None);
    assert_eq!(r.device_limit(2), None);
    assert_eq!(r.sm_limit(0), Some(30));
    assert_eq!(r.sm_limit(1), None);
    assert_eq!(r.priority(), 1);
    assert!(r.notices().is_empty());
}

#[test]
fn fields_land_at_the_contract_offsets() {
    let (_dir, path) = temp_path("offsets");
    let procs = FakeProcs::default();
    let r = open(
        &path,
        &setup(&[Some(8 * GIB), Some(8 * GIB), Some(8 * GIB)]),
        &procs,
    )
    .unwrap();
    for pid in [101, 102, 103] {
        procs.spawn(pid, pid as u64 * 10);
    }
    let _s0 = r.register(101, 1010).unwrap();
    let _s1 = r.register(102, 1020).unwrap();
    let s2 = r.register(103, 1030).unwrap();
    assert_eq!(s2.index(), 2);
    r.reserve(s2, 2, 1000, MemKind::Data).unwrap().commit();
    r.reserve(s2, 2, 30, MemKind::Context).unwrap().commit();
    r.reserve(s2, 2, 500, MemKind::Module).unwrap().commit();
    r.set_slot_sm_util(s2, 2, 42);
    r.set_hostpid(s2, 777);
    assert!(r.stamp_last_kernel_time(1_700_000_000));
    let b = std::fs::read(&path).unwrap();
    let slot = 1856 + 1960 * 2;
    assert_eq!(le_i32(&b, slot), 103, "pid");
    assert_eq!(le_i32(&b, slot + 4), 777, "hostpid");
    let used = slot + 8 + 64 * 2;
    assert_eq!(le_u64(&b, used), 30, "context_size");
    assert_eq!(le_u64(&b, used + 8), 500, "module_size");
    assert_eq!(le_u64(&b, used + 16), 1000, "data_size");
    assert_eq!(le_u64(&b, used + 24), 0, "offset");
    assert_eq!(
        le_u64(&b, used + 32),
        1530,
        "total = context + module + data"
    );
    assert_eq!(le_u64(&b, slot + 1160 + 48 * 2 + 16), 42, "sm_util");
    assert_eq!(le_i32(&b, slot + 1928), 1, "status");
    assert_eq!(le_u64(&b, slot + 1936), 0, "seqlock untouched");
    assert_eq!(le_i32(&b, 2_008_896), 3, "proc_num");
    assert_eq!(le_u64(&b, 2_008_912), 1_700_000_000, "last_kernel_time");
    // Extension: the device counter and the slot's start time.
    assert_eq!(le_u64(&b, 0x1EB000 + 64 + 64 * 2), 1530);
    assert_eq!(le_u64(&b, 0x1EB000 + 3200 + 64 * 2), 1030);
    // The snapshot reader agrees, from bytes and from the live region.
    let snap = RegionSnapshot::read(&b).unwrap();
    assert_eq!(snap, r.snapshot().unwrap());
    assert_eq!(snap, RegionSnapshot::read_file(&path).unwrap());
    assert_eq!(snap.device_num, 3);
    assert_eq!(snap.proc_num, 3);
    assert_eq!(snap.slots.len(), 3);
    let s = &snap.slots[2];
    assert_eq!(
        (s.pid, s.hostpid, s.status, s.start_time),
        (103, 777, 1, Some(1030))
    );
    assert_eq!(
        s.devices[2],
        SlotDeviceUsage {
            context: 30,
            module: 500,
            data: 1000,
            total: 1530,
            sm_util: 42
        }
    );
    assert_eq!(snap.devices[2].charged, Some(1530));
    assert_eq!(snap.device_used(2), 1530);
    assert_eq!(snap.devices[0].uuid, uuid(0));
    assert_eq!(snap.last_kernel_time, 1_700_000_000);
    assert_eq!(
        (snap.utilization_switch, snap.recent_kernel, snap.priority),
        (1, 2, 1)
    );
    assert!(matches!(
        snap.extension,
        ExtensionInfo::Vgpu {
            version: 2,
            generation: 1,
            ..
        }
    ));
}

#[test]
fn attach_shares_usage_between_handles() {
    let (_dir, path) = temp_path("attach");
    let procs = FakeProcs::default();
    procs.spawn(201, 1);
    procs.spawn(202, 2);
    let s = setup(&[Some(GIB)]);
    let a = open(&path, &s, &procs).unwrap();
    let b = open(&path, &s, &procs).unwrap();
    assert!(b.notices().is_empty());
    let sa = a.register(201, 1).unwrap();
    let sb = b.register(202, 2).unwrap();
    assert_ne!(sa, sb);
    a.reserve(sa, 0, 600 * MIB, MemKind::Data).unwrap().commit();
    let over = b.reserve(sb, 0, 500 * MIB, MemKind::Data).unwrap_err();
    assert_eq!(
        over,
        OverLimit {
            device: 0,
            requested: 500 * MIB,
            used: 600 * MIB,
            limit: GIB
        }
    );
    assert!(over.to_string().contains("over its memory limit"));
    b.reserve(sb, 0, 424 * MIB, MemKind::Data).unwrap().commit();
    assert_eq!(a.device_used(0), GIB);
    assert_eq!(a.release(sa, 0, 600 * MIB, MemKind::Data), 600 * MIB);
    assert_eq!(b.device_used(0), 424 * MIB);
    // A different priority does not block attaching; the creator's value stays.
    let other_prio = RegionSetup {
        priority: 0,
        ..s.clone()
    };
    let c = open(&path, &other_prio, &procs).unwrap();
    assert_eq!(c.priority(), 1);
    assert_eq!(c.notices().len(), 1);
}

#[test]
fn refuses_foreign_truncated_and_unknown_files_without_touching_them() {
    let procs = FakeProcs::default();
    let s = setup(&[Some(GIB)]);
    let check = |name: &str, bytes: Vec<u8>, want: &dyn Fn(&RegionError) -> bool| {
        let (_dir, path) = temp_path(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path, &s, &procs).expect_err(name);
        assert!(want(&err), "{name}: {err}");
        assert!(!err.to_string().contains('\n'));
        assert!(
            err.to_string().contains(path.to_str().unwrap()),
            "names the file: {err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: file untouched"
        );
    };
    let mut foreign = vec![0u8; V1_SIZE + 1];
    foreign[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    check("foreign", foreign, &|e| {
        matches!(
            e,
            RegionError::ForeignMagic {
                magic: 0x1234_5678,
                ..
            }
        )
    });
    check("text", b"hello world, not a region".to_vec(), &|e| {
        matches!(e, RegionError::ForeignMagic { .. })
    });

    let mut short = vec![0u8; 1000];
    short[..4].copy_from_slice(&V1_MAGIC.to_le_bytes());
    short[4..8].copy_from_slice(&1u32.to_le_bytes());
    check("truncated", short, &|e| {
        matches!(e, RegionError::Truncated { len: 1000, .. })
    });

    let mut major2 = vec![0u8; V1_SIZE + 1];
    major2[..4].copy_from_slice(&V1_MAGIC.to_le_bytes());
    major2[4..8].copy_from_slice(&2u32.to_le_bytes());
    check("major2", major2, &|e| {
        matches!(e, RegionError::UnsupportedMajor { major: 2, .. })
    });

    // Ours, with a later extension version or a foreign extension.
    let (_dir, path) = temp_path("ours");
    drop(open(&path, &s, &procs).unwrap());
    let ours = std::fs::read(&path).unwrap();
    let mut v3 = ours.clone();
    v3[EXTENSION_OFFSET + 8..EXTENSION_OFFSET + 12].copy_from_slice(&3u32.to_le_bytes());
    check("extv3", v3, &|e| {
        matches!(
            e,
            RegionError::UnsupportedExtensionVersion { version: 3, .. }
        )
    });
    // Version 1 had the slots' extension words elsewhere: reading it as ours would misread them.
    let mut v1 = ours.clone();
    v1[EXTENSION_OFFSET + 8..EXTENSION_OFFSET + 12].copy_from_slice(&1u32.to_le_bytes());
    check("extv1", v1, &|e| {
        matches!(
            e,
            RegionError::UnsupportedExtensionVersion { version: 1, .. }
        )
    });
    let mut other_ext = ours.clone();
    other_ext[EXTENSION_OFFSET..EXTENSION_OFFSET + 8].copy_from_slice(b"otherext");
    check("otherext", other_ext, &|e| {
        matches!(e, RegionError::UnknownExtension { .. })
    });
    let mut short_len = ours.clone();
    short_len[EXTENSION_OFFSET + 12..EXTENSION_OFFSET + 16].copy_from_slice(&64u32.to_le_bytes());
    check("extlen", short_len, &|e| {
        matches!(e, RegionError::BadExtensionLength { length: 64, .. })
    });
    let cut = ours[..EXTENSION_OFFSET + 100].to_vec();
    check("extcut", cut, &|e| {
        matches!(e, RegionError::Truncated { .. })
    });
}

/// A file as HAMi-core leaves it: 2,008,953 bytes, a slot with usage.
fn hami_core_file(path: &Path, pid: i32) {
    let mut b = vec![0u8; V1_SIZE + 1];
    b[..4].copy_from_slice(&V1_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    b[56..64].copy_from_slice(&1u64.to_le_bytes());
    b[64..64 + 40].copy_from_slice(uuid(0).as_bytes());
    b[1600..1608].copy_from_slice(&(4 * GIB).to_le_bytes());
    b[1856..1860].copy_from_slice(&pid.to_le_bytes());
    b[1856 + 8 + 32..1856 + 8 + 40].copy_from_slice(&(3 * GIB).to_le_bytes());
    b[1856 + 1928..1856 + 1932].copy_from_slice(&1i32.to_le_bytes());
    b[2_008_896..2_008_900].copy_from_slice(&1i32.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn hami_core_file_is_reinitialised_only_when_nobody_lives() {
    let procs = FakeProcs::default();
    let s = setup(&[Some(GIB)]);
    let (_dir, path) = temp_path("hami");
    hami_core_file(&path, 300);
    procs.spawn(300, 5);
    let before = std::fs::read(&path).unwrap();
    let err = open(&path, &s, &procs).unwrap_err();
    assert!(
        matches!(&err, RegionError::HamiCoreInUse { pids, .. } if pids == &[300]),
        "{err}"
    );
    // The verdict comes before any change: not even grown (the HAMi-core processes and the
    // monitor keep their mappings of exactly this file).
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after, before);

    procs.kill(300);
    let r = open(&path, &s, &procs).unwrap();
    assert_eq!(r.notices().len(), 1, "{:?}", r.notices());
    assert!(r.notices()[0].contains("HAMi-core"));
    let b = std::fs::read(&path).unwrap();
    assert_eq!(le_u64(&b, 1600), GIB, "our limit");
    assert_eq!(le_i32(&b, 1856), 0, "stale slot cleared");
    assert_eq!(le_u64(&b, 1856 + 40), 0);
    assert_eq!(le_i32(&b, 2_008_896), 0);
    assert_eq!(r.device_used(0), 0);
}

#[test]
fn live_processes_with_other_limits_fail_closed() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("mismatch");
    procs.spawn(401, 1);
    let a = open(&path, &setup(&[Some(GIB)]), &procs).unwrap();
    let slot = a.register(401, 1).unwrap();
    a.reserve(slot, 0, MIB, MemKind::Data).unwrap().commit();
    let err = open(&path, &setup(&[Some(2 * GIB)]), &procs).unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, RegionError::LimitMismatch { .. }));
    assert!(
        line.contains(&GIB.to_string()) && line.contains(&(2 * GIB).to_string()),
        "both values: {line}"
    );
    let err = open(&path, &setup(&[Some(GIB), None]), &procs).unwrap_err();
    assert!(
        matches!(err, RegionError::LimitMismatch { .. }),
        "device count differs"
    );
    // Once the owner is gone the region is stale and the newcomer re-initialises it.
    procs.kill(401);
    let b = open(&path, &setup(&[Some(2 * GIB)]), &procs).unwrap();
    assert_eq!(b.notices().len(), 1);
    assert_eq!(b.device_limit(0), Some(2 * GIB));
    assert_eq!(b.device_used(0), 0);
    // The old handle notices the new generation at its next registration and fails closed there.
    procs.spawn(402, 2);
    procs.spawn(403, 3);
    b.register(402, 2).unwrap();
    assert!(matches!(
        a.register(403, 3),
        Err(RegionError::LimitMismatch { .. })
    ));
}

#[test]
fn register_unregister_and_high_water_mark() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("slots");
    let r = open(&path, &setup(&[Some(GIB), Some(GIB)]), &procs).unwrap();
    for pid in 1..=3 {
        procs.spawn(pid, 100 + pid as u64);
    }
    let s1 = r.register(1, 101).unwrap();
    let s2 = r.register(2, 102).unwrap();
    let s3 = r.register(3, 103).unwrap();
    assert_eq!((s1.index(), s2.index(), s3.index()), (0, 1, 2));
    r.reserve(s2, 1, 5 * MIB, MemKind::Data).unwrap().commit();
    r.reserve(s2, 0, 7 * MIB, MemKind::Context)
        .unwrap()
        .commit();
    r.unregister(s2).unwrap();
    assert_eq!(r.device_used(0), 0);
    assert_eq!(r.device_used(1), 0);
    assert_eq!(r.slot_used(s2, 1), SlotUsage::default());
    assert_eq!(r.slot_pid_of(s2), 0);
    let snap = r.snapshot().unwrap();
    assert_eq!(snap.proc_num, 3, "a hole below the top keeps proc_num");
    assert_eq!(snap.slots.len(), 2);
    // Slots never move; the hole is reused first.
    procs.spawn(4, 104);
    assert_eq!(r.register(4, 104).unwrap().index(), 1);
    r.unregister(s3).unwrap();
    assert_eq!(
        r.snapshot().unwrap().proc_num,
        2,
        "freeing the top slot lowers proc_num"
    );
    // Re-registering the same (pid, start time) — a process after exec — replaces its old slot.
    r.reserve(s1, 0, 3 * MIB, MemKind::Data).unwrap().commit();
    let again = r.register(1, 101).unwrap();
    assert_eq!(again.index(), 0);
    assert_eq!(r.device_used(0), 0, "the old image's usage is gone");
}

#[test]
fn all_slots_taken_is_an_error_not_an_exit() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("full");
    let r = open(&path, &setup(&[None]), &procs).unwrap();
    for pid in 1..=MAX_SLOTS as i32 {
        procs.spawn(pid, 1);
        r.register(pid, 1).unwrap();
    }
    procs.spawn(5000, 1);
    let err = r.register(5000, 1).unwrap_err();
    assert!(matches!(err, RegionError::SlotsFull { .. }), "{err}");
    assert_eq!(r.snapshot().unwrap().proc_num, 1024);
    procs.kill(77);
    assert_eq!(
        r.register(5000, 1).unwrap().index(),
        76,
        "a dead slot is reclaimed for the newcomer"
    );
}

/// A probe that counts how often it is asked (registration must not scale with the slots in use).
#[derive(Clone, Default)]
struct CountingProcs {
    procs: FakeProcs,
    probes: Arc<std::sync::atomic::AtomicUsize>,
}

impl ProcessProbe for CountingProcs {
    fn probe(&self, pid: i32) -> Liveness {
        self.probes.fetch_add(1, Ordering::Relaxed);
        self.procs.probe(pid)
    }
}

#[test]
fn registering_looks_only_at_slots_of_its_own_pid() {
    let counting = CountingProcs::default();
    let (_dir, path) = temp_path("cheap-register");
    let r =
        Region::open_with_probe(&path, &setup(&[Some(GIB)]), Box::new(counting.clone())).unwrap();
    let mut slots = Vec::new();
    for pid in 1..=100 {
        counting.procs.spawn(pid, 1000 + pid as u64);
        slots.push(r.register(pid, 1000 + pid as u64).unwrap());
    }
    r.reserve(slots[4], 0, 5 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    r.reserve(slots[6], 0, 7 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    counting.procs.kill(5);
    counting.procs.spawn(7, 9999); // pid 7 now belongs to a newer process
    let before = counting.probes.load(Ordering::Relaxed);
    counting.procs.spawn(500, 1);
    let newcomer = r.register(500, 1).unwrap();
    assert_eq!(
        counting.probes.load(Ordering::Relaxed),
        before,
        "no liveness probe when no slot names the pid"
    );
    assert_eq!(newcomer.index(), 100, "the lowest free slot");
    assert_eq!(
        r.slot_pid_of(slots[4]),
        5,
        "a dead neighbour is left to the sweep and to refused reservations"
    );
    assert_eq!(r.device_used(0), 12 * MIB);
    // The new owner of pid 7 registers: the old image of pid 7 cannot be alive, and goes.
    let reused = r.register(7, 9999).unwrap();
    assert_eq!(
        reused.index(),
        6,
        "its slot was freed and is the lowest free one"
    );
    assert_eq!(
        r.device_used(0),
        5 * MIB,
        "the old pid 7's usage is given back"
    );
    assert_eq!(r.slot_used(reused, 0), SlotUsage::default());
    // The sweep's look still sees the dead neighbour, and a reclaim frees it.
    assert!(r.any_dead_slot());
    assert_eq!(r.reclaim_dead().unwrap().slots_freed, 1);
    assert_eq!(r.device_used(0), 0);
}

#[test]
fn a_look_for_dead_slots_sees_deaths_at_once_and_reused_pids_in_turn() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("look");
    let r = open(&path, &setup(&[Some(GIB)]), &procs).unwrap();
    for pid in 1..=100 {
        procs.spawn(pid, 1);
        r.register(pid, 1).unwrap();
    }
    for _ in 0..10 {
        assert!(!r.any_dead_slot(), "every process is alive");
    }
    procs.kill(50);
    assert!(r.any_dead_slot(), "a missing pid is seen by the next look");
    r.reclaim_dead().unwrap();
    assert!(!r.any_dead_slot());
    procs.spawn(60, 2); // reused: alive, but not the process that registered
    let looks = (1..=10).find(|_| r.any_dead_slot());
    let bound = 100usize.div_ceil(REUSE_CHECKS_PER_LOOK);
    assert!(
        looks.is_some_and(|n| n <= bound),
        "a reused pid is seen within {bound} looks, got {looks:?}"
    );
    assert_eq!(r.reclaim_dead().unwrap().slots_freed, 1);
    assert!(!r.any_dead_slot());
}

#[test]
fn dead_and_reused_pids_are_reclaimed() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("reclaim");
    let r = open(&path, &setup(&[Some(GIB)]), &procs).unwrap();
    procs.spawn(10, 1000);
    procs.spawn(11, 1100);
    procs.spawn(12, 1200);
    let dead = r.register(10, 1000).unwrap();
    let reused = r.register(11, 1100).unwrap();
    let alive = r.register(12, 1200).unwrap();
    r.reserve(dead, 0, 300 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    r.reserve(reused, 0, 200 * MIB, MemKind::Context)
        .unwrap()
        .commit();
    r.reserve(alive, 0, 100 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    assert_eq!(
        r.reserve(alive, 0, 500 * MIB, MemKind::Data)
            .unwrap_err()
            .used,
        600 * MIB
    );
    procs.kill(10);
    procs.spawn(11, 9999); // pid 11 now belongs to a newer process
    let report = r.reclaim_dead().unwrap();
    assert_eq!(report.slots_freed, 2);
    assert_eq!(report.bytes_freed, 500 * MIB);
    assert_eq!(report.recounted, 1);
    assert_eq!(report.recount_timeouts, 0);
    assert_eq!(r.device_used(0), 100 * MIB);
    assert_eq!(r.slot_pid_of(dead), 0);
    assert_eq!(r.slot_pid_of(reused), 0);
    assert_eq!(r.slot_used(alive, 0).total, 100 * MIB);
    r.reserve(alive, 0, 500 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    // Nothing to do the second time.
    assert_eq!(r.reclaim_dead().unwrap(), ReclaimReport::default());
}

#[test]
fn death_between_charge_and_record_is_recovered_by_recount() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("killed");
    let r = open(&path, &setup(&[Some(GIB), Some(GIB)]), &procs).unwrap();
    procs.spawn(20, 1);
    procs.spawn(21, 2);
    let victim = r.register(20, 1).unwrap();
    let survivor = r.register(21, 2).unwrap();
    r.reserve(survivor, 1, 10 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    r.reserve(victim, 1, 20 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    // The victim dies after step 2 of a reservation: the device counter holds 50 MiB it never
    // recorded, and its in-flight count is stuck at 1.
    r.inflight(victim.index()).fetch_add(1, Ordering::SeqCst);
    r.charged(1).fetch_add(50 * MIB, Ordering::SeqCst);
    assert_eq!(r.device_used(1), 80 * MIB);
    procs.kill(20);
    let report = r.reclaim_dead().unwrap();
    assert_eq!(report.slots_freed, 1);
    assert_eq!(report.recount_timeouts, 0);
    assert_eq!(r.device_used(1), 10 * MIB, "exactly the survivor's usage");
    assert_eq!(r.device_used(0), 0);

    // A leak with no dead slot at all (a reclaimer that died half-way) is found by the drift check.
    r.charged(0).fetch_add(7, Ordering::SeqCst);
    let report = r.reclaim_dead().unwrap();
    assert_eq!(report.recounted, 1);
    assert_eq!(r.device_used(0), 0);
}

#[test]
fn a_stuck_live_slot_makes_the_recount_give_up_safely() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("stuck");
    let r = open(&path, &setup(&[Some(GIB)]), &procs).unwrap();
    procs.spawn(30, 1);
    procs.spawn(31, 2);
    let stuck = r.register(30, 1).unwrap();
    let dead = r.register(31, 2).unwrap();
    r.reserve(stuck, 0, 10 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    r.reserve(dead, 0, 40 * MIB, MemKind::Data)
        .unwrap()
        .commit();
    r.inflight(stuck.index()).store(1, Ordering::SeqCst); // stopped in the middle of an update
    procs.kill(31);
    let report = r.reclaim_dead().unwrap();
    assert_eq!(report.recount_timeouts, 1);
    assert_eq!(report.recounted, 0);
    assert_eq!(
        r.device_used(0),
        10 * MIB,
        "the fallback subtracts what the dead slot recorded"
    );
    assert_eq!(
        r.charged(0).load(Ordering::SeqCst) & RECOUNT_FROZEN,
        0,
        "unfrozen"
    );
    r.inflight(stuck.index()).store(0, Ordering::SeqCst);
    assert_eq!(r.release(stuck, 0, 10 * MIB, MemKind::Data), 10 * MIB);
    assert_eq!(r.device_used(0), 0);
}

#[test]
fn an_orphaned_freeze_is_finished_by_a_waiting_reserve() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("orphan");
    let r = open(&path, &setup(&[Some(GIB)]), &procs).unwrap();
    procs.spawn(40, 1);
    let s = r.register(40, 1).unwrap();
    r.reserve(s, 0, 5 * MIB, MemKind::Data).unwrap().commit();
    // A reclaimer froze the counter (with 3 MiB of leak in it) and died: the lock is free.
    r.charged(0).fetch_add(3 * MIB, Ordering::SeqCst);
    r.charged(0).fetch_or(RECOUNT_FROZEN, Ordering::SeqCst);
    let res = r.reserve(s, 0, MIB, MemKind::Data).unwrap();
    assert_eq!(
        r.device_used(0),
        6 * MIB,
        "recounted to the slot's 5 MiB, then charged 1 MiB"
    );
    drop(res);
    assert_eq!(r.device_used(0), 5 * MIB);
    // Taking the lock also finishes one.
    r.charged(0).fetch_or(RECOUNT_FROZEN, Ordering::SeqCst);
    r.reclaim_dead().unwrap();
    assert_eq!(r.charged(0).load(Ordering::SeqCst), 5 * MIB);
}

#[test]
fn reservations_commit_or_give_back() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("reserve");
    let r = open(&path, &setup(&[Some(100), None]), &procs).unwrap();
    procs.spawn(50, 1);
    let s = r.register(50, 1).unwrap();
    let a = r.reserve(s, 0, 60, MemKind::Data).unwrap();
    assert_eq!(r.device_used(0), 60, "charged at reserve time");
    assert_eq!(r.reserve(s, 0, 41, MemKind::Data).unwrap_err().used, 60);
    drop(a);
    assert_eq!(r.device_used(0), 0);
    assert_eq!(r.slot_used(s, 0), SlotUsage::default());
    let rec = r.reserve(s, 0, 100, MemKind::Data).unwrap().commit();
    assert_eq!(
        rec,
        ChargeRecord {
            device: 0,
            bytes: 100,
            kind: MemKind::Data
        }
    );
    assert!(r.reserve(s, 0, 1, MemKind::Data).is_err());
    assert!(
        r.reserve(s, 0, 0, MemKind::Data).is_ok(),
        "zero bytes always fit"
    );
    // Releases saturate: over-releasing gives back only what is there.
    assert_eq!(r.release(s, 0, 150, MemKind::Data), 100);
    assert_eq!(r.release(s, 0, 1, MemKind::Data), 0);
    assert_eq!(r.release(s, 0, 1, MemKind::Context), 0);
    assert_eq!(r.device_used(0), 0);
    // No limit: anything goes; device not in the region: refused.
    r.reserve(s, 1, 1 << 50, MemKind::Data).unwrap().commit();
    assert_eq!(r.device_used(1), 1 << 50);
    let over = r.reserve(s, 2, 1, MemKind::Data).unwrap_err();
    assert_eq!(over.limit, 0);
    assert!(over.to_string().contains("not in the region"));
}

#[test]
fn kernel_accessors_follow_the_contract() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("kernel");
    let r = open(&path, &setup(&[None]), &procs).unwrap();
    assert_eq!(r.recent_kernel(), 2);
    r.i32(OFF_RECENT_KERNEL).store(0, Ordering::SeqCst);
    assert!(r.mark_kernel_launched());
    assert_eq!(r.recent_kernel(), 2);
    r.i32(OFF_RECENT_KERNEL).store(-1, Ordering::SeqCst); // the monitor blocks us
    assert!(!r.mark_kernel_launched());
    assert_eq!(r.recent_kernel(), -1, "never overwrite a negative value");
    assert_eq!(r.utilization_switch(), 1);
    assert!(r.stamp_last_kernel_time(100));
    assert!(!r.stamp_last_kernel_time(99));
    assert!(!r.stamp_last_kernel_time(100));
    assert_eq!(r.last_kernel_time(), 100);
}

#[test]
fn limiter_view_points_into_the_file_and_is_zeroed_on_reinit() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("limiter");
    procs.spawn(501, 1);
    let a = open(&path, &setup(&[Some(GIB), None]), &procs).unwrap();
    a.register(501, 1).unwrap();
    let view = a.limiter_view();
    // A fresh region: all zero, which the limiter reads as a fresh bucket.
    for bucket in &view.limiter.buckets {
        assert_eq!(bucket.paid_until_ns.load(Ordering::Relaxed), 0);
        assert_eq!(bucket.learning_lease_ns.load(Ordering::Relaxed), 0);
    }
    view.limiter.buckets[1]
        .paid_until_ns
        .store(0x1122_3344_5566_7788, Ordering::SeqCst);
    view.limiter.buckets[15]
        .clock_epoch_s
        .store(0x99, Ordering::SeqCst);
    view.recent_kernel.store(-1, Ordering::SeqCst);
    view.utilization_switch.store(0, Ordering::SeqCst);
    view.last_kernel_time_s
        .store(1_700_000_123, Ordering::SeqCst);
    let b = std::fs::read(&path).unwrap();
    let limiter = 0x1EB000 + 1152;
    assert_eq!(limiter, layout::OFF_EXT_LIMITER);
    assert_eq!(limiter % 128, 0);
    assert_eq!(le_u64(&b, limiter + 128), 0x1122_3344_5566_7788, "bucket 1");
    assert_eq!(le_u64(&b, limiter + 128 * 15 + 8), 0x99, "bucket 15 epoch");
    assert_eq!(le_i32(&b, 2_008_904), -1, "recent_kernel");
    assert_eq!(le_i32(&b, 2_008_900), 0, "utilization_switch");
    assert_eq!(le_u64(&b, 2_008_912), 1_700_000_123, "last_kernel_time");
    // A second handle (another process) sees the same words.
    let other = open(&path, &setup(&[Some(GIB), None]), &procs).unwrap();
    assert_eq!(
        other.limiter_view().limiter.buckets[1]
            .paid_until_ns
            .load(Ordering::SeqCst),
        0x1122_3344_5566_7788
    );
    // Re-initialised once stale: the limiter state is zero again.
    procs.kill(501);
    let c = open(&path, &setup(&[Some(2 * GIB), None]), &procs).unwrap();
    assert_eq!(c.notices().len(), 1, "re-initialised");
    let b = std::fs::read(&path).unwrap();
    assert!(
        b[limiter..limiter + 2048].iter().all(|&x| x == 0),
        "limiter zeroed at re-init"
    );
    assert_eq!(c.recent_kernel(), 2);
    assert_eq!(c.utilization_switch(), 1);
}

#[test]
fn never_shrinks_a_larger_file() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("bigger");
    drop(open(&path, &setup(&[None]), &procs).unwrap());
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(REGION_FILE_LEN as u64 + 8192).unwrap();
    drop(f);
    let r = open(&path, &setup(&[None]), &procs).unwrap();
    procs.spawn(9, 9);
    r.register(9, 9).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        REGION_FILE_LEN as u64 + 8192
    );
}

#[test]
fn a_file_whose_creator_died_before_the_magic_is_initialised() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("halfway");
    // Half-written: garbage in fields, no magic yet.
    let mut b = vec![0xabu8; 3_000_000];
    b[..4].copy_from_slice(&0i32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let r = open(&path, &setup(&[Some(GIB)]), &procs).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        3_000_000,
        "not shrunk"
    );
    let snap = r.snapshot().unwrap();
    assert_eq!(snap.proc_num, 0);
    assert_eq!(snap.devices.len(), 1);
    assert_eq!(snap.devices[0].charged, Some(0));
    assert_eq!(r.device_used(0), 0);
}

#[test]
fn snapshot_reader_survives_corrupt_bytes() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("corrupt");
    let r = open(&path, &setup(&[Some(GIB), Some(GIB)]), &procs).unwrap();
    procs.spawn(60, 1);
    let s = r.register(60, 1).unwrap();
    r.reserve(s, 1, 123, MemKind::Data).unwrap().commit();
    let good = std::fs::read(&path).unwrap();
    assert!(matches!(
        RegionSnapshot::read(&good[..100]),
        Err(SnapshotError::TooShort { .. })
    ));
    assert!(matches!(
        RegionSnapshot::read(&good[..2]),
        Err(SnapshotError::TooShort { .. })
    ));
    assert!(matches!(
        RegionSnapshot::read(&[]),
        Err(SnapshotError::TooShort { .. })
    ));
    assert!(matches!(
        RegionSnapshot::read(&vec![0u8; V1_SIZE]),
        Err(SnapshotError::NotInitialised)
    ));
    // Just the v1 part (a HAMi-core file) reads without an extension.
    let v1 = RegionSnapshot::read(&good[..V1_SIZE]).unwrap();
    assert_eq!(v1.extension, ExtensionInfo::Absent);
    assert_eq!(v1.devices[1].charged, None);
    assert_eq!(v1.device_used(1), 123);
    let mut x = 0x1234_5678_9abc_def1u64;
    for round in 0..300 {
        let mut bad = good.clone();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly hit the header, tail and extension header, where the counts live.
            let off = match x % 4 {
                0 => (x >> 8) as usize % 2048,
                1 => 2_008_896 + (x >> 8) as usize % 56,
                2 => EXTENSION_OFFSET + (x >> 8) as usize % 64,
                _ => (x >> 8) as usize % bad.len(),
            };
            bad[off] = (x >> 40) as u8;
        }
        if round % 3 == 0 {
            bad[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
            bad[2_008_896..2_008_900]
                .copy_from_slice(&(if round % 2 == 0 { -5i32 } else { i32::MAX }).to_le_bytes());
        }
        let cut = (x >> 3) as usize % bad.len();
        if let Ok(snap) = RegionSnapshot::read(&bad) {
            assert!(snap.devices.len() <= MAX_DEVICES);
            assert!(snap.slots.len() <= MAX_SLOTS);
        }
        let _ = RegionSnapshot::read(&bad[..cut]);
    }
}

/// xorshift64, enough randomness for tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_operations_keep_usage_equal_to_live_charges() {
    let procs = FakeProcs::default();
    let (_dir, path) = temp_path("property");
    let devices = 3;
    let limit = 1000u64;
    let r = open(&path, &setup(&[Some(limit), Some(limit), None]), &procs).unwrap();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    // Model: per registered slot, its pid and live charges.
    let mut slots: Vec<(SlotId, i32, Vec<ChargeRecord>)> = Vec::new();
    let mut next_pid = 1000;
    for step in 0..20_000 {
        match rng.below(100) {
            0..=2 if slots.len() < 8 => {
                next_pid += 1;
                procs.spawn(next_pid, next_pid as u64);
                let s = r.register(next_pid, next_pid as u64).unwrap();
                slots.push((s, next_pid, Vec::new()));
            }
            3 if !slots.is_empty() => {
                // A process dies; the next reclaim gives its charges back.
                let i = rng.below(slots.len() as u64) as usize;
                let (_, pid, _) = slots.swap_remove(i);
                procs.kill(pid);
                r.reclaim_dead().unwrap();
            }
            4 if !slots.is_empty() => {
                let i = rng.below(slots.len() as u64) as usize;
                let (s, _, _) = slots.swap_remove(i);
                r.unregister(s).unwrap();
            }
            5..=54 if !slots.is_empty() => {
                let i = rng.below(slots.len() as u64) as usize;
                let d = rng.below(devices) as usize;
                let bytes = rng.below(300);
                let kind = MemKind::from_u8(rng.below(3) as u8).unwrap();
                let slot = slots[i].0;
                let in_use: u64 = slots
                    .iter()
                    .flat_map(|s| &s.2)
                    .filter(|c| usize::from(c.device) == d)
                    .map(|c| c.bytes)
                    .sum();
                match r.reserve(slot, d, bytes, kind) {
                    Ok(res) => {
                        assert!(
                            d == 2 || in_use + bytes <= limit,
                            "step {step}: granted past the limit"
                        );
                        if rng.below(4) == 0 {
                            drop(res);
                        } else {
                            slots[i].2.push(res.commit());
                        }
                    }
                    Err(over) => {
                        assert!(
                            d != 2 && in_use + bytes > limit,
                            "step {step}: refused under the limit"
                        );
                        assert_eq!(over.used, in_use);
                    }
                }
            }
            _ if !slots.is_empty() => {
                let i = rng.below(slots.len() as u64) as usize;
                if !slots[i].2.is_empty() {
                    let j = rng.below(slots[i].2.len() as u64) as usize;
                    let c = slots[i].2.swap_remove(j);
                    assert_eq!(r.release_record(slots[i].0, c), c.bytes);
                }
            }
            _ => {}
        }
        for d in 0..devices as usize {
            let live: u64 = slots
                .iter()
                .flat_map(|s| &s.2)
                .filter(|c| usize::from(c.device) == d)
                .map(|c| c.bytes)
                .sum();
            assert_eq!(r.device_used(d), live, "step {step} device {d}");
        }
        if step % 97 == 0 {
            for (s, _, charges) in &slots {
                for d in 0..devices as usize {
                    let u = r.slot_used(*s, d);
                    let of = |k: MemKind| {
                        charges
                            .iter()
                            .filter(|c| usize::from(c.device) == d && c.kind == k)
                            .map(|c| c.bytes)
                            .sum::<u64>()
                    };
                    assert_eq!(u.context, of(MemKind::Context));
                    assert_eq!(u.module, of(MemKind::Module));
                    assert_eq!(u.data, of(MemKind::Data));
                    assert_eq!(u.total, u.context + u.module + u.data);
                }
            }
        }
    }
}

/// Reserve/release churn from one process's view: `iterations` random operations, checking the
/// limit after every grant. Whatever is still held at the end is committed and returned, so the
/// caller can compare the counters with it. The flag is false if the container was ever seen over
/// its limit.
fn churn(
    r: &Region,
    slot: SlotId,
    limit: u64,
    seed: u64,
    iterations: u32,
) -> (bool, Vec<ChargeRecord>) {
    let mut rng = Rng(seed | 1);
    let mut held: Vec<Reservation<'_>> = Vec::new();
    let mut ok = true;
    for _ in 0..iterations {
        if held.len() < 16 && rng.below(3) != 0 {
            let bytes = 1 + rng.below(limit / 8);
            if let Ok(res) = r.reserve(slot, 0, bytes, MemKind::Data) {
                ok &= r.device_used(0) <= limit;
                held.push(res);
            }
        } else if !held.is_empty() {
            let i = rng.below(held.len() as u64) as usize;
            let res = held.swap_remove(i);
            if rng.below(2) == 0 {
                let rec = res.commit();
                ok &= r.release_record(slot, rec) == rec.bytes;
            } else {
                drop(res);
            }
        }
    }
    (ok, held.into_iter().map(Reservation::commit).collect())
}

#[test]
fn threads_and_processes_racing_never_pass_the_limit_and_end_at_zero() {
    use std::sync::atomic::{AtomicBool, AtomicU32};
    let (_dir, path) = temp_path("race");
    let limit = 64 * MIB;
    // The system probe: forked children are real processes.
    let r = Region::open(&path, &setup(&[Some(limit)])).unwrap();
    let me = proc_info::current_pid();
    let slot = r
        .register(me, proc_info::current_start_time().unwrap_or(0))
        .unwrap();
    // VGPU_RACE_ITERATIONS raises the count for a longer soak.
    let iterations = std::env::var("VGPU_RACE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);

    let mut children = Vec::new();
    for c in 0..4u64 {
        // SAFETY (test): the child only touches the inherited mapping, the lock file and atomics,
        // then leaves with _exit without running any destructor or test harness code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match r.register(
                proc_info::current_pid(),
                proc_info::current_start_time().unwrap_or(0),
            ) {
                Ok(s) => {
                    let (ok, held) = churn(&r, s, limit, 0x5eed + c, iterations);
                    let held_sum: u64 = held.iter().map(|c| c.bytes).sum();
                    let exact =
                        r.slot_used(s, 0).total == held_sum && r.slot_used(s, 0).data == held_sum;
                    let _ = r.unregister(s);
                    if !ok {
                        3
                    } else if !exact {
                        4
                    } else {
                        0
                    }
                }
                Err(_) => 2,
            };
            // SAFETY: leaving the forked child without unwinding into the parent's test harness.
            unsafe { libc::_exit(code) };
        }
        children.push(pid);
    }
    // Meanwhile, recounts freeze and rebuild the counter again and again under everyone's feet.
    let stop = AtomicBool::new(false);
    let recounts = AtomicU32::new(0);
    let held: Vec<ChargeRecord> = std::thread::scope(|s| {
        let recounter = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let lock = r.lock().unwrap();
                if r.recount_locked(0) {
                    recounts.fetch_add(1, Ordering::Relaxed);
                }
                drop(lock);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let r = &r;
                s.spawn(move || churn(r, slot, limit, 0xabc0 + t, iterations))
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let (ok, held) = h.join().unwrap();
            assert!(ok, "a thread saw the container over its limit");
            all.extend(held);
        }
        stop.store(true, Ordering::Relaxed);
        recounter.join().unwrap();
        all
    });
    for pid in children {
        let mut status = 0;
        // SAFETY (test): waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child {pid} did not exit normally");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "child {pid} failed (3 = over the limit, 4 = slot inexact)"
        );
    }
    assert!(recounts.load(Ordering::Relaxed) > 0);
    // Quiescent now: the counter is exactly what the threads still hold (a recount that lost or
    // invented bytes would show here), and giving it back ends at zero.
    let held_sum: u64 = held.iter().map(|c| c.bytes).sum();
    assert_eq!(r.device_used(0), held_sum);
    assert_eq!(r.slot_used(slot, 0).total, held_sum);
    assert!(held_sum <= limit);
    for c in held {
        assert_eq!(r.release_record(slot, c), c.bytes);
    }
    assert_eq!(r.device_used(0), 0, "usage ends at exactly zero");
    assert_eq!(r.slot_used(slot, 0), SlotUsage::default());
    let snap = r.snapshot().unwrap();
    assert_eq!(snap.slots.len(), 1, "children unregistered");
    r.unregister(slot).unwrap();
}
