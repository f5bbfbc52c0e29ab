//! Simulated module images and what a kernel launch costs. Pure parsing and arithmetic.
//!
//! A simulated module image is text:
//!
//! ```text
//! SIMGPU-MODULE 1
//! # comments and blank lines are ignored
//! kernel <name> <ns_per_block_at_1_sm> [<flags>]
//! global <name> <bytes>
//! ```
//!
//! A launch of G blocks (gx*gy*gz) of B threads costs `ceil(G / sms) * ns_per_block * max(1, ceil(B / 256))`
//! ns of device time. Every module also has the built-ins `sleep_<N>us` (N µs whatever the grid) and
//! `fill_u32` (params: `CUdeviceptr dst, u32 value, u64 count`; really writes). `global` lines (our
//! extension) give `cuModuleGetGlobal` a zero-filled device variable. Kernel flags are accepted and
//! ignored (reserved).
//!
//! Images that are not ours (PTX text, an ELF cubin, a fatbin, as libcudart and real programs load)
//! are accepted as "foreign": every function name resolves, at `FOREIGN_NS_PER_BLOCK`.

/// Cost of a kernel from a foreign image (PTX, cubin, fatbin), per block-wave.
pub(crate) const FOREIGN_NS_PER_BLOCK: u64 = 1_000;
/// Cost of the built-in `fill_u32` when the module does not declare it.
pub(crate) const FILL_NS_PER_BLOCK: u64 = 100;
/// The longest text image we read.
pub(crate) const MAX_IMAGE_BYTES: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelSpec {
    pub name: String,
    pub ns_per_block: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GlobalSpec {
    pub name: String,
    pub bytes: u64,
}

/// What a loaded image holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModuleSpec {
    pub kernels: Vec<KernelSpec>,
    pub globals: Vec<GlobalSpec>,
    /// Not a simulated image: any function name resolves.
    pub foreign: bool,
}

/// What a function does when launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Takes device time by the launch formula.
    Compute { ns_per_block: u64 },
    /// `sleep_<N>us`: a fixed time.
    Sleep { ns: u64 },
    /// `fill_u32(dst, value, count)`: writes, and takes time by the formula.
    Fill { ns_per_block: u64 },
}

/// Recognise an image from its first bytes (up to the first NUL; `terminated` says whether one was
/// found within `MAX_IMAGE_BYTES`). `Err(())` = not an image we or the driver would accept.
pub(crate) fn classify(prefix: &[u8], terminated: bool) -> Result<ModuleSpec, String> {
    const ELF: &[u8] = b"\x7fELF";
    const FATBIN: &[u8] = &[0x50, 0xed, 0x55, 0xba]; // 0xBA55ED50, little-endian
    const FATBIN_WRAPPER: &[u8] = &[0xb1, 0x43, 0x62, 0x46]; // 0x466243B1
    if prefix.starts_with(ELF) || prefix.starts_with(FATBIN) || prefix.starts_with(FATBIN_WRAPPER) {
        return Ok(ModuleSpec {
            kernels: Vec::new(),
            globals: Vec::new(),
            foreign: true,
        });
    }
    if !terminated {
        return Err(format!(
            "image is not NUL-terminated within {MAX_IMAGE_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(prefix)
        .map_err(|_| "image is neither text nor a cubin/fatbin".to_string())?;
    if text.trim_start().starts_with("SIMGPU-MODULE") {
        return parse(text);
    }
    if text.contains(".entry") || text.contains(".version") {
        return Ok(ModuleSpec {
            kernels: Vec::new(),
            globals: Vec::new(),
            foreign: true,
        });
    }
    Err("unrecognised module image".into())
}

/// Parse a `SIMGPU-MODULE 1` text image.
pub(crate) fn parse(text: &str) -> Result<ModuleSpec, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match lines
        .next()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        Some(head) if head == ["SIMGPU-MODULE", "1"] => {}
        other => {
            return Err(format!(
                "first line must be `SIMGPU-MODULE 1`, not {other:?}"
            ))
        }
    }
    let mut spec = ModuleSpec {
        kernels: Vec::new(),
        globals: Vec::new(),
        foreign: false,
    };
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", name, ns, _flags @ ..] => {
                let ns_per_block = ns
                    .parse::<u64>()
                    .map_err(|_| format!("kernel {name}: bad cost {ns:?}"))?;
                spec.kernels.push(KernelSpec {
                    name: name.to_string(),
                    ns_per_block,
                });
            }
            ["global", name, bytes] => {
                let bytes = bytes.parse::<u64>().ok().filter(|b| *b > 0);
                let bytes = bytes.ok_or_else(|| format!("global {name}: bad size"))?;
                spec.globals.push(GlobalSpec {
                    name: name.to_string(),
                    bytes,
                });
            }
            _ => return Err(format!("cannot parse line {line:?}")),
        }
    }
    Ok(spec)
}

impl ModuleSpec {
    /// The function `name` of this module, if it has one (declared kernels win over built-ins).
    pub(crate) fn function(&self, name: &str) -> Option<Behaviour> {
        let declared = self
            .kernels
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.ns_per_block);
        if name == "fill_u32" {
            return Some(Behaviour::Fill {
                ns_per_block: declared.unwrap_or(FILL_NS_PER_BLOCK),
            });
        }
        if let Some(ns_per_block) = declared {
            return Some(Behaviour::Compute { ns_per_block });
        }
        if let Some(micros) = name
            .strip_prefix("sleep_")
            .and_then(|r| r.strip_suffix("us"))
        {
            if let Ok(us) = micros.parse::<u64>() {
                return Some(Behaviour::Sleep {
                    ns: us.saturating_mul(1000),
                });
            }
        }
        self.foreign.then_some(Behaviour::Compute {
            ns_per_block: FOREIGN_NS_PER_BLOCK,
        })
    }
}

/// Device time of one launch, by the formula in the module docs.
pub(crate) fn duration_ns(behaviour: Behaviour, grid: [u32; 3], block: [u32; 3], sms: u32) -> u64 {
    let ns_per_block = match behaviour {
        Behaviour::Sleep { ns } => return ns,
        Behaviour::Compute { ns_per_block } | Behaviour::Fill { ns_per_block } => ns_per_block,
    };
    let blocks: u128 = grid.iter().map(|&g| g as u128).product();
    let threads: u128 = block.iter().map(|&b| b as u128).product();
    let waves = blocks.div_ceil(sms.max(1) as u128);
    let thread_factor = threads.div_ceil(256).max(1);
    (waves * ns_per_block as u128 * thread_factor).min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "SIMGPU-MODULE 1\n# a comment\n\nkernel matmul 1000 coop\nkernel tiny 5\nglobal counter 64\n";

    #[test]
    fn parses_kernels_globals_and_builtins() {
        let spec = classify(IMAGE.as_bytes(), true).unwrap();
        assert!(!spec.foreign);
        assert_eq!(
            spec.function("matmul"),
            Some(Behaviour::Compute { ns_per_block: 1000 })
        );
        assert_eq!(
            spec.function("sleep_20000us"),
            Some(Behaviour::Sleep { ns: 20_000_000 })
        );
        assert_eq!(
            spec.function("fill_u32"),
            Some(Behaviour::Fill {
                ns_per_block: FILL_NS_PER_BLOCK
            })
        );
        assert_eq!(spec.function("missing"), None);
        assert_eq!(spec.function("sleep_xus"), None);
        assert_eq!(
            spec.globals,
            vec![GlobalSpec {
                name: "counter".into(),
                bytes: 64
            }]
        );
    }

    #[test]
    fn rejects_bad_images() {
        assert!(parse("SIMGPU-MODULE 2\n").is_err());
        assert!(parse("SIMGPU-MODULE 1\nkernel k notanumber\n").is_err());
        assert!(parse("SIMGPU-MODULE 1\nbogus line\n").is_err());
        assert!(classify(b"hello", true).is_err());
        assert!(classify(IMAGE.as_bytes(), false).is_err());
    }

    #[test]
    fn foreign_images_resolve_any_name() {
        for head in [
            &b"\x7fELF\x02\x01\x01"[..],
            &[0x50, 0xed, 0x55, 0xba, 1],
            b"//\n.version 8.0\n.entry k(",
        ] {
            let spec = classify(head, true).unwrap();
            assert!(spec.foreign);
            assert_eq!(
                spec.function("_Z3fooPf"),
                Some(Behaviour::Compute {
                    ns_per_block: FOREIGN_NS_PER_BLOCK
                })
            );
        }
    }

    #[test]
    fn launch_formula() {
        let k = Behaviour::Compute { ns_per_block: 1000 };
        // 216 blocks on 108 SMs: two waves; 256 threads: factor 1.
        assert_eq!(duration_ns(k, [216, 1, 1], [256, 1, 1], 108), 2000);
        // 257 threads round up to a factor of 2; one block is one wave.
        assert_eq!(duration_ns(k, [1, 1, 1], [257, 1, 1], 108), 2000);
        // A grid that scales with the GPU takes the same time on any size.
        assert_eq!(
            duration_ns(k, [58 * 4, 1, 1], [128, 1, 1], 58),
            duration_ns(k, [108 * 4, 1, 1], [128, 1, 1], 108)
        );
        assert_eq!(
            duration_ns(Behaviour::Sleep { ns: 5 }, [1000, 1000, 1], [1024, 1, 1], 1),
            5
        );
        // 3-D grids multiply.
        assert_eq!(duration_ns(k, [2, 3, 4], [1, 1, 1], 24), 1000);
    }
}
