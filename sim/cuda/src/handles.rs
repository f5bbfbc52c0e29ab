//! Opaque handles (`CUcontext`, `CUstream`, ...) for objects kept in per-kind tables.
//!
//! A handle is never a pointer to our memory: it encodes a kind tag, a generation and a slot index,
//! so a destroyed or forged handle is recognised (`CUDA_ERROR_INVALID_HANDLE`) instead of being
//! dereferenced. The tag sits in the top byte, so no handle is NULL or one of the special stream
//! values (`CU_STREAM_LEGACY` = 1, `CU_STREAM_PER_THREAD` = 2), and clients that print handles see
//! which kind they hold.

pub(crate) type Handle = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Context = 0x11,
    Stream = 0x12,
    Event = 0x13,
    Module = 0x14,
    Function = 0x15,
    Pool = 0x16,
    Array = 0x17,
    Mipmap = 0x18,
    Graph = 0x19,
    GraphExec = 0x1a,
    Library = 0x1b,
    Kernel = 0x1c,
    Physical = 0x1d,
    Node = 0x1e,
}

/// The kind tag of a handle value (0 for NULL and other non-handles).
#[inline]
pub(crate) fn kind_of(handle: Handle) -> u8 {
    (handle >> 56) as u8
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Objects of one kind, addressed by handle.
pub(crate) struct Table<T> {
    kind: Kind,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

const GENERATION_MASK: u32 = 0x00ff_ffff;

impl<T> Table<T> {
    pub(crate) const fn new(kind: Kind) -> Table<T> {
        Table {
            kind,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn encode(&self, index: u32, generation: u32) -> Handle {
        ((self.kind as u64) << 56) | (((generation & GENERATION_MASK) as u64) << 32) | index as u64
    }

    fn decode(&self, handle: Handle) -> Option<usize> {
        if kind_of(handle) != self.kind as u8 {
            return None;
        }
        let index = (handle & 0xffff_ffff) as usize;
        let generation = ((handle >> 32) as u32) & GENERATION_MASK;
        let slot = self.slots.get(index)?;
        (slot.value.is_some() && slot.generation & GENERATION_MASK == generation).then_some(index)
    }

    pub(crate) fn insert(&mut self, value: T) -> Handle {
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                // A new generation, so a handle to the previous occupant stays invalid.
                slot.generation = slot.generation.wrapping_add(1).max(1);
                slot.value = Some(value);
                let generation = slot.generation;
                self.encode(index, generation)
            }
            None => {
                let index = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 1,
                    value: Some(value),
                });
                self.encode(index, 1)
            }
        }
    }

    #[inline]
    pub(crate) fn get(&self, handle: Handle) -> Option<&T> {
        let index = self.decode(handle)?;
        self.slots[index].value.as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, handle: Handle) -> Option<&mut T> {
        let index = self.decode(handle)?;
        self.slots[index].value.as_mut()
    }

    pub(crate) fn contains(&self, handle: Handle) -> bool {
        self.decode(handle).is_some()
    }

    pub(crate) fn remove(&mut self, handle: Handle) -> Option<T> {
        let index = self.decode(handle)?;
        let value = self.slots[index].value.take();
        self.free.push(index as u32);
        value
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Handle, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value
                .as_ref()
                .map(|v| (self.encode(i as u32, s.generation), v))
        })
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (Handle, &mut T)> + '_ {
        let kind = self.kind;
        self.slots.iter_mut().enumerate().filter_map(move |(i, s)| {
            let generation = s.generation;
            s.value.as_mut().map(|v| {
                (
                    ((kind as u64) << 56)
                        | (((generation & GENERATION_MASK) as u64) << 32)
                        | i as u64,
                    v,
                )
            })
        })
    }

    /// Handles of every object matching `keep`.
    pub(crate) fn handles_where(&self, keep: impl Fn(&T) -> bool) -> Vec<Handle> {
        self.iter()
            .filter(|(_, v)| keep(v))
            .map(|(h, _)| h)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_foreign_handles_are_rejected() {
        let mut t: Table<u32> = Table::new(Kind::Stream);
        let a = t.insert(7);
        assert_eq!(t.get(a), Some(&7));
        assert!(a > 2, "never NULL or a special stream value");
        assert_eq!(t.remove(a), Some(7));
        assert!(t.get(a).is_none());
        let b = t.insert(8);
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert!(t.get(a).is_none());
        let mut other: Table<u32> = Table::new(Kind::Event);
        let e = other.insert(1);
        assert!(t.get(e).is_none());
        assert!(t.get(0).is_none() && t.get(1).is_none() && t.get(u64::MAX).is_none());
        assert_eq!(
            t.iter().map(|(h, v)| (h, *v)).collect::<Vec<_>>(),
            vec![(b, 8)]
        );
    }
}
