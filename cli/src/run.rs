//! `vgpu run`: start a program with libvgpu.so preloaded and the limits in its environment.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::limits;

/// What `vgpu run` was asked for, after validation: nothing runs until every flag has parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunPlan {
    /// The memory limit as typed (the library parses the same text with the same grammar).
    pub memory: Option<String>,
    pub cores: Option<u32>,
    /// Device indices that get per-device variables; empty = the global variables.
    pub devices: Vec<u32>,
    pub region: Option<PathBuf>,
    pub priority: Option<u32>,
}

impl RunPlan {
    pub fn new(
        memory: Option<&str>,
        cores: Option<&str>,
        devices: Option<&str>,
        region: Option<PathBuf>,
        priority: Option<&str>,
    ) -> Result<RunPlan, String> {
        let memory = match memory {
            None => None,
            Some(text) => {
                limits::parse_memory(text).map_err(|why| format!("--memory {text:?}: {why}"))?;
                Some(text.to_string())
            }
        };
        let cores = cores
            .map(|t| limits::parse_cores(t).map_err(|why| format!("--cores {t:?}: {why}")))
            .transpose()?;
        let devices = match devices {
            None => Vec::new(),
            Some(text) => limits::parse_device_list(text)
                .map_err(|why| format!("--devices {text:?}: {why}"))?,
        };
        if !devices.is_empty() && memory.is_none() && cores.is_none() {
            return Err(
                "--devices says which devices get the limits; give --memory and/or --cores too"
                    .into(),
            );
        }
        let priority = priority
            .map(|t| limits::parse_priority(t).map_err(|why| format!("--priority {t:?}: {why}")))
            .transpose()?;
        // Absolute, so that every process of the "container" names the same file whatever its cwd.
        let region = match region {
            Some(path) => Some(
                std::path::absolute(&path)
                    .map_err(|e| format!("--region {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(RunPlan {
            memory,
            cores,
            devices,
            region,
            priority,
        })
    }

    /// The variables to set, and the prefixes of inherited variables to remove first (so that a stray
    /// `CUDA_DEVICE_MEMORY_LIMIT_0` in the caller's shell cannot override `--memory`).
    pub fn environment(&self) -> (Vec<(String, OsString)>, Vec<&'static str>) {
        let mut set = Vec::new();
        let mut clear = Vec::new();
        let mut limit_vars = |base: &'static str, value: String| {
            clear.push(base);
            if self.devices.is_empty() {
                set.push((base.to_string(), OsString::from(&value)));
            } else {
                for d in &self.devices {
                    set.push((format!("{base}_{d}"), OsString::from(&value)));
                }
            }
        };
        if let Some(memory) = &self.memory {
            limit_vars("CUDA_DEVICE_MEMORY_LIMIT", memory.clone());
        }
        if let Some(cores) = self.cores {
            limit_vars("CUDA_DEVICE_SM_LIMIT", cores.to_string());
        }
        if let Some(region) = &self.region {
            set.push((
                "CUDA_DEVICE_MEMORY_SHARED_CACHE".into(),
                region.clone().into_os_string(),
            ));
        }
        if let Some(priority) = self.priority {
            set.push((
                "CUDA_TASK_PRIORITY".into(),
                OsString::from(priority.to_string()),
            ));
        }
        (set, clear)
    }
}

/// Builds the command: preload, limits, region. Shared with the demo, which runs its workloads this way.
pub fn command(
    plan: &RunPlan,
    library: &std::path::Path,
    program: &[OsString],
) -> Result<Command, String> {
    let (first, rest) = program
        .split_first()
        .ok_or("no command given: vgpu run [FLAGS] -- COMMAND [ARGS...]")?;
    let mut cmd = Command::new(first);
    cmd.args(rest);
    let (set, clear) = plan.environment();
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if clear
            .iter()
            .any(|base| key == *base || key.starts_with(&format!("{base}_")))
        {
            cmd.env_remove(key.as_ref());
        }
    }
    for (key, value) in set {
        cmd.env(key, value);
    }
    cmd.env(
        "LD_PRELOAD",
        preload_value(library, std::env::var_os("LD_PRELOAD")),
    );
    Ok(cmd)
}

/// Our library first, then whatever was preloaded already (once).
fn preload_value(library: &std::path::Path, existing: Option<OsString>) -> OsString {
    let mut value = OsString::from(library);
    if let Some(existing) = existing {
        for entry in existing
            .to_string_lossy()
            .split([':', ' '])
            .filter(|e| !e.is_empty())
        {
            if std::path::Path::new(entry) != library {
                value.push(":");
                value.push(entry);
            }
        }
    }
    value
}

/// Runs the command and returns the exit status `vgpu` should exit with: the command's own, or
/// 128 + the signal that killed it (as a shell reports it). 127: not found; 126: not runnable.
pub fn run(plan: &RunPlan, program: &[OsString]) -> Result<i32, String> {
    let library = crate::locate::libvgpu()?;
    let mut cmd = command(plan, &library, program)?;
    let name = program[0].to_string_lossy().into_owned();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("vgpu run: {name}: command not found");
            return Ok(127);
        }
        Err(e) => {
            eprintln!("vgpu run: cannot run {name}: {e}");
            return Ok(126);
        }
    };
    crate::sys::forward_signals_to(child.id());
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {name}: {e}"))?;
    Ok(exit_code(status))
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_limits_without_devices() {
        let plan = RunPlan::new(Some("4Gi"), Some("30"), None, None, None).unwrap();
        let (set, clear) = plan.environment();
        assert_eq!(
            set,
            vec![
                (
                    "CUDA_DEVICE_MEMORY_LIMIT".to_string(),
                    OsString::from("4Gi")
                ),
                ("CUDA_DEVICE_SM_LIMIT".to_string(), OsString::from("30")),
            ]
        );
        assert_eq!(clear, ["CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT"]);
    }

    #[test]
    fn per_device_limits_with_devices() {
        let plan = RunPlan::new(
            Some("1g"),
            None,
            Some("0,2"),
            Some("/r.cache".into()),
            Some("0"),
        )
        .unwrap();
        let (set, _) = plan.environment();
        let keys: Vec<&str> = set.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "CUDA_DEVICE_MEMORY_LIMIT_0",
                "CUDA_DEVICE_MEMORY_LIMIT_2",
                "CUDA_DEVICE_MEMORY_SHARED_CACHE",
                "CUDA_TASK_PRIORITY"
            ]
        );
    }

    #[test]
    fn bad_flags_are_explained() {
        let err = RunPlan::new(Some("1.5g"), None, None, None, None).unwrap_err();
        assert!(err.starts_with("--memory \"1.5g\""), "{err}");
        assert!(RunPlan::new(None, Some("101"), None, None, None).is_err());
        assert!(RunPlan::new(None, Some("30"), Some("0,0"), None, None).is_err());
        assert!(RunPlan::new(None, Some("30"), Some("16"), None, None).is_err());
        assert!(RunPlan::new(None, None, Some("0"), None, None).is_err());
    }

    #[test]
    fn preload_keeps_other_libraries_once() {
        let lib = std::path::Path::new("/x/libvgpu.so");
        assert_eq!(preload_value(lib, None), OsString::from("/x/libvgpu.so"));
        assert_eq!(
            preload_value(lib, Some("/a.so /x/libvgpu.so:/b.so".into())),
            OsString::from("/x/libvgpu.so:/a.so:/b.so")
        );
    }
}
