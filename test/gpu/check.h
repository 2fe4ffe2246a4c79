/*
 * What every device check of test/gpu reports the same way: one "ok   ..." or "FAIL ..." line per
 * check (test/gpu/check-all.sh counts them), "N failure(s)" at the end, and exit status 2 when a
 * driver call fails and the check cannot go on. The pid is in that line because some checks fork.
 */
#ifndef GVM_TEST_GPU_CHECK_H
#define GVM_TEST_GPU_CHECK_H

#include <cuda.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)             \
  do {                               \
    bool ok_ = (cond);               \
    failures += !ok_;                \
    printf(ok_ ? "ok   " : "FAIL "); \
    printf(__VA_ARGS__);             \
    printf("\n");                    \
  } while (0)

#define CU(call)                                                                                         \
  do {                                                                                                   \
    CUresult r_ = (call);                                                                                \
    if (r_ != CUDA_SUCCESS) {                                                                            \
      const char *n_ = NULL;                                                                             \
      cuGetErrorName(r_, &n_);                                                                           \
      printf("FAIL %s: %s (line %d, pid %d)\n%d failure(s)\n", #call, n_ ? n_ : "?", __LINE__, (int)getpid(), \
             failures + 1);                                                                              \
      fflush(stdout);                                                                                    \
      exit(2);                                                                                           \
    }                                                                                                    \
  } while (0)

/* The last line of every check; its exit status. */
static inline int check_summary(void) {
  printf("%d failure(s)\n", failures);
  return failures != 0;
}

#endif
