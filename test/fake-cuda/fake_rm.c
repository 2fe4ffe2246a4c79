/* libgvmfakerm.so: a user-space stand-in for the NVIDIA resource manager.
 *
 * It overrides libc ioctl. Requests on file descriptors registered with
 * fakeRmRegisterFd are answered from an in-memory object table the way the
 * kernel driver answers /dev/nvidiactl; everything else goes to the next ioctl
 * in link order, so the library is harmless in any process. */
#define _GNU_SOURCE
#include "fake_rm.h"
#include "rm_abi.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>

#define API __attribute__((visibility("default")))

#define MAX_FDS 64
#define MAX_OBJECTS 8192
#define MAX_CMD_COUNTERS 64
#define MAX_FAIL_CMDS 8
#define DEFAULT_TIMESLICE_US 2048u
#define LOG_PARAMS_MAX 2048

typedef struct {
    uint32_t handle;
    uint32_t parent;
    uint32_t client;
    uint32_t cls;
    uint32_t engine;
    uint64_t timesliceUs;
    int disabled;
} rm_object_t;

static atomic_int g_fds[MAX_FDS];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static rm_object_t g_objects[MAX_OBJECTS];
static size_t g_object_count;
static struct {
    uint32_t cmd;
    unsigned long count;
} g_cmd_counts[MAX_CMD_COUNTERS];
static uint32_t g_fail_cmds[MAX_FAIL_CMDS];
static size_t g_fail_count;
static int g_log_fd = -1;
static long g_control_us; /* FAKE_RM_CONTROL_US: what each control costs, as a GSP round trip does */
static int (*g_next_ioctl)(int, unsigned long, ...);
static void (*_Atomic g_channel_hook)(void);

/* A fork while another thread holds the table lock would leave the child's copy
 * locked forever; taking it around fork keeps the child usable. */
static int g_scheduling_only;

static void before_fork(void) { pthread_mutex_lock(&g_lock); }
static void after_fork(void) { pthread_mutex_unlock(&g_lock); }

static void init_once(void)
{
    for (int i = 0; i < MAX_FDS; i++)
        atomic_store(&g_fds[i], -1);
    g_next_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    const char *log = getenv("FAKE_RM_LOG");
    if (log && *log)
        g_log_fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    const char *only = getenv("FAKE_RM_SCHEDULING_ONLY");
    g_scheduling_only = only && *only == '1';
    const char *cost = getenv("FAKE_RM_CONTROL_US");
    g_control_us = cost ? strtol(cost, NULL, 10) : 0;
    const char *fail = getenv("FAKE_RM_FAIL_CMD");
    while (fail && *fail && g_fail_count < MAX_FAIL_CMDS) {
        char *end;
        unsigned long cmd = strtoul(fail, &end, 16);
        if (end == fail)
            break;
        g_fail_cmds[g_fail_count++] = (uint32_t)cmd;
        fail = (*end == ',') ? end + 1 : end;
    }
    pthread_atfork(before_fork, after_fork, after_fork);
}

static int fd_registered(int fd)
{
    pthread_once(&g_once, init_once);
    for (int i = 0; i < MAX_FDS; i++)
        if (atomic_load_explicit(&g_fds[i], memory_order_acquire) == fd)
            return 1;
    return 0;
}

API void fakeRmRegisterFd(int fd)
{
    pthread_once(&g_once, init_once);
    if (fd < 0 || fd_registered(fd))
        return;
    for (int i = 0; i < MAX_FDS; i++) {
        int expected = -1;
        if (atomic_compare_exchange_strong(&g_fds[i], &expected, fd))
            return;
    }
}

API void fakeRmSetChannelHook(void (*hook)(void)) { atomic_store(&g_channel_hook, hook); }

/* Called (outside the RM lock) before each control is applied, with its command and the caller's
 * params: a test can make something happen between a caller's decision and its control's effect. */
static void (*_Atomic g_before_control_hook)(unsigned cmd, const void *params, unsigned size);
API void fakeRmSetBeforeControlHook(void (*hook)(unsigned cmd, const void *params, unsigned size))
{
    atomic_store(&g_before_control_hook, hook);
}

/* Called after a control that must not answer while stopped channels still run work: a TSG preempt
 * with bWait, or a disable-channels without bOnlyDisableScheduling (the RM preempts them itself). */
static void (*_Atomic g_stop_hook)(void);
API void fakeRmSetStopHook(void (*hook)(void)) { atomic_store(&g_stop_hook, hook); }

static int waits_for_stop(const rm_nvos54_t *c, const unsigned char *sent, size_t nsent)
{
    if (c->cmd == RM_CMD_TSG_PREEMPT)
        return nsent >= 1 && sent[0] == 1;
    if (c->cmd == RM_CMD_DISABLE_CHANNELS)
        return nsent > 8 && sent[0] == 1 && sent[8] == 0;
    return 0;
}

/* ---- object table (callers hold g_lock) ---- */

static rm_object_t *find_object(uint32_t handle)
{
    for (size_t i = 0; i < g_object_count; i++)
        if (g_objects[i].handle == handle)
            return &g_objects[i];
    return NULL;
}

static void remove_subtree(uint32_t handle)
{
    /* Children first, restarting after each removal because removal reorders. */
    for (size_t i = 0; i < g_object_count;) {
        if (g_objects[i].parent == handle && g_objects[i].handle != handle) {
            remove_subtree(g_objects[i].handle);
            i = 0;
        } else {
            i++;
        }
    }
    rm_object_t *o = find_object(handle);
    if (o)
        *o = g_objects[--g_object_count];
}

static void count_control(uint32_t cmd)
{
    for (size_t i = 0; i < MAX_CMD_COUNTERS; i++) {
        if (g_cmd_counts[i].count == 0)
            g_cmd_counts[i].cmd = cmd;
        if (g_cmd_counts[i].cmd == cmd) {
            g_cmd_counts[i].count++;
            return;
        }
    }
}

/* ---- logging: one write() per line so concurrent writers never interleave ---- */

static size_t append_hex(char *out, size_t cap, const void *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *b = bytes;
    size_t len = 0;
    for (size_t i = 0; i < n && len + 2 < cap; i++) {
        out[len++] = digits[b[i] >> 4];
        out[len++] = digits[b[i] & 15];
    }
    return len;
}

static void log_line(const char *head, const void *params, size_t size)
{
    if (g_log_fd < 0)
        return;
    char line[256 + 2 * LOG_PARAMS_MAX + 2];
    size_t len = strlen(head);
    memcpy(line, head, len);
    if (params && size) {
        memcpy(line + len, " params=", 8);
        len += 8;
        len += append_hex(line + len, 2 * LOG_PARAMS_MAX + 1, params, size < LOG_PARAMS_MAX ? size : LOG_PARAMS_MAX);
    }
    line[len++] = '\n';
    ssize_t w = write(g_log_fd, line, len);
    (void)w;
}

/* ---- RM_ALLOC ---- */

static uint32_t do_alloc(uint32_t root, uint32_t parent, uint32_t handle, uint32_t cls,
                         const void *params, uint32_t size)
{
    if (handle == 0)
        return NV_ERR_INVALID_OBJECT_HANDLE;
    if (find_object(handle))
        return NV_ERR_INVALID_ARGUMENT;
    if (cls != RM_CLASS_ROOT) {
        rm_object_t *p = find_object(parent);
        if (!p || p->client != root)
            return NV_ERR_OBJECT_NOT_FOUND;
    } else if (handle != root) {
        return NV_ERR_INVALID_ARGUMENT;
    }
    if (g_object_count == MAX_OBJECTS)
        return NV_ERR_INVALID_ARGUMENT;
    rm_object_t o = {.handle = handle, .parent = parent, .client = root, .cls = cls,
                     .timesliceUs = DEFAULT_TIMESLICE_US};
    if (cls == RM_CLASS_TSG) {
        rm_tsg_alloc_t tsg;
        if (!params || size < sizeof tsg)
            return NV_ERR_INVALID_ARGUMENT;
        memcpy(&tsg, params, sizeof tsg);
        o.engine = tsg.engineType;
    }
    g_objects[g_object_count++] = o;
    return NV_OK;
}

static int handle_alloc(int fd, unsigned size, void *arg)
{
    uint32_t *statusp;
    uint32_t root, parent, handle, cls, psize;
    uint64_t pparams;
    if (size == sizeof(rm_nvos21_t)) {
        rm_nvos21_t *a = arg;
        root = a->hRoot, parent = a->hObjectParent, handle = a->hObjectNew, cls = a->hClass;
        pparams = a->pAllocParms, psize = a->paramsSize, statusp = &a->status;
    } else if (size == sizeof(rm_nvos64_t)) {
        rm_nvos64_t *a = arg;
        root = a->hRoot, parent = a->hObjectParent, handle = a->hObjectNew, cls = a->hClass;
        pparams = a->pAllocParms, psize = a->paramsSize, statusp = &a->status;
    } else {
        errno = EINVAL;
        return -1;
    }
    const void *params = (const void *)(uintptr_t)pparams;
    pthread_mutex_lock(&g_lock);
    uint32_t status = do_alloc(root, parent, handle, cls, params, psize);
    pthread_mutex_unlock(&g_lock);
    *statusp = status;
    char head[256];
    snprintf(head, sizeof head,
             "alloc pid=%d fd=%d size=%u hRoot=0x%08x hParent=0x%08x hNew=0x%08x hClass=0x%04x paramsSize=%u status=0x%x",
             (int)getpid(), fd, size, root, parent, handle, cls, psize, status);
    log_line(head, params, params ? psize : 0);
    return 0;
}

/* ---- RM_FREE ---- */

static int handle_free(int fd, unsigned size, void *arg)
{
    if (size != sizeof(rm_nvos00_t)) {
        errno = EINVAL;
        return -1;
    }
    rm_nvos00_t *f = arg;
    pthread_mutex_lock(&g_lock);
    rm_object_t *o = find_object(f->hObjectOld);
    uint32_t status = NV_OK;
    if (!o || o->client != f->hRoot)
        status = NV_ERR_INVALID_OBJECT_HANDLE;
    else
        remove_subtree(f->hObjectOld);
    pthread_mutex_unlock(&g_lock);
    f->status = status;
    char head[256];
    snprintf(head, sizeof head, "free pid=%d fd=%d hRoot=0x%08x hParent=0x%08x hObject=0x%08x status=0x%x",
             (int)getpid(), fd, f->hRoot, f->hObjectParent, f->hObjectOld, status);
    log_line(head, NULL, 0);
    return 0;
}

/* ---- RM_CONTROL ---- */

static uint32_t disable_channels(const rm_object_t *subdev, const void *params, uint32_t size, int *changed)
{
    rm_disable_channels_t p;
    if (subdev->cls != RM_CLASS_SUBDEVICE)
        return NV_ERR_NOT_SUPPORTED;
    if (size != sizeof p)
        return NV_ERR_INVALID_ARGUMENT;
    memcpy(&p, params, sizeof p);
    if (p.numChannels > RM_DISABLE_MAX_CHANNELS || p.pRunlistPreemptEvent != 0)
        return NV_ERR_INVALID_ARGUMENT;
    /* FAKE_RM_SCHEDULING_ONLY=1: a driver that only disables scheduling (refuses to preempt here) */
    if (p.bDisable && !p.bOnlyDisableScheduling && g_scheduling_only)
        return NV_ERR_NOT_SUPPORTED;
    /* Validate the whole list before touching anything: the real RM fails the call
     * as a unit when one entry is not a channel. */
    for (uint32_t i = 0; i < p.numChannels; i++) {
        rm_object_t *client = find_object(p.hClientList[i]);
        rm_object_t *ch = find_object(p.hChannelList[i]);
        if (!client || client->cls != RM_CLASS_ROOT)
            return NV_ERR_INVALID_OBJECT_HANDLE;
        if (!ch || ch->client != p.hClientList[i] || !RM_IS_CHANNEL_CLASS(ch->cls))
            return NV_ERR_INVALID_CHANNEL;
        /* The control goes to the subdevice's own GPU (its GSP-RM), which knows only that GPU's
         * channels: one of another GPU (channel -> TSG -> device) is not found there. */
        rm_object_t *tsg = find_object(ch->parent);
        if (!tsg || tsg->parent != subdev->parent)
            return NV_ERR_INVALID_CHANNEL;
    }
    for (uint32_t i = 0; i < p.numChannels; i++)
        find_object(p.hChannelList[i])->disabled = p.bDisable ? 1 : 0;
    *changed = p.numChannels > 0;
    return NV_OK;
}

static uint32_t tsg_control(rm_object_t *tsg, uint32_t cmd, void *params, uint32_t size)
{
    if (tsg->cls != RM_CLASS_TSG)
        return NV_ERR_NOT_SUPPORTED;
    if (size != 8 || !params)
        return NV_ERR_INVALID_ARGUMENT;
    uint64_t value;
    switch (cmd) {
    case RM_CMD_TSG_GET_TIMESLICE:
        memcpy(params, &tsg->timesliceUs, sizeof value);
        return NV_OK;
    case RM_CMD_TSG_SET_TIMESLICE:
        memcpy(&value, params, sizeof value);
        if (value == 0)
            return NV_ERR_INVALID_ARGUMENT;
        tsg->timesliceUs = value;
        return NV_OK;
    default: /* preempt: nothing runs on a fake GPU, so there is nothing to kick off */
        return NV_OK;
    }
}

/* GPFIFO_SCHEDULE with bEnable: the TSG goes on its runlist with every channel enabled, as the real
 * RM did on the H100 to channels disabled right after their creation. */
static uint32_t tsg_schedule(rm_object_t *tsg, const void *params, uint32_t size, int *changed)
{
    if (tsg->cls != RM_CLASS_TSG)
        return NV_ERR_NOT_SUPPORTED;
    if (size != 3 || !params)
        return NV_ERR_INVALID_ARGUMENT;
    if (((const unsigned char *)params)[0] != 1)
        return NV_OK;
    for (size_t i = 0; i < g_object_count; i++)
        if (g_objects[i].parent == tsg->handle && RM_IS_CHANNEL_CLASS(g_objects[i].cls) && g_objects[i].disabled) {
            g_objects[i].disabled = 0;
            *changed = 1;
        }
    return NV_OK;
}

/* The channel verb: that one channel enabled (and put on its runlist). */
static uint32_t channel_schedule(rm_object_t *ch, const void *params, uint32_t size, int *changed)
{
    if (!RM_IS_CHANNEL_CLASS(ch->cls))
        return NV_ERR_NOT_SUPPORTED;
    if (size != 2 || !params)
        return NV_ERR_INVALID_ARGUMENT;
    if (((const unsigned char *)params)[0] == 1 && ch->disabled) {
        ch->disabled = 0;
        *changed = 1;
    }
    return NV_OK;
}

static uint32_t do_control(const rm_nvos54_t *c, void *params, int *changed)
{
    count_control(c->cmd);
    for (size_t i = 0; i < g_fail_count; i++)
        if (g_fail_cmds[i] == c->cmd)
            return NV_ERR_INVALID_ARGUMENT;
    rm_object_t *o = find_object(c->hObject);
    if (!o || o->client != c->hClient)
        return NV_ERR_INVALID_OBJECT_HANDLE;
    if (c->paramsSize && !params)
        return NV_ERR_INVALID_ARGUMENT;
    switch (c->cmd) {
    case RM_CMD_TSG_GET_TIMESLICE:
    case RM_CMD_TSG_SET_TIMESLICE:
    case RM_CMD_TSG_PREEMPT:
        return tsg_control(o, c->cmd, params, c->paramsSize);
    case RM_CMD_DISABLE_CHANNELS:
        return disable_channels(o, params, c->paramsSize, changed);
    case RM_CMD_TSG_SCHEDULE:
        return tsg_schedule(o, params, c->paramsSize, changed);
    case RM_CMD_CHANNEL_SCHEDULE:
        return channel_schedule(o, params, c->paramsSize, changed);
    default:
        return NV_ERR_NOT_SUPPORTED;
    }
}

static int handle_control(int fd, unsigned size, void *arg)
{
    if (size != sizeof(rm_nvos54_t)) {
        errno = EINVAL;
        return -1;
    }
    rm_nvos54_t *c = arg;
    void *params = (void *)(uintptr_t)c->params;
    char head[256];
    /* The log shows the bytes the caller sent, before the fake writes results back. */
    snprintf(head, sizeof head, "control pid=%d fd=%d hClient=0x%08x hObject=0x%08x cmd=0x%08x paramsSize=%u",
             (int)getpid(), fd, c->hClient, c->hObject, c->cmd, c->paramsSize);
    unsigned char sent[LOG_PARAMS_MAX];
    size_t nsent = params ? (c->paramsSize < sizeof sent ? c->paramsSize : sizeof sent) : 0;
    if (nsent)
        memcpy(sent, params, nsent);
    void (*before)(unsigned, const void *, unsigned) = atomic_load(&g_before_control_hook);
    if (before)
        before(c->cmd, params, c->paramsSize);
    if (g_control_us > 0) {
        struct timespec ts = {g_control_us / 1000000, (g_control_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    int changed = 0;
    pthread_mutex_lock(&g_lock);
    uint32_t status = do_control(c, params, &changed);
    pthread_mutex_unlock(&g_lock);
    c->status = status;
    size_t hl = strlen(head);
    snprintf(head + hl, sizeof head - hl, " status=0x%x", status);
    log_line(head, sent, nsent);
    void (*hook)(void) = atomic_load(&g_channel_hook);
    if (changed && hook)
        hook();
    void (*stop_hook)(void) = atomic_load(&g_stop_hook);
    if (status == NV_OK && stop_hook && waits_for_stop(c, sent, nsent))
        stop_hook();
    return 0;
}

API int fakeRmIoctl(int fd, unsigned long request, void *arg)
{
    if (_IOC_TYPE(request) != RM_IOCTL_TYPE || !arg) {
        errno = EINVAL;
        return -1;
    }
    unsigned size = _IOC_SIZE(request);
    switch (_IOC_NR(request)) {
    case RM_NR_ALLOC:
        return handle_alloc(fd, size, arg);
    case RM_NR_CONTROL:
        return handle_control(fd, size, arg);
    case RM_NR_FREE:
        return handle_free(fd, size, arg);
    default:
        errno = EINVAL;
        return -1;
    }
}

API int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (fd_registered(fd))
        return fakeRmIoctl(fd, request, arg);
    if (g_next_ioctl)
        return g_next_ioctl(fd, request, arg);
    return (int)syscall(SYS_ioctl, fd, request, arg);
}

/* ---- test helpers ---- */

API unsigned fakeRmTimeslice(unsigned hTsg)
{
    pthread_mutex_lock(&g_lock);
    rm_object_t *o = find_object(hTsg);
    unsigned v = (o && o->cls == RM_CLASS_TSG) ? (unsigned)o->timesliceUs : 0;
    pthread_mutex_unlock(&g_lock);
    return v;
}

API int fakeRmChannelDisabled(unsigned hChannel)
{
    pthread_mutex_lock(&g_lock);
    rm_object_t *o = find_object(hChannel);
    int v = (o && RM_IS_CHANNEL_CLASS(o->cls)) ? o->disabled : -1;
    pthread_mutex_unlock(&g_lock);
    return v;
}

API unsigned long fakeRmControlCount(unsigned cmd)
{
    unsigned long n = 0;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < MAX_CMD_COUNTERS; i++)
        if (g_cmd_counts[i].count && g_cmd_counts[i].cmd == cmd)
            n = g_cmd_counts[i].count;
    pthread_mutex_unlock(&g_lock);
    return n;
}
