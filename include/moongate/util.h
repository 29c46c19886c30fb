/* Small helpers shared by every subsystem: a growable byte buffer, clocks,
 * and the parsers for the human-friendly values of a config ("32k", "10s"). */
#ifndef MG_UTIL_H
#define MG_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A growable byte buffer. Owns `data`; free with mg_buf_free. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
} mg_buf;

/* Room for `extra` more bytes and a NUL. Reserve and append are inline: a
 * relayed request makes about ninety small appends (header copies, the
 * request and response heads), and the call was most of their cost. */
void mg_buf_grow(mg_buf *b, size_t extra);
static inline void mg_buf_reserve(mg_buf *b, size_t extra) {
  if (b->len + extra + 1 > b->cap) mg_buf_grow(b, extra);
}
static inline void mg_buf_append(mg_buf *b, const void *p, size_t n) {
  mg_buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}
void mg_buf_appends(mg_buf *b, const char *s);
void mg_buf_printf(mg_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends `s` as the body of a JSON string (no quotes), escaping as needed. */
void mg_buf_json_escape(mg_buf *b, const char *s, size_t n);
void mg_buf_free(mg_buf *b);
/* The length of the well-formed UTF-8 character at s (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF), or 0 when the bytes there are
 * not one. NUL counts as not one: PostgreSQL text cannot hold it. */
size_t mg_utf8_char_len(const unsigned char *s, size_t left);

/* Objects kept on a free list for reuse (transfers, exchanges) are poisoned
 * there in sanitizer builds, so a use after release is still reported as it
 * would be after free(). No-ops otherwise. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define MG_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define MG_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define MG_POISON(p, n) ((void)(p), (void)(n))
#define MG_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
/* A pooled object with up to two of its own buffers (`a`, `b`: fields of
 * obj, or NULL): poisoned as it goes on the free list -- after its link is
 * set -- and unpoisoned before anything of it is read again. */
void mg_pool_poison(void *obj, size_t size, mg_buf *a, mg_buf *b);
void mg_pool_unpoison(void *obj, size_t size, mg_buf *a, mg_buf *b);
/* Fast paths for the response head and the access log: no printf on the
 * hot path. mg_buf_append_ms writes nanoseconds as milliseconds with three
 * decimals ("12.345"). */
void mg_buf_append_uint(mg_buf *b, uint64_t v);
void mg_buf_append_hex(mg_buf *b, uint64_t v);
void mg_buf_append_ms(mg_buf *b, uint64_t ns);

/* Aborts the process: used only for out-of-memory, as h2o does. */
void *mg_xmalloc(size_t n);
void *mg_xcalloc(size_t n, size_t size);
void *mg_xrealloc(void *p, size_t n);
char *mg_xstrdup(const char *s);

/* Clocks. On a worker thread (after mg_clock_use_loop) they are the time
 * of the loop's current turn: mg_now_ms() is uv_now(), and mg_wall_time()
 * is read at most once per millisecond of it. Elsewhere they are read as
 * called. */
struct uv_loop_s;
void mg_clock_use_loop(struct uv_loop_s *loop);
uint64_t mg_now_ms(void);          /* monotonic milliseconds */
double mg_wall_time(void);         /* unix seconds, sub-second precision */

/* "32k", "1m", "512" -> bytes. Returns -1 when the text is not a size. */
int64_t mg_parse_size(const char *s);
/* "10s", "1500ms", "1m", "2h", "250" (seconds) -> milliseconds; -1 if invalid. */
int64_t mg_parse_duration_ms(const char *s);
/* ":8080", "8080", "127.0.0.1:8080", "[::1]:8080", "*:80" -> host (may be "")
 * and port. Returns 0, or -1 with a reason in err. */
int mg_parse_listen(const char *s, char *host, size_t hostlen, int *port,
                    const char **err);

/* n random lower-case hex digits (not NUL-terminated); a fast per-thread
 * generator seeded from /dev/urandom: ids, not secrets. */
void mg_random_hex(char *out, int n);

int mg_strcaseeq(const char *a, size_t alen, const char *b, size_t blen);

#endif
