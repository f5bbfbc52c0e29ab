//! A GPU lost while a process runs: `simgpu-ctl lost <i> on|off`, run as another process, flips the
//! machine-wide flag, and a long-running NVML client (a C probe that took its handles at start, like a
//! device plugin's health loop) sees `NVML_ERROR_GPU_IS_LOST` and then success again.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

use common::*;
use testkit::SimMachine;

const GPU_IS_LOST: &str = "15";

fn ctl(machine: &SimMachine) -> Command {
    machine.command(env!("CARGO_BIN_EXE_simgpu-ctl"))
}

/// The probe, kept running; each `ask` is one round of questions.
struct Watcher {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Watcher {
    fn start(machine: &SimMachine) -> Watcher {
        let probe = testkit::compile_c(&crate_dir(), "nvml_lost_watch", &[]);
        let mut child = machine
            .command(probe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nvml_lost_watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut watcher = Watcher {
            child,
            stdin,
            lines,
        };
        let first = watcher.line();
        assert!(first.starts_with("ready\t"), "{first}");
        watcher
    }

    fn line(&mut self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                panic!("nvml_lost_watch said nothing within {DEADLINE:?}");
            }
        }
    }

    /// `(mem rc, handle rc)` per device, as the running process sees them now.
    fn ask(&mut self) -> Vec<(String, String)> {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"check\n").expect("write to the probe");
        stdin.flush().expect("flush");
        let mut out = Vec::new();
        loop {
            let line = self.line();
            if line == "done" {
                return out;
            }
            let record = parse(&line).remove(0);
            assert_eq!(record.kind, "device", "{line}");
            assert_eq!(record.id.as_deref(), Some(out.len().to_string().as_str()));
            out.push((
                record.get("mem").to_string(),
                record.get("handle").to_string(),
            ));
        }
    }

    fn finish(mut self) {
        self.stdin = None; // EOF: the probe exits 0
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "nvml_lost_watch: {status}");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rcs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_running_process_sees_a_gpu_lost_and_recovered() {
    let machine = SimMachine::new("nvml-live-lost");
    let mut watcher = Watcher::start(&machine);
    assert_eq!(watcher.ask(), rcs(&[("0", "0"), ("0", "0")]));

    let out = testkit::run_ok(ctl(&machine).args(["lost", "1", "on"]), DEADLINE);
    assert_eq!(out.trim(), "device=1 lost=on");
    assert_eq!(
        watcher.ask(),
        rcs(&[("0", "0"), (GPU_IS_LOST, GPU_IS_LOST)]),
        "the handle taken before and a new lookup both fail"
    );
    // A process started now sees it too.
    let all = query(&machine, "query");
    assert_eq!(one(&all, "device", "1").get("rc"), GPU_IS_LOST);
    let shown = testkit::run_ok(ctl(&machine).arg("show"), DEADLINE);
    let lost: Vec<&str> = shown
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(lost, ["lost=off", "lost=on"], "{shown}");

    testkit::run_ok(ctl(&machine).args(["lost", "1", "off"]), DEADLINE);
    assert_eq!(watcher.ask(), rcs(&[("0", "0"), ("0", "0")]));

    // Device 0 this time, while 1 stays healthy.
    testkit::run_ok(ctl(&machine).args(["lost", "0", "on"]), DEADLINE);
    assert_eq!(
        watcher.ask(),
        rcs(&[(GPU_IS_LOST, GPU_IS_LOST), ("0", "0")])
    );
    testkit::run_ok(ctl(&machine).args(["lost", "0", "off"]), DEADLINE);
    assert_eq!(watcher.ask(), rcs(&[("0", "0"), ("0", "0")]));
    watcher.finish();
}

#[test]
fn simgpu_ctl_shows_the_machine_and_refuses_bad_requests() {
    let machine = SimMachine::new("nvml-ctl").with_devices("name=NVIDIA L4,mem=3Gi");
    // No machine yet: an error, and no file made (a tool never creates or rebuilds a machine).
    let out = testkit::run(ctl(&machine).args(["lost", "0", "on"]), DEADLINE);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no simulated machine"),
        "{out:?}"
    );
    assert!(!machine.state_file.exists());

    let _holder = Holder::start(&machine, &["alloc", "0", &GI.to_string()]);
    let shown = testkit::run_ok(ctl(&machine).arg("show"), DEADLINE);
    let device: Vec<&str> = shown.lines().collect();
    assert_eq!(device.len(), 1, "{shown}");
    assert!(
        device[0].starts_with("device=0 name=\"NVIDIA L4\" uuid=GPU-"),
        "{shown}"
    );
    assert!(
        device[0].ends_with(&format!("used={GI} total={} lost=off", 3 * GI)),
        "{shown}"
    );

    // The ctl reads the devices from the file: another SIMGPU_DEVICES neither matters nor rebuilds.
    testkit::run_ok(
        ctl(&machine)
            .args(["lost", "0", "on"])
            .env("SIMGPU_DEVICES", "mem=1Gi;mem=1Gi"),
        DEADLINE,
    );
    let shown = testkit::run_ok(ctl(&machine).arg("show"), DEADLINE);
    assert!(shown.trim().ends_with("lost=on"), "{shown}");

    let out = testkit::run(ctl(&machine).args(["lost", "1", "on"]), DEADLINE);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such device"));
    for bad in [
        &["lost", "0"][..],
        &["lost", "0", "maybe"],
        &["lost", "x", "on"],
        &[],
    ] {
        let out = testkit::run(ctl(&machine).args(bad), DEADLINE);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
    }
}
