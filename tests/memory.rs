//! Every allocation path is charged and every free gives back exactly its charge, read two ways at
//! each step: `cuMemGetInfo_v2` inside the process, and the region file's bytes at HAMi's offsets
//! (the independent reader in `common/region.rs`). Also: the views agree (CUDA, NVML v1/v2, other
//! processes), host memory is not charged, and the region is HAMi's v1 layout.

mod common;

use common::*;

/// The simulated driver charges 304 MiB per context, as a real GPU does; the limit leaves room above it.
const LIMIT: u64 = GIB;

/// How much an allocation must be charged.
#[derive(Clone, Copy, Debug)]
enum Charge {
    Exactly(u64),
    AtLeast(u64),
}

struct Case {
    machine: SimMachine,
    shell: Shell,
    base: u64,
    _dump: DumpOnFailure,
}

impl Case {
    fn new(label: &str) -> Case {
        Case::with_env(label, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")])
    }

    fn with_env(label: &str, env: &[(&str, &str)]) -> Case {
        let machine = SimMachine::new(label);
        let dump = DumpOnFailure(machine.region_file());
        let mut shell = Shell::preloaded(&machine, env);
        shell.start(0);
        let mut case = Case {
            machine,
            shell,
            base: 0,
            _dump: dump,
        };
        let (_, total) = case.shell.info();
        assert_eq!(total, LIMIT, "cuMemGetInfo_v2 total under a 1g limit");
        case.base = case.used_checked("after context creation");
        case
    }

    /// The process's view and the region's must agree; returns the device-0 usage.
    fn used_checked(&mut self, when: &str) -> u64 {
        let (free, total) = self.shell.info();
        assert!(free <= total, "{when}: free {free} above total {total}");
        let cuda_used = total - free;
        let r = checked_region(&self.machine);
        let region_used = r.device_used(0);
        assert_eq!(
            region_used, cuda_used,
            "{when}: region says {region_used} bytes used on device 0, cuMemGetInfo_v2 says {cuda_used}\n{}",
            r.dump()
        );
        if region_used > 0 {
            let slot = r.slot_of(self.shell.pid()).unwrap_or_else(|| {
                panic!(
                    "{when}: usage but no slot for pid {}\n{}",
                    self.shell.pid(),
                    r.dump()
                )
            });
            assert_eq!(
                slot.used[0].total,
                region_used,
                "{when}: one process, one slot\n{}",
                r.dump()
            );
            assert_eq!(
                slot.status,
                1,
                "{when}: a running process has status 1\n{}",
                r.dump()
            );
        }
        assert_eq!(r.limit[0], LIMIT, "{when}: region limit[0]\n{}", r.dump());
        region_used
    }

    /// Allocate with `alloc`, check the charge, check that `over` is refused with nothing charged,
    /// free, and check that usage is back where it was.
    fn path(&mut self, alloc: &str, charge: impl Fn(&Reply) -> Charge, over: &str) {
        let before = self.used_checked(&format!("before {alloc}"));
        let reply = self.shell.ok(alloc);
        let after = self.used_checked(&format!("after {alloc}"));
        let charged = after - before;
        match charge(&reply) {
            Charge::Exactly(n) => assert_eq!(
                charged, n,
                "`{alloc}` ({}) charged {charged}, want exactly {n}",
                reply.line
            ),
            Charge::AtLeast(n) => assert!(
                charged >= n,
                "`{alloc}` ({}) charged {charged}, want at least {n}",
                reply.line
            ),
        }
        self.shell.expect(over, 2);
        assert_eq!(
            self.used_checked(&format!("after refused {over}")),
            after,
            "a refused `{over}` changed usage"
        );
        self.shell.ok(&format!("free {}", reply.int("id")));
        self.settle();
        assert_eq!(
            self.used_checked(&format!("after freeing {alloc}")),
            before,
            "`{alloc}` was not given back exactly"
        );
    }

    /// Stream-ordered frees return memory to the pool; trimming gives it back to the device.
    fn settle(&mut self) {
        self.shell.ok("sync");
    }

    /// Exit normally: the slot must be released and every counter zeroed.
    fn finish(self) {
        let pid = self.shell.pid();
        let status = self.shell.exit();
        assert!(status.success(), "cushell exited with {status}");
        let r = checked_region(&self.machine);
        assert_eq!(r.device_used(0), 0, "usage left after exit\n{}", r.dump());
        assert!(
            r.slot_of(pid).is_none(),
            "slot of exited pid {pid} still counted\n{}",
            r.dump()
        );
    }
}

#[test]
fn cu_mem_alloc_v2_charges_exact_bytes() {
    let mut c = Case::new("mem-alloc");
    c.path(
        "alloc 8388608",
        |_| Charge::Exactly(8 * MIB),
        "alloc 1073741825",
    );
    c.path("alloc 1000", |_| Charge::AtLeast(1000), "alloc 2147483648");
    assert_eq!(c.used_checked("end"), c.base);
    c.finish();
}

#[test]
fn cu_mem_alloc_pitch_v2_charges_the_real_pitch() {
    let mut c = Case::new("mem-pitch");
    c.path(
        "pitch 1000 1000 4",
        |r| Charge::Exactly(r.u64("pitch") * 1000),
        "pitch 65536 16385 4",
    );
    c.path(
        "pitch 4097 3 16",
        |r| Charge::Exactly(r.u64("pitch") * 3),
        "pitch 1048576 1025 4",
    );
    c.finish();
}

#[test]
fn cu_mem_alloc_managed_charges_the_full_size() {
    let mut c = Case::new("mem-managed");
    c.path(
        "managed 16777216",
        |_| Charge::Exactly(16 * MIB),
        "managed 1073741825",
    );
    c.finish();
}

#[test]
fn cu_mem_create_charges_at_creation_and_release_gives_back() {
    let mut c = Case::new("mem-vmm");
    c.path(
        "vmm 8388608",
        |r| Charge::Exactly(r.u64("size")),
        "vmm 1075838976",
    );
    c.finish();
}

#[test]
fn arrays_and_mipmapped_arrays_are_charged() {
    let mut c = Case::new("mem-arrays");
    // float4 texels: 16 bytes each.
    c.path(
        "array 1024 512",
        |_| Charge::AtLeast(1024 * 512 * 16),
        "array 12288 8192",
    );
    c.path(
        "array3d 128 128 32",
        |_| Charge::AtLeast(128 * 128 * 32 * 16),
        "array3d 1024 1024 96",
    );
    c.path(
        "mipmap 512 512 4",
        |_| Charge::AtLeast(512 * 512 * 16),
        "mipmap 8192 8192 2",
    );
    c.finish();
}

fn stream_ordered(label: &str, alloc: &str, over: &str, setup: &[&str], teardown: &[&str]) {
    let mut c = Case::new(label);
    for s in setup {
        c.shell.ok(s);
    }
    let base = c.used_checked("before");
    let first = c.shell.ok(&format!("{alloc} 8388608"));
    let charged = c.used_checked("after the first allocation") - base;
    assert!(charged >= 8 * MIB, "`{alloc}` of 8 MiB charged {charged}");
    c.shell.expect(&format!("{alloc} {over}"), 2);
    assert_eq!(
        c.used_checked("after a refused allocation") - base,
        charged,
        "a refused allocation was charged"
    );
    c.shell.ok(&format!("free {}", first.int("id")));
    let pooled = c.used_checked("after cuMemFreeAsync") - base;
    assert!(
        pooled <= charged,
        "freeing raised usage from {charged} to {pooled}"
    );
    // Reusing the pool must not charge the same bytes twice.
    let second = c.shell.ok(&format!("{alloc} 8388608"));
    let again = c.used_checked("after reallocating from the pool") - base;
    assert!(
        again < 2 * 8 * MIB,
        "reallocating 8 MiB from the pool took usage to {again}: charged twice"
    );
    c.shell.ok(&format!("free {}", second.int("id")));
    c.shell.ok("trim");
    assert_eq!(
        c.used_checked("after trimming the pool to 0"),
        base,
        "trimmed pool memory was not given back"
    );
    for s in teardown {
        c.shell.ok(s);
    }
    assert_eq!(c.used_checked("end"), c.base);
    c.finish();
}

#[test]
fn cu_mem_alloc_async_charges_and_pool_trimming_gives_back() {
    stream_ordered("mem-async", "async", "1073741825", &[], &[]);
}

#[test]
fn cu_mem_alloc_async_ptsz_is_charged_too() {
    stream_ordered("mem-async-ptsz", "async_ptsz", "1073741825", &[], &[]);
}

#[test]
fn cu_mem_alloc_from_pool_async_charges_and_trimming_gives_back() {
    stream_ordered(
        "mem-pool",
        "pool_alloc",
        "1073741825",
        &["pool_create"],
        &["pool_destroy"],
    );
}

#[test]
fn a_second_context_is_charged_and_destroying_it_gives_back() {
    let mut c = Case::new("mem-ctx");
    let before = c.used_checked("before cuCtxCreate");
    let ctx = c.shell.ok("ctx_create 0");
    let with_ctx = c.used_checked("with a second context");
    assert!(with_ctx >= before, "creating a context lowered usage");
    c.shell.ok(&format!("ctx_destroy {}", ctx.int("id")));
    c.shell.ok("ctx 0");
    assert_eq!(
        c.used_checked("after cuCtxDestroy"),
        before,
        "context memory not given back"
    );
    c.finish();
}

#[test]
fn host_allocations_are_not_charged() {
    let mut c = Case::new("mem-host");
    let before = c.used_checked("before");
    // More than the device limit: host memory must not count against it.
    let a = c.shell.ok("host 671088640");
    let b = c.shell.ok("hostalloc 671088640");
    assert_eq!(
        c.used_checked("with 1.25 GiB of pinned host memory"),
        before
    );
    c.shell.ok(&format!("free {}", a.int("id")));
    c.shell.ok(&format!("free {}", b.int("id")));
    assert_eq!(c.used_checked("after freeing host memory"), before);
    c.finish();
}

#[test]
fn interleaved_frees_release_exactly_their_charge() {
    let mut c = Case::new("mem-interleaved");
    let base = c.base;
    let a = c.shell.ok("alloc 4194304");
    let p = c.shell.ok("pitch 3000 1000 4");
    let m = c.shell.ok("managed 2097152");
    let v = c.shell.ok("vmm 2097152");
    let pitch_bytes = p.u64("pitch") * 1000;
    let vmm_bytes = v.u64("size");
    let all = base + 4 * MIB + pitch_bytes + 2 * MIB + vmm_bytes;
    assert_eq!(c.used_checked("four live allocations"), all);
    c.shell.ok(&format!("free {}", p.int("id")));
    assert_eq!(c.used_checked("pitch freed"), all - pitch_bytes);
    c.shell.ok(&format!("free {}", v.int("id")));
    assert_eq!(c.used_checked("vmm freed"), all - pitch_bytes - vmm_bytes);
    c.shell.ok(&format!("free {}", a.int("id")));
    assert_eq!(c.used_checked("alloc freed"), base + 2 * MIB);
    c.shell.ok(&format!("free {}", m.int("id")));
    assert_eq!(c.used_checked("all freed"), base);
    c.finish();
}

#[test]
fn freeing_an_unknown_pointer_passes_through_to_the_driver() {
    let machine = SimMachine::new("mem-unknown-free");
    let _dump = DumpOnFailure(machine.region_file());
    let mut bare = Shell::bare(&machine, &[]);
    bare.start(0);
    let mut ours = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
    ours.start(0);
    let held = ours.ok("alloc 8388608");
    for ptr in ["0x7f0000001000", "0", "0x10"] {
        let want = bare.cmd(&format!("free_raw {ptr}")).code();
        let got = ours.cmd(&format!("free_raw {ptr}")).code();
        assert_eq!(
            got, want,
            "cuMemFree_v2({ptr}) under libvgpu, the driver answers {want}"
        );
    }
    // A pointer from another process is unknown here too; nothing of ours may be released.
    let foreign = bare.ok("alloc 4194304");
    ours.cmd(&format!("free_raw {}", foreign.str("ptr")));
    let r = region(&machine);
    assert!(
        r.device_used(0) >= 8 * MIB,
        "freeing a foreign pointer released our charge\n{}",
        r.dump()
    );
    ours.ok(&format!("free {}", held.int("id")));
}

#[test]
fn cuda_nvml_and_other_processes_see_one_consistent_view() {
    let mut c = Case::new("mem-views");
    let a = c.shell.ok("alloc 25165824");
    let used = c.used_checked("24 MiB allocated");
    c.shell.ok("nvml_init");
    let n = c.shell.ok("nvml_info 0");
    assert_eq!(
        n.u64("total"),
        LIMIT,
        "nvmlDeviceGetMemoryInfo total: {}",
        n.line
    );
    assert_eq!(
        n.u64("used"),
        used,
        "nvmlDeviceGetMemoryInfo used: {}",
        n.line
    );
    assert_eq!(
        n.u64("free"),
        LIMIT - used,
        "nvmlDeviceGetMemoryInfo free: {}",
        n.line
    );
    assert_eq!(n.int("code2"), 0, "nvmlDeviceGetMemoryInfo_v2: {}", n.line);
    assert_eq!(n.u64("total2"), LIMIT, "v2 total: {}", n.line);
    assert_eq!(n.u64("used2"), used, "v2 used: {}", n.line);
    assert_eq!(
        n.u64("free2"),
        LIMIT.saturating_sub(used + n.u64("reserved2")),
        "v2 free: {}",
        n.line
    );
    let t = c.shell.ok("totalmem 0");
    assert_eq!(t.u64("total"), LIMIT, "cuDeviceTotalMem_v2");

    // A second process of the same container sees the first one's usage.
    let mut other = Shell::preloaded(&c.machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
    other.ok("nvml_init");
    let on = other.ok("nvml_info 0");
    assert_eq!(on.u64("total"), LIMIT, "{}", on.line);
    assert_eq!(
        on.u64("used"),
        used,
        "the other process's NVML view: {}",
        on.line
    );
    other.start(0);
    let (free, total) = other.info();
    let other_used = total - free;
    assert!(
        other_used >= used,
        "the other process sees {other_used} used, the first holds {used}"
    );
    assert_eq!(
        other_used,
        region(&c.machine).device_used(0),
        "second process view vs region"
    );
    // Whatever is left is all the second process can get.
    let fill = other.cmd(&format!("fill {}", 16 * MIB));
    assert_eq!(fill.code(), 2, "{}", fill.line);
    assert_eq!(
        fill.u64("n"),
        free / (16 * MIB),
        "the second process got {} chunks of 16 MiB of {free} free bytes",
        fill.u64("n")
    );
    other.ok("freeall");
    assert!(other.exit().success());
    c.shell.ok(&format!("free {}", a.int("id")));
    c.finish();
}

#[test]
fn free_memory_is_capped_by_the_real_free_memory() {
    // A 2 GiB GPU and small contexts; the limit (1.5 GiB) is above what is physically left once a
    // neighbour outside the container holds 1 GiB.
    let ctx = [("SIMGPU_CONTEXT_BYTES", "16777216")];
    let machine = SimMachine::new("mem-real-free").with_devices("name=Small,mem=2Gi,sms=16");
    let _dump = DumpOnFailure(machine.region_file());
    let mut neighbour = Shell::bare(&machine, &ctx);
    neighbour.start(0);
    neighbour.ok(&format!("alloc {}", GIB));
    let mut ours = Shell::preloaded(&machine, &[ctx[0], ("CUDA_DEVICE_MEMORY_LIMIT", "1536m")]);
    ours.start(0);
    let (free, total) = ours.info();
    let (real_free, _) = neighbour.info();
    let used = region(&machine).device_used(0);
    assert_eq!(total, 1536 * MIB);
    assert!(
        real_free < 1536 * MIB - used,
        "the neighbour should leave less than the limit"
    );
    assert_eq!(
        free,
        (1536 * MIB - used).min(real_free),
        "free = min(limit - used, real free {real_free})"
    );
    ours.ok("nvml_init");
    let n = ours.ok("nvml_info 0");
    assert!(
        n.u64("free") <= real_free,
        "NVML free {} above the real free {real_free}",
        n.u64("free")
    );
}

#[test]
fn free_never_wraps_whatever_the_region_says() {
    // Usage above the limit cannot be produced through the API (it is refused), but the region is
    // shared and cooperative: make it say so, and every view must clamp free at 0 without an error.
    let mut c = Case::new("mem-underflow");
    c.shell.ok("nvml_init");
    let r = region(&c.machine);
    let slot = r.slot_of(c.shell.pid()).expect("slot").index;
    let path = c.machine.region_file();
    let original = std::fs::read(&path).unwrap();
    let off = 1856 + 1960 * slot + 8; // used[0] of this slot (hami-contract.md 3.2)
    let mut forged = original.clone();
    let own_ctx = u64::from_le_bytes(forged[off..off + 8].try_into().unwrap());
    let data = 2 * GIB;
    forged[off + 16..off + 24].copy_from_slice(&data.to_le_bytes());
    forged[off + 32..off + 40].copy_from_slice(&(own_ctx + data).to_le_bytes());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&forged[off..off + 40], off as u64).unwrap();
    }
    let (free, total) = c.shell.info();
    assert!(free <= total, "free {free} above total {total}");
    let n = c.shell.ok("nvml_info 0");
    assert!(
        n.u64("free") <= n.u64("total"),
        "NVML free wrapped: {}",
        n.line
    );
    assert!(
        n.u64("free2") <= n.u64("total2"),
        "NVML v2 free wrapped: {}",
        n.line
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&original[off..off + 40], off as u64)
            .unwrap();
    }
}

#[test]
fn a_limit_below_what_a_context_costs_refuses_the_context() {
    // 4 KiB cannot hold a 304 MiB context: the retain fails with OUT_OF_MEMORY, nothing is charged,
    // and the process carries on.
    let machine = SimMachine::new("mem-tiny-limit");
    let _dump = DumpOnFailure(machine.region_file());
    let mut sh = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "4096")]);
    sh.ok("init");
    sh.expect("ctx 0", 2);
    sh.ok("nvml_init");
    let n = sh.ok("nvml_info 0");
    assert_eq!(n.u64("total"), 4096, "{}", n.line);
    assert!(
        n.u64("free") <= n.u64("total"),
        "NVML free wrapped: {}",
        n.line
    );
    assert_eq!(region(&machine).device_used(0), 0);
}

#[test]
fn limit_above_physical_memory_reports_physical() {
    // hami-contract.md section 6: total = min(limit, physical) for cuMemGetInfo, cuDeviceTotalMem, NVML.
    let machine = SimMachine::new("mem-above-physical").with_devices("name=Small,mem=2Gi,sms=16");
    let _dump = DumpOnFailure(machine.region_file());
    let mut sh = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "4g")]);
    sh.start(0);
    let (_, total) = sh.info();
    assert_eq!(
        total,
        2 * GIB,
        "cuMemGetInfo_v2 total with a limit above the GPU's memory"
    );
    assert_eq!(
        sh.ok("totalmem 0").u64("total"),
        2 * GIB,
        "cuDeviceTotalMem_v2"
    );
    sh.ok("nvml_init");
    assert_eq!(
        sh.ok("nvml_info 0").u64("total"),
        2 * GIB,
        "nvmlDeviceGetMemoryInfo"
    );
}

#[test]
fn accepted_limit_formats() {
    for (text, bytes) in [
        ("4g", 4 * GIB),
        ("4G", 4 * GIB),
        ("4Gi", 4 * GIB),
        ("4GiB", 4 * GIB),
        ("4096m", 4 * GIB),
        ("4194304k", 4 * GIB),
        ("4294967296", 4 * GIB),
        ("3000m", 3000 * MIB),
        ("1073741824", GIB),
    ] {
        let machine = SimMachine::new("mem-format");
        let _dump = DumpOnFailure(machine.region_file());
        let mut sh = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", text)]);
        sh.start(0);
        let (_, total) = sh.info();
        assert_eq!(total, bytes, "CUDA_DEVICE_MEMORY_LIMIT={text}");
        assert_eq!(region(&machine).limit[0], bytes, "region limit for {text}");
    }
    // `0` and unset: no limit, the device's own size.
    for env in [vec![("CUDA_DEVICE_MEMORY_LIMIT", "0")], vec![]] {
        let machine = SimMachine::new("mem-nolimit");
        let mut bare = Shell::bare(&machine, &[]);
        bare.start(0);
        let (_, real_total) = bare.info();
        let mut sh = Shell::preloaded(&machine, &env);
        sh.start(0);
        assert_eq!(
            sh.info().1,
            real_total,
            "{env:?}: no limit means the real total"
        );
    }
}

#[test]
fn per_device_limits_override_the_global_one() {
    let machine = SimMachine::new("mem-per-device");
    let _dump = DumpOnFailure(machine.region_file());
    let mut sh = Shell::preloaded(
        &machine,
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
        ],
    );
    sh.start(0);
    assert_eq!(sh.info().1, GIB);
    sh.ok("ctx 1");
    assert_eq!(sh.info().1, 2 * GIB);
    let r = region(&machine);
    assert_eq!((r.limit[0], r.limit[1]), (GIB, 2 * GIB), "{}", r.dump());
}

#[test]
fn region_file_is_hami_v1() {
    let machine = SimMachine::new("region-v1");
    let _dump = DumpOnFailure(machine.region_file());
    let mut bare = Shell::bare(&machine, &[]);
    bare.ok("nvml_init");
    let count = bare.ok("nvml_count").u64("count");
    let uuids: Vec<String> = (0..count)
        .map(|i| bare.ok(&format!("nvml_info {i}")).str("uuid").to_string())
        .collect();

    let mut sh = Shell::preloaded(
        &machine,
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
        ],
    );
    sh.start(0);
    sh.ok("alloc 8388608");
    let r = checked_region(&machine);
    assert_eq!(r.magic, region::MAGIC);
    assert_eq!((r.major, r.minor), (1, 2), "{}", r.dump());
    assert!(
        r.file_size >= region::V1_FILE_SIZE,
        "file is {} bytes",
        r.file_size
    );
    assert_eq!(
        r.device_num,
        count,
        "device_num is the NVML device count\n{}",
        r.dump()
    );
    for (d, uuid) in uuids.iter().enumerate() {
        assert_eq!(
            &r.uuids[d],
            uuid,
            "uuids[{d}] must be the NVML UUID\n{}",
            r.dump()
        );
    }
    assert_eq!((r.limit[0], r.limit[1]), (GIB, 2 * GIB), "{}", r.dump());
    for d in 0..count as usize {
        assert_eq!(
            r.sm_limit[d],
            100,
            "sm_limit[{d}] without an SM limit\n{}",
            r.dump()
        );
    }
    assert_eq!(r.priority, 1, "default CUDA_TASK_PRIORITY\n{}", r.dump());
    let slot = r
        .slot_of(sh.pid())
        .unwrap_or_else(|| panic!("no slot for pid {}\n{}", sh.pid(), r.dump()));
    assert_eq!(slot.status, 1);
    assert!(
        slot.used[0].data_size >= 8 * MIB,
        "allocations go to data_size\n{}",
        r.dump()
    );
    assert!(
        r.proc_num as usize > slot.index,
        "proc_num is a high-water mark above every used slot"
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(machine.region_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o666,
        "region file mode {mode:o}: every process of the container must open it"
    );
}

#[test]
fn task_priority_is_written_at_creation() {
    let machine = SimMachine::new("region-priority");
    let _dump = DumpOnFailure(machine.region_file());
    let mut sh = Shell::preloaded(
        &machine,
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
            ("CUDA_TASK_PRIORITY", "0"),
        ],
    );
    sh.start(0);
    sh.ok("alloc 1048576");
    assert_eq!(region(&machine).priority, 0);
}

#[test]
fn a_zero_magic_file_left_by_a_dead_creator_is_initialised() {
    // hami-contract.md 3.7: no magic yet means a creator died part-way; initialise it.
    let machine = SimMachine::new("region-zero");
    let _dump = DumpOnFailure(machine.region_file());
    std::fs::write(machine.region_file(), vec![0u8; region::V1_FILE_SIZE]).unwrap();
    let mut sh = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
    sh.start(0);
    assert_eq!(sh.info().1, LIMIT);
    sh.ok("alloc 8388608");
    let r = checked_region(&machine);
    assert!(r.device_used(0) >= 8 * MIB, "{}", r.dump());
}

#[test]
fn threads_in_one_process_never_exceed_the_limit() {
    let mut c = Case::new("mem-threads");
    // 8 threads each repeatedly take a quarter of the limit: at most 4 (minus the context) fit at once.
    let r = c.shell.ok(&format!("threads 8 400 {}", LIMIT / 4));
    assert_eq!(r.int("other"), 0, "{}", r.line);
    assert!(r.int("ok") > 0, "{}", r.line);
    assert_eq!(c.used_checked("after the threads"), c.base);
    c.finish();
}
