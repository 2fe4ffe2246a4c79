/* The policy's state machine (see policy_rules.h); no syscalls, no globals. */
#include "policy_rules.h"

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)

/* Other processes' slots hold whatever they wrote (the board is shared by a group): a sum of their
 * counters saturates instead of wrapping to a small number that would look like free memory. */
static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

bool gvm_policy_outranks(const struct gvm_board_slot *other, uint32_t klass) {
  return klass == GVM_CLASS_BEST_EFFORT && LOAD(&other->klass) == GVM_CLASS_LATENCY;
}

void gvm_policy_scan(const struct gvm_board *b, int self, uint32_t klass, struct gvm_policy_view *v) {
  *v = (struct gvm_policy_view){0};
  for (int i = 0; i < GVM_BOARD_SLOTS; i++) {
    const struct gvm_board_slot *s = &b->slot[i];
    int32_t pid = LOAD(&s->pid);
    if (i == self || pid == 0) continue;
    v->memory_others = add_sat(v->memory_others, LOAD(&s->memory_current));
    if (!gvm_policy_outranks(s, klass)) continue;
    uint64_t need = LOAD(&s->memory_need);
    if (need) {
      v->memory_need = add_sat(v->memory_need, need);
      v->need_pid = pid;
      v->need_slot = i;
    }
    /* a user's freeze stops its work: waiting for it to drain would hold us for nothing */
    if (LOAD(&s->busy) && !LOAD(&s->frozen)) {
      uint64_t since = LOAD(&s->busy_since_ns);
      if (!v->hot || since > v->hot_since_ns) {
        v->hot_since_ns = since;
        v->hot_pid = pid;
      }
      v->hot = true;
    } else {
      uint64_t idle = LOAD(&s->idle_since_ns);
      if (idle > v->quiet_since_ns) v->quiet_since_ns = idle;
    }
  }
  if (v->hot) v->quiet_since_ns = 0;
}

int gvm_policy_decide(bool held, const struct gvm_policy_view *v, uint64_t now_ns, uint64_t idle_ns,
                      uint64_t *wait_ns) {
  *wait_ns = UINT64_MAX;
  if (v->hot) {
    if (!held) return GVM_STEP_HOLD;
    return GVM_STEP_STAY;
  }
  if (!held) return GVM_STEP_STAY;
  uint64_t release_at = add_sat(v->quiet_since_ns, idle_ns);
  if (v->quiet_since_ns == 0 || now_ns >= release_at) return GVM_STEP_RELEASE;
  *wait_ns = release_at - now_ns;
  return GVM_STEP_STAY;
}

uint64_t gvm_policy_returnable(uint64_t lent, uint64_t total, uint64_t mine, uint64_t others, uint64_t headroom) {
  uint64_t used = add_sat(add_sat(mine, others), headroom);
  if (used >= total) return 0;
  uint64_t room = total - used;
  return room < lent ? room : lent;
}
