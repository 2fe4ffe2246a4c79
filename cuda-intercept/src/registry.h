/*
 * A map from a 64-bit key (device pointer, host pointer, VMM handle or address) to what gvm knows of
 * that allocation. Allocation paths only: guarded by one mutex, never held across a driver call.
 */
#ifndef GVM_REGISTRY_H
#define GVM_REGISTRY_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <cuda.h>

enum gvm_alloc_kind {
  GVM_ALLOC_DEVICE = 1,  /* cuMemAlloc, pitch */
  GVM_ALLOC_MANAGED,     /* cuMemAllocManaged */
  GVM_ALLOC_ASYNC,       /* stream-ordered, from a pool */
  GVM_ALLOC_HOST,        /* cuMemAllocHost, cuMemHostAlloc */
  GVM_ALLOC_HOST_REG,    /* cuMemHostRegister */
  GVM_ALLOC_VMM_HANDLE,  /* cuMemCreate */
  GVM_ALLOC_VMM_MAPPING, /* cuMemMap: key is the virtual address */
  GVM_ALLOC_SWAPPABLE    /* swap mode: cuMemAlloc made as gvm's own VMM range; aux = physical handle */
};

struct gvm_alloc {
  uint64_t size;
  uint64_t aux;  /* ASYNC: pool; VMM_MAPPING: handle */
  CUcontext ctx; /* owning context, for cleanup when it is destroyed */
  int32_t gpu;
  uint8_t kind;
  uint8_t released;   /* VMM_HANDLE: cuMemRelease seen */
  uint8_t on_device;  /* VMM_HANDLE, SWAPPABLE: physical memory on the GPU */
  uint8_t moving;     /* SWAPPABLE: the mover is changing its physical side; frees wait */
  uint8_t pinned;     /* SWAPPABLE: exported through CUDA IPC, so it stays on the GPU */
  uint32_t map_count; /* VMM_HANDLE: live mappings */
  uint64_t seq;       /* SWAPPABLE: allocation order, oldest moves out first */
};

struct gvm_registry_slot {
  uint64_t key; /* 0 = empty */
  struct gvm_alloc value;
};

struct gvm_registry {
  pthread_mutex_t lock;
  struct gvm_registry_slot *slots;
  uint64_t capacity; /* power of two */
  uint64_t count;
};

void gvm_registry_init(struct gvm_registry *r);
/* callers hold r->lock for the functions below */
bool gvm_registry_put(struct gvm_registry *r, uint64_t key, const struct gvm_alloc *v);
struct gvm_alloc *gvm_registry_get(struct gvm_registry *r, uint64_t key);
bool gvm_registry_take(struct gvm_registry *r, uint64_t key, struct gvm_alloc *out);
/* visits every entry; the visitor returns true to remove the entry */
void gvm_registry_sweep(struct gvm_registry *r, bool (*visit)(uint64_t key, struct gvm_alloc *v, void *arg),
                        void *arg);

#endif
