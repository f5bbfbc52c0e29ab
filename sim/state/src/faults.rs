//! Fault injection, parsed once from the environment:
//! `SIMGPU_FAIL_ALLOC_AT=N` (this process's Nth device allocation fails, 1-based),
//! `SIMGPU_DEVICE_LOST=<index>[,<index>..]` (those devices report lost),
//! `SIMGPU_SLOW=<symbol>:<micros>[,<symbol>:<micros>..]` (that entry point waits that long first).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::SimError;

#[derive(Debug, Default)]
pub struct Faults {
    fail_alloc_at: Option<u64>,
    /// `fork generation << 40 | allocations counted` by [`Faults::should_fail_alloc`] in this process.
    allocs_seen: AtomicU64,
    lost_mask: u64,
    slow: Vec<(String, u64)>,
}

impl Clone for Faults {
    fn clone(&self) -> Self {
        Faults {
            fail_alloc_at: self.fail_alloc_at,
            allocs_seen: AtomicU64::new(self.allocs_seen.load(Ordering::Relaxed)),
            lost_mask: self.lost_mask,
            slow: self.slow.clone(),
        }
    }
}

impl Faults {
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Parse the fault variables through `get`. `device_count` bounds `SIMGPU_DEVICE_LOST`.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
        device_count: usize,
    ) -> Result<Faults, SimError> {
        let mut faults = Faults::none();
        if let Some(v) = get("SIMGPU_FAIL_ALLOC_AT").filter(|v| !v.trim().is_empty()) {
            match v.trim().parse::<u64>() {
                Ok(n) if n >= 1 => faults.fail_alloc_at = Some(n),
                _ => {
                    return Err(SimError::InvalidConfig(format!(
                        "SIMGPU_FAIL_ALLOC_AT: {v:?} is not a 1-based allocation number"
                    )))
                }
            }
        }
        if let Some(v) = get("SIMGPU_DEVICE_LOST").filter(|v| !v.trim().is_empty()) {
            for item in v.split(',') {
                match item.trim().parse::<usize>() {
                    Ok(i) if i < device_count => faults.lost_mask |= 1 << i,
                    _ => {
                        return Err(SimError::InvalidConfig(format!(
                        "SIMGPU_DEVICE_LOST: {item:?} is not a device index below {device_count}"
                    )))
                    }
                }
            }
        }
        if let Some(v) = get("SIMGPU_SLOW").filter(|v| !v.trim().is_empty()) {
            for item in v.split(',') {
                let parsed = item
                    .split_once(':')
                    .and_then(|(sym, us)| Some((sym.trim(), us.trim().parse::<u64>().ok()?)))
                    .filter(|(sym, _)| !sym.is_empty());
                match parsed {
                    Some((sym, us)) => faults.slow.push((sym.to_string(), us)),
                    None => {
                        return Err(SimError::InvalidConfig(format!(
                            "SIMGPU_SLOW: {item:?} is not <symbol>:<microseconds>"
                        )))
                    }
                }
            }
        }
        Ok(faults)
    }

    /// Count one device allocation of this process; true when it is the one `SIMGPU_FAIL_ALLOC_AT`
    /// names. Call it exactly once per allocation attempt (libcuda does; [`crate::Machine::alloc`] doesn't).
    #[inline]
    pub fn should_fail_alloc(&self) -> bool {
        match self.fail_alloc_at {
            None => false,
            Some(n) => {
                // The counter is `fork generation << 40 | count`: a fork child starts again at zero
                // without needing a handler to reset it.
                let generation = crate::sys::FORK_GENERATION.load(Ordering::Relaxed) as u64;
                let bump = |word: u64| {
                    let count = if word >> 40 == generation {
                        word & ((1 << 40) - 1)
                    } else {
                        0
                    };
                    Some(generation << 40 | (count + 1))
                };
                match self
                    .allocs_seen
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, bump)
                {
                    Ok(old) => bump(old).is_some_and(|new| new & ((1 << 40) - 1) == n),
                    Err(_) => false,
                }
            }
        }
    }

    /// The configured `SIMGPU_FAIL_ALLOC_AT`, if any.
    pub fn fail_alloc_at(&self) -> Option<u64> {
        self.fail_alloc_at
    }

    /// Whether `SIMGPU_DEVICE_LOST` names device `dev`.
    #[inline]
    pub fn device_lost(&self, dev: u32) -> bool {
        dev < 64 && self.lost_mask & (1 << dev) != 0
    }

    /// If `SIMGPU_SLOW` names `symbol`, wait that long (sleeping, then spinning the last stretch).
    /// Free when `SIMGPU_SLOW` is unset.
    #[inline]
    pub fn slow(&self, symbol: &str) {
        if self.slow.is_empty() {
            return;
        }
        self.slow_cold(symbol)
    }

    #[cold]
    fn slow_cold(&self, symbol: &str) {
        for (name, micros) in &self.slow {
            if name == symbol {
                crate::sys::wait_until_ns(
                    crate::sys::monotonic_ns().saturating_add(micros.saturating_mul(1000)),
                );
            }
        }
    }

    /// The delay `SIMGPU_SLOW` sets for `symbol`, in microseconds (0 if none).
    pub fn slow_micros(&self, symbol: &str) -> u64 {
        self.slow
            .iter()
            .filter(|(n, _)| n == symbol)
            .map(|(_, us)| *us)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Faults, SimError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Faults::from_lookup(
            &|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            2,
        )
    }

    #[test]
    fn fail_alloc_at_counts_allocations() {
        let f = parse(&[("SIMGPU_FAIL_ALLOC_AT", "3")]).unwrap();
        let seen: Vec<bool> = (0..5).map(|_| f.should_fail_alloc()).collect();
        assert_eq!(seen, [false, false, true, false, false]);
        let none = parse(&[]).unwrap();
        assert!(!(0..5).any(|_| none.should_fail_alloc()));
    }

    #[test]
    fn a_fork_child_counts_its_own_allocations() {
        crate::sys::register_atfork();
        let f = parse(&[("SIMGPU_FAIL_ALLOC_AT", "2")]).unwrap();
        assert!(!f.should_fail_alloc());
        // SAFETY: the child only touches atomics and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = !f.should_fail_alloc() && f.should_fail_alloc();
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child saw the parent's count"
        );
        assert!(
            f.should_fail_alloc(),
            "the parent's second allocation fails"
        );
    }

    #[test]
    fn device_lost_and_slow() {
        let f = parse(&[
            ("SIMGPU_DEVICE_LOST", "1"),
            ("SIMGPU_SLOW", "cuInit:5, nvmlInit_v2:7"),
        ])
        .unwrap();
        assert!(!f.device_lost(0));
        assert!(f.device_lost(1));
        assert_eq!(f.slow_micros("cuInit"), 5);
        assert_eq!(f.slow_micros("nvmlInit_v2"), 7);
        assert_eq!(f.slow_micros("cuMemAlloc_v2"), 0);
    }

    #[test]
    fn malformed_faults_name_the_variable() {
        for (k, v) in [
            ("SIMGPU_FAIL_ALLOC_AT", "0"),
            ("SIMGPU_FAIL_ALLOC_AT", "x"),
            ("SIMGPU_DEVICE_LOST", "2"),
            ("SIMGPU_DEVICE_LOST", "a"),
            ("SIMGPU_SLOW", "cuInit"),
            ("SIMGPU_SLOW", ":5"),
            ("SIMGPU_SLOW", "cuInit:-1"),
        ] {
            match parse(&[(k, v)]) {
                Err(SimError::InvalidConfig(msg)) => assert!(msg.contains(k), "{msg}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }
}
