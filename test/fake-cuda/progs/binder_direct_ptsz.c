/* Compiled with per-thread default-stream semantics, as nvcc --default-stream
 * per-thread would: cuda.h then maps cuLaunchKernel to cuLaunchKernel_ptsz. */
#define CUDA_API_PER_THREAD_DEFAULT_STREAM 1
#include "scenario.h"

void bind_direct_ptsz(cu_api_t *api);

void bind_direct_ptsz(cu_api_t *api) { api->launchKernelDefault = cuLaunchKernel; }
