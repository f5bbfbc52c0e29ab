/* Device queries: prints one line per device for the test to compare with SIMGPU_DEVICES, and checks
 * the cross-call invariants itself (UUID v1 = v2, PCI bus id round trip, the 32-bit total). */
#include "probe.h"

int main(void) {
    int n = 0;
    OK(cuInit(0));
    OK(cuDeviceGetCount(&n));
    printf("count=%d\n", n);
    for (int i = 0; i < n; i++) {
        CUdevice dev, back = -1;
        char name[128], pci[32], tiny[5];
        size_t total = 0;
        unsigned int total32 = 0;
        int sms, major, minor, ccmaj, ccmin, clock, bus, slot, domain, warp, threads, uva, pools, vmm, managed, coop;
        CUuuid u1, u2;
        OK(cuDeviceGet(&dev, i));
        OK(cuDeviceGetName(name, sizeof name, dev));
        OK(cuDeviceGetName(tiny, sizeof tiny, dev)); /* truncated, still terminated */
        ASSERT(strlen(tiny) == 4 && strncmp(tiny, name, 4) == 0);
        OK(cuDeviceTotalMem_v2(&total, dev));
        OK(cuDeviceTotalMem(&total32, dev));
        ASSERT(total32 == (total > 0xffffffffull ? 0xffffffffu : (unsigned int)total));
        OK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
        OK(cuDeviceGetAttribute(&ccmaj, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
        OK(cuDeviceGetAttribute(&ccmin, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
        OK(cuDeviceComputeCapability(&major, &minor, dev));
        ASSERT(major == ccmaj && minor == ccmin);
        OK(cuDeviceGetAttribute(&clock, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev));
        OK(cuDeviceGetAttribute(&bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, dev));
        OK(cuDeviceGetAttribute(&slot, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, dev));
        OK(cuDeviceGetAttribute(&domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, dev));
        OK(cuDeviceGetAttribute(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
        OK(cuDeviceGetAttribute(&threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev));
        OK(cuDeviceGetAttribute(&uva, CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, dev));
        OK(cuDeviceGetAttribute(&pools, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, dev));
        OK(cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev));
        OK(cuDeviceGetAttribute(&managed, CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, dev));
        OK(cuDeviceGetAttribute(&coop, CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, dev));
        ASSERT(warp == 32 && threads == 1024 && uva == 1 && pools == 1 && vmm == 1 && managed == 1 && coop == 1);
        OK(cuDeviceGetPCIBusId(pci, sizeof pci, dev));
        OK(cuDeviceGetByPCIBusId(&back, pci));
        ASSERT(back == dev);
        OK(cuDeviceGetUuid(&u1, dev));
        OK(cuDeviceGetUuid_v2(&u2, dev));
        ASSERT(memcmp(&u1, &u2, sizeof u1) == 0);
        printf("dev%d name=%s mem=%zu sms=%d cc=%d.%d clock_khz=%d pci=%s bus=%d slot=%d domain=%d uuid=", i, name, total,
               sms, major, minor, clock, pci, bus, slot, domain);
        for (int b = 0; b < 16; b++) printf("%02x", (unsigned char)u1.bytes[b]);
        printf("\n");
    }
    {
        CUdevice d;
        EXPECT(cuDeviceGetByPCIBusId(&d, "0000:FF:1F.0"), CUDA_ERROR_INVALID_DEVICE);
        EXPECT(cuDeviceGetByPCIBusId(&d, "not a bus id"), CUDA_ERROR_INVALID_VALUE);
    }
    PROBE_DONE();
}
