//! Bad input: malformed limits fail closed with a line naming the variable; corrupt, foreign or
//! truncated region files give a clear error and no crash; NULL out-pointers and unknown devices get
//! the driver's own answer; driver failures pass through unchanged; log levels behave.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;

const NOT_PERMITTED: i64 = 800;
const NVML_NO_PERMISSION: i64 = 4;

/// A process that must refuse GPU access (fail closed) and stay alive: cuInit 800, nvmlInit 4, later
/// calls refused too, and a normal exit afterwards. Returns its stderr.
fn assert_fails_closed(machine: &SimMachine, env: &[(&str, &str)], what: &str) -> String {
    let mut sh = Shell::preloaded(machine, env);
    sh.label = what.to_string();
    let init = sh.cmd("init");
    assert_eq!(
        init.code(),
        NOT_PERMITTED,
        "{what}: cuInit answered {}\n{}",
        init.line,
        sh.stderr()
    );
    let again = sh.cmd("init");
    assert_eq!(
        again.code(),
        NOT_PERMITTED,
        "{what}: a second cuInit answered {}",
        again.line
    );
    let ctx = sh.cmd("ctx 0");
    assert_ne!(
        ctx.code(),
        0,
        "{what}: a context was created after a refused cuInit"
    );
    let alloc = sh.cmd("alloc 1048576");
    assert_ne!(
        alloc.code(),
        0,
        "{what}: memory was handed out after a refused cuInit"
    );
    let nvml = sh.cmd("nvml_init");
    assert_eq!(
        nvml.code(),
        NVML_NO_PERMISSION,
        "{what}: nvmlInit_v2 answered {}",
        nvml.line
    );
    sh.ok("pid");
    let (status, stderr) = sh.exit_with_stderr();
    assert!(
        status.success(),
        "{what}: the process did not exit normally: {status}\n{stderr}"
    );
    stderr
}

#[test]
fn malformed_limits_fail_closed_and_name_the_variable() {
    let values = [
        "abc",
        "1.5g",
        "-1",
        "0x10m",
        "010m",
        "1gb",
        "1GB",
        "0m",
        "1 g",
        "99999999999999999999",
        "18446744073709551616",
        "4q",
    ];
    for value in values {
        let machine = SimMachine::new("bad-limit");
        let what = format!("CUDA_DEVICE_MEMORY_LIMIT={value:?}");
        // Errors are printed whatever the log level.
        let stderr = assert_fails_closed(
            &machine,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", value),
                ("LIBCUDA_LOG_LEVEL", "0"),
            ],
            &what,
        );
        assert!(
            stderr.contains("CUDA_DEVICE_MEMORY_LIMIT"),
            "{what}: the error must name the variable:\n{stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("CUDA_DEVICE_MEMORY_LIMIT") && l.contains(value.trim())),
            "{what}: and its value:\n{stderr}"
        );
        assert!(
            !machine.region_file().exists(),
            "{what}: a refused process must not touch the region"
        );
    }
}

#[test]
fn fail_closed_through_the_cu_get_proc_address_door() {
    // cuda-bindings and libcudart look cuInit up with cuGetProcAddress_v2: the lookup must still work
    // and hand out an entry point that refuses, or the client sees "function not found" instead of 800.
    let machine = SimMachine::new("bad-limit-gpa");
    let mut sh = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1.5g")]);
    let r = sh.cmd("gpa_init");
    assert_eq!(
        (r.int("code"), r.int("init")),
        (0, NOT_PERMITTED),
        "cuGetProcAddress_v2(\"cuInit\") then cuInit: {}",
        r.line
    );
}

#[test]
fn malformed_per_device_limits_fail_closed() {
    for (var, value) in [
        ("CUDA_DEVICE_MEMORY_LIMIT_0", "abc"),
        ("CUDA_DEVICE_MEMORY_LIMIT_1", "1.5g"),
        ("CUDA_DEVICE_MEMORY_LIMIT_16", "1g"),
        ("CUDA_DEVICE_MEMORY_LIMIT_99", "1g"),
        ("CUDA_DEVICE_MEMORY_LIMIT_x", "1g"),
    ] {
        let machine = SimMachine::new("bad-limit-i");
        let what = format!("{var}={value}");
        let stderr = assert_fails_closed(
            &machine,
            &[("CUDA_DEVICE_MEMORY_LIMIT", "1g"), (var, value)],
            &what,
        );
        assert!(
            stderr.contains(var),
            "{what}: the error must name {var}:\n{stderr}"
        );
    }
}

#[test]
fn a_limit_for_a_device_that_is_not_there_only_warns() {
    // Two simulated GPUs; index 5 is within 0..15 but matches nothing.
    let machine = SimMachine::new("limit-missing-device");
    let mut sh = Shell::preloaded(
        &machine,
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_5", "1g"),
        ],
    );
    sh.start(0);
    assert_eq!(sh.info().1, GIB);
    let (_, stderr) = sh.exit_with_stderr();
    assert!(
        stderr.contains("CUDA_DEVICE_MEMORY_LIMIT_5"),
        "a warning should name it:\n{stderr}"
    );
}

fn region_bytes_v1(major: u32) -> Vec<u8> {
    let mut b = vec![0u8; region::V1_FILE_SIZE];
    b[0..4].copy_from_slice(&region::MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&major.to_le_bytes());
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    b
}

#[test]
fn foreign_truncated_or_corrupt_region_files_fail_closed() {
    let foreign = vec![0xABu8; region::V1_FILE_SIZE];
    let mut zip = vec![0u8; region::V1_FILE_SIZE];
    zip[..4].copy_from_slice(b"PK\x03\x04");
    let truncated = region_bytes_v1(1)[..1000].to_vec();
    let short_by_one = region_bytes_v1(1)[..region::V1_STRUCT_SIZE - 1].to_vec();
    let major2 = region_bytes_v1(2);
    for (what, bytes) in [
        ("foreign bytes", foreign),
        ("a zip file", zip),
        ("truncated to 1000 bytes", truncated),
        ("one byte short of v1", short_by_one),
        ("major version 2", major2),
    ] {
        let machine = SimMachine::new("bad-region");
        let path = machine.region_file();
        std::fs::write(&path, &bytes).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        let stderr = assert_fails_closed(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")], what);
        assert!(
            stderr.contains(&path.display().to_string())
                || stderr.to_lowercase().contains("region"),
            "{what}: the error should say which file and why:\n{stderr}"
        );
        let after = std::fs::read(&path).unwrap();
        assert!(
            after == bytes,
            "{what}: the file was modified ({} bytes now)",
            after.len()
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "{what}: the file was replaced"
        );
    }
}

#[test]
fn an_unusable_region_path_fails_closed() {
    let machine = SimMachine::new("bad-region-path");
    let dir_path = machine.dir.join("a-directory.cache");
    std::fs::create_dir(&dir_path).unwrap();
    let missing_dir = machine.dir.join("no/such/dir/region.cache");
    for (what, path) in [("a directory", dir_path), ("a missing folder", missing_dir)] {
        let p = path.display().to_string();
        assert_fails_closed(
            &machine,
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
                ("CUDA_DEVICE_MEMORY_SHARED_CACHE", &p),
            ],
            what,
        );
    }
}

/// A pid that no process has (a child that has already been reaped).
fn dead_pid() -> i32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    pid
}

/// A HAMi-core style v1 file: two devices, a 1 GiB limit, and one registered process holding 512 MiB.
fn hami_file(machine: &SimMachine, owner_pid: i32) -> Vec<u8> {
    let mut bare = Shell::bare(machine, &[]);
    bare.ok("nvml_init");
    let mut b = region_bytes_v1(1);
    b[56..64].copy_from_slice(&2u64.to_le_bytes());
    for d in 0..2 {
        let uuid = bare.ok(&format!("nvml_info {d}")).str("uuid").to_string();
        b[64 + 96 * d..64 + 96 * d + uuid.len()].copy_from_slice(uuid.as_bytes());
        b[1600 + 8 * d..1608 + 8 * d].copy_from_slice(&GIB.to_le_bytes());
        b[1728 + 8 * d..1736 + 8 * d].copy_from_slice(&100u64.to_le_bytes());
    }
    let slot = 1856;
    b[slot..slot + 4].copy_from_slice(&owner_pid.to_le_bytes());
    let used = slot + 8;
    b[used + 16..used + 24].copy_from_slice(&(512 * MIB).to_le_bytes());
    b[used + 32..used + 40].copy_from_slice(&(512 * MIB).to_le_bytes());
    b[slot + 1928..slot + 1932].copy_from_slice(&1i32.to_le_bytes());
    b[2_008_896..2_008_900].copy_from_slice(&1i32.to_le_bytes());
    b[2_008_900..2_008_904].copy_from_slice(&1i32.to_le_bytes());
    b[2_008_904..2_008_908].copy_from_slice(&2i32.to_le_bytes());
    b[2_008_908..2_008_912].copy_from_slice(&1i32.to_le_bytes());
    b
}

#[test]
fn a_hami_core_file_whose_processes_are_dead_is_taken_over_in_place() {
    let machine = SimMachine::new("hami-stale");
    let _dump = DumpOnFailure(machine.region_file());
    std::fs::write(machine.region_file(), hami_file(&machine, dead_pid())).unwrap();
    let inode = std::fs::metadata(machine.region_file()).unwrap().ino();
    let mut sh = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
    sh.start(0);
    let (free, total) = sh.info();
    let r = checked_region(&machine);
    let own = r.slot_of(sh.pid()).map(|s| s.used[0].total).unwrap_or(0);
    assert_eq!(
        total - free,
        own,
        "the dead HAMi process's 512 MiB still count\n{}",
        r.dump()
    );
    let fill = sh.expect(&format!("fill {}", 8 * MIB), 2);
    assert_eq!(fill.u64("n"), free / (8 * MIB));
    assert_eq!(
        std::fs::metadata(machine.region_file()).unwrap().ino(),
        inode,
        "the region was replaced, not reused"
    );
    assert!(
        std::fs::metadata(machine.region_file()).unwrap().len() as usize >= region::V1_FILE_SIZE
    );
}

#[test]
fn a_hami_core_file_with_a_live_process_fails_closed() {
    let machine = SimMachine::new("hami-live");
    let mut alive = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let bytes = hami_file(&machine, alive.id() as i32);
    std::fs::write(machine.region_file(), &bytes).unwrap();
    let result = std::panic::catch_unwind(|| {
        assert_fails_closed(
            &machine,
            &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")],
            "HAMi-core file in use",
        );
    });
    let _ = alive.kill();
    let _ = alive.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let after = std::fs::read(machine.region_file()).unwrap();
    let changed: Vec<usize> = (0..bytes.len().min(after.len()))
        .filter(|&i| after[i] != bytes[i])
        .collect();
    assert!(
        after.len() == bytes.len() && changed.is_empty(),
        "a file in use by HAMi-core was modified: {} -> {} bytes, {} bytes differ, first at offsets {:?}",
        bytes.len(),
        after.len(),
        changed.len(),
        &changed[..changed.len().min(8)]
    );
}

#[test]
fn conflicting_limits_fail_closed_while_the_region_is_in_use() {
    let machine = SimMachine::new("limit-conflict");
    let _dump = DumpOnFailure(machine.region_file());
    let mut first = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
    first.start(0);
    first.ok("alloc 1048576");
    let stderr = assert_fails_closed(
        &machine,
        &[("CUDA_DEVICE_MEMORY_LIMIT", "2g")],
        "a different limit",
    );
    assert!(
        mentions(&stderr, &["1073741824", "1g", "1 GiB", "1024 MiB"])
            && mentions(&stderr, &["2147483648", "2g", "2 GiB", "2048 MiB"]),
        "the error should print both values:\n{stderr}"
    );
    assert_eq!(first.exit().code(), Some(0));
    // Nobody alive uses the region any more: it is stale and the next process brings its own limit.
    let mut next = Shell::preloaded(&machine, &[("CUDA_DEVICE_MEMORY_LIMIT", "2g")]);
    next.start(0);
    assert_eq!(next.info().1, 2 * GIB);
    assert_eq!(region(&machine).limit[0], 2 * GIB);
}

fn mentions(text: &str, any_of: &[&str]) -> bool {
    any_of.iter().any(|s| text.contains(s))
}

/// Run the same commands with and without libvgpu; every code must match.
fn same_codes(machine: &SimMachine, env: &[(&str, &str)], setup: &[&str], commands: &[&str]) {
    let mut bare = Shell::bare(machine, env);
    let mut ours_env = vec![("CUDA_DEVICE_MEMORY_LIMIT", "1g")];
    ours_env.extend_from_slice(env);
    let mut ours = Shell::preloaded(machine, &ours_env);
    for s in setup {
        let want = bare.cmd(s).code();
        assert_eq!(ours.cmd(s).code(), want, "setup `{s}`");
    }
    for c in commands {
        let want = bare.cmd(c);
        let got = ours.cmd(c);
        assert_eq!(
            got.code(),
            want.code(),
            "`{c}`: libvgpu answered `{}`, the driver `{}`",
            got.line,
            want.line
        );
        if c.starts_with("nvml_null") && want.kv.contains_key("v1") {
            assert_eq!(
                (got.int("v1"), got.int("v2")),
                (want.int("v1"), want.int("v2")),
                "`{c}`"
            );
        }
    }
    ours.ok("pid");
}

#[test]
fn null_out_pointers_get_the_drivers_answer() {
    let machine = SimMachine::new("null-pointers");
    let _dump = DumpOnFailure(machine.region_file());
    // Before any context: the driver's answer too.
    same_codes(
        &machine,
        &[],
        &["init"],
        &["info", "info_null both", "alloc_null 1024"],
    );
    same_codes(
        &machine,
        &[],
        &["init", "ctx 0", "nvml_init"],
        &[
            "info_null free",
            "info_null total",
            "info_null both",
            "alloc_null 1048576",
            "alloc_null 134217728",
            "totalmem_null 0",
            "nvml_null 0",
            "info",
        ],
    );
}

#[test]
fn unknown_devices_get_the_drivers_answer() {
    let machine = SimMachine::new("unknown-device");
    same_codes(
        &machine,
        &[],
        &["init", "nvml_init"],
        &[
            "dev_get 99",
            "dev_get -1",
            "totalmem 99",
            "totalmem -1",
            "ctx 99",
            "nvml_info 99",
            "nvml_null 99",
        ],
    );
}

#[test]
fn driver_failures_pass_through_unchanged() {
    let machine = SimMachine::new("driver-failures");
    let _dump = DumpOnFailure(machine.region_file());
    // A lost device: every code as the driver gives it.
    same_codes(
        &machine,
        &[("SIMGPU_DEVICE_LOST", "0")],
        &["init", "nvml_init"],
        &[
            "ctx 0",
            "alloc 1048576",
            "info",
            "totalmem 0",
            "nvml_info 0",
            "ctx 1",
            "alloc 1048576",
        ],
    );
    // The driver refusing the 2nd allocation: its code comes back and nothing is charged for it.
    let mut sh = Shell::preloaded(
        &machine,
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
            ("SIMGPU_FAIL_ALLOC_AT", "2"),
        ],
    );
    sh.start(0);
    sh.ok("alloc 1048576");
    let before = region(&machine).device_used(0);
    sh.expect("alloc 1048576", 2);
    assert_eq!(
        region(&machine).device_used(0),
        before,
        "a failed driver call was charged"
    );
    sh.ok("alloc 1048576");
}

fn log_lines(level: Option<&str>, refusals: usize) -> (usize, String) {
    let machine = SimMachine::new("log-level");
    let mut env = vec![("CUDA_DEVICE_MEMORY_LIMIT", "1g")];
    if let Some(l) = level {
        env.push(("LIBCUDA_LOG_LEVEL", l));
    }
    let mut sh = Shell::preloaded(&machine, &env);
    sh.start(0);
    for _ in 0..refusals {
        sh.expect("alloc 2147483648", 2);
    }
    let (_, stderr) = sh.exit_with_stderr();
    (
        stderr.lines().filter(|l| l.contains("vgpu[")).count(),
        stderr,
    )
}

#[test]
fn log_levels_from_libcuda_log_level() {
    let (quiet, quiet_err) = log_lines(Some("0"), 3);
    assert_eq!(
        quiet, 0,
        "level 0 prints errors only; a refused allocation is a warning:\n{quiet_err}"
    );
    let (warn, warn_err) = log_lines(Some("2"), 3);
    assert!(
        warn >= 1,
        "level 2 shows the over-limit warning:\n{warn_err}"
    );
    let (default, default_err) = log_lines(None, 3);
    assert!(
        default >= 1,
        "the default level (2) shows warnings:\n{default_err}"
    );
    let (debug, debug_err) = log_lines(Some("4"), 3);
    assert!(
        debug >= warn,
        "level 4 shows at least what level 2 does:\n{debug_err}"
    );
    let (bad, bad_err) = log_lines(Some("loud"), 3);
    assert!(
        bad_err.contains("LIBCUDA_LOG_LEVEL"),
        "a malformed level gets one warning:\n{bad_err}"
    );
    assert!(bad >= 1, "and the default level:\n{bad_err}");
    // Repeated warnings are rate-limited: 200 refusals do not print 200 lines.
    let (many, many_err) = log_lines(Some("2"), 200);
    assert!(
        many < 50,
        "{many} lines for 200 identical refusals:\n{many_err}"
    );
}
