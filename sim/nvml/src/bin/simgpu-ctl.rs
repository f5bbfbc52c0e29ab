//! Changes a running simulated machine from outside, for tests and humans:
//!
//! ```text
//! simgpu-ctl lost <index> on|off   mark the device lost (or recovered) for every process, at once
//! simgpu-ctl show                  one line per device: index, name, uuid, memory, lost
//! ```
//! The machine is the one in `SIMGPU_STATE` (default `/tmp/simgpu-<uid>.state`), with the devices it
//! was made for: `SIMGPU_DEVICES` is not read, so a mistyped spec can never rebuild a machine in use.
//! Exit status: 0 done, 1 no usable machine or no such device, 64 usage.

use std::io::Write;

use simgpu_state::Machine;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let path = simgpu_state::config::state_path_from_env();
    let machine = || match Machine::attach(&path) {
        Ok(m) => m,
        Err(e) => fail(&e.to_string()),
    };
    match args.as_slice() {
        ["lost", index, state] => {
            let lost = match *state {
                "on" => true,
                "off" => false,
                _ => usage(),
            };
            let dev: u32 = index.parse().unwrap_or_else(|_| usage());
            let machine = machine();
            if let Err(e) = machine.set_device_lost(dev, lost) {
                fail(&format!(
                    "device {dev}: {e} (the machine in {} has {})",
                    path.display(),
                    machine.devices().len()
                ));
            }
            say(&format!("device={dev} lost={}", on_off(lost)));
        }
        ["show"] => {
            let machine = machine();
            for spec in machine.devices() {
                let (free, total) = machine.mem_info(spec.index);
                say(&format!(
                    "device={} name={:?} uuid={} used={} total={} lost={}",
                    spec.index,
                    spec.name,
                    spec.uuid,
                    total - free,
                    total,
                    on_off(machine.device_lost(spec.index))
                ));
            }
        }
        _ => usage(),
    }
}

fn on_off(lost: bool) -> &'static str {
    if lost {
        "on"
    } else {
        "off"
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(why: &str) -> ! {
    eprintln!("simgpu-ctl: {why}");
    std::process::exit(1)
}

fn usage() -> ! {
    eprintln!("usage: simgpu-ctl lost <index> on|off | show   (the machine in SIMGPU_STATE)");
    std::process::exit(64)
}
