//! `vgpu ps` and `vgpu top`: one row per process of every region found, from a fresh read each time.

use std::path::Path;

use crate::format::{self, Json};
use crate::regions::{self, ProcessState, RegionFile, Snapshot};

/// One region file and what reading it gave.
pub struct RegionReport {
    pub file: RegionFile,
    pub snapshot: Result<Snapshot, String>,
}

/// Reads every region at `location`. Errors only when the location itself cannot be read.
pub fn gather(location: &Path) -> Result<Vec<RegionReport>, String> {
    let files = regions::discover(location).map_err(|e| format!("{}: {e}", location.display()))?;
    Ok(files
        .into_iter()
        .map(|file| {
            let snapshot = regions::read_snapshot(&file.path);
            RegionReport { file, snapshot }
        })
        .collect())
}

/// One row of the process table.
struct ProcessRow {
    pid: i32,
    device: Option<usize>,
    used_bytes: u64,
    limit_bytes: u64,
    sm_util_percent: Option<u64>,
    state: ProcessState,
}

fn process_rows(snapshot: &Snapshot) -> Vec<ProcessRow> {
    let mut rows = Vec::new();
    for slot in &snapshot.slots {
        let state = regions::process_state(slot);
        let mut any = false;
        for (d, usage) in slot.usage.iter().enumerate() {
            if usage.total_bytes == 0 && usage.sm_util_percent == 0 {
                continue;
            }
            any = true;
            rows.push(ProcessRow {
                pid: slot.pid,
                device: Some(d),
                used_bytes: usage.total_bytes,
                limit_bytes: snapshot.devices.get(d).map_or(0, |dev| dev.limit_bytes),
                sm_util_percent: Some(usage.sm_util_percent),
                state,
            });
        }
        if !any {
            rows.push(ProcessRow {
                pid: slot.pid,
                device: None,
                used_bytes: 0,
                limit_bytes: 0,
                sm_util_percent: None,
                state,
            });
        }
    }
    rows
}

/// The table `ps` prints and `top` redraws, at most `width` columns wide.
pub fn render_table(reports: &[RegionReport], width: usize) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no region files found\n");
    }
    for (i, report) in reports.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if report.file.pod_uid.is_empty() {
            push_line(&mut out, &report.file.path.display().to_string(), width);
        } else {
            push_line(
                &mut out,
                &format!("{}  (pod {})", report.file.container, report.file.pod_uid),
                width,
            );
            let path = report.file.path.display().to_string();
            out.push_str(&format!(
                "  region {}\n",
                format::fit_left(&path, width.saturating_sub(9))
            ));
        }
        let snapshot = match &report.snapshot {
            Ok(s) => s,
            Err(reason) => {
                push_line(&mut out, &format!("  unreadable: {reason}"), width);
                continue;
            }
        };
        for device in &snapshot.devices {
            let used = snapshot.device_totals(device.index).total_bytes;
            let sm_limit = match device.sm_limit_percent {
                0 | 100.. => "-".to_string(),
                p => format!("{p}%"),
            };
            let line = format!(
                "  gpu {}  {:<19}  sm {:<3}  {}",
                device.index,
                format::used_of_limit(used, device.limit_bytes),
                sm_limit,
                device.uuid
            );
            push_line(&mut out, &line, width);
        }
        let rows = process_rows(snapshot);
        if rows.is_empty() {
            push_line(&mut out, "  no processes", width);
            continue;
        }
        push_line(
            &mut out,
            &format!(
                "  {:>8}  {:>3}  {:<21} {:>4}  STATE",
                "PID", "GPU", "MEMORY USED / LIMIT", "SM%"
            ),
            width,
        );
        for row in rows {
            let line = format!(
                "  {:>8}  {:>3}  {:<21} {:>4}  {}",
                row.pid,
                row.device.map_or("-".to_string(), |d| d.to_string()),
                format::used_of_limit(row.used_bytes, row.limit_bytes),
                row.sm_util_percent
                    .map_or("-".to_string(), |p| p.to_string()),
                row.state.label()
            );
            push_line(&mut out, &line, width);
        }
    }
    out
}

fn push_line(out: &mut String, line: &str, width: usize) {
    out.push_str(&format::fit(line, width));
    out.push('\n');
}

/// `ps --json`: every region with its devices and processes; an unreadable region has `error` set.
pub fn render_json(reports: &[RegionReport]) -> String {
    let regions = reports
        .iter()
        .map(|report| {
            let mut fields = vec![
                ("path", Json::str(report.file.path.display().to_string())),
                ("pod_uid", Json::str(&report.file.pod_uid)),
                ("container", Json::str(&report.file.container)),
            ];
            match &report.snapshot {
                Err(reason) => fields.push(("error", Json::str(reason))),
                Ok(s) => {
                    fields.push(("error", Json::Null));
                    fields.extend(snapshot_json(s));
                }
            }
            Json::Object(fields)
        })
        .collect();
    let mut text = Json::Object(vec![("regions", Json::Array(regions))]).to_string();
    text.push('\n');
    text
}

fn snapshot_json(s: &Snapshot) -> Vec<(&'static str, Json)> {
    let devices = s
        .devices
        .iter()
        .map(|d| {
            Json::Object(vec![
                ("index", Json::Uint(d.index as u64)),
                ("uuid", Json::str(&d.uuid)),
                ("limit_bytes", Json::Uint(d.limit_bytes)),
                ("sm_limit_percent", Json::Uint(d.sm_limit_percent)),
                (
                    "used_bytes",
                    Json::Uint(s.device_totals(d.index).total_bytes),
                ),
                (
                    "charged_bytes",
                    d.charged_bytes.map_or(Json::Null, Json::Uint),
                ),
            ])
        })
        .collect();
    let processes = s
        .slots
        .iter()
        .map(|slot| {
            let state = regions::process_state(slot);
            let usage = slot
                .usage
                .iter()
                .enumerate()
                .map(|(d, u)| {
                    Json::Object(vec![
                        ("index", Json::Uint(d as u64)),
                        ("used_bytes", Json::Uint(u.total_bytes)),
                        ("context_bytes", Json::Uint(u.context_bytes)),
                        ("module_bytes", Json::Uint(u.module_bytes)),
                        ("data_bytes", Json::Uint(u.data_bytes)),
                        ("sm_util_percent", Json::Uint(u.sm_util_percent)),
                    ])
                })
                .collect();
            Json::Object(vec![
                ("slot", Json::Uint(slot.slot as u64)),
                ("pid", Json::Int(slot.pid as i64)),
                ("hostpid", Json::Int(slot.hostpid as i64)),
                ("status", Json::Int(slot.status as i64)),
                (
                    "start_time_ticks",
                    slot.start_time_ticks.map_or(Json::Null, Json::Uint),
                ),
                ("state", Json::str(state.label())),
                ("alive", Json::Bool(state.is_live())),
                ("devices", Json::Array(usage)),
            ])
        })
        .collect();
    vec![
        (
            "version",
            Json::str(format!("{}.{}", s.major_version, s.minor_version)),
        ),
        ("priority", Json::Int(s.priority as i64)),
        ("utilization_switch", Json::Int(s.utilization_switch as i64)),
        ("recent_kernel", Json::Int(s.recent_kernel as i64)),
        ("last_kernel_time", Json::Uint(s.last_kernel_time)),
        ("devices", Json::Array(devices)),
        ("processes", Json::Array(processes)),
    ]
}

fn output_width() -> usize {
    crate::sys::terminal_columns(1)
        .map_or(80, |c| c as usize)
        .max(40)
}

/// `vgpu ps`. Exit status 0, or 1 when a region could not be read (everything readable is still shown).
pub fn ps(location: &Path, json: bool) -> Result<i32, String> {
    let reports = gather(location)?;
    if json {
        print!("{}", render_json(&reports));
    } else {
        print!("{}", render_table(&reports, output_width()));
    }
    Ok(if reports.iter().any(|r| r.snapshot.is_err()) {
        1
    } else {
        0
    })
}

/// `vgpu top`: redraws the table every `interval_ms` until q, Ctrl-C, or `count` redraws.
pub fn top(location: &Path, interval_ms: u64, count: Option<u64>) -> Result<i32, String> {
    crate::sys::catch_quit_signals();
    let interactive = crate::sys::is_terminal(1);
    let raw = crate::sys::RawInput::enable();
    if interactive {
        print!("\x1b[?25l"); // hide the cursor while redrawing
    }
    let mut drawn = 0u64;
    let outcome = loop {
        let reports = match gather(location) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        let now = chrono_like_now();
        let mut screen = String::new();
        if interactive {
            screen.push_str("\x1b[H\x1b[2J");
        }
        let title = format!("vgpu top  {now}  q quits  ");
        let room = output_width().saturating_sub(title.len());
        screen.push_str(&title);
        screen.push_str(&format::fit_left(&location.display().to_string(), room));
        screen.push_str("\n\n");
        screen.push_str(&render_table(&reports, output_width()));
        print!("{screen}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        drawn += 1;
        if count.is_some_and(|c| drawn >= c) {
            break Ok(0);
        }
        let keys = wait_for_keys(interval_ms, raw.is_some());
        if crate::sys::quit_requested() || keys.iter().any(|&k| k == b'q' || k == b'Q' || k == 3) {
            break Ok(0);
        }
    };
    if interactive {
        println!("\x1b[?25h");
    }
    drop(raw);
    outcome
}

/// Sleeps for the interval, returning early with any keys typed (only when stdin is a terminal we own).
fn wait_for_keys(interval_ms: u64, read_keys: bool) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(interval_ms);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || crate::sys::quit_requested() {
            return Vec::new();
        }
        if read_keys {
            let keys = crate::sys::read_stdin_within(left.as_millis().min(i32::MAX as u128) as i32);
            if !keys.is_empty() {
                return keys;
            }
        } else {
            std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
        }
    }
}

/// `HH:MM:SS` UTC, enough to see that the screen is alive (no date crate needed for that).
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}
