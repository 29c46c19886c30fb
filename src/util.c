/* Buffers, clocks and value parsers. See include/moongate/util.h. */
#include "moongate/util.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

void *mg_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) { fputs("moongate: out of memory\n", stderr); abort(); }
  return p;
}

void *mg_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) { fputs("moongate: out of memory\n", stderr); abort(); }
  return p;
}

void *mg_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) { fputs("moongate: out of memory\n", stderr); abort(); }
  return q;
}

char *mg_xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(mg_xmalloc(n), s, n);
}

void mg_buf_grow(mg_buf *b, size_t extra) {
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  b->data = mg_xrealloc(b->data, cap);
  b->cap = cap;
}

void mg_buf_appends(mg_buf *b, const char *s) { mg_buf_append(b, s, strlen(s)); }

void mg_buf_printf(mg_buf *b, const char *fmt, ...) {
  /* Format straight into the spare room; only a line that does not fit is
   * formatted twice (once more after growing the buffer). */
  mg_buf_reserve(b, 64);
  size_t room = b->cap - b->len;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->data + b->len, room, fmt, ap);
  va_end(ap);
  if (n < 0) { b->data[b->len] = '\0'; return; }
  if ((size_t)n >= room) {
    mg_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

/* Bytes a JSON string can hold as they are (one table lookup per byte: the
 * access log escapes a few strings on every request). */
static const unsigned char json_plain[256] = {
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
    R16(0), R16(0), /* control characters */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,               /* '"' */
    R16(1), R16(1),
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,               /* '\\' */
    R16(1),
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,               /* DEL */
    R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1),
#undef R16
};

void mg_buf_json_escape(mg_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  mg_buf_reserve(b, n + 8);
  size_t plain = 0;                    /* start of the run not yet copied */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (json_plain[c]) continue;
    mg_buf_append(b, s + plain, i - plain);
    plain = i + 1;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      mg_buf_append(b, e, 2);
    } else if (c == '\n') {
      mg_buf_append(b, "\\n", 2);
    } else if (c == '\r') {
      mg_buf_append(b, "\\r", 2);
    } else if (c == '\t') {
      mg_buf_append(b, "\\t", 2);
    } else {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      mg_buf_append(b, e, 6);
    }
  }
  mg_buf_append(b, s + plain, n - plain);
}

void mg_buf_append_uint(mg_buf *b, uint64_t v) {
  char tmp[24];
  int i = sizeof tmp;
  do { tmp[--i] = (char)('0' + v % 10); v /= 10; } while (v);
  mg_buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

void mg_buf_append_ms(mg_buf *b, uint64_t ns) {
  uint64_t us = (ns + 500) / 1000;
  char frac[4] = {(char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10), (char)('0' + us % 10), 0};
  mg_buf_append_uint(b, us / 1000);
  mg_buf_append(b, ".", 1);
  mg_buf_append(b, frac, 3);
}

void mg_buf_append_hex(mg_buf *b, uint64_t v) {
  static const char hex[] = "0123456789abcdef";
  char tmp[16];
  int i = sizeof tmp;
  do { tmp[--i] = hex[v & 15]; v >>= 4; } while (v);
  mg_buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

size_t mg_utf8_char_len(const unsigned char *s, size_t left) {
  unsigned char b = s[0];
  if (b >= 0x01 && b <= 0x7F) return 1;
  size_t size;
  unsigned char lo = 0x80, hi = 0xBF;           /* allowed range of the second byte */
  if (b >= 0xC2 && b <= 0xDF) {
    size = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    size = 3;
    if (b == 0xE0) lo = 0xA0;                    /* no overlong forms */
    else if (b == 0xED) hi = 0x9F;               /* no UTF-16 surrogates */
  } else if (b >= 0xF0 && b <= 0xF4) {
    size = 4;
    if (b == 0xF0) lo = 0x90;
    else if (b == 0xF4) hi = 0x8F;               /* nothing past U+10FFFF */
  } else {
    return 0;
  }
  if (left < size || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < size; k++)
    if (s[k] < 0x80 || s[k] > 0xBF) return 0;
  return size;
}

void mg_buf_free(mg_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void mg_pool_poison(void *obj, size_t size, mg_buf *a, mg_buf *b) {
  if (a && a->data) MG_POISON(a->data, a->cap);
  if (b && b->data) MG_POISON(b->data, b->cap);
  MG_POISON(obj, size);
}

void mg_pool_unpoison(void *obj, size_t size, mg_buf *a, mg_buf *b) {
  MG_UNPOISON(obj, size);
  if (a && a->data) MG_UNPOISON(a->data, a->cap);
  if (b && b->data) MG_UNPOISON(b->data, b->cap);
}

/* A worker thread's clocks are its event loop's: libuv reads the monotonic
 * clock once per turn (uv_now), and the wall clock is read again only when
 * that has moved on -- as nginx caches its time per event-loop cycle. A
 * request used to read the clocks ~8 times (shdict expiry, core.now()),
 * ~3% of the worker's user time. Threads without a loop (the main thread,
 * `moongate test`) read the clocks directly. */
static __thread uv_loop_t *clock_loop;
static __thread uint64_t wall_read_at = UINT64_MAX;   /* uv_now() of the cached read */
static __thread double wall_cached;

void mg_clock_use_loop(uv_loop_t *loop) {
  clock_loop = loop;
  wall_read_at = UINT64_MAX;
}

uint64_t mg_now_ms(void) {
  /* uv_now() is CLOCK_MONOTONIC (or its coarse variant) in ms: the same
   * clock as below, so deadlines stored by one thread suit the others. */
  if (clock_loop) return uv_now(clock_loop);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double read_wall_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double mg_wall_time(void) {
  if (!clock_loop) return read_wall_time();
  uint64_t turn = uv_now(clock_loop);
  if (turn != wall_read_at) {
    wall_read_at = turn;
    wall_cached = read_wall_time();
  }
  return wall_cached;
}

/* Parses a non-negative decimal number with an optional fraction; returns the
 * position after it, or NULL. */
static const char *parse_number(const char *s, double *out) {
  char *end;
  if (!isdigit((unsigned char)*s)) return NULL;
  double v = strtod(s, &end);
  if (end == s || v < 0) return NULL;
  *out = v;
  return end;
}

int64_t mg_parse_size(const char *s) {
  double v;
  const char *p = parse_number(s, &v);
  if (!p) return -1;
  double mul = 1;
  if (*p) {
    switch (tolower((unsigned char)*p)) {
      case 'k': mul = 1024; break;
      case 'm': mul = 1024.0 * 1024; break;
      case 'g': mul = 1024.0 * 1024 * 1024; break;
      default: return -1;
    }
    p++;
    if (tolower((unsigned char)*p) == 'b') p++;   /* "32kb" */
    if (*p) return -1;
  }
  double r = v * mul;
  if (r > 9.0e18) return -1;
  return (int64_t)r;
}

int64_t mg_parse_duration_ms(const char *s) {
  double total = 0;
  const char *p = s;
  if (!*p) return -1;
  while (*p) {
    double v;
    const char *p_start = p;
    p = parse_number(p, &v);
    if (!p) return -1;
    double mul;
    if (!*p) {                         /* a bare number means seconds, alone */
      if (p_start == s) { mul = 1000; }
      else return -1;
    } else if (strncmp(p, "ms", 2) == 0) { mul = 1; p += 2; }
    else if (*p == 's') { mul = 1000; p++; }
    else if (*p == 'm') { mul = 60000; p++; }
    else if (*p == 'h') { mul = 3600000; p++; }
    else return -1;
    total += v * mul;
  }
  if (total > 9.0e15) return -1;
  return (int64_t)(total + 0.5);
}

int mg_parse_listen(const char *s, char *host, size_t hostlen, int *port,
                    const char **err) {
  const char *colon;
  size_t hl = 0;
  const char *h = "";
  if (s[0] == '[') {                   /* [v6]:port */
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':') { *err = "expected [address]:port"; return -1; }
    h = s + 1;
    hl = (size_t)(close - s - 1);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon) {
      if (memchr(s, ':', (size_t)(colon - s))) { *err = "IPv6 addresses need brackets: [::1]:8080"; return -1; }
      h = s;
      hl = (size_t)(colon - s);
    }
  }
  const char *ps = colon ? colon + 1 : s;
  if (!*ps) { *err = "missing port"; return -1; }
  long p = 0;
  for (const char *q = ps; *q; q++) {
    if (!isdigit((unsigned char)*q)) { *err = "port is not a number"; return -1; }
    p = p * 10 + (*q - '0');
    if (p > 65535) break;
  }
  if (p < 1 || p > 65535) { *err = "port out of range 1-65535"; return -1; }
  if (hl == 1 && h[0] == '*') hl = 0;
  if (hl >= hostlen) { *err = "address too long"; return -1; }
  memcpy(host, h, hl);
  host[hl] = '\0';
  *port = (int)p;
  return 0;
}

int mg_strcaseeq(const char *a, size_t alen, const char *b, size_t blen) {
  return alen == blen && strncasecmp(a, b, alen) == 0;
}

void mg_random_hex(char *out, int n) {
  static __thread uint64_t state;
  if (!state) {
    state = mg_now_ms() ^ ((uint64_t)(uintptr_t)&state << 16);
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) { if (fread(&state, sizeof state, 1, f) != 1) state ^= 0x9e3779b97f4a7c15ULL; fclose(f); }
    if (!state) state = 0x9e3779b97f4a7c15ULL;
  }
  static const char hex[] = "0123456789abcdef";
  /* Every proxied request takes 48 digits (its traceparent): two digits per
   * table lookup, sixteen per draw, the low nibble first. */
  static const char pairs[513] =     /* byte b: hex[b & 15], hex[b >> 4] */
    "00102030405060708090a0b0c0d0e0f001112131415161718191a1b1c1d1e1f1"
    "02122232425262728292a2b2c2d2e2f203132333435363738393a3b3c3d3e3f3"
    "04142434445464748494a4b4c4d4e4f405152535455565758595a5b5c5d5e5f5"
    "06162636465666768696a6b6c6d6e6f607172737475767778797a7b7c7d7e7f7"
    "08182838485868788898a8b8c8d8e8f809192939495969798999a9b9c9d9e9f9"
    "0a1a2a3a4a5a6a7a8a9aaabacadaeafa0b1b2b3b4b5b6b7b8b9babbbcbdbebfb"
    "0c1c2c3c4c5c6c7c8c9cacbcccdcecfc0d1d2d3d4d5d6d7d8d9dadbdcdddedfd"
    "0e1e2e3e4e5e6e7e8e9eaebecedeeefe0f1f2f3f4f5f6f7f8f9fafbfcfdfefff";
  while (n > 0) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;   /* xorshift64 */
    uint64_t bits = state;
    if (n >= 16) {
      for (int i = 0; i < 16; i += 2, bits >>= 8) memcpy(out + i, pairs + 2 * (bits & 255), 2);
      out += 16;
      n -= 16;
      continue;
    }
    for (int i = 0; i < n; i++, bits >>= 4) out[i] = hex[bits & 15];
    return;
  }
}
