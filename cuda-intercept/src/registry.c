/* Open addressing with linear probing and backward-shift deletion (no tombstones to pile up). */
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "registry.h"

static uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

void gvm_registry_init(struct gvm_registry *r) {
  pthread_mutex_init(&r->lock, NULL);
  r->slots = NULL;
  r->capacity = 0;
  r->count = 0;
}

static bool grow(struct gvm_registry *r) {
  uint64_t cap = r->capacity ? r->capacity * 2 : 1024;
  struct gvm_registry_slot *slots = calloc(cap, sizeof *slots);
  if (!slots) return false;
  for (uint64_t i = 0; i < r->capacity; i++) {
    if (!r->slots[i].key) continue;
    uint64_t j = mix(r->slots[i].key) & (cap - 1);
    while (slots[j].key) j = (j + 1) & (cap - 1);
    slots[j] = r->slots[i];
  }
  free(r->slots);
  r->slots = slots;
  r->capacity = cap;
  return true;
}

static int64_t find(struct gvm_registry *r, uint64_t key) {
  if (!r->capacity) return -1;
  for (uint64_t j = mix(key) & (r->capacity - 1);; j = (j + 1) & (r->capacity - 1)) {
    if (r->slots[j].key == key) return (int64_t)j;
    if (!r->slots[j].key) return -1;
  }
}

bool gvm_registry_put(struct gvm_registry *r, uint64_t key, const struct gvm_alloc *v) {
  if (!key) return false;
  int64_t at = find(r, key);
  if (at >= 0) {
    r->slots[at].value = *v;
    return true;
  }
  if ((r->count + 1) * 10 > r->capacity * 7 && !grow(r)) {
    GVM_LOG_ONCE(GVM_LOG_ERROR, "out of memory for the allocation registry; accounting is now approximate");
    return false;
  }
  uint64_t j = mix(key) & (r->capacity - 1);
  while (r->slots[j].key) j = (j + 1) & (r->capacity - 1);
  r->slots[j].key = key;
  r->slots[j].value = *v;
  r->count++;
  return true;
}

struct gvm_alloc *gvm_registry_get(struct gvm_registry *r, uint64_t key) {
  int64_t at = find(r, key);
  return at >= 0 ? &r->slots[at].value : NULL;
}

static void remove_at(struct gvm_registry *r, uint64_t i) {
  uint64_t mask = r->capacity - 1;
  r->slots[i].key = 0;
  r->count--;
  /* shift later members of the probe run back so lookups never stop early */
  for (uint64_t j = (i + 1) & mask; r->slots[j].key; j = (j + 1) & mask) {
    uint64_t home = mix(r->slots[j].key) & mask;
    bool movable = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
    if (movable) {
      r->slots[i] = r->slots[j];
      r->slots[j].key = 0;
      i = j;
    }
  }
}

bool gvm_registry_take(struct gvm_registry *r, uint64_t key, struct gvm_alloc *out) {
  int64_t at = find(r, key);
  if (at < 0) return false;
  if (out) *out = r->slots[at].value;
  remove_at(r, (uint64_t)at);
  return true;
}

void gvm_registry_sweep(struct gvm_registry *r, bool (*visit)(uint64_t, struct gvm_alloc *, void *), void *arg) {
  for (uint64_t i = 0; i < r->capacity;) {
    if (r->slots[i].key && visit(r->slots[i].key, &r->slots[i].value, arg)) {
      remove_at(r, i); /* a later entry may have moved into i: look at it again */
      continue;
    }
    i++;
  }
}
