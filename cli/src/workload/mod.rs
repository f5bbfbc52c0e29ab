//! `vgpu __workload`: small CUDA programs the demo and the tests run under `vgpu run`, built into the
//! `vgpu` binary so nothing else needs compiling. They talk to whatever `libcuda.so.1` the loader finds
//! (the simulated driver in the demo) through `dlopen` + `dlsym`, like an ordinary application.
//!
//! Output is one line per event on stdout, flushed at once, so a parent reading a pipe sees it live.
//! Exit status: 0 done, 2 stopped by CUDA_ERROR_OUT_OF_MEMORY, 1 any other failure.

mod driver;

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::format;
use driver::Driver;

pub const EXIT_OUT_OF_MEMORY: i32 = 2;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub struct AllocOptions {
    pub device: i32,
    pub chunk_bytes: u64,
    /// Stop (successfully) after this much; `None` = until the driver (or vgpu) says no.
    pub total_bytes: Option<u64>,
    /// Wait between allocations, so a watcher sees usage grow.
    pub pace: Duration,
    /// Keep the memory this long before freeing it and exiting.
    pub hold: Duration,
}

/// Allocates `chunk_bytes` at a time until `total_bytes` or out of memory, then holds and frees.
pub fn alloc(options: &AllocOptions) -> i32 {
    let driver = match Driver::open() {
        Ok(d) => d,
        Err(e) => {
            say(&format!("alloc: {e}"));
            return 1;
        }
    };
    let device = match driver.open_device(options.device) {
        Ok(d) => d,
        Err(e) => {
            say(&format!("alloc: {e}"));
            return 1;
        }
    };
    match driver.memory_info() {
        Ok((free, total)) => say(&format!(
            "alloc: pid {} on device {} ({}): {} free of {}",
            std::process::id(),
            device.ordinal,
            device.name,
            format::bytes(free),
            format::bytes(total)
        )),
        Err(e) => say(&format!("alloc: {e}")),
    }
    let mut held = Vec::new();
    let mut allocated = 0u64;
    let mut status = 0;
    loop {
        if options.total_bytes.is_some_and(|t| allocated >= t) {
            say(&format!("alloc: reached {}", format::bytes(allocated)));
            break;
        }
        let request = match options.total_bytes {
            Some(total) => options.chunk_bytes.min(total - allocated),
            None => options.chunk_bytes,
        };
        match driver.alloc(request) {
            Ok(ptr) => {
                held.push(ptr);
                allocated += request;
                say(&format!(
                    "alloc: +{} -> {}",
                    format::bytes(request),
                    format::bytes(allocated)
                ));
            }
            Err(e) if e.is_out_of_memory() => {
                say(&format!(
                    "alloc: out of memory: {} of {} failed with {} ({}) after {}",
                    e.call,
                    format::bytes(request),
                    e.name,
                    e.code.0,
                    format::bytes(allocated)
                ));
                status = EXIT_OUT_OF_MEMORY;
                break;
            }
            Err(e) => {
                say(&format!("alloc: {e} after {}", format::bytes(allocated)));
                status = 1;
                break;
            }
        }
        std::thread::sleep(options.pace);
    }
    if !options.hold.is_zero() {
        say(&format!(
            "alloc: holding {} for {} s",
            format::bytes(allocated),
            options.hold.as_secs_f64()
        ));
        std::thread::sleep(options.hold);
    }
    for ptr in held {
        if let Err(e) = driver.free(ptr) {
            say(&format!("alloc: {e}"));
            status = status.max(1);
        }
    }
    status
}

pub struct BurnOptions {
    pub device: i32,
    /// Device time of one launch.
    pub kernel_us: u64,
    pub duration: Duration,
    pub report_every: Duration,
}

/// Launches a kernel of `kernel_us` device time in a loop, synchronising after each, and reports the
/// share of wall time its kernels occupied the device: what a compute limit should hold down.
pub fn burn(options: &BurnOptions) -> i32 {
    let driver = match Driver::open() {
        Ok(d) => d,
        Err(e) => {
            say(&format!("burn: {e}"));
            return 1;
        }
    };
    let device = match driver.open_device(options.device) {
        Ok(d) => d,
        Err(e) => {
            say(&format!("burn: {e}"));
            return 1;
        }
    };
    // One wave of blocks (grid = SM count, 256 threads): a launch costs ns_per_block, so kernel_us on any
    // size of simulated GPU (the simulator's cost model, see the common brief).
    let image = format!(
        "SIMGPU-MODULE 1\nkernel burn {}\n",
        options.kernel_us.saturating_mul(1000)
    );
    let kernel = match driver.load_kernel(&image, "burn") {
        Ok(k) => k,
        Err(e) => {
            say(&format!("burn: {e}"));
            return 1;
        }
    };
    say(&format!(
        "burn: pid {} on device {} ({}, {} SMs): {} us kernels for {} s",
        std::process::id(),
        device.ordinal,
        device.name,
        device.sm_count,
        options.kernel_us,
        options.duration.as_secs_f64()
    ));
    let started = Instant::now();
    let mut window_start = started;
    let mut window_launches = 0u64;
    let mut launches = 0u64;
    while started.elapsed() < options.duration {
        if let Err(e) = driver
            .launch(kernel, device.sm_count, 256)
            .and_then(|()| driver.synchronize())
        {
            say(&format!("burn: {e} after {launches} launches"));
            return 1;
        }
        launches += 1;
        window_launches += 1;
        let window = window_start.elapsed();
        if window >= options.report_every {
            say(&share_line(window_launches, options.kernel_us, window));
            window_start = Instant::now();
            window_launches = 0;
        }
    }
    let total = started.elapsed();
    say(&format!(
        "burn: done: {launches} launches in {:.1} s, average share {}%",
        total.as_secs_f64(),
        share_percent(launches, options.kernel_us, total)
    ));
    0
}

fn share_percent(launches: u64, kernel_us: u64, wall: Duration) -> u64 {
    let busy_us = launches.saturating_mul(kernel_us) as f64;
    (busy_us / wall.as_micros().max(1) as f64 * 100.0).round() as u64
}

/// `burn: share 31% (310 launches in 1000 ms)`; the demo parses the number after `share`.
fn share_line(launches: u64, kernel_us: u64, window: Duration) -> String {
    format!(
        "burn: share {}% ({launches} launches in {} ms)",
        share_percent(launches, kernel_us, window),
        window.as_millis()
    )
}

/// The share in a `burn: share N% ...` line, for whoever reads the workload's output.
pub fn parse_share_line(line: &str) -> Option<u64> {
    line.strip_prefix("burn: share ")?
        .split('%')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_lines_round_trip() {
        let line = share_line(310, 1000, Duration::from_millis(1000));
        assert_eq!(line, "burn: share 31% (310 launches in 1000 ms)");
        assert_eq!(parse_share_line(&line), Some(31));
        assert_eq!(parse_share_line("alloc: +1 MiB"), None);
    }
}
