/* The one scenario program behind gvm-prog-direct/-dlsym/-procaddr. The binders
 * differ only in how they fill the cu_api_t table.
 *
 * Protocol: argv = scenario [key=value...]; after the work, one line
 * `READY {json}` on stdout; then stdin commands free | sync | release | exit
 * (EOF = exit). See README.md for the JSON fields. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include "scenario.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)
#define MAX_GPUS 16
#define THREADS 8

typedef enum { A_DEVICE, A_MANAGED, A_HOST, A_ASYNC, A_VMM } alloc_kind_t;

typedef struct {
    alloc_kind_t kind;
    int gpu;
    CUdeviceptr ptr;
    void *host;
    size_t bytes;  /* what READY counts */
    size_t vasize; /* VMM: reserved and mapped size */
    CUmemGenericAllocationHandle handle;
    CUstream stream; /* A_ASYNC: where to free */
} alloc_t;

typedef struct {
    unsigned long long deviceBytes, managedBytes, hostBytes, kernels;
    int used;
} gpu_stats_t;

static cu_api_t api;
static cu_binder_t g_bind;
static int g_bound;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static gpu_stats_t g_stats[MAX_GPUS];
static alloc_t *g_allocs;
static size_t g_nallocs, g_capallocs;
static CUcontext g_ctx[MAX_GPUS];
static CUmemoryPool g_pools[MAX_GPUS];
static int g_cur; /* the GPU the stdin commands act on: the last one opened, or `gpu N` */
static const char *g_role; /* fork-before: "parent" or "child" */

static void check(const char *call, CUresult r)
{
    if (r == CUDA_SUCCESS)
        return;
    fprintf(stderr, "FAIL %s %d\n", call, (int)r);
    exit(1);
}
#define CK(fn, ...) check(#fn, api.fn(__VA_ARGS__))

static void bind_driver(void)
{
    if (g_bound)
        return;
    if (g_bind(&api) != 0) {
        fprintf(stderr, "FAIL bind -1\n");
        exit(1);
    }
    g_bound = 1;
}

static void record(const alloc_t *a)
{
    pthread_mutex_lock(&g_lock);
    if (g_nallocs == g_capallocs) {
        g_capallocs = g_capallocs ? 2 * g_capallocs : 64;
        g_allocs = realloc(g_allocs, g_capallocs * sizeof *g_allocs);
        if (!g_allocs) {
            fprintf(stderr, "FAIL realloc 0\n");
            exit(1);
        }
    }
    g_allocs[g_nallocs++] = *a;
    gpu_stats_t *s = &g_stats[a->gpu];
    s->used = 1;
    if (a->kind == A_MANAGED)
        s->managedBytes += a->bytes;
    else if (a->kind == A_HOST)
        s->hostBytes += a->bytes;
    else
        s->deviceBytes += a->bytes;
    pthread_mutex_unlock(&g_lock);
}

static void count_kernels(int gpu, unsigned long long n)
{
    pthread_mutex_lock(&g_lock);
    g_stats[gpu].used = 1;
    g_stats[gpu].kernels += n;
    pthread_mutex_unlock(&g_lock);
}

static void print_state(const char *tag)
{
    pthread_mutex_lock(&g_lock);
    printf("%s {\"pid\":%d,", tag, (int)getpid());
    if (g_role)
        printf("\"role\":\"%s\",", g_role);
    printf("\"gpus\":{");
    int first = 1;
    for (int i = 0; i < MAX_GPUS; i++) {
        gpu_stats_t *s = &g_stats[i];
        if (!s->used)
            continue;
        printf("%s\"%d\":{\"deviceBytes\":%llu,\"managedBytes\":%llu,\"hostBytes\":%llu,\"kernels\":%llu}",
               first ? "" : ",", i, s->deviceBytes, s->managedBytes, s->hostBytes, s->kernels);
        first = 0;
    }
    printf("}}\n");
    pthread_mutex_unlock(&g_lock);
}

/* ---- building blocks ---- */

static CUcontext open_gpu(int gpu)
{
    if (g_ctx[gpu]) {
        CK(ctxSetCurrent, g_ctx[gpu]);
        g_cur = gpu;
        return g_ctx[gpu];
    }
    CUdevice dev;
    CK(init, 0);
    CK(deviceGet, &dev, gpu);
    CK(primaryRetain, &g_ctx[gpu], dev);
    CK(ctxSetCurrent, g_ctx[gpu]);
    g_stats[gpu].used = 1;
    g_cur = gpu;
    return g_ctx[gpu];
}

static CUfunction load_kernel(void)
{
    static const char image[] = "fake fatbin: the fake driver accepts any image";
    CUmodule mod;
    CUfunction f;
    CK(moduleLoadData, &mod, image);
    CK(moduleGetFunction, &f, mod, "gvm_test_kernel");
    return f;
}

static void launch(PFN_cuLaunchKernel_v4000 fn, const char *name, CUfunction f, CUstream s, int n)
{
    for (int i = 0; i < n; i++)
        check(name, fn(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
}

static void alloc_device(int gpu, size_t bytes)
{
    alloc_t a = {.kind = A_DEVICE, .gpu = gpu, .bytes = bytes};
    CK(memAlloc, &a.ptr, bytes);
    record(&a);
}

static void alloc_vmm(int gpu, size_t bytes)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = gpu}};
    size_t gran;
    CK(memGetAllocationGranularity, &gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    alloc_t a = {.kind = A_VMM, .gpu = gpu, .bytes = bytes, .vasize = (bytes + gran - 1) / gran * gran};
    CK(memAddressReserve, &a.ptr, a.vasize, 0, 0, 0);
    CK(memCreate, &a.handle, a.vasize, &prop, 0);
    CK(memMap, a.ptr, a.vasize, 0, a.handle, 0);
    CUmemAccessDesc access = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CK(memSetAccess, a.ptr, a.vasize, &access, 1);
    record(&a);
}

/* Round-trips a few bytes so a broken mapping or copy fails the scenario. */
static void verify_copy(CUdeviceptr dst)
{
    char out[16] = "gvm-fake-check!", back[16] = {0};
    CK(memcpyHtoD, dst, out, sizeof out);
    CK(memcpyDtoH, back, dst, sizeof back);
    if (memcmp(out, back, sizeof out) != 0) {
        fprintf(stderr, "FAIL verify_copy 0\n");
        exit(1);
    }
}

/* ---- scenarios ---- */

static void run_basic(int kernels, int hold)
{
    const int gpu = 0;
    CUcontext ctx = open_gpu(gpu);
    for (int i = 0; i < 3; i++)
        alloc_device(gpu, MiB);
    verify_copy(g_allocs[0].ptr);

    alloc_t pitch = {.kind = A_DEVICE, .gpu = gpu};
    size_t pitch_bytes;
    CK(memAllocPitch, &pitch.ptr, &pitch_bytes, 1000, 100, 4);
    pitch.bytes = pitch_bytes * 100;
    record(&pitch);

    alloc_t managed = {.kind = A_MANAGED, .gpu = gpu, .bytes = 4 * MiB};
    CK(memAllocManaged, &managed.ptr, managed.bytes, CU_MEM_ATTACH_GLOBAL);
    record(&managed);

    alloc_t host = {.kind = A_HOST, .gpu = gpu, .bytes = MiB};
    CK(memAllocHost, &host.host, host.bytes);
    record(&host);

    CUstream stream;
    CK(streamCreate, &stream, CU_STREAM_NON_BLOCKING);
    alloc_t async = {.kind = A_ASYNC, .gpu = gpu, .bytes = 3 * MiB, .stream = stream};
    CK(memAllocAsync, &async.ptr, async.bytes, stream);
    record(&async);

    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = gpu}};
    CK(memPoolCreate, &g_pools[gpu], &props);
    alloc_t pooled = {.kind = A_ASYNC, .gpu = gpu, .bytes = 5 * MiB, .stream = stream};
    CK(memAllocFromPoolAsync, &pooled.ptr, pooled.bytes, g_pools[gpu], stream);
    record(&pooled);

    alloc_vmm(gpu, 4 * MiB);
    verify_copy(g_allocs[g_nallocs - 1].ptr);

    if (hold) {
        if (!api.holdGpu) {
            fprintf(stderr, "FAIL fakeCudaHoldGpu 0\n");
            exit(1);
        }
        api.holdGpu(1);
    }
    CUfunction f = load_kernel();
    launch(api.launchKernel, "launchKernel", f, stream, kernels);
    launch(api.launchKernelDefault, "launchKernelDefault", f, NULL, 10);

    CUgraph graph;
    CUgraphExec exec;
    CK(streamBeginCapture, stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
    launch(api.launchKernel, "launchKernel", f, stream, 5);
    CK(streamEndCapture, stream, &graph);
    CK(graphInstantiate, &exec, graph, 0);
    for (int i = 0; i < 3; i++)
        CK(graphLaunch, exec, stream);
    count_kernels(gpu, (unsigned long long)kernels + 10 + 3 * 5);
    CK(graphExecDestroy, exec);
    CK(graphDestroy, graph);
    if (!hold)
        CK(ctxSynchronize, ctx);
}

typedef struct {
    int index;
    CUcontext ctx;
    CUfunction f;
} thread_arg_t;

static void *thread_main(void *p)
{
    thread_arg_t *t = p;
    unsigned seed = 1234u + (unsigned)t->index;
    CUstream s;
    CUdeviceptr ptrs[50];
    size_t sizes[50];
    int order[50];
    CK(ctxSetCurrent, t->ctx);
    CK(streamCreate, &s, CU_STREAM_NON_BLOCKING);
    for (int i = 0; i < 50; i++) {
        sizes[i] = MiB + (size_t)rand_r(&seed) % (3 * MiB + 1);
        CK(memAlloc, &ptrs[i], sizes[i]);
        order[i] = i;
    }
    for (int i = 49; i > 0; i--) { /* Fisher-Yates: free in a random order */
        int j = rand_r(&seed) % (i + 1), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    for (int k = 0; k < 50; k++) {
        int i = order[k];
        if (i % 5 == 4) { /* every 5th allocation stays alive */
            alloc_t a = {.kind = A_DEVICE, .gpu = 0, .ptr = ptrs[i], .bytes = sizes[i]};
            record(&a);
        } else {
            CK(memFree, ptrs[i]);
        }
    }
    launch(api.launchKernel, "launchKernel", t->f, s, 200);
    count_kernels(0, 200);
    CK(streamSynchronize, s);
    CK(streamDestroy, s);
    return NULL;
}

static void run_threads(void)
{
    thread_arg_t args[THREADS];
    pthread_t tids[THREADS];
    CUcontext ctx = open_gpu(0);
    CUfunction f = load_kernel();
    for (int i = 0; i < THREADS; i++) {
        args[i] = (thread_arg_t){i, ctx, f};
        if (pthread_create(&tids[i], NULL, thread_main, &args[i]) != 0) {
            fprintf(stderr, "FAIL pthread_create 0\n");
            exit(1);
        }
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);
    CK(ctxSynchronize, ctx);
}

static void run_multigpu(void)
{
    static const struct { int gpu; size_t bytes; int kernels; } plan[] = {{0, 8 * MiB, 20}, {1, 16 * MiB, 30}};
    for (size_t i = 0; i < 2; i++) {
        CUcontext ctx = open_gpu(plan[i].gpu); /* also makes it current */
        CUstream s;
        alloc_device(plan[i].gpu, plan[i].bytes);
        CK(streamCreate, &s, CU_STREAM_NON_BLOCKING);
        launch(api.launchKernel, "launchKernel", load_kernel(), s, plan[i].kernels);
        count_kernels(plan[i].gpu, (unsigned long long)plan[i].kernels);
        CK(ctxSynchronize, ctx);
    }
}

/* "gpus": every GPU of n opened (only=G: that one alone, as a one-GPU rank of a multi-GPU job
 * does), each with its own amount of memory and work, so a number that lands on the wrong GPU
 * shows: GPU g holds 2(g+1) MiB and ran 10(g+1) kernels. The lowest one opened is current. */
static void run_gpus(int n, int only)
{
    int first = -1;
    for (int g = 0; g < n && g < MAX_GPUS; g++) {
        if (only >= 0 && g != only)
            continue;
        if (first < 0)
            first = g;
        CUcontext ctx = open_gpu(g);
        CUstream s;
        alloc_device(g, (size_t)(g + 1) * 2 * MiB);
        CK(streamCreate, &s, CU_STREAM_NON_BLOCKING);
        launch(api.launchKernel, "launchKernel", load_kernel(), s, 10 * (g + 1));
        count_kernels(g, 10ull * (unsigned long long)(g + 1));
        CK(ctxSynchronize, ctx);
        CK(streamDestroy, s);
    }
    if (first >= 0)
        open_gpu(first);
}

/* ---- "buffers": device buffers with known contents, to check that no byte is lost when gvm
 * places or moves their physical memory (swap mode); each on the GPU that was current ---- */
#define MAX_BUFFERS 64
static struct {
    CUdeviceptr ptr;
    size_t bytes;
} g_buffers[MAX_BUFFERS];
static size_t g_nbuffers;

static unsigned char pattern(size_t buffer, size_t offset) { return (unsigned char)(buffer * 131u + offset * 7u + 1u); }

/* count buffers of mib MiB on the current GPU (g_cur) */
static void add_buffers(int count, int mib)
{
    size_t bytes = (size_t)mib * MiB;
    unsigned char *host = malloc(bytes ? bytes : 1);
    if (!host) {
        fprintf(stderr, "FAIL malloc 0\n");
        exit(1);
    }
    for (int i = 0; i < count && g_nbuffers < MAX_BUFFERS; i++) {
        alloc_t a = {.kind = A_DEVICE, .gpu = g_cur, .bytes = bytes};
        CK(memAlloc, &a.ptr, bytes);
        for (size_t j = 0; j < bytes; j++)
            host[j] = pattern(g_nbuffers, j);
        CK(memcpyHtoD, a.ptr, host, bytes);
        record(&a);
        g_buffers[g_nbuffers].ptr = a.ptr;
        g_buffers[g_nbuffers++].bytes = bytes;
    }
    free(host);
}

static void run_buffers(int count, int mib)
{
    open_gpu(0);
    add_buffers(count, mib);
}

static int verify_buffers(void)
{
    int bad = -1;
    for (size_t i = 0; i < g_nbuffers && bad < 0; i++) {
        unsigned char *host = malloc(g_buffers[i].bytes ? g_buffers[i].bytes : 1);
        if (!host)
            return (int)i;
        CK(memcpyDtoH, host, g_buffers[i].ptr, g_buffers[i].bytes);
        for (size_t j = 0; j < g_buffers[i].bytes; j++)
            if (host[j] != pattern(i, j)) {
                bad = (int)i;
                break;
            }
        free(host);
    }
    return bad;
}

/* ---- commands ---- */

static void sync_all(void)
{
    for (int i = 0; i < MAX_GPUS; i++)
        if (g_ctx[i])
            CK(ctxSynchronize, g_ctx[i]);
}

static void free_all(void)
{
    sync_all();
    for (size_t i = 0; i < g_nallocs; i++) {
        alloc_t *a = &g_allocs[i];
        CK(ctxSetCurrent, g_ctx[a->gpu]);
        switch (a->kind) {
        case A_DEVICE:
        case A_MANAGED: CK(memFree, a->ptr); break;
        case A_HOST: CK(memFreeHost, a->host); break;
        case A_ASYNC:
            CK(memFreeAsync, a->ptr, a->stream);
            CK(streamSynchronize, a->stream);
            break;
        case A_VMM:
            CK(memUnmap, a->ptr, a->vasize);
            CK(memRelease, a->handle);
            CK(memAddressFree, a->ptr, a->vasize);
            break;
        }
        gpu_stats_t *s = &g_stats[a->gpu];
        if (a->kind == A_MANAGED)
            s->managedBytes -= a->bytes;
        else if (a->kind == A_HOST)
            s->hostBytes -= a->bytes;
        else
            s->deviceBytes -= a->bytes;
    }
    g_nallocs = 0;
    g_nbuffers = 0;
    for (int i = 0; i < MAX_GPUS; i++) {
        if (g_pools[i]) {
            CK(ctxSetCurrent, g_ctx[i]);
            CK(memPoolDestroy, g_pools[i]);
            g_pools[i] = NULL;
        }
    }
    if (g_ctx[g_cur]) /* later commands still act on the GPU they chose */
        CK(ctxSetCurrent, g_ctx[g_cur]);
}

static CUfunction g_launch_fn[MAX_GPUS]; /* `launch`: each GPU's context loads its own module */

static void command_loop(void)
{
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strcmp(line, "free") == 0) {
            if (g_bound)
                free_all();
            print_state("FREED");
        } else if (strcmp(line, "sync") == 0) {
            if (g_bound)
                sync_all();
            printf("SYNCED\n");
        } else if (strcmp(line, "verify") == 0) {
            int bad = verify_buffers();
            if (bad < 0)
                printf("VERIFIED ok %zu\n", g_nbuffers);
            else
                printf("VERIFIED bad %d\n", bad);
        } else if (strcmp(line, "meminfo") == 0) {
            /* what the process sees as its GPU's size: gvm reports the limit as the total */
            size_t free_bytes = 0, total = 0;
            CUresult r = g_bound ? api.memGetInfo(&free_bytes, &total) : CUDA_ERROR_NOT_INITIALIZED;
            printf("MEMINFO %d %zu %zu\n", (int)r, free_bytes, total);
        } else if (strcmp(line, "release") == 0) {
            if (g_bound && api.holdGpu)
                api.holdGpu(0);
            printf("RELEASED\n");
        } else if (strncmp(line, "launch ", 7) == 0) {
            /* a burst on the current GPU's default stream (each kernel runs FAKE_CUDA_KERNEL_US); a
             * function belongs to its context's module, so each GPU loads its own */
            if (g_bound && !g_launch_fn[g_cur])
                g_launch_fn[g_cur] = load_kernel();
            int n = atoi(line + 7);
            if (g_bound) {
                launch(api.launchKernelDefault, "launchKernelDefault", g_launch_fn[g_cur], NULL, n);
                count_kernels(g_cur, (unsigned long long)n);
            }
            printf("LAUNCHED %d\n", n);
        } else if (strncmp(line, "alloc ", 6) == 0) {
            /* one device allocation of N MiB that may fail: prints the driver's (or gvm's) result */
            CUdeviceptr p = 0;
            size_t bytes = (size_t)atoi(line + 6) * MiB;
            CUresult r = g_bound ? api.memAlloc(&p, bytes) : CUDA_ERROR_NOT_INITIALIZED;
            if (r == CUDA_SUCCESS) {
                alloc_t a = {.kind = A_DEVICE, .gpu = g_cur, .bytes = bytes, .ptr = p};
                record(&a);
            }
            printf("ALLOC %d\n", (int)r);
        } else if (strcmp(line, "hold") == 0) {
            if (g_bound && api.holdGpu)
                api.holdGpu(1);
            printf("HELD\n");
        } else if (strncmp(line, "rmcount ", 8) == 0) {
            /* RM controls this process issued (fake RM), e.g. rmcount 0x20801114 */
            unsigned long (*count)(unsigned) = (unsigned long (*)(unsigned))dlsym(RTLD_DEFAULT, "fakeRmControlCount");
            unsigned cmd = (unsigned)strtoul(line + 8, NULL, 16);
            printf("RMCOUNT %lu\n", count ? count(cmd) : 0ul);
        } else if (strncmp(line, "gpu ", 4) == 0) {
            /* later commands act on GPU N (its primary context, opened if it was not) */
            int g = atoi(line + 4);
            if (g_bound && g >= 0 && g < MAX_GPUS) {
                open_gpu(g);
                printf("GPU %d\n", g);
            } else {
                printf("ERROR gpu %s\n", line + 4);
            }
        } else if (strcmp(line, "gsync") == 0) {
            /* the current GPU only: returns while another GPU is frozen or held */
            if (g_bound && g_ctx[g_cur])
                CK(ctxSynchronize, g_ctx[g_cur]);
            printf("GSYNCED %d\n", g_cur);
        } else if (strncmp(line, "buffers ", 8) == 0) {
            /* buffers COUNT MIB on the current GPU, filled with their patterns */
            int count = 0, mib = 0;
            if (g_bound && sscanf(line + 8, "%d %d", &count, &mib) == 2)
                add_buffers(count, mib);
            printf("BUFFERS %zu\n", g_nbuffers);
        } else if (strcmp(line, "newctx") == 0) {
            /* an explicit context on the current GPU: the driver allocates new channel groups and
             * channels for it, which must inherit that GPU's settings (and only that GPU's) */
            CUcontext c = NULL;
            CUdevice dev;
            CUresult r = g_bound ? api.deviceGet(&dev, g_cur) : CUDA_ERROR_NOT_INITIALIZED;
            if (r == CUDA_SUCCESS)
                r = api.ctxCreate(&c, NULL, 0, dev);
            if (r == CUDA_SUCCESS)
                CK(ctxSetCurrent, g_ctx[g_cur]);
            printf("NEWCTX %d %d\n", (int)r, g_cur);
        } else if (strcmp(line, "reset") == 0) {
            /* cuDevicePrimaryCtxReset of the current GPU: the driver frees its memory and channels;
             * the program forgets that GPU's allocations (`gpu N` opens it again) */
            CUdevice dev;
            CUresult r = g_bound ? api.deviceGet(&dev, g_cur) : CUDA_ERROR_NOT_INITIALIZED;
            if (r == CUDA_SUCCESS)
                r = api.primaryReset(dev);
            if (r == CUDA_SUCCESS) {
                size_t kept = 0;
                for (size_t i = 0; i < g_nallocs; i++)
                    if (g_allocs[i].gpu != g_cur)
                        g_allocs[kept++] = g_allocs[i];
                g_nallocs = kept;
                g_stats[g_cur].deviceBytes = g_stats[g_cur].managedBytes = g_stats[g_cur].hostBytes = 0;
                g_ctx[g_cur] = NULL;
                g_pools[g_cur] = NULL;
                g_launch_fn[g_cur] = NULL;
            }
            printf("RESET %d %d\n", (int)r, g_cur);
        } else if (strncmp(line, "chan ", 5) == 0 || strncmp(line, "timeslice ", 10) == 0) {
            /* the fake RM's own state of an object: a channel's disabled flag, a TSG's timeslice */
            int is_chan = line[0] == 'c';
            unsigned h = (unsigned)strtoul(line + (is_chan ? 5 : 10), NULL, 0);
            void *fn = dlsym(RTLD_DEFAULT, is_chan ? "fakeRmChannelDisabled" : "fakeRmTimeslice");
            long v = !fn ? -2 : is_chan ? (long)((int (*)(unsigned))fn)(h) : (long)((unsigned (*)(unsigned))fn)(h);
            printf("%s %#x %ld\n", is_chan ? "CHAN" : "TIMESLICE", h, v);
        } else if (strcmp(line, "exit") == 0) {
            break;
        } else if (line[0]) {
            printf("ERROR unknown command %s\n", line);
        }
    }
}

static int arg_int(int argc, char **argv, const char *key, int fallback)
{
    size_t n = strlen(key);
    for (int i = 2; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=')
            return atoi(argv[i] + n + 1);
    return fallback;
}

static int fork_before(int kernels)
{
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return 1;
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        /* The child lives until the parent goes away (pipe EOF), without reading stdin. */
        close(pipefd[1]);
        g_role = "child";
        bind_driver();
        run_basic(kernels, 0);
        print_state("READY");
        char c;
        while (read(pipefd[0], &c, 1) > 0) {
        }
        exit(0);
    }
    close(pipefd[0]);
    g_role = "parent";
    bind_driver();
    run_basic(kernels, 0);
    print_state("READY");
    command_loop();
    close(pipefd[1]);
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

static int fork_after(int kernels)
{
    bind_driver();
    run_basic(kernels, 0);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        exit(0); /* exit, not _exit: atexit handlers run, as in a real forked worker */
    }
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "FAIL fork-child %d\n", status);
        return 1;
    }
    print_state("READY");
    command_loop();
    return 0;
}

int scenario_main(int argc, char **argv, cu_binder_t bind)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_bind = bind;
    if (argc < 2) {
        fprintf(stderr, "usage: %s basic|threads|hold|fork-before|fork-after|exit-early|nocuda|multigpu|gpus|buffers "
                        "[kernels=N] [count=N mib=N] [n=GPUS only=GPU]\n", argv[0]);
        return 2;
    }
    const char *name = argv[1];
    int kernels = arg_int(argc, argv, "kernels", 100);
    if (strcmp(name, "fork-before") == 0)
        return fork_before(kernels);
    if (strcmp(name, "fork-after") == 0)
        return fork_after(kernels);
    if (strcmp(name, "nocuda") != 0)
        bind_driver();
    if (strcmp(name, "basic") == 0) {
        run_basic(kernels, 0);
    } else if (strcmp(name, "hold") == 0) {
        run_basic(kernels, 1);
    } else if (strcmp(name, "threads") == 0) {
        run_threads();
    } else if (strcmp(name, "multigpu") == 0) {
        run_multigpu();
    } else if (strcmp(name, "gpus") == 0) {
        int only = arg_int(argc, argv, "only", -1);
        run_gpus(only >= 0 ? only + 1 : arg_int(argc, argv, "n", 2), only);
    } else if (strcmp(name, "buffers") == 0) {
        run_buffers(arg_int(argc, argv, "count", 6), arg_int(argc, argv, "mib", 4));
    } else if (strcmp(name, "exit-early") == 0) {
        open_gpu(0);
        alloc_device(0, MiB);
        print_state("READY");
        exit(0);
    } else if (strcmp(name, "nocuda") != 0) {
        fprintf(stderr, "unknown scenario %s\n", name);
        return 2;
    }
    print_state("READY");
    command_loop();
    return 0;
}
