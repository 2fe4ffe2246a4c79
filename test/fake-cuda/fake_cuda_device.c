/* Driver initialisation and device queries. Devices are described by the
 * environment (FAKE_CUDA_DEVICES, FAKE_CUDA_MEM_BYTES) when cuInit runs. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int g_fake_device_count;
fake_device_t g_fake_devices[FAKE_MAX_DEVICES];
unsigned g_fake_kernel_us;
unsigned g_fake_copy_us;
int g_fake_mps_client;

static atomic_int g_initialized;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned long long env_ull(const char *name, unsigned long long fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end;
    unsigned long long n = strtoull(v, &end, 0);
    return *end ? fallback : n;
}

int fake_initialized(void) { return atomic_load_explicit(&g_initialized, memory_order_acquire); }

int fake_device_valid(CUdevice dev) { return dev >= 0 && dev < g_fake_device_count; }

int fake_device_charge(int dev, size_t bytes)
{
    fake_device_t *d = &g_fake_devices[dev];
    size_t used = atomic_load(&d->used);
    do {
        if (bytes > d->total - used)
            return 0;
    } while (!atomic_compare_exchange_weak(&d->used, &used, used + bytes));
    return 1;
}

void fake_device_uncharge(int dev, size_t bytes) { atomic_fetch_sub(&g_fake_devices[dev].used, bytes); }

CUresult cuInit(unsigned int Flags)
{
    FAKE_ENTER(cuInit);
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_init_lock);
    if (!fake_initialized()) {
        unsigned long long n = env_ull("FAKE_CUDA_DEVICES", 2);
        g_fake_device_count = (int)(n > FAKE_MAX_DEVICES ? FAKE_MAX_DEVICES : n);
        size_t total = (size_t)env_ull("FAKE_CUDA_MEM_BYTES", 85899345920ULL);
        /* memory other processes hold: the device is that much fuller than this process accounts */
        size_t others = (size_t)env_ull("FAKE_CUDA_USED_BYTES", 0);
        for (int i = 0; i < g_fake_device_count; i++) {
            g_fake_devices[i].total = total;
            atomic_store(&g_fake_devices[i].used, others < total ? others : total);
        }
        g_fake_kernel_us = (unsigned)env_ull("FAKE_CUDA_KERNEL_US", 0);
        g_fake_copy_us = (unsigned)env_ull("FAKE_CUDA_COPY_US", 0);
        g_fake_mps_client = env_ull("FAKE_CUDA_MPS_CLIENT", 0) != 0;
        if (env_ull("FAKE_CUDA_HOLD", 0))
            fakeCudaHoldGpu(1);
        fake_rm_init_devices();
        atomic_store_explicit(&g_initialized, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_init_lock);
    return g_fake_device_count ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}

CUresult cuDriverGetVersion(int *driverVersion)
{
    FAKE_ENTER(cuDriverGetVersion);
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    FAKE_ENTER(cuDeviceGet);
    FAKE_REQUIRE_INIT();
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    FAKE_ENTER(cuDeviceGetCount);
    FAKE_REQUIRE_INIT();
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = g_fake_device_count;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    FAKE_ENTER(cuDeviceGetName);
    FAKE_REQUIRE_INIT();
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "Fake GPU %d", dev);
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid *uuid, CUdevice dev)
{
    FAKE_REQUIRE_INIT();
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    /* Deterministic, so tests can hard-code GPU-fa4eca1d-0000-0000-0000-00000000000N. */
    static const unsigned char prefix[4] = {0xfa, 0x4e, 0xca, 0x1d};
    memset(uuid->bytes, 0, sizeof uuid->bytes);
    memcpy(uuid->bytes, prefix, sizeof prefix);
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    FAKE_ENTER(cuDeviceGetUuid);
    return device_uuid(uuid, dev);
}

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    FAKE_ENTER(cuDeviceGetUuid_v2);
    return device_uuid(uuid, dev);
}

CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    FAKE_ENTER(cuDeviceTotalMem);
    FAKE_REQUIRE_INIT();
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    size_t t = g_fake_devices[dev].total;
    *bytes = t > 0xffffffffu ? 0xffffffffu : (unsigned)t;
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    FAKE_ENTER(cuDeviceTotalMem_v2);
    FAKE_REQUIRE_INIT();
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = g_fake_devices[dev].total;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev)
{
    FAKE_ENTER(cuDeviceGetPCIBusId);
    FAKE_REQUIRE_INIT();
    if (!pciBusId || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(pciBusId, (size_t)len, "0000:%02x:00.0", 0x10 + dev);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetByPCIBusId(CUdevice *dev, const char *pciBusId)
{
    FAKE_ENTER(cuDeviceGetByPCIBusId);
    FAKE_REQUIRE_INIT();
    if (!dev || !pciBusId)
        return CUDA_ERROR_INVALID_VALUE;
    /* Accept "dddd:bb:dd.f" and "bb:dd.f", any case, like the driver. */
    unsigned domain = 0, bus, device, function;
    if (sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &device, &function) != 4 &&
        sscanf(pciBusId, "%x:%x.%x", &bus, &device, &function) != 3)
        return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < g_fake_device_count; i++) {
        if (domain == 0 && bus == (unsigned)(0x10 + i) && device == 0 && function == 0) {
            *dev = i;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    FAKE_ENTER(cuDeviceGetAttribute);
    FAKE_REQUIRE_INIT();
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 132; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *pi = 32; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *pi = 0x10 + dev; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY:
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *pi = 1; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}

/* Every fake GPU reaches every other (all memory is this process's), as NVLink-connected GPUs do;
 * a device is not its own peer, as in the driver. */
CUresult cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev)
{
    FAKE_ENTER(cuDeviceCanAccessPeer);
    FAKE_REQUIRE_INIT();
    if (!canAccessPeer)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev) || !fake_device_valid(peerDev))
        return CUDA_ERROR_INVALID_DEVICE;
    *canAccessPeer = dev != peerDev;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)
{
    FAKE_ENTER(cuDeviceGetDefaultMemPool);
    FAKE_REQUIRE_INIT();
    if (!pool_out)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *pool_out = fake_pool_default(dev);
    return *pool_out ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
