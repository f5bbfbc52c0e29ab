//! HAMi's policy words in the region tail: `utilization_switch` and `recent_kernel`
//! (hami-contract.md 3.4 and 3.6). The monitor writes them every 5 s; we read them on every launch.

use std::sync::atomic::{AtomicI32, Ordering};

use super::CorePolicy;

/// Value a launch stores in `recent_kernel`: "active now". The monitor decrements it every 5 s and
/// counts the container as active while it stays above 0 (so for one tick after a launch).
pub const RECENT_KERNEL_ACTIVE: i32 = 2;

/// Whether the SM limit holds for this launch, given the policy and the region's current
/// `utilization_switch` (read live, not once at start; hami-contract.md 3.6).
#[inline]
pub fn enforcing(policy: CorePolicy, utilization_switch: i32) -> bool {
    match policy {
        CorePolicy::Force => true,
        CorePolicy::Disable => false,
        CorePolicy::Default => utilization_switch == 1,
    }
}

/// Whether a launch must wait because the monitor blocked the container for a higher-priority one
/// (`recent_kernel < 0`). `disable` ignores priority, as in HAMi-core.
#[inline]
pub fn priority_blocked(policy: CorePolicy, recent_kernel: i32) -> bool {
    recent_kernel < 0 && policy != CorePolicy::Disable
}

/// Marks the container active after a launch was allowed: moves `recent_kernel` from a value >= 0
/// to 2 with a CAS, so a -1 stored by the monitor meanwhile is never overwritten. Writes only when
/// the value changes (at most once per monitor tick), so the tail's cache line stays shared.
#[inline]
pub(crate) fn mark_active(recent_kernel: &AtomicI32, seen: i32) {
    if seen != RECENT_KERNEL_ACTIVE && seen >= 0 {
        // Losing the CAS means the monitor (or another launcher) wrote first: both outcomes are
        // right, so the result is ignored.
        let _ = recent_kernel.compare_exchange(
            seen,
            RECENT_KERNEL_ACTIVE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}
