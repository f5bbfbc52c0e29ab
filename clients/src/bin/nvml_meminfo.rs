//! An nvml-wrapper client: prints every device's memory as NVML reports it, one JSON line per device.
//! nvml-wrapper opens `libnvidia-ml.so` and resolves about 370 entry points at init, each with its own
//! dlsym, as monitoring agents do.

use nvml_wrapper::Nvml;

fn main() {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            println!("{{\"error\":\"{e:?}\",\"stage\":\"init\"}}");
            std::process::exit(2);
        }
    };
    let count = nvml.device_count().expect("device count");
    for index in 0..count {
        let device = nvml.device_by_index(index).expect("device");
        let uuid = device.uuid().expect("uuid");
        match device.memory_info() {
            Ok(m) => println!(
                "{{\"index\":{index},\"uuid\":\"{uuid}\",\"total\":{},\"used\":{},\"free\":{},\"reserved\":{}}}",
                m.total, m.used, m.free, m.reserved
            ),
            Err(e) => println!("{{\"index\":{index},\"uuid\":\"{uuid}\",\"error\":\"{e:?}\"}}"),
        }
    }
}
