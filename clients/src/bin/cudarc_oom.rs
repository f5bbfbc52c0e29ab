//! A cudarc (dynamic loading) client: takes the device's memory in chunks until the driver says no,
//! and prints what it got as one JSON line. cudarc opens `libcuda.so` itself and resolves each entry
//! point with its own dlsym, so under LD_PRELOAD only libvgpu's dlsym front door can limit it.
//!
//! Usage: cudarc_oom [chunk-bytes] [ordinal]

use cudarc::driver::{result, CudaContext, DriverError};

fn code(e: &DriverError) -> u32 {
    e.0 as u32
}

/// The error's name for the JSON line (its Debug form, without characters JSON would need escaped).
fn name(e: &DriverError) -> String {
    format!("{:?}", e.0).replace(['"', '\\'], "")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let chunk: usize = args
        .next()
        .map(|a| a.parse().expect("chunk bytes"))
        .unwrap_or(8 << 20);
    let ordinal: usize = args
        .next()
        .map(|a| a.parse().expect("ordinal"))
        .unwrap_or(0);

    let ctx = match CudaContext::new(ordinal) {
        Ok(ctx) => ctx,
        Err(e) => {
            println!(
                "{{\"error\":\"{}\",\"error_code\":{},\"stage\":\"context\"}}",
                name(&e),
                code(&e)
            );
            std::process::exit(2);
        }
    };
    ctx.bind_to_thread().expect("bind context");
    let (free_before, total) = ctx.mem_get_info().expect("cuMemGetInfo");

    let mut held = Vec::new();
    let failure = loop {
        // SAFETY: the context is current on this thread; the memory is only freed below.
        match unsafe { result::malloc_sync(chunk) } {
            Ok(ptr) => held.push(ptr),
            Err(e) => break e,
        }
        if held.len() > 1 << 20 {
            panic!("a million chunks and no error: the limit is not enforced");
        }
    };
    let (free_full, _) = result::mem_get_info().expect("cuMemGetInfo");
    let chunks = held.len();
    for ptr in held {
        // SAFETY: each pointer came from malloc_sync above and is freed once.
        unsafe { result::free_sync(ptr) }.expect("cuMemFree");
    }
    let (free_after, _) = result::mem_get_info().expect("cuMemGetInfo");
    println!(
        "{{\"chunk\":{chunk},\"chunks\":{chunks},\"total\":{total},\"free_before\":{free_before},\
         \"free_full\":{free_full},\"free_after\":{free_after},\"error\":\"{}\",\"error_code\":{}}}",
        name(&failure),
        code(&failure)
    );
}
