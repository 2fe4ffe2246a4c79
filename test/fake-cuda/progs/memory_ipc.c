/* CUDA IPC scenarios of gvm-memory-prog: one process exports an allocation, another opens it,
 * checks what the first wrote and writes its own bytes, which the first then checks. The handle
 * travels as hex on the command line, so the test decides who talks to whom.
 *
 *   ipc-export mib=N     cuMemAlloc N MiB (default 64), fill generation 1, cuIpcGetMemHandle;
 *                        prints HANDLE <hex> (or IPCGET <error>) and PLAIN <error> <marker> for a
 *                        1 MiB allocation (below swap mode's 2 MiB: the driver's own handle);
 *                        stdin: verify <gen> | free | exit
 *   ipc-import mib=N handle=<hex>
 *                        cuIpcOpenMemHandle (OPENED <error>), verify generation 1, write generation
 *                        2, cuIpcCloseMemHandle (CLOSED <error>)
 * Both take gpu=N (the GPU whose primary context is current), so the two sides may be on different
 * GPUs. */
#define _GNU_SOURCE
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MiB ((size_t)1 << 20)

static unsigned char pattern(uint32_t gen, size_t off)
{
    uint64_t x = (off + (uint64_t)gen * 0x100000001B3ull) * 0x9E3779B97F4A7C15ull;
    return (unsigned char)(x >> 56);
}

static int check(CUdeviceptr p, size_t bytes, uint32_t gen)
{
    unsigned char *h = malloc(bytes);
    if (!h || cuMemcpyDtoH(h, p, bytes) != CUDA_SUCCESS) {
        free(h);
        return 0;
    }
    size_t j = 0;
    while (j < bytes && h[j] == pattern(gen, j))
        j++;
    free(h);
    return j == bytes;
}

static int fill(CUdeviceptr p, size_t bytes, uint32_t gen)
{
    unsigned char *h = malloc(bytes);
    if (!h)
        return 0;
    for (size_t j = 0; j < bytes; j++)
        h[j] = pattern(gen, j);
    CUresult r = cuMemcpyHtoD(p, h, bytes);
    free(h);
    return r == CUDA_SUCCESS;
}

static void print_hex(const char *tag, const CUipcMemHandle *h)
{
    printf("%s ", tag);
    for (size_t i = 0; i < sizeof h->reserved; i++)
        printf("%02x", (unsigned char)h->reserved[i]);
    printf("\n");
}

static int parse_hex(const char *s, CUipcMemHandle *h)
{
    if (!s || strlen(s) != 2 * sizeof h->reserved)
        return 0;
    for (size_t i = 0; i < sizeof h->reserved; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return 0;
        h->reserved[i] = (char)v;
    }
    return 1;
}

static const char *arg(int argc, char **argv, const char *key)
{
    size_t n = strlen(key);
    for (int i = 2; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=')
            return argv[i] + n + 1;
    return NULL;
}

int ipc_main(int argc, char **argv, CUcontext ctx, CUdevice dev);
int ipc_main(int argc, char **argv, CUcontext ctx, CUdevice dev)
{
    (void)ctx, (void)dev;
    const char *mib = arg(argc, argv, "mib");
    size_t bytes = (size_t)(mib ? atoi(mib) : 64) * MiB;
    CUipcMemHandle h;
    if (strcmp(argv[1], "ipc-export") == 0) {
        CUdeviceptr p, small;
        /* the small one first: under a low limit the large one may be over it (and on the host) */
        if (cuMemAlloc(&small, MiB) != CUDA_SUCCESS || cuMemAlloc(&p, bytes) != CUDA_SUCCESS || !fill(p, bytes, 1)) {
            fprintf(stderr, "FAIL cuMemAlloc/fill\n");
            return 1;
        }
        CUresult r = cuIpcGetMemHandle(&h, p);
        if (r == CUDA_SUCCESS)
            print_hex("HANDLE", &h);
        else
            printf("IPCGET %d\n", (int)r);
        CUipcMemHandle hs;
        memset(&hs, 0, sizeof hs);
        r = cuIpcGetMemHandle(&hs, small);
        char marker[9] = {0};
        memcpy(marker, hs.reserved, 8);
        printf("PLAIN %d %s\n", (int)r, marker[0] ? marker : "-");
        fflush(stdout);
        char line[64];
        while (fgets(line, sizeof line, stdin)) {
            if (strncmp(line, "verify ", 7) == 0)
                printf("VERIFIED %s\n", check(p, bytes, (uint32_t)atoi(line + 7)) ? "ok" : "bad");
            else if (strncmp(line, "free", 4) == 0)
                printf("FREED %d\n", (int)cuMemFree(p));
            else if (strncmp(line, "exit", 4) == 0)
                break;
            fflush(stdout);
        }
        return 0;
    }
    if (strcmp(argv[1], "ipc-import") == 0) {
        if (!parse_hex(arg(argc, argv, "handle"), &h)) {
            fprintf(stderr, "FAIL handle=<128 hex digits>\n");
            return 2;
        }
        CUdeviceptr p = 0;
        CUresult r = cuIpcOpenMemHandle(&p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
        printf("OPENED %d\n", (int)r);
        if (r != CUDA_SUCCESS)
            return 0;
        printf("VERIFIED %s\n", check(p, bytes, 1) ? "ok" : "bad");
        printf("WRITTEN %s\n", fill(p, bytes, 2) ? "ok" : "bad");
        printf("CLOSED %d\n", (int)cuIpcCloseMemHandle(p));
        return 0;
    }
    return 2;
}
