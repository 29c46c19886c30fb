/* Unit tests for src/util.c: the config value parsers and mg_buf. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "moongate/util.h"

/* ---- mg_parse_size ------------------------------------------------------ */

static void size_plain_number_is_bytes(void **state) {
  assert_int_equal(mg_parse_size("512"), 512);
  assert_int_equal(mg_parse_size("0"), 0);
}

static void size_suffixes_are_binary_multiples(void **state) {
  assert_int_equal(mg_parse_size("32k"), 32 * 1024);
  assert_int_equal(mg_parse_size("1m"), 1024 * 1024);
  assert_int_equal(mg_parse_size("1g"), 1024LL * 1024 * 1024);
}

static void size_accepts_b_after_suffix_and_any_case(void **state) {
  assert_int_equal(mg_parse_size("32kb"), 32 * 1024);
  assert_int_equal(mg_parse_size("32KB"), 32 * 1024);
  assert_int_equal(mg_parse_size("2M"), 2 * 1024 * 1024);
}

static void size_accepts_a_fraction(void **state) {
  assert_int_equal(mg_parse_size("1.5k"), 1536);
}

static void size_rejects_bad_text(void **state) {
  assert_int_equal(mg_parse_size(""), -1);
  assert_int_equal(mg_parse_size("k"), -1);
  assert_int_equal(mg_parse_size("-1"), -1);
  assert_int_equal(mg_parse_size("1x"), -1);
  assert_int_equal(mg_parse_size(" 1"), -1);
  assert_int_equal(mg_parse_size("1 k"), -1);
  assert_int_equal(mg_parse_size("1kbb"), -1);
  assert_int_equal(mg_parse_size("1kx"), -1);
}

static void size_rejects_overflow(void **state) {
  assert_int_equal(mg_parse_size("99999999999g"), -1);
}

/* ---- mg_parse_duration_ms ----------------------------------------------- */

static void duration_units(void **state) {
  assert_int_equal(mg_parse_duration_ms("10s"), 10000);
  assert_int_equal(mg_parse_duration_ms("1500ms"), 1500);
  assert_int_equal(mg_parse_duration_ms("1m"), 60000);
  assert_int_equal(mg_parse_duration_ms("2h"), 7200000);
}

static void duration_bare_number_is_seconds(void **state) {
  assert_int_equal(mg_parse_duration_ms("250"), 250000);
  assert_int_equal(mg_parse_duration_ms("0"), 0);
}

static void duration_components_add_up(void **state) {
  assert_int_equal(mg_parse_duration_ms("1m30s"), 90000);
  assert_int_equal(mg_parse_duration_ms("1h30m"), 5400000);
  assert_int_equal(mg_parse_duration_ms("1s500ms"), 1500);
}

static void duration_accepts_a_fraction(void **state) {
  assert_int_equal(mg_parse_duration_ms("1.5s"), 1500);
  assert_int_equal(mg_parse_duration_ms("0.5"), 500);
}

static void duration_rejects_bad_text(void **state) {
  assert_int_equal(mg_parse_duration_ms(""), -1);
  assert_int_equal(mg_parse_duration_ms("s"), -1);
  assert_int_equal(mg_parse_duration_ms("10x"), -1);
  assert_int_equal(mg_parse_duration_ms("-1s"), -1);
  assert_int_equal(mg_parse_duration_ms("10S"), -1);
  assert_int_equal(mg_parse_duration_ms("1ss"), -1);
}

static void duration_rejects_trailing_bare_number(void **state) {
  assert_int_equal(mg_parse_duration_ms("1m30"), -1);
  assert_int_equal(mg_parse_duration_ms("1h5"), -1);
}

static void duration_rejects_trailing_bare_number_after_zero(void **state) {
  /* The bare-number rule must not depend on the earlier components being 0. */
  assert_int_equal(mg_parse_duration_ms("0m30"), -1);
}

/* ---- mg_parse_listen ---------------------------------------------------- */

typedef struct { char host[64]; int port; const char *err; } listen_result;

static int try_listen(const char *s, listen_result *r) {
  strcpy(r->host, "junk");
  r->port = -7;
  r->err = NULL;
  return mg_parse_listen(s, r->host, sizeof r->host, &r->port, &r->err);
}

static void assert_listen_ok(const char *s, const char *host, int port) {
  listen_result r;
  if (try_listen(s, &r) != 0) fail_msg("\"%s\" rejected: %s", s, r.err ? r.err : "?");
  assert_string_equal(r.host, host);
  assert_int_equal(r.port, port);
}

static void assert_listen_bad(const char *s) {
  listen_result r;
  if (try_listen(s, &r) != -1) fail_msg("\"%s\" accepted as \"%s\":%d", s, r.host, r.port);
  assert_non_null(r.err);
}

static void listen_port_only(void **state) {
  assert_listen_ok(":8080", "", 8080);
  assert_listen_ok("8080", "", 8080);
}

static void listen_ipv4_and_name(void **state) {
  assert_listen_ok("127.0.0.1:8080", "127.0.0.1", 8080);
  assert_listen_ok("localhost:1", "localhost", 1);
  assert_listen_ok("0.0.0.0:65535", "0.0.0.0", 65535);
}

static void listen_ipv6_in_brackets(void **state) {
  assert_listen_ok("[::1]:8080", "::1", 8080);
  assert_listen_ok("[::]:443", "::", 443);
}

static void listen_star_means_all_interfaces(void **state) {
  assert_listen_ok("*:80", "", 80);
}

static void listen_rejects_missing_port(void **state) {
  assert_listen_bad("");
  assert_listen_bad(":");
  assert_listen_bad("127.0.0.1:");
  assert_listen_bad("[::1]:");
  assert_listen_bad("[::1]");
  assert_listen_bad("[::1");
}

static void listen_rejects_port_out_of_range(void **state) {
  assert_listen_bad(":0");
  assert_listen_bad(":70000");
  assert_listen_bad(":65536");
  assert_listen_bad(":99999999999999999999");
}

static void listen_rejects_unbracketed_ipv6(void **state) {
  assert_listen_bad("::1:80");
}

static void listen_rejects_non_numeric_port(void **state) {
  assert_listen_bad("host:abc");
  assert_listen_bad(":80a");
  assert_listen_bad(":-80");
  assert_listen_bad("abc");
}

static void listen_rejects_host_too_long(void **state) {
  char host[8];
  int port = 0;
  const char *err = NULL;
  assert_int_equal(mg_parse_listen("verylonghost:80", host, sizeof host, &port, &err), -1);
  assert_non_null(err);
}

/* ---- mg_buf ------------------------------------------------------------- */

static void buf_append_keeps_data_nul_terminated(void **state) {
  mg_buf b = {0};
  mg_buf_append(&b, "abc", 3);
  mg_buf_appends(&b, "def");
  assert_int_equal(b.len, 6);
  assert_string_equal(b.data, "abcdef");
  mg_buf_free(&b);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, 0);
}

static void buf_append_keeps_embedded_nul(void **state) {
  mg_buf b = {0};
  mg_buf_append(&b, "a\0b", 3);
  assert_int_equal(b.len, 3);
  assert_memory_equal(b.data, "a\0b", 4);
  mg_buf_free(&b);
}

static void buf_grows_past_initial_capacity(void **state) {
  mg_buf b = {0};
  char chunk[100];
  memset(chunk, 'x', sizeof chunk);
  for (int i = 0; i < 50; i++) mg_buf_append(&b, chunk, sizeof chunk);
  assert_int_equal(b.len, 5000);
  assert_true(b.cap > b.len);
  assert_int_equal(b.data[4999], 'x');
  assert_int_equal(b.data[5000], '\0');
  mg_buf_free(&b);
}

static void buf_reserve_gives_room_without_changing_len(void **state) {
  mg_buf b = {0};
  mg_buf_appends(&b, "hi");
  mg_buf_reserve(&b, 1000);
  assert_int_equal(b.len, 2);
  assert_true(b.cap >= 1003);
  assert_string_equal(b.data, "hi");
  mg_buf_free(&b);
}

static void buf_printf_appends_formatted_text(void **state) {
  mg_buf b = {0};
  mg_buf_appends(&b, "n=");
  mg_buf_printf(&b, "%d,%s", 42, "ok");
  assert_string_equal(b.data, "n=42,ok");
  assert_int_equal(b.len, 7);
  mg_buf_free(&b);
}

static void buf_printf_handles_long_output(void **state) {
  mg_buf b = {0};
  char big[1001];
  memset(big, 'y', 1000);
  big[1000] = '\0';
  mg_buf_appends(&b, "<");
  mg_buf_printf(&b, "%s>", big);
  assert_int_equal(b.len, 1002);
  assert_int_equal(b.data[0], '<');
  assert_int_equal(b.data[1000], 'y');
  assert_string_equal(b.data + 1001, ">");
  mg_buf_free(&b);
}

/* A line that fills the spare room exactly is formatted again after the buffer
 * grows: nothing is cut and the terminating NUL is in place. */
static void buf_printf_fills_spare_room_exactly(void **state) {
  mg_buf b = {0};
  mg_buf_reserve(&b, 64);
  size_t room = b.cap - b.len;
  char line[512];
  memset(line, 'z', room);
  line[room] = '\0';
  mg_buf_printf(&b, "%s", line);
  assert_int_equal(b.len, room);
  assert_int_equal(b.data[room - 1], 'z');
  assert_int_equal(b.data[room], '\0');
  mg_buf_free(&b);
}

static void buf_append_ms_rounds_to_microseconds(void **state) {
  static const struct { uint64_t ns; const char *want; } cases[] = {
    {0, "0.000"}, {499, "0.000"}, {500, "0.001"}, {1234567, "1.235"},
    {999999, "1.000"}, {2000000, "2.000"}, {61234000000ull, "61234.000"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mg_buf b = {0};
    mg_buf_append_ms(&b, cases[i].ns);
    assert_string_equal(b.data, cases[i].want);
    mg_buf_free(&b);
  }
}

/* ---- mg_utf8_char_len ------------------------------------------------------ */

static size_t char_len(const char *s, size_t n) { return mg_utf8_char_len((const unsigned char *)s, n); }

static void utf8_char_len_accepts_well_formed_characters(void **state) {
  assert_int_equal(char_len("a", 1), 1);
  assert_int_equal(char_len("\x7f", 1), 1);
  assert_int_equal(char_len("\xc3\xa9", 2), 2);              /* é */
  assert_int_equal(char_len("\xe2\x82\xac", 3), 3);          /* € */
  assert_int_equal(char_len("\xed\x9f\xbf", 3), 3);          /* U+D7FF, just below the surrogates */
  assert_int_equal(char_len("\xf0\x9f\x98\x80", 4), 4);      /* U+1F600 */
  assert_int_equal(char_len("\xf4\x8f\xbf\xbf", 4), 4);      /* U+10FFFF */
}

static void utf8_char_len_refuses_bad_bytes(void **state) {
  assert_int_equal(char_len("\0", 1), 0);                    /* NUL */
  assert_int_equal(char_len("\x80", 1), 0);                  /* a lone continuation byte */
  assert_int_equal(char_len("\xc0\xaf", 2), 0);              /* overlong "/" */
  assert_int_equal(char_len("\xe0\x80\xaf", 3), 0);          /* overlong, three bytes */
  assert_int_equal(char_len("\xed\xa0\x80", 3), 0);          /* a UTF-16 surrogate */
  assert_int_equal(char_len("\xf4\x90\x80\x80", 4), 0);      /* past U+10FFFF */
  assert_int_equal(char_len("\xf5\x80\x80\x80", 4), 0);
  assert_int_equal(char_len("\xe2\x82", 2), 0);              /* cut off */
  assert_int_equal(char_len("\xe2\x82\xac", 2), 0);          /* cut off by the length given */
  assert_int_equal(char_len("\xe2\x28\xac", 3), 0);          /* a bad continuation */
}

/* ---- mg_buf_json_escape ------------------------------------------------- */

/* Escapes n bytes of s into a fresh buffer and compares with want. */
static void assert_escape(const char *s, size_t n, const char *want) {
  mg_buf b = {0};
  mg_buf_json_escape(&b, s, n);
  assert_int_equal(b.len, strlen(want));
  assert_memory_equal(b.data, want, b.len);
  mg_buf_free(&b);
}

static void json_escape_plain_text_unchanged(void **state) {
  assert_escape("hello world", 11, "hello world");
}

static void json_escape_quotes_and_backslash(void **state) {
  assert_escape("say \"hi\"", 8, "say \\\"hi\\\"");
  assert_escape("a\\b", 3, "a\\\\b");
}

static void json_escape_newline_return_tab(void **state) {
  assert_escape("a\nb\rc\td", 7, "a\\nb\\rc\\td");
}

static void json_escape_other_control_chars_as_unicode(void **state) {
  assert_escape("\x01", 1, "\\u0001");
  assert_escape("\x1f", 1, "\\u001f");
  assert_escape("\x7f", 1, "\\u007f");
  assert_escape("a\0b", 3, "a\\u0000b");
}

static void json_escape_passes_utf8_through(void **state) {
  assert_escape("caf\xc3\xa9", 5, "caf\xc3\xa9");
}

/* Every byte value: kept as it is exactly when JSON allows it raw. */
static void json_escape_every_byte(void **state) {
  for (int c = 0; c < 256; c++) {
    char ch = (char)c;
    mg_buf b = {0};
    mg_buf_json_escape(&b, &ch, 1);
    int kept = b.len == 1 && b.data[0] == ch;
    assert_int_equal(kept, c >= 0x20 && c != 0x7f && c != '"' && c != '\\');
    mg_buf_free(&b);
  }
}

static void json_escape_appends_and_terminates(void **state) {
  mg_buf b = {0};
  mg_buf_appends(&b, "{\"k\":\"");
  mg_buf_json_escape(&b, "x\"y", 3);
  mg_buf_appends(&b, "\"}");
  assert_string_equal(b.data, "{\"k\":\"x\\\"y\"}");
  mg_buf_free(&b);
}

static void json_escape_long_input_grows_buffer(void **state) {
  mg_buf b = {0};
  char in[600];
  memset(in, '"', sizeof in);
  mg_buf_json_escape(&b, in, sizeof in);
  assert_int_equal(b.len, 1200);
  for (size_t i = 0; i < b.len; i += 2) {
    assert_int_equal(b.data[i], '\\');
    assert_int_equal(b.data[i + 1], '"');
  }
  assert_int_equal(b.data[b.len], '\0');
  mg_buf_free(&b);
}

/* ---- mg_random_hex ------------------------------------------------------ */

/* Any length, every digit lower-case hex, nothing written past n, and two
 * draws differ (16 digits come from each 64-bit draw). */
static void random_hex_fills_exactly_n_hex_digits(void **state) {
  (void)state;
  static const char digits[] = "0123456789abcdef";
  for (int n = 1; n <= 64; n++) {
    char out[80];
    memset(out, '#', sizeof out);
    mg_random_hex(out, n);
    for (int i = 0; i < n; i++)
      assert_non_null(strchr(digits, out[i]));
    for (int i = n; i < (int)sizeof out; i++) assert_int_equal(out[i], '#');
  }
  char a[33] = {0}, b[33] = {0};
  mg_random_hex(a, 32);
  mg_random_hex(b, 32);
  assert_string_not_equal(a, b);
  assert_memory_not_equal(a, a + 16, 16);   /* two draws, not one repeated */
  /* Every digit turns up at even and at odd positions (digits come in pairs). */
  int seen[2][16] = {{0}};
  for (int k = 0; k < 200; k++) {
    mg_random_hex(a, 32);
    for (int i = 0; i < 32; i++) seen[i & 1][strchr(digits, a[i]) - digits] = 1;
  }
  for (int d = 0; d < 16; d++) {
    assert_true(seen[0][d]);
    assert_true(seen[1][d]);
  }
}

/* ---- mg_strcaseeq ------------------------------------------------------- */

static void strcaseeq_compares_length_and_case(void **state) {
  assert_true(mg_strcaseeq("Host", 4, "host", 4));
  assert_false(mg_strcaseeq("Host", 4, "hos", 3));
  assert_false(mg_strcaseeq("Host", 4, "hosx", 4));
}

/* A pooled object and its buffer are unusable on the free list in a
 * sanitizer build (so a use after release is reported), usable again after. */
static void pool_poison_marks_object_and_buffers(void **state) {
  (void)state;
  struct pooled { void *link; mg_buf buf; } *o = calloc(1, sizeof *o);
  mg_buf_append(&o->buf, "abc", 3);
  char *data = o->buf.data;
  mg_pool_poison(o, sizeof *o, &o->buf, NULL);
#if defined(__SANITIZE_ADDRESS__)
  assert_true(__asan_address_is_poisoned(o));
  assert_true(__asan_address_is_poisoned(data));
#endif
  mg_pool_unpoison(o, sizeof *o, &o->buf, NULL);
#if defined(__SANITIZE_ADDRESS__)
  assert_false(__asan_address_is_poisoned(o));
  assert_false(__asan_address_is_poisoned(data));
#endif
  assert_int_equal(o->buf.len, 3);
  assert_memory_equal(data, "abc", 3);
  mg_buf_free(&o->buf);
  free(o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(pool_poison_marks_object_and_buffers),
    cmocka_unit_test(size_plain_number_is_bytes),
    cmocka_unit_test(size_suffixes_are_binary_multiples),
    cmocka_unit_test(size_accepts_b_after_suffix_and_any_case),
    cmocka_unit_test(size_accepts_a_fraction),
    cmocka_unit_test(size_rejects_bad_text),
    cmocka_unit_test(size_rejects_overflow),
    cmocka_unit_test(duration_units),
    cmocka_unit_test(duration_bare_number_is_seconds),
    cmocka_unit_test(duration_components_add_up),
    cmocka_unit_test(duration_accepts_a_fraction),
    cmocka_unit_test(duration_rejects_bad_text),
    cmocka_unit_test(duration_rejects_trailing_bare_number),
    cmocka_unit_test(duration_rejects_trailing_bare_number_after_zero),
    cmocka_unit_test(listen_port_only),
    cmocka_unit_test(listen_ipv4_and_name),
    cmocka_unit_test(listen_ipv6_in_brackets),
    cmocka_unit_test(listen_star_means_all_interfaces),
    cmocka_unit_test(listen_rejects_missing_port),
    cmocka_unit_test(listen_rejects_port_out_of_range),
    cmocka_unit_test(listen_rejects_unbracketed_ipv6),
    cmocka_unit_test(listen_rejects_non_numeric_port),
    cmocka_unit_test(listen_rejects_host_too_long),
    cmocka_unit_test(buf_append_keeps_data_nul_terminated),
    cmocka_unit_test(buf_append_keeps_embedded_nul),
    cmocka_unit_test(buf_grows_past_initial_capacity),
    cmocka_unit_test(buf_reserve_gives_room_without_changing_len),
    cmocka_unit_test(buf_printf_appends_formatted_text),
    cmocka_unit_test(buf_printf_handles_long_output),
    cmocka_unit_test(buf_printf_fills_spare_room_exactly),
    cmocka_unit_test(buf_append_ms_rounds_to_microseconds),
    cmocka_unit_test(utf8_char_len_accepts_well_formed_characters),
    cmocka_unit_test(utf8_char_len_refuses_bad_bytes),
    cmocka_unit_test(json_escape_plain_text_unchanged),
    cmocka_unit_test(json_escape_quotes_and_backslash),
    cmocka_unit_test(json_escape_newline_return_tab),
    cmocka_unit_test(json_escape_other_control_chars_as_unicode),
    cmocka_unit_test(json_escape_passes_utf8_through),
    cmocka_unit_test(json_escape_every_byte),
    cmocka_unit_test(json_escape_appends_and_terminates),
    cmocka_unit_test(json_escape_long_input_grows_buffer),
    cmocka_unit_test(strcaseeq_compares_length_and_case),
    cmocka_unit_test(random_hex_fills_exactly_n_hex_digits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
