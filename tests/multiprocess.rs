//! Multi-process tests: many processes and threads under one region and one limit, SIGKILL at any
//! point, fork, exec, and a PID reused by a new PID namespace. Every run has a deadline and dumps the
//! region when it fails.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: u64 = 256 * MIB;
const CHUNK: u64 = 32 * MIB;

/// A 256 MiB limit, and 4 MiB contexts in the simulated driver (instead of a real GPU's 304 MiB) so
/// that many processes fit under it.
fn limit_env() -> [(&'static str, &'static str); 2] {
    [
        ("CUDA_DEVICE_MEMORY_LIMIT", "256m"),
        ("SIMGPU_CONTEXT_BYTES", "4194304"),
    ]
}

/// Wait for every child, killing all of them if the deadline passes.
fn wait_all(children: Vec<(String, Child)>, deadline: Duration) -> Vec<(String, Output)> {
    let started = Instant::now();
    let mut children: Vec<(String, Option<Child>)> =
        children.into_iter().map(|(l, c)| (l, Some(c))).collect();
    let mut done: Vec<(String, Output)> = Vec::new();
    while done.len() < children.len() {
        for (label, slot) in children.iter_mut() {
            let finished = match slot.as_mut() {
                Some(child) => child.try_wait().expect("wait").is_some(),
                None => false,
            };
            if finished {
                let out = slot.take().unwrap().wait_with_output().expect("output");
                done.push((label.clone(), out));
            }
        }
        if started.elapsed() > deadline {
            for (_, slot) in children.iter_mut() {
                if let Some(mut c) = slot.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            panic!("processes still running after {deadline:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done
}

/// The board every mp_worker maps (layout in tests/probes/mp_worker.c).
struct Board(std::fs::File);

impl Board {
    fn u64_at(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.0.read_exact_at(&mut b, off).unwrap();
        u64::from_le_bytes(b)
    }
    fn u32_at(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.0.read_exact_at(&mut b, off).unwrap();
        u32::from_le_bytes(b)
    }
    fn max_live(&self) -> u64 {
        self.u64_at(8)
    }
    fn max_region(&self) -> u64 {
        self.u64_at(16)
    }
    fn region_samples(&self) -> u64 {
        self.u64_at(24)
    }
    fn ready(&self) -> u32 {
        self.u32_at(36)
    }
    fn go(&self) {
        self.0.write_all_at(&1u32.to_le_bytes(), 32).unwrap();
        self.0.sync_data().ok();
    }
    fn ooms(&self) -> u64 {
        self.u64_at(40)
    }
    fn allocs(&self) -> u64 {
        self.u64_at(48)
    }
}

#[test]
fn eight_processes_of_four_threads_never_exceed_the_limit() {
    let machine = SimMachine::new("mp-stress");
    let _dump = DumpOnFailure(machine.region_file());
    let exe = linked_probe("mp_worker");
    let board_path = machine.dir.join("board");
    std::fs::write(&board_path, vec![0u8; 4096]).unwrap();
    let board = Board(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&board_path)
            .unwrap(),
    );

    const PROCESSES: usize = 8;
    let mut children = Vec::new();
    for k in 0..PROCESSES {
        let mut cmd = machine.preloaded(&exe);
        cmd.envs(limit_env())
            .arg(LIMIT.to_string())
            .arg("300")
            .arg((k + 1).to_string())
            .arg(&board_path)
            .arg(machine.region_file())
            .arg("4")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push((format!("worker {k}"), cmd.spawn().expect("spawn mp_worker")));
    }
    // Start them together once all have registered.
    let started = Instant::now();
    while (board.ready() as usize) < PROCESSES {
        let dead = children
            .iter_mut()
            .any(|(_, c)| c.try_wait().ok().flatten().is_some());
        if dead || started.elapsed() > Duration::from_secs(60) {
            board.go();
            let outs = wait_all(children, Duration::from_secs(30));
            let text: Vec<String> = outs
                .iter()
                .map(|(l, o)| {
                    format!(
                        "{l}: {}\n{}{}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .collect();
            panic!(
                "only {} of {PROCESSES} workers got ready\n{}",
                board.ready(),
                text.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    board.go();
    let outs = wait_all(children, Duration::from_secs(240));
    for (label, out) in &outs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("done"),
            "{label} failed with {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary = format!(
        "max live {} max region {} samples {} allocs {} ooms {}",
        board.max_live(),
        board.max_region(),
        board.region_samples(),
        board.allocs(),
        board.ooms()
    );
    println!("{summary}");
    assert!(
        board.max_live() <= LIMIT,
        "allocated bytes exceeded the limit {LIMIT}: {summary}"
    );
    assert!(
        board.max_region() <= LIMIT,
        "the region showed more than the limit {LIMIT}: {summary}"
    );
    assert!(
        board.region_samples() > 0,
        "no consistent region sample: {summary}"
    );
    assert!(
        board.ooms() > 0 && board.max_live() > LIMIT / 2,
        "the run never contended for memory: {summary}"
    );
    let r = checked_region(&machine);
    assert_eq!(
        r.device_used(0),
        0,
        "usage left after every worker exited\n{}",
        r.dump()
    );
    assert_eq!(
        r.live_slots().count(),
        0,
        "slots still counted after every worker exited\n{}",
        r.dump()
    );
}

/// A process that has registered, filled the device and then loops freeing and allocating.
fn churning_victim(machine: &SimMachine) -> (Shell, u64) {
    let mut victim = Shell::preloaded(machine, &limit_env());
    victim.label = "victim".into();
    victim.start(0);
    let fill = victim.expect(&format!("fill {CHUNK}"), 2);
    let held = fill.u64("n");
    victim.send(&format!("churn {CHUNK}"));
    let line = victim.next_line("churn");
    assert!(line.contains("churning"), "{line}");
    (victim, held)
}

#[test]
fn sigkill_mid_allocation_gives_the_bytes_back_at_the_next_allocation() {
    let machine = SimMachine::new("mp-sigkill");
    let _dump = DumpOnFailure(machine.region_file());
    let mut survivor = Shell::preloaded(&machine, &limit_env());
    survivor.label = "survivor".into();
    survivor.start(0);
    let (free_alone, _) = survivor.info();
    for round in 0..5u64 {
        let (victim, held) = churning_victim(&machine);
        assert!(held >= 1, "the victim got no memory");
        std::thread::sleep(Duration::from_millis(20 + 13 * round));
        victim.kill();
        // The very next allocation must find the dead process's bytes reclaimed.
        let first = survivor.cmd(&format!("alloc {CHUNK}"));
        assert_eq!(
            first.code(),
            0,
            "round {round}: the first allocation after SIGKILL: {}",
            first.line
        );
        let fill = survivor.expect(&format!("fill {CHUNK}"), 2);
        assert_eq!(
            1 + fill.u64("n"),
            free_alone / CHUNK,
            "round {round}: the survivor should get everything the victim held"
        );
        let r = checked_region(&machine);
        let (free, total) = survivor.info();
        assert_eq!(
            r.device_used(0),
            total - free,
            "round {round}: only the survivor holds memory\n{}",
            r.dump()
        );
        survivor.ok("freeall");
    }
}

#[test]
fn sigkill_storm_during_registration_leaves_no_lock_or_charge_behind() {
    let machine = SimMachine::new("mp-storm");
    let _dump = DumpOnFailure(machine.region_file());
    let mut seed = 0x2545f4914f6cdd1du64;
    for _ in 0..20 {
        let mut victim = Shell::preloaded(&machine, &limit_env());
        victim.send("init");
        victim.send("ctx 0");
        victim.send(&format!("alloc {CHUNK}"));
        victim.send(&format!("alloc {CHUNK}"));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 15_000));
        victim.kill();
    }
    let mut fresh = Shell::preloaded(&machine, &limit_env());
    fresh.start(0);
    let (free, total) = fresh.info();
    let r = checked_region(&machine);
    let own = r.slot_of(fresh.pid()).map(|s| s.used[0].total).unwrap_or(0);
    assert_eq!(
        total - free,
        own,
        "dead processes still charged\n{}",
        r.dump()
    );
    let fill = fresh.expect(&format!("fill {CHUNK}"), 2);
    assert_eq!(fill.u64("n"), free / CHUNK);
}

#[test]
fn a_child_forked_before_init_gets_its_own_slot() {
    let machine = SimMachine::new("mp-fork");
    let _dump = DumpOnFailure(machine.region_file());
    // The parent has opened the driver (dlopen + dlsym) but made no CUDA call yet.
    let mut parent = Shell::preloaded(&machine, &limit_env());
    let fork = parent.ok(&format!("fork_alloc {CHUNK}"));
    assert_eq!(
        (fork.int("init"), fork.int("ctx"), fork.int("alloc")),
        (0, 0, 0),
        "the child's calls: {}",
        fork.line
    );
    let child = fork.u64("child") as u32;
    let r = checked_region(&machine);
    let slot = r
        .slot_of(child)
        .unwrap_or_else(|| panic!("no slot for child {child}\n{}", r.dump()));
    assert!(
        slot.used[0].data_size >= CHUNK,
        "the child's bytes go to its own slot\n{}",
        r.dump()
    );
    assert!(
        r.slot_of(parent.pid()).is_none(),
        "the parent made no call\n{}",
        r.dump()
    );
    // Now the parent uses CUDA too: a slot of its own, beside the child's.
    parent.start(0);
    parent.ok(&format!("alloc {CHUNK}"));
    let r = checked_region(&machine);
    let parent_slot = r
        .slot_of(parent.pid())
        .unwrap_or_else(|| panic!("no parent slot\n{}", r.dump()));
    assert_ne!(parent_slot.index, r.slot_of(child).unwrap().index);
    let (free, total) = parent.info();
    assert_eq!(
        total - free,
        r.device_used(0),
        "the parent sees the child's usage\n{}",
        r.dump()
    );
    let parent_used = parent_slot.used[0].total;
    let done = parent.ok("fork_release");
    assert_eq!(done.int("exited"), 1, "{}", done.line);
    let r = checked_region(&machine);
    assert!(
        r.slot_of(child).is_none(),
        "the exited child's slot is still counted\n{}",
        r.dump()
    );
    assert_eq!(
        r.device_used(0),
        parent_used,
        "the child's usage outlived it\n{}",
        r.dump()
    );
}

#[test]
fn a_child_forked_after_init_leaves_the_parents_slot_alone() {
    // As with the real driver, CUDA is unusable in the child of an initialised process: the child gets
    // the driver's own errors, and whatever libvgpu state it inherited must not touch the parent's slot,
    // not while it runs and not when it exits.
    let machine = SimMachine::new("mp-fork-after");
    let _dump = DumpOnFailure(machine.region_file());
    let mut bare = Shell::bare(&machine, &limit_env()[1..]);
    bare.start(0);
    let driver = bare.ok(&format!("fork_alloc {CHUNK}"));
    bare.ok("fork_release");
    drop(bare);

    let mut parent = Shell::preloaded(&machine, &limit_env());
    parent.start(0);
    parent.ok(&format!("alloc {}", 2 * CHUNK));
    let before = checked_region(&machine);
    let parent_slot = before.slot_of(parent.pid()).expect("parent slot").clone();
    let fork = parent.ok(&format!("fork_alloc {CHUNK}"));
    for key in ["init", "ctx", "alloc"] {
        assert_eq!(
            fork.int(key),
            driver.int(key),
            "the child's {key}: {} (driver: {})",
            fork.line,
            driver.line
        );
    }
    let during = checked_region(&machine);
    assert_eq!(
        during.slot_of(parent.pid()).map(|s| s.used),
        Some(parent_slot.used),
        "{}",
        during.dump()
    );
    assert_eq!(
        during.device_used(0),
        before.device_used(0),
        "{}",
        during.dump()
    );
    let done = parent.ok("fork_release");
    assert_eq!(done.int("exited"), 1, "{}", done.line);
    let after = checked_region(&machine);
    let slot = after.slot_of(parent.pid()).unwrap_or_else(|| {
        panic!(
            "the child's exit released the parent's slot\n{}",
            after.dump()
        )
    });
    assert_eq!(
        slot.used,
        parent_slot.used,
        "the child's exit changed the parent's slot\n{}",
        after.dump()
    );
    let (free, total) = parent.info();
    assert_eq!(total - free, after.device_used(0));
    parent.ok(&format!("alloc {CHUNK}"));
}

#[test]
fn a_forked_child_is_held_to_the_containers_limit() {
    let machine = SimMachine::new("mp-fork-limit");
    let _dump = DumpOnFailure(machine.region_file());
    let mut holder = Shell::preloaded(&machine, &limit_env());
    holder.start(0);
    holder.ok(&format!("alloc {}", 192 * MIB));
    let mut parent = Shell::preloaded(&machine, &limit_env());
    let fork = parent.ok(&format!("fork_alloc {}", 64 * MIB));
    assert_eq!((fork.int("init"), fork.int("ctx")), (0, 0), "{}", fork.line);
    assert_eq!(
        fork.int("alloc"),
        2,
        "4 + 192 + 4 + 64 MiB under 256 MiB: {}",
        fork.line
    );
    parent.ok("fork_release");
}

#[test]
fn exec_keeps_the_limit() {
    let machine = SimMachine::new("mp-exec");
    let _dump = DumpOnFailure(machine.region_file());
    let door = probe("door_dlsym");
    let fresh = run_probe_ok(
        machine
            .preloaded(&door)
            .envs(limit_env())
            .arg(LIMIT.to_string()),
        Some(&machine.region_file()),
    );
    let fresh_base = scenario(&fresh)["base"].clone();

    // Through a shell: sh is preloaded too (and must not mind), the program it starts is limited.
    let script = format!("{} {}", door.display(), LIMIT);
    let out = run_probe_ok(
        machine
            .preloaded("/bin/sh")
            .envs(limit_env())
            .args(["-c", &script]),
        Some(&machine.region_file()),
    );
    assert_eq!(
        scenario(&out)["chunks"],
        scenario(&fresh)["chunks"],
        "{out}"
    );

    // In place: the same pid, a new image, after the old one had registered and allocated.
    let mut sh = Shell::preloaded(&machine, &limit_env());
    sh.start(0);
    sh.ok(&format!("alloc {}", 16 * MIB));
    sh.send(&format!("exec {} {}", door.display(), LIMIT));
    let (status, lines) = sh.finish();
    let text = lines.join("\n");
    assert!(
        status.success() && text.contains("done"),
        "exec'd program: {status}\n{text}"
    );
    let s = scenario(&text);
    assert_eq!(s["total"], LIMIT.to_string(), "{text}");
    assert_eq!(
        s["base"], fresh_base,
        "after exec the new image starts with the old image's charge (the driver freed that memory at exec)\n{text}"
    );
    assert_eq!(checked_region(&machine).device_used(0), 0);
}

#[test]
fn a_reused_pid_is_told_apart_from_its_dead_owner() {
    // Each run is PID 1 of a fresh PID namespace, so the second process finds a slot with its own pid
    // that belongs to a dead process (hami-contract.md 3.8: pid reuse after a container restart).
    let machine = SimMachine::new("mp-pid-reuse");
    let _dump = DumpOnFailure(machine.region_file());
    let can = run(
        Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]),
        DEADLINE,
    );
    assert!(
        can.status.success(),
        "this test needs `unshare --pid --fork --mount-proc` (root or CAP_SYS_ADMIN): {}",
        String::from_utf8_lossy(&can.stderr)
    );
    let in_namespace = || {
        let mut cmd = machine.preloaded("unshare");
        cmd.envs(limit_env())
            .args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"])
            .arg(probe("cushell"));
        Shell::spawn(cmd, Some(machine.region_file()), "namespaced")
    };
    let mut first = in_namespace();
    assert_eq!(first.ok("pid").int("pid"), 1, "unshare did not give PID 1");
    first.start(0);
    let held = first.expect(&format!("fill {CHUNK}"), 2).u64("n");
    assert!(held >= 1);
    first.kill();

    let mut second = in_namespace();
    assert_eq!(second.ok("pid").int("pid"), 1);
    second.start(0);
    let (free, total) = second.info();
    let fill = second.expect(&format!("fill {CHUNK}"), 2);
    assert_eq!(
        fill.u64("n"),
        held,
        "the new PID 1 must not inherit the dead PID 1's usage (free {free} of {total})"
    );
}

#[test]
fn non_cuda_programs_run_unchanged_under_the_preload() {
    // Installed through /etc/ld.so.preload, libvgpu runs in every shell and tool of the container.
    let machine = SimMachine::new("mp-plain");
    for (prog, args) in [
        ("/bin/sh", vec!["-c", "echo hello; ls / > /dev/null"]),
        ("/bin/true", vec![]),
    ] {
        let mut plain = machine.preloaded(prog);
        plain.envs(limit_env()).args(&args);
        let out = run(&mut plain, DEADLINE);
        assert!(
            out.status.success(),
            "{prog}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bare = Command::new(prog);
        bare.args(&args);
        let want = run(&mut bare, DEADLINE);
        assert_eq!(
            out.stdout, want.stdout,
            "{prog}: output changed under the preload"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{prog}: libvgpu wrote to stderr"
        );
    }
    assert!(
        !machine.region_file().exists(),
        "a program that never used CUDA created the region"
    );
}
