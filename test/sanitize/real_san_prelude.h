/* Force-included (-include) into cuda-intercept/src/real.c for sanitizer builds only (see
 * cc-launcher.sh).
 *
 * The agent interposes dlsym, and the sanitizer runtimes call dlsym(RTLD_NEXT, ...) while they
 * initialise (their InitializeInterceptors, before any other initialiser ran). The agent's RTLD_NEXT
 * path calls dlopen, dlclose and strcmp, which the runtime intercepts and whose REAL() pointers are
 * still NULL then: a jump to address 0. So until libgvm's own constructors have run (after the
 * runtime's, libgvm depends on it), the exported dlsym below tail-calls glibc's dlsym, which then
 * sees the runtime as its caller and answers exactly what it would without the agent. Afterwards it
 * tail-calls the agent's dlsym (real.c's, renamed by the #define at the end). */
#include <dlfcn.h>
static int gvm_san_ready;
__attribute__((constructor(101))) static void gvm_san_mark_ready(void) {
  __atomic_store_n(&gvm_san_ready, 1, __ATOMIC_RELEASE);
}
void *gvm_san_agent_dlsym(void *handle, const char *name);
__attribute__((visibility("default"), optimize("optimize-sibling-calls"))) void *dlsym(void *handle,
                                                                                         const char *name) {
  if (__atomic_load_n(&gvm_san_ready, __ATOMIC_ACQUIRE)) return gvm_san_agent_dlsym(handle, name);
  static void *(*glibc)(void *, const char *);
  if (!glibc) glibc = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (!glibc) glibc = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
  return glibc(handle, name); /* a tail call: glibc's RTLD_NEXT is relative to our caller */
}
#define dlsym gvm_san_agent_dlsym
