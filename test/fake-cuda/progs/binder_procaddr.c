/* gvm-prog-procaddr: the CUDA 12+ runtime's way in. Only cuGetProcAddress_v2 is
 * looked up with dlsym; everything else comes from it by base name at CUDA
 * 13.0, stream work with per-thread default-stream semantics (so the _ptsz
 * variants are used). One symbol goes through the old 4-argument form. */
#include "scenario.h"

#include <dlfcn.h>
#include <stdio.h>

static int bind(cu_api_t *api)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror());
        return -1;
    }
    PFN_cuGetProcAddress_v12000 gpa = (PFN_cuGetProcAddress_v12000)dlsym(h, "cuGetProcAddress_v2");
    if (!gpa) {
        fprintf(stderr, "dlsym cuGetProcAddress_v2: %s\n", dlerror());
        return -1;
    }
    CUdriverProcAddressQueryResult status;
    CUresult r;
#define SET(field, type, base, exported, pt, direct)                                                       \
    r = gpa(#base, (void **)&api->field, 13000,                                                            \
            (pt) ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_DEFAULT, &status);   \
    if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || !api->field) {                       \
        fprintf(stderr, "cuGetProcAddress_v2 %s: %d status %d\n", #base, (int)r, (int)status);             \
        return -1;                                                                                         \
    }
    SCENARIO_API(SET)
#undef SET

    /* The CUDA 11.3 form, itself obtained by asking for the version that had it. */
    PFN_cuGetProcAddress_v11030 gpa_old;
    r = gpa("cuGetProcAddress", (void **)&gpa_old, 11030, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || !gpa_old) {
        fprintf(stderr, "cuGetProcAddress_v2 cuGetProcAddress@11030: %d\n", (int)r);
        return -1;
    }
    r = gpa_old("cuDriverGetVersion", (void **)&api->driverGetVersion, 12000, CU_GET_PROC_ADDRESS_DEFAULT);
    int version = 0;
    if (r != CUDA_SUCCESS || api->driverGetVersion(&version) != CUDA_SUCCESS || version < 12000) {
        fprintf(stderr, "cuGetProcAddress cuDriverGetVersion: %d (version %d)\n", (int)r, version);
        return -1;
    }
    api->holdGpu = (int (*)(int))dlsym(h, "fakeCudaHoldGpu");
    return 0;
}

int main(int argc, char **argv) { return scenario_main(argc, argv, bind); }
