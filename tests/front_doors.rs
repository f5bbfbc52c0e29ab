//! Loader-level tests of the three front doors (direct link, dlopen+dlsym, cuGetProcAddress[_v2]) and
//! of the harder loader cases: a second interposer using RTLD_NEXT, a second dlsym override, and a
//! hook first called from another library's constructor. Every case runs a real C probe under
//! `LD_PRELOAD=libvgpu.so` against the simulated driver and checks the same limit behaviour.

mod common;

use common::*;
use std::collections::{BTreeMap, HashSet};

/// Above what a simulated context costs (304 MiB, like a real GPU), so every door has room for chunks.
const LIMIT: u64 = GIB;

fn limited(machine: &SimMachine, program: &std::path::Path) -> std::process::Command {
    let mut cmd = machine.preloaded(program);
    cmd.env("CUDA_DEVICE_MEMORY_LIMIT", mib(LIMIT / MIB));
    cmd
}

/// The scenario line must describe a limit of LIMIT with every chunk that fits.
fn assert_scenario(stdout: &str, door: &str) {
    assert_scenario_at(stdout, door, LIMIT)
}

fn assert_scenario_at(stdout: &str, door: &str, limit: u64) {
    let s = scenario(stdout);
    assert_eq!(s["door"], door, "{stdout}");
    assert_eq!(s["total"].parse::<u64>().unwrap(), limit, "{stdout}");
    let chunk: u64 = s["chunk"].parse().unwrap();
    let base: u64 = s["base"].parse().unwrap();
    let chunks: u64 = s["chunks"].parse().unwrap();
    assert_eq!(chunks, (limit - base) / chunk, "{stdout}");
    assert!(chunks >= 1, "not a single chunk fit: {stdout}");
}

#[test]
fn direct_link_door_enforces_the_limit() {
    let machine = SimMachine::new("door-link");
    let _dump = DumpOnFailure(machine.region_file());
    let exe = linked_probe("door_link");

    // Without libvgpu the same probe must fail the scenario: the test can tell the difference.
    let (ok, stdout, _) = run_probe(machine.command(&exe).arg(LIMIT.to_string()));
    assert!(
        !ok && stdout.contains("FAIL") && stdout.contains("total"),
        "bare run should miss the limit:\n{stdout}"
    );

    let stdout = run_probe_ok(
        limited(&machine, &exe).arg(LIMIT.to_string()),
        Some(&machine.region_file()),
    );
    assert!(stdout.contains("lib cuMemAlloc_v2 libvgpu.so"), "{stdout}");
    assert_scenario(&stdout, "link");
    let r = checked_region(&machine);
    assert_eq!(r.limit[0], LIMIT, "{}", r.dump());
    assert_eq!(
        r.device_used(0),
        0,
        "usage left after the process exited\n{}",
        r.dump()
    );
}

#[test]
fn dlsym_door_enforces_the_limit() {
    let machine = SimMachine::new("door-dlsym");
    let _dump = DumpOnFailure(machine.region_file());
    let exe = probe("door_dlsym");
    for mode in ["local", "global"] {
        let stdout = run_probe_ok(
            limited(&machine, &exe).args([LIMIT.to_string().as_str(), mode]),
            Some(&machine.region_file()),
        );
        assert!(
            stdout.contains("lib cuMemAlloc_v2 libvgpu.so"),
            "{mode}: {stdout}"
        );
        assert_scenario(&stdout, "dlsym");
    }
    assert_eq!(checked_region(&machine).device_used(0), 0);
}

/// `lookup <base> <version> <flags> <code> <status> <lib>` lines, keyed by (base, version, flags).
fn lookups(stdout: &str) -> BTreeMap<(String, String, String), (String, String, String)> {
    lines_with(stdout, "lookup")
        .into_iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 6, "bad lookup line {l}");
            (
                (f[0].into(), f[1].into(), f[2].into()),
                (f[3].into(), f[4].into(), f[5].into()),
            )
        })
        .collect()
}

#[test]
fn get_proc_address_doors_at_every_version_and_flag() {
    let machine = SimMachine::new("door-getproc");
    let _dump = DumpOnFailure(machine.region_file());
    let exe = probe("door_getproc");
    let exports = vgpu_exports();
    let mut failures = Vec::new();
    for door in ["v1", "v2"] {
        for version in [2000, 3020, 11030, 12000, 12090] {
            // The 32-bit ABIs of version 2000 address only the simulator's 512 MiB low arena.
            let limit = if version < 3020 { 768 * MIB } else { LIMIT };
            for flags in [0, 1, 2] {
                let args = [
                    door.to_string(),
                    version.to_string(),
                    flags.to_string(),
                    limit.to_string(),
                ];
                // The driver's own answers: the bare run fails its limit check, after the lookups.
                let (_, bare, _) = run_probe(machine.command(&exe).args(&args));
                let (ok, stdout, stderr) = run_probe(
                    machine
                        .preloaded(&exe)
                        .env("CUDA_DEVICE_MEMORY_LIMIT", limit.to_string())
                        .args(&args),
                );
                let case = format!(
                    "cuGetProcAddress{} at {version} flags {flags}",
                    if door == "v2" { "_v2" } else { "" }
                );
                if !ok || !stdout.contains("done") {
                    failures.push(format!("{case}: probe failed\n{stdout}\n{stderr}"));
                    continue;
                }
                let ours = lookups(&stdout);
                for (key, (code, status, lib)) in lookups(&bare) {
                    let Some((c, s, l)) = ours.get(&key) else {
                        failures.push(format!(
                            "{case}: {key:?} asked without libvgpu but not with it"
                        ));
                        continue;
                    };
                    if (c, s) != (&code, &status) {
                        failures.push(format!("{case}: {key:?} gave code {c} status {s}; the driver says {code} {status}"));
                    }
                    // Hooked ABIs come back as libvgpu's entry point; everything else as the driver's.
                    let symbol =
                        resolve_symbol(&key.0, key.1.parse().unwrap(), key.2.parse().unwrap());
                    let want = match symbol {
                        Some(sym) if exports.contains(sym) && code == "0" => {
                            "libvgpu.so".to_string()
                        }
                        _ => lib.clone(),
                    };
                    if *l != want {
                        failures.push(format!("{case}: {} -> {l}, want {want}", key.0));
                    }
                }
                if let Err(e) = std::panic::catch_unwind(|| {
                    assert_scenario_at(
                        &stdout,
                        if door == "v2" {
                            "getproc_v2"
                        } else {
                            "getproc_v1"
                        },
                        limit,
                    )
                }) {
                    failures.push(format!("{case}: scenario {e:?}\n{stdout}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked_region(&machine).device_used(0), 0);
}

/// The exported symbol the driver's table maps a request to (abi/src/proc_table.rs), for the bases
/// the probe asks about.
fn resolve_symbol(base: &str, version: i32, flags: u64) -> Option<&'static str> {
    match vgpu_abi::proc_table::resolve(base, version, flags) {
        vgpu_abi::proc_table::Lookup::Found(s) => Some(s),
        _ => None,
    }
}

/// `sym <name> <lib> <offset>` lines.
fn symbols(stdout: &str) -> BTreeMap<String, (String, u64)> {
    lines_with(stdout, "sym")
        .into_iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), (f[1].to_string(), f[2].parse().unwrap()))
        })
        .collect()
}

/// Entry points the issue requires libvgpu to hook.
const MUST_HOOK: &[&str] = &[
    "cuInit",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuDeviceTotalMem_v2",
    "cuMemAllocPitch_v2",
    "cuMemAllocManaged",
    "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz",
    "cuMemFreeAsync",
    "cuMemFreeAsync_ptsz",
    "cuMemAllocFromPoolAsync",
    "cuMemCreate",
    "cuMemRelease",
    "cuArrayCreate_v2",
    "cuArray3DCreate_v2",
    "cuMipmappedArrayCreate",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "nvmlInit_v2",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
];

/// Entry points that must stay the driver's own.
const MUST_PASS_THROUGH: &[&str] = &[
    "cuGetExportTable",
    "cuModuleLoad",
    "cuDeviceGetName",
    "cuDriverGetVersion",
];

#[test]
fn every_door_returns_the_same_pointer() {
    let machine = SimMachine::new("door-same");
    let exe = linked_probe("door_same_pointer");
    let bare = symbols(&run_probe_ok(&mut machine.command(&exe), None));
    let ours = symbols(&run_probe_ok(
        &mut machine.preloaded(&exe),
        Some(&machine.region_file()),
    ));
    let exports = vgpu_exports();
    let mut failures = Vec::new();
    for name in MUST_HOOK {
        if !exports.contains(*name) {
            failures.push(format!("libvgpu.so does not export {name}"));
        }
    }
    for (name, (bare_lib, bare_off)) in &bare {
        let Some((lib, off)) = ours.get(name) else {
            failures.push(format!("{name}: not reported under libvgpu"));
            continue;
        };
        if exports.contains(name) {
            if lib != "libvgpu.so" {
                failures.push(format!(
                    "{name}: libvgpu exports it but the doors answer {lib}"
                ));
            }
        } else if (lib, off) != (bare_lib, bare_off) {
            failures.push(format!(
                "{name}: {lib}+{off:#x} under libvgpu, {bare_lib}+{bare_off:#x} without"
            ));
        }
    }
    for name in MUST_PASS_THROUGH {
        match ours.get(*name) {
            Some((lib, _)) if lib == "libcuda.so.1" => {}
            other => failures.push(format!("{name} must be the driver's own, got {other:?}")),
        }
    }
    for name in ["malloc", "printf"] {
        assert_eq!(
            ours.get(name).map(|s| s.0.as_str()),
            Some("libc.so.6"),
            "{name}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Who defines what, for predicting RTLD_NEXT the way the loader does.
fn defines(object: &str, name: &str, exports: &HashSet<String>) -> bool {
    match object {
        "libvgpu.so" => exports.contains(name),
        "interposer" => ["cuMemAlloc_v2", "cuMemGetInfo_v2", "interposer_next"].contains(&name),
        "libcuda.so.1" => name.starts_with("cu"),
        "libc.so.6" => name == "malloc",
        _ => false,
    }
}

fn next_after(order: &[&str], caller: &str, name: &str, exports: &HashSet<String>) -> String {
    let start = order.iter().position(|o| *o == caller).unwrap() + 1;
    order[start..]
        .iter()
        .find(|o| defines(o, name, exports))
        .map(|o| {
            if *o == "interposer" {
                "interposer_next".to_string()
            } else {
                o.to_string()
            }
        })
        .unwrap_or_else(|| "null".into())
}

#[test]
fn rtld_next_from_a_second_interposer_finds_the_next_library() {
    let machine = SimMachine::new("rtld-next");
    let _dump = DumpOnFailure(machine.region_file());
    let interposer = shared_probe("interposer_next", &[]);
    let main = linked_probe("next_main");
    let vgpu = testkit::libvgpu();
    let exports = vgpu_exports();
    let names = [
        "cuMemAlloc_v2",
        "cuMemGetInfo_v2",
        "cuInit",
        "cuModuleLoad",
        "malloc",
    ];
    // The global search order is: the program, the preloads in order, then its DT_NEEDED libraries.
    let cases: [(&str, Vec<&str>); 3] = [
        (
            "interposer only",
            vec!["main", "interposer", "libcuda.so.1", "libc.so.6"],
        ),
        (
            "libvgpu first",
            vec![
                "main",
                "libvgpu.so",
                "interposer",
                "libcuda.so.1",
                "libc.so.6",
            ],
        ),
        (
            "interposer first",
            vec![
                "main",
                "interposer",
                "libvgpu.so",
                "libcuda.so.1",
                "libc.so.6",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (label, order) in &cases {
        let preload: Vec<String> = order
            .iter()
            .filter_map(|o| match *o {
                "interposer" => Some(interposer.display().to_string()),
                "libvgpu.so" => Some(vgpu.display().to_string()),
                _ => None,
            })
            .collect();
        let mut cmd = limited(&machine, &main);
        cmd.env("LD_PRELOAD", preload.join(":"))
            .arg("next")
            .args(names);
        let (ok, stdout, stderr) = run_probe(&mut cmd);
        assert!(ok, "{label}: {stdout}\n{stderr}");
        // The interposer's file name carries a hash suffix.
        let short = |lib: &str| {
            if lib.starts_with("interposer_next") {
                "interposer_next".to_string()
            } else {
                lib.to_string()
            }
        };
        let got: BTreeMap<&str, String> = lines_with(&stdout, "next")
            .iter()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, l)| (n, short(l)))
            .collect();
        let main_got: BTreeMap<&str, String> = lines_with(&stdout, "main_next")
            .iter()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, l)| (n, short(l)))
            .collect();
        for name in names {
            let want = next_after(order, "interposer", name, &exports);
            if got.get(name) != Some(&want) {
                failures.push(format!(
                    "{label}: the interposer's dlsym(RTLD_NEXT, {name}) -> {:?}, want {want}",
                    got.get(name)
                ));
            }
            let want = next_after(order, "main", name, &exports);
            if main_got.get(name) != Some(&want) {
                failures.push(format!(
                    "{label}: the program's dlsym(RTLD_NEXT, {name}) -> {:?}, want {want}",
                    main_got.get(name)
                ));
            }
        }
        let chain = parse_kv(
            lines_with(&stdout, "chain")
                .first()
                .unwrap_or_else(|| panic!("{label}: {stdout}")),
        );
        if order.contains(&"libvgpu.so") {
            let want = [
                ("info", "0".to_string()),
                ("total", LIMIT.to_string()),
                ("over", "2".to_string()),
            ];
            for (key, value) in want {
                if chain[key] != value {
                    failures.push(format!(
                        "{label}: through the chain {key} = {}, want {value} (990: RTLD_NEXT pointed back at the caller)",
                        chain[key]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dlsym_through_a_second_dlsym_override_still_gets_the_hooks() {
    let machine = SimMachine::new("dlsym-chain");
    let _dump = DumpOnFailure(machine.region_file());
    let interposer = shared_probe("interposer_dlsym", &[]);
    let main = linked_probe("next_main");
    let vgpu = testkit::libvgpu();
    for (label, preload, through_interposer) in [
        (
            "interposer first",
            format!("{}:{}", interposer.display(), vgpu.display()),
            true,
        ),
        (
            "libvgpu first",
            format!("{}:{}", vgpu.display(), interposer.display()),
            false,
        ),
    ] {
        let mut cmd = limited(&machine, &main);
        cmd.env("LD_PRELOAD", preload)
            .args(["dlsym", LIMIT.to_string().as_str()]);
        let stdout = run_probe_ok(&mut cmd, Some(&machine.region_file()));
        assert!(
            stdout.contains("lib cuMemAlloc_v2 libvgpu.so"),
            "{label}: {stdout}"
        );
        if through_interposer {
            let calls: u64 = lines_with(&stdout, "interposer_calls")[0].parse().unwrap();
            assert!(
                calls > 0,
                "{label}: the interposer's dlsym was never called: {stdout}"
            );
        }
        assert_scenario(&stdout, "dlsym_chain");
    }
}

#[test]
fn hook_called_from_another_librarys_constructor() {
    let machine = SimMachine::new("ctor");
    let _dump = DumpOnFailure(machine.region_file());
    let sim = testkit::sim_dir();
    let l = format!("-L{}", sim.display());
    let ctor_lib = shared_probe("ctor_lib", &[&l, "-Wl,--no-as-needed", "-l:libcuda.so.1"]);
    let ctor_lib_arg = ctor_lib.display().to_string();
    let main = common_compile_ctor_main(&l, &ctor_lib_arg);
    let vgpu = testkit::libvgpu();
    for (label, preload) in [
        ("linked dependency", vgpu.display().to_string()),
        (
            "preloaded before libvgpu",
            format!("{}:{}", ctor_lib.display(), vgpu.display()),
        ),
        (
            "preloaded after libvgpu",
            format!("{}:{}", vgpu.display(), ctor_lib.display()),
        ),
    ] {
        let mut cmd = limited(&machine, &main);
        cmd.env("LD_PRELOAD", preload)
            .env("VGPU_PROBE_LIMIT", LIMIT.to_string())
            .arg(LIMIT.to_string());
        let stdout = run_probe_ok(&mut cmd, Some(&machine.region_file()));
        assert!(
            stdout.contains("ctor lib cuMemAlloc_v2 libvgpu.so"),
            "{label}: {stdout}"
        );
        assert!(
            stdout.contains("ctor done") && stdout.contains("main done"),
            "{label}: {stdout}"
        );
        assert_scenario(&stdout, "constructor");
    }
}

fn common_compile_ctor_main(sim_flag: &str, ctor_lib: &str) -> std::path::PathBuf {
    // ctor_main links the constructor library by path (DT_NEEDED is the path, no rpath needed).
    probe_with(
        "ctor_main",
        &[sim_flag, "-Wl,--no-as-needed", "-l:libcuda.so.1", ctor_lib],
    )
}
