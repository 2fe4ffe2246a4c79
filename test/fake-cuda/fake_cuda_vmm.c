/* Virtual memory management (cuMemCreate / cuMemAddressReserve / cuMemMap).
 *
 * A physical allocation is a memfd; a reservation is a PROT_NONE mapping; a
 * cuMemMap maps the memfd MAP_FIXED|MAP_SHARED over part of the reservation.
 * So bytes written through one virtual address live in the physical allocation,
 * and unmapping a range and mapping another allocation at the same address
 * shows that allocation's bytes, exactly what swap-out/swap-in relies on. */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PHYS_MAGIC 0xF1A5F1A5u
#define MAX_VMM 4096

typedef struct fake_phys {
    uint32_t magic;
    int fd;
    size_t size;
    CUmemAllocationProp prop;
    int refs; /* cuMemCreate and cuMemRetainAllocationHandle each add one */
    int maps;
    int imported; /* from cuMemImportFromShareableHandle: another process's memory, not charged here */
    struct fake_phys *next;
} fake_phys_t;

typedef struct {
    uintptr_t base;
    size_t size;
} fake_range_t;

typedef struct {
    uintptr_t va;
    size_t size;
    fake_phys_t *phys;
} fake_mapping_t;

/* All guarded by g_mem. */
static fake_phys_t *g_phys;
static fake_range_t g_reserved[MAX_VMM];
static size_t g_nreserved;
static fake_mapping_t g_maps[MAX_VMM];
static size_t g_nmaps;

static fake_phys_t *phys_lookup(CUmemGenericAllocationHandle h)
{
    for (fake_phys_t *p = g_phys; p; p = p->next)
        if ((CUmemGenericAllocationHandle)(uintptr_t)p == h && p->magic == PHYS_MAGIC)
            return p;
    return NULL;
}

/* Frees the physical memory once nobody holds or maps it. */
static void phys_maybe_free(fake_phys_t *p)
{
    if (p->refs > 0 || p->maps > 0)
        return;
    fake_phys_t **pp = &g_phys;
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    close(p->fd);
    if (p->prop.location.type == CU_MEM_LOCATION_TYPE_DEVICE && !p->imported)
        fake_device_uncharge(p->prop.location.id, p->size);
    p->magic = 0;
    free(p);
}

int fake_vmm_range(uintptr_t addr, uintptr_t *base, size_t *size)
{
    for (size_t i = 0; i < g_nmaps; i++) {
        if (addr - g_maps[i].va < g_maps[i].size) {
            *base = g_maps[i].va;
            *size = g_maps[i].size;
            return 1;
        }
    }
    return 0;
}

static int in_reservation(uintptr_t va, size_t size)
{
    for (size_t i = 0; i < g_nreserved; i++)
        if (va >= g_reserved[i].base && va - g_reserved[i].base <= g_reserved[i].size &&
            size <= g_reserved[i].size - (va - g_reserved[i].base))
            return 1;
    return 0;
}

static int overlaps_mapping(uintptr_t va, size_t size)
{
    for (size_t i = 0; i < g_nmaps; i++)
        if (va < g_maps[i].va + g_maps[i].size && g_maps[i].va < va + size)
            return 1;
    return 0;
}

CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option)
{
    FAKE_ENTER(cuMemGetAllocationGranularity);
    FAKE_REQUIRE_INIT();
    (void)option;
    if (!granularity || !prop)
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = FAKE_VMM_GRANULARITY;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags)
{
    FAKE_ENTER(cuMemAddressReserve);
    FAKE_REQUIRE_INIT();
    (void)addr, (void)flags; /* the hint is optional in the driver too */
    if (!ptr || size == 0 || size % FAKE_VMM_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    if (alignment < FAKE_VMM_GRANULARITY)
        alignment = FAKE_VMM_GRANULARITY;
    if (alignment & (alignment - 1))
        return CUDA_ERROR_INVALID_VALUE;
    /* Over-reserve, then cut the unaligned head and the tail away. */
    size_t span = size + alignment;
    char *raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t base = ((uintptr_t)raw + alignment - 1) & ~(uintptr_t)(alignment - 1);
    if (base > (uintptr_t)raw)
        munmap(raw, base - (uintptr_t)raw);
    size_t tail = (uintptr_t)raw + span - (base + size);
    if (tail)
        munmap((void *)(base + size), tail);
    pthread_mutex_lock(&g_mem);
    int ok = g_nreserved < MAX_VMM;
    if (ok)
        g_reserved[g_nreserved++] = (fake_range_t){base, size};
    pthread_mutex_unlock(&g_mem);
    if (!ok) {
        munmap((void *)base, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *ptr = base;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    FAKE_ENTER(cuMemAddressFree);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < g_nreserved; i++) {
        if (g_reserved[i].base == ptr && g_reserved[i].size == size) {
            if (overlaps_mapping(ptr, size))
                break; /* still mapped: the caller must cuMemUnmap first */
            munmap((void *)(uintptr_t)ptr, size);
            g_reserved[i] = g_reserved[--g_nreserved];
            r = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&g_mem);
    return r;
}

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags)
{
    FAKE_ENTER(cuMemCreate);
    FAKE_REQUIRE_INIT();
    (void)flags;
    if (!handle || !prop || size == 0 || size % FAKE_VMM_GRANULARITY ||
        prop->type != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    int device_mem = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
    if (device_mem && !fake_device_valid(prop->location.id))
        return CUDA_ERROR_INVALID_DEVICE;
    if (!device_mem && prop->location.type != CU_MEM_LOCATION_TYPE_HOST &&
        prop->location.type != CU_MEM_LOCATION_TYPE_HOST_NUMA)
        return CUDA_ERROR_INVALID_VALUE;
    if (device_mem && !fake_device_charge(prop->location.id, size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    fake_phys_t *p = calloc(1, sizeof *p);
    int fd = p ? memfd_create("fake-cuda-vmm", MFD_CLOEXEC) : -1;
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0)
            close(fd);
        free(p);
        if (device_mem)
            fake_device_uncharge(prop->location.id, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    p->magic = PHYS_MAGIC;
    p->fd = fd;
    p->size = size;
    p->prop = *prop;
    p->refs = 1;
    pthread_mutex_lock(&g_mem);
    p->next = g_phys;
    g_phys = p;
    pthread_mutex_unlock(&g_mem);
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    FAKE_ENTER(cuMemRelease);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    fake_phys_t *p = phys_lookup(handle);
    if (p && p->refs > 0) {
        p->refs--;
        phys_maybe_free(p);
    }
    pthread_mutex_unlock(&g_mem);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags)
{
    FAKE_ENTER(cuMemMap);
    FAKE_REQUIRE_INIT();
    FAKE_MAY_FAIL(cuMemMap);
    if (flags != 0 || size == 0 || ptr % FAKE_VMM_GRANULARITY || size % FAKE_VMM_GRANULARITY ||
        offset % FAKE_VMM_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mem);
    fake_phys_t *p = phys_lookup(handle);
    CUresult r = CUDA_SUCCESS;
    if (!p || offset > p->size || size > p->size - offset || !in_reservation(ptr, size) ||
        overlaps_mapping(ptr, size) || g_nmaps == MAX_VMM)
        r = CUDA_ERROR_INVALID_VALUE;
    /* No access until cuMemSetAccess, as on the device. */
    else if (mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED, p->fd, (off_t)offset) ==
             MAP_FAILED)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        g_maps[g_nmaps++] = (fake_mapping_t){ptr, size, p};
        p->maps++;
    }
    pthread_mutex_unlock(&g_mem);
    return r;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    FAKE_ENTER(cuMemUnmap);
    FAKE_REQUIRE_INIT();
    pthread_mutex_lock(&g_mem);
    CUresult r = CUDA_SUCCESS;
    /* Every mapping the range touches must lie wholly inside it. */
    for (size_t i = 0; i < g_nmaps; i++) {
        fake_mapping_t *m = &g_maps[i];
        int touches = m->va < ptr + size && ptr < m->va + m->size;
        if (touches && (m->va < ptr || m->va + m->size > ptr + size))
            r = CUDA_ERROR_INVALID_VALUE;
    }
    if (r == CUDA_SUCCESS && !overlaps_mapping(ptr, size))
        r = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; r == CUDA_SUCCESS && i < g_nmaps;) {
        fake_mapping_t m = g_maps[i];
        if (m.va >= ptr && m.va + m.size <= ptr + size) {
            /* Put the reservation's PROT_NONE placeholder back. */
            mmap((void *)m.va, m.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
            g_maps[i] = g_maps[--g_nmaps];
            m.phys->maps--;
            phys_maybe_free(m.phys);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&g_mem);
    return r;
}

CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    FAKE_ENTER(cuMemSetAccess);
    FAKE_REQUIRE_INIT();
    FAKE_MAY_FAIL(cuMemSetAccess);
    if (!desc || count == 0 || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    int prot = PROT_NONE;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type == CU_MEM_LOCATION_TYPE_DEVICE && !fake_device_valid(desc[i].location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            prot = PROT_READ | PROT_WRITE;
        else if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READ && prot == PROT_NONE)
            prot = PROT_READ;
    }
    pthread_mutex_lock(&g_mem);
    /* The whole range must be mapped: walk it mapping by mapping. */
    CUresult r = CUDA_SUCCESS;
    for (uintptr_t at = ptr; r == CUDA_SUCCESS && at < ptr + size;) {
        uintptr_t base;
        size_t len;
        if (!fake_vmm_range(at, &base, &len))
            r = CUDA_ERROR_INVALID_VALUE;
        else
            at = base + len;
    }
    if (r == CUDA_SUCCESS && mprotect((void *)(uintptr_t)ptr, size, prot) != 0)
        r = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_unlock(&g_mem);
    return r;
}

CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    FAKE_ENTER(cuMemRetainAllocationHandle);
    FAKE_REQUIRE_INIT();
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mem);
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < g_nmaps; i++) {
        if ((uintptr_t)addr - g_maps[i].va < g_maps[i].size) {
            g_maps[i].phys->refs++;
            *handle = (CUmemGenericAllocationHandle)(uintptr_t)g_maps[i].phys;
            r = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&g_mem);
    return r;
}

CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop, CUmemGenericAllocationHandle handle)
{
    FAKE_ENTER(cuMemGetAllocationPropertiesFromHandle);
    FAKE_REQUIRE_INIT();
    if (!prop)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mem);
    fake_phys_t *p = phys_lookup(handle);
    if (p)
        *prop = p->prop;
    pthread_mutex_unlock(&g_mem);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Shareable handles: the memfd itself travels (a dup), so two processes that map it share bytes,
 * as two processes sharing an exported allocation do on the device. As in the driver, only an
 * allocation created with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR in requestedHandleTypes exports. */
CUresult cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                      CUmemAllocationHandleType handleType, unsigned long long flags)
{
    FAKE_ENTER(cuMemExportToShareableHandle);
    FAKE_REQUIRE_INIT();
    if (!shareableHandle || flags != 0 || handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mem);
    fake_phys_t *p = phys_lookup(handle);
    CUresult r = CUDA_SUCCESS;
    if (!p || !(p->prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        r = CUDA_ERROR_INVALID_VALUE;
    else if ((*(int *)shareableHandle = fcntl(p->fd, F_DUPFD_CLOEXEC, 0)) < 0)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_unlock(&g_mem);
    return r;
}

CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                        CUmemAllocationHandleType shHandleType)
{
    FAKE_ENTER(cuMemImportFromShareableHandle);
    FAKE_REQUIRE_INIT();
    if (!handle || shHandleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    int fd = (int)(intptr_t)osHandle;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size % (off_t)FAKE_VMM_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    fake_phys_t *p = calloc(1, sizeof *p);
    int own = p ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1; /* the caller keeps (and closes) its fd */
    if (own < 0) {
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    p->magic = PHYS_MAGIC;
    p->fd = own;
    p->size = (size_t)st.st_size;
    p->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; /* the fake shares device 0's memory only */
    p->prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    p->refs = 1;
    p->imported = 1;
    pthread_mutex_lock(&g_mem);
    p->next = g_phys;
    g_phys = p;
    pthread_mutex_unlock(&g_mem);
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)p;
    return CUDA_SUCCESS;
}
