/*
 * cuGetProcAddress: how the CUDA runtime (and anything built on it) reaches every driver entry
 * point. The driver picks the variant for the requested version and flags; we then hand out our hook
 * for exactly the real function it picked, matched by address, so every flag and version combination
 * resolves the way the driver intends and whatever we do not hook passes through untouched.
 */
#include <dlfcn.h>
#include <string.h>

#include "agent.h"

static void *substitute(const char *symbol, void *found) {
  if (!found || gvm_config.disabled) return found;
  for (int id = 0; id < GVM_HOOK_COUNT; id++)
    if (gvm_real_hook_target(id) == found) return gvm_hooks[id].hook;
  if (gvm_config.log_level >= GVM_LOG_DEBUG && symbol) {
    for (int id = 0; id < GVM_HOOK_COUNT; id++)
      if (strcmp(gvm_hooks[id].api, symbol) == 0) {
        Dl_info info;
        const char *name = dladdr(found, &info) && info.dli_sname ? info.dli_sname : "?";
        gvm_log(GVM_LOG_DEBUG, "cuGetProcAddress(%s) returned %p (%s), an entry point gvm does not hook", symbol,
                found, name);
        break;
      }
  }
  return found;
}

CUresult gvm_hook_cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                      CUdriverProcAddressQueryResult *status) {
  CUresult r = GVM_REAL(cuGetProcAddress_v2, symbol, pfn, version, flags, status);
  if (r == CUDA_SUCCESS && pfn) *pfn = substitute(symbol, *pfn);
  return r;
}

CUresult gvm_hook_cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
  CUresult r = GVM_REAL(cuGetProcAddress, symbol, pfn, version, flags);
  if (r == CUDA_SUCCESS && pfn) *pfn = substitute(symbol, *pfn);
  return r;
}
