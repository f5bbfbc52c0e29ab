#!/usr/bin/env python3
"""Rewrite bindgen's `extern "C" { pub fn name(args) -> ret; }` blocks into `pub type PFN_name = ...` aliases,
plus a NVML_FUNCTIONS list of every name, so no crate can link a function by its exported name."""
import re
import sys

src = sys.stdin.read()
names = []


def block(m):
    out = []
    for f in re.finditer(r"pub fn (\w+)\((.*?)\)(\s*->\s*([^;]+))?;", m.group(1), re.S):
        name, args, ret = f.group(1), " ".join(f.group(2).split()), f.group(4)
        names.append(name)
        out.append(f'pub type PFN_{name} = unsafe extern "C" fn({args}){" -> " + ret.strip() if ret else ""};')
    return "\n".join(out)


src = re.sub(r'(?:unsafe )?extern "C" \{(.*?)\n\}', block, src, flags=re.S)
sys.stdout.write(src)
sys.stdout.write("\n/// Every function nvml.h declares (versioned and legacy names).\npub static NVML_FUNCTIONS: &[&str] = &[\n")
for n in sorted(set(names)):
    sys.stdout.write(f'    "{n}",\n')
sys.stdout.write("];\n")
