//! Device identity: a limit belongs to a GPU by UUID, whatever CUDA_VISIBLE_DEVICES does to CUDA
//! ordinals; `_<i>` follows NVIDIA_VISIBLE_DEVICES when it is a UUID list; usage lands at the
//! region index of the GPU's NVML index (hami-contract.md 2.4).

mod common;

use common::*;

const UUID_A: &str = "GPU-aaaaaaaa-1111-2222-3333-444444444444";
const UUID_B: &str = "GPU-bbbbbbbb-1111-2222-3333-444444444444";
const UUID_C: &str = "GPU-cccccccc-1111-2222-3333-444444444444";

fn three_gpus(label: &str) -> SimMachine {
    SimMachine::new(label).with_devices(&format!(
        "name=Sim A,uuid={UUID_A},mem=8Gi;name=Sim B,uuid={UUID_B},mem=16Gi;name=Sim C,uuid={UUID_C},mem=24Gi"
    ))
}

/// CUDA ordinal -> (uuid, cuDeviceTotalMem_v2), as the process sees them.
fn cuda_devices(sh: &mut Shell) -> Vec<(String, u64)> {
    let r = sh.ok("devices");
    (0..r.u64("count"))
        .map(|i| {
            (
                r.str(&format!("uuid{i}")).to_string(),
                r.u64(&format!("total{i}")),
            )
        })
        .collect()
}

fn nvml_totals(sh: &mut Shell) -> Vec<(String, u64)> {
    sh.ok("nvml_init");
    let n = sh.ok("nvml_count").u64("count");
    (0..n)
        .map(|i| {
            let r = sh.ok(&format!("nvml_info {i}"));
            (r.str("uuid").to_string(), r.u64("total"))
        })
        .collect()
}

fn limit_of(uuid: &str, want: &[(&str, u64)]) -> u64 {
    want.iter()
        .find(|(u, _)| *u == uuid)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("no expectation for {uuid}"))
}

/// Check every view against `want` (uuid -> effective total), and that an allocation on each CUDA
/// ordinal is charged at the region index whose uuid is that GPU's.
fn check_views(
    machine: &SimMachine,
    env: &[(&str, &str)],
    want: &[(&str, u64)],
    cuda_order: &[&str],
) {
    let _dump = DumpOnFailure(machine.region_file());
    let mut sh = Shell::preloaded(machine, env);
    sh.ok("init");
    let cuda = cuda_devices(&mut sh);
    let got_order: Vec<&str> = cuda.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        got_order, cuda_order,
        "CUDA ordinals under {env:?} (the simulated driver's mapping)"
    );
    for (ordinal, (uuid, total)) in cuda.iter().enumerate() {
        assert_eq!(
            *total,
            limit_of(uuid, want),
            "cuDeviceTotalMem_v2 of ordinal {ordinal} ({uuid}) under {env:?}"
        );
        sh.ok(&format!("ctx {ordinal}"));
        let (_, info_total) = sh.info();
        assert_eq!(
            info_total,
            limit_of(uuid, want),
            "cuMemGetInfo_v2 on ordinal {ordinal} ({uuid}) under {env:?}"
        );
    }
    for (index, (uuid, total)) in nvml_totals(&mut sh).iter().enumerate() {
        assert_eq!(
            *total,
            limit_of(uuid, want),
            "nvmlDeviceGetMemoryInfo of index {index} ({uuid}) under {env:?}"
        );
    }
    // Charges land at the region index of the GPU, found by uuid.
    for (ordinal, (uuid, _)) in cuda.iter().enumerate() {
        sh.ok(&format!("ctx {ordinal}"));
        let before = checked_region(machine);
        let index = before
            .index_of_uuid(uuid)
            .unwrap_or_else(|| panic!("{uuid} not in the region\n{}", before.dump()));
        assert_eq!(
            before.limit[index],
            limit_or_zero(uuid, want, machine),
            "region limit[{index}] of {uuid}\n{}",
            before.dump()
        );
        let id = sh.ok(&format!("alloc {}", 8 * MIB)).int("id");
        let after = checked_region(machine);
        for d in 0..after.device_num as usize {
            let delta = after.device_used(d) - before.device_used(d);
            let expect = if d == index { 8 * MIB } else { 0 };
            assert_eq!(
                delta,
                expect,
                "8 MiB on CUDA ordinal {ordinal} ({uuid}) moved region device {d} by {delta}\n{}",
                after.dump()
            );
        }
        sh.ok(&format!("free {id}"));
    }
}

/// The region stores 0 for "no limit".
fn limit_or_zero(uuid: &str, want: &[(&str, u64)], _machine: &SimMachine) -> u64 {
    let physical = match uuid {
        UUID_A => 8 * GIB,
        UUID_B => 16 * GIB,
        _ => 24 * GIB,
    };
    let l = limit_of(uuid, want);
    if l == physical {
        0
    } else {
        l
    }
}

#[test]
fn limits_follow_the_gpu_when_cuda_visible_devices_reorders() {
    let machine = three_gpus("id-reorder");
    check_views(
        &machine,
        &[
            ("CUDA_VISIBLE_DEVICES", "2,0"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_2", "3g"),
        ],
        // _<i> is the container's NVML index i: A, B, C.
        &[(UUID_A, GIB), (UUID_B, 2 * GIB), (UUID_C, 3 * GIB)],
        &[UUID_C, UUID_A],
    );
}

#[test]
fn limits_follow_the_gpu_when_cuda_visible_devices_names_uuids() {
    let machine = three_gpus("id-uuid-cvd");
    check_views(
        &machine,
        &[
            ("CUDA_VISIBLE_DEVICES", UUID_B),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
        ],
        &[(UUID_A, GIB), (UUID_B, 2 * GIB), (UUID_C, GIB)],
        &[UUID_B],
    );
}

#[test]
fn per_device_limits_follow_the_nvidia_visible_devices_order() {
    let machine = three_gpus("id-nvd");
    let nvd = format!("{UUID_C},{UUID_A}");
    check_views(
        &machine,
        &[
            ("NVIDIA_VISIBLE_DEVICES", nvd.as_str()),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
        ],
        // _0 is the first allocated GPU (C), _1 the second (A); B has no limit.
        &[(UUID_C, GIB), (UUID_A, 2 * GIB), (UUID_B, 16 * GIB)],
        &[UUID_A, UUID_B, UUID_C],
    );
}

#[test]
fn region_devices_are_indexed_by_nvml_index_whatever_cuda_sees() {
    let machine = three_gpus("id-region");
    let _dump = DumpOnFailure(machine.region_file());
    let mut sh = Shell::preloaded(
        &machine,
        &[
            ("CUDA_VISIBLE_DEVICES", "1"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
        ],
    );
    sh.start(0);
    sh.ok("alloc 8388608");
    let r = checked_region(&machine);
    assert_eq!(
        r.device_num,
        3,
        "device_num is the NVML count\n{}",
        r.dump()
    );
    assert_eq!(
        &r.uuids[..3],
        &[UUID_A, UUID_B, UUID_C],
        "uuids in NVML order\n{}",
        r.dump()
    );
    assert!(
        r.device_used(1) >= 8 * MIB,
        "CUDA ordinal 0 is B, region index 1\n{}",
        r.dump()
    );
    assert_eq!(r.device_used(0) + r.device_used(2), 0, "{}", r.dump());
}
