/* Unit tests for the proxy hop's header work (src/forward.c) on hand-built
 * requests (fake_request.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fake_request.h"

#include "moongate/forward.h"

static mg_request *new_request(void) {
  mg_request *req = calloc(1, sizeof *req);
  assert_non_null(req);
  put(req, "/x");
  strcpy(req->id, "0123456789abcdef0123456789abcdef");
  strcpy(req->remote_ip, "10.0.0.9");
  return req;
}

static void free_request(mg_request *req) {
  mg_buf_free(&req->head);
  free(req->hdr);
  free(req);
}

static char *lines_of(mg_request *req, const mg_forward_drop *drop) {
  mg_buf out = {0};
  mg_forward_request_lines(req, drop, &out);
  return out.data ? out.data : strdup("");
}

static void test_request_head(void **state) {
  (void)state;
  mg_request *req = new_request();
  add_header(req, "Host", "api.example.com");
  add_header(req, "Connection", "keep-alive, X-Secret");
  add_header(req, "X-Secret", "hop");
  add_header(req, "Keep-Alive", "timeout=5");
  add_header(req, "TE", "trailers");
  add_header(req, "Content-Length", "3");
  add_header(req, "Accept", "*/*");
  add_header(req, "X-Forwarded-For", "1.1.1.1");
  add_header(req, "x-forwarded-for", "2.2.2.2");
  add_header(req, "X-Request-ID", "client-chosen");
  add_header(req, "Authorization", "Bearer k");
  char *s = lines_of(req, NULL);
  assert_non_null(strstr(s, "Accept: */*\n"));
  assert_non_null(strstr(s, "Authorization: Bearer k\n"));
  assert_non_null(strstr(s, "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\n"));
  assert_non_null(strstr(s, "X-Forwarded-Proto: http\n"));
  assert_non_null(strstr(s, "X-Forwarded-Host: api.example.com\n"));
  assert_non_null(strstr(s, "X-Request-ID: 0123456789abcdef0123456789abcdef\n"));
  assert_non_null(strstr(s, "traceparent: 00-"));
  assert_null(strstr(s, "X-Secret"));
  assert_null(strstr(s, "Keep-Alive"));
  assert_null(strstr(s, "TE:"));
  assert_true(strncmp(s, "Connection", 10) != 0 && !strstr(s, "\nConnection"));
  assert_null(strstr(s, "Content-Length"));
  assert_true(strncmp(s, "Host:", 5) != 0 && !strstr(s, "\nHost:"));
  assert_null(strstr(s, "client-chosen"));
  free(s);

  /* Dropped names leave both the client's headers and ours. */
  const char *names[] = { "authorization", "x-request-id" };
  size_t lens[] = { 13, 12 };
  mg_forward_drop drop = { names, lens, 2 };
  s = lines_of(req, &drop);
  assert_null(strstr(s, "Authorization"));
  assert_null(strstr(s, "X-Request-ID"));
  assert_non_null(strstr(s, "Accept: */*\n"));
  free(s);
  free_request(req);
}

static void test_traceparent(void **state) {
  (void)state;
  mg_request *req = new_request();
  add_header(req, "traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");
  const char *tp = mg_forward_traceparent(req);
  assert_int_equal(strlen(tp), 55);
  assert_memory_equal(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
  assert_string_not_equal(tp + 36, "00f067aa0ba902b7-01");   /* a new span for our hop */
  assert_ptr_equal(mg_forward_traceparent(req), tp);         /* made once */
  free_request(req);

  const char *bad[] = { "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736--01" };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    req = new_request();
    add_header(req, "traceparent", bad[i]);
    tp = mg_forward_traceparent(req);
    assert_int_equal(strlen(tp), 55);
    assert_memory_not_equal(tp + 3, "4bf92f3577b34da6a3ce929d0e0e4736", 32);
    assert_memory_not_equal(tp + 3, "00000000000000000000000000000000", 32);
    free_request(req);
  }
}

static void test_response_filter(void **state) {
  (void)state;
  const char *conn = "close, X-Up-Hop";
  size_t cl = strlen(conn);
  assert_true(mg_forward_response_keeps("Content-Type", 12, conn, cl, 0));
  assert_true(mg_forward_response_keeps("X-Normal", 8, conn, cl, 0));
  assert_false(mg_forward_response_keeps("x-up-hop", 8, conn, cl, 0));
  assert_false(mg_forward_response_keeps("Transfer-Encoding", 17, NULL, 0, 0));
  assert_false(mg_forward_response_keeps("Keep-Alive", 10, NULL, 0, 0));
  assert_false(mg_forward_response_keeps("Date", 4, NULL, 0, 1));
  assert_false(mg_forward_response_keeps("Content-Length", 14, NULL, 0, 0));
  assert_true(mg_forward_response_keeps("Content-Length", 14, NULL, 0, 1));

  const char *head = "Server: up\r\nConnection:  close \r\nX-A: 1\r\n";
  size_t vlen = 0;
  const char *v = mg_forward_find(head, strlen(head), "connection", 10, &vlen);
  assert_non_null(v);
  assert_int_equal(vlen, 5);
  assert_memory_equal(v, "close", 5);
  assert_null(mg_forward_find(head, strlen(head), "x-b", 3, &vlen));

  const char *up = "Server: up\r\nConnection: X-Up-Hop\r\nX-Up-Hop: 1\r\n"
                   "Date: old\r\nContent-Length: 11\r\nX-A: 1\r\n";
  mg_buf out = {0};
  assert_int_equal(mg_forward_response_lines(up, strlen(up), 0, NULL, &out), 0);
  assert_string_equal(out.data, "Server: up\r\nX-A: 1\r\n");
  out.len = 0;
  assert_int_equal(mg_forward_response_lines(up, strlen(up), 1, NULL, &out), 1);
  assert_string_equal(out.data, "Server: up\r\nContent-Length: 11\r\nX-A: 1\r\n");

  /* The Connection header after the lines it names, past the 32 lines the
   * first pass remembers; keep-alive among its names. */
  mg_buf big = {0}, want = {0};
  mg_buf_appends(&big, "X-Early: 1\r\n");
  for (int i = 0; i < 40; i++) {
    mg_buf_printf(&big, "X-N%d: %d\r\n", i, i);
    mg_buf_printf(&want, "X-N%d: %d\r\n", i, i);
  }
  mg_buf_appends(&big, "X-Late: 2\r\nConnection: keep-alive, X-Early,x-late\r\nX-Last: 3\r\n");
  mg_buf_appends(&want, "X-Last: 3\r\n");
  out.len = 0;
  assert_int_equal(mg_forward_response_lines(big.data, big.len, 0, NULL, &out), 0);
  assert_string_equal(out.data, want.data);
  /* Connection: keep-alive alone names nothing to drop */
  const char *ka = "Connection: keep-alive\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\n";
  out.len = 0;
  mg_forward_response_lines(ka, strlen(ka), 0, NULL, &out);
  assert_string_equal(out.data, "X-A: 1\r\n");
  mg_buf_free(&big);
  mg_buf_free(&want);
  mg_buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_request_head),
    cmocka_unit_test(test_traceparent),
    cmocka_unit_test(test_response_filter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
