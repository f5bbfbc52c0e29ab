//! A stand-in GPU process for multi-process tests, using the simulated machine directly:
//!
//! ```text
//! simgpu-hold alloc <dev> <bytes> [hold_seconds]   allocate, print `pid=<pid> allocated=<bytes>`, hold, exit 0
//! simgpu-hold busy <dev> <total_ms> [hold_seconds] reserve <total_ms> of back-to-back 1 ms kernels on the
//!                                                  device timeline, print `pid=<pid> busy_until=<ns>`, hold
//! ```
//! Holding means sleeping `hold_seconds` (default 300) or until stdin reaches EOF when it is a pipe.
//! A failed allocation prints `error=<why>` and exits 2 (out of memory) or 1.

use std::io::{Read, Write};
use std::time::Duration;

use simgpu_state::{Machine, SimError};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| -> u64 {
        args.get(i)
            .map(|s| s.parse().unwrap_or_else(|_| usage()))
            .unwrap_or(default)
    };
    let machine = match Machine::get() {
        Ok(m) => m,
        Err(e) => fail(1, &e.to_string()),
    };
    let pid = std::process::id();
    match args.first().map(String::as_str) {
        Some("alloc") => {
            let (dev, bytes) = (number(1, u64::MAX) as u32, number(2, u64::MAX));
            if machine.faults().should_fail_alloc() {
                fail(2, "out of device memory (SIMGPU_FAIL_ALLOC_AT)");
            }
            match machine.alloc(dev, bytes) {
                Ok(()) => say(&format!("pid={pid} allocated={bytes}")),
                Err(SimError::OutOfMemory) => fail(2, "out of device memory"),
                Err(e) => fail(1, &e.to_string()),
            }
        }
        Some("busy") => {
            let (dev, total_ms) = (number(1, u64::MAX) as u32, number(2, u64::MAX));
            let mut end = 0;
            for _ in 0..total_ms {
                end = machine.launch(dev, 1_000_000, 0).1;
            }
            say(&format!("pid={pid} busy_until={end}"));
        }
        _ => usage(),
    }
    hold(Duration::from_secs(number(3, 300)));
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn hold(limit: Duration) {
    // Exit when stdin closes (a test dropping its pipe) or after the limit, whichever comes first.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(limit);
}

fn fail(code: i32, why: &str) -> ! {
    say(&format!("error={why}"));
    std::process::exit(code)
}

fn usage() -> ! {
    eprintln!("usage: simgpu-hold alloc <dev> <bytes> [hold_seconds] | busy <dev> <total_ms> [hold_seconds]");
    std::process::exit(64)
}
