/* Linear memory: device, managed, pinned host and registered host ranges, plus
 * the synchronous copies and memsets. Device memory is anonymous host memory,
 * so device pointers are real addresses and copies are plain memmove. Only
 * device allocations (here, in pools and VMM) count against a device's total. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

pthread_mutex_t g_mem = PTHREAD_MUTEX_INITIALIZER;
static fake_block_t *g_blocks; /* sorted by base */
static size_t g_nblocks, g_capblocks;

static size_t page_round(size_t n)
{
    size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return (n + p - 1) / p * p;
}

void *fake_map_anon(size_t bytes)
{
    /* NORESERVE: a test may "allocate" gigabytes and never touch them. */
    void *p = mmap(NULL, page_round(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* The v1 ABI carries 32-bit device pointers; MAP_32BIT keeps them representable. */
static void *map_anon_low(size_t bytes)
{
    void *p = mmap(NULL, page_round(bytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_32BIT, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static size_t lower_bound(uintptr_t addr)
{
    size_t lo = 0, hi = g_nblocks;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_blocks[mid].base < addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int fake_mem_insert(const fake_block_t *b)
{
    if (g_nblocks == g_capblocks) {
        size_t cap = g_capblocks ? 2 * g_capblocks : 256;
        fake_block_t *nb = realloc(g_blocks, cap * sizeof *nb);
        if (!nb)
            return 0;
        g_blocks = nb;
        g_capblocks = cap;
    }
    size_t i = lower_bound(b->base);
    memmove(&g_blocks[i + 1], &g_blocks[i], (g_nblocks - i) * sizeof *g_blocks);
    g_blocks[i] = *b;
    g_nblocks++;
    return 1;
}

fake_block_t *fake_mem_find(uintptr_t addr)
{
    size_t i = lower_bound(addr + 1); /* first block starting after addr */
    if (i == 0)
        return NULL;
    fake_block_t *b = &g_blocks[i - 1];
    size_t extent = b->size ? b->size : 1;
    return addr - b->base < extent ? b : NULL;
}

void fake_mem_remove(uintptr_t base)
{
    size_t i = lower_bound(base);
    if (i < g_nblocks && g_blocks[i].base == base) {
        memmove(&g_blocks[i], &g_blocks[i + 1], (g_nblocks - i - 1) * sizeof *g_blocks);
        g_nblocks--;
    }
}

fake_block_t *fake_mem_free_chunk(CUmemoryPool pool, size_t min_size)
{
    /* A linear scan: registries hold at most a few thousand blocks in tests. */
    for (size_t i = 0; i < g_nblocks; i++) {
        fake_block_t *b = &g_blocks[i];
        if (b->kind == MEM_POOL && b->pool == pool && b->pool_free && b->size >= min_size)
            return b;
    }
    return NULL;
}

static void release_block(const fake_block_t *b)
{
    if (b->mapped)
        munmap((void *)b->base, b->mapped);
    if (b->kind == MEM_DEVICE)
        fake_device_uncharge(b->device, b->size);
}

void fake_mem_drop_ctx(CUcontext ctx)
{
    /* Destroying a context frees what was allocated in it, as the driver does.
     * Pool chunks belong to pools (devices), not contexts, and stay. */
    pthread_mutex_lock(&g_mem);
    for (size_t i = 0; i < g_nblocks;) {
        fake_block_t b = g_blocks[i];
        if (b.ctx == ctx && b.kind != MEM_POOL) {
            release_block(&b);
            fake_mem_remove(b.base);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&g_mem);
}

static CUresult alloc_block(void **out, size_t size, enum fake_mem_kind kind, int low)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (!out || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (kind == MEM_DEVICE && !fake_device_charge(c->device, size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    void *p = low ? map_anon_low(size) : fake_map_anon(size);
    fake_block_t b = {.base = (uintptr_t)p, .size = size, .mapped = page_round(size), .kind = kind,
                      .device = c->device, .ctx = c};
    pthread_mutex_lock(&g_mem);
    int ok = p && fake_mem_insert(&b);
    pthread_mutex_unlock(&g_mem);
    if (!ok) {
        if (p)
            munmap(p, b.mapped);
        if (kind == MEM_DEVICE)
            fake_device_uncharge(c->device, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = p;
    return CUDA_SUCCESS;
}

static CUresult free_block(uintptr_t p, enum fake_mem_kind k1, enum fake_mem_kind k2)
{
    FAKE_REQUIRE_INIT();
    if (!p)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&g_mem);
    fake_block_t *found = fake_mem_find(p);
    if (!found || found->base != p || (found->kind != k1 && found->kind != k2)) {
        pthread_mutex_unlock(&g_mem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    fake_block_t b = *found;
    fake_mem_remove(p);
    pthread_mutex_unlock(&g_mem);
    release_block(&b);
    return CUDA_SUCCESS;
}

/* ---- device memory ---- */

CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    FAKE_ENTER(cuMemAlloc);
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    void *p;
    CUresult r = alloc_block(&p, bytesize, MEM_DEVICE, 1);
    if (r == CUDA_SUCCESS)
        *dptr = (CUdeviceptr_v1)(uintptr_t)p;
    return r;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    FAKE_ENTER(cuMemAlloc_v2);
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    void *p;
    CUresult r = alloc_block(&p, bytesize, MEM_DEVICE, 0);
    if (r == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)(uintptr_t)p;
    return r;
}

static CUresult alloc_pitch(void **p, size_t *pitch, size_t width, size_t height, unsigned elem, int low)
{
    if (!p || !pitch || width == 0 || height == 0 || (elem != 4 && elem != 8 && elem != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t rounded = (width + 511) / 512 * 512;
    CUresult r = alloc_block(p, rounded * height, MEM_DEVICE, low);
    if (r == CUDA_SUCCESS)
        *pitch = rounded;
    return r;
}

CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int WidthInBytes, unsigned int Height,
                         unsigned int ElementSizeBytes)
{
    FAKE_ENTER(cuMemAllocPitch);
    void *p;
    size_t pitch;
    if (!dptr || !pPitch)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = alloc_pitch(&p, &pitch, WidthInBytes, Height, ElementSizeBytes, 1);
    if (r == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr_v1)(uintptr_t)p;
        *pPitch = (unsigned)pitch;
    }
    return r;
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                            unsigned int ElementSizeBytes)
{
    FAKE_ENTER(cuMemAllocPitch_v2);
    void *p;
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = alloc_pitch(&p, pPitch, WidthInBytes, Height, ElementSizeBytes, 0);
    if (r == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)(uintptr_t)p;
    return r;
}

CUresult cuMemFree(CUdeviceptr_v1 dptr)
{
    FAKE_ENTER(cuMemFree);
    return free_block(dptr, MEM_DEVICE, MEM_MANAGED);
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    FAKE_ENTER(cuMemFree_v2);
    return free_block((uintptr_t)dptr, MEM_DEVICE, MEM_MANAGED);
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    FAKE_ENTER(cuMemAllocManaged);
    if (!dptr || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
        return CUDA_ERROR_INVALID_VALUE;
    void *p;
    CUresult r = alloc_block(&p, bytesize, MEM_MANAGED, 0);
    if (r == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)(uintptr_t)p;
    return r;
}

/* Advice is accepted only where the driver accepts it: a range inside one managed allocation, for a
 * real device (or the CPU), so a caller passing a wrong pointer or location sees the error. */
static CUresult advise(uintptr_t addr, size_t count, CUmem_advise advice, CUmemLocation loc)
{
    FAKE_REQUIRE_INIT();
    if (advice < CU_MEM_ADVISE_SET_READ_MOSTLY || advice > CU_MEM_ADVISE_UNSET_ACCESSED_BY || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    int where_ok = loc.type == CU_MEM_LOCATION_TYPE_HOST || (loc.type == CU_MEM_LOCATION_TYPE_DEVICE && fake_device_valid(loc.id));
    pthread_mutex_lock(&g_mem);
    fake_block_t *b = fake_mem_find(addr);
    int ok = b && b->kind == MEM_MANAGED && count <= b->size - (addr - b->base);
    pthread_mutex_unlock(&g_mem);
    return ok && where_ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemAdvise(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUdevice device)
{
    FAKE_ENTER(cuMemAdvise);
    CUmemLocation loc = {.type = device == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE,
                         .id = device};
    return advise((uintptr_t)devPtr, count, advice, loc);
}

CUresult cuMemAdvise_v2(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUmemLocation location)
{
    FAKE_ENTER(cuMemAdvise_v2);
    return advise((uintptr_t)devPtr, count, advice, location);
}

static CUresult get_range(uintptr_t addr, uintptr_t *base, size_t *size)
{
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    fake_block_t *b = fake_mem_find(addr);
    int ok = 1;
    if (b && b->kind != MEM_REGISTERED && !(b->kind == MEM_POOL && b->pool_free)) {
        *base = b->base;
        *size = b->size;
    } else {
        ok = fake_vmm_range(addr, base, size);
    }
    pthread_mutex_unlock(&g_mem);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult cuMemGetAddressRange(CUdeviceptr_v1 *pbase, unsigned int *psize, CUdeviceptr_v1 dptr)
{
    FAKE_ENTER(cuMemGetAddressRange);
    uintptr_t base;
    size_t size;
    CUresult r = get_range(dptr, &base, &size);
    if (r == CUDA_SUCCESS) {
        if (pbase)
            *pbase = (CUdeviceptr_v1)base;
        if (psize)
            *psize = (unsigned)size;
    }
    return r;
}

CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    FAKE_ENTER(cuMemGetAddressRange_v2);
    uintptr_t base;
    size_t size;
    CUresult r = get_range((uintptr_t)dptr, &base, &size);
    if (r == CUDA_SUCCESS) {
        if (pbase)
            *pbase = base;
        if (psize)
            *psize = size;
    }
    return r;
}

static CUresult mem_info(size_t *free_bytes, size_t *total)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    fake_device_t *d = &g_fake_devices[c->device];
    size_t used = atomic_load(&d->used);
    *free_bytes = d->total - used;
    *total = d->total;
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo(unsigned int *free_bytes, unsigned int *total)
{
    FAKE_ENTER(cuMemGetInfo);
    size_t f, t;
    CUresult r = mem_info(&f, &t);
    if (r == CUDA_SUCCESS) {
        if (free_bytes)
            *free_bytes = f > 0xffffffffu ? 0xffffffffu : (unsigned)f;
        if (total)
            *total = t > 0xffffffffu ? 0xffffffffu : (unsigned)t;
    }
    return r;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    FAKE_ENTER(cuMemGetInfo_v2);
    size_t f, t;
    CUresult r = mem_info(&f, &t);
    if (r == CUDA_SUCCESS) {
        if (free_bytes)
            *free_bytes = f;
        if (total)
            *total = t;
    }
    return r;
}

/* ---- host memory ---- */

CUresult cuMemAllocHost(void **pp, unsigned int bytesize)
{
    FAKE_ENTER(cuMemAllocHost);
    return alloc_block(pp, bytesize, MEM_HOST, 0);
}

CUresult cuMemAllocHost_v2(void **pp, size_t bytesize)
{
    FAKE_ENTER(cuMemAllocHost_v2);
    return alloc_block(pp, bytesize, MEM_HOST, 0);
}

CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    FAKE_ENTER(cuMemHostAlloc);
    (void)Flags;
    return alloc_block(pp, bytesize, MEM_HOST, 0);
}

CUresult cuMemFreeHost(void *p)
{
    FAKE_ENTER(cuMemFreeHost);
    return free_block((uintptr_t)p, MEM_HOST, MEM_HOST);
}

static CUresult host_register(void *p, size_t size)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (!p || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    fake_block_t b = {.base = (uintptr_t)p, .size = size, .kind = MEM_REGISTERED, .device = c->device, .ctx = c};
    pthread_mutex_lock(&g_mem);
    if (fake_mem_find((uintptr_t)p)) {
        pthread_mutex_unlock(&g_mem);
        return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    }
    int ok = fake_mem_insert(&b);
    pthread_mutex_unlock(&g_mem);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)
{
    FAKE_ENTER(cuMemHostRegister);
    (void)Flags;
    return host_register(p, bytesize);
}

CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
{
    FAKE_ENTER(cuMemHostRegister_v2);
    (void)Flags;
    return host_register(p, bytesize);
}

CUresult cuMemHostUnregister(void *p)
{
    FAKE_ENTER(cuMemHostUnregister);
    CUresult r = free_block((uintptr_t)p, MEM_REGISTERED, MEM_REGISTERED);
    return r == CUDA_ERROR_INVALID_VALUE ? CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED : r;
}

static CUresult host_device_pointer(uintptr_t *out, void *p)
{
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    fake_block_t *b = fake_mem_find((uintptr_t)p);
    int ok = b && (b->kind == MEM_HOST || b->kind == MEM_REGISTERED);
    pthread_mutex_unlock(&g_mem);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    *out = (uintptr_t)p; /* unified addressing: the same address on both sides */
    return CUDA_SUCCESS;
}

CUresult cuMemHostGetDevicePointer(CUdeviceptr_v1 *pdptr, void *p, unsigned int Flags)
{
    FAKE_ENTER(cuMemHostGetDevicePointer);
    (void)Flags;
    uintptr_t d;
    if (!pdptr)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = host_device_pointer(&d, p);
    if (r == CUDA_SUCCESS && d > 0xffffffffu)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *pdptr = (CUdeviceptr_v1)d;
    return r;
}

CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags)
{
    FAKE_ENTER(cuMemHostGetDevicePointer_v2);
    (void)Flags;
    uintptr_t d;
    if (!pdptr)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = host_device_pointer(&d, p);
    if (r == CUDA_SUCCESS)
        *pdptr = d;
    return r;
}
