/* Unit tests for mg_request_header (src/http.c) on hand-built requests laid
 * out as the parser lays them out: req->head holds the url, then each header
 * name and value, each NUL-terminated; req->hdr holds offsets into it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fake_request.h"

#include "moongate/http.h"

static int setup(void **state) {
  mg_request *req = calloc(1, sizeof *req);
  if (!req) return -1;
  req->url_len = req->path_len = 6;
  put(req, "/hello");
  add_header(req, "Host", "example.com:8080");
  add_header(req, "Content-Type", "application/json");
  add_header(req, "X-Dup", "first");
  add_header(req, "Accept", "*/*");
  add_header(req, "x-dup", "second");
  add_header(req, "X-Empty", "");
  *state = req;
  return 0;
}

static int teardown(void **state) {
  mg_request *req = *state;
  mg_buf_free(&req->head);
  free(req->hdr);
  free(req);
  return 0;
}

static void assert_header(const mg_request *req, const char *name,
                          const char *want) {
  size_t vlen = 12345;
  const char *v = mg_request_header(req, name, strlen(name), &vlen);
  if (!v) fail_msg("header %s not found", name);
  assert_int_equal(vlen, strlen(want));
  assert_memory_equal(v, want, vlen);
}

static void lookup_with_exact_case(void **state) {
  assert_header(*state, "Host", "example.com:8080");
  assert_header(*state, "Content-Type", "application/json");
}

static void lookup_is_case_insensitive(void **state) {
  assert_header(*state, "host", "example.com:8080");
  assert_header(*state, "HOST", "example.com:8080");
  assert_header(*state, "content-TYPE", "application/json");
}

static void repeated_header_returns_first_value(void **state) {
  assert_header(*state, "X-Dup", "first");
  assert_header(*state, "x-dup", "first");
}

static void missing_header_returns_null(void **state) {
  size_t vlen = 777;
  assert_null(mg_request_header(*state, "Cookie", 6, &vlen));
  assert_int_equal(vlen, 777);                   /* untouched */
}

static void name_must_match_whole_length(void **state) {
  assert_null(mg_request_header(*state, "Hos", 3, NULL));
  assert_null(mg_request_header(*state, "Hosts", 5, NULL));
  assert_null(mg_request_header(*state, "Content", 7, NULL));
}

static void name_is_taken_by_length_not_nul(void **state) {
  size_t vlen;
  const char *v = mg_request_header(*state, "Accept-Language", 6, &vlen);
  assert_non_null(v);
  assert_memory_equal(v, "*/*", 3);
}

static void empty_value_is_found(void **state) {
  size_t vlen = 99;
  const char *v = mg_request_header(*state, "x-empty", 7, &vlen);
  assert_non_null(v);
  assert_int_equal(vlen, 0);
  assert_string_equal(v, "");
}

static void vlen_may_be_null(void **state) {
  const char *v = mg_request_header(*state, "accept", 6, NULL);
  assert_non_null(v);
  assert_string_equal(v, "*/*");
}

static void value_points_into_request_head(void **state) {
  const mg_request *req = *state;
  const char *v = mg_request_header(req, "Host", 4, NULL);
  assert_ptr_equal(v, mg_req_str(req, req->hdr[0].value));
}

static void request_without_headers_finds_nothing(void **state) {
  mg_request req;
  memset(&req, 0, sizeof req);
  assert_null(mg_request_header(&req, "Host", 4, NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(lookup_with_exact_case, setup, teardown),
    cmocka_unit_test_setup_teardown(lookup_is_case_insensitive, setup, teardown),
    cmocka_unit_test_setup_teardown(repeated_header_returns_first_value, setup, teardown),
    cmocka_unit_test_setup_teardown(missing_header_returns_null, setup, teardown),
    cmocka_unit_test_setup_teardown(name_must_match_whole_length, setup, teardown),
    cmocka_unit_test_setup_teardown(name_is_taken_by_length_not_nul, setup, teardown),
    cmocka_unit_test_setup_teardown(empty_value_is_found, setup, teardown),
    cmocka_unit_test_setup_teardown(vlen_may_be_null, setup, teardown),
    cmocka_unit_test_setup_teardown(value_points_into_request_head, setup, teardown),
    cmocka_unit_test(request_without_headers_finds_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
