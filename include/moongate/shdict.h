/* Shared dictionaries: key/value stores visible to every worker thread of
 * the process (what local rate limiting and caches use when there is no
 * Redis). Each dictionary has a byte capacity; when full, the least recently
 * used entries are evicted. Entries may expire (TTL). Dictionaries live as
 * long as the process: a reload keeps their contents (as nginx's
 * lua_shared_dict does), a new name in the config creates a new one.
 *
 * Every operation takes the dictionary's mutex for its whole (short)
 * duration; nothing here allocates while another thread waits on I/O. */
#ifndef MG_SHDICT_H
#define MG_SHDICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct mg_shdict mg_shdict;

enum { MG_SHV_NONE, MG_SHV_STRING, MG_SHV_NUMBER, MG_SHV_BOOLEAN };

typedef struct {
  int type;                 /* MG_SHV_* */
  double number;            /* NUMBER, BOOLEAN (0/1) */
  const char *str;          /* STRING: valid until the next call on this value */
  size_t len;
} mg_shvalue;

/* Finds the dictionary `name`, creating it with `capacity` bytes if absent.
 * Returns NULL only for an empty name or a capacity under 8 KiB. */
mg_shdict *mg_shdict_open(const char *name, size_t capacity);
size_t mg_shdict_capacity(const mg_shdict *d);
/* Frees every dictionary (process exit). */
void mg_shdict_free_all(void);

/* get: 1 found (value copied into *out; a string into `buf`, grown as
 * needed), 0 absent or expired. */
int mg_shdict_get(mg_shdict *d, const char *key, size_t klen, mg_shvalue *out,
                  char **buf, size_t *bufcap);
/* set / add (add fails with -2 if the key exists): 0 ok, -1 too large for
 * the dictionary. ttl_ms 0 = no expiry. A NONE value deletes. */
int mg_shdict_set(mg_shdict *d, const char *key, size_t klen, const mg_shvalue *v,
                  uint64_t ttl_ms, int only_if_absent);
/* incr: adds delta to a number; an absent key starts at `init` (and gets
 * ttl_ms) when has_init, else -2. -3 if the value is not a number. */
int mg_shdict_incr(mg_shdict *d, const char *key, size_t klen, double delta,
                   int has_init, double init, uint64_t ttl_ms, double *result);
int mg_shdict_delete(mg_shdict *d, const char *key, size_t klen);
/* Compare-and-set on a number: sets `value` only if the key holds `expected`
 * (or is absent and has_expected is 0). 0 done, -2 the value differed. */
int mg_shdict_cas(mg_shdict *d, const char *key, size_t klen, int has_expected,
                  double expected, double value, uint64_t ttl_ms);
/* Remaining time to live in ms: -1 no expiry, -2 absent. */
int64_t mg_shdict_ttl(mg_shdict *d, const char *key, size_t klen);
size_t mg_shdict_count(mg_shdict *d);

#endif
