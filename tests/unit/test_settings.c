/* Unit tests for src/settings.c: mg_settings_from_lua on a real lua_State. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "moongate/settings.h"

/* Each test gets a fresh lua_State in *state. */
static int setup(void **state) {
  lua_State *L = luaL_newstate();
  if (!L) return -1;
  luaL_openlibs(L);                        /* string.rep in some tables */
  *state = L;
  return 0;
}

static int teardown(void **state) {
  lua_close(*state);
  return 0;
}

/* Evaluates `expr` and leaves its value on the stack. */
static void push(lua_State *L, const char *expr) {
  char code[1024];
  snprintf(code, sizeof code, "return %s", expr);
  if (luaL_loadstring(L, code) != 0 || lua_pcall(L, 0, 1, 0) != 0)
    fail_msg("lua: %s", lua_tostring(L, -1));
}

/* Reads the table `expr`; returns what mg_settings_from_lua returned. */
static int load(lua_State *L, const char *expr, mg_settings *s, char *err,
                size_t errlen) {
  push(L, expr);
  int top = lua_gettop(L);
  err[0] = '\0';
  int rc = mg_settings_from_lua(L, -1, s, err, errlen);
  assert_int_equal(lua_gettop(L), top);          /* stack is left balanced */
  lua_pop(L, 1);
  return rc;
}

static void assert_loads(lua_State *L, const char *expr, mg_settings *s) {
  char err[256];
  if (load(L, expr, s, err, sizeof err) != 0) fail_msg("%s rejected: %s", expr, err);
}

/* Asserts rejection with a message that names `field`. */
static void assert_rejected(lua_State *L, const char *expr, const char *field) {
  mg_settings s;
  char err[256];
  assert_int_equal(load(L, expr, &s, err, sizeof err), -1);
  if (!strstr(err, field)) fail_msg("error \"%s\" does not name %s", err, field);
}

/* ---- defaults ----------------------------------------------------------- */

static void defaults_fill_every_field(void **state) {
  mg_settings s;
  memset(&s, 0x55, sizeof s);
  mg_settings_defaults(&s);
  assert_string_equal(s.listen_host, "");
  assert_int_equal(s.listen_port, 8080);
  assert_true(s.workers >= 1);
  assert_int_equal(s.max_head, 32 * 1024);
  assert_int_equal(s.max_body, 1024 * 1024);
  assert_int_equal(s.header_timeout_ms, 10000);
  assert_int_equal(s.body_timeout_ms, 60000);
  assert_int_equal(s.keepalive_timeout_ms, 75000);
  assert_int_equal(s.send_timeout_ms, 60000);
  assert_int_equal(s.shutdown_timeout_ms, 10000);
  assert_string_equal(s.health_path, "/health");
  assert_int_equal(s.access_log, 1);
}

static void empty_table_gives_defaults(void **state) {
  lua_State *L = *state;
  mg_settings s, d;
  memset(&s, 0x55, sizeof s);
  assert_loads(L, "{}", &s);
  mg_settings_defaults(&d);
  assert_memory_equal(&s, &d, sizeof s);
}

/* ---- values read -------------------------------------------------------- */

static void every_field_is_read(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L,
    "{ listen_host = '127.0.0.1', listen_port = 9090, workers = 3,"
    "  max_head = 2048, max_body = 5000,"
    "  header_timeout = 1001, body_timeout = 1002, keepalive_timeout = 1003,"
    "  send_timeout = 1004, shutdown_timeout = 1005,"
    "  health_path = '/ping', access_log = false }", &s);
  assert_string_equal(s.listen_host, "127.0.0.1");
  assert_int_equal(s.listen_port, 9090);
  assert_int_equal(s.workers, 3);
  assert_int_equal(s.max_head, 2048);
  assert_int_equal(s.max_body, 5000);
  assert_int_equal(s.header_timeout_ms, 1001);
  assert_int_equal(s.body_timeout_ms, 1002);
  assert_int_equal(s.keepalive_timeout_ms, 1003);
  assert_int_equal(s.send_timeout_ms, 1004);
  assert_int_equal(s.shutdown_timeout_ms, 1005);
  assert_string_equal(s.health_path, "/ping");
  assert_int_equal(s.access_log, 0);
}

static void missing_fields_keep_defaults(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ listen_port = 1234 }", &s);
  assert_int_equal(s.listen_port, 1234);
  assert_int_equal(s.max_head, 32 * 1024);
  assert_int_equal(s.keepalive_timeout_ms, 75000);
  assert_string_equal(s.health_path, "/health");
  assert_int_equal(s.access_log, 1);
}

static void health_false_disables_health_check(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ health_path = false }", &s);
  assert_string_equal(s.health_path, "");
}

static void health_true_keeps_default(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ health_path = true }", &s);
  assert_string_equal(s.health_path, "/health");
}

static void access_log_true_is_read(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ access_log = true }", &s);
  assert_int_equal(s.access_log, 1);
}

static void wrong_types_are_ignored(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ listen_port = 'abc', workers = {}, access_log = 0,"
                  "  listen_host = 42 }", &s);
  assert_int_equal(s.listen_port, 8080);
  assert_true(s.workers >= 1);
  assert_int_equal(s.access_log, 1);
  assert_string_equal(s.listen_host, "");
}

static void too_long_strings_are_ignored(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ listen_host = string.rep('h', 300),"
                  "  health_path = '/' .. string.rep('p', 300) }", &s);
  assert_string_equal(s.listen_host, "");
  assert_string_equal(s.health_path, "/health");
}

static void table_found_by_positive_index(void **state) {
  lua_State *L = *state;
  mg_settings s;
  char err[128];
  push(L, "{ workers = 7 }");
  lua_pushnil(L);                          /* something above the table */
  assert_int_equal(mg_settings_from_lua(L, 1, &s, err, sizeof err), 0);
  assert_int_equal(s.workers, 7);
  lua_settop(L, 0);
}

static void table_found_by_negative_index(void **state) {
  lua_State *L = *state;
  mg_settings s;
  char err[128];
  push(L, "{ workers = 5 }");
  lua_pushnil(L);
  assert_int_equal(mg_settings_from_lua(L, -2, &s, err, sizeof err), 0);
  assert_int_equal(s.workers, 5);
  lua_settop(L, 0);
}

static void range_limits_are_accepted(void **state) {
  lua_State *L = *state;
  mg_settings s;
  assert_loads(L, "{ listen_port = 1, workers = 1, max_head = 1024 }", &s);
  assert_loads(L, "{ listen_port = 65535, workers = 256, max_head = 65536 }", &s);
  assert_int_equal(s.max_head, MG_MAX_HEAD_CEILING);
}

/* ---- rejections --------------------------------------------------------- */

static void not_a_table_is_rejected(void **state) {
  lua_State *L = *state;
  assert_rejected(L, "'settings'", "not a table");
  assert_rejected(L, "nil", "not a table");
}

static void port_out_of_range_is_rejected(void **state) {
  lua_State *L = *state;
  assert_rejected(L, "{ listen_port = 0 }", "listen");
  assert_rejected(L, "{ listen_port = 65536 }", "listen");
  assert_rejected(L, "{ listen_port = -1 }", "listen");
}

static void workers_out_of_range_are_rejected(void **state) {
  lua_State *L = *state;
  assert_rejected(L, "{ workers = 0 }", "workers");
  assert_rejected(L, "{ workers = 257 }", "workers");
}

static void max_head_out_of_range_is_rejected(void **state) {
  lua_State *L = *state;
  assert_rejected(L, "{ max_head = 1023 }", "limits.headers");
  assert_rejected(L, "{ max_head = 65537 }", "limits.headers");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(defaults_fill_every_field),
    cmocka_unit_test_setup_teardown(empty_table_gives_defaults, setup, teardown),
    cmocka_unit_test_setup_teardown(every_field_is_read, setup, teardown),
    cmocka_unit_test_setup_teardown(missing_fields_keep_defaults, setup, teardown),
    cmocka_unit_test_setup_teardown(health_false_disables_health_check, setup, teardown),
    cmocka_unit_test_setup_teardown(health_true_keeps_default, setup, teardown),
    cmocka_unit_test_setup_teardown(access_log_true_is_read, setup, teardown),
    cmocka_unit_test_setup_teardown(wrong_types_are_ignored, setup, teardown),
    cmocka_unit_test_setup_teardown(too_long_strings_are_ignored, setup, teardown),
    cmocka_unit_test_setup_teardown(table_found_by_positive_index, setup, teardown),
    cmocka_unit_test_setup_teardown(table_found_by_negative_index, setup, teardown),
    cmocka_unit_test_setup_teardown(range_limits_are_accepted, setup, teardown),
    cmocka_unit_test_setup_teardown(not_a_table_is_rejected, setup, teardown),
    cmocka_unit_test_setup_teardown(port_out_of_range_is_rejected, setup, teardown),
    cmocka_unit_test_setup_teardown(workers_out_of_range_are_rejected, setup, teardown),
    cmocka_unit_test_setup_teardown(max_head_out_of_range_is_rejected, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
