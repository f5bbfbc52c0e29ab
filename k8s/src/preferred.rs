//! `GetPreferredAllocation`: which replicas to take, decided at the GPU level. kubelet passes the free
//! replica IDs; how many of a GPU's replicas are free says how busy that GPU is.

use std::collections::BTreeMap;

use crate::config::Policy;
use crate::gpus::parse_replica_id;

/// A GPU's (host order rank, UUID) and its free replicas (number, ID).
type FreeReplicas = ((usize, String), Vec<(u32, String)>);

/// Picks `size` replica IDs from `available`, always including `must_include`.
///
/// - `Binpack`: GPUs already holding a must-include replica first, then the GPU with the fewest free
///   replicas (the busiest), taking its replicas before moving on, so whole GPUs stay free.
/// - `Spread`: one replica from each GPU in turn, the GPU with the most free replicas first.
///
/// Ties go to the GPU that appears first in `gpu_order` (host index order), and within a GPU to the
/// lowest replica number, so the answer is deterministic. IDs that are not replica IDs are used last.
pub fn preferred_allocation(
    available: &[String],
    must_include: &[String],
    size: usize,
    policy: Policy,
    gpu_order: &[String],
) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for id in must_include {
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    // Free replicas per GPU (must-include ones count as taken), in GPU order.
    let rank = |uuid: &str| {
        gpu_order
            .iter()
            .position(|u| u == uuid)
            .unwrap_or(usize::MAX)
    };
    let mut free: BTreeMap<(usize, String), Vec<(u32, String)>> = BTreeMap::new();
    let mut unparsed = Vec::new();
    for id in available {
        if chosen.contains(id) {
            continue;
        }
        match parse_replica_id(id) {
            Some((uuid, n)) => free
                .entry((rank(uuid), uuid.to_string()))
                .or_default()
                .push((n, id.clone())),
            None => unparsed.push(id.clone()),
        }
    }
    for replicas in free.values_mut() {
        replicas.sort();
    }
    // Replicas already picked (must-include) make their GPU busier under binpack and less attractive
    // under spread.
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    for id in &chosen {
        if let Some((uuid, _)) = parse_replica_id(id) {
            *taken.entry(uuid.to_string()).or_default() += 1;
        }
    }
    let mut gpus: Vec<FreeReplicas> = free.into_iter().collect();
    match policy {
        Policy::Binpack => {
            // GPUs this container already has first (fewest GPUs per container), then the fewest free;
            // the stable sort keeps host order among equals.
            gpus.sort_by_key(|((_, uuid), replicas)| {
                (
                    usize::MAX - taken.get(uuid).copied().unwrap_or(0),
                    replicas.len(),
                )
            });
            for (_, replicas) in gpus {
                for (_, id) in replicas {
                    if chosen.len() >= size {
                        break;
                    }
                    chosen.push(id);
                }
            }
        }
        Policy::Spread => {
            // Most free first; then round-robin so each pass takes one replica per GPU.
            gpus.sort_by_key(|((_, uuid), replicas)| {
                (
                    taken.get(uuid).copied().unwrap_or(0),
                    usize::MAX - replicas.len(),
                )
            });
            let mut queues: Vec<std::vec::IntoIter<(u32, String)>> =
                gpus.into_iter().map(|(_, r)| r.into_iter()).collect();
            while chosen.len() < size {
                let mut progressed = false;
                for queue in queues.iter_mut() {
                    if chosen.len() >= size {
                        break;
                    }
                    if let Some((_, id)) = queue.next() {
                        chosen.push(id);
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
    }
    for id in unparsed {
        if chosen.len() >= size {
            break;
        }
        chosen.push(id);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const ORDER: [&str; 3] = ["GPU-a", "GPU-b", "GPU-c"];

    #[test]
    fn binpack_fills_the_busiest_gpu() {
        let available = ids(&[
            "GPU-a-0", "GPU-a-1", "GPU-a-2", "GPU-b-2", "GPU-b-3", "GPU-c-0", "GPU-c-1", "GPU-c-2",
        ]);
        let got = preferred_allocation(&available, &[], 3, Policy::Binpack, &ids(&ORDER));
        assert_eq!(got, ids(&["GPU-b-2", "GPU-b-3", "GPU-a-0"]));
    }

    #[test]
    fn spread_takes_one_per_gpu_emptiest_first() {
        let available = ids(&[
            "GPU-a-0", "GPU-a-1", "GPU-b-3", "GPU-c-0", "GPU-c-1", "GPU-c-2",
        ]);
        let got = preferred_allocation(&available, &[], 4, Policy::Spread, &ids(&ORDER));
        assert_eq!(got, ids(&["GPU-c-0", "GPU-a-0", "GPU-b-3", "GPU-c-1"]));
    }

    #[test]
    fn must_include_comes_first_and_counts() {
        let available = ids(&["GPU-a-0", "GPU-a-1", "GPU-b-0", "GPU-b-1"]);
        let got = preferred_allocation(
            &available,
            &ids(&["GPU-a-1"]),
            2,
            Policy::Spread,
            &ids(&ORDER),
        );
        assert_eq!(got, ids(&["GPU-a-1", "GPU-b-0"]));
        let got = preferred_allocation(
            &available,
            &ids(&["GPU-b-1"]),
            2,
            Policy::Binpack,
            &ids(&ORDER),
        );
        assert_eq!(got, ids(&["GPU-b-1", "GPU-b-0"]));
    }
}
