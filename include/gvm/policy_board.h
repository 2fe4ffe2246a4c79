/*
 * gvm policy board: one per physical GPU, shared by every agent whose process uses that GPU, at
 * GVM_SHM_DIR/gpu-<uuid hex>.board (mode 0660: processes of one user, or of one group, see each other).
 *
 * It carries what a best-effort agent must learn within a millisecond of a latency process starting
 * a burst: each participant's class, priority and busy flag, and a futex word (seq) bumped on every
 * change. A latency agent flips its busy flag on the first launch of a burst (one load per launch
 * otherwise) and wakes the board only when someone waits; each best-effort agent then stops its own
 * channels, because only a process's own RM client may steer them.
 *
 * Slots are claimed with a compare-and-swap of pid (0 = free). A slot whose process died is reclaimed
 * by whoever notices. A slot with `locked` set belongs to a process that holds an OFD write lock on
 * the slot's first byte of the board file for as long as it lives: F_OFD_GETLK tells from any PID
 * namespace whether it still runs (pids of processes in other containers mean nothing here). Older
 * slots (locked 0) fall back to the pid (start_time guards against reuse). Same versioning rules as
 * control_block.h.
 */
#ifndef GVM_POLICY_BOARD_H
#define GVM_POLICY_BOARD_H

#include "control_block.h"

#define GVM_BOARD_MAGIC 0x42475647u /* "GVGB" little-endian */
#define GVM_BOARD_VERSION_MAJOR 1u
#define GVM_BOARD_VERSION_MINOR 1u /* 1: slot owner locks */
#define GVM_BOARD_SLOTS 64

struct gvm_board_slot {
  int32_t pid;               /* 0: free */
  uint32_t klass;            /* enum gvm_policy_class */
  int32_t priority;          /* 0..15, lower is more important */
  uint32_t busy;             /* latency: 1 from the first launch of a burst until all its work ended */
  uint32_t frozen;           /* frozen by a user: its pending work does not make it busy */
  uint32_t locked;           /* minor 1: its owner holds the OFD lock on the slot's first byte */
  uint64_t start_time;       /* /proc/<pid>/stat field 22, to tell a reused pid */
  uint64_t busy_since_ns;    /* CLOCK_MONOTONIC of the burst's first launch */
  uint64_t idle_since_ns;    /* CLOCK_MONOTONIC when its last burst ended */
  uint64_t bursts;
  uint64_t memory_current;   /* device bytes it holds on this GPU (refreshed by its agent) */
  uint64_t memory_need;      /* latency: bytes an allocation of its is waiting for; 0 when none */
  uint64_t memory_lent;      /* best-effort: bytes it moved to host for others */
  uint64_t reserved1[4];
};

struct gvm_board {
  uint32_t magic;
  uint16_t version_major;
  uint16_t version_minor;
  uint32_t size;
  uint32_t slots;
  uint32_t seq;              /* futex: bumped on every busy/idle/memory change of any slot */
  uint32_t waiters;          /* agents sleeping on seq; a change wakes the board only when non-zero */
  uint8_t uuid[16];
  uint64_t total_bytes;      /* the GPU's memory */
  uint8_t reserved[64 - 48];
  struct gvm_board_slot slot[GVM_BOARD_SLOTS];
};

GVM_STATIC_ASSERT(sizeof(struct gvm_board_slot) == 112, "board slot size");
GVM_STATIC_ASSERT(offsetof(struct gvm_board, seq) == 16, "board.seq");
GVM_STATIC_ASSERT(offsetof(struct gvm_board, slot) == 64, "board.slot");
GVM_STATIC_ASSERT(sizeof(struct gvm_board) == 64 + GVM_BOARD_SLOTS * 112, "board size");

#endif
