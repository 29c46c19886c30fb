/* Unit tests for src/json_scan.c: member spans, what is refused, the nesting
 * limit, and the edges of the eight-byte steps. Every text is scanned from a
 * buffer of exactly its size (no NUL after it), so that a sanitizer build
 * catches any read past the end -- the Lua tests cannot: a Lua string always
 * has a NUL after it. The agreement with cjson is checked on generated texts
 * in tests/lua/test_json.lua. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "moongate/json_scan.h"

/* ---- helpers ------------------------------------------------------------ */

/* Scans text[0..n) copied to a buffer of exactly n bytes, for up to four
 * wanted keys (NULL-terminated); returns the scan's result, and each found
 * value (or "" when absent) in got[]. */
static int scan_n(const char *text, size_t n, const char *const *keys, char got[][256],
                  const char **err) {
  mg_json_member want[4];
  int nwant = 0;
  for (; keys && keys[nwant]; nwant++) {
    want[nwant].key = keys[nwant];
    want[nwant].key_len = strlen(keys[nwant]);
    want[nwant].start = want[nwant].len = 99;   /* must be reset */
  }
  char *copy = malloc(n ? n : 1);
  assert_non_null(copy);
  memcpy(copy, text, n);
  *err = NULL;
  int rc = mg_json_scan_members(copy, n, want, nwant, err);
  for (int k = 0; k < nwant && rc == 0; k++) {
    assert_true(want[k].len < 256);
    assert_true(want[k].start + want[k].len <= n);
    memcpy(got[k], copy + want[k].start, want[k].len);
    got[k][want[k].len] = '\0';
    if (!want[k].len) assert_int_equal(want[k].start, 0);
  }
  free(copy);
  return rc;
}

static int scan(const char *text, const char *const *keys, char got[][256], const char **err) {
  return scan_n(text, strlen(text), keys, got, err);
}

static void assert_refused_n(const char *text, size_t n) {
  char got[4][256];
  const char *err;
  const char *keys[] = {"a", NULL};
  if (scan_n(text, n, keys, got, &err) != -1) fail_msg("accepted: %.*s", (int)n, text);
  assert_non_null(err);
  assert_true(err[0] != '\0');
}

static void assert_refused(const char *text) { assert_refused_n(text, strlen(text)); }

/* The single member "a" of text, which must be accepted ("" when absent). */
static void assert_member(const char *text, const char *want) {
  char got[4][256];
  const char *err;
  const char *keys[] = {"a", NULL};
  if (scan(text, keys, got, &err) != 0) fail_msg("refused (%s): %s", err, text);
  assert_string_equal(got[0], want);
}

/* ---- tests -------------------------------------------------------------- */

static void finds_the_relays_members(void **state) {
  const char *answer =
      "{\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion\",\"usage\":{\"prompt_tokens\":3,"
      "\"completion_tokens\":5,\"total_tokens\":8},\"system_fingerprint\":\"fp_mock\","
      "\"created\":1795487390,\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"logprobs\":null,"
      "\"message\":{\"content\":\"w1 w2 w3 w4 w5\",\"refusal\":null,\"role\":\"assistant\"}}],"
      "\"model\":\"gpt-4o-mini\"}";
  const char *keys[] = {"usage", "model", "absent", NULL};
  char got[4][256];
  const char *err;
  assert_int_equal(scan(answer, keys, got, &err), 0);
  assert_string_equal(got[0], "{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}");
  assert_string_equal(got[1], "\"gpt-4o-mini\"");
  assert_string_equal(got[2], "");

  const char *tokens[] = {"prompt_tokens", "completion_tokens", NULL};
  assert_int_equal(scan(got[0], tokens, got, &err), 0);
  assert_string_equal(got[0], "3");
  assert_string_equal(got[1], "5");
}

static void spans_leave_out_whitespace_and_last_duplicate_wins(void **state) {
  assert_member(" { \"a\" : [1, {\"b\": null}] } ", "[1, {\"b\": null}]");
  assert_member("{\"a\"\n:\t\"x\"\r}", "\"x\"");
  assert_member("{\"a\":1,\"a\":{\"a\":2}}", "{\"a\":2}");
  assert_member("{\"a\":{\"a\":2},\"a\":1}", "1");
  assert_member("{\"b\":{\"a\":2}}", "");             /* only top-level keys count */
  assert_member("{\"b\":[\"a\",{\"a\":3}]}", "");
  assert_member("{}", "");
  assert_member("{\"a\":[]}", "[]");
  assert_member("{\"a\":{ }}", "{ }");

  /* the first of two equal wanted names gets the span */
  const char *keys[] = {"a", "a", NULL};
  char got[4][256];
  const char *err;
  assert_int_equal(scan("{\"a\":1}", keys, got, &err), 0);
  assert_string_equal(got[0], "1");
  assert_string_equal(got[1], "");
}

static void keys_compare_decoded(void **state) {
  assert_member("{\"\\u0061\":1}", "1");
  assert_member("{\"\\u0062\":1}", "");
  char got[4][256];
  const char *err;
  const char *quote[] = {"a\"b", "a\\", NULL};
  assert_int_equal(scan("{\"a\\\"b\":1,\"a\\\\\":2}", quote, got, &err), 0);
  assert_string_equal(got[0], "1");
  assert_string_equal(got[1], "2");
  const char *smile[] = {"\xf0\x9f\x98\x80", "\xed\xa0\xbd", NULL};
  assert_int_equal(scan("{\"\\ud83d\\ude00\":1,\"\\ud83d\":2}", smile, got, &err), 0);
  assert_string_equal(got[0], "1");
  assert_string_equal(got[1], "");                    /* a lone surrogate names no key */
}

/* Wanted names of every length up to 70, against keys equal to them and keys
 * that differ in one byte at each position. */
static void keys_of_every_length(void **state) {
  char name[80], key[80], text[200], got[4][256];
  const char *err;
  for (size_t len = 0; len <= 70; len++) {
    for (size_t i = 0; i < len; i++) name[i] = (char)('a' + i % 26);
    name[len] = '\0';
    const char *keys[] = {name, NULL};
    snprintf(text, sizeof text, "{\"%s\":1}", name);
    assert_int_equal(scan(text, keys, got, &err), 0);
    assert_string_equal(got[0], "1");
    for (size_t at = 0; at < len; at++) {
      memcpy(key, name, len + 1);
      key[at] = 'Z';
      snprintf(text, sizeof text, "{\"%s\":1,\"%.*s\":2}", key, (int)len - 1, name);
      assert_int_equal(scan(text, keys, got, &err), 0);
      assert_string_equal(got[0], "");
    }
  }
}

static void numbers_as_strtod_reads_them(void **state) {
  const char *ok[] = {"0", "-1", "01", "1.", "12.5", "-0.25E-2", "1e3", "0x1F", "-inf", "NaN",
                      "Infinity", "nan", "INF", "123456789012345678901234567890"};
  char text[64];
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    snprintf(text, sizeof text, "{\"a\":%s}", ok[i]);
    assert_member(text, ok[i]);
  }
  const char *bad[] = {".5", "+1", "-", "1.5.3", "1e", "12x", "tru", "nul", "nullx", "Inf1x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    snprintf(text, sizeof text, "{\"a\":%s}", bad[i]);
    assert_refused(text);
  }
}

static void refuses_what_is_not_one_object(void **state) {
  const char *bad[] = {"", "  ", "[]", "\"x\"", "1", "{", "{\"a\"}", "{\"a\":1,}", "{\"a\":1 \"b\":2}",
                       "{\"a\":\"unterminated}", "{\"a\":[1,2}", "{a:1}", "{\"a\":1}x",
                       "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\\u12G4\"}", "{\"a\":1}{\"b\":2}",
                       "{\"a\":[1,]}", "{\"a\" 1}", "{,}", "{\"a\":}", "{\"a\":1,\"b\"}", "\v{}",
                       "{\"a\":[1}", "{\"a\":{]}", "{\"a\":\"\\"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_refused(bad[i]);
  assert_refused_n("{\"a\":\"nul\0\"}", 12);
  assert_refused_n("{\"a\":1}\0", 8);
  assert_refused_n("{\"a\":\"x\"}", 0);
}

/* The top-level object is depth 1: with 999 arrays (or objects) nested in
 * its member, the text has the most levels allowed; with 1000, too many. */
static void nesting_limit(void **state) {
  static char text[8 * MG_JSON_MAX_DEPTH + 64];   /* {"x": and } a level */
  for (int kind = 0; kind < 2; kind++) {
    for (int levels = MG_JSON_MAX_DEPTH - 2; levels <= MG_JSON_MAX_DEPTH + 1; levels++) {
      size_t n = 0;
      n += (size_t)sprintf(text + n, "{\"b\":");
      for (int i = 0; i < levels - 2; i++) n += (size_t)sprintf(text + n, kind ? "{\"x\":" : "[");
      n += (size_t)sprintf(text + n, kind ? "{}" : "[]");
      for (int i = 0; i < levels - 2; i++) n += (size_t)sprintf(text + n, kind ? "}" : "]");
      n += (size_t)sprintf(text + n, "}");
      /* levels counts the top-level object too */
      if (levels <= MG_JSON_MAX_DEPTH) assert_member(text, "");
      else assert_refused(text);
    }
  }
}

/* String content of every length at every offset from the end of the text
 * and from the start of an eight-byte step: the stop byte (quote, backslash,
 * NUL) must be found wherever it falls, its neighbours not taken for one,
 * and nothing read past the end. */
static void strings_across_the_eight_byte_steps(void **state) {
  const char fill[] = "ab!#[]\x01" "c\xef\xbf\xbdxyz0123456789]^_`!#";
  char content[64], text[160], want[80];
  for (size_t pad = 0; pad < 8; pad++) {
    for (size_t len = 0; len <= 40; len++) {
      for (size_t i = 0; i < len; i++) content[i] = fill[(i + pad) % (sizeof fill - 1)];
      content[len] = '\0';
      const char *tails[] = {"", "\\n", "\\\"", "\\u00e9", "\\\\"};
      for (size_t t = 0; t < sizeof tails / sizeof *tails; t++) {
        int n = snprintf(text, sizeof text, "{%*s\"a\":\"%s%s\"}", (int)pad, "", content, tails[t]);
        snprintf(want, sizeof want, "\"%s%s\"", content, tails[t]);
        assert_member(text, want);
        /* every cut short of the end is refused */
        for (int cut = 0; cut < n; cut++) assert_refused_n(text, (size_t)cut);
        /* a NUL anywhere in the string is refused */
        for (size_t at = 0; at < len; at++) {
          char nul[160];
          memcpy(nul, text, (size_t)n);
          nul[pad + 6 + at] = '\0';     /* the content starts after {, pad, "a":" */
          assert_refused_n(nul, (size_t)n);
        }
      }
    }
  }
}

/* Prefixes of texts that end in a number, literal, escape or key. */
static void cut_short_anywhere(void **state) {
  const char *texts[] = {"{\"a\":123}", "{\"a\":-12.5e3}", "{\"a\":true}", "{\"a\":false}",
                         "{\"a\":null}", "{\"a\":\"\\u00e9\"}", "{\"a\":NaN}", "{\"\\u0061\":1}",
                         "{\"abcdefghijklmnopqrstuvwxyz\":[1,{\"b\":[]}]}"};
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
    size_t n = strlen(texts[i]);
    for (size_t cut = 0; cut < n; cut++) assert_refused_n(texts[i], cut);
    char got[4][256];
    const char *err;
    assert_int_equal(scan(texts[i], NULL, got, &err), 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(finds_the_relays_members),
    cmocka_unit_test(spans_leave_out_whitespace_and_last_duplicate_wins),
    cmocka_unit_test(keys_compare_decoded),
    cmocka_unit_test(keys_of_every_length),
    cmocka_unit_test(numbers_as_strtod_reads_them),
    cmocka_unit_test(refuses_what_is_not_one_object),
    cmocka_unit_test(nesting_limit),
    cmocka_unit_test(strings_across_the_eight_byte_steps),
    cmocka_unit_test(cut_short_anywhere),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
