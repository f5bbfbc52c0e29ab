//! Finding `libvgpu.so` and the simulated driver from wherever the `vgpu` binary was installed.

use std::path::PathBuf;

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(|p| p.to_path_buf())
}

/// `$VGPU_LIBRARY` if set (an explicit choice wins), else `libvgpu.so` next to the `vgpu` binary (a
/// cargo build: both in `target/release/`), else `../lib/libvgpu.so` (an install under a prefix).
pub fn libvgpu() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("VGPU_LIBRARY").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(absolute(path))
        } else {
            Err(format!(
                "VGPU_LIBRARY={} does not name a file",
                path.display()
            ))
        };
    }
    let mut tried = Vec::new();
    if let Some(dir) = exe_dir() {
        for candidate in [dir.join("libvgpu.so"), dir.join("../lib/libvgpu.so")] {
            if candidate.is_file() {
                return Ok(absolute(candidate));
            }
            tried.push(candidate.display().to_string());
        }
    }
    Err(format!(
        "libvgpu.so not found (looked at {}); build it with scripts/build-artifacts.sh or set VGPU_LIBRARY",
        tried.join(", ")
    ))
}

/// The simulated driver's folder: `$VGPU_SIM_DIR`, else `target/sim` next to `target/release`.
pub fn sim_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("VGPU_SIM_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => exe_dir()
            .map(|d| d.join("../sim"))
            .ok_or("cannot locate the vgpu binary")?,
    };
    if dir.join("libcuda.so.1").is_file() && dir.join("libnvidia-ml.so.1").is_file() {
        Ok(absolute(dir))
    } else {
        Err(format!(
            "the simulated driver is not in {} (libcuda.so.1, libnvidia-ml.so.1); \
             run scripts/build-artifacts.sh or set VGPU_SIM_DIR",
            dir.display()
        ))
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::fs::canonicalize(&path).unwrap_or(path)
}
