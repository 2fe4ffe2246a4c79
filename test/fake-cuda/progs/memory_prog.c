/* gvm-memory-prog: memory scenarios for test/memory.test.ts, run under the agent on the fake
 * driver (it also runs on a real driver, but its expectations are the fake's: pitch = width rounded
 * up to 512, pool chunks of exactly the requested size).
 *
 * It reads its own control block (GVM_SHM_DIR/<pid>) and compares gvm's numbers with what it
 * allocated itself and with what the driver reports, after every step:
 *
 *   random  seed=S steps=N   one thread, a random mix of cuMemAlloc, cuMemAllocPitch, cuMemAllocAsync
 *                            (default pool), cuMemAllocFromPoolAsync (own pool), the application's own
 *                            VMM (device and host handles, released before or after the unmap) and frees
 *   threads seed=S steps=N   the same mix from 8 threads at once; exact totals once they joined
 *   limit                    under GVM_MEMORY_LIMIT: refusal exact to the byte for every kind, then
 *                            8 threads racing for the room left in 1 MiB pieces
 *   meminfo                  cuMemGetInfo under the limit while usage grows (FAKE_CUDA_USED_BYTES
 *                            stands for other processes)
 *   swap    seed=S count=N   N buffers of random sizes with known contents; stdin: verify | write |
 *                            free | exit (the test moves them by changing the limit)
 *   ipc-export / ipc-import  CUDA IPC between two processes (see ipc_main below)
 * Every scenario takes gpu=N: it then runs on that CUDA ordinal (and reads that GPU's numbers).
 *
 * Lines: `ok <what>`, `BAD <what>` (a mismatch), `DONE <steps> <bad>`; READY for the stdin ones.
 * Exit status: 0 when nothing was BAD. */
#define _GNU_SOURCE
#include <cuda.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "gvm/control_block.h"
#include "gvm/self_command.h"
#include "prog_check.h"

#define MiB ((size_t)1 << 20)
#define GRAN (2 * MiB)
#define THREADS 8
#define MAX_LIVE 256

static struct gvm_control_block *g_block;
static CUcontext g_ctx;
static CUdevice g_dev;
static int g_gpu; /* gpu=N: the ordinal every scenario runs on (default 0) */
static int g_bad;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

static void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&g_print);
    printf("BAD ");
    vprintf(fmt, ap);
    printf("\n");
    g_bad++;
    pthread_mutex_unlock(&g_print);
    va_end(ap);
}

static uint64_t rnd(uint64_t *s)
{
    /* xorshift64*: the same sequence for the same seed on every machine */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static int arg_int(int argc, char **argv, const char *key, int fallback)
{
    size_t n = strlen(key);
    for (int i = 2; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=')
            return atoi(argv[i] + n + 1);
    return fallback;
}

static void open_gpu_for(int need_block)
{
    g_ctx = prog_open_gpu(g_gpu, &g_dev);
    char path[512];
    gvm_self_block_path(path, sizeof path);
    int fd = open(path, O_RDONLY);
    if (fd < 0 && !need_block)
        return; /* ipc-import also runs without the agent */
    if (fd < 0) {
        fprintf(stderr, "FAIL control-block %s (run under the agent)\n", path);
        exit(1);
    }
    g_block = mmap(NULL, sizeof *g_block, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (g_block == MAP_FAILED) {
        fprintf(stderr, "FAIL mmap 0\n");
        exit(1);
    }
}

static void open_gpu(void) { open_gpu_for(1); }

static uint64_t gvm_current(void) { return GVM_LOAD(&g_block->gpu[g_gpu].memory_current); }
static uint64_t gvm_host(void) { return GVM_LOAD(&g_block->gpu[g_gpu].host_bytes); }
static uint64_t gvm_limit(void) { return GVM_LOAD(&g_block->gpu[g_gpu].memory_limit); }

/* gvm learns a pool's size from the driver, on its event thread after frees: allow it a moment */
static uint64_t settle(uint64_t want, uint64_t (*read)(void))
{
    uint64_t got = read();
    for (int i = 0; i < 2000 && got != want; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        got = read();
    }
    return got;
}

/* ---- the random mix ---- */
enum kind { K_ALLOC, K_PITCH, K_ASYNC, K_POOL, K_VMM, K_VMM_HOST, K_KINDS };
static const char *const kind_name[] = {"cuMemAlloc", "cuMemAllocPitch", "cuMemAllocAsync",
                                        "cuMemAllocFromPoolAsync", "VMM device", "VMM host"};

struct live {
    enum kind kind;
    CUdeviceptr ptr;
    size_t bytes; /* what gvm should count */
    size_t va;    /* VMM: mapped size */
    CUmemGenericAllocationHandle handle;
    int released; /* VMM: cuMemRelease already called while mapped */
};

struct mix {
    uint64_t seed;
    CUstream stream;
    CUmemoryPool pool;
    struct live live[MAX_LIVE];
    int n;
    /* what this thread holds that gvm counts (device, host), pools apart */
    uint64_t device, host;
};

static CUmemoryPool g_pool, g_default_pool;

static uint64_t pool_reserved(CUmemoryPool p)
{
    cuuint64_t v = 0;
    CK(cuMemPoolGetAttribute(p, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v));
    return v;
}

static void mix_alloc(struct mix *m)
{
    if (m->n == MAX_LIVE)
        return;
    struct live a = {.kind = (enum kind)(rnd(&m->seed) % K_KINDS)};
    size_t bytes = 1 + rnd(&m->seed) % (6 * MiB); /* odd sizes too */
    switch (a.kind) {
    case K_ALLOC:
        CK(cuMemAlloc(&a.ptr, bytes));
        a.bytes = bytes;
        break;
    case K_PITCH: {
        size_t width = 1 + rnd(&m->seed) % 5000, height = 1 + rnd(&m->seed) % 300, pitch = 0;
        CK(cuMemAllocPitch(&a.ptr, &pitch, width, height, 4));
        a.bytes = pitch * height;
        break;
    }
    case K_ASYNC:
        CK(cuMemAllocAsync(&a.ptr, bytes, m->stream));
        a.bytes = 0; /* pools are counted by their reservation */
        break;
    case K_POOL:
        CK(cuMemAllocFromPoolAsync(&a.ptr, bytes, m->pool, m->stream));
        a.bytes = 0;
        break;
    case K_VMM:
    case K_VMM_HOST: {
        CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED};
        prop.location.type = a.kind == K_VMM ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
        prop.location.id = a.kind == K_VMM ? g_dev : 0;
        a.va = (bytes + GRAN - 1) / GRAN * GRAN;
        CK(cuMemAddressReserve(&a.ptr, a.va, 0, 0, 0));
        CK(cuMemCreate(&a.handle, a.va, &prop, 0));
        CK(cuMemMap(a.ptr, a.va, 0, a.handle, 0));
        CUmemAccessDesc acc = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g_dev},
                               .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
        CK(cuMemSetAccess(a.ptr, a.va, &acc, 1));
        if (rnd(&m->seed) % 2) { /* released while still mapped: it counts until the unmap */
            CK(cuMemRelease(a.handle));
            a.released = 1;
        }
        a.bytes = a.va;
        break;
    }
    default:
        break;
    }
    if (a.kind == K_VMM_HOST)
        m->host += a.bytes;
    else
        m->device += a.bytes;
    m->live[m->n++] = a;
}

static void mix_free(struct mix *m)
{
    if (m->n == 0)
        return;
    int i = (int)(rnd(&m->seed) % (uint64_t)m->n);
    struct live a = m->live[i];
    m->live[i] = m->live[--m->n];
    switch (a.kind) {
    case K_ALLOC:
    case K_PITCH: CK(cuMemFree(a.ptr)); break;
    case K_ASYNC:
    case K_POOL:
        CK(cuMemFreeAsync(a.ptr, m->stream));
        CK(cuStreamSynchronize(m->stream)); /* the chunk goes back to its pool, which releases it */
        break;
    case K_VMM:
    case K_VMM_HOST:
        CK(cuMemUnmap(a.ptr, a.va));
        if (!a.released)
            CK(cuMemRelease(a.handle));
        CK(cuMemAddressFree(a.ptr, a.va));
        break;
    default: break;
    }
    if (a.kind == K_VMM_HOST)
        m->host -= a.bytes;
    else
        m->device -= a.bytes;
}

static void mix_step(struct mix *m)
{
    /* grow to about 40 live allocations, then hover there */
    if (m->n < 40 ? rnd(&m->seed) % 4 != 0 : rnd(&m->seed) % 2 == 0)
        mix_alloc(m);
    else
        mix_free(m);
}

static uint64_t pools_now(void) { return pool_reserved(g_pool) + pool_reserved(g_default_pool); }

static void setup_pools(void)
{
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g_dev}};
    CK(cuMemPoolCreate(&g_pool, &props));
    CK(cuDeviceGetDefaultMemPool(&g_default_pool, g_dev));
}

/* The driver's own figure: no limit is set, so cuMemGetInfo passes through. */
static uint64_t driver_used(void)
{
    size_t free_bytes = 0, total = 0;
    CK(cuMemGetInfo(&free_bytes, &total));
    return total - free_bytes;
}

static void check_totals(const char *what, int step, uint64_t device, uint64_t host, uint64_t base_used)
{
    uint64_t want = device + pools_now();
    uint64_t got = settle(want, gvm_current);
    uint64_t used = driver_used() - base_used;
    if (got != want || used != want)
        bad("%s step %d: memory.current %llu, driver %llu, program %llu", what, step, (unsigned long long)got,
            (unsigned long long)used, (unsigned long long)want);
    uint64_t h = gvm_host();
    if (h != host)
        bad("%s step %d: host bytes %llu, program %llu", what, step, (unsigned long long)h, (unsigned long long)host);
}

static int run_random(int argc, char **argv)
{
    open_gpu();
    setup_pools();
    int steps = arg_int(argc, argv, "steps", 300);
    struct mix *m = calloc(1, sizeof *m);
    m->seed = (uint64_t)arg_int(argc, argv, "seed", 1) * 0x9E3779B97F4A7C15ull + 1;
    m->pool = g_pool;
    CK(cuStreamCreate(&m->stream, CU_STREAM_NON_BLOCKING));
    uint64_t base = driver_used(), base_gvm = gvm_current();
    if (base_gvm != 0)
        bad("memory.current %llu before any allocation", (unsigned long long)base_gvm);
    int kinds_seen[K_KINDS] = {0};
    for (int s = 0; s < steps; s++) {
        int before = m->n;
        mix_step(m);
        if (m->n > before)
            kinds_seen[m->live[m->n - 1].kind]++;
        check_totals("random", s, m->device, m->host, base);
    }
    for (int k = 0; k < K_KINDS; k++)
        printf("ok %d x %s\n", kinds_seen[k], kind_name[k]);
    while (m->n)
        mix_free(m);
    CK(cuMemPoolTrimTo(g_pool, 0));
    CK(cuMemPoolTrimTo(g_default_pool, 0));
    check_totals("random, all freed", steps, 0, 0, base);
    printf("DONE %d %d\n", steps, g_bad);
    return g_bad != 0;
}

static int g_thread_steps;
static void *thread_main(void *p)
{
    struct mix *m = p;
    CK(cuCtxSetCurrent(g_ctx));
    CK(cuStreamCreate(&m->stream, CU_STREAM_NON_BLOCKING));
    for (int s = 0; s < g_thread_steps; s++)
        mix_step(m);
    CK(cuStreamSynchronize(m->stream));
    return NULL;
}

static int run_threads(int argc, char **argv)
{
    open_gpu();
    setup_pools();
    g_thread_steps = arg_int(argc, argv, "steps", 200);
    int seed = arg_int(argc, argv, "seed", 1);
    uint64_t base = driver_used();
    static struct mix mixes[THREADS];
    pthread_t tids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        mixes[i].seed = (uint64_t)(seed * THREADS + i) * 0x9E3779B97F4A7C15ull + 1;
        mixes[i].pool = g_pool;
        pthread_create(&tids[i], NULL, thread_main, &mixes[i]);
    }
    uint64_t device = 0, host = 0;
    int live = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(tids[i], NULL);
        device += mixes[i].device;
        host += mixes[i].host;
        live += mixes[i].n;
    }
    check_totals("threads", g_thread_steps, device, host, base);
    uint64_t allocs = GVM_LOAD(&g_block->gpu[g_gpu].alloc_count), frees = GVM_LOAD(&g_block->gpu[g_gpu].free_count);
    printf("ok %d live allocations, gvm counts %llu - %llu\n", live, (unsigned long long)allocs,
           (unsigned long long)frees);
    if (allocs - frees != (uint64_t)live)
        bad("threads: %llu allocations - %llu frees != %d live", (unsigned long long)allocs,
            (unsigned long long)frees, live);
    for (int i = 0; i < THREADS; i++) {
        CK(cuCtxSetCurrent(g_ctx));
        while (mixes[i].n)
            mix_free(&mixes[i]);
    }
    CK(cuMemPoolTrimTo(g_pool, 0));
    CK(cuMemPoolTrimTo(g_default_pool, 0));
    check_totals("threads, all freed", g_thread_steps, 0, 0, base);
    printf("DONE %d %d\n", g_thread_steps * THREADS, g_bad);
    return g_bad != 0;
}

/* ---- the limit, exact to the byte ---- */
static void expect(const char *what, CUresult got, CUresult want)
{
    if (got != want)
        bad("%s: %d, expected %d", what, (int)got, (int)want);
    else
        printf("ok %s: %d\n", what, (int)got);
}

static uint64_t room(void) { return gvm_limit() - gvm_current(); }

static volatile int g_race_go;
static _Atomic uint64_t g_race_won;
static void *race_main(void *p)
{
    (void)p;
    CK(cuCtxSetCurrent(g_ctx));
    while (!g_race_go) {
    }
    CUdeviceptr d;
    /* keep trying until refused: a refusal must mean the limit is reached, never a neighbour's attempt */
    while (cuMemAlloc(&d, MiB) == CUDA_SUCCESS)
        atomic_fetch_add(&g_race_won, 1);
    return NULL;
}

static int run_limit(void)
{
    open_gpu();
    uint64_t limit = gvm_limit();
    CUdeviceptr a, b, c;
    /* cuMemAlloc: a byte over refused, exactly the room granted, then not one byte more */
    uint64_t r = room();
    expect("cuMemAlloc(room + 1)", cuMemAlloc(&a, r + 1), CUDA_ERROR_OUT_OF_MEMORY);
    expect("cuMemAlloc(room)", cuMemAlloc(&a, r), CUDA_SUCCESS);
    if (gvm_current() != limit)
        bad("memory.current %llu != limit %llu", (unsigned long long)gvm_current(), (unsigned long long)limit);
    expect("cuMemAlloc(1) at the limit", cuMemAlloc(&b, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemFree(a));

    /* pitch: width x height fits, the padded rows do not */
    r = room();
    size_t pitch = 0, height = 1000, width = (size_t)(r / height);
    while (width % 512 == 0) /* a width the driver must pad, whose padded rows pass the room */
        width = (size_t)(r / ++height);
    expect("cuMemAllocPitch whose padding passes the limit", cuMemAllocPitch(&a, &pitch, width, height, 4),
           CUDA_ERROR_OUT_OF_MEMORY);
    width = (width & ~(size_t)511) - 1; /* padded to a multiple of 512 that still fits */
    expect("cuMemAllocPitch that fits with its padding", cuMemAllocPitch(&a, &pitch, width, height, 4),
           CUDA_SUCCESS);
    CK(cuMemFree(a));

    /* the application's VMM: device handles count at cuMemCreate */
    r = room() / GRAN * GRAN;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g_dev}};
    CUmemGenericAllocationHandle h;
    expect("cuMemCreate(room rounded up)", cuMemCreate(&h, r + GRAN, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    expect("cuMemCreate(room rounded down)", cuMemCreate(&h, r, &prop, 0), CUDA_SUCCESS);
    CK(cuMemRelease(h));

    /* stream-ordered: an empty pool grows only into the room */
    CUstream s;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    r = room();
    expect("cuMemAllocAsync(room + 1)", cuMemAllocAsync(&a, r + 1, s), CUDA_ERROR_OUT_OF_MEMORY);
    expect("cuMemAllocAsync(room)", cuMemAllocAsync(&a, r, s), CUDA_SUCCESS);
    expect("cuMemAlloc(1) with the pool at the limit", cuMemAlloc(&c, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemFreeAsync(a, s));
    CK(cuStreamSynchronize(s));
    CUmemoryPool dp;
    CK(cuDeviceGetDefaultMemPool(&dp, g_dev));
    CK(cuMemPoolTrimTo(dp, 0));
    if (settle(0, gvm_current) != 0)
        bad("memory.current %llu after the pool was trimmed", (unsigned long long)gvm_current());

    /* 8 threads race for the room in 1 MiB pieces: exactly floor(room / 1 MiB) of them win */
    r = room();
    pthread_t tids[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&tids[i], NULL, race_main, NULL);
    g_race_go = 1;
    for (int i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);
    uint64_t won = atomic_load(&g_race_won);
    if (won != r / MiB || gvm_current() != won * MiB)
        bad("race: %llu pieces granted, room for %llu; memory.current %llu", (unsigned long long)won,
            (unsigned long long)(r / MiB), (unsigned long long)gvm_current());
    else
        printf("ok 8 threads were granted exactly %llu x 1 MiB\n", (unsigned long long)won);
    printf("DONE 0 %d\n", g_bad);
    return g_bad != 0;
}

/* ---- cuMemGetInfo under the limit ---- */
static int run_meminfo(void)
{
    open_gpu();
    CUdeviceptr d;
    for (int i = 0; i < 6; i++) {
        size_t free_bytes = 0, total = 0;
        CK(cuMemGetInfo(&free_bytes, &total));
        printf("MEMINFO %zu %zu %llu %llu\n", free_bytes, total, (unsigned long long)gvm_current(),
               (unsigned long long)gvm_limit());
        CUresult r = i < 5 ? cuMemAlloc(&d, 24 * MiB) : CUDA_SUCCESS;
        if (r != CUDA_SUCCESS) {
            printf("REFUSED %d\n", (int)r);
            break;
        }
    }
    printf("DONE 0 0\n");
    return 0;
}

/* ---- buffers of random sizes moved by swap mode ---- */
#define MAX_BUFFERS 64
static struct {
    CUdeviceptr ptr;
    size_t bytes;
    uint32_t gen;
} g_buf[MAX_BUFFERS];
static int g_nbuf;

static unsigned char pattern(int b, uint32_t gen, size_t off)
{
    uint64_t x = (uint64_t)b * 0x9E3779B97F4A7C15ull ^ (uint64_t)gen << 40 ^ off;
    x ^= x >> 29;
    return (unsigned char)(x * 0xBF58476D1CE4E5B9ull >> 56);
}

static void fill(int b, unsigned char *host)
{
    for (size_t j = 0; j < g_buf[b].bytes; j++)
        host[j] = pattern(b, g_buf[b].gen, j);
    CK(cuMemcpyHtoD(g_buf[b].ptr, host, g_buf[b].bytes));
}

static CUdeviceptr g_async;
static CUstream g_async_stream;

static int run_swap(int argc, char **argv)
{
    open_gpu();
    uint64_t seed = (uint64_t)arg_int(argc, argv, "seed", 1) * 0x9E3779B97F4A7C15ull + 7;
    g_nbuf = arg_int(argc, argv, "count", 10);
    if (g_nbuf > MAX_BUFFERS)
        g_nbuf = MAX_BUFFERS;
    unsigned char *host = malloc(16 * MiB);
    uint64_t total = 0;
    for (int i = 0; i < g_nbuf; i++) {
        g_buf[i].bytes = 2 * MiB + rnd(&seed) % (10 * MiB); /* swap mode rounds these up to 2 MiB */
        CK(cuMemAlloc(&g_buf[i].ptr, g_buf[i].bytes));
        fill(i, host);
        total += (g_buf[i].bytes + GRAN - 1) / GRAN * GRAN;
    }
    printf("READY %d %llu\n", g_nbuf, (unsigned long long)total);
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "verify") == 0) {
            int wrong = -1;
            for (int i = 0; i < g_nbuf && wrong < 0; i++) {
                memset(host, 0, g_buf[i].bytes);
                CK(cuMemcpyDtoH(host, g_buf[i].ptr, g_buf[i].bytes));
                for (size_t j = 0; j < g_buf[i].bytes; j++)
                    if (host[j] != pattern(i, g_buf[i].gen, j)) {
                        wrong = i;
                        break;
                    }
            }
            printf("VERIFIED %s %d\n", wrong < 0 ? "ok" : "bad", wrong < 0 ? g_nbuf : wrong);
        } else if (strncmp(line, "write ", 6) == 0) {
            /* new contents wherever the buffer lives now: the next move must carry them */
            int i = atoi(line + 6) % g_nbuf;
            g_buf[i].gen++;
            fill(i, host);
            printf("WRITTEN %d\n", i);
        } else if (strcmp(line, "free") == 0) {
            for (int i = 0; i < g_nbuf; i++)
                CK(cuMemFree(g_buf[i].ptr));
            g_nbuf = 0;
            printf("FREED\n");
        } else if (strncmp(line, "async ", 6) == 0) {
            /* stream-ordered pool memory beside the buffers: it stays on the GPU, they make room */
            if (!g_async_stream)
                CK(cuStreamCreate(&g_async_stream, CU_STREAM_NON_BLOCKING));
            CUresult r = cuMemAllocAsync(&g_async, (size_t)atoi(line + 6) * MiB, g_async_stream);
            if (r == CUDA_SUCCESS)
                r = cuStreamSynchronize(g_async_stream);
            if (r == CUDA_SUCCESS)
                r = cuMemsetD8(g_async, 0x5a, (size_t)atoi(line + 6) * MiB);
            printf("ASYNC %d\n", (int)r);
        } else if (strcmp(line, "asyncfree") == 0) {
            CK(cuMemFreeAsync(g_async, g_async_stream));
            CK(cuStreamSynchronize(g_async_stream));
            CUmemoryPool pool;
            CK(cuDeviceGetDefaultMemPool(&pool, g_dev));
            CK(cuMemPoolTrimTo(pool, 0));
            printf("ASYNCFREED\n");
        } else if (strcmp(line, "exit") == 0) {
            break;
        }
        fflush(stdout);
    }
    return 0;
}

int ipc_main(int argc, char **argv, CUcontext ctx, CUdevice dev);

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *s = argc > 1 ? argv[1] : "";
    g_gpu = arg_int(argc, argv, "gpu", 0);
    if (g_gpu < 0 || g_gpu >= GVM_MAX_GPUS) {
        fprintf(stderr, "FAIL gpu=%d\n", g_gpu);
        return 2;
    }
    if (strcmp(s, "random") == 0)
        return run_random(argc, argv);
    if (strcmp(s, "threads") == 0)
        return run_threads(argc, argv);
    if (strcmp(s, "limit") == 0)
        return run_limit();
    if (strcmp(s, "meminfo") == 0)
        return run_meminfo();
    if (strcmp(s, "swap") == 0)
        return run_swap(argc, argv);
    if (strncmp(s, "ipc-", 4) == 0) {
        open_gpu_for(0);
        return ipc_main(argc, argv, g_ctx, g_dev);
    }
    fprintf(stderr, "usage: %s random|threads|limit|meminfo|swap|ipc-export|ipc-import [key=value...]\n", argv[0]);
    return 2;
}
