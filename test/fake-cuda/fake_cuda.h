/* Internal header of the fake libcuda: shared state and helpers between the
 * per-area source files. Nothing here is exported (fake_cuda.map decides that). */
#ifndef GVM_FAKE_CUDA_H
#define GVM_FAKE_CUDA_H

/* NVIDIA builds libcuda with this defined: cuda.h then declares every versioned
 * name (cuMemAlloc and cuMemAlloc_v2, cuLaunchKernel and cuLaunchKernel_ptsz)
 * instead of redirecting old names to new ones, so both can be defined here. */
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define FAKE_MAX_DEVICES 16
#define FAKE_RM_CHANNELS_COMPUTE 8
#define FAKE_RM_COPY_TSGS 3
/* compute TSG + share + channels, then per copy TSG: TSG + share + channel */
#define FAKE_RM_CTX_OBJECTS (2 + FAKE_RM_CHANNELS_COMPUTE + 3 * FAKE_RM_COPY_TSGS)
#define FAKE_VMM_GRANULARITY ((size_t)2 << 20)

/* ---- call recording (fake_cuda_calls.c) ---- */
enum fake_sym {
#define FAKE_EXPORT(sym, base, api, intro, pt) FAKE_SYM_##sym,
#include "fake_symbols.inc"
#undef FAKE_EXPORT
    FAKE_SYM_COUNT
};
void fake_call_hit(enum fake_sym sym);
/* Every exported entry point opens a scope: while it is open the calling thread is "in the driver"
 * (fakeCudaInDriver), so a test can tell what the agent does on a path from what the driver does. */
int fake_scope_enter(enum fake_sym sym);
void fake_scope_leave(int *scope);
#define FAKE_ENTER(sym) \
    int fake_scope_ __attribute__((cleanup(fake_scope_leave), unused)) = fake_scope_enter(FAKE_SYM_##sym)
/* Failure injection: FAKE_CUDA_FAIL="cuMemSetAccess:4,cuMemcpyAsync:3" fails every 4th cuMemSetAccess
 * and every 3rd cuMemcpyAsync (counted from the call just recorded) with CUDA_ERROR_UNKNOWN. */
int fake_call_fails(enum fake_sym sym);
#define FAKE_MAY_FAIL(sym)                        \
    do {                                          \
        if (fake_call_fails(FAKE_SYM_##sym))      \
            return CUDA_ERROR_UNKNOWN;            \
    } while (0)

/* ---- devices (fake_cuda_device.c) ---- */
typedef struct {
    size_t total;
    atomic_size_t used;
    uint32_t hDevice;
    uint32_t hSubdevice;
    CUmemoryPool default_pool;
} fake_device_t;

extern int g_fake_device_count;
extern fake_device_t g_fake_devices[FAKE_MAX_DEVICES];
extern unsigned g_fake_kernel_us;
extern unsigned g_fake_copy_us;
/* FAKE_CUDA_MPS_CLIENT=1: like an MPS client, contexts run on channels this process does not own
 * (the MPS server's), so its RM client never allocates channel groups or channels */
extern int g_fake_mps_client;

int fake_initialized(void);
int fake_device_valid(CUdevice dev);
/* Reserve or return device memory in the accounting; 0 when it would not fit. */
int fake_device_charge(int dev, size_t bytes);
void fake_device_uncharge(int dev, size_t bytes);

#define FAKE_REQUIRE_INIT()                      \
    do {                                         \
        if (!fake_initialized())                 \
            return CUDA_ERROR_NOT_INITIALIZED;   \
    } while (0)

/* ---- contexts (fake_cuda_ctx.c) ---- */
struct CUctx_st {
    uint32_t magic;
    int device;
    unsigned flags;
    int primary;
    struct CUstream_st *default_stream;
    struct CUstream_st *streams; /* list of every stream, default included; g_sched */
    int live_workers;            /* worker threads still running; g_sched */
    uint32_t rm_handles[FAKE_RM_CTX_OBJECTS];
    uint32_t rm_parents[FAKE_RM_CTX_OBJECTS];
    int rm_count;
    uint32_t rm_compute_channels[FAKE_RM_CHANNELS_COMPUTE];
    uint32_t rm_copy_channels[FAKE_RM_COPY_TSGS];
};

int fake_ctx_valid(CUcontext ctx);
CUcontext fake_ctx_current(void);
/* The current context, or an error result for functions that need one. */
CUresult fake_ctx_require(CUcontext *out);

/* ---- RM traffic the real driver would cause (fake_cuda_rm.c) ---- */
void fake_rm_init_devices(void);
void fake_rm_ctx_create(CUcontext ctx);
void fake_rm_ctx_destroy(CUcontext ctx);
/* 1 when every channel of the context's compute TSG is disabled (frozen). */
int fake_rm_ctx_frozen(CUcontext ctx);
/* 1 when every channel of the context's copy TSGs is disabled: its copies and memsets wait. */
int fake_rm_ctx_copies_stopped(CUcontext ctx);
/* A copy or memset of a context runs between these: it starts only while the context's copy channels
 * run, and a stop (preempt with wait) answers only once it is done. Return/take a slot. */
int fake_data_op_begin(CUcontext ctx);
void fake_data_op_end(int slot);

/* ---- streams and the execution engine (fake_cuda_stream.c) ---- */
enum fake_op_kind {
    OP_KERNEL,
    OP_COPY,
    OP_HOSTFN,
    OP_EVENT_RECORD,
    OP_EVENT_WAIT,
    OP_POOL_FREE,
};

typedef struct fake_op {
    struct fake_op *next;
    enum fake_op_kind kind;
    union {
        struct { void *dst; const void *src; size_t n; } copy;
        struct { CUhostFn fn; void *data; } host;
        struct { struct CUevent_st *ev; uint64_t gen; } event;
        struct { CUdeviceptr ptr; } pool;
    } u;
} fake_op_t;

struct CUstream_st {
    uint32_t magic;
    CUcontext ctx;
    unsigned flags;
    int priority;
    struct CUstream_st *next_in_ctx;
    fake_op_t *head, *tail;
    uint64_t submitted, completed;
    int worker_started;
    int destroying; /* cuStreamDestroy: finish queued work, then free */
    int dying;      /* context teardown: drop queued work now */
    /* capture state: capture_graph and capture_invalid are atomic (other threads' work on the stream
     * or on the legacy stream invalidates the capture); the rest only the capturing thread touches */
    CUgraph capture_graph;
    int capture_invalid;
    CUgraphNode capture_last;
    cuuint64_t capture_id;
};

struct CUevent_st {
    uint32_t magic;
    unsigned flags;
    int refs;      /* queued ops that still point here; g_sched */
    int destroyed; /* freed when refs drops to 0; g_sched */
    uint64_t recorded_gen, done_gen;
    struct timespec stamp;
    int stamped;
};

extern pthread_mutex_t g_sched;
/* Exported test helper: while held, no stream starts another operation. */
int fakeCudaHoldGpu(int hold);
extern pthread_cond_t g_sched_cv;

/* Resolves NULL / CU_STREAM_LEGACY / CU_STREAM_PER_THREAD to the current
 * context's default stream and checks real handles. */
CUresult fake_stream_resolve(CUstream h, CUstream *out);
/* Queues op (taking ownership) on s and wakes its worker. */
void fake_stream_enqueue(CUstream s, fake_op_t *op);
fake_op_t *fake_op_new(enum fake_op_kind kind);
CUstream fake_stream_new(CUcontext ctx, unsigned flags, int priority);
void fake_stream_wait_idle(CUstream s);
/* Stops every worker of ctx and frees its streams (context teardown). */
void fake_ctx_streams_teardown(CUcontext ctx);
void fake_ctx_wait_idle(CUcontext ctx);
/* Wakes workers after the hold gate or a channel's state changed. */
void fake_sched_kick(void);
void fake_event_op_done(struct CUevent_st *ev, uint64_t gen);
void fake_event_unref_locked(struct CUevent_st *ev);

/* ---- memory registry (fake_cuda_memory.c) ---- */
enum fake_mem_kind { MEM_DEVICE, MEM_MANAGED, MEM_HOST, MEM_REGISTERED, MEM_POOL };

typedef struct {
    uintptr_t base;
    size_t size;     /* what the caller asked for */
    size_t mapped;   /* what was mmapped (page rounded), 0 for registered */
    enum fake_mem_kind kind;
    int device;
    CUcontext ctx;
    CUmemoryPool pool; /* MEM_POOL only */
    int pool_free;     /* MEM_POOL: 1 while the chunk sits unused in its pool */
} fake_block_t;

extern pthread_mutex_t g_mem;
void *fake_map_anon(size_t bytes);
/* Registry calls: caller holds g_mem. */
int fake_mem_insert(const fake_block_t *b);
fake_block_t *fake_mem_find(uintptr_t addr);
void fake_mem_remove(uintptr_t base);
void fake_mem_drop_ctx(CUcontext ctx);
/* First unused chunk of pool holding at least min_size bytes, or NULL. */
fake_block_t *fake_mem_free_chunk(CUmemoryPool pool, size_t min_size);

/* ---- stream-ordered pools (fake_cuda_pool.c) ---- */
CUmemoryPool fake_pool_default(int dev);
/* Returns a chunk to its pool when the stream reaches the free. */
void fake_pool_free_now(CUdeviceptr ptr);
/* Releases free memory above each pool's threshold, like a sync point does. */
void fake_pools_trim_device(int dev);

/* ---- VMM (fake_cuda_vmm.c) ---- */
/* Finds the VMM mapping containing addr; 0 when none. Caller holds g_mem. */
int fake_vmm_range(uintptr_t addr, uintptr_t *base, size_t *size);

/* ---- graphs (fake_cuda_graph.c) ---- */
CUresult fake_graph_new(CUgraph *out);
void fake_graph_release(CUgraph g);
/* Before asynchronous work a capture does not take (all but kernels, which the launch path captures
 * itself) lands on stream s: 0 to go on, or the error to return. As the driver does, such work on a
 * capturing stream is refused and invalidates the capture, and work on the legacy stream while a
 * blocking stream of its context captures (an implicit dependency) answers
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT and invalidates that capture: the capture's end then answers
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. */
CUresult fake_capture_check(CUstream s);
/* The graph a capture on s is building, or NULL. */
CUgraph fake_capture_graph(CUstream s);
/* Appends a kernel node that depends on *last (if any) and updates *last. */
CUresult fake_graph_append_kernel(CUgraph g, CUfunction f, CUgraphNode *last);

/* ---- functions (fake_cuda_module.c) ---- */
int fake_function_valid(CUfunction f);

/* ---- kernels (fake_cuda_launch.c) ---- */
CUresult fake_launch(CUfunction f, CUstream h);

#endif
