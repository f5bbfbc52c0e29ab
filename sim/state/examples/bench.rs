//! Cost of the simulated machine's hot paths: `cargo run --release -p simgpu-state --example bench`.
//! Prints ns per alloc/free pair and per launch reservation, one thread and two threads racing.

use std::time::Instant;

use simgpu_state::{Config, Machine};

fn main() {
    let path = std::env::temp_dir().join(format!("simgpu-bench-{}.state", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let machine = match Machine::open(&path, Config::default_machine()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    const N: u64 = 2_000_000;
    let m = &machine;

    let per_op = |threads: u64, op: &(dyn Fn() + Sync)| -> f64 {
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..N {
                        op()
                    }
                });
            }
        });
        started.elapsed().as_nanos() as f64 / (N * threads) as f64
    };

    let alloc_free = || {
        let _ = m.alloc(0, 4096);
        m.free(0, 4096);
    };
    let launch = || {
        let _ = m.launch(0, 0, 0);
    };
    let now = || {
        std::hint::black_box(m.now_ns());
    };
    println!("operation                         1 thread   2 threads  (ns per op)");
    for (name, op) in [
        ("alloc+free pair (4 KiB)", &alloc_free as &(dyn Fn() + Sync)),
        ("launch reservation", &launch),
        ("now_ns (clock read)", &now),
    ] {
        let one = per_op(1, op);
        let two = per_op(2, op);
        println!("{name:<32} {one:>9.1} {two:>11.1}");
    }
    // The reservations went into the ring: a query over a window of recent launches.
    let t = Instant::now();
    let busy = m.busy_ns(0, None, 0, u64::MAX);
    println!(
        "busy_ns over the whole ring: {:.1} µs (busy {busy} ns)",
        t.elapsed().as_nanos() as f64 / 1000.0
    );
    drop(machine);
    let _ = std::fs::remove_file(&path);
}
