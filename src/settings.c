/* Reads the loader's normalized settings table. The loader has already
 * checked types and ranges with messages for the operator; the checks here
 * only guard the C side against a loader bug. */
#include "moongate/settings.h"

#include <lua.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void mg_settings_defaults(mg_settings *s) {
  memset(s, 0, sizeof *s);
  s->listen_port = 8080;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  s->workers = n > 0 ? (int)n : 1;
  s->max_head = 32 * 1024;
  s->max_body = 1024 * 1024;
  s->header_timeout_ms = 10000;
  s->body_timeout_ms = 60000;
  s->keepalive_timeout_ms = 75000;
  s->send_timeout_ms = 60000;
  s->shutdown_timeout_ms = 10000;
  strcpy(s->health_path, "/health");
  s->access_log = 1;
  s->upstream_pool = 64;
}

static int get_number(lua_State *L, int idx, const char *key, double *out) {
  lua_getfield(L, idx, key);
  int ok = lua_type(L, -1) == LUA_TNUMBER;
  if (ok) *out = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return ok;
}

static int get_string(lua_State *L, int idx, const char *key, char *out,
                      size_t outlen) {
  lua_getfield(L, idx, key);
  size_t len;
  const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
  int ok = v && len < outlen;
  if (ok) memcpy(out, v, len + 1);
  lua_pop(L, 1);
  return ok;
}

int mg_settings_from_lua(lua_State *L, int idx, mg_settings *s, char *err,
                         size_t errlen) {
  double v;
  mg_settings_defaults(s);
  if (idx < 0) idx = lua_gettop(L) + idx + 1;
  if (!lua_istable(L, idx)) { snprintf(err, errlen, "settings: not a table"); return -1; }
  get_string(L, idx, "listen_host", s->listen_host, sizeof s->listen_host);
  if (get_number(L, idx, "listen_port", &v)) s->listen_port = (int)v;
  if (get_number(L, idx, "workers", &v)) s->workers = (int)v;
  if (get_number(L, idx, "max_head", &v)) s->max_head = (size_t)v;
  if (get_number(L, idx, "max_body", &v)) s->max_body = (size_t)v;
  if (get_number(L, idx, "header_timeout", &v)) s->header_timeout_ms = (uint64_t)v;
  if (get_number(L, idx, "body_timeout", &v)) s->body_timeout_ms = (uint64_t)v;
  if (get_number(L, idx, "keepalive_timeout", &v)) s->keepalive_timeout_ms = (uint64_t)v;
  if (get_number(L, idx, "send_timeout", &v)) s->send_timeout_ms = (uint64_t)v;
  if (get_number(L, idx, "shutdown_timeout", &v)) s->shutdown_timeout_ms = (uint64_t)v;
  if (get_number(L, idx, "upstream_pool", &v)) s->upstream_pool = (int)v;
  get_string(L, idx, "redis_host", s->redis_host, sizeof s->redis_host);
  get_string(L, idx, "redis_password", s->redis_password, sizeof s->redis_password);
  if (get_number(L, idx, "redis_port", &v)) s->redis_port = (int)v;
  if (get_number(L, idx, "redis_db", &v)) s->redis_db = (int)v;
  if (get_number(L, idx, "redis_pool", &v)) s->redis_pool = (int)v;
  if (get_number(L, idx, "redis_timeout", &v)) s->redis_timeout_ms = (uint64_t)v;
  get_string(L, idx, "pg_dsn", s->pg_dsn, sizeof s->pg_dsn);
  if (get_number(L, idx, "pg_pool", &v)) s->pg_pool = (int)v;
  if (get_number(L, idx, "pg_timeout", &v)) s->pg_timeout_ms = (uint64_t)v;
  if (get_number(L, idx, "pg_wait", &v)) s->pg_wait_ms = (uint64_t)v;
  lua_getfield(L, idx, "health_path");
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t len;
    const char *p = lua_tolstring(L, -1, &len);
    if (len < sizeof s->health_path) memcpy(s->health_path, p, len + 1);
  } else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    s->health_path[0] = '\0';
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "access_log");
  if (lua_type(L, -1) == LUA_TBOOLEAN) s->access_log = lua_toboolean(L, -1);
  lua_pop(L, 1);

  if (s->listen_port < 1 || s->listen_port > 65535) { snprintf(err, errlen, "listen: port out of range"); return -1; }
  if (s->workers < 1 || s->workers > 256) { snprintf(err, errlen, "workers: must be 1-256"); return -1; }
  if (s->max_head < 1024 || s->max_head > MG_MAX_HEAD_CEILING) {
    snprintf(err, errlen, "limits.headers: must be between 1k and 64k");
    return -1;
  }
  return 0;
}
