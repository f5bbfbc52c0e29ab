//! The memory accounting the hooks call: the region (container-wide charge against the limit) plus the
//! allocation table (what each live allocation charged), for one registered process slot.
//!
//! An allocation hook does:
//!
//! ```text
//! let charge = acct.charge(device, bytes, MemKind::Data)?;   // Err -> CUDA_ERROR_OUT_OF_MEMORY, nothing called
//! real.cuMemAlloc_v2(dptr, bytes)?;                          // Err -> dropping `charge` gives it back
//! charge.commit(Key::DevicePtr(*dptr))                       // Err (practically never) -> free it, return OOM
//! ```
//!
//! and a free hook does `acct.uncharge(Key::DevicePtr(ptr))` **before** calling the real free (once
//! the driver has freed the pointer another thread may be handed the same value), then calls the
//! driver whatever the result (untracked pointers pass through unchanged).
//!
//! [`Accounting::charge`] reserves both the bytes and a table entry before the driver is called; when
//! the device is over its limit it reclaims dead processes' usage ([`Region::reclaim_dead`]) and
//! retries once, so a dead neighbour's memory comes back within one allocation.
//!
//! After `fork`, the child calls [`Accounting::adopt_after_fork`] with its newly registered slot: the
//! parent's allocations are not the child's, so the table is emptied.

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use crate::alloc_table::{AllocTable, EntryTicket, InsertError, Key, MAX_ENTRY_BYTES};
use crate::region::{ChargeRecord, MemKind, OverLimit, Region, Reservation, SlotId};

/// Why a charge was refused. Both mean: return `CUDA_ERROR_OUT_OF_MEMORY` without calling the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeError {
    /// The container would pass the device's limit (after reclaiming dead processes).
    OverLimit(OverLimit),
    /// The allocation table has no room (or the size cannot be tracked).
    TableFull,
}

impl fmt::Display for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChargeError::OverLimit(o) => o.fmt(f),
            ChargeError::TableFull => write!(f, "too many live allocations to track"),
        }
    }
}

impl std::error::Error for ChargeError {}

/// The region, this process's slot and its allocation table.
#[derive(Debug)]
pub struct Accounting {
    region: Region,
    table: AllocTable,
    slot: AtomicU16,
    /// Monotonic ns before which [`Accounting::sweep_dead_if_due`] does nothing.
    next_sweep_ns: AtomicU64,
}

/// How often usage is checked for dead processes outside the over-limit path: what `cuMemGetInfo`,
/// NVML and the next allocation report must not include a killed process's memory for longer.
pub const DEAD_SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

/// A charge taken before the driver call. Commit it under the allocation's key once the driver has
/// succeeded; drop it to give everything back.
#[must_use = "dropping a charge gives its bytes back"]
#[derive(Debug)]
pub struct Charge<'a> {
    table: &'a AllocTable,
    reservation: Reservation<'a>,
    ticket: EntryTicket<'a>,
}

impl Charge<'_> {
    /// Keeps the charge and records it under `key`. On error (a practically unreachable probe-limit
    /// failure) the charge is given back and the caller should free the allocation and report out
    /// of memory.
    pub fn commit(self, key: Key) -> Result<ChargeRecord, InsertError> {
        let record = self.reservation.record();
        self.table.insert(self.ticket, key, record)?;
        Ok(self.reservation.commit())
    }

    /// Keeps the charge without a table entry (e.g. a context's overhead, tracked by the caller); give
    /// it back later with [`Accounting::release_record`].
    pub fn commit_untracked(self) -> ChargeRecord {
        self.reservation.commit()
    }

    /// What this charge is.
    pub fn record(&self) -> ChargeRecord {
        self.reservation.record()
    }
}

impl Accounting {
    /// Accounting for `slot` of `region`, recording allocations in `table`.
    pub fn new(region: Region, slot: SlotId, table: AllocTable) -> Accounting {
        Accounting {
            region,
            table,
            slot: AtomicU16::new(slot.index() as u16),
            next_sweep_ns: AtomicU64::new(0),
        }
    }

    /// The region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The allocation table.
    pub fn table(&self) -> &AllocTable {
        &self.table
    }

    /// This process's slot.
    pub fn slot(&self) -> SlotId {
        SlotId::clamped(usize::from(self.slot.load(Ordering::Relaxed)))
    }

    /// Reserves `bytes` of `kind` on `device` (and a table entry), reclaiming dead processes and
    /// retrying once when over the limit.
    pub fn charge(
        &self,
        device: usize,
        bytes: u64,
        kind: MemKind,
    ) -> Result<Charge<'_>, ChargeError> {
        if bytes > MAX_ENTRY_BYTES {
            return Err(ChargeError::TableFull);
        }
        let ticket = self.table.reserve_entry().ok_or(ChargeError::TableFull)?;
        let slot = self.slot();
        let reservation = match self.region.reserve(slot, device, bytes, kind) {
            Ok(r) => r,
            // Over a real limit: a dead neighbour's usage may be what stands in the way.
            Err(over) if over.limit != 0 => {
                if self.region.reclaim_dead().is_err() {
                    return Err(ChargeError::OverLimit(over));
                }
                self.region
                    .reserve(slot, device, bytes, kind)
                    .map_err(ChargeError::OverLimit)?
            }
            Err(over) => return Err(ChargeError::OverLimit(over)),
        };
        Ok(Charge {
            table: &self.table,
            reservation,
            ticket,
        })
    }

    /// At most once per [`DEAD_SWEEP_INTERVAL_NS`] (`now_ns` is a monotonic clock): if a registered
    /// process has died, reclaim its usage. Between sweeps this is one relaxed load and a compare; a
    /// sweep costs one liveness probe per registered slot, and takes the region lock only when a dead
    /// slot is found. So a killed process's memory leaves every view within a second of the next
    /// memory query or allocation, not only when some allocation is refused.
    pub fn sweep_dead_if_due(&self, now_ns: u64) {
        let due = self.next_sweep_ns.load(Ordering::Relaxed);
        if now_ns < due {
            return;
        }
        let next = now_ns.saturating_add(DEAD_SWEEP_INTERVAL_NS);
        if self
            .next_sweep_ns
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread sweeps now
        }
        if self.region.any_dead_slot() {
            let _ = self.region.reclaim_dead();
        }
    }

    /// Removes `key` and gives back what it charged; `None` for keys we never charged.
    pub fn uncharge(&self, key: Key) -> Option<ChargeRecord> {
        let record = self.table.remove(key)?;
        self.region.release_record(self.slot(), record);
        Some(record)
    }

    /// What `key` charged, if tracked.
    pub fn lookup(&self, key: Key) -> Option<ChargeRecord> {
        self.table.get(key)
    }

    /// Gives back a charge kept with [`Charge::commit_untracked`].
    pub fn release_record(&self, record: ChargeRecord) -> u64 {
        self.region.release_record(self.slot(), record)
    }

    /// In a forked child: use the child's own slot, forget the parent's allocations.
    pub fn adopt_after_fork(&self, child_slot: SlotId) {
        self.table.clear();
        self.slot
            .store(child_slot.index() as u16, Ordering::Relaxed);
    }

    /// Container-wide bytes charged on `device`.
    pub fn device_used(&self, device: usize) -> u64 {
        self.region.device_used(device)
    }

    /// The device's limit, if any.
    pub fn device_limit(&self, device: usize) -> Option<u64> {
        self.region.device_limit(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{DeviceSetup, Liveness, ProcessProbe, RegionSetup};
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Alive(Arc<Mutex<HashSet<i32>>>);

    impl ProcessProbe for Alive {
        fn probe(&self, pid: i32) -> Liveness {
            if self.0.lock().unwrap().contains(&pid) {
                Liveness::Alive { start_time: None }
            } else {
                Liveness::Dead
            }
        }
    }

    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn region(name: &str, limit: u64, alive: &Alive) -> (Scratch, std::path::PathBuf, Region) {
        let dir = std::env::temp_dir().join(format!("vgpu-acct-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.cache");
        let setup = RegionSetup {
            devices: vec![DeviceSetup {
                uuid: "GPU-0".into(),
                memory_limit: Some(limit),
                sm_limit_percent: None,
            }],
            priority: 1,
        };
        let r = Region::open_with_probe(&path, &setup, Box::new(alive.clone())).unwrap();
        (Scratch(dir), path, r)
    }

    #[test]
    fn charge_commit_uncharge() {
        let alive = Alive::default();
        alive.0.lock().unwrap().insert(1);
        let (_d, _p, r) = region("basic", 1000, &alive);
        let slot = r.register(1, 0).unwrap();
        let acct = Accounting::new(r, slot, AllocTable::with_capacity(64).unwrap());
        let c = acct.charge(0, 600, MemKind::Data).unwrap();
        assert_eq!(acct.device_used(0), 600);
        c.commit(Key::DevicePtr(0x1000)).unwrap();
        assert_eq!(
            acct.lookup(Key::DevicePtr(0x1000)).map(|r| r.bytes),
            Some(600)
        );
        let refused = acct.charge(0, 401, MemKind::Data).unwrap_err();
        assert!(matches!(refused, ChargeError::OverLimit(o) if o.used == 600 && o.limit == 1000));
        assert_eq!(acct.table().len(), 1, "a refused charge returns its ticket");
        drop(acct.charge(0, 400, MemKind::Data).unwrap());
        assert_eq!(
            acct.device_used(0),
            600,
            "an uncommitted charge gives everything back"
        );
        let ctx = acct
            .charge(0, 100, MemKind::Context)
            .unwrap()
            .commit_untracked();
        assert_eq!(
            acct.uncharge(Key::DevicePtr(0x1000)).map(|r| r.bytes),
            Some(600)
        );
        assert_eq!(
            acct.uncharge(Key::DevicePtr(0x1000)),
            None,
            "untracked: pass through"
        );
        assert_eq!(acct.release_record(ctx), 100);
        assert_eq!(acct.device_used(0), 0);
        assert!(acct.table().is_empty());
        assert_eq!(acct.device_limit(0), Some(1000));
    }

    #[test]
    fn a_dead_neighbour_leaves_the_views_at_the_next_sweep() {
        let alive = Alive::default();
        alive.0.lock().unwrap().extend([1, 2]);
        let (_d, path, r) = region("sweep", 1000, &alive);
        let slot = r.register(1, 0).unwrap();
        let setup = RegionSetup {
            devices: vec![DeviceSetup {
                uuid: "GPU-0".into(),
                memory_limit: Some(1000),
                sm_limit_percent: None,
            }],
            priority: 1,
        };
        let neighbour = Region::open_with_probe(&path, &setup, Box::new(alive.clone())).unwrap();
        let ns = neighbour.register(2, 0).unwrap();
        neighbour
            .reserve(ns, 0, 300, MemKind::Data)
            .unwrap()
            .commit();
        let acct = Accounting::new(r, slot, AllocTable::with_capacity(64).unwrap());
        let t0 = 5 * DEAD_SWEEP_INTERVAL_NS;
        acct.sweep_dead_if_due(t0);
        assert_eq!(acct.device_used(0), 300, "a live neighbour keeps its usage");
        alive.0.lock().unwrap().remove(&2); // SIGKILLed
        acct.sweep_dead_if_due(t0 + 1);
        assert_eq!(
            acct.device_used(0),
            300,
            "no second sweep within the interval"
        );
        acct.sweep_dead_if_due(t0 + DEAD_SWEEP_INTERVAL_NS);
        assert_eq!(
            acct.device_used(0),
            0,
            "the next sweep gives the dead process's usage back"
        );
    }

    #[test]
    fn a_dead_neighbour_is_reclaimed_within_one_allocation() {
        let alive = Alive::default();
        alive.0.lock().unwrap().extend([1, 2]);
        let (_d, path, r) = region("neighbour", 1000, &alive);
        let slot = r.register(1, 0).unwrap();
        let neighbour = Region::open_with_probe(
            &path,
            &RegionSetup {
                devices: vec![DeviceSetup {
                    uuid: "GPU-0".into(),
                    memory_limit: Some(1000),
                    sm_limit_percent: None,
                }],
                priority: 1,
            },
            Box::new(alive.clone()),
        )
        .unwrap();
        let ns = neighbour.register(2, 0).unwrap();
        neighbour
            .reserve(ns, 0, 900, MemKind::Data)
            .unwrap()
            .commit();
        let acct = Accounting::new(r, slot, AllocTable::with_capacity(64).unwrap());
        assert!(acct.charge(0, 200, MemKind::Data).is_err());
        alive.0.lock().unwrap().remove(&2); // SIGKILLed
        let c = acct.charge(0, 200, MemKind::Data).unwrap();
        assert_eq!(acct.device_used(0), 200);
        c.commit(Key::DevicePtr(1)).unwrap();
    }

    #[test]
    fn a_full_table_refuses_before_the_driver_is_called() {
        let alive = Alive::default();
        alive.0.lock().unwrap().insert(1);
        let (_d, _p, r) = region("full", 1 << 40, &alive);
        let slot = r.register(1, 0).unwrap();
        let acct = Accounting::new(r, slot, AllocTable::with_capacity(64).unwrap());
        for i in 0..32u64 {
            acct.charge(0, 1, MemKind::Data)
                .unwrap()
                .commit(Key::DevicePtr(i))
                .unwrap();
        }
        assert_eq!(
            acct.charge(0, 1, MemKind::Data).unwrap_err(),
            ChargeError::TableFull
        );
        assert_eq!(acct.device_used(0), 32, "nothing charged for the refusal");
        assert_eq!(
            acct.charge(0, MAX_ENTRY_BYTES + 1, MemKind::Data)
                .unwrap_err(),
            ChargeError::TableFull
        );
        // A forked child starts with an empty table and its own slot.
        alive.0.lock().unwrap().insert(2);
        let child = acct.region().register(2, 0).unwrap();
        acct.adopt_after_fork(child);
        assert_eq!(acct.slot(), child);
        assert!(acct.table().is_empty());
        assert!(acct.lookup(Key::DevicePtr(3)).is_none());
    }
}
