/* gvm-fake-selftest: checks the fake's own promises (driver-like results,
 * memory accounting, VMM data semantics, the hold gate, RM controls and the
 * freeze they cause, cuGetProcAddress resolution). Run with FAKE_RM_LOG set:
 * it reads the RM handles back from the log the way an agent would learn them
 * from ioctl. Prints "SELFTEST OK" or the first failed check, exit 1. */
#define _GNU_SOURCE
#include "../fake_rm.h"
#include "../rm_abi.h"

#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

int fakeCudaHoldGpu(int hold);
unsigned long fakeCudaCallCount(const char *exportedName);

#define MiB ((size_t)1 << 20)
#define EXPECT(cond)                                                                \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "SELFTEST FAIL line %d: %s\n", __LINE__, #cond);        \
            exit(1);                                                                \
        }                                                                           \
    } while (0)
#define OK(call) EXPECT((call) == CUDA_SUCCESS)

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- what the RM log says about the objects of the current context ---- */
typedef struct {
    int fd;
    unsigned subdevice, tsg, share, channels[8];
    int nchannels;
} rm_view_t;

static unsigned field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p ? (unsigned)strtoul(p + strlen(key), NULL, 0) : 0;
}

/* The last compute TSG in the log, its share, its channels, and device 0's subdevice. */
static rm_view_t read_rm_log(const char *path)
{
    rm_view_t v = {0};
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "alloc ", 6) != 0)
            continue;
        unsigned cls = field(line, "hClass="), h = field(line, "hNew="), parent = field(line, "hParent=");
        v.fd = (int)field(line, "fd=");
        if (cls == RM_CLASS_SUBDEVICE && !v.subdevice)
            v.subdevice = h;
        if (cls == RM_CLASS_TSG && strstr(line, "params=000000000000000000000000010000")) {
            v.tsg = h;
            v.nchannels = 0;
        }
        if (cls == RM_CLASS_CTXSHARE && parent == v.tsg)
            v.share = h;
        if (cls == RM_CLASS_CHANNEL && parent == v.tsg && v.nchannels < 8)
            v.channels[v.nchannels++] = h;
    }
    fclose(f);
    return v;
}

static unsigned control(int fd, unsigned hObject, unsigned cmd, void *params, unsigned size)
{
    rm_nvos54_t c = {.hClient = 0xc1d00001u, .hObject = hObject, .cmd = cmd,
                     .params = (uint64_t)(uintptr_t)params, .paramsSize = size};
    EXPECT(ioctl(fd, _IOC(_IOC_READ | _IOC_WRITE, RM_IOCTL_TYPE, RM_NR_CONTROL, sizeof c), &c) == 0);
    return c.status;
}

static unsigned set_channels(const rm_view_t *v, int disable, int with_share)
{
    rm_disable_channels_t p = {.bDisable = (uint8_t)disable, .bOnlyDisableScheduling = 1};
    for (int i = 0; i < v->nchannels; i++) {
        p.hClientList[p.numChannels] = 0xc1d00001u;
        p.hChannelList[p.numChannels++] = v->channels[i];
    }
    if (with_share) {
        p.hClientList[p.numChannels] = 0xc1d00001u;
        p.hChannelList[p.numChannels++] = v->share;
    }
    return control(v->fd, v->subdevice, RM_CMD_DISABLE_CHANNELS, &p, sizeof p);
}

/* ---- checks ---- */

static void check_devices(void)
{
    int n;
    CUdevice dev;
    EXPECT(cuDeviceGet(&dev, 0) == CUDA_ERROR_NOT_INITIALIZED);
    OK(cuInit(0));
    OK(cuDeviceGetCount(&n));
    EXPECT(n == 2);
    char name[64], bus[32];
    OK(cuDeviceGetName(name, sizeof name, 1));
    EXPECT(strcmp(name, "Fake GPU 1") == 0);
    OK(cuDeviceGetPCIBusId(bus, sizeof bus, 1));
    EXPECT(strcmp(bus, "0000:11:00.0") == 0);
    OK(cuDeviceGetByPCIBusId(&dev, "0000:11:00.0"));
    EXPECT(dev == 1);
    int v;
    OK(cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0));
    EXPECT(v == 132);
    OK(cuDriverGetVersion(&v));
    EXPECT(v == 13000);
    const void *table;
    CUuuid id = {{0}};
    EXPECT(cuGetExportTable(&table, &id) == CUDA_ERROR_NOT_SUPPORTED);
}

static void check_memory(void)
{
    size_t free0, free1, total;
    CUdeviceptr p, q;
    OK(cuMemGetInfo(&free0, &total));
    EXPECT(total == 85899345920ULL && free0 == total);
    OK(cuMemAlloc(&p, 3 * MiB));
    OK(cuMemGetInfo(&free1, &total));
    EXPECT(free0 - free1 == 3 * MiB);
    EXPECT(cuMemAlloc(&q, total) == CUDA_ERROR_OUT_OF_MEMORY);
    CUdeviceptr base;
    size_t size;
    OK(cuMemGetAddressRange(&base, &size, p + 100));
    EXPECT(base == p && size == 3 * MiB);
    OK(cuMemFree(p));
    OK(cuMemGetInfo(&free1, &total));
    EXPECT(free1 == free0);
}

static void check_vmm(void)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemAllocationProp host = prop;
    host.location.type = CU_MEM_LOCATION_TYPE_HOST;
    CUmemAccessDesc rw = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0},
                          .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    size_t g, free0, free1, total;
    CUdeviceptr va;
    CUmemGenericAllocationHandle a, b;
    OK(cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    EXPECT(g == 2 * MiB);
    EXPECT(cuMemCreate(&a, g + 1, &prop, 0) == CUDA_ERROR_INVALID_VALUE);
    OK(cuMemGetInfo(&free0, &total));
    OK(cuMemAddressReserve(&va, g, 0, 0, 0));
    OK(cuMemCreate(&a, g, &prop, 0));
    OK(cuMemCreate(&b, g, &host, 0));
    OK(cuMemMap(va, g, 0, a, 0));
    OK(cuMemSetAccess(va, g, &rw, 1));
    OK(cuMemsetD8(va, 'A', g));
    OK(cuMemUnmap(va, g));
    OK(cuMemMap(va, g, 0, b, 0)); /* swap: same address, other physical memory */
    OK(cuMemSetAccess(va, g, &rw, 1));
    ((char *)(uintptr_t)va)[0] = 'B';
    OK(cuMemUnmap(va, g));
    OK(cuMemMap(va, g, 0, a, 0));
    OK(cuMemSetAccess(va, g, &rw, 1));
    EXPECT(((char *)(uintptr_t)va)[0] == 'A' && ((char *)(uintptr_t)va)[g - 1] == 'A');
    OK(cuMemRelease(a)); /* still mapped: the memory stays */
    OK(cuMemGetInfo(&free1, &total));
    EXPECT(free0 - free1 == g);
    OK(cuMemUnmap(va, g));
    OK(cuMemGetInfo(&free1, &total));
    EXPECT(free1 == free0);
    OK(cuMemRelease(b));
    OK(cuMemAddressFree(va, g));
}

static void check_pool(CUstream s)
{
    CUmemoryPool pool;
    CUdeviceptr p;
    cuuint64_t reserved, big = 64 * MiB;
    OK(cuDeviceGetDefaultMemPool(&pool, 0));
    OK(cuMemAllocAsync(&p, 3 * MiB, s));
    OK(cuMemFreeAsync(p, s));
    OK(cuStreamSynchronize(s));
    OK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved));
    EXPECT(reserved == 0); /* threshold 0: a sync gives everything back */
    OK(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &big));
    OK(cuMemAllocAsync(&p, 3 * MiB, s));
    OK(cuMemFreeAsync(p, s));
    OK(cuStreamSynchronize(s));
    OK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved));
    EXPECT(reserved == 3 * MiB);
    OK(cuMemPoolTrimTo(pool, 0));
    OK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved));
    EXPECT(reserved == 0);
}

static void check_hold(CUfunction f, CUstream s)
{
    CUevent ev;
    OK(cuEventCreate(&ev, 0));
    fakeCudaHoldGpu(1);
    OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
    OK(cuEventRecord(ev, s));
    sleep_ms(20);
    EXPECT(cuEventQuery(ev) == CUDA_ERROR_NOT_READY);
    EXPECT(cuStreamQuery(s) == CUDA_ERROR_NOT_READY);
    fakeCudaHoldGpu(0);
    OK(cuEventSynchronize(ev));
    OK(cuEventQuery(ev));
    OK(cuEventDestroy(ev));
}

static void check_rm(const char *log, CUfunction f, CUstream s, CUstream copies)
{
    rm_view_t v = read_rm_log(log);
    EXPECT(v.tsg && v.share && v.subdevice && v.nchannels == 8);
    uint64_t ts = 0;
    EXPECT(control(v.fd, v.tsg, RM_CMD_TSG_GET_TIMESLICE, &ts, 8) == NV_OK && ts == 2048);
    ts = 0;
    EXPECT(control(v.fd, v.tsg, RM_CMD_TSG_SET_TIMESLICE, &ts, 8) == NV_ERR_INVALID_ARGUMENT);
    ts = 1000;
    EXPECT(control(v.fd, v.tsg, RM_CMD_TSG_SET_TIMESLICE, &ts, 8) == NV_OK);
    EXPECT(fakeRmTimeslice(v.tsg) == 1000);
    EXPECT(control(v.fd, v.tsg, RM_CMD_TSG_SET_TIMESLICE, &ts, 4) == NV_ERR_INVALID_ARGUMENT);
    EXPECT(control(v.fd, v.tsg, 0xa06c0101u, &ts, 8) == NV_ERR_NOT_SUPPORTED);
    EXPECT(set_channels(&v, 1, 1) == NV_ERR_INVALID_CHANNEL);
    EXPECT(fakeRmChannelDisabled(v.channels[0]) == 0);

    /* Freeze: compute stops, copies on another stream still run. */
    EXPECT(set_channels(&v, 1, 0) == NV_OK);
    rm_preempt_t pre = {.bWait = 1};
    EXPECT(control(v.fd, v.tsg, RM_CMD_TSG_PREEMPT, &pre, sizeof pre) == NV_OK);
    EXPECT(fakeRmChannelDisabled(v.channels[7]) == 1);
    OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
    char src[64] = "copy while frozen", dst[64] = {0};
    CUdeviceptr d;
    OK(cuMemAlloc(&d, sizeof src));
    OK(cuMemcpyHtoDAsync(d, src, sizeof src, copies));
    OK(cuMemcpyDtoHAsync(dst, d, sizeof dst, copies));
    OK(cuStreamSynchronize(copies));
    EXPECT(strcmp(dst, src) == 0);
    sleep_ms(20);
    EXPECT(cuStreamQuery(s) == CUDA_ERROR_NOT_READY);
    EXPECT(set_channels(&v, 0, 0) == NV_OK); /* thaw */
    OK(cuStreamSynchronize(s));
    OK(cuMemFree(d));
    EXPECT(fakeRmControlCount(RM_CMD_DISABLE_CHANNELS) == 3);
    EXPECT(fakeRmControlCount(RM_CMD_TSG_PREEMPT) == 1);
}

static void check_graph(CUfunction f, CUstream s)
{
    CUgraph g, child, inner;
    CUgraphNode n1, n2, c;
    CUDA_KERNEL_NODE_PARAMS kp = {.func = f, .gridDimX = 1, .gridDimY = 1, .gridDimZ = 1,
                                  .blockDimX = 1, .blockDimY = 1, .blockDimZ = 1};
    OK(cuGraphCreate(&child, 0));
    OK(cuGraphAddKernelNode(&n1, child, NULL, 0, &kp));
    OK(cuGraphCreate(&g, 0));
    OK(cuGraphAddKernelNode(&n2, g, NULL, 0, &kp));
    OK(cuGraphAddChildGraphNode(&c, g, &n2, 1, child));
    OK(cuGraphChildGraphNodeGetGraph(c, &inner));
    size_t n = 0;
    OK(cuGraphGetNodes(g, NULL, &n));
    EXPECT(n == 2);
    CUgraphNodeType type;
    OK(cuGraphNodeGetType(c, &type));
    EXPECT(type == CU_GRAPH_NODE_TYPE_GRAPH);
    CUgraphExec exec;
    OK(cuGraphInstantiate(&exec, g, 0));
    CUgraphExecUpdateResultInfo info;
    OK(cuGraphExecUpdate(exec, g, &info));
    OK(cuGraphLaunch(exec, s));
    OK(cuStreamSynchronize(s));
    OK(cuGraphExecDestroy(exec));
    OK(cuGraphDestroy(g));
    OK(cuGraphDestroy(child));
}

static void check_procaddr(void)
{
    void *fn;
    CUdriverProcAddressQueryResult st;
    OK(cuGetProcAddress("cuLaunchKernel", &fn, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    EXPECT(st == CU_GET_PROC_ADDRESS_SUCCESS && fn == dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz"));
    OK(cuGetProcAddress("cuMemAlloc", &fn, 3000, 0, &st));
    EXPECT(fn == dlsym(RTLD_DEFAULT, "cuMemAlloc"));
    OK(cuGetProcAddress("cuMemAlloc", &fn, 13000, 0, &st));
    EXPECT(fn == dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"));
    OK(cuGetProcAddress("cuGraphInstantiate", &fn, 12000, 0, &st));
    EXPECT(fn == dlsym(RTLD_DEFAULT, "cuGraphInstantiateWithFlags"));
    OK(cuGetProcAddress("cuGetProcAddress", &fn, 13000, 0, &st));
    EXPECT(fn == dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"));
    EXPECT(cuGetProcAddress("cuMemAlloc", &fn, 1000, 0, &st) == CUDA_ERROR_NOT_FOUND);
    EXPECT(st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT && fn == NULL);
    EXPECT(cuGetProcAddress("cuNoSuchThing", &fn, 13000, 0, &st) == CUDA_ERROR_NOT_FOUND);
    EXPECT(st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
}

static int count_lines(const char *path, const char *prefix)
{
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strncmp(line, prefix, strlen(prefix)) == 0;
    fclose(f);
    return n;
}

int main(void)
{
    const char *log = getenv("FAKE_RM_LOG");
    if (!log || !*log) {
        fprintf(stderr, "set FAKE_RM_LOG to a fresh file\n");
        return 2;
    }
    check_devices();
    CUcontext ctx;
    OK(cuDevicePrimaryCtxRetain(&ctx, 0));
    OK(cuCtxSetCurrent(ctx));
    check_memory();
    check_vmm();
    CUmodule mod;
    CUfunction f;
    CUstream s, copies;
    OK(cuModuleLoadData(&mod, "image"));
    OK(cuModuleGetFunction(&f, mod, "k"));
    OK(cuStreamCreate(&s, 0));
    OK(cuStreamCreate(&copies, 0));
    check_pool(s);
    check_hold(f, s);
    check_rm(log, f, s, copies);
    check_graph(f, s);
    check_procaddr();
    OK(cuStreamDestroy(s));
    OK(cuStreamDestroy(copies));
    OK(cuModuleUnload(mod));
    int frees_before = count_lines(log, "free ");
    OK(cuDevicePrimaryCtxRelease(0)); /* last reference: the context's RM objects go */
    EXPECT(count_lines(log, "free ") - frees_before == 19);
    EXPECT(fakeCudaCallCount("cuInit") == 1 && fakeCudaCallCount("cuMemAlloc_v2") >= 2);
    printf("SELFTEST OK\n");
    return 0;
}
