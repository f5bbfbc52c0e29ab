//! Which exported symbol `cuGetProcAddress(base, version, flags)` stands for.
//!
//! The real driver hands back, for a base name such as `cuMemAlloc`, the ABI with the greatest version
//! not above the caller's version, and the per-thread-default-stream variant (`_ptsz`/`_ptds`) when the
//! flags ask for one (NVIDIA driver API reference, "Driver Entry Point Access"). The table is generated
//! from `cudaTypedefs.h` + `cuda.h` by `tools/gen_proc_table.py`, never written by hand.

mod generated {
    include!("generated/proc_table.rs");
}
pub use generated::{DECLARED_SYMBOLS, HEADER_CUDA_VERSION, PROC_TABLE};

/// Which stream semantics an ABI has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerThread {
    /// The legacy default stream (plain symbol).
    No,
    /// Per-thread default stream, stream-ordered call (`_ptsz`).
    Ptsz,
    /// Per-thread default stream, synchronous call (`_ptds`).
    Ptds,
}

/// One ABI of one driver entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEntry {
    pub base: &'static str,
    pub version: i32,
    pub per_thread: PerThread,
    pub symbol: &'static str,
}

/// `CU_GET_PROC_ADDRESS_LEGACY_STREAM` (cuda.h).
pub const FLAG_LEGACY_STREAM: u64 = 1;
/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM` (cuda.h).
pub const FLAG_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// What a lookup found, mirroring `CUdriverProcAddressQueryResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The exported symbol that implements the requested ABI.
    Found(&'static str),
    /// The base name exists, but every ABI is newer than the requested version.
    VersionNotSufficient,
    /// No entry point of that name.
    NotFound,
}

/// All ABIs of `base`, as a slice of `PROC_TABLE` (sorted by base, variant, version).
pub fn entries(base: &str) -> &'static [ProcEntry] {
    let start = PROC_TABLE.partition_point(|e| e.base < base);
    let end = start + PROC_TABLE[start..].partition_point(|e| e.base == base);
    &PROC_TABLE[start..end]
}

/// Resolve a `cuGetProcAddress` request the way the driver does.
///
/// `flags` with `FLAG_PER_THREAD_DEFAULT_STREAM` prefers the per-thread variant when one exists at or
/// below `version`; otherwise the plain ABI is used.
pub fn resolve(base: &str, version: i32, flags: u64) -> Lookup {
    let all = entries(base);
    if all.is_empty() {
        return Lookup::NotFound;
    }
    let newest_at_most = |want: PerThread| {
        all.iter()
            .filter(|e| e.per_thread == want && e.version <= version)
            .max_by_key(|e| e.version)
    };
    if flags & FLAG_PER_THREAD_DEFAULT_STREAM != 0 {
        if let Some(e) = newest_at_most(PerThread::Ptsz).or_else(|| newest_at_most(PerThread::Ptds))
        {
            return Lookup::Found(e.symbol);
        }
    }
    match newest_at_most(PerThread::No) {
        Some(e) => Lookup::Found(e.symbol),
        None => Lookup::VersionNotSufficient,
    }
}

/// Every exported symbol that can stand for `base` (all ABIs and variants).
pub fn symbols_of(base: &str) -> impl Iterator<Item = &'static str> {
    entries(base).iter().map(|e| e.symbol)
}

/// The base name of an exported symbol (`cuMemAlloc_v2_ptsz` -> `cuMemAlloc`), if the table knows it.
pub fn base_of(symbol: &str) -> Option<&'static str> {
    PROC_TABLE
        .iter()
        .find(|e| e.symbol == symbol)
        .map(|e| e.base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_abi_not_above_requested_version() {
        assert_eq!(
            resolve("cuMemAlloc", 12000, 0),
            Lookup::Found("cuMemAlloc_v2")
        );
        assert_eq!(
            resolve("cuMemAlloc", 3020, 0),
            Lookup::Found("cuMemAlloc_v2")
        );
        assert_eq!(resolve("cuMemAlloc", 3010, 0), Lookup::Found("cuMemAlloc"));
        assert_eq!(
            resolve("cuCtxCreate", 11040, 0),
            Lookup::Found("cuCtxCreate_v3")
        );
        assert_eq!(
            resolve("cuCtxCreate", 12090, 0),
            Lookup::Found("cuCtxCreate_v4")
        );
        assert_eq!(
            resolve("cuGetProcAddress", 12000, 0),
            Lookup::Found("cuGetProcAddress_v2")
        );
        assert_eq!(
            resolve("cuGetProcAddress", 11030, 0),
            Lookup::Found("cuGetProcAddress")
        );
    }

    #[test]
    fn per_thread_flag_selects_ptsz_and_ptds() {
        assert_eq!(
            resolve("cuLaunchKernel", 12000, 2),
            Lookup::Found("cuLaunchKernel_ptsz")
        );
        assert_eq!(
            resolve("cuLaunchKernel", 12000, 0),
            Lookup::Found("cuLaunchKernel")
        );
        assert_eq!(
            resolve("cuMemcpyHtoD", 12000, 2),
            Lookup::Found("cuMemcpyHtoD_v2_ptds")
        );
        // No per-thread ABI exists for cuMemAlloc: the flag falls back to the plain one.
        assert_eq!(
            resolve("cuMemAlloc", 12000, 2),
            Lookup::Found("cuMemAlloc_v2")
        );
    }

    #[test]
    fn cuda_12_alias_of_graph_instantiate() {
        // cuda.h 12.x: `#define cuGraphInstantiate cuGraphInstantiateWithFlags`.
        assert_eq!(
            resolve("cuGraphInstantiate", 12000, 0),
            Lookup::Found("cuGraphInstantiateWithFlags")
        );
        assert_eq!(
            resolve("cuGraphInstantiate", 11000, 0),
            Lookup::Found("cuGraphInstantiate_v2")
        );
    }

    #[test]
    fn too_old_and_unknown() {
        assert_eq!(
            resolve("cuLaunchKernel", 3000, 0),
            Lookup::VersionNotSufficient
        );
        assert_eq!(resolve("cuNoSuchThing", 12000, 0), Lookup::NotFound);
    }

    #[test]
    fn every_symbol_in_the_table_is_declared() {
        for e in PROC_TABLE {
            assert!(DECLARED_SYMBOLS.binary_search(&e.symbol).is_ok(), "{e:?}");
        }
        assert_eq!(base_of("cuMemAlloc_v2"), Some("cuMemAlloc"));
    }
}
