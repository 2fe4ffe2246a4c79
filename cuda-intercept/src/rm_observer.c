/*
 * Watching libcuda talk to the NVIDIA resource manager (RM) through libc ioctl, to learn the
 * process's own RM client, subdevice, channel groups (TSGs) and channels per GPU. Only a process's
 * own client may steer its channels, so this is how the agent will later set timeslices and freeze.
 * Byte layouts: ../shared/notes/rm-controls.md and NVIDIA's nvos.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "agent.h"
#include "rm_abi.h"

#define MAX_OBJECTS 2048

struct rm_object {
  uint32_t client, parent, handle, klass;
  uint32_t engine; /* TSG: engine type; device: deviceId */
  int32_t fd;
  int32_t gpu;     /* CUDA ordinal, -1 unknown */
  bool used;
  uint64_t timeslice_us; /* TSG: last value read back; 0 = not known */
};

static struct rm_object objects[MAX_OBJECTS];
static pthread_mutex_t rm_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int creating_gpu = -1;
static int trace_fd = -1;
static pthread_once_t trace_once = PTHREAD_ONCE_INIT;

void gvm_rm_set_creating_gpu(int gpu) { creating_gpu = gpu; }

static struct rm_object *lookup(uint32_t client, uint32_t handle) {
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && objects[i].client == client && objects[i].handle == handle) return &objects[i];
  return NULL;
}

static bool is_channel(uint32_t klass) { return (klass & 0xffu) == 0x6fu && klass > 0xffu; }
static bool tracked(uint32_t klass) {
  return klass == RM_CLASS_DEVICE || klass == RM_CLASS_SUBDEVICE || klass == RM_CLASS_TSG || is_channel(klass);
}

/* A device object learns its GPU from the first tagged child; pass it down to its subdevices. */
static void adopt_gpu(struct rm_object *dev, int gpu) {
  if (!dev || dev->gpu >= 0 || gpu < 0) return;
  dev->gpu = gpu;
  for (int i = 0; i < MAX_OBJECTS; i++)
    if (objects[i].used && objects[i].client == dev->client && objects[i].parent == dev->handle &&
        objects[i].gpu < 0)
      objects[i].gpu = gpu;
}

static void record_alloc(int fd, uint32_t client, uint32_t parent, uint32_t handle, uint32_t klass,
                         const uint8_t *params, uint32_t params_size) {
  if (!tracked(klass)) return;
  struct rm_object *slot = lookup(client, handle);
  for (int i = 0; !slot && i < MAX_OBJECTS; i++)
    if (!objects[i].used) slot = &objects[i];
  if (!slot) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "more than %d RM objects; later ones are not tracked", MAX_OBJECTS);
    return;
  }
  uint32_t engine = 0;
  if ((klass == RM_CLASS_TSG && params && params_size >= 16) || (klass == RM_CLASS_DEVICE && params && params_size >= 4))
    memcpy(&engine, params + (klass == RM_CLASS_TSG ? RM_TSG_ENGINE_TYPE_OFFSET : 0), 4);
  struct rm_object *up = lookup(client, parent);
  /* -1: not tagged (inherit from the parent); >= 0: a CUDA ordinal; < -1: the agent's own objects */
  int gpu = creating_gpu != -1 ? creating_gpu : (up ? up->gpu : -1);
  *slot = (struct rm_object){client, parent, handle, klass, engine, fd, gpu, true, 0};
  if (gpu >= 0 && up && up->klass == RM_CLASS_DEVICE) adopt_gpu(up, gpu);
  if (gpu >= 0 && up && up->klass == RM_CLASS_TSG) {
    struct rm_object *dev = lookup(client, up->parent);
    if (up->gpu < 0) up->gpu = gpu;
    adopt_gpu(dev, gpu);
  }
}

static void forget_tree(uint32_t client, uint32_t handle, int depth) {
  if (depth > 8) return;
  for (int i = 0; i < MAX_OBJECTS; i++) {
    if (!objects[i].used || objects[i].client != client) continue;
    if (objects[i].handle == handle) objects[i].used = false;
    else if (objects[i].parent == handle) forget_tree(client, objects[i].handle, depth + 1);
  }
}

static void record_free(uint32_t client, uint32_t handle) {
  if (handle == client) {
    for (int i = 0; i < MAX_OBJECTS; i++)
      if (objects[i].client == client) objects[i].used = false;
    return;
  }
  forget_tree(client, handle, 0);
}

/* ---- publishing per GPU, under the block's seqlock ---- */
static void publish_gpu(int gpu) {
  struct gvm_gpu_block *b = &gvm_block->gpu[gpu];
  /* the client and fd that own the compute TSG are the ones that may steer it */
  const struct rm_object *tsg0 = NULL;
  for (int i = 0; i < MAX_OBJECTS && !tsg0; i++)
    if (objects[i].used && objects[i].gpu == gpu && objects[i].klass == RM_CLASS_TSG &&
        objects[i].engine == RM_ENGINE_GR)
      tsg0 = &objects[i];
  const struct rm_object *subdev = NULL;
  for (int i = 0; i < MAX_OBJECTS && tsg0 && !subdev; i++)
    if (objects[i].used && objects[i].klass == RM_CLASS_SUBDEVICE && objects[i].client == tsg0->client &&
        objects[i].parent == tsg0->parent)
      subdev = &objects[i];

  uint32_t seq = __atomic_load_n(&b->rm_seq, __ATOMIC_RELAXED);
  __atomic_store_n(&b->rm_seq, seq + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  b->rm_fd = tsg0 ? tsg0->fd : -1;
  b->rm_client = tsg0 ? tsg0->client : 0;
  b->rm_device = tsg0 ? tsg0->parent : 0;
  b->rm_subdevice = subdev ? subdev->handle : 0;
  uint32_t ntsg = 0, nchan = 0;
  for (int i = 0; i < MAX_OBJECTS; i++) {
    const struct rm_object *t = &objects[i];
    if (!t->used || t->gpu != gpu || t->klass != RM_CLASS_TSG || (tsg0 && t->client != tsg0->client)) continue;
    uint32_t chans = 0;
    for (int j = 0; j < MAX_OBJECTS; j++) {
      const struct rm_object *c = &objects[j];
      if (!c->used || c->client != t->client || c->parent != t->handle || !is_channel(c->klass)) continue;
      chans++;
      if (nchan < GVM_MAX_CHANNELS)
        b->channel[nchan++] = (struct gvm_channel_info){.handle = c->handle, .tsg = t->handle, .class_id = c->klass};
    }
    if (ntsg < GVM_MAX_TSGS)
      b->tsg[ntsg++] = (struct gvm_tsg_info){.handle = t->handle, .engine_type = t->engine, .channel_count = chans,
                                             .parent = t->parent, .timeslice_us = t->timeslice_us};
  }
  b->tsg_count = ntsg;
  b->channel_count = nchan;
  __atomic_store_n(&b->rm_seq, seq + 2, __ATOMIC_RELEASE);
}

void gvm_rm_publish_all(void) {
  if (!gvm_block) return;
  pthread_mutex_lock(&rm_lock);
  for (int g = 0; g < GVM_MAX_GPUS; g++)
    if (GVM_LOAD(&gvm_block->gpu[g].present)) publish_gpu(g);
  pthread_mutex_unlock(&rm_lock);
}

/* The owning client's fd, subdevice, TSGs and channels of one GPU, copied under the lock. */
bool gvm_rm_snapshot(int gpu, struct gvm_rm_target *out) {
  memset(out, 0, sizeof *out);
  out->fd = -1;
  pthread_mutex_lock(&rm_lock);
  const struct rm_object *tsg0 = NULL;
  for (int i = 0; i < MAX_OBJECTS && !tsg0; i++)
    if (objects[i].used && objects[i].gpu == gpu && objects[i].klass == RM_CLASS_TSG && objects[i].engine == RM_ENGINE_GR)
      tsg0 = &objects[i];
  if (tsg0) {
    out->fd = tsg0->fd;
    out->client = tsg0->client;
    for (int i = 0; i < MAX_OBJECTS; i++) {
      const struct rm_object *o = &objects[i];
      if (!o->used || o->client != tsg0->client) continue;
      if (o->klass == RM_CLASS_SUBDEVICE && o->parent == tsg0->parent) out->subdevice = o->handle;
      if (o->klass == RM_CLASS_TSG && o->gpu == gpu && out->ntsg < GVM_MAX_TSGS) {
        out->tsg_engine[out->ntsg] = o->engine;
        out->tsg[out->ntsg++] = o->handle;
      }
    }
    for (int i = 0; i < MAX_OBJECTS; i++) {
      const struct rm_object *c = &objects[i];
      if (!c->used || c->client != tsg0->client || !is_channel(c->klass) || out->nchan >= GVM_MAX_CHANNELS) continue;
      for (uint32_t k = 0; k < out->ntsg; k++)
        if (c->parent == out->tsg[k]) {
          out->chan[out->nchan++] = c->handle;
          break;
        }
    }
  }
  pthread_mutex_unlock(&rm_lock);
  return tsg0 != NULL && out->subdevice != 0;
}

/* Narrows a target to its compute (GR) channel groups and their channels; true if any remain. */
bool gvm_rm_compute_only(struct gvm_rm_target *t) {
  uint32_t ntsg = 0, nchan = 0;
  uint32_t keep[GVM_MAX_TSGS];
  pthread_mutex_lock(&rm_lock);
  for (uint32_t i = 0; i < t->ntsg; i++)
    if (t->tsg_engine[i] == RM_ENGINE_GR) {
      keep[ntsg] = t->tsg[i];
      t->tsg_engine[ntsg] = t->tsg_engine[i];
      t->tsg[ntsg++] = t->tsg[i];
    }
  for (uint32_t i = 0; i < t->nchan; i++) {
    const struct rm_object *c = lookup(t->client, t->chan[i]);
    for (uint32_t k = 0; c && k < ntsg; k++)
      if (c->parent == keep[k]) {
        t->chan[nchan++] = t->chan[i];
        break;
      }
  }
  pthread_mutex_unlock(&rm_lock);
  t->ntsg = ntsg;
  t->nchan = nchan;
  return nchan > 0;
}

void gvm_rm_note_timeslice(uint32_t client, uint32_t tsg, uint64_t us) {
  pthread_mutex_lock(&rm_lock);
  struct rm_object *o = lookup(client, tsg);
  if (o) o->timeslice_us = us;
  pthread_mutex_unlock(&rm_lock);
  gvm_rm_publish_all();
}

/* ---- trace of raw RM traffic (GVM_RM_TRACE=path), to record byte sequences for tests ---- */
static void open_trace(void) {
  if (gvm_config.rm_trace[0])
    trace_fd = open(gvm_config.rm_trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

static int hex(char *out, size_t room, const void *data, size_t n) {
  static const char digits[] = "0123456789abcdef";
  const uint8_t *p = data;
  size_t w = 0;
  for (size_t i = 0; i < n && w + 2 < room; i++) {
    out[w++] = digits[p[i] >> 4];
    out[w++] = digits[p[i] & 15];
  }
  if (w == 0 && room > 1) out[w++] = '-';
  out[w] = 0;
  return (int)w;
}

static void trace(int fd, unsigned nr, unsigned size, const void *arg, int ret, const void *params, size_t psize) {
  pthread_once(&trace_once, open_trace);
  if (trace_fd < 0) return;
  char line[6144];
  /* the creating-GPU tag goes with each line so a replay attributes objects as the agent did */
  int n = snprintf(line, sizeof line, "%02x %d %u %d %d ", nr, fd, size, ret, creating_gpu);
  n += hex(line + n, sizeof line - (size_t)n, arg, size);
  line[n++] = ' ';
  n += hex(line + n, sizeof line - (size_t)n, params, params ? psize : 0);
  line[n++] = '\n';
  ssize_t w = write(trace_fd, line, (size_t)n);
  (void)w;
}

/* ---- the observer ---- */

/* The subdevice of the client's device that is `tsg`'s parent, where channel controls go. Under rm_lock. */
static uint32_t subdevice_of_tsg(const struct rm_object *tsg) {
  for (int i = 0; tsg && i < MAX_OBJECTS; i++)
    if (objects[i].used && objects[i].klass == RM_CLASS_SUBDEVICE && objects[i].client == tsg->client &&
        objects[i].parent == tsg->parent)
      return objects[i].handle;
  return 0;
}

/*
 * libcuda schedules a TSG once it has made its channels (GPFIFO_SCHEDULE on the group; the channel verb
 * exists too), and a schedule with bSkipEnable clear enables the channels. On the H100 that undid the
 * disable the agent gives each channel created while the GPU is frozen (a PyTorch process frozen before
 * its first context ran 78 iterations), so the settings in force are applied again after it.
 */
static void scheduled(int fd, uint32_t client, uint32_t object) {
  uint32_t chans[GVM_MAX_CHANNELS];
  uint32_t n = 0, subdevice = 0;
  int gpu = -1;
  pthread_mutex_lock(&rm_lock);
  const struct rm_object *o = lookup(client, object);
  const struct rm_object *tsg = o && is_channel(o->klass) ? lookup(client, o->parent) : o;
  if (tsg && tsg->klass == RM_CLASS_TSG) {
    gpu = tsg->gpu;
    subdevice = subdevice_of_tsg(tsg);
    if (o != tsg) {
      chans[n++] = object; /* the channel verb: that channel only */
    } else {
      for (int i = 0; i < MAX_OBJECTS && n < GVM_MAX_CHANNELS; i++)
        if (objects[i].used && objects[i].client == client && objects[i].parent == object && is_channel(objects[i].klass))
          chans[n++] = objects[i].handle;
    }
  }
  pthread_mutex_unlock(&rm_lock);
  if (gpu >= 0) gvm_compute_channels_scheduled(gpu, fd, client, subdevice, chans, n);
}

static uint32_t alloc_params_known(uint32_t klass) {
  if (klass == RM_CLASS_TSG) return 16;
  if (klass == RM_CLASS_DEVICE || klass == RM_CLASS_SUBDEVICE) return 4;
  return 0;
}

void gvm_rm_observe(int fd, unsigned nr, unsigned size, const void *arg, int ret) {
  if (!arg) return;
  const uint8_t *a = arg;
  uint32_t w[4];
  if (size < 16) return;
  memcpy(w, a, 16);
  const uint8_t *params = NULL;
  uint32_t psize = 0, status = 1;
  if (nr == RM_ESC_ALLOC) {
    /* NVOS21 (32 bytes) and NVOS64 (48 bytes; 40 on some older drivers, without flags) */
    uint64_t p;
    if (size != 32 && size != 40 && size != 48) return;
    memcpy(&p, a + 16, 8);
    memcpy(&psize, a + (size == 32 ? 24 : 32), 4);
    memcpy(&status, a + (size == 32 ? 28 : size == 40 ? 36 : 40), 4);
    params = (const uint8_t *)(uintptr_t)p;
  } else if (nr == RM_ESC_CONTROL) {
    uint64_t p;
    if (size != 32) return;
    memcpy(&p, a + 16, 8);
    memcpy(&psize, a + 24, 4);
    memcpy(&status, a + 28, 4);
    params = (const uint8_t *)(uintptr_t)p;
  } else if (nr == RM_ESC_FREE) {
    status = w[3];
  } else {
    return;
  }
  /* libcuda passes paramsSize 0 for allocations (the RM knows each class's size): read what we need */
  if (nr == RM_ESC_ALLOC && psize == 0 && params) psize = alloc_params_known(w[3]);
  if (gvm_config.rm_trace[0]) trace(fd, nr, size, arg, ret, params, psize > 4096 ? 4096 : psize);
  if (ret != 0 || status != 0) return;
  int adopt_gpu = -1;
  uint32_t adopt_subdevice = 0;
  if (nr == RM_ESC_CONTROL) {
    if ((w[2] == RM_CMD_TSG_SCHEDULE || w[2] == RM_CMD_CHANNEL_SCHEDULE) && params && psize >= 1 && params[0] == 1)
      scheduled(fd, w[0], w[1]);
    return;
  }
  pthread_mutex_lock(&rm_lock);
  if (nr == RM_ESC_ALLOC) {
    record_alloc(fd, w[0], w[1], w[2], w[3], params, psize);
    const struct rm_object *o = lookup(w[0], w[2]);
    if (o && (o->klass == RM_CLASS_TSG || is_channel(o->klass))) {
      adopt_gpu = o->gpu;
      /* a channel's subdevice: same client, child of the device that is the TSG's parent */
      adopt_subdevice = subdevice_of_tsg(o->klass == RM_CLASS_TSG ? o : lookup(w[0], o->parent));
    }
  } else if (nr == RM_ESC_FREE) {
    record_free(w[0], w[2]);
  }
  pthread_mutex_unlock(&rm_lock);
  gvm_rm_publish_all();
  /* settings in force reach objects created later (RM calls made outside our lock) */
  if (adopt_gpu >= 0) gvm_compute_adopt(adopt_gpu, fd, w[0], adopt_subdevice, w[3], w[2]);
}

void gvm_rm_reset(void) {
  pthread_mutex_init(&rm_lock, NULL);
  memset(objects, 0, sizeof objects);
}

/* ---- libc ioctl interposition ---- */
typedef int (*ioctl_fn)(int, unsigned long, ...);
static ioctl_fn real_ioctl;

static ioctl_fn find_real_ioctl(void) {
  ioctl_fn real = __atomic_load_n(&real_ioctl, __ATOMIC_ACQUIRE);
  if (GVM_UNLIKELY(!real)) {
    real = (ioctl_fn)gvm_real_dlsym(RTLD_NEXT_HANDLE, "ioctl");
    if (real) __atomic_store_n(&real_ioctl, real, __ATOMIC_RELEASE);
  }
  return real;
}

/* The agent's own RM calls: straight to the driver, not observed. */
int gvm_real_ioctl(int fd, unsigned long request, void *arg) {
  ioctl_fn real = find_real_ioctl();
  if (!real) {
    errno = ENOSYS;
    return -1;
  }
  return real(fd, request, arg);
}

__attribute__((visibility("default"))) int ioctl(int fd, unsigned long request, ...) {
  va_list ap;
  va_start(ap, request);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  ioctl_fn real = find_real_ioctl();
  if (GVM_UNLIKELY(!real)) {
    errno = ENOSYS;
    return -1;
  }
  int ret = real(fd, request, arg);
  if (_IOC_TYPE(request) != RM_IOCTL_MAGIC || gvm_config.disabled) return ret;
  unsigned nr = _IOC_NR(request);
  if (nr == RM_ESC_ALLOC || nr == RM_ESC_CONTROL || nr == RM_ESC_FREE) {
    int saved = errno;
    gvm_rm_observe(fd, nr, _IOC_SIZE(request), arg, ret);
    errno = saved;
  }
  return ret;
}
