//! How a throttled launcher waits: spin for a moment, then yield, then sleep for about the deficit.

use super::tuning::{MAX_SLEEP_NS, SLEEP_EARLY_NS, SPIN_MAX_NS, YIELD_MAX_NS};

/// One step of waiting, carried out by the launching thread (the hook owns the syscalls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Busy-wait `iterations` times `std::hint::spin_loop()` (each roughly 10-40 ns).
    Spin { iterations: u32 },
    /// `sched_yield()` once.
    Yield,
    /// Sleep this long (`nanosleep`/`clock_nanosleep`), then ask the gate again.
    Sleep { ns: u64 },
}

/// The next pause for a launcher that must wait `wait_ns` more; `attempt` counts the pauses of this
/// launch so far (0 for the first).
///
/// Short waits spin, because a syscall costs more than the wait. Medium waits yield, so another
/// thread can run but we still wake on time. Long waits sleep for the deficit minus the kernel's
/// usual lateness, never more than `MAX_SLEEP_NS`, so a cleared `recent_kernel` or a credit is seen
/// soon; the gate is asked again after every pause, and the bucket keeps the exact schedule, so a
/// late wake-up costs no share (the missed time stays as credit, up to the burst).
pub fn backoff(wait_ns: u64, attempt: u32) -> Pause {
    // A launcher that keeps losing the race for the same instant (several processes woke for it)
    // stops spinning after a few rounds.
    if wait_ns <= SPIN_MAX_NS && attempt < 8 {
        // ~16 ns per iteration is a middle guess; being short just means one more round.
        let iterations = u32::try_from(wait_ns / 16).unwrap_or(u32::MAX).max(1);
        return Pause::Spin { iterations };
    }
    if wait_ns <= YIELD_MAX_NS {
        return Pause::Yield;
    }
    let ns = wait_ns.saturating_sub(SLEEP_EARLY_NS).min(MAX_SLEEP_NS);
    Pause::Sleep { ns }
}
