//! Validating `vgpu run`'s flags with the library's own parser (`vgpu_policy::config`), so that what
//! `vgpu run` accepts is exactly what libvgpu.so will accept from the environment, and a value it
//! would refuse (failing closed) is refused here, before anything runs.

use vgpu_policy::config::{self, Config};

/// Bytes, or 0 for "no limit".
pub fn parse_memory(text: &str) -> Result<u64, String> {
    config::parse_size(text).map_err(|grammar| format!("expected {grammar}"))
}

/// Runs the library's environment parser on one variable, and returns its verdict.
fn check_variable(name: &str, value: &str) -> Result<Config, String> {
    Config::from_vars([(name, value)]).map_err(|e| format!("expected {}", e.expected))
}

/// A percent of the device's compute, 0..=100 (0 and 100 mean no limit).
pub fn parse_cores(text: &str) -> Result<u32, String> {
    check_variable(config::SM_LIMIT_VAR, text)?;
    text.parse()
        .map_err(|_| "expected a percent from 0 to 100".to_string())
}

/// `0,1,3`: device indices 0..=15, each once (the `_<i>` suffixes the library accepts).
pub fn parse_device_list(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        check_variable(&format!("{}_{item}", config::SM_LIMIT_VAR), "50")
            .map_err(|_| format!("{item:?} is not a device index from 0 to 15"))?;
        let index: u32 = item
            .parse()
            .map_err(|_| format!("{item:?} is not a device index"))?;
        if out.contains(&index) {
            return Err(format!("device {index} is listed twice"));
        }
        out.push(index);
    }
    Ok(out)
}

/// HAMi's task priority: 0 high, 1 low.
pub fn parse_priority(text: &str) -> Result<u32, String> {
    let parsed = check_variable(config::PRIORITY_VAR, text)?;
    u32::try_from(parsed.task_priority).map_err(|_| "expected an integer >= 0".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_grammar_is_the_library_grammar() {
        assert_eq!(parse_memory("4Gi"), Ok(4 << 30));
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_memory("0"), Ok(0));
        for bad in [
            "",
            "1.5g",
            "-1",
            "1GB",
            "0x10",
            "010",
            "0m",
            "99999999999999999999",
            "20000000t",
            "4 Gi",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cores_devices_priority() {
        assert_eq!(parse_cores("30"), Ok(30));
        assert_eq!(parse_cores("0"), Ok(0));
        assert_eq!(parse_cores("100"), Ok(100));
        for bad in ["101", "030", "-1", "", "30%"] {
            assert!(parse_cores(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_device_list("0,1"), Ok(vec![0, 1]));
        assert_eq!(parse_device_list("15"), Ok(vec![15]));
        for bad in ["0,", "16", "01", "0,0", "x"] {
            assert!(parse_device_list(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_priority("0"), Ok(0));
        assert!(parse_priority("-1").is_err());
    }
}
