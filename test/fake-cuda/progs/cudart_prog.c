/* gvm-prog-cudart: the same protocol through NVIDIA's real CUDA runtime. The
 * runtime needs private driver tables (cuGetExportTable) that the fake cannot
 * provide; when it gives up, this prints UNSUPPORTED and exits 3. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int unsupported(const char *call, cudaError_t e)
{
    printf("UNSUPPORTED %s failed: %s (%d); the CUDA runtime needs driver export tables the fake does not "
           "provide\n", call, cudaGetErrorName(e), (int)e);
    return 3;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    cudaError_t e = cudaSetDevice(0);
    if (e != cudaSuccess)
        return unsupported("cudaSetDevice", e);
    void *p = NULL;
    if ((e = cudaMalloc(&p, 1 << 20)) != cudaSuccess)
        return unsupported("cudaMalloc", e);
    size_t free_bytes = 0, total = 0;
    if ((e = cudaMemGetInfo(&free_bytes, &total)) != cudaSuccess)
        return unsupported("cudaMemGetInfo", e);
    printf("READY {\"pid\":%d,\"gpus\":{\"0\":{\"deviceBytes\":%d,\"managedBytes\":0,\"hostBytes\":0,"
           "\"kernels\":0}},\"free\":%zu,\"total\":%zu}\n", (int)getpid(), 1 << 20, free_bytes, total);
    if ((e = cudaFree(p)) != cudaSuccess)
        return unsupported("cudaFree", e);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
        if (strncmp(line, "free", 4) == 0)
            printf("FREED {\"pid\":%d,\"gpus\":{\"0\":{\"deviceBytes\":0,\"managedBytes\":0,\"hostBytes\":0,"
                   "\"kernels\":0}}}\n", (int)getpid());
        else if (strncmp(line, "sync", 4) == 0)
            printf("SYNCED\n");
    }
    return 0;
}
