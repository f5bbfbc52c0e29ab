//! `vgpu-device-plugin install`: the library and ld.so.preload land on the host through temp file +
//! rename, so a container holding the old library keeps it intact.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn install(library: &std::path::Path, hook: &std::path::Path) -> String {
    testkit::run_ok(
        Command::new(env!("CARGO_BIN_EXE_vgpu-device-plugin"))
            .args(["install", "--library-version", "9.9.9"])
            .arg("--library")
            .arg(library)
            .arg("--hook-dir")
            .arg(hook),
        std::time::Duration::from_secs(30),
    );
    String::new()
}

fn log_of(library: &std::path::Path, hook: &std::path::Path) -> String {
    let out = testkit::run(
        Command::new(env!("CARGO_BIN_EXE_vgpu-device-plugin"))
            .args(["install", "--library-version", "9.9.9"])
            .arg("--library")
            .arg(library)
            .arg("--hook-dir")
            .arg(hook),
        std::time::Duration::from_secs(30),
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn installs_atomically_and_keeps_the_old_inode_for_its_users() {
    let scratch = testkit::scratch_dir("install");
    let hook = scratch.join("usr-local-vgpu");
    let library = scratch.join("libvgpu.so");
    std::fs::write(&library, b"\x7fELF version one").unwrap();
    install(&library, &hook);
    assert_eq!(
        std::fs::read(hook.join("libvgpu.so")).unwrap(),
        b"\x7fELF version one"
    );
    assert_eq!(
        std::fs::read(hook.join("libvgpu.so.9.9.9")).unwrap(),
        b"\x7fELF version one"
    );
    assert_eq!(
        std::fs::read_to_string(hook.join("ld.so.preload")).unwrap(),
        "/usr/local/vgpu/libvgpu.so\n"
    );
    assert!(hook.join("containers").is_dir());

    // A running container has the old file open (a bind mount holds its inode the same way).
    let mut held = std::fs::File::open(hook.join("libvgpu.so")).unwrap();
    let old_inode = std::fs::metadata(hook.join("libvgpu.so")).unwrap().ino();
    let preload_inode = std::fs::metadata(hook.join("ld.so.preload")).unwrap().ino();

    std::fs::write(&library, b"\x7fELF version two, longer").unwrap();
    let log = log_of(&library, &hook);
    assert!(
        log.contains("installed") && log.contains("unchanged"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(hook.join("libvgpu.so")).unwrap(),
        b"\x7fELF version two, longer"
    );
    assert_ne!(
        std::fs::metadata(hook.join("libvgpu.so")).unwrap().ino(),
        old_inode,
        "replaced, not rewritten"
    );
    let mut seen = Vec::new();
    held.read_to_end(&mut seen).unwrap();
    assert_eq!(
        seen, b"\x7fELF version one",
        "the old file is intact for whoever holds it"
    );
    assert_eq!(
        std::fs::metadata(hook.join("ld.so.preload")).unwrap().ino(),
        preload_inode,
        "unchanged files are left alone"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&hook)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn refuses_what_is_not_a_library() {
    let scratch = testkit::scratch_dir("install-bad");
    let library = scratch.join("libvgpu.so");
    std::fs::write(&library, b"<html>404</html>").unwrap();
    let log = log_of(&library, &scratch.join("hook"));
    assert!(log.contains("is not an ELF shared object"), "{log}");
    assert!(!scratch.join("hook/libvgpu.so").exists());
}
