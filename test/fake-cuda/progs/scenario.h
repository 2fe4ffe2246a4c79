/* The driver entry points a scenario uses, and how each binder finds them.
 * One X-macro row per entry point drives the table type and all three binders:
 *   X(field, PFN type, base name for cuGetProcAddress, exported name for dlsym,
 *     per-thread flag for cuGetProcAddress, expression for the direct binder)
 * The direct binder assigns the expression (cuda.h's macros turn the base name
 * into the versioned one), so a wrong signature there fails to compile. */
#ifndef GVM_FAKE_SCENARIO_H
#define GVM_FAKE_SCENARIO_H

#include <cuda.h>
#include <cudaTypedefs.h>

#define SCENARIO_API(X)                                                                                          \
    X(driverGetVersion, PFN_cuDriverGetVersion_v2020, cuDriverGetVersion, cuDriverGetVersion, 0, cuDriverGetVersion) \
    X(init, PFN_cuInit_v2000, cuInit, cuInit, 0, cuInit)                                                          \
    X(deviceGet, PFN_cuDeviceGet_v2000, cuDeviceGet, cuDeviceGet, 0, cuDeviceGet)                                 \
    X(primaryRetain, PFN_cuDevicePrimaryCtxRetain_v7000, cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain, 0,   \
      cuDevicePrimaryCtxRetain)                                                                                   \
    X(ctxSetCurrent, PFN_cuCtxSetCurrent_v4000, cuCtxSetCurrent, cuCtxSetCurrent, 0, cuCtxSetCurrent)             \
    X(ctxCreate, PFN_cuCtxCreate_v12050, cuCtxCreate, cuCtxCreate_v4, 0, cuCtxCreate)                             \
    X(primaryReset, PFN_cuDevicePrimaryCtxReset_v11000, cuDevicePrimaryCtxReset, cuDevicePrimaryCtxReset_v2, 0,   \
      cuDevicePrimaryCtxReset)                                                                                    \
    X(ctxSynchronize, PFN_cuCtxSynchronize_v13000, cuCtxSynchronize, cuCtxSynchronize_v2, 0, cuCtxSynchronize_v2) \
    X(memGetInfo, PFN_cuMemGetInfo_v3020, cuMemGetInfo, cuMemGetInfo_v2, 0, cuMemGetInfo)                         \
    X(memAlloc, PFN_cuMemAlloc_v3020, cuMemAlloc, cuMemAlloc_v2, 0, cuMemAlloc)                                   \
    X(memAllocPitch, PFN_cuMemAllocPitch_v3020, cuMemAllocPitch, cuMemAllocPitch_v2, 0, cuMemAllocPitch)          \
    X(memAllocManaged, PFN_cuMemAllocManaged_v6000, cuMemAllocManaged, cuMemAllocManaged, 0, cuMemAllocManaged)   \
    X(memAllocHost, PFN_cuMemAllocHost_v3020, cuMemAllocHost, cuMemAllocHost_v2, 0, cuMemAllocHost)               \
    X(memFree, PFN_cuMemFree_v3020, cuMemFree, cuMemFree_v2, 0, cuMemFree)                                        \
    X(memFreeHost, PFN_cuMemFreeHost_v2000, cuMemFreeHost, cuMemFreeHost, 0, cuMemFreeHost)                       \
    X(memcpyHtoD, PFN_cuMemcpyHtoD_v3020, cuMemcpyHtoD, cuMemcpyHtoD_v2, 0, cuMemcpyHtoD)                         \
    X(memcpyDtoH, PFN_cuMemcpyDtoH_v3020, cuMemcpyDtoH, cuMemcpyDtoH_v2, 0, cuMemcpyDtoH)                         \
    X(memAllocAsync, PFN_cuMemAllocAsync_v11020, cuMemAllocAsync, cuMemAllocAsync, 1, cuMemAllocAsync)            \
    X(memFreeAsync, PFN_cuMemFreeAsync_v11020, cuMemFreeAsync, cuMemFreeAsync, 1, cuMemFreeAsync)                 \
    X(memPoolCreate, PFN_cuMemPoolCreate_v11020, cuMemPoolCreate, cuMemPoolCreate, 0, cuMemPoolCreate)            \
    X(memPoolDestroy, PFN_cuMemPoolDestroy_v11020, cuMemPoolDestroy, cuMemPoolDestroy, 0, cuMemPoolDestroy)       \
    X(memAllocFromPoolAsync, PFN_cuMemAllocFromPoolAsync_v11020, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync, \
      1, cuMemAllocFromPoolAsync)                                                                                 \
    X(memGetAllocationGranularity, PFN_cuMemGetAllocationGranularity_v10020, cuMemGetAllocationGranularity,       \
      cuMemGetAllocationGranularity, 0, cuMemGetAllocationGranularity)                                            \
    X(memAddressReserve, PFN_cuMemAddressReserve_v10020, cuMemAddressReserve, cuMemAddressReserve, 0,             \
      cuMemAddressReserve)                                                                                        \
    X(memAddressFree, PFN_cuMemAddressFree_v10020, cuMemAddressFree, cuMemAddressFree, 0, cuMemAddressFree)       \
    X(memCreate, PFN_cuMemCreate_v10020, cuMemCreate, cuMemCreate, 0, cuMemCreate)                                \
    X(memRelease, PFN_cuMemRelease_v10020, cuMemRelease, cuMemRelease, 0, cuMemRelease)                           \
    X(memMap, PFN_cuMemMap_v10020, cuMemMap, cuMemMap, 0, cuMemMap)                                               \
    X(memUnmap, PFN_cuMemUnmap_v10020, cuMemUnmap, cuMemUnmap, 0, cuMemUnmap)                                     \
    X(memSetAccess, PFN_cuMemSetAccess_v10020, cuMemSetAccess, cuMemSetAccess, 0, cuMemSetAccess)                 \
    X(streamCreate, PFN_cuStreamCreate_v2000, cuStreamCreate, cuStreamCreate, 0, cuStreamCreate)                  \
    X(streamDestroy, PFN_cuStreamDestroy_v4000, cuStreamDestroy, cuStreamDestroy_v2, 0, cuStreamDestroy)          \
    X(streamSynchronize, PFN_cuStreamSynchronize_v2000, cuStreamSynchronize, cuStreamSynchronize, 1,              \
      cuStreamSynchronize)                                                                                        \
    X(moduleLoadData, PFN_cuModuleLoadData_v2000, cuModuleLoadData, cuModuleLoadData, 0, cuModuleLoadData)        \
    X(moduleGetFunction, PFN_cuModuleGetFunction_v2000, cuModuleGetFunction, cuModuleGetFunction, 0,              \
      cuModuleGetFunction)                                                                                        \
    X(launchKernel, PFN_cuLaunchKernel_v4000, cuLaunchKernel, cuLaunchKernel, 1, cuLaunchKernel)                  \
    X(launchKernelDefault, PFN_cuLaunchKernel_v4000, cuLaunchKernel, cuLaunchKernel_ptsz, 1, NULL)                \
    X(streamBeginCapture, PFN_cuStreamBeginCapture_v10010, cuStreamBeginCapture, cuStreamBeginCapture_v2, 1,      \
      cuStreamBeginCapture)                                                                                       \
    X(streamEndCapture, PFN_cuStreamEndCapture_v10000, cuStreamEndCapture, cuStreamEndCapture, 1,                 \
      cuStreamEndCapture)                                                                                         \
    X(graphInstantiate, PFN_cuGraphInstantiateWithFlags_v11040, cuGraphInstantiateWithFlags,                      \
      cuGraphInstantiateWithFlags, 0, cuGraphInstantiate)                                                         \
    X(graphLaunch, PFN_cuGraphLaunch_v10000, cuGraphLaunch, cuGraphLaunch, 1, cuGraphLaunch)                      \
    X(graphExecDestroy, PFN_cuGraphExecDestroy_v10000, cuGraphExecDestroy, cuGraphExecDestroy, 0,                 \
      cuGraphExecDestroy)                                                                                         \
    X(graphDestroy, PFN_cuGraphDestroy_v10000, cuGraphDestroy, cuGraphDestroy, 0, cuGraphDestroy)

typedef struct {
#define SCENARIO_FIELD(field, type, base, exported, pt, direct) type field;
    SCENARIO_API(SCENARIO_FIELD)
#undef SCENARIO_FIELD
    /* The fake's gate (fakeCudaHoldGpu); NULL on a real driver. */
    int (*holdGpu)(int hold);
} cu_api_t;

/* Fills api; returns 0, or prints why not to stderr and returns -1. Called
 * only when a scenario first needs the driver, so `nocuda` never loads it. */
typedef int (*cu_binder_t)(cu_api_t *api);

int scenario_main(int argc, char **argv, cu_binder_t bind);

#endif
