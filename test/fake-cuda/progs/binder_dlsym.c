/* gvm-prog-dlsym: not linked to libcuda; dlopens it and looks every entry point
 * up by its exported, versioned name, the way frameworks that load CUDA lazily do. */
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
#define SET(field, type, base, exported, pt, direct)                  \
    if (!(api->field = (type)dlsym(h, #exported))) {                  \
        fprintf(stderr, "dlsym %s: %s\n", #exported, dlerror());      \
        return -1;                                                    \
    }
    SCENARIO_API(SET)
#undef SET
    api->holdGpu = (int (*)(int))dlsym(h, "fakeCudaHoldGpu");
    return 0;
}

int main(int argc, char **argv) { return scenario_main(argc, argv, bind); }
