//! The list against the bindings, the lookups, and (when it has been built) the shipped library's
//! exported symbols.

use std::collections::BTreeSet;
use std::ffi::CString;

use vgpu_abi::proc_table::{self, PROC_TABLE};

use super::list::HOOKED_SYMBOLS;
use super::{cuda_hook, nvml_hook};
use crate::sys::dl::{RTLD_DEFAULT, RTLD_NEXT};

#[test]
fn every_hook_is_a_real_driver_symbol() {
    // The legacy ABIs are real exports of libcuda too, but cudaTypedefs.h hides their PFN types.
    const LEGACY: &[&str] = &[
        "cuMemAlloc",
        "cuMemAllocPitch",
        "cuMemFree",
        "cuMemGetInfo",
        "cuDeviceTotalMem",
        "cuCtxCreate",
        "cuCtxDestroy",
        "cuDevicePrimaryCtxRelease",
        "cuDevicePrimaryCtxReset",
        "cuArrayCreate",
        "cuArray3DCreate",
    ];
    for name in HOOKED_SYMBOLS {
        let known = proc_table::DECLARED_SYMBOLS.binary_search(name).is_ok()
            || vgpu_abi::nvml::NVML_FUNCTIONS.contains(name)
            || LEGACY.contains(name);
        assert!(known, "{name} is not a CUDA 12.9 or NVML symbol");
    }
    let unique: BTreeSet<_> = HOOKED_SYMBOLS.iter().collect();
    assert_eq!(
        unique.len(),
        HOOKED_SYMBOLS.len(),
        "a symbol is listed twice"
    );
}

#[test]
fn name_lookup_finds_every_hook_and_nothing_else() {
    let mut addresses = BTreeSet::new();
    for name in HOOKED_SYMBOLS {
        let hook = cuda_hook(name.as_bytes()).or_else(|| nvml_hook(name.as_bytes()));
        let hook = hook.unwrap_or_else(|| panic!("{name} has no hook"));
        assert!(
            addresses.insert(hook),
            "{name} shares an address with another hook"
        );
    }
    for other in [
        "cuDeviceGetName",
        "cuGetExportTable",
        "nvmlDeviceGetName",
        "cuMemAlloc_v3",
        "malloc",
        "",
    ] {
        assert_eq!(
            cuda_hook(other.as_bytes()).or_else(|| nvml_hook(other.as_bytes())),
            None,
            "{other}"
        );
    }
}

#[test]
fn proc_address_fallback_picks_the_abi_the_caller_asked_for() {
    // No real driver in a unit test: the answer is never a known real address, so `choose` takes
    // the generated table at min(version, driver version) (the driver version is unknown here).
    let choose = |base: &str, version: i32, flags: u64| {
        super::proc_address::choose(base, 0x1000, version, flags)
    };
    let hook = |name: &str| cuda_hook(name.as_bytes());
    assert_eq!(choose("cuMemAlloc", 12000, 0), hook("cuMemAlloc_v2"));
    assert_eq!(choose("cuMemAlloc", 3020, 0), hook("cuMemAlloc_v2"));
    assert_eq!(choose("cuMemAlloc", 2000, 0), hook("cuMemAlloc"));
    assert_eq!(
        choose("cuLaunchKernel", 12000, 2),
        hook("cuLaunchKernel_ptsz")
    );
    assert_eq!(choose("cuLaunchKernel", 12000, 0), hook("cuLaunchKernel"));
    assert_eq!(
        choose("cuMemAllocAsync", 12000, 2),
        hook("cuMemAllocAsync_ptsz")
    );
    assert_eq!(choose("cuCtxCreate", 11040, 0), hook("cuCtxCreate_v3"));
    assert_eq!(choose("cuCtxCreate", 12090, 0), hook("cuCtxCreate_v4"));
    assert_eq!(
        choose("cuGetProcAddress", 12000, 0),
        hook("cuGetProcAddress_v2")
    );
    assert_eq!(
        choose("cuGetProcAddress", 11030, 0),
        hook("cuGetProcAddress")
    );
    // Unhooked names, too-old versions, and versions newer than our table pass through.
    assert_eq!(choose("cuDeviceGetName", 12000, 0), None);
    assert_eq!(choose("cuGetExportTable", 12000, 0), None);
    assert_eq!(choose("cuLaunchKernel", 3000, 0), None);
    assert_eq!(
        choose("cuMemAlloc", proc_table::HEADER_CUDA_VERSION + 10, 0),
        None
    );
}

#[test]
fn every_hooked_abi_is_reachable_through_the_proc_table() {
    // Each hooked CUDA symbol that the table knows is what some (base, version, flags) resolves to,
    // so cuGetProcAddress can hand it out; and the fallback returns exactly that symbol's hook.
    for entry in PROC_TABLE {
        let Some(hook) = cuda_hook(entry.symbol.as_bytes()) else {
            continue;
        };
        let flags = if entry.per_thread == proc_table::PerThread::No {
            0
        } else {
            2
        };
        assert_eq!(
            super::proc_address::choose(entry.base, 0x1000, entry.version, flags),
            Some(hook),
            "{} at {} flags {flags}",
            entry.base,
            entry.version
        );
    }
}

#[test]
fn dlsym_decision_only_touches_hooked_names_through_explicit_handles() {
    let decide = |handle: usize, name: &str| {
        let name = CString::new(name).unwrap();
        super::dlsym_decision(handle, &name)
    };
    assert_eq!(decide(RTLD_DEFAULT, "malloc"), None);
    assert_eq!(decide(RTLD_NEXT, "cuDeviceGetName"), None);
    // The pseudo-handles always get glibc's own answer: it depends on where the caller sits in the
    // search order, which only glibc knows (front_doors.rs checks it with a second interposer).
    assert_eq!(decide(RTLD_DEFAULT, "cuMemAlloc_v2"), None);
    assert_eq!(decide(RTLD_NEXT, "nvmlDeviceGetMemoryInfo_v2"), None);
    // A real handle that does not lead to the driver keeps its own (here: missing) answer.
    let libc = crate::sys::dl::open(c"libc.so.6").unwrap();
    assert_eq!(decide(libc.handle(), "cuMemAlloc_v2"), None);
}

/// The shipped library exports exactly the list (plus `dlsym` under glibc's two versions), when it has
/// been built. Run `cargo build --release` (or scripts/build-artifacts.sh) first for this check to bite.
#[test]
fn built_library_exports_exactly_the_list() {
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libvgpu.so");
    if !lib.exists() {
        eprintln!("{} not built; skipping the nm comparison", lib.display());
        return;
    }
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output();
    let Ok(out) = out else {
        eprintln!("nm not available; skipping");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // nm from binutils 2.35 on prints `name@@VERSION` / `name@VERSION`; older ones print the name.
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|name| name.starts_with("cu") || name.starts_with("nvml") || name.starts_with("dl"))
        .collect();
    let exported: BTreeSet<&str> = listed
        .iter()
        .map(|name| name.split('@').next().unwrap_or(name))
        .collect();
    let mut expected: BTreeSet<&str> = HOOKED_SYMBOLS.iter().copied().collect();
    expected.insert("dlsym");
    assert_eq!(
        exported,
        expected,
        "nm -D --defined-only {} disagrees with hooks/list.rs",
        lib.display()
    );
    // `dlsym` is defined twice: the default version and glibc's base version (src/sys/dl.rs).
    let base = if cfg!(target_arch = "aarch64") {
        "dlsym@GLIBC_2.17"
    } else {
        "dlsym@GLIBC_2.2.5"
    };
    let dlsyms: BTreeSet<&str> = listed
        .iter()
        .copied()
        .filter(|name| name.split('@').next() == Some("dlsym"))
        .collect();
    if dlsyms.iter().any(|name| name.contains('@')) {
        assert_eq!(
            dlsyms,
            BTreeSet::from(["dlsym@@GLIBC_2.34", base]),
            "libvgpu.so must export dlsym@@GLIBC_2.34 and {base}"
        );
    }
    let objdump = std::process::Command::new("objdump")
        .arg("-T")
        .arg(&lib)
        .output();
    if let Ok(objdump) = objdump {
        let text = String::from_utf8_lossy(&objdump.stdout);
        let versions: BTreeSet<&str> = text
            .lines()
            .filter(|line| line.split_whitespace().last() == Some("dlsym"))
            .filter(|line| !line.contains("*UND*"))
            .filter_map(|line| line.split_whitespace().rev().nth(1))
            .collect();
        let base_version = base.trim_start_matches("dlsym@");
        assert_eq!(
            versions,
            BTreeSet::from(["GLIBC_2.34", &format!("({base_version})")[..]]),
            "objdump -T {}:\n{text}",
            lib.display()
        );
    }
    let dynamic = std::process::Command::new("readelf")
        .args(["-d"])
        .arg(&lib)
        .output();
    if let Ok(dynamic) = dynamic {
        let text = String::from_utf8_lossy(&dynamic.stdout);
        assert!(
            !text.contains("libcuda"),
            "libvgpu.so must not need libcuda:\n{text}"
        );
        assert!(
            !text.contains("libnvidia-ml"),
            "libvgpu.so must not need libnvidia-ml:\n{text}"
        );
    }
}
