//! What the `nvml-wrapper` crate sees of the simulated machine, printed as tab-separated records
//! (the same format as `tests/probes/nvml_probe.c`'s query mode). nvml-wrapper opens
//! `libnvidia-ml.so` with libloading and resolves every symbol at load.

use nvml_wrapper::Nvml;

fn main() {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            println!("init\terror={e}");
            std::process::exit(1);
        }
    };
    println!("init\trc=0");
    println!(
        "driver\tversion={}",
        nvml.sys_driver_version().unwrap_or_default()
    );
    println!(
        "cuda\tversion={}",
        nvml.sys_cuda_driver_version().unwrap_or_default()
    );
    let count = nvml.device_count().unwrap_or(0);
    println!("count\t{count}\trc=0");
    for i in 0..count {
        let device = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                println!("device\t{i}\terror={e}");
                continue;
            }
        };
        let name = device.name().unwrap_or_default();
        let uuid = device.uuid().unwrap_or_default();
        let pci = device.pci_info().map(|p| p.bus_id).unwrap_or_default();
        let cc = device
            .cuda_compute_capability()
            .map(|c| format!("{}.{}", c.major, c.minor))
            .unwrap_or_default();
        let mem = device.memory_info();
        let (total, free, used) = mem.map(|m| (m.total, m.free, m.used)).unwrap_or_default();
        println!("device\t{i}\trc=0\tname={name}\tuuid={uuid}\tpci={pci}\tcc={cc}\ttotal={total}\tfree={free}\tused={used}");
        // The same handle comes back by UUID and by bus id.
        let by_uuid = nvml
            .device_by_uuid(uuid.as_str())
            .and_then(|d| d.index())
            .ok();
        let by_pci = nvml
            .device_by_pci_bus_id(pci.as_str())
            .and_then(|d| d.index())
            .ok();
        println!("lookup\t{i}\tby_uuid={by_uuid:?}\tby_pci={by_pci:?}");
        match device.running_compute_processes() {
            Ok(procs) => {
                for p in procs {
                    let used = match p.used_gpu_memory {
                        nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => u64::MAX,
                    };
                    println!("process\t{i}\tpid={}\tused={used}", p.pid);
                }
            }
            Err(e) => println!("process\t{i}\terror={e}"),
        }
        if let Ok(u) = device.utilization_rates() {
            println!("util\t{i}\tgpu={}", u.gpu);
        }
        let extra = [
            (
                "temperature",
                device
                    .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                    .map(|t| t.to_string()),
            ),
            ("power_mw", device.power_usage().map(|p| p.to_string())),
            (
                "sm_clock",
                device
                    .clock_info(nvml_wrapper::enum_wrappers::device::Clock::SM)
                    .map(|c| c.to_string()),
            ),
            ("arch", device.architecture().map(|a| format!("{a:?}"))),
            ("brand", device.brand().map(|b| format!("{b:?}"))),
            (
                "mig",
                device
                    .mig_mode()
                    .map(|m| format!("{}/{}", m.current, m.pending)),
            ),
        ];
        let fields: Vec<String> = extra
            .into_iter()
            .map(|(k, v)| format!("{k}={}", v.unwrap_or_else(|e| format!("error:{e}"))))
            .collect();
        println!("info\t{i}\t{}", fields.join("\t"));
    }
    drop(nvml); // nvmlShutdown
}
