//! The simulated libnvidia-ml.so.1 as real clients load it: a C probe (dlopen + dlsym), the
//! nvml-wrapper crate (libloading, every symbol at load) and pynvml (ctypes), against machines whose
//! memory and processes other processes change.

mod common;

use common::*;
use testkit::SimMachine;

#[test]
fn every_nvml_h_function_is_exported_and_the_library_links_like_the_driver() {
    let lib = testkit::sim_dir().join("libnvidia-ml.so.1");
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let missing: Vec<&&str> = vgpu_abi::nvml::NVML_FUNCTIONS
        .iter()
        .filter(|n| !exported.contains(**n))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported by {}: {missing:?}",
        lib.display()
    );

    let dynamic = std::process::Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .expect("run readelf");
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(
        dynamic.contains("Library soname: [libnvidia-ml.so.1]"),
        "{dynamic}"
    );
    assert!(
        dynamic.contains("SYMBOLIC"),
        "linked without -Bsymbolic:\n{dynamic}"
    );
}

#[test]
fn the_functions_clients_rely_on_are_implemented_not_stubbed() {
    for name in [
        "nvmlInit",
        "nvmlInit_v2",
        "nvmlInitWithFlags",
        "nvmlShutdown",
        "nvmlErrorString",
        "nvmlSystemGetDriverVersion",
        "nvmlSystemGetNVMLVersion",
        "nvmlSystemGetCudaDriverVersion",
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetCount_v2",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlDeviceGetHandleByUUID",
        "nvmlDeviceGetHandleByPciBusId",
        "nvmlDeviceGetHandleByPciBusId_v2",
        "nvmlDeviceGetName",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetIndex",
        "nvmlDeviceGetMinorNumber",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetPciInfo_v2",
        "nvmlDeviceGetPciInfo_v3",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetProcessUtilization",
        "nvmlDeviceGetCudaComputeCapability",
        "nvmlDeviceGetArchitecture",
        "nvmlDeviceGetBrand",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetMaxClockInfo",
        "nvmlDeviceGetPersistenceMode",
        "nvmlDeviceGetComputeMode",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    ] {
        assert!(
            simgpu_nvml_names().contains(&name),
            "{name} is only a NOT_SUPPORTED stub"
        );
    }
}

fn simgpu_nvml_names() -> &'static [&'static str] {
    nvidia_ml::IMPLEMENTED
}

#[test]
fn c_probe_api_contract() {
    let machine = SimMachine::new("nvml-api");
    let out = testkit::run_ok(machine.command(c_probe()).arg("api"), DEADLINE);
    assert!(out.contains("failures=0"), "{out}");
}

#[test]
fn c_probe_sees_the_default_machine() {
    let machine = SimMachine::new("nvml-default");
    let all = query(&machine, "query");
    assert_eq!(one(&all, "count", "2").get("rc"), "0");
    let d0 = one(&all, "device", "0");
    assert_eq!(d0.get("name"), "NVIDIA A100-SXM4-40GB");
    assert_eq!(
        (d0.num("total"), d0.num("free"), d0.num("used")),
        (40 * GI, 40 * GI, 0)
    );
    assert_eq!(d0.get("cc"), "8.0");
    let d1 = one(&all, "device", "1");
    assert_eq!(d1.get("name"), "NVIDIA L4");
    assert_eq!((d1.num("total"), d1.get("cc")), (24 * GI, "8.9"));
    assert_ne!(d0.get("uuid"), d1.get("uuid"));
    assert_eq!(
        d0.get("uuid"),
        simgpu_state::config::default_uuid(0, "NVIDIA A100-SXM4-40GB")
    );
    assert!(records(&all, "process", "0").is_empty() && records(&all, "sample", "0").is_empty());
    assert_eq!(one(&all, "util", "0").num("gpu"), 0);
}

#[test]
fn configured_devices_reach_nvml_wrapper() {
    let spec = "name=NVIDIA H100 80GB HBM3,uuid=GPU-11111111-2222-3333-4444-555555555555,pci=00000000:3B:00.0;\
                name=Tiny,mem=1024Mi,sms=16,cc=7.5;name=NVIDIA T4";
    let machine = SimMachine::new("nvml-wrapper-config").with_devices(spec);
    let out = testkit::run_ok(&mut machine.command(nvml_wrapper_probe()), DEADLINE);
    let all = parse(&out);
    assert_eq!(one(&all, "count", "3").get("rc"), "0", "{out}");
    assert!(
        all.iter()
            .any(|r| r.kind == "cuda" && r.get("version") == "12090"),
        "{out}"
    );
    let d0 = one(&all, "device", "0");
    assert_eq!(d0.get("name"), "NVIDIA H100 80GB HBM3");
    assert_eq!(d0.get("uuid"), "GPU-11111111-2222-3333-4444-555555555555");
    assert_eq!(d0.get("pci"), "00000000:3B:00.0");
    assert_eq!((d0.num("total"), d0.get("cc")), (80 * GI, "9.0"));
    let d1 = one(&all, "device", "1");
    assert_eq!(
        (d1.get("name"), d1.num("total"), d1.get("cc")),
        ("Tiny", GI, "7.5")
    );
    assert_eq!(one(&all, "device", "2").get("cc"), "7.5");
    for i in ["0", "1", "2"] {
        let lookup = one(&all, "lookup", i);
        let want = format!("Some({i})");
        assert_eq!(
            (lookup.get("by_uuid"), lookup.get("by_pci")),
            (want.as_str(), want.as_str())
        );
        let info = one(&all, "info", i);
        for key in [
            "temperature",
            "power_mw",
            "sm_clock",
            "arch",
            "brand",
            "mig",
        ] {
            assert!(!info.get(key).starts_with("error"), "{key}: {info:?}");
        }
        assert!(records(&all, "process", i).is_empty(), "{out}");
    }
    assert_eq!(one(&all, "info", "0").get("arch"), "Hopper");
    assert_eq!(one(&all, "info", "1").get("arch"), "Turing");
    assert_eq!(one(&all, "info", "0").get("mig"), "0/0");
}

#[test]
fn nvml_wrapper_and_pynvml_see_another_process_memory() {
    let machine = SimMachine::new("nvml-procs");
    let holder = Holder::start(&machine, &["alloc", "1", &(3 * GI).to_string()]);
    assert!(
        holder.first_line.starts_with("pid="),
        "{}",
        holder.first_line
    );
    let pid = holder.pid().to_string();

    let wrapper = parse(&testkit::run_ok(
        &mut machine.command(nvml_wrapper_probe()),
        DEADLINE,
    ));
    let python = parse(&testkit::run_ok(
        machine
            .command(testkit::python())
            .arg(crate_dir().join("tests/pynvml_query.py")),
        DEADLINE,
    ));
    let c = query(&machine, "query");
    for (client, all) in [("nvml-wrapper", &wrapper), ("pynvml", &python), ("C", &c)] {
        let d1 = one(all, "device", "1");
        assert_eq!(
            (d1.num("used"), d1.num("free")),
            (3 * GI, 21 * GI),
            "{client}"
        );
        let procs = records(all, "process", "1");
        assert_eq!(procs.len(), 1, "{client}: {all:#?}");
        assert_eq!(
            (procs[0].get("pid"), procs[0].num("used")),
            (pid.as_str(), 3 * GI),
            "{client}"
        );
        assert!(records(all, "process", "0").is_empty(), "{client}");
        assert_eq!(one(all, "device", "0").num("used"), 0, "{client}");
    }
    assert_eq!(one(&python, "lookup", "1").get("by_uuid"), "True");
    assert_eq!(one(&python, "lookup", "1").get("by_pci"), "True");
    assert!(holder.finish().success());
    // It exited: its memory is back and it is no longer listed.
    let after = query(&machine, "query");
    assert_eq!(one(&after, "device", "1").num("used"), 0);
    assert!(records(&after, "process", "1").is_empty());
}

#[test]
fn two_processes_fill_one_device_and_a_killed_one_gives_its_memory_back() {
    let machine = SimMachine::new("nvml-oom").with_devices("mem=4Gi");
    let first = Holder::start(&machine, &["alloc", "0", &(3 * GI).to_string()]);
    assert!(first.first_line.starts_with("pid="), "{}", first.first_line);
    let second = Holder::start(&machine, &["alloc", "0", &(2 * GI).to_string()]);
    assert_eq!(second.first_line, "error=out of device memory");
    assert_eq!(second.finish().code(), Some(2));

    let all = query(&machine, "query");
    assert_eq!(one(&all, "device", "0").num("used"), 3 * GI);
    let procs = records(&all, "process", "0");
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].num("pid"), first.pid() as u64);

    first.kill(); // SIGKILL: no chance to free anything
    let all = query(&machine, "query");
    assert_eq!(
        one(&all, "device", "0").num("used"),
        0,
        "the killed process's memory came back"
    );
    assert!(records(&all, "process", "0").is_empty());
    let third = Holder::start(&machine, &["alloc", "0", &(4 * GI).to_string()]);
    assert!(third.first_line.starts_with("pid="), "{}", third.first_line);
}

#[test]
fn utilization_follows_the_device_timeline() {
    let machine = SimMachine::new("nvml-util");
    // 20 s of kernels reserved back to back on device 0 from now on.
    let busy = Holder::start(&machine, &["busy", "0", "20000"]);
    assert!(
        busy.first_line.contains("busy_until="),
        "{}",
        busy.first_line
    );
    // Let at least one whole sample period (1/6 s) pass inside the busy stretch.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let all = query(&machine, "query");
    assert_eq!(one(&all, "util", "0").num("gpu"), 100, "{all:#?}");
    assert_eq!(one(&all, "util", "1").num("gpu"), 0);
    let samples = records(&all, "sample", "0");
    assert_eq!(samples.len(), 1, "{all:#?}");
    assert_eq!(samples[0].num("pid"), busy.pid() as u64);
    assert!((1..=100).contains(&samples[0].num("sm")), "{samples:?}");
    assert!(records(&all, "sample", "1").is_empty());
    // pynvml reads the same samples.
    let python = parse(&testkit::run_ok(
        machine
            .command(testkit::python())
            .arg(crate_dir().join("tests/pynvml_query.py")),
        DEADLINE,
    ));
    assert_eq!(one(&python, "sample", "0").num("pid"), busy.pid() as u64);
    assert_eq!(one(&python, "util", "0").num("gpu"), 100);
}

#[test]
fn a_malformed_device_spec_fails_init_with_a_clear_line() {
    let machine = SimMachine::new("nvml-bad-spec").with_devices("name=X,mem=lots");
    let out = testkit::run(machine.command(c_probe()).arg("init"), DEADLINE);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("init\trc=999"), "{stdout}");
    assert!(
        stderr.contains("SIMGPU_DEVICES") && stderr.contains("lots"),
        "{stderr}"
    );
}

#[test]
fn malformed_fault_variables_fail_init_too() {
    let machine = SimMachine::new("nvml-bad-fault");
    for (key, value) in [
        ("SIMGPU_SLOW", "nvmlInit_v2"),
        ("SIMGPU_DEVICE_LOST", "7"),
        ("SIMGPU_FAIL_ALLOC_AT", "0"),
    ] {
        let out = testkit::run(
            machine.command(c_probe()).arg("init").env(key, value),
            DEADLINE,
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("init\trc=999"),
            "{key}={value}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(key),
            "{key}={value}"
        );
    }
    // Well-formed, they change nothing for init.
    let out = testkit::run_ok(
        machine
            .command(c_probe())
            .arg("init")
            .env("SIMGPU_SLOW", "nvmlInit_v2:1000"),
        DEADLINE,
    );
    assert!(out.contains("init\trc=0"), "{out}");
}

#[test]
fn a_foreign_state_file_fails_init_and_is_left_alone() {
    let machine = SimMachine::new("nvml-foreign");
    std::fs::write(&machine.state_file, b"not a machine").unwrap();
    let out = testkit::run(machine.command(c_probe()).arg("init"), DEADLINE);
    assert!(String::from_utf8_lossy(&out.stdout).contains("init\trc=999"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("foreign magic"));
    assert_eq!(
        std::fs::read(&machine.state_file).unwrap(),
        b"not a machine"
    );
}

#[test]
fn a_lost_device_is_gpu_is_lost() {
    let machine = SimMachine::new("nvml-lost");
    let out = testkit::run_ok(
        machine
            .command(c_probe())
            .arg("query")
            .env("SIMGPU_DEVICE_LOST", "1"),
        DEADLINE,
    );
    let all = parse(&out);
    assert_eq!(one(&all, "device", "0").get("rc"), "0");
    assert_eq!(one(&all, "device", "1").get("rc"), "15", "{out}"); // NVML_ERROR_GPU_IS_LOST
}
