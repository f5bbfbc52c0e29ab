//! The environment, parsed once (hami-contract.md section 2, "vgpu behaviour" column).
//!
//! [`Config::from_vars`] takes every `(name, value)` pair of the environment; [`Config::from_env`] takes
//! a getter and can only look up the names it knows (`CUDA_DEVICE_MEMORY_LIMIT_0..15` and so on), so it
//! cannot notice a malformed index such as `CUDA_DEVICE_MEMORY_LIMIT_16` or `_x`. The runtime should
//! use `from_vars` with the names it finds in `environ`.
//!
//! Errors fail closed (section 2.3): a malformed limit, SM percentage, priority or core policy is a
//! [`ConfigError`] whose `Display` is the one stderr line the contract asks for. Problems that must never
//! fail closed (log level, kernel-record interval) become [`Config::warnings`]; lines worth one info
//! message (`0` meaning "no limit", `CUDA_OVERSUBSCRIBE` ignored) become [`Config::notices`].
//!
//! Empty values count as unset, except `GPU_CORE_UTILIZATION_POLICY`, where empty is `default`
//! (same result). `CUDA_DISABLE_CONTROL` is never read (section 1.4).
//!
//! Device indices: the `_<i>` suffix counts the container's allocated GPUs in the device plugin's order.
//! [`Config::env_index_for`] turns a device (its UUID and container NVML index) into that `i`, using
//! `NVIDIA_VISIBLE_DEVICES` when it is a list of `GPU-` UUIDs (section 2.4), and
//! [`Config::region_setup`] builds the region's device block from the container's devices.

use std::fmt;

use crate::region::{DeviceSetup, RegionSetup, MAX_DEVICES};

/// Per-device memory limit variable (global form; `_<i>` appended for overrides).
pub const MEMORY_LIMIT_VAR: &str = "CUDA_DEVICE_MEMORY_LIMIT";
/// Per-device SM percentage variable (global form; `_<i>` appended for overrides).
pub const SM_LIMIT_VAR: &str = "CUDA_DEVICE_SM_LIMIT";
/// Region file path variable.
pub const SHARED_CACHE_VAR: &str = "CUDA_DEVICE_MEMORY_SHARED_CACHE";
/// Default region path when the variable is unset (hami-contract.md 1.4).
pub const DEFAULT_SHARED_CACHE: &str = "/tmp/cudevshr.cache";
/// Priority variable (0 high, 1 low).
pub const PRIORITY_VAR: &str = "CUDA_TASK_PRIORITY";
/// Core limiter policy variable.
pub const CORE_POLICY_VAR: &str = "GPU_CORE_UTILIZATION_POLICY";
/// Log level variable.
pub const LOG_LEVEL_VAR: &str = "LIBCUDA_LOG_LEVEL";
/// Oversubscription switch (accepted and ignored).
pub const OVERSUBSCRIBE_VAR: &str = "CUDA_OVERSUBSCRIBE";
/// Minimum seconds between `last_kernel_time` writes.
pub const RECORD_KERNEL_INTERVAL_VAR: &str = "RECORD_KERNEL_INTERVAL";
/// The device plugin's list of allocated GPUs.
pub const VISIBLE_DEVICES_VAR: &str = "NVIDIA_VISIBLE_DEVICES";

/// The accepted size grammar, quoted in error lines.
pub const SIZE_GRAMMAR: &str =
    "DIGITS[UNIT]: decimal bytes without sign, spaces or leading zeros, \
     UNIT one of k/Ki/KiB, m/Mi/MiB, g/Gi/GiB, t/Ti/TiB (powers of 1024, any case); 0 = no limit";
const SM_GRAMMAR: &str = "a decimal integer 0..100 without suffix (0 or 100 = no limit)";
const PRIORITY_GRAMMAR: &str = "a decimal integer >= 0 (0 = high, 1 = low)";
const POLICY_GRAMMAR: &str = "default, force or disable (any case)";
const INDEX_GRAMMAR: &str = "an index suffix _0 .. _15 (decimal, no leading zeros)";

/// `LIBCUDA_LOG_LEVEL`: 0 error, 1 and 2 warn, 3 info, 4 debug.
pub const DEFAULT_LOG_LEVEL: u8 = 2;
/// `CUDA_TASK_PRIORITY` when unset.
pub const DEFAULT_PRIORITY: i32 = 1;
/// `RECORD_KERNEL_INTERVAL` when unset or malformed.
pub const DEFAULT_RECORD_KERNEL_INTERVAL_SECS: u64 = 1;

/// `GPU_CORE_UTILIZATION_POLICY` (hami-contract.md 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CorePolicy {
    /// SM limit only while the region's `utilization_switch` is 1; priority blocking honoured.
    #[default]
    Default,
    /// SM limit always; priority blocking honoured.
    Force,
    /// Neither SM limit nor priority blocking.
    Disable,
}

/// A value that cannot be accepted: the process must fail closed (hami-contract.md 2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable's name as found in the environment.
    pub variable: String,
    /// Its value.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` escapes control characters, so the message stays one line whatever the value holds.
        write!(
            f,
            "invalid {}={:?}: expected {}; GPU access is refused until it is fixed",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// An override for one `_<i>`: `Some(None)` is an explicit `0` (no limit on that device).
type Override<T> = Option<Option<T>>;

/// Everything vgpu reads from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `CUDA_DEVICE_MEMORY_LIMIT` in bytes; `None` = unset, empty or `0`.
    pub memory_limit: Option<u64>,
    /// `CUDA_DEVICE_MEMORY_LIMIT_<i>`; outer `None` = not set, `Some(None)` = `0` (no limit).
    pub memory_limit_overrides: [Override<u64>; MAX_DEVICES],
    /// `CUDA_DEVICE_SM_LIMIT` as a percentage in 1..=99; `None` = unset, 0 or 100.
    pub sm_limit: Option<u32>,
    /// `CUDA_DEVICE_SM_LIMIT_<i>`, same shape as the memory overrides.
    pub sm_limit_overrides: [Override<u32>; MAX_DEVICES],
    /// Region file path.
    pub shared_cache_path: String,
    /// `CUDA_TASK_PRIORITY` (default 1).
    pub task_priority: i32,
    /// `GPU_CORE_UTILIZATION_POLICY`.
    pub core_policy: CorePolicy,
    /// `LIBCUDA_LOG_LEVEL` 0..=4.
    pub log_level: u8,
    /// `CUDA_OVERSUBSCRIBE` was set (it changes nothing).
    pub oversubscribe_requested: bool,
    /// `RECORD_KERNEL_INTERVAL` in seconds.
    pub record_kernel_interval_secs: u64,
    /// `NVIDIA_VISIBLE_DEVICES` when it is a comma list of `GPU-` UUIDs, in order.
    pub visible_device_uuids: Option<Vec<String>>,
    /// Non-fatal problems, one line each, for the caller to log at warning level.
    pub warnings: Vec<String>,
    /// One-off facts worth an info line.
    pub notices: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            memory_limit: None,
            memory_limit_overrides: [None; MAX_DEVICES],
            sm_limit: None,
            sm_limit_overrides: [None; MAX_DEVICES],
            shared_cache_path: DEFAULT_SHARED_CACHE.to_string(),
            task_priority: DEFAULT_PRIORITY,
            core_policy: CorePolicy::Default,
            log_level: DEFAULT_LOG_LEVEL,
            oversubscribe_requested: false,
            record_kernel_interval_secs: DEFAULT_RECORD_KERNEL_INTERVAL_SECS,
            visible_device_uuids: None,
            warnings: Vec::new(),
            notices: Vec::new(),
        }
    }
}

/// Parses a size per hami-contract.md 2.2. `Ok(0)` only for a lone `0`.
pub fn parse_size(text: &str) -> Result<u64, &'static str> {
    let bytes = text.as_bytes();
    let digits_end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SIZE_GRAMMAR);
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(SIZE_GRAMMAR);
    }
    let mut value: u64 = 0;
    for b in digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(SIZE_GRAMMAR)?;
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" | "ki" | "kib" => 10,
        "m" | "mi" | "mib" => 20,
        "g" | "gi" | "gib" => 30,
        "t" | "ti" | "tib" => 40,
        _ => return Err(SIZE_GRAMMAR),
    };
    if value == 0 && shift != 0 {
        // `0m` is almost certainly a typo for something else; only a lone `0` means "no limit".
        return Err(SIZE_GRAMMAR);
    }
    value.checked_mul(1u64 << shift).ok_or(SIZE_GRAMMAR)
}

/// A decimal integer without sign or leading zeros (a lone `0` is fine).
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

fn parse_sm_percent(text: &str) -> Option<Option<u32>> {
    match parse_decimal(text)? {
        0 | 100 => Some(None),
        p @ 1..=99 => Some(Some(p as u32)),
        _ => None,
    }
}

/// Parses a `_<i>` suffix: decimal 0..=15, no leading zeros.
fn parse_index(suffix: &str) -> Option<usize> {
    let i = parse_decimal(suffix)?;
    usize::try_from(i).ok().filter(|&i| i < MAX_DEVICES)
}

fn error(variable: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        variable: variable.to_string(),
        value: value.to_string(),
        expected,
    }
}

impl Config {
    /// Reads the variables through `get`. Unknown index suffixes are invisible to a getter; prefer
    /// [`Config::from_vars`] when the names are available.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let lookup = |name: &str| get(name).filter(|v| !v.is_empty());

        if let Some(v) = lookup(MEMORY_LIMIT_VAR) {
            config.memory_limit = config.size_limit(MEMORY_LIMIT_VAR, &v)?;
        }
        if let Some(v) = lookup(SM_LIMIT_VAR) {
            config.sm_limit =
                parse_sm_percent(&v).ok_or_else(|| error(SM_LIMIT_VAR, &v, SM_GRAMMAR))?;
        }
        for i in 0..MAX_DEVICES {
            let name = format!("{MEMORY_LIMIT_VAR}_{i}");
            if let Some(v) = lookup(&name) {
                let limit = config.size_limit(&name, &v)?;
                if let Some(slot) = config.memory_limit_overrides.get_mut(i) {
                    *slot = Some(limit);
                }
            }
            let name = format!("{SM_LIMIT_VAR}_{i}");
            if let Some(v) = lookup(&name) {
                let percent = parse_sm_percent(&v).ok_or_else(|| error(&name, &v, SM_GRAMMAR))?;
                if let Some(slot) = config.sm_limit_overrides.get_mut(i) {
                    *slot = Some(percent);
                }
            }
        }
        if let Some(v) = lookup(SHARED_CACHE_VAR) {
            config.shared_cache_path = v;
        }
        if let Some(v) = lookup(PRIORITY_VAR) {
            config.task_priority = parse_decimal(&v)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| error(PRIORITY_VAR, &v, PRIORITY_GRAMMAR))?;
        }
        if let Some(v) = get(CORE_POLICY_VAR) {
            config.core_policy = match v.to_ascii_lowercase().as_str() {
                "" | "default" => CorePolicy::Default,
                "force" => CorePolicy::Force,
                "disable" => CorePolicy::Disable,
                _ => return Err(error(CORE_POLICY_VAR, &v, POLICY_GRAMMAR)),
            };
        }
        if let Some(v) = lookup(LOG_LEVEL_VAR) {
            match parse_decimal(&v) {
                Some(level @ 0..=4) => config.log_level = level as u8,
                _ => config.warnings.push(format!(
                    "ignoring {LOG_LEVEL_VAR}={v:?}: expected 0..4; using {DEFAULT_LOG_LEVEL}"
                )),
            }
        }
        if let Some(v) = lookup(OVERSUBSCRIBE_VAR) {
            config.oversubscribe_requested = true;
            config.notices.push(format!(
                "{OVERSUBSCRIBE_VAR}={v:?} is accepted and ignored: vgpu does not oversubscribe, limits are enforced"
            ));
        }
        if let Some(v) = lookup(RECORD_KERNEL_INTERVAL_VAR) {
            match parse_decimal(&v) {
                Some(secs) => config.record_kernel_interval_secs = secs,
                None => config.warnings.push(format!(
                    "ignoring {RECORD_KERNEL_INTERVAL_VAR}={v:?}: expected whole seconds; using {DEFAULT_RECORD_KERNEL_INTERVAL_SECS}"
                )),
            }
        }
        if let Some(v) = lookup(VISIBLE_DEVICES_VAR) {
            let entries: Vec<String> = v.split(',').map(|e| e.trim().to_string()).collect();
            if entries.iter().all(|e| e.len() > 4 && e.starts_with("GPU-")) {
                config.visible_device_uuids = Some(entries);
            }
        }
        Ok(config)
    }

    /// Reads every variable from the environment's `(name, value)` pairs, and also rejects malformed
    /// index suffixes (`CUDA_DEVICE_MEMORY_LIMIT_16`, `_x`, `_01`, `_`), which a getter cannot see.
    /// When a name appears twice, the first wins (as with `getenv`).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Config, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        for (name, value) in &vars {
            for prefix in [MEMORY_LIMIT_VAR, SM_LIMIT_VAR] {
                if let Some(suffix) = name.strip_prefix(prefix).and_then(|s| s.strip_prefix('_')) {
                    if parse_index(suffix).is_none() {
                        return Err(error(name, value, INDEX_GRAMMAR));
                    }
                }
            }
        }
        Config::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    /// Parses a memory limit value; `0` becomes "no limit" with a notice.
    fn size_limit(&mut self, variable: &str, value: &str) -> Result<Option<u64>, ConfigError> {
        match parse_size(value) {
            Ok(0) => {
                self.notices
                    .push(format!("{variable}=0 means no memory limit"));
                Ok(None)
            }
            Ok(bytes) => Ok(Some(bytes)),
            Err(expected) => Err(error(variable, value, expected)),
        }
    }

    /// Memory limit in bytes for the device whose `_<i>` index is `env_index`: the override if set,
    /// else the global value. `None` = no limit.
    pub fn memory_limit_for(&self, env_index: usize) -> Option<u64> {
        match self.memory_limit_overrides.get(env_index) {
            Some(Some(o)) => *o,
            _ => self.memory_limit,
        }
    }

    /// SM percentage (1..=99) for the device whose `_<i>` index is `env_index`; `None` = no limit.
    pub fn sm_limit_for(&self, env_index: usize) -> Option<u32> {
        match self.sm_limit_overrides.get(env_index) {
            Some(Some(o)) => *o,
            _ => self.sm_limit,
        }
    }

    /// Whether any memory or SM limit is configured at all (without one, vgpu may run pass-through
    /// when the region cannot be used, hami-contract.md 2.3).
    pub fn any_limit(&self) -> bool {
        self.memory_limit.is_some()
            || self.sm_limit.is_some()
            || self
                .memory_limit_overrides
                .iter()
                .any(|o| matches!(o, Some(Some(_))))
            || self
                .sm_limit_overrides
                .iter()
                .any(|o| matches!(o, Some(Some(_))))
    }

    /// The `_<i>` index of a device, given its UUID and its container NVML index (= region index):
    /// its position in `NVIDIA_VISIBLE_DEVICES` when that is a UUID list, otherwise the NVML index.
    /// `None` when the UUID list does not name the device (then only the global values apply).
    pub fn env_index_for(&self, uuid: &str, container_index: usize) -> Option<usize> {
        match &self.visible_device_uuids {
            Some(list) => list.iter().position(|u| u.eq_ignore_ascii_case(uuid)),
            None => Some(container_index),
        }
    }

    /// The region's device block for the container's devices (`uuids[i]` is container NVML index i),
    /// plus a warning for each `_<i>` override that matches no device.
    pub fn region_setup(&self, uuids: &[String]) -> (RegionSetup, Vec<String>) {
        let mut used = [false; MAX_DEVICES];
        let devices = uuids
            .iter()
            .take(MAX_DEVICES)
            .enumerate()
            .map(|(index, uuid)| {
                let env_index = self.env_index_for(uuid, index);
                if let Some(flag) = env_index.and_then(|i| used.get_mut(i)) {
                    *flag = true;
                }
                let (memory_limit, sm_limit_percent) = match env_index {
                    Some(i) => (self.memory_limit_for(i), self.sm_limit_for(i)),
                    None => (self.memory_limit, self.sm_limit),
                };
                DeviceSetup {
                    uuid: uuid.clone(),
                    memory_limit,
                    sm_limit_percent,
                }
            })
            .collect();
        let mut warnings = Vec::new();
        for (i, was_used) in used.iter().enumerate() {
            if *was_used {
                continue;
            }
            if matches!(self.memory_limit_overrides.get(i), Some(Some(_))) {
                warnings.push(format!(
                    "{MEMORY_LIMIT_VAR}_{i} is set but the container has no device {i}"
                ));
            }
            if matches!(self.sm_limit_overrides.get(i), Some(Some(_))) {
                warnings.push(format!(
                    "{SM_LIMIT_VAR}_{i} is set but the container has no device {i}"
                ));
            }
        }
        (
            RegionSetup {
                devices,
                priority: self.task_priority,
            },
            warnings,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().copied())
    }

    #[test]
    fn size_grammar_table() {
        // Every row of hami-contract.md 2.2, plus the unit spellings.
        let ok: &[(&str, u64)] = &[
            ("1073741824", GIB),
            ("1g", GIB),
            ("1024m", GIB),
            ("1048576k", GIB),
            ("1Gi", GIB),
            ("1GiB", GIB),
            ("1gib", GIB),
            ("1G", GIB),
            ("1GI", GIB),
            ("3000m", 3000 << 20),
            ("3000Mi", 3000 << 20),
            ("3000MIB", 3000 << 20),
            ("4K", 4096),
            ("4ki", 4096),
            ("4KiB", 4096),
            ("2t", 2 << 40),
            ("2Ti", 2 << 40),
            ("2TiB", 2 << 40),
            ("0", 0),
            ("1", 1),
            ("18446744073709551615", u64::MAX),
            ("16777215t", 16777215 << 40),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
        let rejected = [
            "1gb",
            "1GB",
            "1MB",
            "1kb",
            "1KB",
            "1TB",
            "1.5g",
            "0x10m",
            "010m",
            "00",
            "01",
            "-1",
            "+1",
            "abc",
            "0m",
            "0k",
            "0Gi",
            "",
            " 1g",
            "1g ",
            "1 g",
            "1e9",
            "18446744073709551616",
            "16777216t",
            "99999999999999999999g",
            "1b",
            "1B",
            "g",
            "1gg",
            "1Gib ",
            "1ib",
        ];
        for text in rejected {
            assert!(parse_size(text).is_err(), "{text:?} must be rejected");
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = from(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.shared_cache_path, "/tmp/cudevshr.cache");
        assert_eq!(c.task_priority, 1);
        assert_eq!(c.log_level, 2);
        assert_eq!(c.record_kernel_interval_secs, 1);
        assert_eq!(c.core_policy, CorePolicy::Default);
        assert!(!c.any_limit());
        assert_eq!(c.memory_limit_for(0), None);
        assert_eq!(c.sm_limit_for(3), None);
    }

    #[test]
    fn global_memory_limit() {
        let c = from(&[("CUDA_DEVICE_MEMORY_LIMIT", "3000m")]).unwrap();
        assert_eq!(c.memory_limit, Some(3000 << 20));
        assert!(c.any_limit());
        for i in 0..16 {
            assert_eq!(c.memory_limit_for(i), Some(3000 << 20));
        }
        // Empty = unset; 0 = no limit with a notice.
        assert_eq!(
            from(&[("CUDA_DEVICE_MEMORY_LIMIT", "")])
                .unwrap()
                .memory_limit,
            None
        );
        let zero = from(&[("CUDA_DEVICE_MEMORY_LIMIT", "0")]).unwrap();
        assert_eq!(zero.memory_limit, None);
        assert!(!zero.any_limit());
        assert_eq!(zero.notices.len(), 1);
        assert!(zero.notices[0].contains("CUDA_DEVICE_MEMORY_LIMIT=0"));
    }

    #[test]
    fn malformed_limits_fail_closed_with_one_clear_line() {
        for (name, value) in [
            ("CUDA_DEVICE_MEMORY_LIMIT", "1.5g"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "-1"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "0m"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "1GB"),
            ("CUDA_DEVICE_MEMORY_LIMIT_3", "abc"),
            ("CUDA_DEVICE_MEMORY_LIMIT_15", "99999999999999999999"),
            ("CUDA_DEVICE_SM_LIMIT", "50g"),
            ("CUDA_DEVICE_SM_LIMIT", "101"),
            ("CUDA_DEVICE_SM_LIMIT", "-5"),
            ("CUDA_DEVICE_SM_LIMIT", "050"),
            ("CUDA_DEVICE_SM_LIMIT", "50%"),
            ("CUDA_DEVICE_SM_LIMIT_1", "1.5"),
            ("CUDA_TASK_PRIORITY", "-1"),
            ("CUDA_TASK_PRIORITY", "high"),
            ("CUDA_TASK_PRIORITY", "99999999999"),
            ("GPU_CORE_UTILIZATION_POLICY", "forced"),
            ("GPU_CORE_UTILIZATION_POLICY", " force"),
            // Bad indices (only visible with from_vars).
            ("CUDA_DEVICE_MEMORY_LIMIT_16", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_x", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_01", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_-1", "1g"),
            ("CUDA_DEVICE_SM_LIMIT_16", "50"),
            ("CUDA_DEVICE_SM_LIMIT_a", "50"),
        ] {
            let err =
                from(&[(name, value)]).expect_err(&format!("{name}={value} must fail closed"));
            assert_eq!(err.variable, name);
            assert_eq!(err.value, value);
            let line = err.to_string();
            assert!(
                line.contains(name) && line.contains(&format!("{value:?}")),
                "{line}"
            );
            assert!(!line.contains('\n'), "one line: {line}");
        }
        // Control characters in the value stay escaped on the one line.
        let err =
            from(&[("CUDA_DEVICE_MEMORY_LIMIT", "1g\nCUDA_DEVICE_MEMORY_LIMIT=0")]).unwrap_err();
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn per_device_overrides() {
        let c = from(&[
            ("CUDA_DEVICE_MEMORY_LIMIT", "8g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_2", "0"),
            ("CUDA_DEVICE_MEMORY_LIMIT_15", "1Ti"),
            ("CUDA_DEVICE_SM_LIMIT", "30"),
            ("CUDA_DEVICE_SM_LIMIT_0", "100"),
            ("CUDA_DEVICE_SM_LIMIT_4", "75"),
        ])
        .unwrap();
        assert_eq!(c.memory_limit_for(0), Some(8 * GIB));
        assert_eq!(c.memory_limit_for(1), Some(2 * GIB));
        assert_eq!(
            c.memory_limit_for(2),
            None,
            "explicit 0 = no limit on that device"
        );
        assert_eq!(c.memory_limit_for(15), Some(1 << 40));
        assert_eq!(
            c.memory_limit_for(16),
            Some(8 * GIB),
            "out of range falls back to global"
        );
        assert_eq!(c.sm_limit_for(0), None);
        assert_eq!(c.sm_limit_for(1), Some(30));
        assert_eq!(c.sm_limit_for(4), Some(75));
        // An override alone is a limit.
        let only = from(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "3000m")]).unwrap();
        assert!(only.any_limit());
        assert_eq!(only.memory_limit_for(0), Some(3000 << 20));
        assert_eq!(only.memory_limit_for(1), None);
        let sm_only = from(&[("CUDA_DEVICE_SM_LIMIT_2", "10")]).unwrap();
        assert!(sm_only.any_limit());
        // Empty override = unset (global applies).
        let empty = from(&[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", ""),
        ])
        .unwrap();
        assert_eq!(empty.memory_limit_for(0), Some(GIB));
    }

    #[test]
    fn sm_limit_table() {
        for (v, want) in [
            ("0", None),
            ("100", None),
            ("1", Some(1)),
            ("50", Some(50)),
            ("99", Some(99)),
        ] {
            assert_eq!(
                from(&[("CUDA_DEVICE_SM_LIMIT", v)]).unwrap().sm_limit,
                want,
                "{v}"
            );
        }
        assert!(!from(&[("CUDA_DEVICE_SM_LIMIT", "100")])
            .unwrap()
            .any_limit());
    }

    #[test]
    fn cache_path_priority_policy() {
        let c = from(&[
            (
                "CUDA_DEVICE_MEMORY_SHARED_CACHE",
                "/usr/local/vgpu/abc.cache",
            ),
            ("CUDA_TASK_PRIORITY", "0"),
            ("GPU_CORE_UTILIZATION_POLICY", "FORCE"),
        ])
        .unwrap();
        assert_eq!(c.shared_cache_path, "/usr/local/vgpu/abc.cache");
        assert_eq!(c.task_priority, 0);
        assert_eq!(c.core_policy, CorePolicy::Force);
        for (v, want) in [
            ("", CorePolicy::Default),
            ("default", CorePolicy::Default),
            ("Default", CorePolicy::Default),
            ("force", CorePolicy::Force),
            ("Force", CorePolicy::Force),
            ("disable", CorePolicy::Disable),
            ("DISABLE", CorePolicy::Disable),
        ] {
            assert_eq!(
                from(&[("GPU_CORE_UTILIZATION_POLICY", v)])
                    .unwrap()
                    .core_policy,
                want,
                "{v:?}"
            );
        }
        assert_eq!(
            from(&[("CUDA_TASK_PRIORITY", "7")]).unwrap().task_priority,
            7
        );
        assert_eq!(
            from(&[("CUDA_TASK_PRIORITY", "")]).unwrap().task_priority,
            1
        );
        assert_eq!(
            from(&[("CUDA_DEVICE_MEMORY_SHARED_CACHE", "")])
                .unwrap()
                .shared_cache_path,
            DEFAULT_SHARED_CACHE
        );
    }

    #[test]
    fn log_level_and_interval_never_fail() {
        for (v, want) in [("0", 0), ("1", 1), ("2", 2), ("3", 3), ("4", 4)] {
            let c = from(&[("LIBCUDA_LOG_LEVEL", v)]).unwrap();
            assert_eq!(c.log_level, want);
            assert!(c.warnings.is_empty());
        }
        for v in ["5", "-1", "debug", "02", " 3"] {
            let c = from(&[("LIBCUDA_LOG_LEVEL", v)]).unwrap();
            assert_eq!(c.log_level, 2, "{v:?}");
            assert_eq!(c.warnings.len(), 1, "{v:?}");
            assert!(c.warnings[0].contains("LIBCUDA_LOG_LEVEL"));
        }
        assert_eq!(
            from(&[("RECORD_KERNEL_INTERVAL", "5")])
                .unwrap()
                .record_kernel_interval_secs,
            5
        );
        assert_eq!(
            from(&[("RECORD_KERNEL_INTERVAL", "0")])
                .unwrap()
                .record_kernel_interval_secs,
            0
        );
        for v in ["x", "-1", "1.5", "1s"] {
            let c = from(&[("RECORD_KERNEL_INTERVAL", v)]).unwrap();
            assert_eq!(c.record_kernel_interval_secs, 1);
            assert_eq!(c.warnings.len(), 1);
        }
    }

    #[test]
    fn oversubscribe_is_noted_and_ignored() {
        let c = from(&[
            ("CUDA_OVERSUBSCRIBE", "true"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
        ])
        .unwrap();
        assert!(c.oversubscribe_requested);
        assert_eq!(c.memory_limit, Some(GIB));
        assert!(c.notices.iter().any(|n| n.contains("CUDA_OVERSUBSCRIBE")));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn disable_control_is_never_read() {
        let seen = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_env(|name| {
            seen.borrow_mut().push(name.to_string());
            None
        });
        assert!(!seen.borrow().iter().any(|n| n.contains("DISABLE_CONTROL")));
        // And setting it changes nothing.
        let c = from(&[
            ("CUDA_DISABLE_CONTROL", "true"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
        ])
        .unwrap();
        assert_eq!(c.memory_limit, Some(GIB));
    }

    #[test]
    fn visible_devices_order_the_overrides() {
        let a = "GPU-aaaaaaaa-0000-0000-0000-000000000000";
        let b = "GPU-bbbbbbbb-0000-0000-0000-000000000000";
        let c = from(&[
            ("NVIDIA_VISIBLE_DEVICES", &format!("{b},{a}")),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
        ])
        .unwrap();
        assert_eq!(
            c.visible_device_uuids.as_deref(),
            Some(&[b.to_string(), a.to_string()][..])
        );
        // The container's NVML order is a, b; the plugin's order is b, a.
        assert_eq!(c.env_index_for(a, 0), Some(1));
        assert_eq!(c.env_index_for(b, 1), Some(0));
        let (setup, warnings) = c.region_setup(&[a.to_string(), b.to_string()]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(setup.devices[0].uuid, a);
        assert_eq!(setup.devices[0].memory_limit, Some(2 * GIB));
        assert_eq!(setup.devices[1].memory_limit, Some(GIB));
        assert_eq!(setup.priority, 1);
        for other in ["all", "0,1", "none", "GPU-a,MIG-b", "", "void"] {
            let c = from(&[("NVIDIA_VISIBLE_DEVICES", other)]).unwrap();
            assert_eq!(c.visible_device_uuids, None, "{other:?}");
            assert_eq!(c.env_index_for(a, 3), Some(3));
        }
    }

    #[test]
    fn override_without_device_warns() {
        let c = from(&[
            ("CUDA_DEVICE_MEMORY_LIMIT_3", "1g"),
            ("CUDA_DEVICE_SM_LIMIT_5", "20"),
        ])
        .unwrap();
        let (setup, warnings) = c.region_setup(&["GPU-x0".to_string()]);
        assert_eq!(setup.devices.len(), 1);
        assert_eq!(setup.devices[0].memory_limit, None);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        // A UUID list that does not name the device: only global values apply to it.
        let c = from(&[
            ("NVIDIA_VISIBLE_DEVICES", "GPU-other"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
        ])
        .unwrap();
        let (setup, warnings) = c.region_setup(&["GPU-mine".to_string()]);
        assert_eq!(setup.devices[0].memory_limit, Some(4 * GIB));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn first_duplicate_name_wins() {
        let c = from(&[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT", "2g"),
        ])
        .unwrap();
        assert_eq!(c.memory_limit, Some(GIB));
    }
}
