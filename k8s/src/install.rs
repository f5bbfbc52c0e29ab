//! Puts `libvgpu.so` and `ld.so.preload` on the host (hami-contract.md 1.1). Every file is replaced
//! atomically: written to a temporary file in the same directory, flushed, then renamed over the old
//! one. A container that has the old library bind-mounted keeps the old inode and never sees a
//! half-written file (HAMi's `cp` in place crashed running pods, HAMi#753); new containers get the new
//! file. Unchanged files are left alone.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::allocate::CONTAINER_LIBRARY;

/// What `install` did, one line per file.
pub fn install(library: &Path, hook_dir: &Path, version: &str) -> std::io::Result<Vec<String>> {
    let bytes = std::fs::read(library)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", library.display())))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not an ELF shared object", library.display()),
        ));
    }
    std::fs::create_dir_all(hook_dir.join("containers"))?;
    let mut actions = Vec::new();
    let versioned = format!("libvgpu.so.{version}");
    for (name, content, mode) in [
        (versioned.as_str(), bytes.as_slice(), 0o755),
        ("libvgpu.so", bytes.as_slice(), 0o755),
        // The path inside containers, where Allocate mounts the library.
        (
            "ld.so.preload",
            format!("{CONTAINER_LIBRARY}\n").as_bytes(),
            0o644,
        ),
    ] {
        let path = hook_dir.join(name);
        let changed = replace_atomically(&path, content, mode)?;
        actions.push(format!(
            "{} {}",
            if changed { "installed" } else { "unchanged" },
            path.display()
        ));
    }
    Ok(actions)
}

/// Writes `content` to `path` through a temporary file and `rename`. Returns false when the file
/// already had exactly this content.
pub fn replace_atomically(path: &Path, content: &[u8], mode: u32) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(content)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename itself must survive a crash too.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map(|()| true)
}
