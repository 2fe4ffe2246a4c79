/* gvm-hot-path: checks the design rule "launch paths take no lock, allocate nothing and make no
 * system call" on the agent itself, for every launch entry point, as a program under the agent on
 * the fake driver (test/hot-path.test.ts).
 *
 * How it tells the agent's work from the driver's: every entry point of the fake libcuda marks the
 * calling thread as "in the driver" while it runs (fakeCudaInDriver), so whatever happens on a
 * launching thread outside the driver is the agent's (or this loop's, which calls nothing else).
 *  - system calls: each measuring thread installs a seccomp filter (that thread only) that traps
 *    every system call; the SIGSYS handler records the ones made outside the driver and then makes
 *    the call itself from one instruction the filter lets through, so the program runs on unchanged;
 *  - locks and allocations: this executable defines pthread_mutex_lock, malloc and their kin
 *    (exported, so the agent binds to them) and records the callers outside the driver.
 *
 * Usage: gvm-hot-path [iterations=N] [threads=N] [hold] [gap-every=N] [selftest]
 *   hold      keep the GPU busy while measuring (fakeCudaHoldGpu): a latency-class process stays in
 *             one burst, as under a steady stream of work
 *   gap-every=N  after every N launches a thread waits for the GPU and pauses 20 ms (not measured), so
 *             a latency-class process goes idle and its next launch opens a burst: the one launch
 *             that signals the transition (a futex wake) is allowed its system calls
 *   selftest  one more "launch" kind that makes a system call, a lock and an allocation itself:
 *             proves the detectors see them
 * Lines: `launches N failed N`, `expected-kernels N`, `submitted N`, `bursts-during N`,
 * `syscalls N` (or `syscalls unchecked: <why>`), `syscall nr=N count=N`, `locks N`, `allocs N`,
 * `caller <what> <library>+<offset>`, then `DONE`. Exit 1 on a setup failure only: the test judges.
 * x86_64 only (the system call trampoline is x86_64 assembly). */
#define _GNU_SOURCE
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "gvm/control_block.h"
#include "gvm/self_command.h"
#include "prog_check.h"

#if !defined(__x86_64__)
#error "gvm-hot-path traps system calls with x86_64 assembly"
#endif

int fakeCudaInDriver(void);
int fakeCudaHoldGpu(int hold);

/* ---- what was caught ---- */
enum what { W_SYSCALL, W_LOCK, W_ALLOC, W_KINDS };
static const char *const what_name[W_KINDS] = {"syscall", "lock", "alloc"};
#define CALLERS 64
static _Atomic unsigned long caught[W_KINDS];
static _Atomic unsigned long syscall_count[512];
static struct {
    _Atomic(uintptr_t) addr;
    _Atomic int what;
} callers[CALLERS];

static _Thread_local int t_measuring;
static _Thread_local int t_in_handler;

static int agents_doing(void) { return t_measuring && !t_in_handler && fakeCudaInDriver() == 0; }

static void remember(enum what w, uintptr_t addr)
{
    atomic_fetch_add(&caught[w], 1);
    for (int i = 0; i < CALLERS; i++) {
        uintptr_t expected = 0;
        if (atomic_load(&callers[i].addr) == addr && atomic_load(&callers[i].what) == (int)w)
            return;
        if (atomic_compare_exchange_strong(&callers[i].addr, &expected, addr)) {
            atomic_store(&callers[i].what, (int)w);
            return;
        }
    }
}

/* ---- locks and allocations: this executable's definitions come first in symbol lookup ---- */
#define INTERPOSE_LOCK(name, type)                                         \
    int name(type *p)                                                      \
    {                                                                      \
        static int (*real)(type *);                                        \
        if (agents_doing())                                                \
            remember(W_LOCK, (uintptr_t)__builtin_return_address(0));      \
        if (!real)                                                         \
            *(void **)&real = dlsym(RTLD_NEXT, #name);                     \
        return real(p);                                                    \
    }
INTERPOSE_LOCK(pthread_mutex_lock, pthread_mutex_t)
INTERPOSE_LOCK(pthread_mutex_trylock, pthread_mutex_t)
INTERPOSE_LOCK(pthread_rwlock_rdlock, pthread_rwlock_t)
INTERPOSE_LOCK(pthread_rwlock_wrlock, pthread_rwlock_t)
INTERPOSE_LOCK(pthread_spin_lock, pthread_spinlock_t)
INTERPOSE_LOCK(sem_wait, sem_t)

/* glibc's own entry points behind malloc and kin (exported for exactly this use) */
void *__libc_malloc(size_t);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void __libc_free(void *);

#define NOTE_ALLOC()                                                   \
    do {                                                               \
        if (agents_doing())                                            \
            remember(W_ALLOC, (uintptr_t)__builtin_return_address(0)); \
    } while (0)
void *malloc(size_t n)
{
    NOTE_ALLOC();
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t m)
{
    NOTE_ALLOC();
    return __libc_calloc(n, m);
}
void *realloc(void *p, size_t n)
{
    NOTE_ALLOC();
    return __libc_realloc(p, n);
}
void *memalign(size_t a, size_t n)
{
    NOTE_ALLOC();
    return __libc_memalign(a, n);
}
void *aligned_alloc(size_t a, size_t n)
{
    NOTE_ALLOC();
    return __libc_memalign(a, n);
}
int posix_memalign(void **out, size_t a, size_t n)
{
    NOTE_ALLOC();
    void *p = __libc_memalign(a, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}
void free(void *p)
{
    NOTE_ALLOC();
    __libc_free(p);
}

/* ---- system calls: a seccomp trap, and one instruction allowed to make them for real ---- */
long hp_raw_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
extern const char hp_syscall_return[];
__asm__(".text\n"
        ".globl hp_raw_syscall\n"
        ".type hp_raw_syscall,@function\n"
        "hp_raw_syscall:\n"
        "  movq %rdi, %rax\n"
        "  movq %rsi, %rdi\n"
        "  movq %rdx, %rsi\n"
        "  movq %rcx, %rdx\n"
        "  movq %r8, %r10\n"
        "  movq %r9, %r8\n"
        "  movq 8(%rsp), %r9\n"
        "  syscall\n"
        ".globl hp_syscall_return\n"
        "hp_syscall_return:\n"
        "  ret\n"
        ".size hp_raw_syscall, .-hp_raw_syscall\n");

static void on_sigsys(int sig, siginfo_t *si, void *uc_)
{
    (void)sig;
    ucontext_t *uc = uc_;
    greg_t *g = uc->uc_mcontext.gregs;
    long nr = si->si_syscall;
    t_in_handler = 1;
    if (t_measuring && fakeCudaInDriver() == 0) {
        atomic_fetch_add(&syscall_count[nr >= 0 && nr < 512 ? nr : 511], 1);
        /* libc's system call wrappers are leaves: the word on top of the stack is their caller */
        remember(W_SYSCALL, *(const uintptr_t *)g[REG_RSP]);
    }
    if (nr == SYS_rt_sigprocmask) {
        /* made here it would change the handler's mask, which sigreturn then replaces: change the
         * mask the thread returns to instead (the kernel's 64-bit set) */
        uint64_t *mask = (uint64_t *)&uc->uc_sigmask;
        uint64_t old = *mask;
        const uint64_t *set = (const uint64_t *)g[REG_RSI];
        if (set) {
            if (g[REG_RDI] == SIG_BLOCK)
                *mask |= *set;
            else if (g[REG_RDI] == SIG_UNBLOCK)
                *mask &= ~*set;
            else
                *mask = *set;
            *mask &= ~((1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1)) | (1ull << (SIGSYS - 1)));
        }
        if (g[REG_RDX])
            *(uint64_t *)g[REG_RDX] = old;
        g[REG_RAX] = 0;
    } else if (nr == SYS_clone || nr == SYS_clone3 || nr == SYS_fork || nr == SYS_vfork) {
        g[REG_RAX] = -EPERM; /* a child would return into this handler; the threads exist before */
    } else {
        g[REG_RAX] = hp_raw_syscall(nr, g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8], g[REG_R9]);
    }
    t_in_handler = 0;
}

static const char *trap_syscalls(void)
{
    uint64_t ip = (uint64_t)(uintptr_t)hp_syscall_return;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rt_sigreturn, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)ip, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer) + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(ip >> 32), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
    };
    struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return "PR_SET_NO_NEW_PRIVS refused";
    /* no SECCOMP_FILTER_FLAG_TSYNC: the filter is this thread's only */
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return "seccomp filters refused here";
    return NULL;
}

/* ---- the launches ---- */
static CUfunction g_fn;
static CUstream g_stream;
static CUgraphExec g_graph;
static unsigned g_graph_kernels;
static PFN_cuLaunchKernel_v7000_ptsz g_launch_ptsz;
static PFN_cuLaunchKernel_v4000 g_launch_procaddr;
static PFN_cuLaunchKernelEx_v11060 g_launch_ex_ptsz;
static PFN_cuGraphLaunch_v10000 g_graph_launch_ptsz;

static CUresult launch_on(CUstream s) { return cuLaunchKernel(g_fn, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL); }
static CUresult k_stream(void) { return launch_on(g_stream); }
static CUresult k_null(void) { return launch_on(NULL); }
static CUresult k_legacy(void) { return launch_on(CU_STREAM_LEGACY); }
static CUresult k_per_thread(void) { return launch_on(CU_STREAM_PER_THREAD); }
static CUresult k_ptsz(void) { return g_launch_ptsz(g_fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL); }
static CUresult k_procaddr(void) { return g_launch_procaddr(g_fn, 1, 1, 1, 32, 1, 1, 0, g_stream, NULL, NULL); }
static CUresult k_ex(void)
{
    CUlaunchConfig c = {.gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 32, .blockDimY = 1,
                        .blockDimZ = 1, .hStream = g_stream};
    return cuLaunchKernelEx(&c, g_fn, NULL, NULL);
}
static CUresult k_ex_ptsz(void)
{
    CUlaunchConfig c = {.gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 32, .blockDimY = 1,
                        .blockDimZ = 1, .hStream = NULL};
    return g_launch_ex_ptsz(&c, g_fn, NULL, NULL);
}
static CUresult k_coop(void) { return cuLaunchCooperativeKernel(g_fn, 1, 1, 1, 32, 1, 1, 0, g_stream, NULL); }
static CUresult k_graph(void) { return cuGraphLaunch(g_graph, g_stream); }
static CUresult k_graph_ptsz(void) { return g_graph_launch_ptsz(g_graph, NULL); }

/* one per thread: a lock two threads contend for makes a futex call, a system call the count of
 * "exactly the getpids" did not expect (seen once in a full CI run on a loaded 2-core machine) */
static __thread pthread_mutex_t g_bad_lock = PTHREAD_MUTEX_INITIALIZER;
static CUresult k_misbehaving(void)
{
    /* what the detectors must catch: a system call, a lock and an allocation outside the driver */
    (void)syscall(SYS_getpid);
    pthread_mutex_lock(&g_bad_lock);
    pthread_mutex_unlock(&g_bad_lock);
    void *volatile p = malloc(64); /* volatile: the compiler may not drop the pair */
    free(p);
    return launch_on(g_stream);
}

struct kind {
    const char *name;
    CUresult (*fn)(void);
    unsigned *kernels; /* NULL: one */
};
static struct kind g_kinds[] = {
    {"cuLaunchKernel stream", k_stream, NULL},
    {"cuLaunchKernel NULL", k_null, NULL},
    {"cuLaunchKernel legacy", k_legacy, NULL},
    {"cuLaunchKernel per-thread", k_per_thread, NULL},
    {"cuLaunchKernel_ptsz (procaddr)", k_ptsz, NULL},
    {"cuLaunchKernel (procaddr)", k_procaddr, NULL},
    {"cuLaunchKernelEx", k_ex, NULL},
    {"cuLaunchKernelEx_ptsz (procaddr)", k_ex_ptsz, NULL},
    {"cuLaunchCooperativeKernel", k_coop, NULL},
    {"cuGraphLaunch", k_graph, &g_graph_kernels},
    {"cuGraphLaunch_ptsz (procaddr)", k_graph_ptsz, &g_graph_kernels},
    {"misbehaving (selftest)", k_misbehaving, NULL},
};
static int g_nkinds = (int)(sizeof g_kinds / sizeof g_kinds[0]) - 1; /* selftest adds the last */

static CUcontext g_ctx;
static long g_iterations = 20000;
static long g_gap_every;
static const char *g_seccomp_problem;
static _Atomic unsigned long g_launches, g_failed, g_kernels_expected;
static pthread_barrier_t g_warm, g_go, g_done;

static unsigned kernels_of(const struct kind *k) { return k->kernels ? *k->kernels : 1; }

static void *launcher(void *arg)
{
    (void)arg;
    CK(cuCtxSetCurrent(g_ctx));
    /* warm up: every stream seen once by this thread, every lazy binding resolved */
    for (int k = 0; k < g_nkinds; k++)
        for (int i = 0; i < 64; i++) {
            CK(g_kinds[k].fn());
            atomic_fetch_add(&g_kernels_expected, kernels_of(&g_kinds[k]));
        }
    (void)fakeCudaInDriver();
    (void)hp_raw_syscall(SYS_getpid, 0, 0, 0, 0, 0, 0);
    pthread_barrier_wait(&g_warm);
    const char *problem = trap_syscalls();
    if (problem)
        g_seccomp_problem = problem;
    pthread_barrier_wait(&g_go);
    unsigned long failed = 0, kernels = 0;
    t_measuring = 1;
    for (long i = 0; i < g_iterations; i++) {
        if (g_gap_every && i > 0 && i % g_gap_every == 0) {
            t_measuring = 0;
            CK(cuCtxSynchronize());
            usleep(20000);
            t_measuring = 1;
        }
        const struct kind *k = &g_kinds[i % g_nkinds];
        if (k->fn() != CUDA_SUCCESS)
            failed++;
        else
            kernels += kernels_of(k);
    }
    t_measuring = 0;
    atomic_fetch_add(&g_launches, (unsigned long)g_iterations);
    atomic_fetch_add(&g_failed, failed);
    atomic_fetch_add(&g_kernels_expected, kernels);
    pthread_barrier_wait(&g_done);
    return NULL;
}

static struct gvm_control_block *open_block(void)
{
    char path[512];
    gvm_self_block_path(path, sizeof path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "FAIL control-block %s (run under the agent)\n", path);
        exit(1);
    }
    struct gvm_control_block *b = mmap(NULL, sizeof *b, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (b == MAP_FAILED) {
        fprintf(stderr, "FAIL mmap of the control block\n");
        exit(1);
    }
    return b;
}

static void print_caller(enum what w, uintptr_t addr)
{
    Dl_info info;
    if (dladdr((void *)addr, &info) && info.dli_fname) {
        const char *base = strrchr(info.dli_fname, '/');
        printf("caller %s %s+%#lx%s%s\n", what_name[w], base ? base + 1 : info.dli_fname,
               (unsigned long)(addr - (uintptr_t)info.dli_fbase), info.dli_sname ? " near " : "",
               info.dli_sname ? info.dli_sname : "");
    } else {
        printf("caller %s %#lx\n", what_name[w], (unsigned long)addr);
    }
}

int main(int argc, char **argv)
{
    int threads = 2, hold = 0, selftest = 0;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "iterations=", 11) == 0)
            g_iterations = atol(argv[i] + 11);
        else if (strncmp(argv[i], "threads=", 8) == 0)
            threads = atoi(argv[i] + 8);
        else if (strncmp(argv[i], "gap-every=", 10) == 0)
            g_gap_every = atol(argv[i] + 10);
        else if (strcmp(argv[i], "hold") == 0)
            hold = 1;
        else if (strcmp(argv[i], "selftest") == 0)
            selftest = 1;
        else {
            fprintf(stderr, "usage: gvm-hot-path [iterations=N] [threads=N] [hold] [gap-every=N] [selftest]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > 16 || g_iterations < 1 || g_gap_every < 0 || (hold && g_gap_every)) {
        fprintf(stderr, "FAIL bad arguments\n");
        return 2;
    }
    if (selftest)
        g_nkinds++;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSYS, &sa, NULL);

    CUmodule mod;
    g_ctx = prog_open_gpu(0, NULL);
    struct gvm_control_block *block = open_block();
    CK(cuModuleLoadData(&mod, "hot-path"));
    CK(cuModuleGetFunction(&g_fn, mod, "k"));
    CK(cuStreamCreate(&g_stream, CU_STREAM_NON_BLOCKING));

    /* a graph of three kernels, captured (capture launches are counted at the graph's launches) */
    CUgraph graph;
    CK(cuStreamBeginCapture(g_stream, CU_STREAM_CAPTURE_MODE_GLOBAL));
    for (int i = 0; i < 3; i++)
        CK(launch_on(g_stream));
    CK(cuStreamEndCapture(g_stream, &graph));
    CK(cuGraphInstantiateWithFlags(&g_graph, graph, 0));
    g_graph_kernels = 3;

    CUdriverProcAddressQueryResult q;
    CK(cuGetProcAddress_v2("cuLaunchKernel", (void **)&g_launch_ptsz, 12000,
                           CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q));
    CK(cuGetProcAddress_v2("cuLaunchKernel", (void **)&g_launch_procaddr, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &q));
    CK(cuGetProcAddress_v2("cuLaunchKernelEx", (void **)&g_launch_ex_ptsz, 12000,
                           CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q));
    CK(cuGetProcAddress_v2("cuGraphLaunch", (void **)&g_graph_launch_ptsz, 12000,
                           CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q));

    pthread_barrier_init(&g_warm, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&g_go, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&g_done, NULL, (unsigned)threads + 1);
    pthread_t tids[16];
    for (int i = 0; i < threads; i++)
        if (pthread_create(&tids[i], NULL, launcher, NULL) != 0) {
            fprintf(stderr, "FAIL pthread_create\n");
            return 1;
        }
    pthread_barrier_wait(&g_warm);
    if (hold) {
        /* nothing finishes from here on: one launch opens the burst, and it lasts */
        fakeCudaHoldGpu(1);
        CK(launch_on(g_stream));
        atomic_fetch_add(&g_kernels_expected, 1);
    }
    uint64_t bursts_before = GVM_LOAD(&block->gpu[0].policy.bursts);
    pthread_barrier_wait(&g_go);
    pthread_barrier_wait(&g_done);
    uint64_t bursts_during = GVM_LOAD(&block->gpu[0].policy.bursts) - bursts_before;
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    if (hold)
        fakeCudaHoldGpu(0);
    CK(cuCtxSynchronize());

    /* the agent's count proves its hooks were on every path measured */
    uint64_t want = atomic_load(&g_kernels_expected), got = 0;
    for (int waited = 0; waited < 5000; waited += 10) {
        got = GVM_LOAD(&block->gpu[0].kernels_submitted);
        if (got >= want)
            break;
        usleep(10000);
    }
    printf("kinds %d\n", g_nkinds);
    printf("launches %lu failed %lu\n", atomic_load(&g_launches), atomic_load(&g_failed));
    printf("expected-kernels %llu\n", (unsigned long long)want);
    printf("submitted %llu\n", (unsigned long long)got);
    printf("bursts-during %llu\n", (unsigned long long)bursts_during);
    if (g_seccomp_problem)
        printf("syscalls unchecked: %s\n", g_seccomp_problem);
    else
        printf("syscalls %lu\n", atomic_load(&caught[W_SYSCALL]));
    for (int nr = 0; nr < 512; nr++)
        if (atomic_load(&syscall_count[nr]))
            printf("syscall nr=%d count=%lu\n", nr, atomic_load(&syscall_count[nr]));
    printf("locks %lu\n", atomic_load(&caught[W_LOCK]));
    printf("allocs %lu\n", atomic_load(&caught[W_ALLOC]));
    for (int i = 0; i < CALLERS && atomic_load(&callers[i].addr); i++)
        print_caller((enum what)atomic_load(&callers[i].what), atomic_load(&callers[i].addr));
    printf("DONE\n");
    fflush(stdout);
    return 0;
}
