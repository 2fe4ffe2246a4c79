/*
 * The automatic policy, inside each process (GVM_CLASS=latency|best-effort, or gvm set ... policy.class).
 *
 * A latency process marks itself busy on its policy board at the first launch of a burst (a launch
 * otherwise pays one load) and idle when the event thread sees all its work ended. Each best-effort
 * process runs one thread per GPU that sleeps on the board's futex and holds its own work (channels
 * disabled + preempted, or the shortest timeslice) while any latency process is busy, and releases it
 * once they have all been idle for GVM_POLICY_IDLE_MS. Only a process's own RM client may steer its
 * channels, hence a thread in each best-effort process rather than one controller.
 *
 * Memory: a latency allocation that the GPU cannot satisfy posts its need on the board and waits;
 * best-effort processes in swap mode lend memory by lowering their own limit (the mover moves their
 * oldest ranges to the host) and take it back once it fits beside everyone again.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "policy_rules.h"

#define MS 1000000ull
#define REAP_INTERVAL_NS (100 * MS)   /* how often a held process checks that the busy peer is alive */
#define RETURN_QUIET_NS (1000 * MS)
#define NEED_SLACK (64ull << 20) /* free memory a waiting allocation wants beyond its own size */   /* no need posted for this long before lent memory comes back */
#define RETURN_HEADROOM (1ull << 30)  /* kept free on the GPU when taking lent memory back */

_Atomic uint32_t gvm_policy_latency_mask;
static struct gvm_board *boards[GVM_MAX_GPUS];
static int slots[GVM_MAX_GPUS] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
static _Atomic uint64_t lent[GVM_MAX_GPUS];
static _Atomic uint64_t cap[GVM_MAX_GPUS] = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX,
                                             UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX,
                                             UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};
static pthread_t threads[GVM_MAX_GPUS];
static bool thread_running[GVM_MAX_GPUS];
static _Atomic int stopping;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;

static struct gvm_board_slot *my_slot(int gpu) {
  if (gpu < 0 || gpu >= GVM_MAX_GPUS || !boards[gpu] || slots[gpu] < 0 || slots[gpu] >= GVM_BOARD_SLOTS) return NULL;
  return &boards[gpu]->slot[slots[gpu]];
}

/* Every change other agents act on bumps seq; the wake is skipped when nobody sleeps on it. */
static void board_changed(struct gvm_board *b) {
  __atomic_add_fetch(&b->seq, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&b->waiters, __ATOMIC_SEQ_CST)) gvm_futex(&b->seq, FUTEX_WAKE, INT32_MAX, NULL);
}

static void note_event(int gpu, uint32_t kind, int32_t pid, uint64_t value) {
  struct gvm_policy_info *p = &gvm_block->gpu[gpu].policy;
  uint32_t at = __atomic_fetch_add(&p->event_head, 1, __ATOMIC_ACQ_REL) % GVM_POLICY_EVENTS;
  struct gvm_policy_event *e = &p->events[at];
  GVM_STORE(&e->kind, kind);
  GVM_STORE(&e->pid, pid);
  GVM_STORE(&e->value, value);
  GVM_STORE(&e->ns, gvm_now_ns());
}

/* ---- boards ---- */
/* Our fd of each board file: it holds the OFD lock on our slot's first byte while we live. */
static int board_fds[GVM_MAX_GPUS] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};

static struct gvm_board *board_open(int gpu) {
  const uint8_t *u = gvm_block->gpu[gpu].uuid;
  char path[400];
  /* boards outlive their processes (a new one joins the same file), so they live apart from blocks */
  int n = snprintf(path, sizeof path, "%s/boards", gvm_config.shm_dir);
  if (n <= 0 || (size_t)n >= sizeof path) return NULL;
  if (mkdir(path, 01777) == 0 && chmod(path, 01777) != 0)
    GVM_LOG_ONCE(GVM_LOG_WARN, "chmod %s: %s", path, strerror(errno));
  n += snprintf(path + n, sizeof path - (size_t)n, "/gpu-");
  for (int i = 0; i < 16 && n > 0 && (size_t)n + 3 < sizeof path; i++) n += snprintf(path + n, sizeof path - (size_t)n, "%02x", u[i]);
  if (n <= 0 || (size_t)n + 8 >= sizeof path) return NULL;
  snprintf(path + n, sizeof path - (size_t)n, ".board");
  gvm_fork_window_enter();
  int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0660);
  if (fd < 0) {
    gvm_fork_window_leave();
    GVM_LOG_ONCE(GVM_LOG_WARN, "cannot open the policy board %s: %s; no automatic policy", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  size_t size = sizeof(struct gvm_board);
  if (fstat(fd, &st) != 0) {
    close(fd);
    gvm_fork_window_leave();
    return NULL;
  }
  if ((size_t)st.st_size < size) {
    if (st.st_uid == geteuid()) fchmod(fd, 0660); /* the umask may have trimmed the group's access */
    int err = posix_fallocate(fd, 0, (off_t)size);
    if (err != 0 && ftruncate(fd, (off_t)size) != 0) err = errno;
    else err = 0;
    if (err) {
      close(fd);
      gvm_fork_window_leave();
      GVM_LOG_ONCE(GVM_LOG_WARN, "cannot size the policy board %s: %s", path, strerror(err));
      return NULL;
    }
  }
  struct gvm_board *b = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (b == MAP_FAILED) {
    close(fd);
    gvm_fork_window_leave();
    return NULL;
  }
  board_fds[gpu] = fd; /* kept: our slot's lock lives on it */
  boards[gpu] = b;     /* recorded now: a fork child unmaps it (gvm_policy_reset) */
  gvm_fork_window_leave();
  uint32_t magic = 0;
  /* the first opener stamps the header; racing openers write the same values */
  if (GVM_LOAD(&b->magic) == 0) {
    b->version_major = GVM_BOARD_VERSION_MAJOR;
    b->version_minor = GVM_BOARD_VERSION_MINOR;
    b->size = (uint32_t)size;
    b->slots = GVM_BOARD_SLOTS;
    memcpy(b->uuid, u, 16);
    GVM_STORE(&b->total_bytes, gvm_block->gpu[gpu].total_bytes);
    __atomic_compare_exchange_n(&b->magic, &magic, GVM_BOARD_MAGIC, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  }
  if (GVM_LOAD(&b->magic) != GVM_BOARD_MAGIC || b->version_major != GVM_BOARD_VERSION_MAJOR) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "policy board %s has another layout; no automatic policy on GPU %d", path, gpu);
    gvm_fork_window_enter();
    munmap(b, size);
    close(fd);
    board_fds[gpu] = -1;
    boards[gpu] = NULL;
    gvm_fork_window_leave();
    return NULL;
  }
  return b;
}

static bool pid_alive(int32_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

static off_t slot_offset(int i) { return (off_t)(offsetof(struct gvm_board, slot) + (size_t)i * sizeof(struct gvm_board_slot)); }

/* A slot of a dead process: clear it so nobody waits on its busy flag or counts its memory. */
static bool reap_slot(struct gvm_board *b, int gpu, int i) {
  struct gvm_board_slot *s = &b->slot[i];
  int32_t pid = GVM_LOAD(&s->pid);
  if (pid == 0) return false;
  /* a locked slot is judged by its lock alone: its pid may belong to another container */
  int alive = GVM_LOAD(&s->locked) ? gvm_owner_alive(board_fds[gpu], slot_offset(i)) : -1;
  if (alive == 1 || (alive < 0 && pid_alive(pid))) return false;
  GVM_STORE(&s->busy, 0u);
  GVM_STORE(&s->memory_need, 0ull);
  GVM_STORE(&s->memory_current, 0ull);
  return __atomic_compare_exchange_n(&s->pid, &pid, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static int claim_slot(struct gvm_board *b, int gpu) {
  int32_t me = getpid();
  for (int i = 0; i < GVM_BOARD_SLOTS; i++) reap_slot(b, gpu, i);
  for (int i = 0; i < GVM_BOARD_SLOTS; i++) {
    struct gvm_board_slot *s = &b->slot[i];
    if (GVM_LOAD(&s->pid) != 0) continue;
    /* The lock before the pid: once our pid is in the slot a peer may judge it, and a slot reaped
     * after a SIGKILL still says locked=1; an unheld lock then would read as a dead owner. */
    int e = gvm_owner_lock(board_fds[gpu], slot_offset(i), true);
    if (e == EAGAIN || e == EACCES) continue; /* another process is claiming it */
    if (e) GVM_LOG_ONCE(GVM_LOG_INFO, "cannot lock a policy board slot (%s): peers judge it by its pid", strerror(e));
    GVM_STORE(&s->locked, e == 0 ? 1u : 0u);
    int32_t expected = 0;
    if (!__atomic_compare_exchange_n(&s->pid, &expected, me, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      if (e == 0) gvm_owner_lock(board_fds[gpu], slot_offset(i), false);
      continue;
    }
    struct gvm_gpu_block *g = &gvm_block->gpu[gpu];
    GVM_STORE(&s->busy, 0u);
    GVM_STORE(&s->frozen, GVM_LOAD(&g->frozen));
    GVM_STORE(&s->priority, GVM_LOAD(&g->priority));
    GVM_STORE(&s->start_time, gvm_block->start_time);
    GVM_STORE(&s->busy_since_ns, 0ull);
    GVM_STORE(&s->idle_since_ns, gvm_now_ns());
    GVM_STORE(&s->bursts, 0ull);
    GVM_STORE(&s->memory_current, GVM_LOAD(&g->memory_current));
    GVM_STORE(&s->memory_need, 0ull);
    GVM_STORE(&s->memory_lent, 0ull);
    GVM_STORE(&s->klass, GVM_LOAD(&g->policy.klass));
    return i;
  }
  GVM_LOG_ONCE(GVM_LOG_WARN, "policy board full (%d processes); no automatic policy for this one", GVM_BOARD_SLOTS);
  return -1;
}

/* ---- latency side ---- */
/* The first launch of a burst: mark busy and wake whoever waits on the board. */
static void busy_slow(int gpu) {
  struct gvm_board_slot *s = my_slot(gpu);
  if (!s) return;
  uint64_t now = gvm_now_ns();
  GVM_STORE(&s->busy_since_ns, now); /* before busy, so whoever sees busy sees when it began */
  uint32_t expected = 0;
  if (!__atomic_compare_exchange_n(&s->busy, &expected, 1u, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return;
  uint64_t burst = __atomic_add_fetch(&s->bursts, 1, __ATOMIC_RELAXED);
  board_changed(boards[gpu]);
  GVM_STORE(&gvm_block->gpu[gpu].policy.bursts, burst);
  note_event(gpu, GVM_EVENT_BUSY, 0, burst);
  gvm_monitor_kick(); /* the event thread naps long while idle; it must notice the end of this burst */
}

void gvm_policy_on_launch(int gpu) {
  if (gpu < 0 || gpu >= GVM_MAX_GPUS || !(atomic_load_explicit(&gvm_policy_latency_mask, memory_order_relaxed) & (1u << gpu)))
    return;
  struct gvm_board_slot *s = my_slot(gpu);
  if (!s) return;
  /* pairs with the event thread's fence between "busy = 0" and re-reading submitted: one of the two
   * sees the other, so a launch racing an idle mark is never lost */
  atomic_thread_fence(memory_order_seq_cst);
  if (__atomic_load_n(&s->busy, __ATOMIC_RELAXED)) return;
  busy_slow(gpu);
}

/* Event thread: refresh what others read from our slots, and mark latency GPUs idle once drained. */
void gvm_policy_tick(const uint64_t *submitted, const uint64_t *ended) {
  if (!gvm_block) return;
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    struct gvm_board_slot *s = my_slot(g);
    if (!s) continue;
    struct gvm_gpu_block *gb = &gvm_block->gpu[g];
    uint64_t cur = GVM_LOAD(&gb->memory_current);
    if (GVM_LOAD(&s->memory_current) != cur) GVM_STORE(&s->memory_current, cur);
    GVM_STORE(&s->priority, GVM_LOAD(&gb->priority));
    uint32_t frozen = GVM_LOAD(&gb->frozen);
    if (GVM_LOAD(&s->frozen) != frozen) {
      GVM_STORE(&s->frozen, frozen);
      board_changed(boards[g]);
    }
    if (!(atomic_load(&gvm_policy_latency_mask) & (1u << g)) || !GVM_LOAD(&s->busy) || ended[g] < submitted[g]) continue;
    uint64_t now = gvm_now_ns();
    GVM_STORE(&s->idle_since_ns, now); /* before busy = 0: a reader that sees idle sees a fresh time */
    __atomic_store_n(&s->busy, 0u, __ATOMIC_SEQ_CST);
    atomic_thread_fence(memory_order_seq_cst);
    if (gvm_streams_submitted(g) > submitted[g]) { /* a launch slipped in: the burst goes on */
      __atomic_store_n(&s->busy, 1u, __ATOMIC_SEQ_CST);
      continue;
    }
    board_changed(boards[g]);
    uint64_t since = GVM_LOAD(&s->busy_since_ns);
    note_event(g, GVM_EVENT_IDLE, 0, since && now > since ? (now - since) / 1000 : 0);
  }
}

bool gvm_policy_need_memory(int gpu, uint64_t bytes) {
  struct gvm_board_slot *s = my_slot(gpu);
  if (!s || !(atomic_load(&gvm_policy_latency_mask) & (1u << gpu)) || gvm_capture_active() ||
      gvm_config.policy_mem_wait_ms <= 0)
    return false;
  struct gvm_board *b = boards[gpu];
  bool lender = false; /* anyone who could lend? */
  for (int i = 0; i < GVM_BOARD_SLOTS && !lender; i++)
    lender = i != slots[gpu] && GVM_LOAD(&b->slot[i].pid) && GVM_LOAD(&b->slot[i].klass) == GVM_CLASS_BEST_EFFORT;
  if (!lender) return false;
  /* ask for what we wait for: the allocation and the slack the driver needs beside it (asking for the
   * allocation alone left the GPU short of the slack, and the wait ran to its deadline) */
  __atomic_add_fetch(&s->memory_need, bytes + NEED_SLACK, __ATOMIC_ACQ_REL);
  GVM_ADD(&gvm_block->gpu[gpu].policy.memory_waits, 1);
  note_event(gpu, GVM_EVENT_MEM_NEED, 0, bytes);
  board_changed(b);
  bool ok = false;
  uint64_t deadline = gvm_now_ns() + (uint64_t)gvm_config.policy_mem_wait_ms * MS;
  while (gvm_now_ns() < deadline) {
    struct timespec ts = {0, 2 * 1000000L};
    nanosleep(&ts, NULL);
    size_t free_bytes = 0, total = 0;
    /* the driver's own numbers: our hook would clip them to our limit */
    if (GVM_REAL(cuMemGetInfo_v2, &free_bytes, &total) == CUDA_SUCCESS && free_bytes >= bytes + NEED_SLACK) {
      ok = true;
      break;
    }
  }
  GVM_STORE(&s->memory_need, 0ull); /* met or given up: lenders stop lending for this request */
  board_changed(b);
  return ok;
}

/* ---- best-effort side ---- */
uint64_t gvm_policy_cap(int gpu) {
  return gpu >= 0 && gpu < GVM_MAX_GPUS ? atomic_load_explicit(&cap[gpu], memory_order_relaxed) : UINT64_MAX;
}

/* Lending lowers what we may hold below what we hold now; giving back raises it again. */
static void set_lent(int gpu, uint64_t bytes) {
  if (gpu < 0 || gpu >= GVM_MAX_GPUS) return;
  uint64_t before = atomic_load(&lent[gpu]);
  if (bytes == 0) {
    atomic_store(&cap[gpu], UINT64_MAX);
  } else if (bytes > before) {
    uint64_t cur = GVM_LOAD(&gvm_block->gpu[gpu].memory_current), c = atomic_load(&cap[gpu]);
    uint64_t base = c < cur ? c : cur, give = bytes - before;
    atomic_store(&cap[gpu], base > give ? base - give : 0);
  } else {
    uint64_t c = atomic_load(&cap[gpu]);
    atomic_store(&cap[gpu], c == UINT64_MAX ? c : c + (before - bytes));
  }
  atomic_store(&lent[gpu], bytes);
  GVM_STORE(&gvm_block->gpu[gpu].policy.memory_lent, bytes);
  struct gvm_board_slot *s = my_slot(gpu);
  if (s) GVM_STORE(&s->memory_lent, bytes);
  gvm_swap_kick();
}

/* Lend what a more important process waits for (swap mode only), or take lent memory back. */
static void balance_memory(int gpu, const struct gvm_policy_view *v, uint64_t now, uint64_t *last_need_ns) {
  struct gvm_gpu_block *gb = &gvm_block->gpu[gpu];
  uint64_t have = atomic_load(&lent[gpu]);
  if (v->memory_need) {
    *last_need_ns = now;
    if (GVM_LOAD(&gb->memory_mode) != GVM_MEMORY_MODE_SWAP) return;
    struct gvm_board_slot *needy = &boards[gpu]->slot[v->need_slot];
    if (GVM_LOAD(&needy->pid) != v->need_pid) needy = NULL; /* it left since the scan */
    uint64_t cur = GVM_LOAD(&gb->memory_current);
    uint64_t need = needy ? GVM_LOAD(&needy->memory_need) : 0;
    uint64_t give = need < cur ? need : cur;
    if (!give || !needy) return;
    /* claim the part of the need we cover, so two lenders do not both move the same bytes */
    if (!__atomic_compare_exchange_n(&needy->memory_need, &need, need - give, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return;
    set_lent(gpu, have + give);
    note_event(gpu, GVM_EVENT_MEM_LEND, v->need_pid, give);
    return;
  }
  if (!have || now - *last_need_ns < RETURN_QUIET_NS) return;
  uint64_t back = gvm_policy_returnable(have, GVM_LOAD(&gb->total_bytes), GVM_LOAD(&gb->memory_current),
                                        v->memory_others, RETURN_HEADROOM);
  if (!back) return;
  set_lent(gpu, have - back);
  note_event(gpu, GVM_EVENT_MEM_RETURN, 0, back);
}

/*
 * A hold's chain (the burst's first launch to the job stopped) and its parts; 0 when the burst's start
 * is unknown or the job was stopped before it. A hold handed over by a move ended when the move
 * stopped the channels, maybe before this thread asked or got the lock: each part is cut at that end,
 * so the parts add up to the chain.
 */
struct chain_parts {
  uint64_t chain, wake, lock, rm;
};

static struct chain_parts chain_parts_of(uint64_t hot_since_ns, const struct gvm_hold_timing *ht) {
  struct chain_parts c = {0};
  uint64_t end = ht->stopped_ns;
  if (!hot_since_ns || end <= hot_since_ns) return c;
  uint64_t asked = ht->asked_ns < end ? ht->asked_ns : end;
  uint64_t locked = ht->locked_ns < end ? ht->locked_ns : end;
  c.chain = end - hot_since_ns;
  c.wake = asked > hot_since_ns ? asked - hot_since_ns : 0;
  c.lock = locked - asked;
  c.rm = end - locked;
  return c;
}

/*
 * A hold far past its usual ~1 ms leaves the latency process beside running work all that time, and
 * the histogram cannot say why. Each new slowest one (past 20 ms) is logged with where its time went:
 * the wake (the burst's first launch until this thread acted), the wait for control_lock (a move
 * holds it), and the RM controls (the driver may queue them behind its own work, e.g. pinning).
 */
/* Past 20 ms and the slowest so far: worth a log line. */
static bool slowest_yet(uint64_t *slowest, uint64_t ns) {
  if (ns < 20 * MS || ns <= *slowest) return false;
  *slowest = ns;
  return true;
}

static void explain_slow_hold(int gpu, const struct chain_parts *c) {
  static uint64_t slowest[GVM_MAX_GPUS]; /* policy thread of that GPU only */
  if (!slowest_yet(&slowest[gpu], c->chain)) return;
  gvm_log(GVM_LOG_WARN, "policy: holding GPU %d took %.1f ms after the burst began (wake %.1f ms, control lock %.1f ms, "
          "RM controls %.1f ms)", gpu, (double)c->chain / 1e6, (double)c->wake / 1e6, (double)c->lock / 1e6,
          (double)c->rm / 1e6);
}

/*
 * A release is one RM control (~0.4 ms), but the driver serialises controls behind other work of the
 * GPU (another process's large allocation or pinning): a release stuck there delays this thread, and a
 * burst that begins meanwhile shows the delay as its wake. Each new slowest one past 20 ms is logged.
 */
static void explain_slow_release(int gpu, uint64_t ns) {
  static uint64_t slowest[GVM_MAX_GPUS]; /* policy thread of that GPU only */
  if (!slowest_yet(&slowest[gpu], ns)) return;
  gvm_log(GVM_LOG_WARN, "policy: releasing GPU %d took %.1f ms (control lock and RM controls); a burst beginning "
          "meanwhile waits for it", gpu, (double)ns / 1e6);
}

static uint32_t chain_bucket(uint64_t ns) {
  uint64_t bucket = ns / (100 * 1000);
  return bucket >= GVM_CHAIN_BUCKETS ? GVM_CHAIN_BUCKETS - 1 : (uint32_t)bucket;
}

static void record_hold(int gpu, int32_t pid, const struct chain_parts *c) {
  struct gvm_gpu_block *gb = &gvm_block->gpu[gpu];
  struct gvm_policy_info *p = &gb->policy;
  GVM_STORE(&p->held, 1u);
  GVM_ADD(&p->holds, 1);
  GVM_STORE(&p->chain_last_ns, c->chain);
  if (c->chain > GVM_LOAD(&p->chain_max_ns)) GVM_STORE(&p->chain_max_ns, c->chain);
  GVM_ADD(&p->chain_hist[chain_bucket(c->chain)], 1);
  if (c->chain) { /* the parts of a chain of a known burst only */
    struct gvm_hold_parts *hp = &gb->hold_parts;
    GVM_ADD(&hp->wake_ns_sum, c->wake);
    GVM_ADD(&hp->lock_ns_sum, c->lock);
    GVM_ADD(&hp->rm_ns_sum, c->rm);
    if (c->lock > GVM_LOAD(&hp->lock_max_ns)) GVM_STORE(&hp->lock_max_ns, c->lock);
    if (c->rm > GVM_LOAD(&hp->rm_max_ns)) GVM_STORE(&hp->rm_max_ns, c->rm);
    GVM_ADD(&hp->wake_hist[chain_bucket(c->wake)], 1);
    GVM_ADD(&hp->rm_hist[chain_bucket(c->rm)], 1);
    GVM_ADD(&hp->holds, 1);
  }
  note_event(gpu, GVM_EVENT_HOLD, pid, c->chain / 1000);
}

static void reap_busy(int gpu) {
  struct gvm_board *b = boards[gpu];
  for (int i = 0; i < GVM_BOARD_SLOTS; i++) {
    int32_t pid = GVM_LOAD(&b->slot[i].pid);
    if (!pid || !GVM_LOAD(&b->slot[i].busy)) continue;
    if (reap_slot(b, gpu, i)) {
      note_event(gpu, GVM_EVENT_PEER_GONE, pid, 0);
      board_changed(b);
    }
  }
}

/*
 * GVM_POLICY_SPIN_US: a released best-effort thread polls the board this long before sleeping on it.
 * The futex wake of a sleeping thread is most of the hold chain's tail on a VM (a vCPU wakeup), so a
 * user who would rather spend a core than that tail can spin; the latency side is unchanged. True when
 * the board changed while polling.
 */
static bool spin_for_change(struct gvm_board *b, uint32_t seq, uint64_t ns) {
  uint64_t end = gvm_now_ns() + ns;
  do {
    for (int i = 0; i < 64; i++) {
      if (__atomic_load_n(&b->seq, __ATOMIC_SEQ_CST) != seq) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      __asm__ __volatile__("yield");
#endif
    }
  } while (gvm_now_ns() < end && !atomic_load(&stopping));
  return false;
}

static void *policy_main(void *arg) {
  int gpu = (int)(intptr_t)arg;
  struct gvm_board *b = boards[gpu];
  struct gvm_gpu_block *gb = &gvm_block->gpu[gpu];
  bool held = false;
  uint64_t held_since = 0, last_reap = 0, last_need = 0;
  __atomic_add_fetch(&b->waiters, 1, __ATOMIC_SEQ_CST);
  while (!atomic_load(&stopping)) {
    uint32_t seq = __atomic_load_n(&b->seq, __ATOMIC_SEQ_CST);
    uint32_t klass = GVM_LOAD(&gb->policy.klass);
    struct gvm_policy_view v;
    gvm_policy_scan(b, slots[gpu], klass, &v);
    uint64_t now = gvm_now_ns(), wait = UINT64_MAX;
    int step = GVM_STEP_STAY;
    if (klass == GVM_CLASS_BEST_EFFORT)
      step = gvm_policy_decide(held, &v, now, (uint64_t)gvm_config.policy_idle_ms * MS, &wait);
    else if (held)
      step = GVM_STEP_RELEASE;
    if (step == GVM_STEP_HOLD) {
      struct gvm_hold_timing ht = {0};
      uint32_t st = gvm_compute_policy_hold(gpu, true, gvm_config.policy_throttle, &ht);
      if (st == 0) {
        held = true;
        held_since = gvm_now_ns();
        struct chain_parts c = chain_parts_of(v.hot_since_ns, &ht);
        explain_slow_hold(gpu, &c);
        record_hold(gpu, v.hot_pid, &c);
      } else {
        GVM_LOG_ONCE(GVM_LOG_WARN, "policy could not hold GPU %d (RM status %#x); retrying", gpu, st);
        wait = 100 * MS;
      }
    } else if (step == GVM_STEP_RELEASE) {
      uint64_t t0 = gvm_now_ns();
      gvm_compute_policy_hold(gpu, false, gvm_config.policy_throttle, NULL);
      explain_slow_release(gpu, gvm_now_ns() - t0);
      held = false;
      uint64_t t = gvm_now_ns() - held_since;
      GVM_ADD(&gb->policy.held_ns, t);
      GVM_STORE(&gb->policy.held, 0u);
      note_event(gpu, GVM_EVENT_RELEASE, 0, t / 1000);
    }
    if (klass == GVM_CLASS_BEST_EFFORT) balance_memory(gpu, &v, now, &last_need);
    if (v.hot && now - last_reap >= REAP_INTERVAL_NS) {
      reap_busy(gpu); /* a latency process killed mid-burst never marks itself idle */
      last_reap = now;
    }
    if (v.hot && wait > REAP_INTERVAL_NS) wait = REAP_INTERVAL_NS;
    if (atomic_load(&lent[gpu]) && wait > 250 * MS) wait = 250 * MS; /* to notice when lent memory fits again */
    if (wait > 1000 * MS) wait = 1000 * MS;
    if (gvm_config.policy_spin_us > 0 && klass == GVM_CLASS_BEST_EFFORT && !held) {
      uint64_t spin = (uint64_t)gvm_config.policy_spin_us * 1000;
      if (spin > wait) spin = wait;
      if (spin_for_change(b, seq, spin) || spin == wait) continue; /* a change, or the whole wait polled */
      wait -= spin;
    }
    struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ull), .tv_nsec = (long)(wait % 1000000000ull)};
    gvm_futex(&b->seq, FUTEX_WAIT, seq, &ts);
  }
  if (held) gvm_compute_policy_hold(gpu, false, gvm_config.policy_throttle, NULL);
  GVM_STORE(&gb->policy.held, 0u);
  __atomic_sub_fetch(&b->waiters, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static void start_thread(int gpu) {
  if (thread_running[gpu] || !boards[gpu]) return;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = pthread_create(&threads[gpu], NULL, policy_main, (void *)(intptr_t)gpu);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r != 0) {
    gvm_log(GVM_LOG_ERROR, "cannot start the policy thread for GPU %d: %s", gpu, strerror(r));
    return;
  }
  char name[16];
  snprintf(name, sizeof name, "gvm-policy%d", gpu);
  pthread_setname_np(threads[gpu], name);
  thread_running[gpu] = true;
}

static void apply_class(int gpu, int klass) {
  if (gpu < 0 || gpu >= GVM_MAX_GPUS) return;
  struct gvm_gpu_block *gb = &gvm_block->gpu[gpu];
  GVM_STORE(&gb->policy.klass, (uint32_t)klass);
  GVM_STORE(&gb->policy.idle_ms, (uint32_t)gvm_config.policy_idle_ms);
  GVM_STORE(&gb->policy.action, gvm_config.policy_throttle ? 1u : 0u);
  struct gvm_board_slot *s = my_slot(gpu);
  if (klass == GVM_CLASS_LATENCY) atomic_fetch_or(&gvm_policy_latency_mask, 1u << gpu);
  else atomic_fetch_and(&gvm_policy_latency_mask, ~(1u << gpu));
  if (s) {
    GVM_STORE(&s->klass, (uint32_t)klass);
    if (klass != GVM_CLASS_LATENCY && GVM_LOAD(&s->busy)) {
      GVM_STORE(&s->idle_since_ns, gvm_now_ns());
      GVM_STORE(&s->busy, 0u);
    }
    board_changed(boards[gpu]);
  }
  if (klass == GVM_CLASS_BEST_EFFORT) start_thread(gpu);
  else if (klass != GVM_CLASS_BEST_EFFORT && atomic_load(&lent[gpu])) set_lent(gpu, 0);
}

void gvm_policy_start(void) {
  pthread_mutex_lock(&start_lock);
  atomic_store(&stopping, 0);
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    if (!GVM_LOAD(&gvm_block->gpu[g].present)) continue;
    GVM_STORE(&gvm_block->gpu[g].policy.klass, (uint32_t)gvm_config.policy_class);
    boards[g] = board_open(g);
    if (boards[g]) slots[g] = claim_slot(boards[g], g);
    apply_class(g, gvm_config.policy_class);
  }
  pthread_mutex_unlock(&start_lock);
}

int gvm_policy_set_class(int gpu, int klass, char *msg, size_t room) {
  static const char *const names[] = {"none", "latency", "best-effort"};
  if (klass < 0 || klass > GVM_CLASS_BEST_EFFORT) {
    snprintf(msg, room, "policy.class must be none, latency or best-effort");
    return GVM_STATUS_INVALID;
  }
  pthread_mutex_lock(&start_lock);
  bool on_board = my_slot(gpu) != NULL;
  apply_class(gpu, klass);
  pthread_mutex_unlock(&start_lock);
  if (!on_board) {
    snprintf(msg, room, "class %s recorded, but no policy board for GPU %d (see the log)", names[klass], gpu);
    return GVM_STATUS_OK;
  }
  snprintf(msg, room, "class %s", names[klass]);
  return GVM_STATUS_OK;
}

/* At exit: stop our threads (they release their holds), then leave the boards idle and free. */
void gvm_policy_stop(void) {
  atomic_store(&stopping, 1);
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    if (!boards[g]) continue;
    __atomic_add_fetch(&boards[g]->seq, 1, __ATOMIC_SEQ_CST);
    gvm_futex(&boards[g]->seq, FUTEX_WAKE, INT32_MAX, NULL);
  }
  struct timespec deadline = gvm_realtime_in_ms(200);
  for (int g = 0; g < GVM_MAX_GPUS; g++)
    if (thread_running[g] && pthread_timedjoin_np(threads[g], NULL, &deadline) == 0) thread_running[g] = false;
  atomic_store(&gvm_policy_latency_mask, 0);
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    struct gvm_board_slot *s = my_slot(g);
    if (!s) continue;
    GVM_STORE(&s->busy, 0u);
    GVM_STORE(&s->memory_need, 0ull);
    GVM_STORE(&s->memory_current, 0ull);
    GVM_STORE(&s->locked, 0u);
    GVM_STORE(&s->pid, 0);
    board_changed(boards[g]);
    gvm_owner_lock(board_fds[g], slot_offset(slots[g]), false);
  }
}

/* Fork child: the parent's slots and threads are not ours; the child joins on its own cuInit. */
void gvm_policy_reset(void) {
  atomic_store(&gvm_policy_latency_mask, 0);
  pthread_mutex_init(&start_lock, NULL);
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    if (boards[g]) munmap(boards[g], sizeof(struct gvm_board));
    boards[g] = NULL;
    /* the parent's lock lives on in its own descriptor; closing our copy leaves it in place */
    if (board_fds[g] >= 0) close(board_fds[g]);
    board_fds[g] = -1;
    slots[g] = -1;
    thread_running[g] = false;
    atomic_store(&lent[g], 0);
    atomic_store(&cap[g], UINT64_MAX);
  }
  atomic_store(&stopping, 0);
}
