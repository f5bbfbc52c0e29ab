//! Utilization, as NVML samples it, computed from the device timelines in the shared state.
//!
//! Time is cut into sample periods of [`SAMPLE_PERIOD_US`] (1/6 s, rounded to whole µs, like the real
//! driver's shortest period), aligned on CLOCK_MONOTONIC so every process agrees on the boundaries.
//! - `nvmlDeviceGetUtilizationRates`: `gpu` = percent of the last *completed* period during which the
//!   device ran a kernel (any process); `memory` = 0 (the simulator has no memory bandwidth).
//! - `nvmlDeviceGetProcessUtilization(device, samples, &count, lastSeenTimeStamp)`: the driver keeps the
//!   last [`SAMPLE_BUFFER_PERIODS`] periods (2 s). The call covers the completed periods that end after
//!   `lastSeenTimeStamp` (µs since the epoch; 0 = the whole buffer) and returns one sample per process
//!   that used the device in them: `smUtil` = that process's share of the covered time in percent,
//!   `timeStamp` = the end of the newest covered period (µs since the epoch), `memUtil`/`encUtil`/`decUtil`
//!   = 0. Passing a returned `timeStamp` back as `lastSeenTimeStamp` gives only newer periods.

use std::sync::OnceLock;

use simgpu_state::Machine;

pub const SAMPLE_PERIOD_US: u64 = 166_667;
pub const SAMPLE_BUFFER_PERIODS: u64 = 12;

/// One `nvmlProcessUtilizationSample_t`'s worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    pub timestamp_us: u64,
    pub sm_util: u32,
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC in µs, fixed for the life of the process, so a timestamp we
/// hand out converts back to exactly the period boundary it came from.
fn realtime_offset_us() -> u64 {
    static OFFSET: OnceLock<u64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        (simgpu_state::realtime_ns() / 1000).saturating_sub(simgpu_state::monotonic_ns() / 1000)
    })
}

/// The end (monotonic µs) of the last completed sample period at `now_us`.
pub fn last_period_end_us(now_us: u64) -> u64 {
    now_us / SAMPLE_PERIOD_US * SAMPLE_PERIOD_US
}

/// The monotonic µs window `[start, end)` of whole periods that end after `last_seen_us` (monotonic),
/// within the buffer; `None` when there is none.
pub fn sample_window(now_us: u64, last_seen_us: u64) -> Option<(u64, u64)> {
    let end = last_period_end_us(now_us);
    let buffer_start = end.saturating_sub(SAMPLE_BUFFER_PERIODS * SAMPLE_PERIOD_US);
    // The first period whose end is strictly after last_seen starts at last_seen rounded down.
    let start = last_period_end_us(last_seen_us).max(buffer_start);
    (start < end).then_some((start, end))
}

/// Samples for a window from per-pid busy time (ns) in it.
pub fn samples_from(
    busy_by_pid: &[(u32, u64)],
    window_us: (u64, u64),
    offset_us: u64,
) -> Vec<ProcessSample> {
    let (start, end) = window_us;
    let span_ns = (end - start).max(1) * 1000;
    let mut out: Vec<ProcessSample> = busy_by_pid
        .iter()
        .filter(|(_, ns)| *ns > 0)
        .map(|&(pid, ns)| ProcessSample {
            pid,
            timestamp_us: end + offset_us,
            sm_util: ((ns * 100 + span_ns / 2) / span_ns).clamp(1, 100) as u32,
        })
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}

/// `nvmlDeviceGetProcessUtilization`'s samples for device `dev` since `last_seen_us` (epoch µs).
pub fn process_samples(machine: &Machine, dev: u32, last_seen_us: u64) -> Vec<ProcessSample> {
    let offset = realtime_offset_us();
    let now_us = machine.now_ns() / 1000;
    let Some(window) = sample_window(now_us, last_seen_us.saturating_sub(offset)) else {
        return Vec::new();
    };
    let busy = machine.busy_by_pid(dev, window.0 * 1000, window.1 * 1000);
    samples_from(&busy, window, offset)
}

/// `nvmlDeviceGetUtilizationRates().gpu` for device `dev`.
pub fn gpu_utilization_percent(machine: &Machine, dev: u32) -> u32 {
    let end = last_period_end_us(machine.now_ns() / 1000);
    let start = end - SAMPLE_PERIOD_US;
    let busy = machine.busy_ns(dev, None, start * 1000, end * 1000);
    ((busy * 100 + SAMPLE_PERIOD_US * 500) / (SAMPLE_PERIOD_US * 1000)).min(100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    const P: u64 = SAMPLE_PERIOD_US;

    #[test]
    fn window_covers_whole_periods_after_last_seen() {
        let now = 100 * P + 5;
        assert_eq!(
            sample_window(now, 0),
            Some((88 * P, 100 * P)),
            "0 = the whole buffer"
        );
        assert_eq!(sample_window(now, 99 * P), Some((99 * P, 100 * P)));
        assert_eq!(sample_window(now, 99 * P - 1), Some((98 * P, 100 * P)));
        assert_eq!(
            sample_window(now, 100 * P),
            None,
            "the returned timestamp gives nothing twice"
        );
        assert_eq!(sample_window(now, 200 * P), None);
    }

    #[test]
    fn samples_are_per_pid_shares_of_the_window() {
        let window = (10 * P, 12 * P);
        let span_ns = 2 * P * 1000;
        let s = samples_from(&[(7, span_ns / 4), (3, span_ns / 2), (9, 0)], window, 1_000);
        assert_eq!(
            s,
            vec![
                ProcessSample {
                    pid: 3,
                    timestamp_us: 12 * P + 1_000,
                    sm_util: 50
                },
                ProcessSample {
                    pid: 7,
                    timestamp_us: 12 * P + 1_000,
                    sm_util: 25
                },
            ]
        );
        // A sliver still shows as 1%, never 0 (NVML lists only processes that used the device).
        assert_eq!(samples_from(&[(1, 1)], window, 0)[0].sm_util, 1);
    }
}
