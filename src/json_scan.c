/* JSON member lookup without decoding. See include/moongate/json_scan.h.
 *
 * A validator over the bytes: strings (escapes checked; raw control
 * characters but NUL allowed), numbers as strtod reads them, literals,
 * nesting up to MG_JSON_MAX_DEPTH. Where lua-cjson (the decoder the Lua side
 * uses) is more lenient than RFC 8259, this scan is too: what one takes as an
 * object, the other does (tests/lua/test_json.lua checks both ways on
 * generated and mutated texts). Only the top-level object's keys are
 * compared with the wanted names; a key written with escapes is decoded
 * first, so "\u006dodel" is `model` as it is to any decoder.
 *
 * The relay scans every request and answer it proxies, so this is written
 * for few instructions per byte: one loop over the tokens, the position in
 * a local pointer, and a stack of the open containers' closing bytes
 * instead of recursion (a call per value cost more than most values); the
 * usual string -- no escape -- skipped eight bytes at a time inline; the
 * rare cases (escapes, the last bytes of the text, numbers other than plain
 * integers, escaped keys) in functions of their own. */
#include "moongate/json_scan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A position in the text. Unsigned: bytes index tables and compare by value. */
typedef const unsigned char *ptr;

/* Whitespace is exactly what JSON (and cjson) call whitespace. */
static inline __attribute__((always_inline)) int is_ws(unsigned char c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline __attribute__((always_inline)) ptr skip_ws(ptr p, ptr end) {
  while (p < end && is_ws(*p)) p++;
  return p;
}

static int hex4(const unsigned char *p, unsigned *out) {
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    unsigned char c = p[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

/* ---- strings ------------------------------------------------------------- */

/* Bytes that end a run of plain string content. Raw control characters
 * inside strings are let through as lua-cjson lets them through (a relay
 * should not refuse an answer its clients' decoders take) -- except NUL,
 * which cjson takes for the end of the text. */
static const unsigned char string_stop[256] = {[0] = 1, ['"'] = 1, ['\\'] = 1};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SCAN_WORDS 1
/* The eight bytes at p, loaded as one little-endian word w, with the high
 * bit of each stop byte set: zero when there is none, and the lowest set bit
 * marks the first one. The classic zero-byte test: (c - 1) & ~c has its high
 * bit set only when c is 0. XOR with 0x22.. or 0x5c.. makes '"' or '\\' a
 * zero byte and leaves every high bit as it was, so one ~w serves all three
 * tests. A zero byte's borrow can mark bytes above it falsely, never bytes
 * below it: the lowest mark is exact. */
static inline __attribute__((always_inline)) uint64_t stop_bytes(ptr p) {
  const uint64_t ones = 0x0101010101010101ULL;
  uint64_t w;
  memcpy(&w, p, 8);
  return ((w - ones) | ((w ^ 0x2222222222222222ULL) - ones) | ((w ^ 0x5c5c5c5c5c5c5c5cULL) - ones)) &
         ~w & 0x8080808080808080ULL;
}
#endif

/* The first stop byte at or after p (end if none): eight bytes at a time
 * while eight are left (never reading at or past end: the text need not be
 * NUL-terminated), then one at a time. */
static inline ptr skip_plain(ptr p, ptr end) {
#ifdef SCAN_WORDS
  for (; end - p >= 8; p += 8) {
    uint64_t hit = stop_bytes(p);
    if (hit) return p + ((unsigned)__builtin_ctzll(hit) >> 3);
  }
#endif
  while (p < end && !string_stop[*p]) p++;
  return p;
}

/* The string whose content starts at p (just past its opening quote),
 * checked: returns its closing quote, or NULL with *why set. The scan calls
 * it only for the strings plain_string_end (below) does not take. */
static ptr string_end(ptr p, ptr end, const char **why) {
  for (;;) {
    p = skip_plain(p, end);
    if (p == end) {
      *why = "unterminated string";
      return NULL;
    }
    if (*p == '"') return p;
    if (*p == 0) {
      *why = "NUL in a string";
      return NULL;
    }
    /* a backslash */
    if (end - p < 2) {
      *why = "unterminated string";
      return NULL;
    }
    unsigned char e = p[1];
    if (e == 'u') {
      unsigned cp;
      if (end - p < 6 || hex4(p + 2, &cp) < 0) {
        *why = "bad \\u escape";
        return NULL;
      }
      p += 6;
    } else if (!strchr("\"\\/bfnrt", e) || e == 0) {
      *why = "bad escape in a string";
      return NULL;
    } else {
      p += 2;
    }
  }
}

/* The usual string, inline: its content starts at p and holds no escape,
 * and its closing quote is the first stop byte of a word loaded before wend.
 * Returns that quote, or NULL when the string is not so plain (escapes,
 * errors, the last bytes of the text): string_end then scans it. */
static inline __attribute__((always_inline)) ptr plain_string_end(ptr p, ptr wend) {
#ifdef SCAN_WORDS
  for (; p < wend; p += 8) {
    uint64_t hit = stop_bytes(p);
    if (hit) {
      p += (unsigned)__builtin_ctzll(hit) >> 3;
      return *p == '"' ? p : NULL;
    }
  }
#endif
  return NULL;
}

/* ---- keys ---------------------------------------------------------------- */

/* Appends code point cp as UTF-8 to out (room checked by the caller). */
static size_t put_utf8(unsigned cp, char *out) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Whether the key content s[0..n) (already checked), escapes decoded, is
 * exactly want[0..wn). */
static int escaped_key_is(const unsigned char *s, size_t n, const char *want, size_t wn) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    char tmp[4];
    size_t len;
    if (s[i] != '\\') {
      tmp[0] = (char)s[i];
      len = 1;
      i++;
    } else if (s[i + 1] != 'u') {
      static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
      tmp[0] = to[strchr(from, s[i + 1]) - from];
      len = 1;
      i += 2;
    } else {
      unsigned cp, lo;
      hex4(s + i + 2, &cp);
      i += 6;
      if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= n && s[i] == '\\' && s[i + 1] == 'u' &&
          hex4(s + i + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        i += 6;
      } else if (cp >= 0xD800 && cp <= 0xDFFF) {
        return 0;                      /* a lone surrogate names no UTF-8 key */
      }
      len = put_utf8(cp, tmp);
    }
    if (o + len > wn || memcmp(want + o, tmp, len) != 0) return 0;
    o += len;
  }
  return o == wn;
}

/* Whether a[0..n) and b[0..n) are the same bytes. Not memcmp: a call in
 * the scan's loop makes the compiler save and restore its registers around
 * it, which costs more than comparing a key. Two loads from each side that
 * overlap in the middle -- four bytes each for n from 4 to 7, eight each for
 * n from 8 to 16 -- cover the whole; longer names go eight bytes at a time
 * first. */
static inline int same_bytes(const unsigned char *a, const unsigned char *b, size_t n) {
  if (n < 4) {
    for (size_t i = 0; i < n; i++)
      if (a[i] != b[i]) return 0;
    return 1;
  }
  if (n < 8) {
    uint32_t a0, b0, a1, b1;
    memcpy(&a0, a, 4);
    memcpy(&b0, b, 4);
    memcpy(&a1, a + n - 4, 4);
    memcpy(&b1, b + n - 4, 4);
    return a0 == b0 && a1 == b1;
  }
  uint64_t a0, b0, a1, b1;
  for (; n > 16; a += 8, b += 8, n -= 8) {
    memcpy(&a0, a, 8);
    memcpy(&b0, b, 8);
    if (a0 != b0) return 0;
  }
  memcpy(&a0, a, 8);
  memcpy(&b0, b, 8);
  memcpy(&a1, a + n - 8, 8);
  memcpy(&b1, b + n - 8, 8);
  return a0 == b0 && a1 == b1;
}

/* The first of the wanted members named by the key content k[0..len), or
 * NULL. escaped: the content may hold escapes, so it is decoded to compare. */
static mg_json_member *wanted(mg_json_member *want, int nwant, ptr k, size_t len, int escaped) {
  for (int i = 0; i < nwant; i++) {
    if (escaped ? escaped_key_is(k, len, want[i].key, want[i].key_len)
                : want[i].key_len == len && same_bytes(k, (ptr)want[i].key, len))
      return &want[i];
  }
  return NULL;
}

/* ---- numbers ------------------------------------------------------------- */

/* A number as lua-cjson reads it: whatever strtod takes from the run of
 * these characters (so also hex, inf, nan and "1." -- cjson's default
 * decode_invalid_numbers). */
static int number_char(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' ||
         c == '-' || c == '.';
}

/* Where strtod stops reading the number at p, or NULL if it reads none. The
 * token is copied out first: the text need not be NUL-terminated. (A number
 * of more than 511 characters is refused here where cjson would read it.) */
static ptr strtod_end(ptr p, ptr end) {
  char buf[512];
  size_t k = 0;
  while (k < (size_t)(end - p) && k < sizeof buf - 1 && number_char(p[k])) {
    buf[k] = (char)p[k];
    k++;
  }
  buf[k] = '\0';
  char *stop;
  strtod(buf, &stop);
  return stop == buf ? NULL : p + (stop - buf);
}

/* The end of the number at p, or NULL if there is none. The usual case
 * first, without strtod: a plain integer ends where strtod would stop. */
static inline __attribute__((always_inline)) ptr number_end(ptr p, ptr end) {
  ptr digits = p + (*p == '-'), q = digits;
  while (q < end && *q >= '0' && *q <= '9') q++;
  if (q > digits && (q == end || !number_char(*q))) return q;
  return strtod_end(p, end);
}

/* ---- the scan ------------------------------------------------------------ */

int mg_json_scan_members(const char *text, size_t n, mg_json_member *want, int nwant,
                         const char **err) {
  ptr p = (ptr)text, end = p + n;
  ptr wend = n >= 8 ? end - 7 : p;     /* a word loaded from before wend ends in the text */
  /* The open containers by depth, the top-level object at 1: the byte that
   * closes each, '}' or ']' ('{' + 2, '[' + 2). `close` is the innermost
   * one's, kept at hand. */
  unsigned char closer[MG_JSON_MAX_DEPTH + 1];
  unsigned char close = '}';
  int depth = 1;
  /* The wanted member whose value is being scanned (named by a top-level
   * key): its start is set at the value's first byte, its len when the scan
   * is back at depth 1 after the value. */
  mg_json_member *hit = NULL;
  const char *why;

  /* Bit L set when a wanted name is L < 64 bytes long: one test rules out
   * most keys (of a length no wanted name has) without looking at them. */
  uint64_t lengths = 0;
  for (int k = 0; k < nwant; k++) {
    want[k].start = want[k].len = 0;
    if (want[k].key_len < 64) lengths |= 1ULL << want[k].key_len;
  }
  p = skip_ws(p, end);
  if (p == end || *p != '{') {
    *err = "not a JSON object";
    return -1;
  }
  closer[1] = '}';
  p = skip_ws(p + 1, end);
  if (p < end && *p == '}') {
    p++;
    goto closed;
  }

  /* Each turn scans one element of the innermost open container, from p:
   * `"key": value` in an object, a value in an array. Whitespace is skipped
   * where the expected byte is not found: compact JSON has none, and then
   * the one test that finds the byte is all it costs. */
  for (;;) {
    if (close == '}') {
      if (p == end || *p != '"') {
        p = skip_ws(p, end);
        if (p == end || *p != '"') {
          why = "expected a member name";
          goto refused;
        }
      }
      ptr key = p + 1;
      mg_json_member *named = NULL;
      if (depth > 1) {
        if (!(p = plain_string_end(key, wend)) && !(p = string_end(key, end, &why))) goto refused;
      } else {
        /* A key that string_end had to scan may hold escapes: escaped_key_is
         * compares it (it compares a plain key just as well). */
        int escaped = 0;
        if (!(p = plain_string_end(key, wend))) {
          escaped = 1;
          if (!(p = string_end(key, end, &why))) goto refused;
        }
        size_t klen = (size_t)(p - key);
        if (escaped || klen >= 64 || lengths >> klen & 1) named = wanted(want, nwant, key, klen, escaped);
      }
      p++;
      if (p == end || *p != ':') {
        p = skip_ws(p, end);
        if (p == end || *p != ':') {
          why = "expected ':'";
          goto refused;
        }
      }
      p++;
      if (named) {                     /* its value starts past the whitespace */
        p = skip_ws(p, end);
        named->start = (size_t)(p - (ptr)text);
        hit = named;
      }
    }

  value:
    if (p == end) {
      why = "expected a value";
      goto refused;
    }
    unsigned char c = *p;
    if (c == '"') {                    /* the usual value first */
      ptr q = plain_string_end(p + 1, wend);
      if (!q && !(q = string_end(p + 1, end, &why))) goto refused;
      p = q + 1;
    } else switch (c) {
    case '{':
    case '[':
      if (depth >= MG_JSON_MAX_DEPTH) {  /* this one would be deeper */
        why = "nested too deep";
        goto refused;
      }
      p = skip_ws(p + 1, end);
      if (p < end && *p == c + 2) {    /* empty: a whole value */
        p++;
        break;
      }
      closer[++depth] = close = (unsigned char)(c + 2);
      continue;                        /* to its first element */
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
      if (!(p = number_end(p, end))) {
        why = "bad number";
        goto refused;
      }
      break;
    case 't':
      if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
        p += 4;
        break;
      }
      why = "expected a value";
      goto refused;
    case 'f':
      if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
        p += 5;
        break;
      }
      why = "expected a value";
      goto refused;
    case 'n':
      if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
        p += 4;
        break;
      }
      /* fall through -- it may be "nan" */
    case 'N':
    case 'i':
    case 'I':                          /* inf and nan, any case: strtod reads them */
      if (end - p >= 3 && (strncasecmp((const char *)p, "inf", 3) == 0 ||
                           strncasecmp((const char *)p, "nan", 3) == 0)) {
        if (!(p = strtod_end(p, end))) {
          why = "bad number";
          goto refused;
        }
        break;
      }
      why = "expected a value";
      goto refused;
    case ' ':
    case '\t':
    case '\n':
    case '\r':
      p = skip_ws(p, end);
      goto value;
    default:
      why = "expected a value";
      goto refused;
    }

    /* A value ended at p. Close the containers that end here; stop past
     * the ',' before the next element. */
    for (;;) {
      if (hit && depth == 1) {         /* a wanted member's value: the last one wins */
        hit->len = (size_t)(p - (ptr)text) - hit->start;
        hit = NULL;
      }
      if (p == end) {
        why = close == '}' ? "unterminated object" : "unterminated array";
        goto refused;
      }
      c = *p++;
      if (c == ',') break;
      if (c == close) {
        if (--depth == 0) goto closed;
        close = closer[depth];
      } else if (is_ws(c)) {
        p = skip_ws(p, end);
      } else {
        why = close == '}' ? "expected ',' or '}'" : "expected ',' or ']'";
        goto refused;
      }
    }
  }

closed:                                /* the top-level object, ended at p */
  p = skip_ws(p, end);
  if (p != end) {
    *err = "text after the object";
    return -1;
  }
  return 0;

refused:
  *err = why;
  return -1;
}
