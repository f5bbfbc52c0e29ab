//! `CUDA_VISIBLE_DEVICES` selects and orders the GPUs CUDA shows; NVML still shows them all. CUDA
//! ordinals then act on the machine's GPU they stand for: memory, launches and the lost flag.

mod common;
use common::*;

use simgpu_state::Machine;

const UUID: [&str; 3] = [
    "GPU-a1a1a1a1-0000-0000-0000-000000000000",
    "GPU-a1b2c3d4-1111-1111-1111-111111111111",
    "GPU-c3c3c3c3-2222-2222-2222-222222222222",
];
const MIB64: u64 = 64 << 20;

fn machine(label: &str) -> SimMachine {
    let spec = format!(
        "name=Sim-A,mem=4Gi,uuid={};name=Sim-B,mem=5Gi,uuid={};name=Sim-C,mem=6Gi,uuid={}",
        UUID[0], UUID[1], UUID[2]
    );
    SimMachine::new(label).with_devices(&spec)
}

/// Run the probe with `CUDA_VISIBLE_DEVICES=visible` (contexts cost nothing, so the memory
/// numbers are the probe's 64 MiB).
fn probe(m: &SimMachine, visible: &str, extra: &[(&str, &str)]) -> String {
    let mut cmd = m.command(linked_probe("cu_visible"));
    cmd.env("CUDA_VISIBLE_DEVICES", visible)
        .env("SIMGPU_CONTEXT_BYTES", "0");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    run_probe(&mut cmd)
}

/// The names CUDA shows, by ordinal.
fn names(out: &str) -> Vec<String> {
    let count: usize = field(out, "count", "count").parse().unwrap();
    (0..count)
        .map(|i| field(out, &format!("cuda{i} "), "name").to_string())
        .collect()
}

fn nvml_used(out: &str, index: usize) -> u64 {
    field_u64(out, &format!("nvml{index} "), "used")
}

#[test]
fn reordered_ordinals_act_on_the_machine_devices_they_name() {
    let m = machine("visible-reorder");
    let out = probe(&m, "2,0", &[]);
    assert_eq!(names(&out), ["Sim-C", "Sim-A"]);
    assert_eq!(field(&out, "cuda0 ", "uuid"), UUID[2]);
    assert_eq!(field(&out, "cuda1 ", "uuid"), UUID[0]);
    // Ordinal 0's memory is machine device 2's: its size, and NVML sees the charge there.
    assert_eq!(field(&out, "context", "rc"), "0");
    assert_eq!(field_u64(&out, "meminfo", "total"), 6 << 30);
    assert_eq!(field_u64(&out, "meminfo", "free"), (6 << 30) - MIB64);
    assert_eq!(
        field(&out, "nvml count", "count"),
        "3",
        "NVML ignores the variable"
    );
    for (i, uuid) in UUID.iter().enumerate() {
        assert_eq!(field(&out, &format!("nvml{i} "), "uuid"), *uuid);
    }
    assert_eq!(nvml_used(&out, 2), MIB64);
    assert_eq!(nvml_used(&out, 0), 0);
    assert_eq!(nvml_used(&out, 1), 0);
    // The probe opened libcuda and libnvidia-ml (two copies of the machine) and took one slot.
    let state = std::fs::read(&m.state_file).unwrap();
    let at = std::mem::offset_of!(simgpu_state::layout::Header, slot_high_water);
    assert_eq!(state[at..at + 4], 1u32.to_le_bytes());
    // And its launches ran on machine device 2's timeline.
    let machine = Machine::attach(&m.state_file).unwrap();
    assert_eq!(machine.launches(2), 3);
    assert_eq!(machine.launches(0), 0);
}

#[test]
fn unset_shows_every_device_in_machine_order() {
    let m = machine("visible-unset");
    let out = testkit::run_ok(
        m.command(linked_probe("cu_visible"))
            .env("SIMGPU_CONTEXT_BYTES", "0"),
        DEADLINE,
    );
    assert_eq!(names(&out), ["Sim-A", "Sim-B", "Sim-C"]);
    assert_eq!(nvml_used(&out, 0), MIB64);
}

#[test]
fn a_uuid_names_its_device() {
    let m = machine("visible-uuid");
    let out = probe(&m, UUID[1], &[]);
    assert_eq!(names(&out), ["Sim-B"]);
    assert_eq!(field(&out, "cuda0 ", "uuid"), UUID[1]);
    assert_eq!(field_u64(&out, "meminfo", "total"), 5 << 30);
    assert_eq!(nvml_used(&out, 1), MIB64);
    assert_eq!(nvml_used(&out, 0) + nvml_used(&out, 2), 0);
}

#[test]
fn a_unique_uuid_prefix_is_enough_and_an_ambiguous_one_names_nothing() {
    let m = machine("visible-prefix");
    let out = probe(&m, "GPU-a1b,GPU-C3", &[]);
    assert_eq!(names(&out), ["Sim-B", "Sim-C"]);
    // GPU-a1 fits two devices: no device at all, like an invalid first entry.
    let out = probe(&m, "GPU-a1,2", &[]);
    assert_eq!(field(&out, "init", "rc"), "100");
    // Mixed with indices.
    let out = probe(&m, "0,GPU-c3c3", &[]);
    assert_eq!(names(&out), ["Sim-A", "Sim-C"]);
}

#[test]
fn the_first_invalid_entry_ends_the_list() {
    let m = machine("visible-invalid");
    assert_eq!(names(&probe(&m, "1,7,0", &[])), ["Sim-B"]);
    assert_eq!(names(&probe(&m, "0,2,-1,1", &[])), ["Sim-A", "Sim-C"]);
    assert_eq!(names(&probe(&m, "2,GPU-ffff,0", &[])), ["Sim-C"]);
    assert_eq!(
        names(&probe(&m, &format!("1,MIG-{}/1/0,0", UUID[0]), &[])),
        ["Sim-B"]
    );
    // A device named twice hides everything (what the real driver does).
    assert_eq!(field(&probe(&m, "0,1,0", &[]), "init", "rc"), "100");
}

#[test]
fn no_visible_device_is_cuda_error_no_device() {
    let m = machine("visible-none");
    for visible in ["", "-1", "7", "MIG-GPU-a1a1a1a1/0/0"] {
        let out = probe(&m, visible, &[]);
        assert_eq!(
            field(&out, "init", "rc"),
            "100",
            "CUDA_VISIBLE_DEVICES={visible:?}"
        );
        // Nothing else works after a failed cuInit.
        assert_eq!(field(&out, "after", "count_rc"), "3");
        assert_eq!(field(&out, "nvml count", "count"), "3");
    }
}

#[test]
fn simgpu_device_lost_names_machine_devices() {
    let m = machine("visible-lost");
    let lost = [("SIMGPU_DEVICE_LOST", "2")];
    let out = probe(&m, "2,0", &lost);
    assert_eq!(
        field(&out, "context", "rc"),
        "46",
        "ordinal 0 is machine device 2"
    );
    let out = probe(&m, "0,2", &lost);
    assert_eq!(field(&out, "context", "rc"), "0");
    assert_eq!(nvml_used(&out, 0), MIB64);
}
