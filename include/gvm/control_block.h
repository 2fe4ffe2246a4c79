/*
 * gvm control block: the ABI between the in-process agent (cuda-intercept/, the only writer of
 * counters and applied settings) and controllers (native/ addon: gvm CLI, gvmd).
 *
 * One block per process: GVM_SHM_DIR/<pid>, mode 0600, owned by the process's user. The block never
 * changes size once created; new fields take reserved space and bump the minor version, so an older
 * reader keeps working. A reader must refuse a different major version.
 *
 * Fields are plain fixed-width integers so the header is valid C11 and C++; every access to a field
 * that another process writes goes through the GVM_LOAD/GVM_STORE helpers below (GCC/Clang atomic
 * builtins), never a plain read of a torn 64-bit value.
 */
#ifndef GVM_CONTROL_BLOCK_H
#define GVM_CONTROL_BLOCK_H

#include <stddef.h>
#include <stdint.h>

#define GVM_SHM_DIR "/dev/shm/gvm"
#define GVM_CB_MAGIC 0x434d5647u /* "GVMC" little-endian */
#define GVM_CB_VERSION_MAJOR 1u
#define GVM_CB_VERSION_MINOR 4u /* 1: per-GPU policy state; 2: backend; 3: pid_ns, owner lock; 4: hold parts */

/*
 * Blocks of processes in the initial PID namespace are named "<pid>"; a process in another PID
 * namespace (a container) names its block "<pid>@<pid_ns>" (its pid as it sees it, then the inode
 * of that namespace), so processes of several containers sharing one directory never collide.
 * GVM_INIT_PID_NS is the inode the kernel gives the initial namespace (PROC_PID_INIT_INO).
 */
#define GVM_INIT_PID_NS 0xEFFFFFFCull

/* flags */
#define GVM_CB_FLAG_OWNER_LOCK 1u /* the process holds an OFD write lock on byte 0 of the block file
                                   * for its whole life: a reader in any namespace tests it with
                                   * F_OFD_GETLK to know whether the process still runs */

#define GVM_MAX_GPUS 16
#define GVM_MAX_TSGS 32
#define GVM_MAX_CHANNELS 128
#define GVM_CMDLINE_MAX 512
#define GVM_MESSAGE_MAX 96

#define GVM_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define GVM_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define GVM_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)

/* What the agent is doing; readers show it in `gvm ps`. */
enum gvm_agent_state {
  GVM_AGENT_STARTING = 0, /* block created, driver not initialised yet */
  GVM_AGENT_READY = 1,    /* cuInit succeeded, GPUs enumerated, control thread running */
  GVM_AGENT_DISABLED = 2, /* GVM_DISABLE=1 or an internal failure: pure pass-through */
  GVM_AGENT_EXITED = 3    /* the process is exiting; the block is about to be removed */
};

/* Command keys. GVM_KEY_PING applies nothing and proves the agent's control thread is alive. */
enum gvm_key {
  GVM_KEY_PING = 0,
  GVM_KEY_MEMORY_LIMIT = 1,     /* value: bytes */
  GVM_KEY_MEMORY_MODE = 2,      /* value: enum gvm_memory_mode */
  GVM_KEY_COMPUTE_PRIORITY = 3, /* value: 0..15 */
  GVM_KEY_COMPUTE_FREEZE = 4,   /* value: 0 or 1 */
  GVM_KEY_POLICY_CLASS = 5      /* value: enum gvm_policy_class (minor 1) */
};

/*
 * Automatic policy (minor 1). A latency process publishes busy/idle on the GPU's policy board
 * (policy_board.h); a best-effort process holds itself (freeze or shortest timeslice) while a more
 * important one is busy, and gives up memory in swap mode when a more important one needs it.
 */
enum gvm_policy_class { GVM_CLASS_NONE = 0, GVM_CLASS_LATENCY = 1, GVM_CLASS_BEST_EFFORT = 2 };

/* Entries of the per-GPU policy event log (newest at (event_head - 1) % GVM_POLICY_EVENTS). */
enum gvm_policy_event_kind {
  GVM_EVENT_BUSY = 1,        /* latency: first launch of a burst; value = burst number */
  GVM_EVENT_IDLE = 2,        /* latency: all work ended; value = burst length in us */
  GVM_EVENT_HOLD = 3,        /* best-effort: held; pid = the busy process, value = chain in us */
  GVM_EVENT_RELEASE = 4,     /* best-effort: released; value = time held in us */
  GVM_EVENT_MEM_NEED = 5,    /* latency: an allocation waits for memory; value = bytes */
  GVM_EVENT_MEM_LEND = 6,    /* best-effort: gave up memory; pid = for whom, value = bytes */
  GVM_EVENT_MEM_RETURN = 7,  /* best-effort: took lent memory back; value = bytes */
  GVM_EVENT_PEER_GONE = 8    /* a busy peer died; pid = it */
};

#define GVM_POLICY_EVENTS 16
#define GVM_CHAIN_BUCKETS 32 /* histogram of hold chains: bucket i counts [i, i+1) x 100 us, the last is open */

struct gvm_policy_event {
  uint64_t ns;  /* CLOCK_MONOTONIC */
  uint32_t kind;
  int32_t pid;
  uint64_t value;
};

struct gvm_policy_info {
  uint32_t klass;            /* enum gvm_policy_class */
  uint32_t held;             /* best-effort: 1 while held by the policy */
  uint32_t action;           /* 0 freeze, 1 throttle (shortest timeslice) */
  uint32_t idle_ms;          /* hysteresis: how long more important work must be idle before a release */
  uint64_t bursts;           /* latency: idle->busy transitions */
  uint64_t holds;            /* best-effort: times held */
  uint64_t held_ns;          /* best-effort: total time held (closed holds) */
  uint64_t chain_last_ns;    /* best-effort: first launch of the burst -> own work stopped */
  uint64_t chain_max_ns;
  uint64_t memory_lent;      /* best-effort: bytes moved to host for a more important process (gauge) */
  uint64_t memory_waits;     /* latency: allocations that waited for lent memory */
  uint32_t chain_hist[GVM_CHAIN_BUCKETS];
  uint32_t event_head;       /* events written so far */
  uint32_t reserved0;
  struct gvm_policy_event events[GVM_POLICY_EVENTS];
};

/*
 * Where each hold's chain went (minor 4; best-effort side), so a slow chain can be put on its cause:
 * the wake (the burst's first launch until this process's policy thread acted: the latency side's
 * futex wake and the scheduler), the wait for control_lock (a swap move holds it), and the RM controls
 * (disable + preempt, one GSP round trip each). Buckets as chain_hist.
 */
struct gvm_hold_parts {
  uint64_t holds;          /* holds counted here (an agent of minor 3 counted none) */
  uint64_t wake_ns_sum;
  uint64_t lock_ns_sum;
  uint64_t lock_max_ns;
  uint64_t rm_ns_sum;
  uint64_t rm_max_ns;
  uint32_t wake_hist[GVM_CHAIN_BUCKETS];
  uint32_t rm_hist[GVM_CHAIN_BUCKETS];
};

enum gvm_memory_mode { GVM_MEMORY_MODE_OOM = 0, GVM_MEMORY_MODE_SWAP = 1 };

/* Who enforces limits, priority and freeze (minor 2): the agent, or the nvidia-uvm module's files. */
enum gvm_backend { GVM_BACKEND_AGENT = 0, GVM_BACKEND_KERNEL = 1 };

/* How compute control reaches the GPU in this process. */
enum gvm_control_mode {
  GVM_CONTROL_NONE = 0,     /* nothing applied yet */
  GVM_CONTROL_RM = 1,       /* RM controls on the process's own channel groups (timeslice, disable+preempt) */
  GVM_CONTROL_SOFTWARE = 2  /* RM path unavailable: launches held at the hook, work drained; no priority */
};

/* Status the agent writes back for a command (and controllers use locally for timeouts). */
enum gvm_status {
  GVM_STATUS_OK = 0,
  GVM_STATUS_INVALID = 1,     /* value out of range or not parseable for that key */
  GVM_STATUS_UNSUPPORTED = 2, /* this agent or driver cannot do it */
  GVM_STATUS_NO_GPU = 3,      /* GPU index not present in this process */
  GVM_STATUS_DRIVER = 4,      /* the driver or RM refused; message says which call */
  GVM_STATUS_BUSY = 5,        /* agent not ready yet (no cuInit) */
  GVM_STATUS_TIMEOUT = 6      /* controller side only: agent did not answer in time */
};

/*
 * The command mailbox. Controllers serialise themselves with flock(LOCK_EX) on the block's file,
 * fill key/gpu/value, then increment seq (release) and FUTEX_WAKE it. The agent's control thread
 * waits on seq, applies, writes status/message, stores applied_seq = seq (release) and wakes it.
 * Both words are shared (not PRIVATE) futexes: the block is MAP_SHARED between processes.
 */
struct gvm_command {
  uint32_t seq;
  uint32_t applied_seq;
  uint32_t key;
  uint32_t gpu;
  uint64_t value;
  int32_t status;
  uint32_t reserved0;
  char message[GVM_MESSAGE_MAX];
};

/* A channel group (TSG) libcuda allocated, as seen through the RM ioctls. */
struct gvm_tsg_info {
  uint32_t handle;
  uint32_t engine_type;   /* 1 = GR (compute); 11.. = copy engines */
  uint32_t channel_count; /* channels seen under it */
  uint32_t parent;        /* RM parent object (the device) */
  uint64_t timeslice_us;  /* last value read back or set; 0 = not known */
  uint64_t reserved0;
};

struct gvm_channel_info {
  uint32_t handle;
  uint32_t tsg;      /* handle of its TSG */
  uint32_t class_id; /* GPFIFO class, ends in 0x6F */
  uint32_t reserved0;
};

/* Per-GPU state. The index into gvm_control_block.gpu[] is the CUDA device ordinal in the process. */
struct gvm_gpu_block {
  /* identity: written once by the agent after cuInit */
  uint32_t present;
  int32_t ordinal;
  uint8_t uuid[16];
  char pci_bus_id[16]; /* "0000:41:00.0" */
  char name[64];
  uint64_t total_bytes; /* device memory as the driver reports it */

  /* settings in force (the agent writes the applied value; start-up values come from gvm run) */
  uint64_t memory_limit; /* bytes; total_bytes when unlimited */
  uint32_t memory_mode;  /* enum gvm_memory_mode */
  int32_t priority;      /* 0..15, lower is more important, 8 is the driver default */
  uint32_t frozen;       /* 1 while frozen */
  uint32_t contexts;     /* live CUDA contexts on this GPU */

  /* counters: agent-written, monotonic unless noted */
  uint64_t memory_current;      /* device bytes held: cuMemAlloc*, pools, VMM device handles (gauge) */
  uint64_t memory_swap_current; /* bytes of device allocations living on the host (gauge) */
  uint64_t memory_peak;         /* high-water mark of memory_current */
  uint64_t managed_bytes;       /* cuMemAllocManaged (gauge) */
  uint64_t host_bytes;          /* pinned host allocations made through the driver (gauge) */
  uint64_t kernels_submitted;
  uint64_t kernels_ended; /* lags submitted by up to one event interval while work runs */
  uint64_t alloc_count;
  uint64_t free_count;
  uint64_t alloc_failures;
  uint64_t updated_ns; /* CLOCK_MONOTONIC of the last publish by the control thread */
  uint64_t reserved_counters[12];

  /* RM objects seen through ioctl. rm_seq is a seqlock: odd while the agent rewrites the tables. */
  uint32_t rm_seq;
  int32_t rm_fd;
  uint32_t rm_client;
  uint32_t rm_device;
  uint32_t rm_subdevice;
  uint32_t tsg_count;
  uint32_t channel_count;
  uint32_t control_mode; /* enum gvm_control_mode: how priority and freeze are applied */
  struct gvm_tsg_info tsg[GVM_MAX_TSGS];
  struct gvm_channel_info channel[GVM_MAX_CHANNELS];

  struct gvm_policy_info policy; /* minor 1 */
  struct gvm_hold_parts hold_parts; /* minor 4 */

  uint8_t reserved[8192 - 3424 - sizeof(struct gvm_policy_info) - sizeof(struct gvm_hold_parts)];
};

struct gvm_control_block {
  uint32_t magic;
  uint16_t version_major;
  uint16_t version_minor;
  uint32_t size;           /* sizeof(struct gvm_control_block) of the writer */
  uint32_t gpu_block_size; /* sizeof(struct gvm_gpu_block) of the writer */
  int32_t pid;
  uint32_t uid;
  uint64_t start_time;     /* /proc/<pid>/stat field 22 (clock ticks after boot): detects pid reuse */
  uint64_t created_unix_ms;
  uint64_t heartbeat_ns;   /* CLOCK_MONOTONIC, bumped by the control thread on every tick */
  uint32_t agent_state;    /* enum gvm_agent_state */
  uint32_t gpu_count;      /* devices visible to the process (cuDeviceGetCount) */
  uint32_t driver_version; /* cuDriverGetVersion, e.g. 13000 */
  uint32_t flags;
  char agent_version[32];
  char cmdline[GVM_CMDLINE_MAX]; /* argv joined by spaces, truncated */
  uint64_t pid_ns;         /* inode of the process's PID namespace (minor 3); 0 in older blocks */
  uint8_t reserved_header0[2432 - 616 - 4];
  uint32_t backend;        /* enum gvm_backend (minor 2); 0 in older blocks */
  struct gvm_command command;
  uint8_t reserved_header1[4096 - 2432 - sizeof(struct gvm_command)];
  struct gvm_gpu_block gpu[GVM_MAX_GPUS];
};

#ifdef __cplusplus
#define GVM_STATIC_ASSERT static_assert
#else
#define GVM_STATIC_ASSERT _Static_assert
#endif

GVM_STATIC_ASSERT(sizeof(struct gvm_command) == 128, "command mailbox size");
GVM_STATIC_ASSERT(sizeof(struct gvm_tsg_info) == 32, "tsg info size");
GVM_STATIC_ASSERT(sizeof(struct gvm_channel_info) == 16, "channel info size");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, memory_limit) == 112, "gpu.memory_limit");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, memory_current) == 136, "gpu.memory_current");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, kernels_submitted) == 176, "gpu.kernels_submitted");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, rm_seq) == 320, "gpu.rm_seq");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, tsg) == 352, "gpu.tsg");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, channel) == 1376, "gpu.channel");
GVM_STATIC_ASSERT(sizeof(struct gvm_policy_event) == 24, "policy event size");
GVM_STATIC_ASSERT(sizeof(struct gvm_policy_info) == 592, "policy info size");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, policy) == 3424, "gpu.policy");
GVM_STATIC_ASSERT(sizeof(struct gvm_hold_parts) == 304, "hold parts size");
GVM_STATIC_ASSERT(offsetof(struct gvm_gpu_block, hold_parts) == 4016, "gpu.hold_parts");
GVM_STATIC_ASSERT(sizeof(struct gvm_gpu_block) == 8192, "gpu block size");
GVM_STATIC_ASSERT(offsetof(struct gvm_control_block, cmdline) == 96, "cmdline");
GVM_STATIC_ASSERT(offsetof(struct gvm_control_block, pid_ns) == 608, "pid_ns");
GVM_STATIC_ASSERT(offsetof(struct gvm_control_block, backend) == 2428, "backend");
GVM_STATIC_ASSERT(offsetof(struct gvm_control_block, command) == 2432, "command");
GVM_STATIC_ASSERT(offsetof(struct gvm_control_block, gpu) == 4096, "gpu array");
GVM_STATIC_ASSERT(sizeof(struct gvm_control_block) == 4096 + GVM_MAX_GPUS * 8192, "block size");

#endif
