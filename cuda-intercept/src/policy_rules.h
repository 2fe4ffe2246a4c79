/*
 * The automatic policy's decisions, as pure functions of a policy board snapshot and the clock, so
 * the state machine is tested without processes or a GPU (test/agent/policy_rules_test.c).
 */
#ifndef GVM_POLICY_RULES_H
#define GVM_POLICY_RULES_H

#include <stdbool.h>
#include <stdint.h>

#include "gvm/policy_board.h"

/* What a best-effort agent sees of the processes that outrank it on one GPU. */
struct gvm_policy_view {
  bool hot;                /* one of them is busy (and not frozen by a user) */
  int32_t hot_pid;         /* the one whose burst began last */
  uint64_t hot_since_ns;   /* when that burst began */
  uint64_t quiet_since_ns; /* none busy: when the last of them went idle (0: never busy) */
  uint64_t memory_need;    /* bytes their allocations wait for */
  int32_t need_pid;
  int need_slot;           /* the slot of the one that waits (pids of other containers may be equal) */
  uint64_t memory_others;  /* device bytes held by every other participant */
};

enum gvm_policy_step { GVM_STEP_STAY = 0, GVM_STEP_HOLD = 1, GVM_STEP_RELEASE = 2 };

/* Does `other` outrank a process of class `klass`? Only latency processes publish bursts, and only
 * best-effort processes yield to them. */
bool gvm_policy_outranks(const struct gvm_board_slot *other, uint32_t klass);

/* Reads the board (every field through atomic loads) from the point of view of slot `self`. */
void gvm_policy_scan(const struct gvm_board *b, int self, uint32_t klass, struct gvm_policy_view *v);

/*
 * One decision. held: this process is held now. idle_ns: the hysteresis before a release.
 * *wait_ns is how long the caller may sleep before deciding again if the board does not change
 * (UINT64_MAX: until it changes).
 */
int gvm_policy_decide(bool held, const struct gvm_policy_view *v, uint64_t now_ns, uint64_t idle_ns,
                      uint64_t *wait_ns);

/* Memory to give back: lent bytes that now fit on the GPU beside everyone else, keeping headroom. */
uint64_t gvm_policy_returnable(uint64_t lent, uint64_t total, uint64_t mine, uint64_t others, uint64_t headroom);

#endif
