/* Modules, libraries and functions. No code is ever loaded: any image is
 * accepted and any function name resolves, so test programs need no fatbins.
 * A CUkernel is the same object as a CUfunction, which the driver also allows
 * callers to assume (a CUkernel may be passed where a CUfunction is expected). */
#define _GNU_SOURCE
#include "fake_cuda.h"

#include <stdlib.h>
#include <string.h>

#define MODULE_MAGIC 0x30D030D0u
#define FUNC_MAGIC 0xF00CF00Cu

struct CUfunc_st {
    uint32_t magic;
    struct CUfunc_st *next;
    char name[128];
};

struct CUmod_st {
    uint32_t magic;
    pthread_mutex_t lock;
    struct CUfunc_st *funcs;
};

/* A CUlibrary wraps a module; the driver's types are distinct, ours share code. */
struct CUlib_st {
    struct CUmod_st mod;
};

int fake_function_valid(CUfunction f) { return f && f->magic == FUNC_MAGIC; }

static CUresult module_new(struct CUmod_st **out, const void *image)
{
    CUcontext c;
    CUresult r = fake_ctx_require(&c);
    if (r)
        return r;
    if (!out || !image)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmod_st *m = calloc(1, sizeof(struct CUlib_st));
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    m->magic = MODULE_MAGIC;
    pthread_mutex_init(&m->lock, NULL);
    *out = m;
    return CUDA_SUCCESS;
}

static CUresult module_free(struct CUmod_st *m)
{
    FAKE_REQUIRE_INIT();
    if (!m || m->magic != MODULE_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    for (struct CUfunc_st *f = m->funcs, *next; f; f = next) {
        next = f->next;
        f->magic = 0;
        free(f);
    }
    m->magic = 0;
    pthread_mutex_destroy(&m->lock);
    free(m);
    return CUDA_SUCCESS;
}

static CUresult module_function(CUfunction *out, struct CUmod_st *m, const char *name)
{
    FAKE_REQUIRE_INIT();
    if (!out || !name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!m || m->magic != MODULE_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&m->lock);
    struct CUfunc_st *f = m->funcs;
    while (f && strncmp(f->name, name, sizeof f->name - 1) != 0)
        f = f->next;
    if (!f && (f = calloc(1, sizeof *f)) != NULL) {
        f->magic = FUNC_MAGIC;
        strncpy(f->name, name, sizeof f->name - 1);
        f->next = m->funcs;
        m->funcs = f;
    }
    pthread_mutex_unlock(&m->lock);
    *out = f;
    return f ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuModuleLoad(CUmodule *module, const char *fname)
{
    FAKE_ENTER(cuModuleLoad);
    return module_new(module, fname);
}

CUresult cuModuleLoadData(CUmodule *module, const void *image)
{
    FAKE_ENTER(cuModuleLoadData);
    return module_new(module, image);
}

CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin)
{
    FAKE_ENTER(cuModuleLoadFatBinary);
    return module_new(module, fatCubin);
}

CUresult cuModuleUnload(CUmodule hmod)
{
    FAKE_ENTER(cuModuleUnload);
    return module_free(hmod);
}

CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    FAKE_ENTER(cuModuleGetFunction);
    return module_function(hfunc, hmod, name);
}

CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions, void **jitOptionsValues,
                           unsigned int numJitOptions, CUlibraryOption *libraryOptions,
                           void **libraryOptionValues, unsigned int numLibraryOptions)
{
    FAKE_ENTER(cuLibraryLoadData);
    (void)jitOptions, (void)jitOptionsValues, (void)numJitOptions;
    (void)libraryOptions, (void)libraryOptionValues, (void)numLibraryOptions;
    if (!library)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmod_st *m;
    CUresult r = module_new(&m, code);
    if (r == CUDA_SUCCESS)
        *library = (CUlibrary)m;
    return r;
}

CUresult cuLibraryUnload(CUlibrary library)
{
    FAKE_ENTER(cuLibraryUnload);
    return module_free((struct CUmod_st *)library);
}

CUresult cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name)
{
    FAKE_ENTER(cuLibraryGetKernel);
    if (!pKernel)
        return CUDA_ERROR_INVALID_VALUE;
    CUfunction f;
    CUresult r = module_function(&f, (struct CUmod_st *)library, name);
    if (r == CUDA_SUCCESS)
        *pKernel = (CUkernel)f;
    return r;
}

CUresult cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel)
{
    FAKE_ENTER(cuKernelGetFunction);
    FAKE_REQUIRE_INIT();
    if (!pFunc)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_function_valid((CUfunction)kernel))
        return CUDA_ERROR_INVALID_HANDLE;
    *pFunc = (CUfunction)kernel;
    return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc)
{
    FAKE_ENTER(cuFuncGetAttribute);
    FAKE_REQUIRE_INIT();
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_function_valid(hfunc))
        return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION:
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = 90; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}
