//! The simulated machine's configuration: devices (`SIMGPU_DEVICES`), driver version
//! (`SIMGPU_DRIVER_VERSION`) and where the shared state lives (`SIMGPU_STATE`). Plain parsing, no FFI:
//! every rule here is unit-tested with strings.

use crate::faults::Faults;
use crate::SimError;

/// Most devices one simulated machine can have (the shared layout has fixed-size per-process tables).
pub const MAX_DEVICES: usize = 16;

/// Default `SIMGPU_DRIVER_VERSION`: CUDA 12.9, the headers our bindings come from.
pub const DEFAULT_DRIVER_VERSION: i32 = 12090;

/// One simulated GPU, as configured. Immutable once the machine is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Position in the machine (the CUDA ordinal and NVML index when nothing is hidden).
    pub index: u32,
    /// Marketing name, e.g. `NVIDIA A100-SXM4-40GB` (what `cuDeviceGetName` and `nvmlDeviceGetName` report).
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form NVML prints. Unique within the machine.
    pub uuid: String,
    /// Total device memory in bytes.
    pub mem_bytes: u64,
    /// Streaming multiprocessor count.
    pub sms: u32,
    pub cc_major: u32,
    pub cc_minor: u32,
    /// `00000000:3B:00.0` (domain:bus:device.function, upper-case hex, as NVML prints it).
    pub pci_bus_id: String,
    /// SM clock in MHz (reported as both current and maximum clock).
    pub clock_mhz: u32,
    /// PCI device id in NVML's form: `(device << 16) | vendor`, vendor 0x10DE. Derived from the name.
    pub pci_device_id: u32,
    /// PCI subsystem id (NVML `pciSubSystemId`). Derived from the name.
    pub pci_subsystem_id: u32,
}

impl DeviceSpec {
    /// PCI domain, bus, device (slot) and function parsed from `pci_bus_id` (validated at parse time).
    pub fn pci_parts(&self) -> (u32, u32, u32, u32) {
        parse_pci(&self.pci_bus_id).unwrap_or((0, 0, 0, 0))
    }

    /// Canonical one-line spec: parsing it gives this device back. Stored in the state file so every
    /// process attached to one file sees the same machine.
    pub fn canonical(&self) -> String {
        format!(
            "name={},uuid={},mem={},sms={},cc={}.{},pci={},clock_mhz={}",
            self.name,
            self.uuid,
            self.mem_bytes,
            self.sms,
            self.cc_major,
            self.cc_minor,
            self.pci_bus_id,
            self.clock_mhz
        )
    }
}

/// Everything a process needs to open the machine.
#[derive(Clone, Debug)]
pub struct Config {
    pub devices: Vec<DeviceSpec>,
    /// What `cuDriverGetVersion` reports (`SIMGPU_DRIVER_VERSION`, default 12090).
    pub driver_version: i32,
    pub faults: Faults,
}

impl Config {
    /// The default machine (two GPUs), default driver version, no faults.
    pub fn default_machine() -> Config {
        Config {
            devices: default_devices(),
            driver_version: DEFAULT_DRIVER_VERSION,
            faults: Faults::none(),
        }
    }

    /// Read `SIMGPU_DEVICES`, `SIMGPU_DRIVER_VERSION` and the fault variables through `get`
    /// (the environment in production, a map in tests). Errors name the variable.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, SimError> {
        let devices = match get("SIMGPU_DEVICES") {
            None => default_devices(),
            Some(spec) => {
                let text = match spec.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path).map_err(|e| {
                        SimError::InvalidConfig(format!("SIMGPU_DEVICES: cannot read {path}: {e}"))
                    })?,
                    None => spec,
                };
                parse_devices(&text)
                    .map_err(|e| SimError::InvalidConfig(format!("SIMGPU_DEVICES: {e}")))?
            }
        };
        let driver_version = match get("SIMGPU_DRIVER_VERSION") {
            None => DEFAULT_DRIVER_VERSION,
            Some(v) => match v.trim().parse::<i32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(SimError::InvalidConfig(format!(
                        "SIMGPU_DRIVER_VERSION: {v:?} is not a positive integer like 12090"
                    )))
                }
            },
        };
        let faults = Faults::from_lookup(get, devices.len())?;
        Ok(Config {
            devices,
            driver_version,
            faults,
        })
    }

    /// [`Config::from_lookup`] over the process environment.
    pub fn from_env() -> Result<Config, SimError> {
        Config::from_lookup(&|key| std::env::var(key).ok())
    }
}

/// `SIMGPU_STATE`, or `/tmp/simgpu-<uid>.state`.
pub fn state_path_from_env() -> std::path::PathBuf {
    match std::env::var_os("SIMGPU_STATE") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::PathBuf::from(format!("/tmp/simgpu-{}.state", crate::sys::uid())),
    }
}

/// The two GPUs a machine has when `SIMGPU_DEVICES` is unset.
pub fn default_devices() -> Vec<DeviceSpec> {
    // Both specs go through the parser so defaults and configured devices follow one set of rules.
    parse_devices("name=NVIDIA A100-SXM4-40GB;name=NVIDIA L4,mem=24Gi,sms=58,cc=8.9,clock_mhz=2040")
        .unwrap_or_default()
}

/// Parse a device list: `;`-separated devices or one device per line; each a `,`-separated
/// `key=value` list; `#` starts a comment. Keys: `name`, `uuid`, `mem`, `sms`, `cc`, `pci`, `clock_mhz`.
pub fn parse_devices(text: &str) -> Result<Vec<DeviceSpec>, String> {
    let mut devices = Vec::new();
    for line in text.lines() {
        let line = match line.find('#') {
            Some(at) => &line[..at],
            None => line,
        };
        for device in line.split(';') {
            if device.trim().is_empty() {
                continue;
            }
            let index = devices.len() as u32;
            let spec = parse_device(index, device)
                .map_err(|e| format!("device {index} ({:?}): {e}", device.trim()))?;
            devices.push(spec);
        }
    }
    if devices.is_empty() {
        return Err(
            "no devices: give at least one, e.g. `name=NVIDIA A100-SXM4-40GB,mem=40Gi`".into(),
        );
    }
    if devices.len() > MAX_DEVICES {
        return Err(format!(
            "{} devices, at most {MAX_DEVICES} are supported",
            devices.len()
        ));
    }
    for (i, a) in devices.iter().enumerate() {
        for b in &devices[..i] {
            if a.uuid == b.uuid {
                return Err(format!(
                    "devices {} and {} have the same uuid {}",
                    b.index, a.index, a.uuid
                ));
            }
            if a.pci_bus_id == b.pci_bus_id {
                return Err(format!(
                    "devices {} and {} have the same pci bus id {}",
                    b.index, a.index, a.pci_bus_id
                ));
            }
        }
    }
    Ok(devices)
}

fn parse_device(index: u32, text: &str) -> Result<DeviceSpec, String> {
    let mut name = None;
    let mut uuid = None;
    let mut mem_bytes = None;
    let mut sms = None;
    let mut cc = None;
    let mut pci = None;
    let mut clock_mhz = None;
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{item:?} is not key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        let seen = match key {
            "name" => name.replace(check_name(value)?).is_some(),
            "uuid" => uuid.replace(check_uuid(value)?).is_some(),
            "mem" => mem_bytes.replace(parse_size(value)?).is_some(),
            "sms" => sms.replace(parse_count(value, "sms", 1, 4096)?).is_some(),
            "cc" => cc.replace(parse_cc(value)?).is_some(),
            "pci" => pci.replace(check_pci(value)?).is_some(),
            "clock_mhz" => clock_mhz
                .replace(parse_count(value, "clock_mhz", 1, 100_000)?)
                .is_some(),
            _ => {
                return Err(format!(
                    "unknown key {key:?} (known: name, uuid, mem, sms, cc, pci, clock_mhz)"
                ))
            }
        };
        if seen {
            return Err(format!("key {key:?} given twice"));
        }
    }
    let name = name.unwrap_or_else(|| "NVIDIA A100-SXM4-40GB".to_string());
    let profile = profile_for(&name);
    let (cc_major, cc_minor) = cc.unwrap_or(profile.cc);
    Ok(DeviceSpec {
        index,
        uuid: uuid.unwrap_or_else(|| default_uuid(index, &name)),
        mem_bytes: mem_bytes.unwrap_or(profile.mem_bytes),
        sms: sms.unwrap_or(profile.sms),
        cc_major,
        cc_minor,
        // Bus numbers 0x07, 0x0F, 0x47, ... like a DGX: unique per index, plausible to tools.
        pci_bus_id: pci.unwrap_or_else(|| format!("00000000:{:02X}:00.0", (7 + 8 * index) & 0xFF)),
        clock_mhz: clock_mhz.unwrap_or(profile.clock_mhz),
        pci_device_id: (profile.pci_device << 16) | 0x10DE,
        pci_subsystem_id: (profile.pci_subsystem << 16) | 0x10DE,
        name,
    })
}

/// Defaults that depend on the device name, so `name=NVIDIA L4` alone is a plausible L4.
struct Profile {
    mem_bytes: u64,
    sms: u32,
    cc: (u32, u32),
    clock_mhz: u32,
    pci_device: u32,
    pci_subsystem: u32,
}

fn profile_for(name: &str) -> Profile {
    const GI: u64 = 1 << 30;
    // Public PCI ids (pci.ids) and spec-sheet figures; anything unknown gets the A100's.
    let n = name.to_ascii_uppercase();
    if n.contains("L4") && !n.contains("L40") {
        Profile {
            mem_bytes: 24 * GI,
            sms: 58,
            cc: (8, 9),
            clock_mhz: 2040,
            pci_device: 0x27B8,
            pci_subsystem: 0x16CA,
        }
    } else if n.contains("H100") {
        Profile {
            mem_bytes: 80 * GI,
            sms: 132,
            cc: (9, 0),
            clock_mhz: 1980,
            pci_device: 0x2330,
            pci_subsystem: 0x16C1,
        }
    } else if n.contains("H200") {
        Profile {
            mem_bytes: 141 * GI,
            sms: 132,
            cc: (9, 0),
            clock_mhz: 1980,
            pci_device: 0x2335,
            pci_subsystem: 0x18BE,
        }
    } else if n.contains("T4") {
        Profile {
            mem_bytes: 16 * GI,
            sms: 40,
            cc: (7, 5),
            clock_mhz: 1590,
            pci_device: 0x1EB8,
            pci_subsystem: 0x12A2,
        }
    } else if n.contains("A100") && n.contains("80GB") {
        Profile {
            mem_bytes: 80 * GI,
            sms: 108,
            cc: (8, 0),
            clock_mhz: 1410,
            pci_device: 0x20B2,
            pci_subsystem: 0x1463,
        }
    } else {
        Profile {
            mem_bytes: 40 * GI,
            sms: 108,
            cc: (8, 0),
            clock_mhz: 1410,
            pci_device: 0x20B0,
            pci_subsystem: 0x134F,
        }
    }
}

fn check_name(value: &str) -> Result<String, String> {
    // NVML_DEVICE_NAME_V2_BUFFER_SIZE is 96 including the NUL.
    if value.is_empty()
        || value.len() > 95
        || value.contains(['=', ';'])
        || value.chars().any(|c| c.is_control())
    {
        return Err(format!(
            "name {value:?} must be 1 to 95 printable characters"
        ));
    }
    Ok(value.to_string())
}

fn check_uuid(value: &str) -> Result<String, String> {
    let ok = value.len() == 40
        && value.starts_with("GPU-")
        && value[4..].char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        return Err(format!(
            "uuid {value:?} is not like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)"
        ));
    }
    Ok(format!("GPU-{}", value[4..].to_ascii_lowercase()))
}

fn check_pci(value: &str) -> Result<String, String> {
    let (domain, bus, device, function) = parse_pci(value)
        .ok_or_else(|| format!("pci {value:?} is not a bus id like 00000000:3B:00.0"))?;
    Ok(format!("{domain:08X}:{bus:02X}:{device:02X}.{function:X}"))
}

/// `dddddddd:bb:dd.f` (domain may be 4 or 8 hex digits).
fn parse_pci(value: &str) -> Option<(u32, u32, u32, u32)> {
    let (domain, rest) = value.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str, max_len: usize, max: u32| -> Option<u32> {
        if s.is_empty() || s.len() > max_len {
            return None;
        }
        u32::from_str_radix(s, 16).ok().filter(|v| *v <= max)
    };
    Some((
        hex(domain, 8, u32::MAX)?,
        hex(bus, 2, 0xFF)?,
        hex(device, 2, 0x1F)?,
        hex(function, 1, 7)?,
    ))
}

/// A size: plain bytes, or a number with a binary suffix `K`, `M`, `G`, `T` (optionally `i` and/or `B`,
/// any case): `16Gi`, `80GiB`, `1024Mi`, `40G` all mean powers of 1024, as nvidia-smi's MiB do.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let bad = || format!("mem {value:?} is not a size like 16Gi, 80GiB, 1024Mi or a byte count");
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let suffix = suffix.to_ascii_lowercase();
    let shift = match suffix.trim_end_matches('b').trim_end_matches('i') {
        "" if suffix.is_empty() || suffix == "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("mem {value:?} overflows 64 bits"))?;
    if bytes == 0 {
        return Err(format!("mem {value:?} must be more than zero"));
    }
    Ok(bytes)
}

fn parse_count(value: &str, key: &str, min: u32, max: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{key} {value:?} must be a whole number from {min} to {max}"
        )),
    }
}

fn parse_cc(value: &str) -> Result<(u32, u32), String> {
    let bad = || format!("cc {value:?} is not a compute capability like 8.0");
    let (major, minor) = value.split_once('.').ok_or_else(bad)?;
    let major: u32 = major.parse().map_err(|_| bad())?;
    let minor: u32 = minor.parse().map_err(|_| bad())?;
    if !(1..=20).contains(&major) || minor > 9 {
        return Err(bad());
    }
    Ok((major, minor))
}

/// A deterministic UUID from the index and name, so the same configuration always names its GPUs the same.
pub fn default_uuid(index: u32, name: &str) -> String {
    let a = fnv1a(format!("simgpu:{index}:{name}").as_bytes());
    let b = fnv1a(format!("{name}:{index}:simgpu").as_bytes());
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_two_gpus() {
        let d = default_devices();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(d[0].mem_bytes, 40 << 30);
        assert_eq!((d[0].sms, d[0].cc_major, d[0].cc_minor), (108, 8, 0));
        assert_eq!(d[1].name, "NVIDIA L4");
        assert_eq!(d[1].mem_bytes, 24 << 30);
        assert_eq!((d[1].sms, d[1].cc_major, d[1].cc_minor), (58, 8, 9));
        assert_ne!(d[0].uuid, d[1].uuid);
        assert_ne!(d[0].pci_bus_id, d[1].pci_bus_id);
        assert!(check_uuid(&d[0].uuid).is_ok(), "{}", d[0].uuid);
        assert_eq!(d[0].uuid, default_uuid(0, "NVIDIA A100-SXM4-40GB"));
        assert_eq!(d[0].pci_device_id, 0x20B0_10DE);
    }

    #[test]
    fn full_spec_and_file_form() {
        let text = "# two cards\nname=Tiny,mem=1024Mi,sms=16,cc=7.5,pci=0000:3b:00.0,clock_mhz=1000 # small\n\n\
                    uuid=GPU-12345678-1234-1234-1234-1234567890AB,mem=80GiB\n";
        let d = parse_devices(text).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "Tiny");
        assert_eq!(d[0].mem_bytes, 1 << 30);
        assert_eq!(
            (d[0].sms, d[0].cc_major, d[0].cc_minor, d[0].clock_mhz),
            (16, 7, 5, 1000)
        );
        assert_eq!(d[0].pci_bus_id, "00000000:3B:00.0");
        assert_eq!(d[0].pci_parts(), (0, 0x3B, 0, 0));
        assert_eq!(d[1].uuid, "GPU-12345678-1234-1234-1234-1234567890ab");
        assert_eq!(d[1].mem_bytes, 80 << 30);
        assert_eq!(d[1].index, 1);
        // The canonical form parses back to the same device.
        let again = parse_devices(&d[0].canonical()).unwrap();
        assert_eq!(again[0], d[0]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16Gi"), Ok(16 << 30));
        assert_eq!(parse_size("80GiB"), Ok(80 << 30));
        assert_eq!(parse_size("1024Mi"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in [
            "",
            "0",
            "-1",
            "1.5Gi",
            "12Qi",
            "Gi",
            "99999999999999999999",
            "16777216T",
            "1 Gi",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn malformed_specs_are_errors() {
        for bad in [
            "",
            "# only a comment",
            "mem",
            "mem=lots",
            "foo=1",
            "sms=0",
            "sms=abc",
            "cc=8",
            "cc=x.y",
            "pci=3B:00.0",
            "uuid=GPU-1",
            "name=a,name=b",
            "uuid=GPU-12345678-1234-1234-1234-1234567890ab;uuid=GPU-12345678-1234-1234-1234-1234567890AB",
            "pci=00000000:01:00.0;pci=00000000:01:00.0", // same bus id
        ] {
            assert!(parse_devices(bad).is_err(), "{bad:?} accepted");
        }
        let many = vec!["name=x"; MAX_DEVICES + 1]
            .iter()
            .enumerate()
            .map(|(i, _)| format!("name=x{i}"))
            .collect::<Vec<_>>()
            .join(";");
        assert!(parse_devices(&many).is_err());
    }

    #[test]
    fn env_lookup_names_the_variable() {
        let get = |k: &str| match k {
            "SIMGPU_DEVICES" => Some("mem=oops".to_string()),
            _ => None,
        };
        match Config::from_lookup(&get) {
            Err(SimError::InvalidConfig(msg)) => assert!(msg.contains("SIMGPU_DEVICES"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let get = |k: &str| match k {
            "SIMGPU_DRIVER_VERSION" => Some("twelve".to_string()),
            _ => None,
        };
        match Config::from_lookup(&get) {
            Err(SimError::InvalidConfig(msg)) => {
                assert!(msg.contains("SIMGPU_DRIVER_VERSION"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        let c = Config::from_lookup(&|_| None).unwrap();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.driver_version, 12090);
    }

    #[test]
    fn spec_from_file() {
        let path = std::env::temp_dir().join(format!("simgpu-spec-{}.txt", std::process::id()));
        std::fs::write(
            &path,
            "name=NVIDIA H100 80GB HBM3\n# second\nname=NVIDIA T4\n",
        )
        .unwrap();
        let spec = format!("@{}", path.display());
        let c = Config::from_lookup(&|k| (k == "SIMGPU_DEVICES").then(|| spec.clone())).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(c.devices.len(), 2);
        assert_eq!((c.devices[0].sms, c.devices[0].mem_bytes), (132, 80 << 30));
        assert_eq!(
            (
                c.devices[1].sms,
                c.devices[1].cc_major,
                c.devices[1].cc_minor
            ),
            (40, 7, 5)
        );
        let missing = Config::from_lookup(&|k| {
            (k == "SIMGPU_DEVICES").then(|| "@/nonexistent/x".to_string())
        });
        assert!(matches!(missing, Err(SimError::InvalidConfig(m)) if m.contains("SIMGPU_DEVICES")));
    }
}
