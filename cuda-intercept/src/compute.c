/*
 * Compute control from inside the process: priority as the timeslice of every channel group (TSG)
 * of the process on a GPU, freeze as "disable scheduling of its channels, then preempt". The RM
 * controls go out on libcuda's own client and fd (only the owning client may steer its channels).
 * Where the RM path is not verified or a control fails, freeze falls back to holding launches at the
 * hook and draining in-flight work; priority then reports "unsupported" instead of pretending.
 *
 * Runs on the control thread, which never calls into libcuda, and on the ioctl path when libcuda
 * creates a TSG or channel (new ones inherit the GPU's settings).
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent.h"
#include "rm_abi.h"

#define PRIORITY_DEFAULT 8
#define DISABLE_MAX 64

struct disable_channels_params { /* NV2080_CTRL_FIFO_DISABLE_CHANNELS_PARAMS, 536 bytes */
  uint8_t disable;
  uint8_t pad0[3];
  uint32_t count;
  uint8_t only_scheduling;
  uint8_t rewind_gp_put;
  uint8_t pad1[6];
  uint64_t preempt_event; /* must be 0 from user space */
  uint32_t clients[DISABLE_MAX];
  uint32_t channels[DISABLE_MAX];
};
_Static_assert(sizeof(struct disable_channels_params) == 536, "disable channels params");
_Static_assert(offsetof(struct disable_channels_params, clients) == 24, "hClientList offset");

struct preempt_params { /* NVA06C_CTRL_PREEMPT_PARAMS */
  uint8_t wait;
  uint8_t manual_timeout;
  uint8_t pad[2];
  uint32_t timeout_us;
};
_Static_assert(sizeof(struct preempt_params) == 8, "preempt params");

struct nvos54 {
  uint32_t client, object, cmd, flags;
  uint64_t params;
  uint32_t params_size, status;
};
_Static_assert(sizeof(struct nvos54) == 32, "NVOS54");

_Atomic uint32_t gvm_soft_frozen_mask; /* bit per GPU: launches wait at the hook */
/* serialises every change of the channels' state: user freeze/thaw and the mover's quiet window */
static pthread_mutex_t control_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int rm_allowed = -1;    /* -1 unknown, 0 no, 1 yes (driver version verified) */
/*
 * The automatic policy's hold (policy.c), kept apart from the user's freeze so neither undoes the
 * other: channels run only while neither holds them. 1 = channels disabled, 2 = launches gated
 * (software), 3 = shortest timeslice. Changed under control_lock only.
 */
static _Atomic int policy_hold[GVM_MAX_GPUS];
static bool channels_held(int gpu) { return policy_hold[gpu] == 1; }

/*
 * Bumped at every change of whether a GPU's channels must be stopped (freeze, thaw, hold, release),
 * after the new state is stored and before the snapshot its controls act on. A channel's adopter runs
 * inside libcuda's ioctl, where it may not take control_lock (the mover holds it across driver
 * calls); it acts on the state it read, and acts again when the count moved meanwhile, so a thaw
 * that enabled channels just before the adopter's disable landed does not leave one disabled.
 */
static _Atomic uint32_t stop_gen[GVM_MAX_GPUS];
static void stop_state_changed(int gpu) { atomic_fetch_add(&stop_gen[gpu], 1u); }
/* the mover's quiet window is open on this GPU (gvm_compute_quiesce .. gvm_compute_resume) */
static _Atomic int quiet[GVM_MAX_GPUS];
/*
 * A policy hold asked for while the mover held control_lock: a move lasts tens of milliseconds (seconds
 * when cold), and its quiet window already stops every channel, so the window's end hands its stopped
 * channels to the hold instead of enabling them for the moment until the hold's own controls land.
 * quiet_stopped_ns is when the open window's stop of every channel completed, there the hold took
 * effect; 0 when it stopped none, or the compute channels only (GVM_SWAP_QUIESCE=compute): nothing to hand over.
 */
static _Atomic bool hold_asked[GVM_MAX_GPUS];
static uint64_t quiet_stopped_ns[GVM_MAX_GPUS]; /* under control_lock, as is handed_ns */
static uint64_t handed_ns[GVM_MAX_GPUS];       /* when a handed-over hold took effect */

/* The user froze this GPU through the RM path: its channels are disabled and stay so. */
static bool rm_frozen(int gpu) {
  return GVM_LOAD(&gvm_block->gpu[gpu].frozen) && !(atomic_load(&gvm_soft_frozen_mask) & (1u << gpu));
}

static bool driver_verified(void) {
  int v = atomic_load(&rm_allowed);
  if (v >= 0) return v == 1;
  char buf[64] = {0};
  const char *file = getenv("GVM_NVIDIA_VERSION_FILE"); /* tests, and gvm doctor reads the same */
  int fd = open(file && *file ? file : "/sys/module/nvidia/version", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
  if (fd >= 0) close(fd);
  int major = n > 0 ? atoi(buf) : 0;
  /* the control layouts were read in NVIDIA's open modules for these releases and measured on 580 */
  v = (major >= 525 && major <= 580) || getenv("GVM_RM_ANY_DRIVER") != NULL;
  if (!v) gvm_log(GVM_LOG_WARN, "NVIDIA driver %d is outside the verified 525..580: software freeze only", major);
  atomic_store(&rm_allowed, v);
  return v;
}

/* One RM control on libcuda's fd; returns the RM status (0 = NV_OK), or 0xffffffff if the ioctl failed. */
static uint32_t rm_control(int fd, uint32_t client, uint32_t object, uint32_t cmd, void *params, uint32_t size) {
  struct nvos54 c = {.client = client, .object = object, .cmd = cmd, .params = (uint64_t)(uintptr_t)params,
                     .params_size = size};
  unsigned long req = _IOC(_IOC_READ | _IOC_WRITE, RM_IOCTL_MAGIC, RM_ESC_CONTROL, sizeof c);
  if (gvm_real_ioctl(fd, req, &c) != 0) return 0xffffffffu;
  return c.status;
}

static uint64_t timeslice_for(int priority) { return 524288ull >> priority; }

static uint32_t set_timeslice(const struct gvm_rm_target *t, uint32_t tsg, uint64_t us, uint64_t *read_back) {
  uint64_t v = us;
  uint32_t st = rm_control(t->fd, t->client, tsg, RM_CMD_TSG_SET_TIMESLICE, &v, sizeof v);
  if (st) return st;
  uint64_t got = 0;
  st = rm_control(t->fd, t->client, tsg, RM_CMD_TSG_GET_TIMESLICE, &got, sizeof got);
  if (!st) *read_back = got;
  return st;
}

static uint32_t disable_channels_how(int fd, uint32_t client, uint32_t subdevice, const uint32_t *chans, uint32_t n,
                                     bool disable, bool only_scheduling) {
  for (uint32_t at = 0; at < n; at += DISABLE_MAX) {
    struct disable_channels_params p;
    memset(&p, 0, sizeof p);
    p.disable = disable;
    p.only_scheduling = only_scheduling;
    p.count = n - at < DISABLE_MAX ? n - at : DISABLE_MAX;
    for (uint32_t i = 0; i < p.count; i++) {
      p.clients[i] = client;
      p.channels[i] = chans[at + i];
    }
    uint32_t st = rm_control(fd, client, subdevice, RM_CMD_DISABLE_CHANNELS, &p, sizeof p);
    if (st) return st;
  }
  return 0;
}

static uint32_t disable_channels(int fd, uint32_t client, uint32_t subdevice, const uint32_t *chans, uint32_t n,
                                 bool disable) {
  return disable_channels_how(fd, client, subdevice, chans, n, disable, true);
}

/*
 * The user's thaw enables the channels with bOnlyDisableScheduling set (measured: 0.47 ms p50, 1.3 to
 * 3.4 ms p99 on the H100). Whether the flag changes what the RM does on enable is not documented;
 * GVM_RM_THAW=full clears it, so bench/freeze can compare the two in one session.
 */
static bool thaw_full(void) {
  static int full = -1;
  if (full < 0) {
    const char *v = getenv("GVM_RM_THAW");
    full = v && strcmp(v, "full") == 0;
  }
  return full == 1;
}

/*
 * How channels are stopped. Two ways, both measured on the H100 (bench/freeze, 100 cycles):
 *  - in one control: DISABLE_CHANNELS with bOnlyDisableScheduling=0, the RM itself makes sure none
 *    of them runs in hardware before it answers: one GSP round trip (freeze 0.62 ms p50, 1.66 p99);
 *  - in two kinds: disable their scheduling, then preempt the process's own TSGs (0.79 / 2.04 ms).
 * The one-control stop preempts at the level of the runlist, which other processes share, so it is
 * used for the user's freeze only; the policy's hold (at every burst of a latency process) and the
 * mover's quiet window preempt just the process's own TSGs. GVM_RM_STOP=preempt|disable forces one
 * way for every stop.
 */
enum stop_style { STOP_FREEZE, STOP_QUIESCE, STOP_HOLD };

static bool stop_in_one_call(enum stop_style style) {
  static int forced = -2; /* -1 none, 0 two controls, 1 one control */
  if (forced == -2) {
    const char *v = getenv("GVM_RM_STOP");
    forced = v && strcmp(v, "disable") == 0 ? 1 : v && strcmp(v, "preempt") == 0 ? 0 : -1;
  }
  return forced >= 0 ? forced == 1 : style == STOP_FREEZE;
}

static void set_mode(int gpu, uint32_t mode) { GVM_STORE(&gvm_block->gpu[gpu].control_mode, mode); }

/* An MPS control daemon is reachable: CUDA then makes this process an MPS client. */
static bool mps_pipe_present(void) {
  static int present = -1;
  if (present < 0) {
    const char *dir = getenv("CUDA_MPS_PIPE_DIRECTORY");
    char path[512];
    snprintf(path, sizeof path, "%s/control", dir && *dir ? dir : "/tmp/nvidia-mps");
    present = access(path, F_OK) == 0;
  }
  return present == 1;
}

/*
 * A context lives on the GPU, yet no channel group of this process's own RM clients exists there:
 * its work runs on channels it does not own (an MPS client's run on the MPS server's), which no
 * control issued from here can stop or reslice. Freezing must then hold launches at the hook instead
 * of answering "frozen" for channels that do not exist, and the mover must not remap memory that
 * kernels on those channels may be using.
 */
static bool channels_elsewhere(int gpu, const struct gvm_rm_target *t) {
  if (t->ntsg > 0 || GVM_LOAD(&gvm_block->gpu[gpu].contexts) == 0) return false;
  GVM_LOG_ONCE(GVM_LOG_INFO, "GPU work of this process runs on channels it does not own (%s): freeze holds launches, "
               "priority cannot be set, swap moves are off",
               mps_pipe_present() ? "an MPS client" : "no channel group seen in its RM clients");
  return true;
}

/* ---- priority ---- */
int gvm_compute_set_priority(int gpu, int priority, char *msg, size_t room) {
  struct gvm_rm_target t;
  if (!driver_verified()) {
    snprintf(msg, room, "compute.priority unsupported: RM path not verified for this driver");
    return GVM_STATUS_UNSUPPORTED;
  }
  if (!gvm_rm_snapshot(gpu, &t) || t.ntsg == 0) {
    if (channels_elsewhere(gpu, &t) && mps_pipe_present()) {
      snprintf(msg, room, "compute.priority unsupported: an MPS client; its work runs on the MPS server's channels");
      return GVM_STATUS_UNSUPPORTED;
    }
    /* no channel group yet: remember it, every TSG created later gets it */
    GVM_STORE(&gvm_block->gpu[gpu].priority, (int32_t)priority);
    snprintf(msg, room, "priority %d recorded; applied when the process creates its channels", priority);
    return GVM_STATUS_OK;
  }
  uint64_t us = timeslice_for(priority);
  /* one TSG after the other: measured on the H100, the RM serialises them (4 threads at once took
   * longer, 1.44 ms p50 against 1.0 ms) */
  for (uint32_t i = 0; i < t.ntsg; i++) {
    uint64_t got = 0;
    uint32_t st = set_timeslice(&t, t.tsg[i], us, &got);
    if (st) {
      snprintf(msg, room, "set timeslice on TSG %#x failed: RM status %#x", t.tsg[i], st);
      return GVM_STATUS_DRIVER;
    }
    gvm_rm_note_timeslice(t.client, t.tsg[i], got);
    if (got != us) {
      snprintf(msg, room, "TSG %#x reads back %llu us, not %llu", t.tsg[i], (unsigned long long)got,
               (unsigned long long)us);
      return GVM_STATUS_DRIVER;
    }
  }
  GVM_STORE(&gvm_block->gpu[gpu].priority, (int32_t)priority);
  set_mode(gpu, GVM_CONTROL_RM);
  snprintf(msg, room, "priority %d: timeslice %llu us on %u TSGs", priority, (unsigned long long)us, t.ntsg);
  return GVM_STATUS_OK;
}

/* ---- freeze ---- */
/*
 * Stopping a process's work on a GPU: disable every channel's scheduling, then preempt its TSGs.
 * Which TSGs are preempted, and whether we wait, depends on who stops them:
 *  - FREEZE: compute with bWait (the command completes once the SMs are free), copies kicked off
 *    without waiting (a failure there only leaves them disabled);
 *  - QUIESCE: every TSG with bWait (the mover needs copies stopped too);
 *  - HOLD: compute only (a copy already running finishes on its own engine; each skipped control
 *    saves an RM round trip on the critical path of another process's burst).
 * On failure the channels are enabled again; returns the RM status and *failed names the step.
 * *how says which way stopped them (for the command's answer).
 */
static uint32_t stop_channels(const struct gvm_rm_target *t, enum stop_style style, const char **failed,
                              const char **how) {
  *failed = "disable channels";
  *how = "disabled, their TSGs preempted";
  if (stop_in_one_call(style)) {
    uint32_t st = disable_channels_how(t->fd, t->client, t->subdevice, t->chan, t->nchan, true, false);
    *how = "disabled and preempted in one RM control";
    if (st == 0) return 0;
    *how = "disabled, their TSGs preempted";
    /* a driver that refuses it still has the two-control way */
    GVM_LOG_ONCE(GVM_LOG_INFO, "disabling channels with preemption returned RM status %#x; stopping them in two steps", st);
    disable_channels(t->fd, t->client, t->subdevice, t->chan, t->nchan, false);
  }
  uint32_t st = disable_channels(t->fd, t->client, t->subdevice, t->chan, t->nchan, true);
  for (uint32_t i = 0; st == 0 && i < t->ntsg; i++) {
    bool compute = t->tsg_engine[i] == RM_ENGINE_GR;
    if (!compute && style == STOP_HOLD) continue;
    struct preempt_params p = {.wait = compute || style == STOP_QUIESCE};
    uint32_t pst = rm_control(t->fd, t->client, t->tsg[i], RM_CMD_TSG_PREEMPT, &p, sizeof p);
    if (pst && !compute && style == STOP_FREEZE)
      GVM_LOG_ONCE(GVM_LOG_INFO, "preempting copy TSG %#x returned RM status %#x; its channels stay disabled", t->tsg[i], pst);
    else if (pst) {
      *failed = "preempt";
      st = pst;
    }
  }
  if (st) disable_channels(t->fd, t->client, t->subdevice, t->chan, t->nchan, false);
  return st;
}

/* Software freeze: new launches wait at the hook; wait until the GPU has finished what was queued. */
static int soft_freeze(int gpu, char *msg, size_t room, const char *why) {
  atomic_fetch_or(&gvm_soft_frozen_mask, 1u << gpu);
  GVM_STORE(&gvm_block->gpu[gpu].frozen, 1u);
  stop_state_changed(gpu);
  set_mode(gpu, GVM_CONTROL_SOFTWARE);
  gvm_monitor_kick();
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  for (int waited_ms = 0; waited_ms < 10000; waited_ms++) {
    if (GVM_LOAD(&b->kernels_ended) >= GVM_LOAD(&b->kernels_submitted)) {
      snprintf(msg, room, "software freeze (%s): launches held, in-flight work drained", why);
      return GVM_STATUS_OK;
    }
    usleep(1000);
  }
  snprintf(msg, room, "software freeze (%s): launches held, but queued work still running after 10 s", why);
  return GVM_STATUS_OK;
}

static void soft_thaw(int gpu) {
  atomic_fetch_and(&gvm_soft_frozen_mask, ~(1u << gpu));
  gvm_futex((uint32_t *)&gvm_soft_frozen_mask, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL);
}

static int freeze_locked(int gpu, bool freeze, char *msg, size_t room);

int gvm_compute_freeze(int gpu, bool freeze, char *msg, size_t room) {
  pthread_mutex_lock(&control_lock);
  int st = freeze_locked(gpu, freeze, msg, room);
  pthread_mutex_unlock(&control_lock);
  return st;
}

static int freeze_locked(int gpu, bool freeze, char *msg, size_t room) {
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  bool soft = atomic_load(&gvm_soft_frozen_mask) & (1u << gpu);
  if (!freeze) {
    if (soft && policy_hold[gpu] != 2) soft_thaw(gpu);
    struct gvm_rm_target t;
    snprintf(msg, room, "thawed");
    /* the state first, then the snapshot: see stop_gen */
    GVM_STORE(&b->frozen, 0u);
    stop_state_changed(gpu);
    if (!soft && !channels_held(gpu) && gvm_rm_snapshot(gpu, &t) && t.nchan > 0) {
      uint64_t t0 = gvm_now_ns();
      uint32_t st = disable_channels_how(t.fd, t.client, t.subdevice, t.chan, t.nchan, false, !thaw_full());
      if (st) {
        GVM_STORE(&b->frozen, 1u); /* the channels are still disabled: the process is still frozen */
        stop_state_changed(gpu);
        snprintf(msg, room, "enable channels failed: RM status %#x", st);
        return GVM_STATUS_DRIVER;
      }
      /* the RM control's own time, apart from the command's delivery: where a slow thaw is spent */
      snprintf(msg, room, "thawed: %u channels enabled in %.2f ms", t.nchan, (double)(gvm_now_ns() - t0) / 1e6);
    }
    return GVM_STATUS_OK;
  }
  if (!driver_verified()) return soft_freeze(gpu, msg, room, "driver not verified for RM controls");
  if (channels_held(gpu)) { /* the policy already stopped them: nothing runs */
    GVM_STORE(&b->frozen, 1u);
    stop_state_changed(gpu);
    snprintf(msg, room, "frozen (channels were already held by the policy)");
    return GVM_STATUS_OK;
  }
  struct gvm_rm_target t;
  if ((!gvm_rm_snapshot(gpu, &t) || t.nchan == 0) && channels_elsewhere(gpu, &t))
    return soft_freeze(gpu, msg, room, mps_pipe_present() ? "an MPS client: its channels are the MPS server's"
                                                          : "no channel of its own on this GPU");
  uint64_t t0 = gvm_now_ns();
  /* the state first, then the snapshot: a channel recorded after it is disabled by its adopter */
  GVM_STORE(&b->frozen, 1u);
  stop_state_changed(gpu);
  if (!gvm_rm_snapshot(gpu, &t) || t.nchan == 0) {
    /* nothing runs yet: channels created from now on start disabled */
    set_mode(gpu, GVM_CONTROL_RM);
    snprintf(msg, room, "frozen before the first channel; new channels start disabled");
    return GVM_STATUS_OK;
  }
  const char *failed;
  const char *how;
  uint32_t st = stop_channels(&t, STOP_FREEZE, &failed, &how);
  if (st) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "%s failed (RM status %#x); using software freeze", failed, st);
    char why[48];
    snprintf(why, sizeof why, "RM refused %s", failed);
    return soft_freeze(gpu, msg, room, why);
  }
  set_mode(gpu, GVM_CONTROL_RM);
  snprintf(msg, room, "frozen: %u channels of %u TSGs %s in %.2f ms", t.nchan, t.ntsg, how,
           (double)(gvm_now_ns() - t0) / 1e6);
  return GVM_STATUS_OK;
}

/*
 * The mover's quiet window: every channel of the application stopped on this GPU, so nothing reads
 * or writes a range while its physical side changes. The mover copies on its own context, whose
 * channels are not the application's. Holds control_lock until gvm_compute_resume, so a user's thaw
 * waits for the move to finish. False (and no lock held) when the RM path is not available.
 */
/*
 * Which of the application's channels a move stops (GVM_SWAP_QUIESCE=all|compute).
 * The default stops all of them, copies included, so nothing the application queued can touch a
 * range while it moves; the mover copies on its own context, whose channels are never stopped.
 */
static int quiesce_style(void) {
  static int style = -1;
  if (style < 0) {
    const char *v = getenv("GVM_SWAP_QUIESCE");
    style = v && strcmp(v, "compute") == 0 ? 1 : 0;
  }
  return style;
}

static void set_quiet(int gpu, int on) {
  quiet[gpu] = on;
  stop_state_changed(gpu);
}

bool gvm_compute_quiesce(int gpu) {
  if (!driver_verified()) return false;
  pthread_mutex_lock(&control_lock);
  struct gvm_rm_target t;
  if (rm_frozen(gpu) || channels_held(gpu)) return true;
  int style = quiesce_style();
  /* the state first, then the snapshot: a channel made during the move (a new context's) starts
   * disabled, and resume enables it with the rest. Not with compute-only stops: resume would then
   * enable the compute channels alone, and a new context's copy channels would stay disabled. */
  if (style == 0) set_quiet(gpu, 1);
  if (!gvm_rm_snapshot(gpu, &t) || t.nchan == 0) {
    if (!channels_elsewhere(gpu, &t)) return true; /* no context, no channel: nothing can run */
    if (style == 0) set_quiet(gpu, 0);
    pthread_mutex_unlock(&control_lock);
    return false;
  }
  if (style == 1) gvm_rm_compute_only(&t);
  const char *failed;
  const char *how;
  uint32_t st = stop_channels(&t, STOP_QUIESCE, &failed, &how);
  if (st) {
    if (style == 0) set_quiet(gpu, 0);
    pthread_mutex_unlock(&control_lock);
    GVM_LOG_ONCE(GVM_LOG_WARN, "cannot stop the process's channels for a move (RM status %#x)", st);
    return false;
  }
  if (style == 0) quiet_stopped_ns[gpu] = gvm_now_ns(); /* only a window over every channel hands over */
  return true;
}

void gvm_compute_resume(int gpu) {
  struct gvm_rm_target t;
  /* the hold's state goes in before the window's comes out, so new channels never see neither */
  if (atomic_load(&hold_asked[gpu]) && !policy_hold[gpu] && quiet_stopped_ns[gpu]) {
    policy_hold[gpu] = 1;
    handed_ns[gpu] = quiet_stopped_ns[gpu];
    stop_state_changed(gpu);
  }
  quiet_stopped_ns[gpu] = 0;
  if (quiet[gpu]) set_quiet(gpu, 0);
  /* as quiesce decided: what the user's RM freeze or the policy holds stays stopped */
  bool stays_stopped = rm_frozen(gpu) || channels_held(gpu);
  if (!stays_stopped && gvm_rm_snapshot(gpu, &t) && t.nchan > 0 && (quiesce_style() != 1 || gvm_rm_compute_only(&t)))
    disable_channels(t.fd, t.client, t.subdevice, t.chan, t.nchan, false);
  pthread_mutex_unlock(&control_lock);
}

/* ---- objects libcuda creates later inherit the GPU's settings (called outside the RM lock) ---- */

/* Channels of this GPU must not run: the user froze it through the RM path, the policy holds it, or
 * the mover is moving its memory. */
static bool new_channels_stopped(int gpu) { return rm_frozen(gpu) || channels_held(gpu) || quiet[gpu]; }

/* Channels libcuda just made or scheduled follow the GPU's state, re-read until no change raced it. */
static void channels_follow_state(int gpu, int fd, uint32_t client, uint32_t subdevice, const uint32_t *chans,
                                  uint32_t n, const char *what) {
  bool disabled = false; /* by us: what libcuda left them in otherwise */
  for (int round = 0; round < 16; round++) {
    uint32_t gen = atomic_load(&stop_gen[gpu]);
    bool stop = new_channels_stopped(gpu);
    if (stop != disabled) {
      uint32_t st = disable_channels(fd, client, subdevice, chans, n, stop);
      if (st) {
        GVM_LOG_ONCE(GVM_LOG_WARN, "%s: %u channel(s) could not be %s: RM status %#x", what, n,
                     stop ? "disabled" : "enabled again", st);
        return;
      }
      disabled = stop;
    }
    if (atomic_load(&stop_gen[gpu]) == gen) return;
  }
}

void gvm_compute_adopt(int gpu, int fd, uint32_t client, uint32_t subdevice, uint32_t klass, uint32_t handle) {
  if (!gvm_block || gpu < 0 || gpu >= GVM_MAX_GPUS) return;
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  int held = policy_hold[gpu]; /* read without the lock: a hold racing a new object is re-applied at release */
  bool wants_timeslice = klass == RM_CLASS_TSG && (GVM_LOAD(&b->priority) != PRIORITY_DEFAULT || held == 3);
  bool wants_disable = klass != RM_CLASS_TSG && new_channels_stopped(gpu);
  if ((!wants_timeslice && !wants_disable) || !driver_verified()) return;
  if (klass == RM_CLASS_TSG) {
    int prio = held == 3 ? 15 : GVM_LOAD(&b->priority);
    struct gvm_rm_target t = {.fd = fd, .client = client};
    uint64_t got = 0;
    uint32_t st = set_timeslice(&t, handle, timeslice_for(prio), &got);
    if (st) GVM_LOG_ONCE(GVM_LOG_WARN, "new TSG %#x kept the default timeslice: RM status %#x", handle, st);
    else gvm_rm_note_timeslice(client, handle, got);
  } else if (subdevice) {
    channels_follow_state(gpu, fd, client, subdevice, &handle, 1, "a channel created while frozen");
  }
}

void gvm_compute_channels_scheduled(int gpu, int fd, uint32_t client, uint32_t subdevice, const uint32_t *chans, uint32_t n) {
  if (!gvm_block || gpu < 0 || gpu >= GVM_MAX_GPUS || n == 0 || !subdevice || !driver_verified()) return;
  channels_follow_state(gpu, fd, client, subdevice, chans, n, "channels scheduled while frozen");
}

/*
 * The policy's hold on a best-effort process: stop its channels (or gate its launches where the RM
 * path is unavailable, or shorten its timeslice with throttle) without touching the user's freeze
 * state. Release restores exactly what the hold changed. Returns 0 on success, else an RM status.
 */
static uint32_t set_all_timeslices(const struct gvm_rm_target *t, int priority) {
  for (uint32_t i = 0; i < t->ntsg; i++) {
    uint64_t v = timeslice_for(priority);
    /* no read-back here: the hold sits on the critical path of another process's burst */
    uint32_t st = rm_control(t->fd, t->client, t->tsg[i], RM_CMD_TSG_SET_TIMESLICE, &v, sizeof v);
    if (st) return st;
    gvm_rm_note_timeslice(t->client, t->tsg[i], v);
  }
  return 0;
}

uint32_t gvm_compute_policy_hold(int gpu, bool hold, bool throttle, struct gvm_hold_timing *timing) {
  uint32_t st = 0;
  if (timing) timing->asked_ns = gvm_now_ns();
  if (hold && !throttle) atomic_store(&hold_asked[gpu], true);
  pthread_mutex_lock(&control_lock);
  atomic_store(&hold_asked[gpu], false);
  if (timing) timing->locked_ns = gvm_now_ns();
  if (hold && policy_hold[gpu] == 1 && handed_ns[gpu]) { /* a move's end handed its stopped channels over */
    if (timing) timing->stopped_ns = handed_ns[gpu];
    handed_ns[gpu] = 0;
    pthread_mutex_unlock(&control_lock);
    return 0;
  }
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  struct gvm_rm_target t;
  bool have = driver_verified() && gvm_rm_snapshot(gpu, &t) && t.nchan > 0;
  if (hold && !policy_hold[gpu]) {
    bool user_frozen = GVM_LOAD(&b->frozen);
    if (throttle && !have)
      GVM_LOG_ONCE(GVM_LOG_WARN, "the policy's throttle needs this process's own channels (none here): it is not throttled");
    if (throttle && have) {
      st = set_all_timeslices(&t, 15);
      if (!st) policy_hold[gpu] = 3;
    } else if (have && !(atomic_load(&gvm_soft_frozen_mask) & (1u << gpu))) {
      const char *failed;
      const char *how;
      policy_hold[gpu] = 1; /* the state first, then the snapshot: see stop_gen */
      stop_state_changed(gpu);
      gvm_rm_snapshot(gpu, &t);
      st = user_frozen ? 0 : stop_channels(&t, STOP_HOLD, &failed, &how);
      if (st) {
        policy_hold[gpu] = 0;
        stop_state_changed(gpu);
      }
    }
    if (!policy_hold[gpu] && !throttle) { /* no RM path (or it refused): hold launches at the hook */
      atomic_fetch_or(&gvm_soft_frozen_mask, 1u << gpu);
      policy_hold[gpu] = 2;
      st = 0;
    }
  } else if (!hold && policy_hold[gpu]) {
    int was = policy_hold[gpu];
    policy_hold[gpu] = 0;
    handed_ns[gpu] = 0;
    stop_state_changed(gpu);
    if (was == 3 && have) st = set_all_timeslices(&t, GVM_LOAD(&b->priority));
    else if (was == 1 && have && !GVM_LOAD(&b->frozen) && gvm_rm_snapshot(gpu, &t)) /* again, after the state */
      st = disable_channels(t.fd, t.client, t.subdevice, t.chan, t.nchan, false);
    else if (was == 2 && !(GVM_LOAD(&b->frozen) && GVM_LOAD(&b->control_mode) == GVM_CONTROL_SOFTWARE))
      soft_thaw(gpu);
  }
  if (timing) timing->stopped_ns = gvm_now_ns();
  pthread_mutex_unlock(&control_lock);
  return st;
}

/* ---- the launch gate of the software freeze ---- */
void gvm_launch_gate_wait(void) {
  int gpu = gvm_current_gpu();
  if (gpu < 0) gpu = 0;
  for (;;) {
    uint32_t mask = atomic_load(&gvm_soft_frozen_mask);
    if (!(mask & (1u << gpu))) return;
    gvm_futex((uint32_t *)&gvm_soft_frozen_mask, FUTEX_WAIT_PRIVATE, mask, NULL);
  }
}

/* At exit: never leave channels disabled behind us, or the driver's own teardown could wait forever. */
void gvm_compute_release_all(void) {
  if (!gvm_block) return;
  for (int g = 0; g < GVM_MAX_GPUS; g++) {
    if (policy_hold[g]) gvm_compute_policy_hold(g, false, false, NULL);
    if (!GVM_LOAD(&gvm_block->gpu[g].frozen)) continue;
    char msg[GVM_MESSAGE_MAX];
    gvm_compute_freeze(g, false, msg, sizeof msg);
  }
}

void gvm_compute_reset(void) {
  atomic_store(&gvm_soft_frozen_mask, 0);
  memset(policy_hold, 0, sizeof policy_hold);
  memset(hold_asked, 0, sizeof hold_asked);
  memset(quiet_stopped_ns, 0, sizeof quiet_stopped_ns);
  memset(handed_ns, 0, sizeof handed_ns);
  memset(quiet, 0, sizeof quiet); /* a fork during a move: the child has no mover and no move */
  pthread_mutex_init(&control_lock, NULL);
}
