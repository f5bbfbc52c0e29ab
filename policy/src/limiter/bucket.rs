//! The shared token bucket: one per device per container, in the region.
//!
//! The bucket is kept in GCRA form ("generic cell rate algorithm"): instead of a token count and a
//! last-refill time, which would need a double-word CAS to update together, it stores one instant,
//! `paid_until_ns`, the moment at which everything charged so far is paid for. At `now` the balance
//! in device time is `(now - paid_until) * rate`, capped at the burst. Charging a launch of cost `c`
//! moves the instant forward by `c / rate`; refill is the clock moving. So acquire is one load and
//! one CAS, and no thread refills anything.
//!
//! Units: `device ns` is time the GPU spends on the container's work; `wall ns` is clock time.
//! `rate = limit% / 100` device ns per wall ns.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::tuning::{CLOCK_EPOCH_TOLERANCE_S, MAX_DEBT_WALL_NS};
use super::MAX_DEVICES;

/// One device's bucket as it lies in the region. 128 bytes, aligned to 128 so that the buckets of
/// two devices never share a cache line (or an adjacent-line prefetch pair). All zero is a valid
/// fresh bucket (full burst available), so the region's creator only has to zero it.
///
/// Only `paid_until_ns` is written by launches; the other fields are written at attach.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct SharedBucket {
    /// GCRA instant on `CLOCK_MONOTONIC` (ns) at which the container's debt is paid off. 0 = never
    /// used.
    pub paid_until_ns: AtomicU64,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` in seconds (roughly the boot time) of the process that
    /// last reset this bucket: tells a bucket written before a reboot from a live one.
    pub clock_epoch_s: AtomicU64,
    /// The limit (percent) the writers enforce, for readers such as `vgpu top`. Informational.
    pub limit_percent: AtomicU32,
    pub reserved_u32: AtomicU32,
    /// Instant (`CLOCK_MONOTONIC` ns) until which one process of the container holds the right to
    /// measure a never-seen kernel on this device; 0 = free. A lease, not a lock: it expires by
    /// itself if its holder dies. See `Bucket::try_take_learning_lease`.
    pub learning_lease_ns: AtomicU64,
    pub reserved: [AtomicU64; 12],
}

/// The limiter's part of the region extension: one bucket per device, indexed like the region's
/// per-device arrays. 2048 bytes, aligned to 128.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct SharedLimiter {
    pub buckets: [SharedBucket; MAX_DEVICES],
}

const _: () = assert!(std::mem::size_of::<SharedBucket>() == 128);
const _: () = assert!(std::mem::align_of::<SharedBucket>() == 128);
const _: () = assert!(std::mem::offset_of!(SharedBucket, paid_until_ns) == 0);
const _: () = assert!(std::mem::offset_of!(SharedBucket, clock_epoch_s) == 8);
const _: () = assert!(std::mem::offset_of!(SharedBucket, limit_percent) == 16);
const _: () = assert!(std::mem::offset_of!(SharedBucket, learning_lease_ns) == 24);
const _: () = assert!(std::mem::size_of::<SharedLimiter>() == 2048);
const _: () = assert!(std::mem::align_of::<SharedLimiter>() == 128);

/// The rate and burst of one device's bucket, derived from the limit once at init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketParams {
    /// 1..=99.
    limit_percent: u32,
    /// `100 / limit` in 32.32 fixed point, rounded up: a charge in wall time is one multiply
    /// (no division on the launch path).
    wall_per_device_q32: u64,
    /// Credit that can be saved while idle, as wall time.
    burst_wall_ns: u64,
}

impl BucketParams {
    /// `None` when `limit_percent` is not a real limit (0 or >= 100).
    pub fn new(limit_percent: u32, burst_wall_ns: u64) -> Option<BucketParams> {
        if !(1..100).contains(&limit_percent) {
            return None;
        }
        let wall_per_device_q32 = (100u64 << 32).div_ceil(u64::from(limit_percent));
        Some(BucketParams {
            limit_percent,
            wall_per_device_q32,
            burst_wall_ns,
        })
    }

    pub fn limit_percent(&self) -> u32 {
        self.limit_percent
    }

    pub fn burst_wall_ns(&self) -> u64 {
        self.burst_wall_ns
    }

    /// Wall time that pays for `device_ns` of device time at this rate.
    #[inline]
    pub fn wall_ns(&self, device_ns: u64) -> u64 {
        let wide = (u128::from(device_ns) * u128::from(self.wall_per_device_q32)) >> 32;
        u64::try_from(wide).unwrap_or(u64::MAX)
    }

    /// Device time that `wall_ns` of wall time pays for at this rate.
    pub fn device_ns(&self, wall_ns: u64) -> u64 {
        let wide = u128::from(wall_ns) * u128::from(self.limit_percent) / 100;
        u64::try_from(wide).unwrap_or(u64::MAX)
    }
}

/// What an acquire decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Charged; submit the launch.
    Granted,
    /// In debt; nothing was charged. The balance is back to zero in `wall_ns` (if nobody else
    /// charges meanwhile).
    Wait { wall_ns: u64 },
}

/// A bucket in the region together with its rate: the operations the gate performs.
#[derive(Clone, Copy, Debug)]
pub struct Bucket<'a> {
    shared: &'a SharedBucket,
    params: BucketParams,
}

impl<'a> Bucket<'a> {
    #[inline]
    pub fn new(shared: &'a SharedBucket, params: BucketParams) -> Bucket<'a> {
        Bucket { shared, params }
    }

    pub fn params(&self) -> &BucketParams {
        &self.params
    }

    /// Where the GCRA instant effectively is at `now`: never earlier than `now - burst` (credit is
    /// capped), and a debt beyond `MAX_DEBT_WALL_NS` is not believed.
    #[inline]
    fn effective_start(&self, paid_until_ns: u64, now_ns: u64) -> u64 {
        let start = paid_until_ns.max(now_ns.saturating_sub(self.params.burst_wall_ns));
        if start > now_ns.saturating_add(MAX_DEBT_WALL_NS) {
            now_ns
        } else {
            start
        }
    }

    /// Charges `cost_device_ns` if the balance is not negative. One load and (when granted) one
    /// CAS; a failed CAS means another launcher charged in between, and we look again.
    ///
    /// Debt is allowed on purpose: the launch goes when the balance is >= 0, whatever its cost, so
    /// a kernel longer than the burst still runs and the next launch waits it off.
    #[inline]
    pub fn acquire(&self, cost_device_ns: u64, now_ns: u64) -> Acquire {
        let cost_wall_ns = self.params.wall_ns(cost_device_ns);
        // Relaxed throughout: the instant is the only data here; no other memory is published
        // through it, and a CAS is atomic in any ordering.
        let mut current = self.shared.paid_until_ns.load(Ordering::Relaxed);
        loop {
            let start = self.effective_start(current, now_ns);
            if start > now_ns {
                return Acquire::Wait {
                    wall_ns: start - now_ns,
                };
            }
            let next = start.saturating_add(cost_wall_ns);
            match self.shared.paid_until_ns.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Acquire::Granted,
                Err(seen) => current = seen,
            }
        }
    }

    /// Charges `delta_device_ns` more (positive) or gives it back (negative), unconditionally:
    /// the correction once a launch is measured, or a refund when the driver refused a launch.
    /// A credit never raises the balance above the burst.
    pub fn adjust(&self, delta_device_ns: i64, now_ns: u64) {
        let delta_wall_ns = self.params.wall_ns(delta_device_ns.unsigned_abs());
        if delta_wall_ns == 0 {
            return;
        }
        let floor = now_ns.saturating_sub(self.params.burst_wall_ns);
        let mut current = self.shared.paid_until_ns.load(Ordering::Relaxed);
        loop {
            let start = self.effective_start(current, now_ns);
            let next = if delta_device_ns >= 0 {
                start.saturating_add(delta_wall_ns)
            } else {
                start.saturating_sub(delta_wall_ns).max(floor)
            };
            if next == current {
                return;
            }
            match self.shared.paid_until_ns.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The balance at `now` in device ns: positive is credit (at most the burst), negative is debt.
    pub fn balance_device_ns(&self, now_ns: u64) -> i64 {
        let start = self.effective_start(self.shared.paid_until_ns.load(Ordering::Relaxed), now_ns);
        if start <= now_ns {
            i64::try_from(self.params.device_ns(now_ns - start)).unwrap_or(i64::MAX)
        } else {
            -i64::try_from(self.params.device_ns(start - now_ns)).unwrap_or(i64::MAX)
        }
    }

    /// Takes the container's learning lease for this device until `now + hold_ns`, if it is free
    /// or expired. Returns the value to renew or release it with.
    ///
    /// Why: the first measurement of a kernel is charged a guess, and its event pair includes any
    /// work queued ahead of it. When the processes of a container start together and each launches
    /// a new kernel, each one's first sample would include its siblings' kernels and be charged
    /// again. One probe of an unknown kernel at a time per container and device keeps first samples
    /// clean of the container's own work and bounds the unpaid work a guess can let through.
    pub fn try_take_learning_lease(&self, now_ns: u64, hold_ns: u64) -> Result<u64, u64> {
        let lease = &self.shared.learning_lease_ns;
        let current = lease.load(Ordering::Relaxed);
        if current > now_ns && current - now_ns <= MAX_DEBT_WALL_NS {
            return Err(current);
        }
        let mine = now_ns.saturating_add(hold_ns).max(1);
        lease
            .compare_exchange(current, mine, Ordering::Relaxed, Ordering::Relaxed)
            .map(|_| mine)
    }

    /// Extends a lease still held; returns the new value, or `None` if it was lost (expired and
    /// taken by another process).
    pub fn renew_learning_lease(&self, held: u64, now_ns: u64, hold_ns: u64) -> Option<u64> {
        let mine = now_ns.saturating_add(hold_ns).max(held);
        self.shared
            .learning_lease_ns
            .compare_exchange(held, mine, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| mine)
    }

    /// Gives a lease back (nothing happens if it was lost meanwhile).
    pub fn release_learning_lease(&self, held: u64) {
        let _ = self.shared.learning_lease_ns.compare_exchange(
            held,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Called once per process at init: if the bucket was last reset under another boot
    /// (`CLOCK_MONOTONIC` restarted, so its instant means nothing now), reset it to a fresh bucket.
    /// Also records the limit for readers. Returns whether it reset.
    pub fn attach(&self, clock_epoch_s: u64) -> bool {
        self.shared
            .limit_percent
            .store(self.params.limit_percent, Ordering::Relaxed);
        let recorded = self.shared.clock_epoch_s.load(Ordering::Relaxed);
        if recorded != 0 && recorded.abs_diff(clock_epoch_s) <= CLOCK_EPOCH_TOLERANCE_S {
            return false;
        }
        // Whoever wins the CAS resets; a loser sees the epoch already fixed. A launch racing with
        // the reset at worst loses or gains one charge.
        if self
            .shared
            .clock_epoch_s
            .compare_exchange(
                recorded,
                clock_epoch_s,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.shared.paid_until_ns.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}
