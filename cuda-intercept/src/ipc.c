/*
 * CUDA IPC for swap mode's ranges. In swap mode a cuMemAlloc of 2 MiB or more is gvm's own VMM range,
 * and the driver's legacy IPC (cuIpcGetMemHandle) refuses VMM memory, which would break every
 * program that shares device memory between processes (PyTorch's multiprocessing among them).
 *
 * Exporter: cuIpcGetMemHandle on a gvm range pins it (the mover never moves it to the host again,
 * and brings it back first if it is there), exports its physical memory as a POSIX file descriptor
 * and returns a handle that says so: a marker, the exporter's pid, the range and a per-export nonce.
 * The descriptor is handed to importers by a small server thread of the exporter's agent, started on
 * the first export, on a unix socket next to the control block (<shm dir>/.<pid>.ipc, mode 0600,
 * peers checked to be the same user), with SCM_RIGHTS. That works between any two processes of a
 * user, where pidfd_getfd would need ptrace rights that siblings often lack.
 *
 * Importer: cuIpcOpenMemHandle recognises the marker, fetches the descriptor, imports it, maps it at
 * a range of its own with access for its current device and returns that address; cuIpcCloseMemHandle
 * unmaps and releases it. Any other handle, and any pointer gvm did not convert, goes to the driver
 * unchanged. A process without the agent that is given a gvm handle gets the driver's own error for
 * a handle it does not know (CUDA_ERROR_INVALID_VALUE on the drivers we measured).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "backing.h"

static const char ipc_marker[8] = {'g', 'v', 'm', '-', 'i', 'p', 'c', 1};

struct gvm_ipc_handle {
  char marker[8];
  int32_t pid; /* the exporter, whose agent serves the descriptor */
  uint32_t gpu;
  uint64_t va, size;
  uint64_t nonce; /* a stale handle (the range freed, the address reused) finds nothing */
};
_Static_assert(sizeof(struct gvm_ipc_handle) <= sizeof(CUipcMemHandle), "gvm's handle fits the driver's");

/* what an importer asks and what the exporter answers (with the descriptor when status is 0) */
struct ipc_request {
  uint64_t va, nonce;
};
struct ipc_reply {
  int32_t status; /* 0 or a CUresult */
  uint32_t reserved;
  uint64_t size;
};

/* ---- exporter side ---- */
#define MAX_EXPORTS 1024
static struct export_entry {
  uint64_t va, size, nonce; /* va 0: free slot */
  int fd;
} exports[MAX_EXPORTS];
static _Atomic int export_count;
static pthread_mutex_t export_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static int listen_fd = -1;
static pid_t server_pid; /* the process that started the server (a forked child starts its own) */
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static bool socket_path_for(pid_t pid, char *out, size_t room) {
  int n = snprintf(out, room, "%s/.%d.ipc", gvm_config.shm_dir, (int)pid);
  return n > 0 && (size_t)n < room;
}

static void serve_one(int conn) {
  struct ucred peer;
  socklen_t len = sizeof peer;
  struct ipc_request req;
  struct ipc_reply reply = {.status = CUDA_ERROR_INVALID_VALUE};
  int fd = -1;
  /* the socket is 0600 already; the check keeps a descriptor from ever reaching another user */
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != getuid()) return;
  struct timeval tv = {2, 0};
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (recv(conn, &req, sizeof req, MSG_WAITALL) != (ssize_t)sizeof req) return;
  pthread_mutex_lock(&export_lock);
  for (int i = 0; i < MAX_EXPORTS; i++)
    if (exports[i].va && exports[i].va == req.va && exports[i].nonce == req.nonce) {
      fd = fcntl(exports[i].fd, F_DUPFD_CLOEXEC, 0); /* ours stays open for later importers */
      reply.size = exports[i].size;
      break;
    }
  pthread_mutex_unlock(&export_lock);
  if (fd >= 0) reply.status = 0;
  struct iovec iov = {&reply, sizeof reply};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  if (sendmsg(conn, &msg, MSG_NOSIGNAL) < 0) GVM_LOG_ONCE(GVM_LOG_WARN, "IPC: cannot answer an importer: %s", strerror(errno));
  if (fd >= 0) close(fd);
}

static void *server_main(void *arg) {
  int lfd = (int)(intptr_t)arg;
  for (;;) {
    int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EBADF || errno == EINVAL) return NULL; /* the socket is gone */
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL);
      continue;
    }
    serve_one(conn);
    close(conn);
  }
}

static void remove_socket(void) {
  if (server_pid == getpid() && socket_path[0]) unlink(socket_path);
}

/* Starts the descriptor server on the first export. */
static bool server_ready(void) {
  pthread_mutex_lock(&server_lock);
  if (listen_fd >= 0 && server_pid == getpid()) {
    pthread_mutex_unlock(&server_lock);
    return true;
  }
  bool ok = false;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  int fd = -1;
  if (!socket_path_for(getpid(), addr.sun_path, sizeof addr.sun_path)) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: GVM_SHM_DIR is too long for a socket path; cannot export");
  } else if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: socket: %s", strerror(errno));
  } else {
    unlink(addr.sun_path); /* a leftover of an earlier process with our pid */
    mode_t old = umask(0177);
    int b = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (b != 0 || listen(fd, 64) != 0) {
      GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: cannot listen on %s: %s", addr.sun_path, strerror(errno));
    } else {
      sigset_t all, prev;
      sigfillset(&all);
      pthread_sigmask(SIG_SETMASK, &all, &prev); /* the application's handlers never run on our thread */
      pthread_t t;
      int e = pthread_create(&t, NULL, server_main, (void *)(intptr_t)fd);
      pthread_sigmask(SIG_SETMASK, &prev, NULL);
      if (e != 0) {
        GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: cannot start the descriptor server: %s", strerror(e));
        unlink(addr.sun_path);
      } else {
        pthread_setname_np(t, "gvm-ipc");
        pthread_detach(t);
        memcpy(socket_path, addr.sun_path, sizeof socket_path);
        static bool registered;
        if (!registered && atexit(remove_socket) == 0) registered = true;
        listen_fd = fd;
        server_pid = getpid();
        ok = true;
      }
    }
  }
  if (!ok && fd >= 0) close(fd);
  pthread_mutex_unlock(&server_lock);
  return ok;
}

static uint64_t new_nonce(void) {
  static _Atomic uint64_t counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ atomic_fetch_add(&counter, 1) << 48;
  x ^= (uint64_t)getpid() << 20;
  x *= 0x9E3779B97F4A7C15ull; /* spread: nonces of one process should not look alike */
  return x ? x : 1;
}

/* The export of a range: the same one for every handle asked of it, created on the first. */
static CUresult export_range(const struct gvm_swap_pin *pin, uint64_t *nonce) {
  pthread_mutex_lock(&export_lock);
  int free_slot = -1;
  for (int i = 0; i < MAX_EXPORTS; i++) {
    if (exports[i].va == pin->va) {
      *nonce = exports[i].nonce;
      pthread_mutex_unlock(&export_lock);
      return CUDA_SUCCESS;
    }
    if (!exports[i].va && free_slot < 0) free_slot = i;
  }
  pthread_mutex_unlock(&export_lock);
  if (free_slot < 0) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: more than %d exported ranges; no more exports", MAX_EXPORTS);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  int fd = -1;
  CUresult r = GVM_REAL(cuMemExportToShareableHandle, &fd, (CUmemGenericAllocationHandle)pin->handle,
                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
  if (r != CUDA_SUCCESS) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: cuMemExportToShareableHandle failed (%d); cannot share swap-mode memory",
                 (int)r);
    return r;
  }
  pthread_mutex_lock(&export_lock);
  for (int i = 0; i < MAX_EXPORTS; i++) /* another thread may have exported it meanwhile */
    if (exports[i].va == pin->va) {
      *nonce = exports[i].nonce;
      pthread_mutex_unlock(&export_lock);
      close(fd);
      return CUDA_SUCCESS;
    }
  int slot = -1;
  for (int i = 0; i < MAX_EXPORTS && slot < 0; i++)
    if (!exports[i].va) slot = i;
  if (slot >= 0) {
    exports[slot] = (struct export_entry){pin->va, pin->size, new_nonce(), fd};
    *nonce = exports[slot].nonce;
    atomic_fetch_add(&export_count, 1);
  }
  pthread_mutex_unlock(&export_lock);
  if (slot < 0) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return CUDA_SUCCESS;
}

void gvm_ipc_forget(uint64_t va) {
  if (atomic_load_explicit(&export_count, memory_order_relaxed) == 0) return;
  pthread_mutex_lock(&export_lock);
  for (int i = 0; i < MAX_EXPORTS; i++)
    if (exports[i].va == va) {
      close(exports[i].fd);
      exports[i] = (struct export_entry){0};
      atomic_fetch_sub(&export_count, 1);
    }
  pthread_mutex_unlock(&export_lock);
}

/* Waits (up to 30 s) until the mover has brought a pinned range back to the GPU. */
static bool bring_home(struct gvm_swap_pin *pin) {
  for (int tries = 0; tries < 3; tries++) {
    if (gvm_swap_state(pin->va, pin) && pin->on_device) return true;
    if (gvm_swap_wait(30000) == UINT64_MAX) break;
  }
  return gvm_swap_state(pin->va, pin) && pin->on_device;
}

CUresult gvm_hook_cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr) {
  struct gvm_swap_pin pin;
  if (atomic_load_explicit(&gvm_active, memory_order_acquire) != 1 || !pHandle || !gvm_swap_pin(dptr, &pin))
    return GVM_REAL(cuIpcGetMemHandle, pHandle, dptr);
  if (!pin.on_device && !bring_home(&pin)) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: an exported range could not be moved back to the GPU; export refused");
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  uint64_t nonce = 0;
  CUresult r = server_ready() ? export_range(&pin, &nonce) : CUDA_ERROR_OPERATING_SYSTEM;
  if (r != CUDA_SUCCESS) return r;
  struct gvm_ipc_handle h = {.pid = (int32_t)getpid(), .gpu = (uint32_t)pin.gpu, .va = pin.va, .size = pin.size,
                             .nonce = nonce};
  memcpy(h.marker, ipc_marker, sizeof h.marker);
  memset(pHandle, 0, sizeof *pHandle);
  memcpy(pHandle->reserved, &h, sizeof h);
  return CUDA_SUCCESS;
}

/* ---- importer side ---- */
#define MAX_IMPORTS 1024
static struct import_entry {
  uint64_t va, size; /* va 0: free slot */
  CUmemGenericAllocationHandle handle;
} imports[MAX_IMPORTS];
static _Atomic int import_count;
static pthread_mutex_t import_lock = PTHREAD_MUTEX_INITIALIZER;

static bool is_gvm_handle(const CUipcMemHandle *handle, struct gvm_ipc_handle *out) {
  memcpy(out, handle->reserved, sizeof *out);
  return memcmp(out->marker, ipc_marker, sizeof ipc_marker) == 0;
}

/* Asks the exporter's agent for the range's descriptor; -1 (and a reason logged) when it cannot. */
static int fetch_fd(const struct gvm_ipc_handle *h, uint64_t *size) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (!socket_path_for((pid_t)h->pid, addr.sun_path, sizeof addr.sun_path)) return -1;
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct timeval tv = {10, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int fd = -1;
  struct ipc_request req = {h->va, h->nonce};
  struct ipc_reply reply = {.status = CUDA_ERROR_INVALID_VALUE};
  if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
    GVM_LOG_ONCE(GVM_LOG_WARN, "IPC: cannot reach process %d's agent at %s: %s (exited, or another GVM_SHM_DIR?)",
                 (int)h->pid, addr.sun_path, strerror(errno));
  } else if (send(s, &req, sizeof req, MSG_NOSIGNAL) == (ssize_t)sizeof req) {
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } control;
    struct iovec iov = {&reply, sizeof reply};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(s, &msg, MSG_WAITALL | MSG_CMSG_CLOEXEC);
    struct cmsghdr *c = n == (ssize_t)sizeof reply ? CMSG_FIRSTHDR(&msg) : NULL;
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof fd);
    if (fd >= 0 && reply.status != 0) {
      close(fd);
      fd = -1;
    }
    if (fd < 0)
      GVM_LOG_ONCE(GVM_LOG_WARN, "IPC: process %d does not export that range (freed, or a stale handle)", (int)h->pid);
  }
  close(s);
  *size = reply.size;
  return fd;
}

static CUresult open_gvm_handle(CUdeviceptr *pdptr, const struct gvm_ipc_handle *h) {
  if (!pdptr) return CUDA_ERROR_INVALID_VALUE;
  if (h->pid == (int32_t)getpid()) return CUDA_ERROR_INVALID_CONTEXT; /* as the driver: not in its own process */
  CUdevice dev = 0;
  if (GVM_REAL(cuCtxGetDevice, &dev) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  uint64_t size = 0;
  int fd = fetch_fd(h, &size);
  if (fd < 0) return CUDA_ERROR_INVALID_VALUE;
  if (size != h->size) {
    close(fd);
    return CUDA_ERROR_INVALID_VALUE;
  }
  CUmemGenericAllocationHandle handle = 0;
  CUresult r = GVM_REAL(cuMemImportFromShareableHandle, &handle, (void *)(intptr_t)fd,
                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
  close(fd); /* the driver holds its own reference once imported */
  if (r != CUDA_SUCCESS) return r;
  CUdeviceptr va = 0;
  r = GVM_REAL(cuMemAddressReserve, &va, size, GVM_BACKING_GRANULE, 0, 0);
  if (r == CUDA_SUCCESS) {
    r = gvm_backing_attach(va, size, dev, handle);
    if (r != CUDA_SUCCESS) GVM_REAL(cuMemAddressFree, va, size);
  }
  if (r != CUDA_SUCCESS) {
    GVM_REAL(cuMemRelease, handle);
    return r;
  }
  pthread_mutex_lock(&import_lock);
  int slot = -1;
  for (int i = 0; i < MAX_IMPORTS && slot < 0; i++)
    if (!imports[i].va) slot = i;
  if (slot >= 0) {
    imports[slot] = (struct import_entry){va, size, handle};
    atomic_fetch_add(&import_count, 1);
  }
  pthread_mutex_unlock(&import_lock);
  if (slot < 0) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "IPC: more than %d opened handles", MAX_IMPORTS);
    GVM_REAL(cuMemUnmap, va, size);
    GVM_REAL(cuMemAddressFree, va, size);
    GVM_REAL(cuMemRelease, handle);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  *pdptr = va;
  return CUDA_SUCCESS;
}

CUresult gvm_hook_cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int flags) {
  struct gvm_ipc_handle h;
  if (!is_gvm_handle(&handle, &h)) return GVM_REAL(cuIpcOpenMemHandle_v2, pdptr, handle, flags);
  return open_gvm_handle(pdptr, &h);
}

CUresult gvm_hook_cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int flags) {
  struct gvm_ipc_handle h;
  if (!is_gvm_handle(&handle, &h)) return GVM_REAL(cuIpcOpenMemHandle, pdptr, handle, flags);
  return open_gvm_handle(pdptr, &h);
}

CUresult gvm_hook_cuIpcCloseMemHandle(CUdeviceptr dptr) {
  struct import_entry found = {0};
  if (atomic_load_explicit(&import_count, memory_order_relaxed) > 0) {
    pthread_mutex_lock(&import_lock);
    for (int i = 0; i < MAX_IMPORTS; i++)
      if (imports[i].va && imports[i].va == dptr) {
        found = imports[i];
        imports[i] = (struct import_entry){0};
        atomic_fetch_sub(&import_count, 1);
        break;
      }
    pthread_mutex_unlock(&import_lock);
  }
  if (!found.va) return GVM_REAL(cuIpcCloseMemHandle, dptr);
  CUresult r = GVM_REAL(cuMemUnmap, found.va, found.size);
  CUresult r2 = GVM_REAL(cuMemAddressFree, found.va, found.size);
  CUresult r3 = GVM_REAL(cuMemRelease, found.handle);
  return r != CUDA_SUCCESS ? r : r2 != CUDA_SUCCESS ? r2 : r3;
}

/* A forked child shares none of the parent's CUDA state: no exports (the server thread did not
 * survive the fork either; the child starts its own on its first export) and no imports. */
static void ipc_after_fork_child(void) {
  pthread_mutex_init(&export_lock, NULL);
  pthread_mutex_init(&server_lock, NULL);
  pthread_mutex_init(&import_lock, NULL);
  for (int i = 0; i < MAX_EXPORTS; i++)
    if (exports[i].va) close(exports[i].fd);
  memset(exports, 0, sizeof exports);
  atomic_store(&export_count, 0);
  if (listen_fd >= 0) close(listen_fd);
  listen_fd = -1;
  socket_path[0] = 0;
  memset(imports, 0, sizeof imports);
  atomic_store(&import_count, 0);
}

__attribute__((constructor)) static void gvm_ipc_load(void) { pthread_atfork(NULL, NULL, ipc_after_fork_child); }
