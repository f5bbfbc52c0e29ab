"""pynvml (nvidia-ml-py): ctypes over libnvidia-ml.so.1, one dlsym per function, as monitoring
agents and nvidia-smi-like tools do. Prints one JSON line per device with both memory-info versions.
With --init-only, prints the nvmlInit result and stops."""
import json
import sys

import pynvml


def main():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        print(json.dumps({"stage": "init", "error_code": e.value}))
        return 2
    if "--init-only" in sys.argv:
        print(json.dumps({"stage": "init", "error_code": 0}))
        return 0
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        if isinstance(uuid, bytes):
            uuid = uuid.decode()
        v1 = pynvml.nvmlDeviceGetMemoryInfo(handle)
        v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        print(json.dumps({
            "index": index,
            "uuid": uuid,
            "total": v1.total,
            "used": v1.used,
            "free": v1.free,
            "total2": v2.total,
            "used2": v2.used,
            "free2": v2.free,
            "reserved2": v2.reserved,
        }))
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
