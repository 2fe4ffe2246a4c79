/*
 * Finding the real driver: libcuda is opened once and every symbol gvm needs is resolved in one
 * pass. Interposes dlsym so that a program (or the CUDA runtime) asking a libcuda handle for a hooked
 * symbol gets the hook; other names pass through untouched.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <string.h>

#include "agent.h"

struct gvm_real gvm_real;

const struct gvm_hook_info gvm_hooks[GVM_HOOK_COUNT] = {
#define GVM_HOOK(sym, api, ver, flavor, pfn) \
  [GVM_HOOK_ID_##sym] = {#sym, api, ver, GVM_FLAVOR_##flavor, (void *)&gvm_hook_##sym},
#include "hooks.def"
#undef GVM_HOOK
};

typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn real_dlsym_ptr;
static void *libcuda_handle;
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;

static void find_real_dlsym(void) {
  /* dlvsym is not interposed, so it reaches libc's (glibc >= 2.34) or libdl's dlsym. */
  static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
  for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !real_dlsym_ptr; i++)
    real_dlsym_ptr = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
}

void *gvm_real_dlsym(void *handle, const char *name) {
  if (GVM_UNLIKELY(!__atomic_load_n(&real_dlsym_ptr, __ATOMIC_ACQUIRE))) find_real_dlsym();
  return real_dlsym_ptr ? real_dlsym_ptr(handle, name) : NULL;
}

static void resolve(void) {
  const char *path = gvm_config.libcuda[0] ? gvm_config.libcuda : "libcuda.so.1";
  /* RTLD_NOLOAD first: reuse the library the program already loaded, whatever its path. */
  libcuda_handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!libcuda_handle || gvm_config.libcuda[0]) libcuda_handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
  if (!libcuda_handle) {
    gvm_log(GVM_LOG_DEBUG, "libcuda not loadable (%s); hooks pass nothing through", dlerror());
    return;
  }
#define GVM_HOOK(sym, api, ver, flavor, pfn) \
  gvm_real.p_##sym = (pfn)gvm_real_dlsym(libcuda_handle, #sym);
#include "hooks.def"
#undef GVM_HOOK
#define GVM_DRIVER(sym, pfn) gvm_real.p_##sym = (pfn)gvm_real_dlsym(libcuda_handle, #sym);
#include "driver.def"
#undef GVM_DRIVER
}

void gvm_resolve_driver(void) { pthread_once(&resolve_once, resolve); }

void *gvm_real_hook_target(int id) {
  gvm_resolve_driver();
  void **table = (void **)&gvm_real;
  return (id >= 0 && id < GVM_HOOK_COUNT) ? table[id] : NULL;
}

int gvm_hook_by_symbol(const char *symbol) {
  if (!symbol || symbol[0] != 'c' || symbol[1] != 'u') return -1;
  for (int i = 0; i < GVM_HOOK_COUNT; i++)
    if (strcmp(gvm_hooks[i].symbol, symbol) == 0) return i;
  return -1;
}

/*
 * dlsym interposition. The real answer decides whether the symbol exists; we only substitute our
 * hook for a symbol libcuda itself exports, so "not found" stays "not found".
 */
/*
 * RTLD_NEXT means "after the caller", and through this interposer the caller would be libgvm: other
 * preloaded libraries (or the CUDA runtime's own interposers) would find themselves and recurse. So
 * RTLD_NEXT is answered by walking the link map from the real caller's object onwards.
 */
static void *next_after(const void *caller, const char *name) {
  Dl_info info;
  struct link_map *lm = NULL;
  if (!dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm) return NULL;
  for (struct link_map *it = lm->l_next; it; it = it->l_next) {
    void *h = dlopen(it->l_name && it->l_name[0] ? it->l_name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (!h) continue;
    void *p = gvm_real_dlsym(h, name);
    dlclose(h);
    Dl_info where;
    if (p && dladdr(p, &where) && where.dli_fbase == (void *)it->l_addr) return p;
    /* l_addr is the load bias; for a DSO it equals its base address, which dladdr reports */
    if (p && dladdr(p, &where) && it->l_name && where.dli_fname && strcmp(where.dli_fname, it->l_name) == 0)
      return p;
  }
  return NULL;
}

__attribute__((visibility("default"))) void *dlsym(void *handle, const char *name) {
  void *found = handle == RTLD_NEXT ? next_after(__builtin_return_address(0), name)
                                    : gvm_real_dlsym(handle, name);
  if (!found || gvm_config.disabled) return found;
  int id = gvm_hook_by_symbol(name);
  if (id < 0) return found;
  /* our own exports are found first through RTLD_DEFAULT; only hand out hooks libcuda backs */
  if (!gvm_real_hook_target(id)) return found == gvm_hooks[id].hook ? NULL : found;
  return gvm_hooks[id].hook;
}
