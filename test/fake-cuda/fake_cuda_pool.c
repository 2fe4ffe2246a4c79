/* Stream-ordered allocation (cuMemAllocAsync and memory pools).
 *
 * A pool hands out chunks at once and takes them back when the stream reaches
 * the free. Freed chunks stay reserved (still charged to the device) and are
 * reused; a synchronisation point gives back what exceeds the release threshold
 * (default 0, so everything free), and cuMemPoolTrimTo does so on demand: the
 * behaviour a caller of the driver's pools can observe. */
#include "fake_cuda.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define POOL_MAGIC 0x9001900Au

struct CUmemPoolHandle_st {
    uint32_t magic;
    int device;
    int destroyed; /* kept alive until its last chunk is gone */
    size_t chunks;
    size_t reserved, used, reserved_high, used_high;
    cuuint64_t threshold;
    struct CUmemPoolHandle_st *next;
};

static CUmemoryPool g_pools; /* every pool; g_mem */

static int pool_valid(CUmemoryPool p) { return p && p->magic == POOL_MAGIC && !p->destroyed; }

static CUmemoryPool pool_new(int dev)
{
    CUmemoryPool p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->magic = POOL_MAGIC;
    p->device = dev;
    p->next = g_pools;
    g_pools = p;
    return p;
}

CUmemoryPool fake_pool_default(int dev)
{
    pthread_mutex_lock(&g_mem);
    if (!g_fake_devices[dev].default_pool)
        g_fake_devices[dev].default_pool = pool_new(dev);
    CUmemoryPool p = g_fake_devices[dev].default_pool;
    pthread_mutex_unlock(&g_mem);
    return p;
}

static void pool_unlink_free(CUmemoryPool p)
{
    CUmemoryPool *pp = &g_pools;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
    p->magic = 0;
    free(p);
}

/* Gives back free chunks until at most keep bytes stay reserved. Caller holds g_mem. */
static void trim_locked(CUmemoryPool p, size_t keep)
{
    fake_block_t *victim;
    while (p->reserved > keep && (victim = fake_mem_free_chunk(p, 0)) != NULL) {
        fake_block_t b = *victim;
        fake_mem_remove(b.base);
        munmap((void *)b.base, b.mapped);
        fake_device_uncharge(p->device, b.size);
        p->reserved -= b.size;
        p->chunks--;
    }
    if (p->destroyed && p->chunks == 0)
        pool_unlink_free(p);
}

void fake_pools_trim_device(int dev)
{
    pthread_mutex_lock(&g_mem);
    for (CUmemoryPool p = g_pools, next; p; p = next) {
        next = p->next;
        if (p->device == dev)
            trim_locked(p, p->destroyed ? 0 : (size_t)p->threshold);
    }
    pthread_mutex_unlock(&g_mem);
}

void fake_pool_free_now(CUdeviceptr ptr)
{
    pthread_mutex_lock(&g_mem);
    fake_block_t *b = fake_mem_find((uintptr_t)ptr);
    if (b && b->kind == MEM_POOL && !b->pool_free) {
        CUmemoryPool p = b->pool;
        b->pool_free = 1;
        p->used -= b->size;
        if (p->destroyed)
            trim_locked(p, 0);
    }
    pthread_mutex_unlock(&g_mem);
}

static CUresult pool_alloc(CUdeviceptr *dptr, size_t size, CUmemoryPool p, CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if (!dptr || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if ((r = fake_capture_check(s)))
        return r;
    if (!p)
        p = fake_pool_default(s->ctx->device);
    pthread_mutex_lock(&g_mem);
    if (!pool_valid(p)) {
        pthread_mutex_unlock(&g_mem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    fake_block_t *reuse = fake_mem_free_chunk(p, size);
    if (reuse) {
        reuse->pool_free = 0;
        p->used += reuse->size;
        *dptr = reuse->base;
    } else {
        void *mem = fake_device_charge(p->device, size) ? fake_map_anon(size) : NULL;
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        fake_block_t b = {.base = (uintptr_t)mem, .size = size, .mapped = (size + page - 1) / page * page,
                          .kind = MEM_POOL, .device = p->device, .pool = p};
        if (!mem || !fake_mem_insert(&b)) {
            if (mem) {
                munmap(mem, b.mapped);
                fake_device_uncharge(p->device, size);
            }
            pthread_mutex_unlock(&g_mem);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        p->reserved += size;
        p->used += size;
        p->chunks++;
        *dptr = b.base;
    }
    if (p->used > p->used_high)
        p->used_high = p->used;
    if (p->reserved > p->reserved_high)
        p->reserved_high = p->reserved;
    pthread_mutex_unlock(&g_mem);
    return CUDA_SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FAKE_ENTER(cuMemAllocAsync);
    return pool_alloc(dptr, bytesize, NULL, hStream);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FAKE_ENTER(cuMemAllocAsync_ptsz);
    return pool_alloc(dptr, bytesize, NULL, hStream);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    FAKE_ENTER(cuMemAllocFromPoolAsync);
    return pool ? pool_alloc(dptr, bytesize, pool, hStream) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    FAKE_ENTER(cuMemAllocFromPoolAsync_ptsz);
    return pool ? pool_alloc(dptr, bytesize, pool, hStream) : CUDA_ERROR_INVALID_VALUE;
}

static CUresult pool_free_async(CUdeviceptr dptr, CUstream h)
{
    CUstream s;
    CUresult r = fake_stream_resolve(h, &s);
    if (r)
        return r;
    if ((r = fake_capture_check(s)))
        return r;
    pthread_mutex_lock(&g_mem);
    fake_block_t *b = fake_mem_find((uintptr_t)dptr);
    int ok = b && b->base == (uintptr_t)dptr && b->kind == MEM_POOL && !b->pool_free;
    pthread_mutex_unlock(&g_mem);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    fake_op_t *op = fake_op_new(OP_POOL_FREE);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.pool.ptr = dptr;
    fake_stream_enqueue(s, op);
    return CUDA_SUCCESS;
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    FAKE_ENTER(cuMemFreeAsync);
    return pool_free_async(dptr, hStream);
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    FAKE_ENTER(cuMemFreeAsync_ptsz);
    return pool_free_async(dptr, hStream);
}

CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps)
{
    FAKE_ENTER(cuMemPoolCreate);
    FAKE_REQUIRE_INIT();
    if (!pool || !poolProps || poolProps->allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        poolProps->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_device_valid(poolProps->location.id))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_mem);
    *pool = pool_new(poolProps->location.id);
    pthread_mutex_unlock(&g_mem);
    return *pool ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    FAKE_ENTER(cuMemPoolDestroy);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    if (!pool_valid(pool) || pool == g_fake_devices[pool->device].default_pool) {
        pthread_mutex_unlock(&g_mem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    pool->destroyed = 1; /* chunks still in use stay valid until freed */
    trim_locked(pool, 0);
    pthread_mutex_unlock(&g_mem);
    return CUDA_SUCCESS;
}

CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    FAKE_ENTER(cuMemPoolTrimTo);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    int ok = pool_valid(pool);
    if (ok)
        trim_locked(pool, minBytesToKeep);
    pthread_mutex_unlock(&g_mem);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static int attr_is_u64(CUmemPool_attribute attr)
{
    return attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD || attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT ||
           attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH || attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT ||
           attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH;
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    FAKE_ENTER(cuMemPoolGetAttribute);
    FAKE_REQUIRE_INIT();
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mem);
    CUresult r = pool_valid(pool) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    cuuint64_t v = 0;
    if (r == CUDA_SUCCESS) {
        switch (attr) {
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: v = pool->threshold; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: v = pool->reserved; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: v = pool->reserved_high; break;
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: v = pool->used; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH: v = pool->used_high; break;
        default: v = 1; break; /* the REUSE_* switches, all on by default */
        }
    }
    pthread_mutex_unlock(&g_mem);
    if (r == CUDA_SUCCESS && attr_is_u64(attr))
        *(cuuint64_t *)value = v;
    else if (r == CUDA_SUCCESS)
        *(int *)value = (int)v;
    return r;
}

CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    FAKE_ENTER(cuMemPoolSetAttribute);
    FAKE_REQUIRE_INIT();
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mem);
    CUresult r = pool_valid(pool) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        switch (attr) {
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: pool->threshold = *(cuuint64_t *)value; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: /* only a reset to 0 is allowed */
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
            if (*(cuuint64_t *)value != 0)
                r = CUDA_ERROR_INVALID_VALUE;
            else if (attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH)
                pool->used_high = pool->used;
            else
                pool->reserved_high = pool->reserved;
            break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT:
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: r = CUDA_ERROR_INVALID_VALUE; break;
        default: break;
        }
    }
    pthread_mutex_unlock(&g_mem);
    return r;
}
