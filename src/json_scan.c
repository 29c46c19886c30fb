/* JSON member lookup without decoding. See include/moongate/json_scan.h.
 *
 * A recursive-descent validator over the bytes: strings (escapes checked;
 * raw control characters but NUL allowed), numbers as strtod reads them,
 * literals, nesting up to MG_JSON_MAX_DEPTH. Where lua-cjson (the decoder the
 * Lua side uses) is more lenient than RFC 8259, this scan is too: what one
 * takes as an object, the other does (tests/lua/test_json.lua checks both
 * ways on generated and mutated texts). Only the top-level object's keys are
 * compared with the wanted names; a key written with escapes is decoded
 * first, so "\u006dodel" is `model` as it is to any decoder. */
#include "moongate/json_scan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
  const unsigned char *s;
  size_t n, i;
  const char *err;
} scanner;

static int fail(scanner *sc, const char *why) {
  if (!sc->err) sc->err = why;
  return -1;
}

/* Inline: called before and after every value and key (compact JSON has
 * no whitespace, so this is usually one compare). */
static inline __attribute__((always_inline)) void skip_ws(scanner *sc) {
  while (sc->i < sc->n) {
    unsigned char c = sc->s[sc->i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    sc->i++;
  }
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

/* Bytes that end a run of plain string content. Raw control characters
 * inside strings are let through as lua-cjson lets them through (a relay
 * should not refuse an answer its clients' decoders take) -- except NUL,
 * which cjson takes for the end of the text. */
static const unsigned char string_stop[256] = {[0] = 1, ['"'] = 1, ['\\'] = 1};

/* The first stop byte at or after i (n if none). Eight bytes at a time where
 * they can be loaded as one little-endian word: a byte equal to NUL, '"' or
 * '\\' makes a zero byte in w, w ^ 0x22.., or w ^ 0x5c.., and the lowest
 * bit of the classic has-zero-byte test marks the first one exactly (the
 * text of an answer is mostly string content: this is most of the scan). */
static size_t skip_plain(const unsigned char *s, size_t i, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  while (i + 8 <= n) {
    uint64_t w, q, b;
    memcpy(&w, s + i, 8);
    q = w ^ 0x2222222222222222ULL;
    b = w ^ 0x5c5c5c5c5c5c5c5cULL;
    uint64_t hit = ((w - ones) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b);
    hit &= highs;
    if (hit) return i + ((size_t)__builtin_ctzll(hit) >> 3);
    i += 8;
  }
#endif
  while (i < n && !string_stop[s[i]]) i++;
  return i;
}

/* The string that opens at sc->i: checked, sc->i moved past it; its content
 * is [*start, *end) and *escaped says whether it holds a backslash. */
static int scan_string(scanner *sc, size_t *start, size_t *end, int *escaped) {
  size_t i = sc->i + 1;
  *escaped = 0;
  *start = i;
  while (i < sc->n) {
    i = skip_plain(sc->s, i, sc->n);
    if (i >= sc->n) break;
    unsigned char c = sc->s[i];
    if (c == 0) return fail(sc, "NUL in a string");
    if (c == '"') {
      *end = i;
      sc->i = i + 1;
      return 0;
    }
    if (c == '\\') {
      *escaped = 1;
      if (i + 1 >= sc->n) break;
      unsigned char e = sc->s[i + 1];
      if (e == 'u') {
        unsigned cp;
        if (i + 6 > sc->n || hex4(sc->s + i + 2, &cp) < 0) return fail(sc, "bad \\u escape");
        i += 6;
        continue;
      }
      if (!strchr("\"\\/bfnrt", e) || e == 0) return fail(sc, "bad escape in a string");
      i += 2;
      continue;
    }
  }
  return fail(sc, "unterminated string");
}

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

/* Whether the escaped key content s[0..n) (already checked) decodes to
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

/* A number as lua-cjson reads it: whatever strtod takes from here (so also
 * hex, inf, nan and "1." -- cjson's default decode_invalid_numbers). The
 * token is copied out first: the text need not be NUL-terminated. (A number
 * of more than 511 characters is refused here where cjson would read it.) */
static int number_char(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' ||
         c == '-' || c == '.';
}

static int scan_number(scanner *sc) {
  /* The usual case first: a plain integer ends where strtod would stop. */
  size_t j = sc->i + (sc->s[sc->i] == '-');
  size_t digits = j;
  while (j < sc->n && sc->s[j] >= '0' && sc->s[j] <= '9') j++;
  if (j > digits && (j == sc->n || !number_char(sc->s[j]))) {
    sc->i = j;
    return 0;
  }
  char buf[512];
  size_t k = 0;
  while (sc->i + k < sc->n && k < sizeof buf - 1 && number_char(sc->s[sc->i + k])) {
    buf[k] = (char)sc->s[sc->i + k];
    k++;
  }
  buf[k] = '\0';
  char *end;
  strtod(buf, &end);
  if (end == buf) return fail(sc, "bad number");
  sc->i += (size_t)(end - buf);
  return 0;
}

static int scan_literal(scanner *sc, const char *word, size_t len) {
  if (sc->n - sc->i < len || memcmp(sc->s + sc->i, word, len) != 0) return fail(sc, "bad literal");
  sc->i += len;
  return 0;
}

static int scan_value(scanner *sc, int depth, mg_json_member *want, int nwant);

/* The object or array that opens at sc->i. `want` is non-NULL only for the
 * top-level object, whose keys are compared. */
static int scan_container(scanner *sc, int depth, mg_json_member *want, int nwant) {
  if (depth > MG_JSON_MAX_DEPTH) return fail(sc, "nested too deep");
  int object = sc->s[sc->i] == '{';
  unsigned char close = object ? '}' : ']';
  sc->i++;
  skip_ws(sc);
  if (sc->i < sc->n && sc->s[sc->i] == close) {
    sc->i++;
    return 0;
  }
  for (;;) {
    mg_json_member *hit = NULL;
    if (object) {
      size_t ks, ke;
      int escaped;
      if (sc->i >= sc->n || sc->s[sc->i] != '"') return fail(sc, "expected a member name");
      if (scan_string(sc, &ks, &ke, &escaped) < 0) return -1;
      for (int k = 0; k < nwant && want; k++) {
        if (escaped ? escaped_key_is(sc->s + ks, ke - ks, want[k].key, want[k].key_len)
                    : (ke - ks == want[k].key_len && memcmp(sc->s + ks, want[k].key, ke - ks) == 0)) {
          hit = &want[k];
          break;
        }
      }
      skip_ws(sc);
      if (sc->i >= sc->n || sc->s[sc->i] != ':') return fail(sc, "expected ':'");
      sc->i++;
      skip_ws(sc);
    }
    size_t vstart = sc->i;
    if (scan_value(sc, depth + 1, NULL, 0) < 0) return -1;
    if (hit) {
      hit->start = vstart;
      hit->len = sc->i - vstart;
    }
    skip_ws(sc);
    if (sc->i >= sc->n) return fail(sc, object ? "unterminated object" : "unterminated array");
    unsigned char c = sc->s[sc->i++];
    if (c == close) return 0;
    if (c != ',') return fail(sc, object ? "expected ',' or '}'" : "expected ',' or ']'");
    skip_ws(sc);
  }
}

static int scan_value(scanner *sc, int depth, mg_json_member *want, int nwant) {
  if (sc->i >= sc->n) return fail(sc, "expected a value");
  unsigned char c = sc->s[sc->i];
  size_t a, b;
  int escaped;
  if (c == '{' || c == '[') return scan_container(sc, depth, want, nwant);
  if (c == '"') return scan_string(sc, &a, &b, &escaped);
  if (c == '-' || (c >= '0' && c <= '9')) return scan_number(sc);
  size_t left = sc->n - sc->i;
  const char *p = (const char *)sc->s + sc->i;
  if (left >= 4 && memcmp(p, "true", 4) == 0) return scan_literal(sc, "true", 4);
  if (left >= 5 && memcmp(p, "false", 5) == 0) return scan_literal(sc, "false", 5);
  if (left >= 4 && memcmp(p, "null", 4) == 0) return scan_literal(sc, "null", 4);
  if (left >= 3 && (strncasecmp(p, "inf", 3) == 0 || strncasecmp(p, "nan", 3) == 0)) return scan_number(sc);
  return fail(sc, "expected a value");
}

int mg_json_scan_members(const char *text, size_t n, mg_json_member *want, int nwant,
                         const char **err) {
  scanner sc = {(const unsigned char *)text, n, 0, NULL};
  for (int k = 0; k < nwant; k++) want[k].start = want[k].len = 0;
  skip_ws(&sc);
  if (sc.i >= n || sc.s[sc.i] != '{') {
    *err = "not a JSON object";
    return -1;
  }
  if (scan_container(&sc, 1, want, nwant) < 0) {
    *err = sc.err;
    return -1;
  }
  skip_ws(&sc);
  if (sc.i != n) {
    *err = "text after the object";
    return -1;
  }
  return 0;
}
