/*
 * The automatic policy's state machine (cuda-intercept/src/policy_rules.c) driven through sequences
 * of board states: bursts, hysteresis, several latency and best-effort processes, frozen and vanished
 * peers, and the memory give-back rule. Prints "ok N" / "not ok N - what" lines and exits non-zero on
 * any failure; test/policy.test.ts runs it.
 */
#include <stdio.h>
#include <string.h>

#include "policy_rules.h"

#define MS 1000000ull
static int failures, checks;

static void expect(int cond, const char *what) {
  checks++;
  if (cond) {
    printf("ok %d - %s\n", checks, what);
  } else {
    failures++;
    printf("not ok %d - %s\n", checks, what);
  }
}

static struct gvm_board board;

static void join(int slot, int pid, uint32_t klass) {
  memset(&board.slot[slot], 0, sizeof board.slot[slot]);
  board.slot[slot].pid = pid;
  board.slot[slot].klass = klass;
}
static void busy(int slot, uint64_t at) {
  board.slot[slot].busy_since_ns = at;
  board.slot[slot].busy = 1;
}
static void idle(int slot, uint64_t at) {
  board.slot[slot].idle_since_ns = at;
  board.slot[slot].busy = 0;
}

/* Runs one decision for best-effort slot `self` at time `now`, holding state in *held. */
static int step(int self, bool *held, uint64_t now, uint64_t *wait) {
  struct gvm_policy_view v;
  gvm_policy_scan(&board, self, GVM_CLASS_BEST_EFFORT, &v);
  int s = gvm_policy_decide(*held, &v, now, 3 * MS, wait);
  if (s == GVM_STEP_HOLD) *held = true;
  if (s == GVM_STEP_RELEASE) *held = false;
  return s;
}

int main(void) {
  uint64_t wait;
  bool held = false;
  memset(&board, 0, sizeof board);
  join(0, 100, GVM_CLASS_LATENCY);
  join(1, 200, GVM_CLASS_BEST_EFFORT);
  idle(0, 1 * MS);

  expect(step(1, &held, 10 * MS, &wait) == GVM_STEP_STAY && !held, "idle latency peer: best-effort runs");
  expect(wait == UINT64_MAX, "idle: sleep until the board changes");

  busy(0, 20 * MS);
  expect(step(1, &held, 20 * MS + 50000, &wait) == GVM_STEP_HOLD && held, "burst begins: hold");
  struct gvm_policy_view v;
  gvm_policy_scan(&board, 1, GVM_CLASS_BEST_EFFORT, &v);
  expect(v.hot_pid == 100 && v.hot_since_ns == 20 * MS, "the view names the busy peer and when its burst began");
  expect(step(1, &held, 21 * MS, &wait) == GVM_STEP_STAY && held, "still busy: stay held");

  idle(0, 30 * MS);
  expect(step(1, &held, 31 * MS, &wait) == GVM_STEP_STAY && held, "idle for 1 ms < 3 ms hysteresis: stay held");
  expect(wait == 2 * MS, "sleep exactly until the hysteresis ends");
  busy(0, 32 * MS);
  expect(step(1, &held, 32 * MS, &wait) == GVM_STEP_STAY && held, "a new burst within the hysteresis: no release");
  idle(0, 40 * MS);
  expect(step(1, &held, 43 * MS, &wait) == GVM_STEP_RELEASE && !held, "idle for the full hysteresis: release");

  /* two latency processes: released only once both are idle long enough */
  join(2, 300, GVM_CLASS_LATENCY);
  idle(2, 0);
  busy(0, 50 * MS);
  expect(step(1, &held, 50 * MS, &wait) == GVM_STEP_HOLD, "first latency process busy: hold");
  busy(2, 51 * MS);
  idle(0, 52 * MS);
  expect(step(1, &held, 60 * MS, &wait) == GVM_STEP_STAY && held, "the other latency process still busy: stay held");
  gvm_policy_scan(&board, 1, GVM_CLASS_BEST_EFFORT, &v);
  expect(v.hot_pid == 300, "the view names the process still busy");
  idle(2, 61 * MS);
  expect(step(1, &held, 62 * MS, &wait) == GVM_STEP_STAY, "second went idle 1 ms ago: stay held");
  expect(step(1, &held, 64 * MS, &wait) == GVM_STEP_RELEASE, "both idle >= 3 ms: release");

  /* a user's freeze on the latency process: its pending work must not hold us */
  busy(0, 70 * MS);
  board.slot[0].frozen = 1;
  expect(step(1, &held, 70 * MS, &wait) == GVM_STEP_STAY && !held, "busy but frozen by a user: no hold");
  board.slot[0].frozen = 0;
  expect(step(1, &held, 71 * MS, &wait) == GVM_STEP_HOLD, "thawed and still busy: hold");

  /* the latency process dies mid-burst: its slot is cleared (pid 0) by whoever reaps it */
  board.slot[0].pid = 0;
  idle(2, 61 * MS);
  expect(step(1, &held, 72 * MS, &wait) == GVM_STEP_RELEASE && !held,
         "busy peer reaped, the other idle for long: release at once");
  board.slot[2].pid = 0;

  /* only best-effort processes yield, only to latency ones */
  join(3, 400, GVM_CLASS_BEST_EFFORT);
  busy(3, 80 * MS); /* best-effort processes never publish busy, but even if one did... */
  expect(step(1, &held, 80 * MS, &wait) == GVM_STEP_STAY && !held, "a busy best-effort peer does not hold another");
  join(4, 500, GVM_CLASS_NONE);
  busy(4, 80 * MS);
  expect(step(1, &held, 80 * MS, &wait) == GVM_STEP_STAY && !held, "a process of class none does not hold anyone");
  gvm_policy_scan(&board, 0, GVM_CLASS_LATENCY, &v);
  expect(!v.hot, "a latency process never yields");
  expect(gvm_policy_outranks(&board.slot[1], GVM_CLASS_NONE) == false, "class none yields to nobody");

  /* own slot ignored, even if it claims to be busy latency */
  join(5, 600, GVM_CLASS_LATENCY);
  busy(5, 90 * MS);
  gvm_policy_scan(&board, 5, GVM_CLASS_BEST_EFFORT, &v);
  expect(!v.hot, "a process never waits for its own slot");
  board.slot[5].pid = 0;

  /* memory: need is summed over latency peers, memory of everyone else counted */
  join(0, 100, GVM_CLASS_LATENCY);
  board.slot[0].memory_need = 3ull << 30;
  board.slot[0].memory_current = 10ull << 30;
  board.slot[3].memory_current = 5ull << 30;
  gvm_policy_scan(&board, 1, GVM_CLASS_BEST_EFFORT, &v);
  expect(v.memory_need == 3ull << 30 && v.need_pid == 100, "a latency process's memory need is seen");
  expect(v.memory_others == 15ull << 30, "memory of every other participant is summed");
  uint64_t G = 1ull << 30;
  expect(gvm_policy_returnable(4 * G, 80 * G, 20 * G, 50 * G, 1 * G) == 4 * G, "lent memory fits again: all back");
  expect(gvm_policy_returnable(4 * G, 80 * G, 20 * G, 57 * G, 1 * G) == 2 * G, "partly fits: part back");
  expect(gvm_policy_returnable(4 * G, 80 * G, 20 * G, 60 * G, 1 * G) == 0, "no room: nothing back");

  printf("1..%d\n", checks);
  return failures ? 1 : 0;
}
