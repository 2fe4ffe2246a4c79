/* What the fake's test programs share: a driver call that must succeed, and the primary context of
 * one GPU made current. A failed call ends the program with its name and line, which the tests show. */
#ifndef GVM_TEST_PROG_CHECK_H
#define GVM_TEST_PROG_CHECK_H

#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                 \
    do {                                                                         \
        CUresult r_ = (call);                                                    \
        if (r_ != CUDA_SUCCESS) {                                                \
            fprintf(stderr, "FAIL %s %d (line %d)\n", #call, (int)r_, __LINE__); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* cuInit, the device of this ordinal, its primary context retained and current. */
static inline CUcontext prog_open_gpu(int ordinal, CUdevice *dev_out)
{
    CUdevice dev;
    CUcontext ctx;
    CK(cuInit(0));
    CK(cuDeviceGet(&dev, ordinal));
    CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));
    if (dev_out) *dev_out = dev;
    return ctx;
}

#endif
