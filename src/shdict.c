/* Shared dictionaries. See include/moongate/shdict.h.
 *
 * One dictionary = a chained hash table plus an LRU list, under one mutex.
 * An entry is one allocation: header, key bytes, then value bytes. Memory
 * accounting counts those allocations; when a write would exceed the
 * capacity, expired entries at the LRU tail go first, then the least
 * recently used ones. Expiry is checked lazily, on access. */
#include "moongate/shdict.h"
#include "moongate/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
  struct entry *hnext;                 /* hash chain */
  struct entry *lru_prev, *lru_next;   /* head = most recently used */
  uint64_t expires;                    /* mg_now_ms() deadline, 0 = never */
  uint32_t hash;
  uint32_t klen, vlen;
  int type;
  double number;
  char data[];                         /* key, then string value */
} entry;

struct mg_shdict {
  char *name;
  size_t capacity, used, count;
  entry **buckets;
  size_t nbuckets;
  entry *lru_head, *lru_tail;
  pthread_mutex_t lock;
  struct mg_shdict *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_shdict *registry;

static uint32_t hash_key(const char *k, size_t n) {
  uint32_t h = 2166136261u;                  /* FNV-1a */
  for (size_t i = 0; i < n; i++) { h ^= (unsigned char)k[i]; h *= 16777619u; }
  return h;
}

static size_t entry_size(size_t klen, size_t vlen) { return sizeof(entry) + klen + vlen; }

mg_shdict *mg_shdict_open(const char *name, size_t capacity) {
  if (!name || !*name || capacity < 8192) return NULL;
  pthread_mutex_lock(&registry_lock);
  mg_shdict *d = registry;
  while (d && strcmp(d->name, name) != 0) d = d->next;
  if (!d) {
    d = mg_xcalloc(1, sizeof *d);
    d->name = mg_xstrdup(name);
    d->capacity = capacity;
    /* About one bucket per 256 bytes of capacity, a power of two. */
    d->nbuckets = 64;
    while (d->nbuckets < capacity / 256 && d->nbuckets < (1u << 22)) d->nbuckets *= 2;
    d->buckets = mg_xcalloc(d->nbuckets, sizeof(entry *));
    pthread_mutex_init(&d->lock, NULL);
    d->next = registry;
    registry = d;
  }
  pthread_mutex_unlock(&registry_lock);
  return d;
}

size_t mg_shdict_capacity(const mg_shdict *d) { return d->capacity; }

static void lru_unlink(mg_shdict *d, entry *e) {
  if (e->lru_prev) e->lru_prev->lru_next = e->lru_next;
  else d->lru_head = e->lru_next;
  if (e->lru_next) e->lru_next->lru_prev = e->lru_prev;
  else d->lru_tail = e->lru_prev;
  e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(mg_shdict *d, entry *e) {
  e->lru_prev = NULL;
  e->lru_next = d->lru_head;
  if (d->lru_head) d->lru_head->lru_prev = e;
  d->lru_head = e;
  if (!d->lru_tail) d->lru_tail = e;
}

static entry **find_slot(mg_shdict *d, const char *key, size_t klen, uint32_t h) {
  entry **pp = &d->buckets[h & (d->nbuckets - 1)];
  while (*pp) {
    entry *e = *pp;
    if (e->hash == h && e->klen == klen && memcmp(e->data, key, klen) == 0) return pp;
    pp = &e->hnext;
  }
  return pp;
}

static void remove_entry(mg_shdict *d, entry **slot) {
  entry *e = *slot;
  *slot = e->hnext;
  lru_unlink(d, e);
  d->used -= entry_size(e->klen, e->vlen);
  d->count--;
  free(e);
}

static void remove_by_pointer(mg_shdict *d, entry *e) {
  entry **slot = find_slot(d, e->data, e->klen, e->hash);
  if (*slot == e) remove_entry(d, slot);
}

/* Looks a key up, dropping it if it has expired. */
static entry **lookup(mg_shdict *d, const char *key, size_t klen, uint32_t h) {
  entry **slot = find_slot(d, key, klen, h);
  if (*slot && (*slot)->expires && (*slot)->expires <= mg_now_ms()) {
    remove_entry(d, slot);
    return find_slot(d, key, klen, h);
  }
  return slot;
}

/* Makes room for `need` more bytes: expired entries from the LRU tail
 * first, then the least recently used. */
static void make_room(mg_shdict *d, size_t need) {
  uint64_t now = mg_now_ms();
  entry *e = d->lru_tail;
  int scanned = 0;
  while (e && d->used + need > d->capacity && scanned < 64) {
    entry *prev = e->lru_prev;
    if (e->expires && e->expires <= now) remove_by_pointer(d, e);
    e = prev;
    scanned++;
  }
  while (d->lru_tail && d->used + need > d->capacity) remove_by_pointer(d, d->lru_tail);
}

int mg_shdict_get(mg_shdict *d, const char *key, size_t klen, mg_shvalue *out,
                  char **buf, size_t *bufcap) {
  uint32_t h = hash_key(key, klen);
  pthread_mutex_lock(&d->lock);
  entry **slot = lookup(d, key, klen, h);
  entry *e = *slot;
  int found = e != NULL;
  if (e) {
    lru_unlink(d, e);
    lru_push_front(d, e);
    out->type = e->type;
    out->number = e->number;
    out->len = e->vlen;
    if (e->type == MG_SHV_STRING) {
      if (*bufcap < e->vlen + 1) {
        *bufcap = e->vlen + 1;
        *buf = mg_xrealloc(*buf, *bufcap);
      }
      memcpy(*buf, e->data + e->klen, e->vlen);
      out->str = *buf;
    }
  }
  pthread_mutex_unlock(&d->lock);
  return found;
}

int mg_shdict_set(mg_shdict *d, const char *key, size_t klen, const mg_shvalue *v,
                  uint64_t ttl_ms, int only_if_absent) {
  size_t vlen = v->type == MG_SHV_STRING ? v->len : 0;
  size_t need = entry_size(klen, vlen);
  if (v->type != MG_SHV_NONE && need > d->capacity) return -1;
  uint32_t h = hash_key(key, klen);
  pthread_mutex_lock(&d->lock);
  entry **slot = lookup(d, key, klen, h);
  if (*slot && only_if_absent) { pthread_mutex_unlock(&d->lock); return -2; }
  if (*slot) remove_entry(d, slot);
  if (v->type == MG_SHV_NONE) { pthread_mutex_unlock(&d->lock); return 0; }
  make_room(d, need);
  entry *e = mg_xmalloc(need);
  memset(e, 0, sizeof *e);
  e->hash = h;
  e->klen = (uint32_t)klen;
  e->vlen = (uint32_t)vlen;
  e->type = v->type;
  e->number = v->number;
  e->expires = ttl_ms ? mg_now_ms() + ttl_ms : 0;
  memcpy(e->data, key, klen);
  if (vlen) memcpy(e->data + klen, v->str, vlen);
  slot = find_slot(d, key, klen, h);     /* make_room may have changed the chain */
  e->hnext = *slot;
  *slot = e;
  lru_push_front(d, e);
  d->used += need;
  d->count++;
  pthread_mutex_unlock(&d->lock);
  return 0;
}

int mg_shdict_incr(mg_shdict *d, const char *key, size_t klen, double delta,
                   int has_init, double init, uint64_t ttl_ms, double *result) {
  uint32_t h = hash_key(key, klen);
  pthread_mutex_lock(&d->lock);
  entry **slot = lookup(d, key, klen, h);
  entry *e = *slot;
  if (e) {
    if (e->type != MG_SHV_NUMBER) { pthread_mutex_unlock(&d->lock); return -3; }
    e->number += delta;
    *result = e->number;
    lru_unlink(d, e);
    lru_push_front(d, e);
    pthread_mutex_unlock(&d->lock);
    return 0;
  }
  pthread_mutex_unlock(&d->lock);
  if (!has_init) return -2;
  /* Absent: create it. Another thread may create it in between; add() then
   * fails and we retry the increment, so no increment is ever lost. */
  mg_shvalue v = {MG_SHV_NUMBER, init + delta, NULL, 0};
  int rc = mg_shdict_set(d, key, klen, &v, ttl_ms, 1);
  if (rc == -2) return mg_shdict_incr(d, key, klen, delta, has_init, init, ttl_ms, result);
  if (rc == 0) *result = init + delta;
  return rc;
}

int mg_shdict_cas(mg_shdict *d, const char *key, size_t klen, int has_expected,
                  double expected, double value, uint64_t ttl_ms) {
  uint32_t h = hash_key(key, klen);
  pthread_mutex_lock(&d->lock);
  entry *e = *lookup(d, key, klen, h);
  int match = has_expected ? (e && e->type == MG_SHV_NUMBER && e->number == expected) : !e;
  if (match && e) {                        /* same size: update in place */
    e->number = value;
    e->expires = ttl_ms ? mg_now_ms() + ttl_ms : 0;
    lru_unlink(d, e);
    lru_push_front(d, e);
  }
  pthread_mutex_unlock(&d->lock);
  if (!match) return -2;
  if (e) return 0;
  mg_shvalue v = {MG_SHV_NUMBER, value, NULL, 0};
  return mg_shdict_set(d, key, klen, &v, ttl_ms, 1);   /* -2 if someone got there first */
}

int mg_shdict_delete(mg_shdict *d, const char *key, size_t klen) {
  mg_shvalue none = {MG_SHV_NONE, 0, NULL, 0};
  return mg_shdict_set(d, key, klen, &none, 0, 0);
}

int64_t mg_shdict_ttl(mg_shdict *d, const char *key, size_t klen) {
  uint32_t h = hash_key(key, klen);
  pthread_mutex_lock(&d->lock);
  entry *e = *lookup(d, key, klen, h);
  int64_t r = !e ? -2 : e->expires ? (int64_t)(e->expires - mg_now_ms()) : -1;
  pthread_mutex_unlock(&d->lock);
  return r;
}

size_t mg_shdict_count(mg_shdict *d) {
  pthread_mutex_lock(&d->lock);
  size_t n = d->count;
  pthread_mutex_unlock(&d->lock);
  return n;
}

void mg_shdict_free_all(void) {
  pthread_mutex_lock(&registry_lock);
  mg_shdict *d = registry;
  registry = NULL;
  pthread_mutex_unlock(&registry_lock);
  while (d) {
    mg_shdict *next = d->next;
    while (d->lru_head) remove_by_pointer(d, d->lru_head);
    free(d->buckets);
    free(d->name);
    pthread_mutex_destroy(&d->lock);
    free(d);
    d = next;
  }
}
