//! A third-party driver client: cudarc (dynamic loading, one `dlsym` per function) against whatever
//! `libcuda.so` the loader finds. The test `tests/clients.rs` runs it on a simulated machine.
//!
//! Round-trips data, runs the simulated `fill_u32` kernel through cudarc's launch API, checks the
//! memory it sees, and prints `ok` lines; any failure exits non-zero.

use std::ffi::{c_void, CString};

use cudarc::driver::{result, CudaContext, DevicePtr, DevicePtrMut};

const MODULE: &str = "SIMGPU-MODULE 1\nkernel fill_u32 100\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = CudaContext::new(0)?;
    let stream = ctx.default_stream();
    let (free_before, total) = ctx.mem_get_info()?;
    println!("ok context total={total} free={free_before}");

    // Host -> device -> host.
    let data: Vec<u32> = (0..4096).map(|i| i * 3 + 1).collect();
    let on_device = stream.clone_htod(&data)?;
    let back = stream.clone_dtoh(&on_device)?;
    assert_eq!(back, data, "round trip");
    println!("ok round trip");

    // Memory the driver reports moves with our allocations.
    let mut zeros = stream.alloc_zeros::<u32>(1 << 20)?;
    stream.synchronize()?;
    let (free_during, _) = ctx.mem_get_info()?;
    assert!(
        free_during < free_before,
        "allocations show in cuMemGetInfo: {free_during} vs {free_before}"
    );
    println!("ok mem_get_info free={free_during}");

    // A kernel that really writes: load the simulated module and launch fill_u32(dst, value, count).
    let image = CString::new(MODULE)?;
    // SAFETY: a NUL-terminated module image; the function comes from the module we just loaded.
    let function = unsafe {
        let module = result::module::load_data(image.as_ptr() as *const c_void)?;
        result::module::get_function(module, CString::new("fill_u32")?)?
    };
    {
        let (mut dst, _guard) = zeros.device_ptr_mut(&stream);
        let mut value: u32 = 0xc0ffee;
        let mut count: u64 = 1 << 20;
        let mut params: [*mut c_void; 3] = [
            &mut dst as *mut _ as *mut c_void,
            &mut value as *mut _ as *mut c_void,
            &mut count as *mut _ as *mut c_void,
        ];
        // SAFETY: fill_u32's three parameters, pointing to live locals; `dst` holds `count` u32s.
        unsafe {
            result::launch_kernel(
                function,
                (4, 1, 1),
                (256, 1, 1),
                0,
                stream.cu_stream(),
                &mut params,
            )?
        };
    }
    let filled = stream.clone_dtoh(&zeros)?;
    assert!(
        filled.iter().all(|v| *v == 0xc0ffee),
        "fill_u32 wrote every element"
    );
    println!("ok kernel");

    let (ptr, _guard) = on_device.device_ptr(&stream);
    assert_ne!(ptr, 0);
    drop(_guard);
    drop(on_device);
    drop(zeros);
    stream.synchronize()?;
    println!("ok done");
    Ok(())
}
