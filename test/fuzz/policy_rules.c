/*
 * Fuzz target (a, policy board): the automatic policy's decisions over a board that any process of
 * the GPU's group may write (cuda-intercept/src/policy_rules.c, pure: board snapshot in, decision out).
 * Absurd counters in other processes' slots (memory_current, memory_need, busy/idle times near 2^64)
 * must not wrap the sums the decisions rest on.
 *
 * Input: [0] own slot, [1] own class, [2] held, [3..10] now_ns, [11..18] idle_ns, [19..26] lent,
 *        [27..34] total, [35..42] mine, [43..50] headroom, then patches over the board:
 *        u16 offset (modulo the board size), u8 length, that many bytes.
 * Checked with 128-bit arithmetic: the sums of needs and of others' memory, memory to give back
 * (never more than lent, never past the GPU's size), and when a held process is released.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda-intercept/src/policy_rules.h"

typedef unsigned __int128 u128;

static void fail(const char *what) {
  fprintf(stderr, "policy_rules: %s\n", what);
  abort();
}

static uint64_t u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct gvm_board board;
  if (size < 51) return 0;
  memset(&board, 0, sizeof board);
  int self = data[0] % GVM_BOARD_SLOTS;
  uint32_t klass = data[1] % 4;
  bool held = data[2] & 1;
  uint64_t now = u64(data + 3), idle = u64(data + 11), lent = u64(data + 19), total = u64(data + 27),
           mine = u64(data + 35), headroom = u64(data + 43);
  uint8_t *raw = (uint8_t *)&board;
  for (size_t at = 51; at + 3 <= size;) {
    size_t off = (size_t)(data[at] | data[at + 1] << 8) % sizeof board;
    size_t n = data[at + 2];
    at += 3;
    if (n > size - at) n = size - at;
    if (n > sizeof board - off) n = sizeof board - off;
    memcpy(raw + off, data + at, n);
    at += n;
  }

  struct gvm_policy_view v;
  gvm_policy_scan(&board, self, klass, &v);
  u128 others = 0, need = 0;
  bool any_need = false;
  for (int i = 0; i < GVM_BOARD_SLOTS; i++) {
    const struct gvm_board_slot *s = &board.slot[i];
    if (i == self || s->pid == 0) continue;
    others += s->memory_current;
    if (gvm_policy_outranks(s, klass) && s->memory_need) {
      need += s->memory_need;
      any_need = true;
    }
  }
  /* a sum past 2^64 may saturate, never wrap below what one slot alone says */
  if ((u128)v.memory_others != (others > UINT64_MAX ? (u128)UINT64_MAX : others)) fail("others' memory wraps");
  if ((u128)v.memory_need != (need > UINT64_MAX ? (u128)UINT64_MAX : need)) fail("memory need wraps");
  if (any_need != (v.memory_need != 0)) fail("a need is lost");

  uint64_t back = gvm_policy_returnable(lent, total, mine, v.memory_others, headroom);
  if (back > lent) fail("gives back more than was lent");
  if (back && (u128)mine + v.memory_others + headroom + back > total) fail("gives back past the GPU's size");

  uint64_t wait = 0;
  int step = gvm_policy_decide(held, &v, now, idle, &wait);
  /* a release time past 2^64 is "never" (saturated), not a time that wrapped into the past */
  u128 release_at = (u128)v.quiet_since_ns + idle;
  if (release_at > UINT64_MAX) release_at = UINT64_MAX;
  if (step == GVM_STEP_RELEASE && v.quiet_since_ns && (u128)now < release_at) fail("released before the idle time passed");
  if (step == GVM_STEP_STAY && held && !v.hot && wait != UINT64_MAX && (u128)now + wait != release_at)
    fail("wait does not end at the release time");
  return 0;
}
