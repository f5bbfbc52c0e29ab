//! `CUDA_VISIBLE_DEVICES`: which of the machine's GPUs this process's CUDA sees, and in what order.
//!
//! The rules are the CUDA programming guide's ("CUDA Environment Variables"), plus what the real
//! driver is observed to do where the guide says nothing (PyTorch's `_parse_visible_devices`
//! mirrors the same observations):
//!
//! - unset: every GPU, in the machine's (NVML's) order; set but empty: none;
//! - a comma-separated list; each entry is an index into the machine's GPUs (read like `strtoul`:
//!   leading blanks skipped, the leading digits count, anything after them is ignored, so `1gpu`
//!   is `1`), or `GPU-` and a prefix of a GPU's UUID long enough to name one GPU;
//! - the first entry that names no GPU ends the list: an index out of range, a negative one, no
//!   digits, an unknown or ambiguous UUID prefix, or a `MIG-` name (the simulator has no MIG);
//!   the GPUs listed before it stay visible (`0,2,-1,1` is `0,2`);
//! - a GPU named twice makes the whole list empty (`0,1,0` shows no GPU).
//!
//! NVML ignores the variable: it always lists every GPU of the machine.

/// The machine indices CUDA ordinals 0, 1, .. stand for, given the variable's value (`None` =
/// unset) and the machine's device UUIDs (`GPU-…`, in machine order). Empty means no device.
pub(crate) fn visible_devices(var: Option<&str>, uuids: &[&str]) -> Vec<u32> {
    let Some(var) = var else {
        return (0..uuids.len() as u32).collect();
    };
    let mut visible: Vec<u32> = Vec::new();
    for entry in var.split(',') {
        let Some(index) = resolve(entry, uuids) else {
            break;
        };
        if visible.contains(&index) {
            return Vec::new();
        }
        visible.push(index);
    }
    visible
}

/// The machine index one entry names, if any.
fn resolve(entry: &str, uuids: &[&str]) -> Option<u32> {
    let entry = entry.trim_start();
    if entry.starts_with("MIG-") {
        return None;
    }
    if entry.starts_with("GPU-") {
        let prefix = entry.trim_end().to_ascii_lowercase();
        let mut matches = uuids
            .iter()
            .enumerate()
            .filter(|(_, uuid)| uuid.to_ascii_lowercase().starts_with(&prefix));
        let (index, _) = matches.next()?;
        return match matches.next() {
            Some(_) => None, // ambiguous
            None => Some(index as u32),
        };
    }
    let digits = entry.strip_prefix('+').unwrap_or(entry);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let index: u32 = digits[..end].parse().ok()?;
    ((index as usize) < uuids.len()).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::visible_devices;

    const UUIDS: [&str; 3] = [
        "GPU-aaaa1111-0000-0000-0000-000000000000",
        "GPU-aaaa2222-0000-0000-0000-000000000000",
        "GPU-bbbb3333-0000-0000-0000-000000000000",
    ];

    fn visible(var: Option<&str>) -> Vec<u32> {
        visible_devices(var, &UUIDS)
    }

    #[test]
    fn unset_is_everything_and_empty_is_nothing() {
        assert_eq!(visible(None), [0, 1, 2]);
        assert_eq!(visible(Some("")), [] as [u32; 0]);
        assert_eq!(visible(Some("   ")), [] as [u32; 0]);
        assert_eq!(visible(Some("-1")), [] as [u32; 0]);
    }

    #[test]
    fn indices_select_and_reorder() {
        assert_eq!(visible(Some("2,0")), [2, 0]);
        assert_eq!(visible(Some("1")), [1]);
        assert_eq!(visible(Some(" 1, 2")), [1, 2]);
        assert_eq!(visible(Some("+1")), [1]);
        // strtoul: the leading digits count.
        assert_eq!(visible(Some("1gpu2,2ampere")), [1, 2]);
        assert_eq!(visible(Some("01")), [1]);
    }

    #[test]
    fn the_first_invalid_entry_ends_the_list() {
        assert_eq!(visible(Some("0,2,-1,1")), [0, 2]);
        assert_eq!(visible(Some("2,3,0")), [2]);
        assert_eq!(visible(Some("1,,0")), [1]);
        assert_eq!(visible(Some("1,x,0")), [1]);
        assert_eq!(visible(Some("0,1,")), [0, 1]);
        assert_eq!(visible(Some("1,99999999999999999999,0")), [1]);
        assert_eq!(visible(Some("1,MIG-GPU-aaaa1111/1/0,0")), [1]);
        assert_eq!(visible(Some("MIG-aaaa1111")), [] as [u32; 0]);
    }

    #[test]
    fn uuids_and_unique_prefixes() {
        assert_eq!(visible(Some(UUIDS[2])), [2]);
        assert_eq!(visible(Some("GPU-bbbb,GPU-AAAA1")), [2, 0]);
        assert_eq!(
            visible(Some("GPU-aaaa2222-0000-0000-0000-000000000000 ,0")),
            [1, 0]
        );
        // Ambiguous or unknown prefixes name nothing.
        assert_eq!(visible(Some("1,GPU-aaaa,0")), [1]);
        assert_eq!(visible(Some("2,GPU-cccc,0")), [2]);
        // Without `GPU-` it is read as a number.
        assert_eq!(visible(Some("aaaa1111")), [] as [u32; 0]);
    }

    #[test]
    fn a_device_named_twice_hides_everything() {
        assert_eq!(visible(Some("0,1,0")), [] as [u32; 0]);
        assert_eq!(visible(Some("2,GPU-bbbb")), [] as [u32; 0]);
        assert_eq!(visible(Some("1,1")), [] as [u32; 0]);
    }
}
