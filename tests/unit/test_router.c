/* Unit tests for src/router.c: pattern parsing, matching, precedence, hosts,
 * 404/405 and the method helpers. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "moongate/router.h"

/* ---- helpers ------------------------------------------------------------ */

static void add(mg_router *r, int index, unsigned methods, const char *host,
                const char *path) {
  const char *err = NULL;
  int rc = mg_router_add(r, index, methods, host, path, &err);
  if (rc != 0) fail_msg("mg_router_add(%s) failed: %s", path, err ? err : "?");
}

static int add_err(mg_router *r, const char *path, const char **err) {
  *err = NULL;
  return mg_router_add(r, 99, MG_M_GET, NULL, path, err);
}

/* Matches and returns the route index (-1 when none). */
static int match_host(const mg_router *r, unsigned method, const char *host,
                      const char *path, mg_route_match *m) {
  mg_router_match(r, method, host, strlen(host), path, strlen(path), m);
  return m->route;
}

static int match(const mg_router *r, unsigned method, const char *path,
                 mg_route_match *m) {
  return match_host(r, method, "", path, m);
}

static int route_of(const mg_router *r, const char *path) {
  mg_route_match m;
  return match(r, MG_M_GET, path, &m);
}

static int route_on(const mg_router *r, const char *host, const char *path) {
  mg_route_match m;
  return match_host(r, MG_M_GET, host, path, &m);
}

/* The text of param i, checked by name. */
static void assert_param(const char *path, const mg_route_match *m, int i,
                         const char *name, const char *value) {
  assert_true(i < m->nparams);
  assert_int_equal(m->params[i].name_len, strlen(name));
  assert_memory_equal(m->params[i].name, name, strlen(name));
  assert_int_equal(m->params[i].len, strlen(value));
  assert_true(m->params[i].off + m->params[i].len <= strlen(path));
  assert_memory_equal(path + m->params[i].off, value, strlen(value));
}

/* ---- exact paths -------------------------------------------------------- */

static void exact_path_matches_only_itself(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/hello");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/hello", &m), 0);
  assert_int_equal(m.status, 0);
  assert_int_equal(m.nparams, 0);
  assert_int_equal(route_of(r, "/hell"), -1);
  assert_int_equal(route_of(r, "/helloo"), -1);
  assert_int_equal(route_of(r, "/hello/x"), -1);
  assert_int_equal(route_of(r, "/"), -1);
  assert_int_equal(route_of(r, ""), -1);
  mg_router_free(r);
}

static void root_route_matches_only_slash(void **state) {
  mg_router *r = mg_router_new();
  add(r, 3, MG_M_GET, NULL, "/");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/"), 3);
  assert_int_equal(route_of(r, "/x"), -1);
  assert_int_equal(route_of(r, "//"), -1);
  mg_router_free(r);
}

static void match_uses_path_len_not_nul(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/a");
  mg_router_finish(r);
  mg_route_match m;
  /* The router gets the path without its query: "/a?x=1" with len 2. */
  mg_router_match(r, MG_M_GET, "", 0, "/a?x=1", 2, &m);
  assert_int_equal(m.route, 0);
  mg_router_free(r);
}

/* ---- named parameters --------------------------------------------------- */

static void named_param_gives_name_offset_and_len(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/api/group/:id");
  mg_router_finish(r);
  mg_route_match m;
  const char *path = "/api/group/42";
  assert_int_equal(match(r, MG_M_GET, path, &m), 0);
  assert_int_equal(m.nparams, 1);
  assert_int_equal(m.params[0].off, 11);
  assert_int_equal(m.params[0].len, 2);
  assert_param(path, &m, 0, "id", "42");
  mg_router_free(r);
}

static void named_param_is_never_empty_nor_spans_slashes(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/api/group/:id");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/api/group/"), -1);
  assert_int_equal(route_of(r, "/api/group"), -1);
  assert_int_equal(route_of(r, "/api/group/42/x"), -1);
  mg_router_free(r);
}

static void several_params_in_order(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/u/:user_id/posts/:post2");
  mg_router_finish(r);
  mg_route_match m;
  const char *path = "/u/alice/posts/abc";
  assert_int_equal(match(r, MG_M_GET, path, &m), 0);
  assert_int_equal(m.nparams, 2);
  assert_param(path, &m, 0, "user_id", "alice");
  assert_param(path, &m, 1, "post2", "abc");
  assert_int_equal(route_of(r, "/u/alice/comments/abc"), -1);
  mg_router_free(r);
}

/* ---- trailing slash ----------------------------------------------------- */

static void trailing_slash_is_a_different_path(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/a");
  add(r, 1, MG_M_GET, NULL, "/a/");
  add(r, 2, MG_M_GET, NULL, "/only-slash/");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/a"), 0);
  assert_int_equal(route_of(r, "/a/"), 1);
  assert_int_equal(route_of(r, "/only-slash/"), 2);
  assert_int_equal(route_of(r, "/only-slash"), -1);
  assert_int_equal(route_of(r, "/only-slash/x"), -1);
  mg_router_free(r);
}

/* ---- wildcard ----------------------------------------------------------- */

static void wildcard_matches_prefix_without_slash(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/v1/*");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/v1", &m), 0);
  /* Current behaviour: "/v1" itself carries no "*" parameter. */
  assert_int_equal(m.nparams, 0);
  mg_router_free(r);
}

static void wildcard_matches_prefix_with_slash_as_empty_star(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/v1/*");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/v1/", &m), 0);
  assert_int_equal(m.nparams, 1);
  assert_param("/v1/", &m, 0, "*", "");
  assert_int_equal(m.params[0].off, 4);
  mg_router_free(r);
}

static void wildcard_star_holds_the_rest_of_the_path(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/v1/*");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/v1/a/b", &m), 0);
  assert_int_equal(m.nparams, 1);
  assert_param("/v1/a/b", &m, 0, "*", "a/b");
  mg_router_free(r);
}

static void wildcard_does_not_match_a_longer_segment(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/v1/*");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/v1x"), -1);
  assert_int_equal(route_of(r, "/v1x/a"), -1);
  assert_int_equal(route_of(r, "/v2/a"), -1);
  assert_int_equal(route_of(r, "/"), -1);
  mg_router_free(r);
}

static void wildcard_after_params_keeps_both(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/t/:tenant/*");
  mg_router_finish(r);
  mg_route_match m;
  const char *path = "/t/acme/x/y";
  assert_int_equal(match(r, MG_M_GET, path, &m), 0);
  assert_int_equal(m.nparams, 2);
  assert_param(path, &m, 0, "tenant", "acme");
  assert_param(path, &m, 1, "*", "x/y");
  mg_router_free(r);
}

static void root_wildcard_matches_everything(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/*");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/", &m), 0);
  assert_param("/", &m, 0, "*", "");
  assert_int_equal(match(r, MG_M_GET, "/a/b/c", &m), 0);
  assert_param("/a/b/c", &m, 0, "*", "a/b/c");
  mg_router_free(r);
}

/* ---- specificity -------------------------------------------------------- */

static void exact_beats_param_beats_wildcard(void **state) {
  mg_router *r = mg_router_new();
  /* Declared least specific first: order must not decide. */
  add(r, 0, MG_M_GET, NULL, "/users/*");
  add(r, 1, MG_M_GET, NULL, "/users/:id");
  add(r, 2, MG_M_GET, NULL, "/users/me");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/users/me"), 2);
  assert_int_equal(route_of(r, "/users/7"), 1);
  assert_int_equal(route_of(r, "/users/7/x"), 0);
  assert_int_equal(route_of(r, "/users"), 0);
  mg_router_free(r);
}

static void longer_wildcard_prefix_wins(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/*");
  add(r, 1, MG_M_GET, NULL, "/v1/*");
  add(r, 2, MG_M_GET, NULL, "/v1/admin/*");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/v1/admin/users"), 2);
  assert_int_equal(route_of(r, "/v1/admin"), 2);
  assert_int_equal(route_of(r, "/v1/other"), 1);
  assert_int_equal(route_of(r, "/v2"), 0);
  mg_router_free(r);
}

static void host_specific_beats_hostless(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/x");
  add(r, 1, MG_M_GET, "api.example.com", "/x");
  mg_router_finish(r);
  assert_int_equal(route_on(r, "api.example.com", "/x"), 1);
  assert_int_equal(route_on(r, "www.example.com", "/x"), 0);
  assert_int_equal(route_on(r, "", "/x"), 0);
  mg_router_free(r);
}

static void host_specific_wildcard_beats_hostless_exact(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/x");
  add(r, 1, MG_M_GET, "api.example.com", "/*");
  mg_router_finish(r);
  assert_int_equal(route_on(r, "api.example.com", "/x"), 1);
  assert_int_equal(route_on(r, "other.com", "/x"), 0);
  mg_router_free(r);
}

static void ties_keep_declaration_order(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/same");
  add(r, 1, MG_M_GET, NULL, "/same");
  add(r, 2, MG_M_GET, NULL, "/p/:a");
  add(r, 3, MG_M_GET, NULL, "/p/:b");
  add(r, 4, MG_M_GET, NULL, "/w/*");
  add(r, 5, MG_M_GET, NULL, "/w/*");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/same"), 0);
  assert_int_equal(route_of(r, "/p/1"), 2);
  assert_int_equal(route_of(r, "/w/1"), 4);
  mg_router_free(r);
}

static void ties_keep_declaration_order_with_many_routes(void **state) {
  /* qsort is not stable: the order field must make it so. */
  mg_router *r = mg_router_new();
  for (int i = 0; i < 40; i++) add(r, i, MG_M_GET, NULL, "/dup");
  add(r, 40, MG_M_GET, NULL, "/*");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/dup"), 0);
  mg_router_free(r);
}

static void route_index_is_returned_not_position(void **state) {
  mg_router *r = mg_router_new();
  add(r, 7, MG_M_GET, NULL, "/*");
  add(r, 42, MG_M_GET, NULL, "/a");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/a"), 42);
  assert_int_equal(route_of(r, "/b"), 7);
  mg_router_free(r);
}

/* ---- hosts -------------------------------------------------------------- */

static void host_exact_is_case_insensitive(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, "example.com", "/");
  mg_router_finish(r);
  assert_int_equal(route_on(r, "example.com", "/"), 0);
  assert_int_equal(route_on(r, "EXAMPLE.Com", "/"), 0);
  assert_int_equal(route_on(r, "www.example.com", "/"), -1);
  assert_int_equal(route_on(r, "example.co", "/"), -1);
  assert_int_equal(route_on(r, "", "/"), -1);
  mg_router_free(r);
}

static void host_wildcard_matches_subdomains_only(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, "*.example.com", "/");
  mg_router_finish(r);
  assert_int_equal(route_on(r, "a.example.com", "/"), 0);
  assert_int_equal(route_on(r, "a.b.example.com", "/"), 0);
  assert_int_equal(route_on(r, "A.EXAMPLE.COM", "/"), 0);
  assert_int_equal(route_on(r, "example.com", "/"), -1);
  assert_int_equal(route_on(r, "badexample.com", "/"), -1);
  assert_int_equal(route_on(r, "a.example.org", "/"), -1);
  mg_router_free(r);
}

static void host_port_is_ignored(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, "example.com", "/e");
  add(r, 1, MG_M_GET, "*.example.com", "/w");
  mg_router_finish(r);
  assert_int_equal(route_on(r, "example.com:8080", "/e"), 0);
  assert_int_equal(route_on(r, "a.example.com:443", "/w"), 1);
  assert_int_equal(route_on(r, "example.com:8080", "/w"), -1);
  mg_router_free(r);
}

static void empty_host_in_route_means_any_host(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, "", "/any");
  mg_router_finish(r);
  assert_int_equal(route_on(r, "whatever.net", "/any"), 0);
  assert_int_equal(route_on(r, "", "/any"), 0);
  mg_router_free(r);
}

/* ---- 404 / 405 ---------------------------------------------------------- */

static void unknown_path_is_404_with_empty_allow(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/a");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/b", &m), -1);
  assert_int_equal(m.status, 404);
  assert_int_equal(m.allow, 0);
  mg_router_free(r);
}

static void empty_router_is_404(void **state) {
  mg_router *r = mg_router_new();
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/", &m), -1);
  assert_int_equal(m.status, 404);
  mg_router_free(r);
}

static void wrong_method_is_405_with_allow(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_POST, NULL, "/submit");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/submit", &m), -1);
  assert_int_equal(m.status, 405);
  assert_int_equal(m.allow, MG_M_POST);
  mg_router_free(r);
}

static void get_route_allows_head_in_405(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/x");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_POST, "/x", &m), -1);
  assert_int_equal(m.status, 405);
  assert_int_equal(m.allow, MG_M_GET | MG_M_HEAD);
  mg_router_free(r);
}

static void allow_collects_every_route_on_the_path(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_GET, NULL, "/x");
  add(r, 1, MG_M_PUT, NULL, "/x");
  add(r, 2, MG_M_PATCH, NULL, "/:any");
  add(r, 3, MG_M_POST, NULL, "/other");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_DELETE, "/x", &m), -1);
  assert_int_equal(m.status, 405);
  assert_int_equal(m.allow, MG_M_GET | MG_M_HEAD | MG_M_PUT | MG_M_PATCH);
  mg_router_free(r);
}

static void later_route_with_method_wins_over_405(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_POST, NULL, "/x");
  add(r, 1, MG_M_GET, NULL, "/*");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/x", &m), 1);
  assert_int_equal(m.status, 0);
  assert_int_equal(m.allow, 0);
  mg_router_free(r);
}

static void host_mismatch_is_404_not_405(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_POST, "example.com", "/x");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match_host(r, MG_M_GET, "other.com", "/x", &m), -1);
  assert_int_equal(m.status, 404);
  mg_router_free(r);
}

/* ---- HEAD and methods ---------------------------------------------------- */

static void head_is_served_by_get_route(void **state) {
  mg_router *r = mg_router_new();
  add(r, 5, MG_M_GET, NULL, "/page");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_HEAD, "/page", &m), 5);
  assert_int_equal(m.status, 0);
  mg_router_free(r);
}

static void head_is_not_served_by_post_route(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_POST, NULL, "/page");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_HEAD, "/page", &m), -1);
  assert_int_equal(m.status, 405);
  assert_int_equal(m.allow, MG_M_POST);
  mg_router_free(r);
}

static void get_is_not_served_by_head_only_route(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_HEAD, NULL, "/h");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_GET, "/h", &m), -1);
  assert_int_equal(m.status, 405);
  assert_int_equal(m.allow, MG_M_HEAD);
  mg_router_free(r);
}

static void any_method_route_matches_every_method(void **state) {
  mg_router *r = mg_router_new();
  add(r, 0, MG_M_ANY, NULL, "/any");
  mg_router_finish(r);
  mg_route_match m;
  assert_int_equal(match(r, MG_M_DELETE, "/any", &m), 0);
  assert_int_equal(match(r, MG_M_OTHER, "/any", &m), 0);
  mg_router_free(r);
}

static void method_bit_knows_standard_methods(void **state) {
  assert_int_equal(mg_method_bit("GET", 3), MG_M_GET);
  assert_int_equal(mg_method_bit("HEAD", 4), MG_M_HEAD);
  assert_int_equal(mg_method_bit("POST", 4), MG_M_POST);
  assert_int_equal(mg_method_bit("PUT", 3), MG_M_PUT);
  assert_int_equal(mg_method_bit("DELETE", 6), MG_M_DELETE);
  assert_int_equal(mg_method_bit("PATCH", 5), MG_M_PATCH);
  assert_int_equal(mg_method_bit("OPTIONS", 7), MG_M_OPTIONS);
  assert_int_equal(mg_method_bit("TRACE", 5), MG_M_TRACE);
  assert_int_equal(mg_method_bit("CONNECT", 7), MG_M_CONNECT);
}

static void method_bit_rejects_unknown_and_partial_names(void **state) {
  assert_int_equal(mg_method_bit("get", 3), 0);      /* methods are case-sensitive */
  assert_int_equal(mg_method_bit("GE", 2), 0);
  assert_int_equal(mg_method_bit("GETX", 4), 0);
  assert_int_equal(mg_method_bit("PROPFIND", 8), 0);
  assert_int_equal(mg_method_bit("", 0), 0);
  assert_int_equal(mg_method_bit("GET /", 3), MG_M_GET);  /* uses len, not NUL */
}

static void methods_string_lists_in_canonical_order(void **state) {
  char buf[128];
  mg_methods_string(MG_M_POST | MG_M_HEAD | MG_M_GET, buf, sizeof buf);
  assert_string_equal(buf, "GET, HEAD, POST");
  mg_methods_string(MG_M_DELETE | MG_M_GET, buf, sizeof buf);
  assert_string_equal(buf, "GET, DELETE");
  mg_methods_string(MG_M_OPTIONS, buf, sizeof buf);
  assert_string_equal(buf, "OPTIONS");
  mg_methods_string(0, buf, sizeof buf);
  assert_string_equal(buf, "");
  mg_methods_string(MG_M_ANY, buf, sizeof buf);
  assert_string_equal(buf, "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT");
}

static void methods_string_never_overflows(void **state) {
  char buf[16];
  memset(buf, 'Z', sizeof buf);
  mg_methods_string(MG_M_ANY, buf, 8);
  assert_true(strlen(buf) < 8);
  for (size_t i = 8; i < sizeof buf; i++) assert_int_equal(buf[i], 'Z');
}

/* ---- bad patterns ------------------------------------------------------- */

static void star_in_the_middle_is_rejected(void **state) {
  mg_router *r = mg_router_new();
  const char *err;
  assert_int_equal(add_err(r, "/a/*/b", &err), -1);
  assert_non_null(err);
  assert_int_equal(add_err(r, "/a*", &err), -1);
  assert_non_null(err);
  assert_int_equal(add_err(r, "/a/b*", &err), -1);
  assert_non_null(err);
  mg_router_free(r);
}

static void param_without_name_is_rejected(void **state) {
  mg_router *r = mg_router_new();
  const char *err;
  assert_int_equal(add_err(r, "/:", &err), -1);
  assert_non_null(err);
  assert_int_equal(add_err(r, "/a/:/b", &err), -1);
  assert_non_null(err);
  mg_router_free(r);
}

static void param_with_bad_name_is_rejected(void **state) {
  mg_router *r = mg_router_new();
  const char *err;
  assert_int_equal(add_err(r, "/:a-b", &err), -1);
  assert_non_null(err);
  assert_int_equal(add_err(r, "/:a.b", &err), -1);
  assert_non_null(err);
  mg_router_free(r);
}

static void path_must_start_with_slash(void **state) {
  mg_router *r = mg_router_new();
  const char *err;
  assert_int_equal(add_err(r, "a", &err), -1);
  assert_non_null(err);
  assert_int_equal(add_err(r, "", &err), -1);
  assert_non_null(err);
  assert_int_equal(add_err(r, "*", &err), -1);
  assert_non_null(err);
  err = NULL;
  assert_int_equal(mg_router_add(r, 0, MG_M_GET, NULL, NULL, &err), -1);
  assert_non_null(err);
  mg_router_free(r);
}

static void route_without_methods_is_rejected(void **state) {
  mg_router *r = mg_router_new();
  const char *err = NULL;
  assert_int_equal(mg_router_add(r, 0, 0, NULL, "/a", &err), -1);
  assert_non_null(err);
  mg_router_free(r);
}

static void rejected_routes_are_not_added(void **state) {
  mg_router *r = mg_router_new();
  const char *err;
  add_err(r, "/a/*/b", &err);
  add_err(r, "/:", &err);
  add(r, 1, MG_M_GET, NULL, "/ok");
  mg_router_finish(r);
  assert_int_equal(route_of(r, "/a/x/b"), -1);
  assert_int_equal(route_of(r, "/ok"), 1);
  mg_router_free(r);
}

static void too_many_params_are_rejected(void **state) {
  mg_router *r = mg_router_new();
  const char *err;
  char path[256] = "";
  for (int i = 0; i < MG_ROUTE_MAX_PARAMS; i++) {
    char seg[8];
    snprintf(seg, sizeof seg, "/:p%d", i);
    strcat(path, seg);
  }
  assert_int_equal(add_err(r, path, &err), 0);        /* exactly the maximum */
  strcat(path, "/:one_more");
  assert_int_equal(add_err(r, path, &err), -1);
  assert_non_null(err);
  mg_router_free(r);
}

static void max_params_plus_wildcard_is_rejected(void **state) {
  /* The wildcard adds a "*" parameter at match time: with MG_ROUTE_MAX_PARAMS
   * named parameters before it, a match would write params[MAX_PARAMS], past
   * the end of mg_route_match.params. Such a route must be refused. */
  mg_router *r = mg_router_new();
  const char *err;
  char path[256] = "";
  for (int i = 0; i < MG_ROUTE_MAX_PARAMS; i++) {
    char seg[8];
    snprintf(seg, sizeof seg, "/:p%d", i);
    strcat(path, seg);
  }
  strcat(path, "/*");
  int rc = add_err(r, path, &err);
  mg_router_free(r);
  assert_int_equal(rc, -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(exact_path_matches_only_itself),
    cmocka_unit_test(root_route_matches_only_slash),
    cmocka_unit_test(match_uses_path_len_not_nul),
    cmocka_unit_test(named_param_gives_name_offset_and_len),
    cmocka_unit_test(named_param_is_never_empty_nor_spans_slashes),
    cmocka_unit_test(several_params_in_order),
    cmocka_unit_test(trailing_slash_is_a_different_path),
    cmocka_unit_test(wildcard_matches_prefix_without_slash),
    cmocka_unit_test(wildcard_matches_prefix_with_slash_as_empty_star),
    cmocka_unit_test(wildcard_star_holds_the_rest_of_the_path),
    cmocka_unit_test(wildcard_does_not_match_a_longer_segment),
    cmocka_unit_test(wildcard_after_params_keeps_both),
    cmocka_unit_test(root_wildcard_matches_everything),
    cmocka_unit_test(exact_beats_param_beats_wildcard),
    cmocka_unit_test(longer_wildcard_prefix_wins),
    cmocka_unit_test(host_specific_beats_hostless),
    cmocka_unit_test(host_specific_wildcard_beats_hostless_exact),
    cmocka_unit_test(ties_keep_declaration_order),
    cmocka_unit_test(ties_keep_declaration_order_with_many_routes),
    cmocka_unit_test(route_index_is_returned_not_position),
    cmocka_unit_test(host_exact_is_case_insensitive),
    cmocka_unit_test(host_wildcard_matches_subdomains_only),
    cmocka_unit_test(host_port_is_ignored),
    cmocka_unit_test(empty_host_in_route_means_any_host),
    cmocka_unit_test(unknown_path_is_404_with_empty_allow),
    cmocka_unit_test(empty_router_is_404),
    cmocka_unit_test(wrong_method_is_405_with_allow),
    cmocka_unit_test(get_route_allows_head_in_405),
    cmocka_unit_test(allow_collects_every_route_on_the_path),
    cmocka_unit_test(later_route_with_method_wins_over_405),
    cmocka_unit_test(host_mismatch_is_404_not_405),
    cmocka_unit_test(head_is_served_by_get_route),
    cmocka_unit_test(head_is_not_served_by_post_route),
    cmocka_unit_test(get_is_not_served_by_head_only_route),
    cmocka_unit_test(any_method_route_matches_every_method),
    cmocka_unit_test(method_bit_knows_standard_methods),
    cmocka_unit_test(method_bit_rejects_unknown_and_partial_names),
    cmocka_unit_test(methods_string_lists_in_canonical_order),
    cmocka_unit_test(methods_string_never_overflows),
    cmocka_unit_test(star_in_the_middle_is_rejected),
    cmocka_unit_test(param_without_name_is_rejected),
    cmocka_unit_test(param_with_bad_name_is_rejected),
    cmocka_unit_test(path_must_start_with_slash),
    cmocka_unit_test(route_without_methods_is_rejected),
    cmocka_unit_test(rejected_routes_are_not_added),
    cmocka_unit_test(too_many_params_are_rejected),
    cmocka_unit_test(max_params_plus_wildcard_is_rejected),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
