/* Unit tests for src/shdict.c: values, TTL, add, incr, LRU eviction, and
 * increments from several threads at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "moongate/shdict.h"

static char *buf;
static size_t cap;

static mg_shvalue str(const char *s) {
  mg_shvalue v = {MG_SHV_STRING, 0, s, strlen(s)};
  return v;
}

static void test_open_finds_the_same_dictionary(void **state) {
  mg_shdict *a = mg_shdict_open("t_open", 16384);
  assert_non_null(a);
  assert_ptr_equal(mg_shdict_open("t_open", 99999), a);   /* capacity kept */
  assert_int_equal(mg_shdict_capacity(a), 16384);
  assert_null(mg_shdict_open("t_small", 100));
  assert_null(mg_shdict_open("", 16384));
}

static void test_set_get_delete(void **state) {
  mg_shdict *d = mg_shdict_open("t_basic", 65536);
  mg_shvalue v = str("hello"), out;
  assert_int_equal(mg_shdict_set(d, "k", 1, &v, 0, 0), 0);
  assert_int_equal(mg_shdict_get(d, "k", 1, &out, &buf, &cap), 1);
  assert_int_equal(out.type, MG_SHV_STRING);
  assert_memory_equal(out.str, "hello", 5);
  mg_shvalue n = {MG_SHV_NUMBER, 2.5, NULL, 0};
  mg_shdict_set(d, "k", 1, &n, 0, 0);                     /* replace, other type */
  mg_shdict_get(d, "k", 1, &out, &buf, &cap);
  assert_int_equal(out.type, MG_SHV_NUMBER);
  assert_true(out.number == 2.5);
  assert_int_equal(mg_shdict_set(d, "k", 1, &v, 0, 1), -2);   /* add on existing */
  mg_shdict_delete(d, "k", 1);
  assert_int_equal(mg_shdict_get(d, "k", 1, &out, &buf, &cap), 0);
  assert_int_equal(mg_shdict_ttl(d, "k", 1), -2);
}

static void test_ttl_expires(void **state) {
  mg_shdict *d = mg_shdict_open("t_ttl", 65536);
  mg_shvalue v = str("x"), out;
  mg_shdict_set(d, "k", 1, &v, 50, 0);
  int64_t ttl = mg_shdict_ttl(d, "k", 1);
  assert_true(ttl > 0 && ttl <= 50);
  usleep(80 * 1000);
  assert_int_equal(mg_shdict_get(d, "k", 1, &out, &buf, &cap), 0);
}

static void test_incr(void **state) {
  mg_shdict *d = mg_shdict_open("t_incr", 65536);
  double r;
  assert_int_equal(mg_shdict_incr(d, "c", 1, 1, 0, 0, 0, &r), -2);    /* absent, no init */
  assert_int_equal(mg_shdict_incr(d, "c", 1, 1, 1, 10, 0, &r), 0);
  assert_true(r == 11);
  assert_int_equal(mg_shdict_incr(d, "c", 1, -5, 1, 10, 0, &r), 0);
  assert_true(r == 6);
  mg_shvalue v = str("s");
  mg_shdict_set(d, "s", 1, &v, 0, 0);
  assert_int_equal(mg_shdict_incr(d, "s", 1, 1, 1, 0, 0, &r), -3);
}

static void test_lru_eviction_keeps_recent_entries(void **state) {
  mg_shdict *d = mg_shdict_open("t_lru", 16384);
  char val[500];
  memset(val, 'x', sizeof val);
  mg_shvalue v = {MG_SHV_STRING, 0, val, sizeof val}, out;
  char key[16];
  for (int i = 0; i < 100; i++) {
    int n = snprintf(key, sizeof key, "k%d", i);
    assert_int_equal(mg_shdict_set(d, key, (size_t)n, &v, 0, 0), 0);
    assert_int_equal(mg_shdict_get(d, "k0", 2, &out, &buf, &cap), 1);   /* k0 stays hot */
  }
  assert_int_equal(mg_shdict_get(d, "k0", 2, &out, &buf, &cap), 1);
  assert_int_equal(mg_shdict_get(d, "k1", 2, &out, &buf, &cap), 0);     /* evicted */
  assert_int_equal(mg_shdict_get(d, "k99", 3, &out, &buf, &cap), 1);
  assert_true(mg_shdict_count(d) < 100);
  char big[20000] = {0};
  mg_shvalue b = {MG_SHV_STRING, 0, big, sizeof big};
  assert_int_equal(mg_shdict_set(d, "big", 3, &b, 0, 0), -1);
}

static void *incr_many(void *arg) {
  mg_shdict *d = arg;
  double r;
  for (int i = 0; i < 10000; i++) mg_shdict_incr(d, "n", 1, 1, 1, 0, 0, &r);
  return NULL;
}

static void test_incr_from_threads_loses_nothing(void **state) {
  mg_shdict *d = mg_shdict_open("t_threads", 65536);
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, incr_many, d);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  mg_shvalue out;
  assert_int_equal(mg_shdict_get(d, "n", 1, &out, &buf, &cap), 1);
  assert_true(out.number == 40000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_open_finds_the_same_dictionary),
    cmocka_unit_test(test_set_get_delete),
    cmocka_unit_test(test_ttl_expires),
    cmocka_unit_test(test_incr),
    cmocka_unit_test(test_lru_eviction_keeps_recent_entries),
    cmocka_unit_test(test_incr_from_threads_loses_nothing),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  mg_shdict_free_all();
  free(buf);
  return rc;
}
