"""What pynvml (nvidia-ml-py) sees of the simulated machine, as tab-separated records in the format of
tests/probes/nvml_probe.c's query mode. pynvml loads libnvidia-ml.so.1 with ctypes and looks up each
function with dlsym on first use."""
import pynvml

pynvml.nvmlInit()
print("init\trc=0")
print(f"driver\tversion={pynvml.nvmlSystemGetDriverVersion()}")
print(f"cuda\tversion={pynvml.nvmlSystemGetCudaDriverVersion_v2()}")
count = pynvml.nvmlDeviceGetCount()
print(f"count\t{count}\trc=0")
for i in range(count):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    name = pynvml.nvmlDeviceGetName(h)
    uuid = pynvml.nvmlDeviceGetUUID(h)
    pci = pynvml.nvmlDeviceGetPciInfo(h).busId
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.free, mem2.used) == (mem.total, mem.free, mem.used), (mem, mem2)
    print(f"device\t{i}\trc=0\tname={name}\tuuid={uuid}\tpci={pci}\tcc={major}.{minor}"
          f"\ttotal={mem.total}\tfree={mem.free}\tused={mem.used}")
    same = pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(uuid)) == i
    same_pci = pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByPciBusId(pci)) == i
    print(f"lookup\t{i}\tby_uuid={same}\tby_pci={same_pci}")
    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
        print(f"process\t{i}\tpid={p.pid}\tused={p.usedGpuMemory}")
    assert pynvml.nvmlDeviceGetGraphicsRunningProcesses(h) == []
    print(f"util\t{i}\tgpu={pynvml.nvmlDeviceGetUtilizationRates(h).gpu}")
    try:
        for s in pynvml.nvmlDeviceGetProcessUtilization(h, 0):
            print(f"sample\t{i}\tpid={s.pid}\tsm={s.smUtil}\tts={s.timeStamp}")
    except pynvml.NVMLError as e:
        assert e.value == pynvml.NVML_ERROR_NOT_FOUND, e
pynvml.nvmlShutdown()
