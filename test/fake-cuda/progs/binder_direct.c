/* gvm-prog-direct: linked against libcuda; takes every entry point by name, so
 * the dynamic linker resolves them (and an LD_PRELOAD agent can interpose). */
#include "scenario.h"

#include <stddef.h>

/* Weak: the program also starts on a real driver, which has no such helper. */
extern int fakeCudaHoldGpu(int hold) __attribute__((weak));
void bind_direct_ptsz(cu_api_t *api);

static int bind(cu_api_t *api)
{
#define SET(field, type, base, exported, pt, direct) api->field = direct;
    SCENARIO_API(SET)
#undef SET
    bind_direct_ptsz(api);
    api->holdGpu = fakeCudaHoldGpu;
    return 0;
}

int main(int argc, char **argv) { return scenario_main(argc, argv, bind); }
