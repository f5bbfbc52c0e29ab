//! From the simulated machine's busy intervals to the numbers in the table: the share of the device
//! a container got over time, its mean, its worst 1-second window, and when it settled.

use simgpu_state::BusyInterval;

/// Width of one bin of the share-over-time series.
pub const BIN_NS: u64 = 100_000_000;
/// The window of the "worst window" column.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// Pass band, in points of share.
pub const TOLERANCE_POINTS: f64 = 3.0;
/// Settling must happen within this long of the start.
pub const CONVERGE_LIMIT_S: f64 = 1.0;

/// Device time per bin of `[start_ns, start_ns + bins * BIN_NS)` that went to any of `pids`.
pub fn busy_bins(intervals: &[BusyInterval], pids: &[u32], start_ns: u64, bins: usize) -> Vec<u64> {
    let mut out = vec![0u64; bins];
    let end_ns = start_ns + bins as u64 * BIN_NS;
    for iv in intervals.iter().filter(|iv| pids.contains(&iv.pid)) {
        let (a, b) = (iv.start_ns.max(start_ns), iv.end_ns.min(end_ns));
        if a >= b {
            continue;
        }
        let mut t = a;
        while t < b {
            let bin = ((t - start_ns) / BIN_NS) as usize;
            let bin_end = start_ns + (bin as u64 + 1) * BIN_NS;
            let piece = b.min(bin_end) - t;
            if let Some(slot) = out.get_mut(bin) {
                *slot += piece;
            }
            t += piece;
        }
    }
    out
}

/// What one container achieved.
#[derive(Clone, Debug)]
pub struct Achieved {
    /// Share (0..100) per bin.
    pub series: Vec<f64>,
    /// Mean share over the whole run, in percent.
    pub mean: f64,
    /// The 1-second window (100 ms steps) after the first second that is furthest from the
    /// target: its share, in percent (NaN when the run is under 2 s).
    pub worst_window: f64,
    /// Seconds from the start to the first 1-second window from which on every window is within
    /// ±3 points of the target (NaN if the last window is not).
    pub converge_s: f64,
}

impl Achieved {
    pub fn from_bins(bins: &[u64], target: f64) -> Achieved {
        let share = |ns: u64, span: u64| ns as f64 * 100.0 / span as f64;
        let series: Vec<f64> = bins.iter().map(|&b| share(b, BIN_NS)).collect();
        let total: u64 = bins.iter().sum();
        let mean = share(total, BIN_NS * bins.len().max(1) as u64);
        let per_window = (WINDOW_NS / BIN_NS) as usize;
        let mut worst_window = f64::NAN;
        let mut worst_error = -1.0;
        let first = per_window; // windows that start after the first second
        if bins.len() >= first + per_window {
            for start in first..=bins.len() - per_window {
                let busy: u64 = bins[start..start + per_window].iter().sum();
                let s = share(busy, WINDOW_NS);
                if (s - target).abs() > worst_error {
                    worst_error = (s - target).abs();
                    worst_window = s;
                }
            }
        }
        // Settled from the start of the first 1-second window (100 ms steps) from which on every
        // window is within the band. A window, not the running mean from 0: the bucket starts
        // with its burst allowance (50 ms of wall time at the limit's rate), which lands in the
        // first 100 ms and would otherwise weigh on a running mean for seconds.
        let window_share =
            |start: usize| share(bins[start..start + per_window].iter().sum(), WINDOW_NS);
        let converge_s = if bins.len() < per_window {
            f64::NAN
        } else {
            let last_start = bins.len() - per_window;
            let mut settled = None;
            for start in (0..=last_start).rev() {
                if (window_share(start) - target).abs() > TOLERANCE_POINTS {
                    break;
                }
                settled = Some(start);
            }
            settled.map_or(f64::NAN, |start| start as f64 * BIN_NS as f64 / 1e9)
        };
        Achieved {
            series,
            mean,
            worst_window,
            converge_s,
        }
    }

    pub fn passes(&self, target: f64) -> bool {
        (self.mean - target).abs() <= TOLERANCE_POINTS
            && self.converge_s <= CONVERGE_LIMIT_S
            && (self.worst_window.is_nan()
                || (self.worst_window - target).abs() <= TOLERANCE_POINTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(start_ns: u64, end_ns: u64, pid: u32) -> BusyInterval {
        BusyInterval {
            start_ns,
            end_ns,
            pid,
        }
    }

    #[test]
    fn bins_split_intervals_at_edges_and_filter_pids() {
        let ivs = [
            iv(1_000 + 50_000_000, 1_000 + 150_000_000, 7),
            iv(1_000 + 150_000_000, 1_000 + 160_000_000, 8),
            iv(0, 2_000, 7), // partly before the start
        ];
        let bins = busy_bins(&ivs, &[7], 1_000, 3);
        assert_eq!(bins, vec![50_000_000 + 1_000, 50_000_000, 0]);
        let both = busy_bins(&ivs, &[7, 8], 1_000, 3);
        assert_eq!(both[1], 60_000_000);
    }

    #[test]
    fn a_steady_share_passes_and_a_late_one_does_not() {
        let steady = vec![BIN_NS / 4; 30];
        let a = Achieved::from_bins(&steady, 25.0);
        assert!((a.mean - 25.0).abs() < 1e-9);
        assert_eq!(a.converge_s, 0.0);
        assert!(a.passes(25.0));
        let mut late = vec![BIN_NS; 15];
        late.extend(vec![BIN_NS / 4; 15]);
        let b = Achieved::from_bins(&late, 25.0);
        assert!(!b.passes(25.0));
        assert!((b.converge_s - 1.5).abs() < 1e-9, "{}", b.converge_s);
        // One 100 ms burst at the start is not held against it.
        let mut burst = vec![BIN_NS / 4; 30];
        burst[0] = BIN_NS;
        let c = Achieved::from_bins(&burst, 25.0);
        assert!(c.converge_s <= 0.1 + 1e-9, "{}", c.converge_s);
    }
}
