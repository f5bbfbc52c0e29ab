//! `vgpu exporter`: HAMi's container metrics (hami-contract.md section 4), same names, labels and
//! units, served over plain HTTP/1.1 from `std::net`, one short-lived thread per connection.
//!
//! Every scrape reads the regions afresh (a copy of each file, never a mapping), so a region that is
//! corrupt, half-written or deleted mid-read costs one log line and its series, nothing more.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ps::RegionReport;

/// What is known of the pod without the API server: the directory name gives the pod UID and the
/// container name, not the namespace or the pod's name. We put the UID in `pod` (it is unique, and
/// what `kubectl get pod -A -o custom-columns=UID:.metadata.uid` lists) and leave `namespace` empty,
/// which Prometheus treats as an absent label.
const NAMESPACE_UNKNOWN: &str = "";

struct Family {
    name: &'static str,
    help: &'static str,
}

const MEMORY_USED: Family = Family {
    name: "hami_vgpu_memory_used_bytes",
    help: "vGPU device memory used by the container's processes",
};
const MEMORY_LIMIT: Family = Family {
    name: "hami_vgpu_memory_limit_bytes",
    help: "vGPU device memory limit of the container",
};
const DEVICE_MEMORY: Family = Family {
    name: "hami_container_device_memory_bytes",
    help: "Device memory used by the container (context, module and buffer memory together)",
};
const CONTEXT: Family = Family {
    name: "hami_vgpu_memory_context_bytes",
    help: "Device memory the container's CUDA contexts use",
};
const MODULE: Family = Family {
    name: "hami_vgpu_memory_module_bytes",
    help: "Device memory the container's loaded modules use",
};
const BUFFER: Family = Family {
    name: "hami_vgpu_memory_buffer_bytes",
    help: "Device memory the container's allocations use",
};
const UTILIZATION: Family = Family {
    name: "hami_container_device_utilization_ratio",
    help: "SM utilization of the container on the device, summed over its processes (percent, as HAMi)",
};
const LAST_KERNEL: Family = Family {
    name: "hami_container_last_kernel_elapsed_seconds",
    help: "Seconds since the container last launched a kernel on any device",
};
const REGION_FILES: Family = Family {
    name: "vgpu_exporter_region_files",
    help: "Region files found at the last scrape, by whether they could be read",
};

/// The exposition text for these regions at `now` (epoch seconds). Pure, so it is tested directly.
pub fn render_metrics(reports: &[RegionReport], now_epoch_secs: u64) -> String {
    // Series grouped per family, so each family's HELP/TYPE comes once, before its samples.
    let families = [
        &MEMORY_USED,
        &MEMORY_LIMIT,
        &DEVICE_MEMORY,
        &CONTEXT,
        &MODULE,
        &BUFFER,
        &UTILIZATION,
        &LAST_KERNEL,
    ];
    let mut samples: Vec<Vec<String>> = vec![Vec::new(); families.len()];
    let mut readable = 0u64;
    let mut unreadable = 0u64;
    for report in reports {
        let Ok(snapshot) = &report.snapshot else {
            unreadable += 1;
            continue;
        };
        readable += 1;
        for device in &snapshot.devices {
            // HAMi's monitor skips devices whose UUID slot is empty.
            if device.uuid.is_empty() {
                continue;
            }
            let uuid: String = device.uuid.chars().take(40).collect();
            let labels = format!(
                "namespace=\"{}\",pod=\"{}\",container=\"{}\",vdevice_index=\"{}\",device_uuid=\"{}\",zone=\"vGPU\"",
                escape(NAMESPACE_UNKNOWN),
                escape(&report.file.pod_uid),
                escape(&report.file.container),
                device.index,
                escape(&uuid)
            );
            let totals = snapshot.device_totals(device.index);
            let mut values = vec![
                Some(totals.total_bytes as f64),
                Some(device.limit_bytes as f64),
                Some(totals.total_bytes as f64),
                Some(totals.context_bytes as f64),
                Some(totals.module_bytes as f64),
                Some(totals.data_bytes as f64),
                Some(totals.sm_util_percent as f64),
                None,
            ];
            if snapshot.last_kernel_time > 0 {
                values[7] = Some(now_epoch_secs.saturating_sub(snapshot.last_kernel_time) as f64);
            }
            for (family, value) in values.into_iter().enumerate() {
                if let Some(value) = value {
                    samples[family].push(format!("{}{{{labels}}} {value}", families[family].name));
                }
            }
        }
    }
    let mut out = String::new();
    for (family, lines) in families.iter().zip(&samples) {
        write_header(&mut out, family);
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
    }
    write_header(&mut out, &REGION_FILES);
    let _ = writeln!(
        out,
        "{}{{state=\"readable\"}} {readable}",
        REGION_FILES.name
    );
    let _ = writeln!(
        out,
        "{}{{state=\"unreadable\"}} {unreadable}",
        REGION_FILES.name
    );
    out
}

fn write_header(out: &mut String, family: &Family) {
    let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(out, "# TYPE {} gauge", family.name);
}

/// Label values escape `\`, `"` and newline (the exposition format's rule).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Logs a region's trouble once per distinct reason, and once when it recovers, so a corrupt file
/// scraped every 15 s does not flood the log.
#[derive(Default)]
struct ProblemLog {
    last_error: HashMap<PathBuf, String>,
}

impl ProblemLog {
    fn note(&mut self, reports: &[RegionReport]) {
        let mut seen = Vec::new();
        for report in reports {
            let path = report.file.path.clone();
            match &report.snapshot {
                Err(reason) => {
                    if self.last_error.get(&path) != Some(reason) {
                        eprintln!("vgpu exporter: skipping {}: {reason}", path.display());
                        self.last_error.insert(path.clone(), reason.clone());
                    }
                }
                Ok(_) => {
                    if self.last_error.remove(&path).is_some() {
                        eprintln!("vgpu exporter: {} is readable again", path.display());
                    }
                }
            }
            seen.push(path);
        }
        // Regions that are gone (container removed) are forgotten, so a new one at the same path logs.
        self.last_error.retain(|path, _| seen.contains(path));
    }
}

struct Shared {
    dir: PathBuf,
    problems: Mutex<ProblemLog>,
    connections: AtomicUsize,
}

/// Connections served at once; past this a scrape gets 503 rather than another thread.
const MAX_CONNECTIONS: usize = 32;

fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    // ":9394" (Go's spelling, as HAMi's monitor takes it) means every interface.
    let spelled = if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen.to_string()
    };
    spelled
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--listen {listen:?}: no address"))
}

/// Serves until killed. Prints the bound address first (useful with port 0).
pub fn serve(listen: &str, dir: &Path) -> Result<i32, String> {
    let address = parse_listen(listen)?;
    let listener =
        TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "vgpu exporter: serving http://{bound}/metrics from {}",
        dir.display()
    );
    let _ = std::io::stdout().flush();
    if !dir.is_dir() {
        eprintln!(
            "vgpu exporter: {} does not exist (yet); serving no container series until it does",
            dir.display()
        );
    }
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        problems: Mutex::new(ProblemLog::default()),
        connections: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            let _ = respond(
                &stream,
                "503 Service Unavailable",
                "text/plain",
                b"too many connections\n",
                false,
            );
            continue;
        }
        // If the thread cannot start, the closure is dropped unrun: give its connection slot back here.
        let spawned = std::thread::Builder::new()
            .name("vgpu-scrape".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    let _ = handle(stream, &shared);
                    shared.connections.fetch_sub(1, Ordering::AcqRel);
                }
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Ok(0)
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    // The request line and headers end with an empty line; we need nothing after it (no bodies).
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > 16 * 1024 {
            return respond(
                &stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"headers too large\n",
                false,
            );
        }
    }
    let text = String::from_utf8_lossy(&request);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            false,
        );
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let reports = crate::ps::gather(&shared.dir).unwrap_or_default();
            if let Ok(mut problems) = shared.problems.lock() {
                problems.note(&reports);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let body = render_metrics(&reports, now);
            respond(
                &stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
        }
        "/" => respond(
            &stream,
            "200 OK",
            "text/plain",
            b"vgpu exporter: metrics at /metrics\n",
            head_only,
        ),
        _ => respond(
            &stream,
            "404 Not Found",
            "text/plain",
            b"not found; metrics are at /metrics\n",
            head_only,
        ),
    }
}

fn respond(
    mut stream: &TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::{DeviceInfo, DeviceUsage, RegionFile, SlotInfo, Snapshot};

    fn report(slots: Vec<SlotInfo>) -> RegionReport {
        RegionReport {
            file: RegionFile::new(PathBuf::from("/d/podid_main/r.cache")),
            snapshot: Ok(Snapshot {
                major_version: 1,
                minor_version: 2,
                priority: 1,
                utilization_switch: 1,
                recent_kernel: 2,
                last_kernel_time: 1000,
                devices: vec![
                    DeviceInfo {
                        index: 0,
                        uuid: "GPU-a".into(),
                        limit_bytes: 1 << 30,
                        sm_limit_percent: 30,
                        charged_bytes: None,
                    },
                    DeviceInfo {
                        index: 1,
                        uuid: String::new(),
                        limit_bytes: 0,
                        sm_limit_percent: 100,
                        charged_bytes: None,
                    },
                ],
                slots,
                has_vgpu_extension: true,
            }),
        }
    }

    fn usage(data: u64, sm: u64) -> DeviceUsage {
        DeviceUsage {
            context_bytes: 10,
            module_bytes: 0,
            data_bytes: data,
            total_bytes: data + 10,
            sm_util_percent: sm,
        }
    }

    #[test]
    fn sums_live_slots_like_hami_and_skips_empty_uuids() {
        let slot = |pid, status, data, sm| SlotInfo {
            slot: 0,
            pid,
            hostpid: 0,
            status,
            start_time_ticks: None,
            usage: vec![usage(data, sm), usage(0, 0)],
        };
        let text = render_metrics(
            &[report(vec![
                slot(5, 1, 100, 20),
                slot(6, 2, 50, 5),
                slot(0, 0, 999, 9),
            ])],
            1003,
        );
        let labels = r#"{namespace="",pod="podid",container="main",vdevice_index="0",device_uuid="GPU-a",zone="vGPU"}"#;
        for expected in [
            format!("hami_vgpu_memory_used_bytes{labels} 170"),
            format!("hami_vgpu_memory_limit_bytes{labels} 1073741824"),
            format!("hami_vgpu_memory_context_bytes{labels} 20"),
            format!("hami_vgpu_memory_buffer_bytes{labels} 150"),
            format!("hami_container_device_utilization_ratio{labels} 25"),
            format!("hami_container_last_kernel_elapsed_seconds{labels} 3"),
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "missing {expected} in\n{text}"
            );
        }
        assert!(
            !text.contains("vdevice_index=\"1\""),
            "a device with no UUID must be skipped:\n{text}"
        );
    }

    #[test]
    fn unreadable_regions_are_counted_not_fatal() {
        let bad = RegionReport {
            file: RegionFile::new(PathBuf::from("/d/x_y/r.cache")),
            snapshot: Err("corrupt".into()),
        };
        let text = render_metrics(&[bad], 0);
        assert!(text.contains("vgpu_exporter_region_files{state=\"unreadable\"} 1"));
        assert!(!text.contains("hami_vgpu_memory_used_bytes{"));
    }

    #[test]
    fn listen_accepts_go_spelling() {
        assert_eq!(parse_listen(":9394").unwrap().to_string(), "0.0.0.0:9394");
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
    }
}
