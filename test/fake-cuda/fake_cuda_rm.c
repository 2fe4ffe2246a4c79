/* The resource-manager traffic the real libcuda generates, reproduced so that
 * an agent that watches ioctl sees the same shape of objects: a client and,
 * per GPU, a device and a subdevice at cuInit; per context one compute TSG
 * (context share + 8 channels) and three copy-engine TSGs (share + 1 channel
 * each), freed again when the context dies.
 *
 * Calls go through the global ioctl symbol so interposers see them. When that
 * ioctl is libc's (libgvmfakerm only loaded as our DT_NEEDED, not preloaded),
 * /dev/null answers ENOTTY and we hand the request to the fake RM directly. */
#define _GNU_SOURCE
#include "fake_cuda.h"
#include "fake_rm.h"
#include "rm_abi.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define RM_CLIENT_HANDLE 0xc1d00001u
#define RM_HANDLE_BASE 0xcaf00000u

static int g_ctl_fd = -1;
static atomic_uint g_next_handle;

static uint32_t new_handle(void) { return RM_HANDLE_BASE + atomic_fetch_add(&g_next_handle, 1) + 1; }

static void rm_ioctl(unsigned nr, unsigned size, void *arg)
{
    unsigned long request = _IOC(_IOC_READ | _IOC_WRITE, RM_IOCTL_TYPE, nr, size);
    if (ioctl(g_ctl_fd, request, arg) < 0 && errno == ENOTTY)
        fakeRmIoctl(g_ctl_fd, request, arg);
}

static void alloc21(uint32_t parent, uint32_t handle, uint32_t cls, void *params, uint32_t size)
{
    rm_nvos21_t a = {.hRoot = RM_CLIENT_HANDLE, .hObjectParent = parent, .hObjectNew = handle, .hClass = cls,
                     .pAllocParms = (uint64_t)(uintptr_t)params, .paramsSize = size};
    rm_ioctl(RM_NR_ALLOC, sizeof a, &a);
}

static void alloc64(uint32_t parent, uint32_t handle, uint32_t cls, void *params, uint32_t size)
{
    rm_nvos64_t a = {.hRoot = RM_CLIENT_HANDLE, .hObjectParent = parent, .hObjectNew = handle, .hClass = cls,
                     .pAllocParms = (uint64_t)(uintptr_t)params, .paramsSize = size};
    rm_ioctl(RM_NR_ALLOC, sizeof a, &a);
}

static void rm_control(uint32_t object, uint32_t cmd, void *params, uint32_t size)
{
    rm_nvos54_t c = {.hClient = RM_CLIENT_HANDLE, .hObject = object, .cmd = cmd,
                     .params = (uint64_t)(uintptr_t)params, .paramsSize = size};
    rm_ioctl(RM_NR_CONTROL, sizeof c, &c);
}

static void rm_free(uint32_t parent, uint32_t handle)
{
    rm_nvos00_t f = {.hRoot = RM_CLIENT_HANDLE, .hObjectParent = parent, .hObjectOld = handle};
    rm_ioctl(RM_NR_FREE, sizeof f, &f);
}

void fake_rm_init_devices(void)
{
    g_ctl_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (g_ctl_fd < 0)
        return;
    fakeRmRegisterFd(g_ctl_fd);
    alloc21(RM_CLIENT_HANDLE, RM_CLIENT_HANDLE, RM_CLASS_ROOT, NULL, 0);
    for (int i = 0; i < g_fake_device_count; i++) {
        fake_device_t *d = &g_fake_devices[i];
        d->hDevice = new_handle();
        d->hSubdevice = new_handle();
        rm_device_alloc_t dev = {.deviceId = (uint32_t)i};
        alloc21(RM_CLIENT_HANDLE, d->hDevice, RM_CLASS_DEVICE, &dev, sizeof dev);
        rm_subdevice_alloc_t sub = {.subDeviceId = 0};
        alloc21(d->hDevice, d->hSubdevice, RM_CLASS_SUBDEVICE, &sub, sizeof sub);
    }
}

static uint32_t ctx_alloc(CUcontext c, uint32_t parent, uint32_t cls, void *params, uint32_t size, int wide)
{
    uint32_t h = new_handle();
    if (wide)
        alloc64(parent, h, cls, params, size);
    else
        alloc21(parent, h, cls, params, size);
    c->rm_handles[c->rm_count] = h;
    c->rm_parents[c->rm_count] = parent;
    c->rm_count++;
    return h;
}

/* One TSG with its context share and nchannels channels; returns the TSG. */
static uint32_t alloc_tsg(CUcontext c, uint32_t engine, int nchannels, uint32_t *channels)
{
    uint32_t hdev = g_fake_devices[c->device].hDevice;
    rm_tsg_alloc_t tsg = {.engineType = engine};
    uint32_t htsg = ctx_alloc(c, hdev, RM_CLASS_TSG, &tsg, sizeof tsg, 1);
    rm_ctxshare_alloc_t share = {.subctxId = 0};
    uint32_t hshare = ctx_alloc(c, htsg, RM_CLASS_CTXSHARE, &share, sizeof share, 0);
    for (int i = 0; i < nchannels; i++) {
        rm_channel_alloc_t ch = {.gpFifoEntries = 1024, .hContextShare = hshare};
        uint32_t h = ctx_alloc(c, htsg, RM_CLASS_CHANNEL, &ch, sizeof ch, 1);
        if (channels)
            channels[i] = h;
    }
    /* as libcuda does: the TSG is scheduled once its channels exist, which enables them. The copy
     * engines' single channels take the channel verb instead, as the driver's own UVM does, so both
     * verbs reach the agent */
    if (engine == RM_ENGINE_GR) {
        unsigned char schedule[3] = {1, 0, 0};
        rm_control(htsg, RM_CMD_TSG_SCHEDULE, schedule, sizeof schedule);
    } else {
        for (int i = 0; channels && i < nchannels; i++) {
            unsigned char schedule[2] = {1, 0};
            rm_control(channels[i], RM_CMD_CHANNEL_SCHEDULE, schedule, sizeof schedule);
        }
    }
    return htsg;
}

void fake_rm_ctx_create(CUcontext c)
{
    if (g_ctl_fd < 0 || g_fake_mps_client)
        return;
    alloc_tsg(c, RM_ENGINE_GR, FAKE_RM_CHANNELS_COMPUTE, c->rm_compute_channels);
    for (uint32_t i = 0; i < FAKE_RM_COPY_TSGS; i++)
        alloc_tsg(c, RM_ENGINE_COPY0 + i, 1, &c->rm_copy_channels[i]);
}

void fake_rm_ctx_destroy(CUcontext c)
{
    /* Reverse order: channels and shares go before the TSG that holds them. */
    while (c->rm_count > 0) {
        c->rm_count--;
        rm_free(c->rm_parents[c->rm_count], c->rm_handles[c->rm_count]);
    }
    memset(c->rm_compute_channels, 0, sizeof c->rm_compute_channels);
    memset(c->rm_copy_channels, 0, sizeof c->rm_copy_channels);
}

int fake_rm_ctx_copies_stopped(CUcontext c)
{
    if (!c || !c->rm_copy_channels[0])
        return 0;
    for (int i = 0; i < FAKE_RM_COPY_TSGS; i++)
        if (fakeRmChannelDisabled(c->rm_copy_channels[i]) != 1)
            return 0;
    return 1;
}

int fake_rm_ctx_frozen(CUcontext c)
{
    if (!c->rm_compute_channels[0])
        return 0;
    for (int i = 0; i < FAKE_RM_CHANNELS_COMPUTE; i++)
        if (fakeRmChannelDisabled(c->rm_compute_channels[i]) != 1)
            return 0;
    return 1;
}
