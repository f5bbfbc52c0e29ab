//! The process table: one slot per process, however many copies of the machine it opens, and room
//! for thousands of processes.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use simgpu_state::layout::*;
use simgpu_state::{Config, Machine};

// The benchmarks run a thousand GPU processes on one machine.
const _: () = assert!(MAX_SLOTS >= 4096);

fn scratch(label: &str) -> PathBuf {
    testkit::scratch_dir(&format!("simgpu-state-{label}")).join("machine.state")
}

fn config(spec: &str) -> Config {
    let spec = spec.to_string();
    Config::from_lookup(&|k| (k == "SIMGPU_DEVICES").then(|| spec.clone())).unwrap()
}

/// `(pid, start time)` of every live slot in the state file, read as another process would.
fn live_slots(path: &Path) -> Vec<(u32, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    (0..MAX_SLOTS)
        .map(|i| SLOTS_OFFSET + i * SLOT_BYTES)
        .filter(|at| owner_kind(word(*at)) == SLOT_LIVE)
        .map(|at| (owner_pid(word(at)), word(at + 8)))
        .collect()
}

fn high_water(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[56..60].try_into().unwrap())
}

#[test]
fn two_machines_in_one_process_share_one_slot() {
    let path = scratch("one-slot");
    let cuda = Machine::open(&path, config("mem=4Gi;mem=2Gi")).unwrap();
    let nvml = Machine::open(&path, config("mem=4Gi;mem=2Gi")).unwrap();
    let tool = Machine::attach(&path).unwrap();
    let me = std::process::id();
    let slots = live_slots(&path);
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_eq!(slots[0].0, me);
    assert_ne!(slots[0].1, 0, "the start time is recorded");
    assert_eq!(high_water(&path), 1);

    // Both copies charge the one slot; the counters are the process's.
    cuda.alloc(0, 5).unwrap();
    nvml.alloc(0, 7).unwrap();
    cuda.alloc(1, 3).unwrap();
    assert_eq!(cuda.process_used(0), 12);
    assert_eq!(tool.process_used(0), 12);
    assert_eq!(nvml.process_used(1), 3);
    nvml.context_created(1);
    cuda.launch(1, 1_000, 0);
    nvml.launch(1, 2_000, 0);
    assert_eq!(tool.total_busy_ns(1, Some(me)), 3_000);
    let procs = tool.processes(1);
    assert_eq!(procs.len(), 1);
    assert_eq!((procs[0].pid, procs[0].used_bytes), (me, 3));

    // Freeing through either copy gives back at most what the process holds.
    nvml.free(0, 10);
    assert_eq!(cuda.process_used(0), 2);
    cuda.free(0, 100);
    assert_eq!(nvml.process_used(0), 0);
    assert_eq!(tool.mem_info(0), (4 << 30, 4 << 30));

    // A live process is never reclaimed, whichever copy asks.
    assert_eq!(nvml.reclaim_dead(), 0);
    assert_eq!(live_slots(&path).len(), 1);
    assert_eq!(cuda.process_used(1), 3);
}

#[test]
fn threads_freeing_at_once_never_go_below_zero() {
    let path = scratch("free-race");
    let a = Machine::open(&path, config("mem=1Gi")).unwrap();
    let b = Machine::open(&path, config("mem=1Gi")).unwrap();
    a.alloc(0, 4_000).unwrap();
    std::thread::scope(|s| {
        for m in [&a, &b, &a, &b] {
            s.spawn(move || {
                for _ in 0..1_000 {
                    m.free(0, 3);
                }
            });
        }
    });
    assert_eq!(a.process_used(0), 0);
    assert_eq!(b.mem_info(0), (1 << 30, 1 << 30));
    b.alloc(0, 10).unwrap();
    assert_eq!(a.process_used(0), 10);
}

/// A pipe whose ends are closed on exec, so programs other tests start do not hold them open.
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

/// In a fork child: register through the inherited machine and a second copy of our own, charge
/// a byte through each, report on `ready`, wait until `release` closes, and leave without running
/// any Rust teardown.
fn child(path: &Path, inherited: &Machine, ready: RawFd, release: RawFd) -> ! {
    let ok = inherited.alloc(0, 1).is_ok()
        && Machine::open(path, config("mem=4Gi")).is_ok_and(|second| {
            let charged = second.alloc(0, 1).is_ok() && second.process_used(0) == 2;
            std::mem::forget(second); // keep the mapping: _exit ends everything at once
            charged
        });
    let byte = [if ok { b'k' } else { b'E' }];
    let mut wait = [0u8; 1];
    // SAFETY: plain reads and writes of valid one-byte buffers on fds we hold, then _exit, which
    // is what a fork child of a threaded program may do.
    unsafe {
        libc::write(ready, byte.as_ptr().cast(), 1);
        while libc::read(release, wait.as_mut_ptr().cast(), 1) < 0 {}
        libc::_exit(0)
    }
}

#[test]
fn eleven_hundred_processes_take_one_slot_each_and_are_reclaimed() {
    const CHILDREN: usize = 1_100;
    let path = scratch("many");
    let m = Machine::open(&path, config("mem=4Gi")).unwrap();
    let (ready_r, ready_w) = pipe();
    let (release_r, release_w) = pipe();
    let mut pids = Vec::new();
    for _ in 0..CHILDREN {
        // SAFETY: the child only registers, allocates, and _exits (see `child`).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: closing the child's copy of the write end, so it sees EOF when the parent closes.
            unsafe { libc::close(release_w) };
            child(&path, &m, ready_w, release_r);
        }
        pids.push(pid);
    }
    let release_children = |pids: &[i32]| {
        // SAFETY: our own fd; the children then read EOF and exit.
        unsafe { libc::close(release_w) };
        for pid in pids {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(*pid, &mut status, 0) };
        }
    };
    let mut answers = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while answers.len() < CHILDREN && std::time::Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: ready_r,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 1_000) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        // SAFETY: a valid buffer; the pipe is ours.
        let n = unsafe { libc::read(ready_r, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            answers.extend_from_slice(&buf[..n as usize]);
        }
    }
    let answered = answers.len();
    let failed = answers.iter().filter(|b| **b != b'k').count();
    let slots = live_slots(&path);
    let procs = m.processes(0);
    let (free, total) = m.mem_info(0);
    release_children(&pids);

    assert_eq!(answered, CHILDREN, "children that answered in time");
    assert_eq!(failed, 0, "children that could not register or allocate");
    // The parent plus one slot per child, although every child opened the machine twice.
    assert_eq!(slots.len(), CHILDREN + 1);
    assert_eq!(high_water(&path) as usize, CHILDREN + 1);
    for pid in &pids {
        assert_eq!(
            slots.iter().filter(|(p, _)| *p == *pid as u32).count(),
            1,
            "pid {pid}"
        );
    }
    assert_eq!(procs.len(), CHILDREN);
    assert!(procs.iter().all(|p| p.used_bytes == 2), "{procs:?}");
    assert_eq!(total - free, 2 * CHILDREN as u64);

    // All exited: their slots and bytes come back, ours stays.
    assert_eq!(m.reclaim_dead(), CHILDREN);
    assert_eq!(
        live_slots(&path),
        vec![slots_of(&slots, std::process::id())]
    );
    assert!(m.processes(0).is_empty());
    assert_eq!(m.mem_info(0), (4 << 30, 4 << 30));
    // SAFETY: our own fds.
    unsafe {
        libc::close(ready_r);
        libc::close(ready_w);
        libc::close(release_r);
    }
}

fn slots_of(slots: &[(u32, u64)], pid: u32) -> (u32, u64) {
    *slots.iter().find(|(p, _)| *p == pid).unwrap()
}

#[test]
fn a_full_table_of_dead_processes_makes_room_at_registration() {
    let path = scratch("full");
    drop(Machine::open(&path, config("mem=1Gi")).unwrap());
    // Every slot owned by a process that has exited, and scans reaching the last one.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    for i in 0..MAX_SLOTS {
        let at = SLOTS_OFFSET + i * SLOT_BYTES;
        bytes[at..at + 8].copy_from_slice(&owner_word(SLOT_LIVE, dead).to_le_bytes());
        bytes[at + 16..at + 24].copy_from_slice(&1u64.to_le_bytes()); // 1 byte on device 0
    }
    bytes[56..60].copy_from_slice(&(MAX_SLOTS as u32).to_le_bytes());
    let at = DEVICES_OFFSET;
    bytes[at..at + 8].copy_from_slice(&(MAX_SLOTS as u64).to_le_bytes());
    let full = scratch("full-copy");
    std::fs::write(&full, &bytes).unwrap();

    let m = Machine::open(&full, config("mem=1Gi")).unwrap();
    let me = std::process::id();
    assert_eq!(
        live_slots(&full).iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![me]
    );
    assert_eq!(m.mem_info(0), (1 << 30, 1 << 30));
}
