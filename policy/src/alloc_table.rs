//! What each live allocation charged, so that each free gives back exactly its charge.
//!
//! A fixed-capacity, lock-free, open-addressing hash map from [`Key`] (a namespaced u64: device
//! pointer, VMM handle, array, ...) to [`ChargeRecord`] (device, bytes, kind). The storage is reserved
//! once at init in an anonymous `MAP_NORESERVE` mapping ([`crate::sys::mmap`]): untouched pages cost
//! nothing, and no operation allocates or locks afterwards.
//!
//! Each entry is two words, `key` and `meta`; `meta` holds a state (empty, busy, live, tombstone) with
//! the namespace, kind, device and byte count packed beside it, so one CAS on `meta` claims or removes
//! an entry. Linear probing, at most [`MAX_PROBE`] entries from the key's hash; removed entries become
//! tombstones that later inserts reuse, and no entry ever becomes empty again, so a key is always found
//! before the first empty entry of its probe sequence.
//!
//! **Capacity is reserved before the driver call.** [`AllocTable::reserve_entry`] takes a ticket
//! against `max_live` (half the capacity, which keeps probe sequences short); the allocation hook
//! takes it together with the memory reservation, and a full table refuses the allocation with
//! `CUDA_ERROR_OUT_OF_MEMORY` *before* anything is allocated (rather than letting an allocation through
//! uncharged). With a ticket, [`AllocTable::insert`] can fail only if every one of the
//! [`MAX_PROBE`] entries after the key's hash is live at half load, which does not happen in
//! practice; the caller then frees what it allocated and reports out of memory.
//!
//! Keys must be unique while live: the free hook removes the key **before** calling the real free,
//! because once the driver has freed a pointer another thread may be handed the same value.
//! Duplicates are not detected (the second insert simply adds a second entry).
//!
//! Memory and speed: 16 bytes per entry; the default 2^21 entries (up to 1,048,576 live allocations)
//! reserve 32 MiB of address space. Resident memory grows with the pages that keys and tombstones
//! land on (4 KiB per page touched), so a process with a few hundred allocations stays near a
//! megabyte, and one that churns through hundreds of thousands of distinct pointers ends with the
//! whole 32 MiB resident. Each operation is one or two random accesses into the table: expect a cache
//! and TLB miss (a few hundred ns on a busy VM), negligible next to the driver call it accompanies.
//! A miss (a free of a pointer we never charged) stops at the first empty entry, or after
//! [`MAX_PROBE`] entries once tombstones have filled the table.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::region::{ChargeRecord, MemKind};
use crate::sys::mmap::Mapping;

/// Entries probed at most from a key's home position.
pub const MAX_PROBE: usize = 4096;
/// Default capacity (entries): 2^21, so up to 2^20 live allocations.
pub const DEFAULT_CAPACITY: usize = 1 << 21;
/// Largest byte count an entry can hold (48 bits: 256 TiB).
pub const MAX_ENTRY_BYTES: u64 = (1 << 48) - 1;
/// Largest device index an entry can hold.
pub const MAX_ENTRY_DEVICE: u16 = 255;

/// What an allocation is keyed by; each variant is its own namespace, so a device pointer and a VMM
/// handle with the same numeric value never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `CUdeviceptr` from `cuMemAlloc*`, `cuMemAllocPitch`, `cuMemAllocManaged`, `cuMemAllocAsync`.
    DevicePtr(u64),
    /// `CUmemGenericAllocationHandle` from `cuMemCreate`.
    VmmHandle(u64),
    /// `CUarray`.
    Array(u64),
    /// `CUmipmappedArray`.
    MipmappedArray(u64),
    /// `CUmemoryPool` (growth of a pool's reservation).
    Pool(u64),
    /// `CUcontext` (context overhead).
    Context(u64),
    /// `CUmodule`.
    Module(u64),
    /// Host allocations, if ever charged.
    HostPtr(u64),
}

impl Key {
    fn parts(self) -> (u64, u64) {
        match self {
            Key::DevicePtr(v) => (1, v),
            Key::VmmHandle(v) => (2, v),
            Key::Array(v) => (3, v),
            Key::MipmappedArray(v) => (4, v),
            Key::Pool(v) => (5, v),
            Key::Context(v) => (6, v),
            Key::Module(v) => (7, v),
            Key::HostPtr(v) => (8, v),
        }
    }
}

/// Why an insert failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// No ticket could be had: `max_live` entries are live.
    Full,
    /// Every entry within [`MAX_PROBE`] of the key's home was live.
    ProbeLimit,
    /// The record does not fit an entry (bytes ≥ 2^48 or device > 255).
    Unrepresentable,
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InsertError::Full => write!(f, "allocation table full"),
            InsertError::ProbeLimit => write!(f, "allocation table probe limit reached"),
            InsertError::Unrepresentable => write!(f, "allocation too large to track"),
        }
    }
}

impl std::error::Error for InsertError {}

// meta word: [63:62] state | [61:58] namespace | [57:56] kind | [55:48] device | [47:0] bytes
const STATE_SHIFT: u32 = 62;
const EMPTY: u64 = 0;
const BUSY: u64 = 1 << STATE_SHIFT;
const LIVE: u64 = 2 << STATE_SHIFT;
const TOMBSTONE: u64 = 3 << STATE_SHIFT;
const STATE_MASK: u64 = 3 << STATE_SHIFT;
const NS_SHIFT: u32 = 58;
const KIND_SHIFT: u32 = 56;
const DEVICE_SHIFT: u32 = 48;

fn encode(ns: u64, record: ChargeRecord) -> Option<u64> {
    if record.bytes > MAX_ENTRY_BYTES || record.device > MAX_ENTRY_DEVICE {
        return None;
    }
    Some(
        LIVE | (ns << NS_SHIFT)
            | ((record.kind as u64) << KIND_SHIFT)
            | (u64::from(record.device) << DEVICE_SHIFT)
            | record.bytes,
    )
}

fn decode(meta: u64) -> Option<ChargeRecord> {
    Some(ChargeRecord {
        device: ((meta >> DEVICE_SHIFT) & 0xff) as u16,
        bytes: meta & MAX_ENTRY_BYTES,
        kind: MemKind::from_u8(((meta >> KIND_SHIFT) & 3) as u8)?,
    })
}

fn namespace_of(meta: u64) -> u64 {
    (meta >> NS_SHIFT) & 0xf
}

/// MurmurHash3's 64-bit finaliser: device pointers are 256-byte aligned and clustered, so the low
/// bits alone would pile into a few buckets.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The table. Share it by reference between threads.
pub struct AllocTable {
    map: Mapping,
    mask: usize,
    max_live: usize,
    /// Live entries plus outstanding tickets.
    reserved: AtomicUsize,
    spare: AtomicU64,
}

impl fmt::Debug for AllocTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllocTable")
            .field("capacity", &self.capacity())
            .field("reserved", &self.reserved.load(Ordering::Relaxed))
            .finish()
    }
}

/// The right to one insert, taken before the driver call. Dropping it unused returns it.
#[must_use = "an unused ticket is returned when dropped"]
#[derive(Debug)]
pub struct EntryTicket<'t> {
    table: &'t AllocTable,
}

impl Drop for EntryTicket<'_> {
    fn drop(&mut self) {
        self.table.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AllocTable {
    /// Reserves a table of `capacity` entries (rounded up to a power of two, at least 64).
    pub fn with_capacity(capacity: usize) -> io::Result<AllocTable> {
        let capacity = capacity
            .max(64)
            .checked_next_power_of_two()
            .ok_or(io::ErrorKind::InvalidInput)?;
        let bytes = capacity
            .checked_mul(16)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let map = Mapping::anonymous_noreserve(bytes)?;
        Ok(AllocTable {
            map,
            mask: capacity - 1,
            max_live: capacity / 2,
            reserved: AtomicUsize::new(0),
            spare: AtomicU64::new(0),
        })
    }

    /// Entries the table holds.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Most entries that may be live at once.
    pub fn max_live(&self) -> usize {
        self.max_live
    }

    /// Live entries plus outstanding tickets.
    pub fn len(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Nothing live and no ticket out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key_word(&self, index: usize) -> &AtomicU64 {
        self.map.u64_at(index * 16).unwrap_or(&self.spare)
    }

    fn meta_word(&self, index: usize) -> &AtomicU64 {
        self.map.u64_at(index * 16 + 8).unwrap_or(&self.spare)
    }

    fn home(&self, ns: u64, key: u64) -> usize {
        (mix(key ^ ns.rotate_right(4)) as usize) & self.mask
    }

    /// Takes the right to one insert, or `None` when `max_live` entries are live or promised.
    pub fn reserve_entry(&self) -> Option<EntryTicket<'_>> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                if n < self.max_live {
                    Some(n + 1)
                } else {
                    None
                }
            })
            .ok()
            .map(|_| EntryTicket { table: self })
    }

    /// Inserts with a ticket. On error the ticket is returned to the pool.
    pub fn insert(
        &self,
        ticket: EntryTicket<'_>,
        key: Key,
        record: ChargeRecord,
    ) -> Result<(), InsertError> {
        let (ns, raw) = key.parts();
        let meta = encode(ns, record).ok_or(InsertError::Unrepresentable)?;
        let home = self.home(ns, raw);
        for step in 0..MAX_PROBE.min(self.capacity()) {
            let i = (home + step) & self.mask;
            let slot_meta = self.meta_word(i);
            let cur = slot_meta.load(Ordering::Acquire);
            let state = cur & STATE_MASK;
            if state != EMPTY && state != TOMBSTONE {
                continue;
            }
            if slot_meta
                .compare_exchange(cur, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.key_word(i).store(raw, Ordering::Relaxed);
                slot_meta.store(meta, Ordering::Release);
                // The ticket now stands for this live entry; `remove` gives the count back.
                std::mem::forget(ticket);
                return Ok(());
            }
        }
        Err(InsertError::ProbeLimit)
    }

    /// Takes a ticket and inserts.
    pub fn try_insert(&self, key: Key, record: ChargeRecord) -> Result<(), InsertError> {
        let ticket = self.reserve_entry().ok_or(InsertError::Full)?;
        self.insert(ticket, key, record)
    }

    /// Finds `key`; with `take`, removes it (one CAS, so two racing frees get it once).
    fn find(&self, key: Key, take: bool) -> Option<ChargeRecord> {
        let (ns, raw) = key.parts();
        let home = self.home(ns, raw);
        for step in 0..MAX_PROBE.min(self.capacity()) {
            let i = (home + step) & self.mask;
            let slot_meta = self.meta_word(i);
            loop {
                let cur = slot_meta.load(Ordering::Acquire);
                if cur == EMPTY {
                    return None;
                }
                if cur & STATE_MASK != LIVE
                    || namespace_of(cur) != ns
                    || self.key_word(i).load(Ordering::Relaxed) != raw
                {
                    break;
                }
                if !take {
                    return decode(cur);
                }
                // If `meta` still holds `cur`, the entry is the one we matched (a reused entry with
                // the same key and meta would be the same charge anyway).
                if slot_meta
                    .compare_exchange(cur, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.reserved.fetch_sub(1, Ordering::AcqRel);
                    return decode(cur);
                }
            }
        }
        None
    }

    /// Removes `key` and returns what it charged; `None` if it is not in the table.
    pub fn remove(&self, key: Key) -> Option<ChargeRecord> {
        self.find(key, true)
    }

    /// What `key` charged, without removing it.
    pub fn get(&self, key: Key) -> Option<ChargeRecord> {
        self.find(key, false)
    }

    /// Forgets every entry and gives the pages back (for a forked child, whose parent's allocations
    /// are not its own). No other thread may use the table meanwhile.
    pub fn clear(&self) {
        if self.map.discard().is_err() {
            for i in 0..self.capacity() {
                let m = self.meta_word(i);
                if m.load(Ordering::Relaxed) != EMPTY {
                    m.store(EMPTY, Ordering::Relaxed);
                }
            }
        }
        self.reserved.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rec(device: u16, bytes: u64, kind: MemKind) -> ChargeRecord {
        ChargeRecord {
            device,
            bytes,
            kind,
        }
    }

    #[test]
    fn insert_get_remove() {
        let t = AllocTable::with_capacity(1024).unwrap();
        assert_eq!(t.capacity(), 1024);
        let r = rec(3, 4096, MemKind::Data);
        t.try_insert(Key::DevicePtr(0x7f00_0000_0000), r).unwrap();
        assert_eq!(t.get(Key::DevicePtr(0x7f00_0000_0000)), Some(r));
        assert_eq!(
            t.get(Key::VmmHandle(0x7f00_0000_0000)),
            None,
            "namespaces are separate"
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(Key::DevicePtr(0x7f00_0000_0000)), Some(r));
        assert_eq!(
            t.remove(Key::DevicePtr(0x7f00_0000_0000)),
            None,
            "second free finds nothing"
        );
        assert!(t.is_empty());
        // Extremes survive the packing.
        let big = rec(255, MAX_ENTRY_BYTES, MemKind::Module);
        t.try_insert(Key::Context(u64::MAX), big).unwrap();
        assert_eq!(t.remove(Key::Context(u64::MAX)), Some(big));
        t.try_insert(Key::Array(0), rec(0, 0, MemKind::Context))
            .unwrap();
        assert_eq!(t.remove(Key::Array(0)), Some(rec(0, 0, MemKind::Context)));
        assert_eq!(
            t.try_insert(Key::Pool(1), rec(0, MAX_ENTRY_BYTES + 1, MemKind::Data)),
            Err(InsertError::Unrepresentable)
        );
        assert_eq!(
            t.try_insert(Key::Pool(1), rec(256, 1, MemKind::Data)),
            Err(InsertError::Unrepresentable)
        );
        assert!(t.is_empty(), "a failed insert returns its ticket");
    }

    #[test]
    fn full_table_refuses_before_anything_is_allocated() {
        let t = AllocTable::with_capacity(64).unwrap();
        assert_eq!(t.max_live(), 32);
        let tickets: Vec<_> = (0..32).map(|_| t.reserve_entry().unwrap()).collect();
        assert!(t.reserve_entry().is_none());
        assert_eq!(
            t.try_insert(Key::DevicePtr(1), rec(0, 1, MemKind::Data)),
            Err(InsertError::Full)
        );
        drop(tickets);
        assert!(t.is_empty());
        for i in 0..32u64 {
            t.try_insert(Key::DevicePtr(i << 8), rec(0, i, MemKind::Data))
                .unwrap();
        }
        assert!(t.reserve_entry().is_none());
        assert_eq!(t.remove(Key::DevicePtr(5 << 8)).map(|r| r.bytes), Some(5));
        assert!(t.reserve_entry().is_some());
    }

    #[test]
    fn a_million_live_entries() {
        let t = AllocTable::with_capacity(DEFAULT_CAPACITY).unwrap();
        assert!(
            t.max_live() >= 1_000_000,
            "the default holds a million live allocations"
        );
        let n = 1_000_000u64;
        // Device-pointer-like keys: 512-byte aligned and dense.
        let key = |i: u64| Key::DevicePtr(0x7f12_0000_0000 + i * 512);
        for i in 0..n {
            t.try_insert(key(i), rec((i % 8) as u16, i * 3, MemKind::Data))
                .unwrap();
        }
        assert_eq!(t.len(), n as usize);
        for i in (0..n).step_by(7) {
            assert_eq!(
                t.get(key(i)).map(|r| (r.device, r.bytes)),
                Some(((i % 8) as u16, i * 3))
            );
        }
        for i in 0..n {
            assert_eq!(t.remove(key(i)).map(|r| r.bytes), Some(i * 3), "key {i}");
        }
        assert!(t.is_empty());
        // Tombstones are reused: another full round still fits.
        for i in 0..n {
            t.try_insert(key(i + n), rec(0, 1, MemKind::Data)).unwrap();
        }
        for i in 0..n {
            assert!(t.remove(key(i + n)).is_some());
        }
        assert!(t.is_empty());
        t.clear();
        assert_eq!(t.get(key(0)), None);
    }

    #[test]
    fn churn_matches_a_model() {
        let t = AllocTable::with_capacity(4096).unwrap();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % 3000) << 9;
            if let Some(bytes) = model.remove(&k) {
                assert_eq!(t.remove(Key::DevicePtr(k)).map(|r| r.bytes), Some(bytes));
            } else if model.len() < t.max_live() {
                t.try_insert(Key::DevicePtr(k), rec(1, x >> 20, MemKind::Data))
                    .unwrap();
                model.insert(k, x >> 20 & MAX_ENTRY_BYTES);
            }
            assert_eq!(t.len(), model.len());
        }
    }

    #[test]
    fn concurrent_threads_insert_and_remove() {
        let t = AllocTable::with_capacity(1 << 19).unwrap();
        let threads = 8u64;
        let per = 20_000u64;
        std::thread::scope(|s| {
            for th in 0..threads {
                let t = &t;
                s.spawn(move || {
                    for round in 0..3u64 {
                        for i in 0..per {
                            let k = Key::DevicePtr((th << 40) | (round << 32) | (i << 8));
                            t.try_insert(k, rec(th as u16, i, MemKind::Data)).unwrap();
                        }
                        for i in 0..per {
                            let k = Key::DevicePtr((th << 40) | (round << 32) | (i << 8));
                            assert_eq!(t.remove(k), Some(rec(th as u16, i, MemKind::Data)));
                        }
                    }
                });
            }
        });
        assert!(t.is_empty());
    }

    #[test]
    fn racing_removes_of_one_key_give_it_once() {
        let t = AllocTable::with_capacity(1 << 12).unwrap();
        for round in 0..200u64 {
            t.try_insert(Key::DevicePtr(round), rec(0, 10, MemKind::Data))
                .unwrap();
            let wins = std::sync::atomic::AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        if t.remove(Key::DevicePtr(round)).is_some() {
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            assert_eq!(wins.load(Ordering::Relaxed), 1);
        }
        assert!(t.is_empty());
    }
}
