/*
 * Replays RM ioctl traffic recorded on a real GPU (GVM_RM_TRACE format: one line per ioctl,
 * "nr fd size ret creating_gpu arg-hex params-hex") through the agent's observer, then checks what
 * the agent publishes in the control block: client, subdevice, TSGs by engine, channels per TSG.
 * Then frees the compute TSG the way libcuda does and checks its channels go with it.
 * Usage: gvm-test-rm-replay TRACE   (prints TAP-like ok/not ok lines; exit 0 when all pass)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda-intercept/src/agent.h"
#include "../../cuda-intercept/src/rm_abi.h"

static int failures, checks;
static void check(int cond, const char *what) {
  checks++;
  if (!cond) failures++;
  printf("%s %d - %s\n", cond ? "ok" : "not ok", checks, what);
}

static size_t unhex(const char *s, uint8_t *out, size_t room) {
  if (s[0] == '-') return 0;
  size_t n = 0;
  for (; s[0] && s[1] && n < room; s += 2) {
    unsigned v;
    if (sscanf(s, "%2x", &v) != 1) break;
    out[n++] = (uint8_t)v;
  }
  return n;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s TRACE\n", argv[0]);
    return 2;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) {
    perror(argv[1]);
    return 2;
  }
  gvm_block = calloc(1, sizeof *gvm_block);
  gvm_block->gpu[0].present = 1;
  gvm_block->gpu[0].priority = 8; /* the driver default: replaying must not issue controls */
  static char line[16384], arg_hex[512], params_hex[12000];
  static uint8_t params_store[2048][64]; /* params must outlive nothing: the observer reads them at once */
  int lines = 0, allocs = 0;
  uint32_t compute_tsg = 0, client = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned nr, size;
    int fd, ret, tag;
    if (sscanf(line, "%x %d %u %d %d %511s %11999s", &nr, &fd, &size, &ret, &tag, arg_hex, params_hex) != 7) continue;
    uint8_t arg[64] = {0};
    unhex(arg_hex, arg, sizeof arg);
    uint8_t *params = params_store[lines % 2048];
    memset(params, 0, 64);
    size_t plen = unhex(params_hex, params, 64);
    if (plen && (nr == RM_ESC_ALLOC || nr == RM_ESC_CONTROL)) {
      uint64_t p = (uint64_t)(uintptr_t)params;
      memcpy(arg + 16, &p, 8);
    }
    gvm_rm_set_creating_gpu(tag);
    gvm_rm_observe(fd, nr, size, arg, ret);
    gvm_rm_set_creating_gpu(-1);
    lines++;
    if (nr == RM_ESC_ALLOC) {
      allocs++;
      uint32_t w[4];
      memcpy(w, arg, 16);
      uint32_t engine = 0;
      memcpy(&engine, params + 12, 4);
      if (w[3] == RM_CLASS_TSG && engine == RM_ENGINE_GR && !compute_tsg) {
        compute_tsg = w[2];
        client = w[0];
      }
    }
  }
  fclose(f);
  printf("# replayed %d ioctls (%d allocs)\n", lines, allocs);
  check(lines > 100 && compute_tsg != 0, "trace holds a compute TSG allocation");

  gvm_rm_publish_all();
  struct gvm_gpu_block *g = &gvm_block->gpu[0];
  check((g->rm_seq & 1) == 0 && g->rm_seq > 0, "seqlock even after publishing");
  check(g->rm_client == client, "client is the one that owns the compute TSG");
  check(g->rm_fd >= 0, "fd of that client recorded");
  check(g->rm_subdevice != 0, "subdevice of the same client and device found");
  int engines[16] = {0}, compute_channels = -1;
  for (uint32_t i = 0; i < g->tsg_count; i++) {
    if (g->tsg[i].engine_type < 16) engines[g->tsg[i].engine_type]++;
    if (g->tsg[i].handle == compute_tsg) compute_channels = (int)g->tsg[i].channel_count;
  }
  check(engines[1] >= 1, "a compute (GR) TSG");
  check(engines[11] + engines[12] + engines[13] >= 3, "three copy-engine TSGs");
  check(compute_channels == 8, "compute TSG has its 8 channels");
  int all_gpfifo = g->channel_count > 0;
  for (uint32_t i = 0; i < g->channel_count; i++)
    if ((g->channel[i].class_id & 0xff) != 0x6f) all_gpfifo = 0;
  check(all_gpfifo, "only GPFIFO channel objects listed (never the 0x9067 context share)");

  /* libcuda frees a TSG with RM_FREE {hRoot, hObjectParent, hObjectOld, status} */
  uint32_t free_args[4] = {client, g->rm_device, compute_tsg, 0};
  uint32_t before = g->channel_count;
  gvm_rm_observe(g->rm_fd, RM_ESC_FREE, 16, free_args, 0);
  int still = 0;
  for (uint32_t i = 0; i < g->tsg_count; i++) still |= g->tsg[i].handle == compute_tsg;
  check(!still && g->channel_count + 8 == before, "freeing the TSG drops it and its channels");
  check(g->rm_client == 0 || g->rm_client == client, "no stale client after the compute TSG went");

  /* a failed allocation (RM status != 0) must not be recorded */
  uint8_t tsg_params[16] = {0};
  tsg_params[12] = 1;
  uint8_t bad[48] = {0};
  uint32_t head[4] = {client, g->rm_device ? g->rm_device : 1, 0x5cf00001, RM_CLASS_TSG};
  memcpy(bad, head, 16);
  uint64_t p = (uint64_t)(uintptr_t)tsg_params;
  memcpy(bad + 16, &p, 8);
  uint32_t status = 0x1f;
  memcpy(bad + 40, &status, 4);
  gvm_rm_set_creating_gpu(0);
  gvm_rm_observe(8, RM_ESC_ALLOC, 48, bad, 0);
  gvm_rm_set_creating_gpu(-1);
  int seen = 0;
  for (uint32_t i = 0; i < g->tsg_count; i++) seen |= g->tsg[i].handle == 0x5cf00001;
  check(!seen, "an allocation the RM refused is not recorded");
  printf("1..%d\n", checks);
  return failures ? 1 : 0;
}
