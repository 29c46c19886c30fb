/* The Lua face of shdict.c: `core.shdict(name, capacity)` opens (or creates)
 * a dictionary and returns its handle; lua/moongate/shared.lua hands the
 * ones the config declares to operators as `shared.<name>`.
 *
 *   d:get(key)                      -> value | nil
 *   d:set(key, value [, ttl])       -> true | nil, "too large"   (value nil deletes)
 *   d:add(key, value [, ttl])       -> true | nil, "exists" | nil, "too large"
 *   d:incr(key, delta [, init [, ttl]]) -> new value | nil, "not found" | nil, "not a number"
 *   d:cas(key, old, new [, ttl])    -> true | nil, "changed"   (numbers; old nil = absent)
 *   d:delete(key)                   -> true
 *   d:ttl(key)                      -> seconds left | -1 (no expiry) | nil (absent)
 *   d:count()                       -> number of live entries (expired ones may count)
 * Keys are strings; values strings, numbers or booleans; ttl in seconds. */
#include "moongate/lua_api.h"
#include "moongate/shdict.h"

#include <lua.h>
#include <lauxlib.h>
#include <stdlib.h>

#define SHDICT_MT "moongate.shdict"
static const char shdict_mt_key;   /* its address: the metatable's registry key */

static mg_shdict *check_dict(lua_State *L) {
  return *(mg_shdict **)mg_lua_checkudata(L, 1, &shdict_mt_key, SHDICT_MT);
}

static uint64_t opt_ttl(lua_State *L, int idx) {
  double t = luaL_optnumber(L, idx, 0);
  if (t < 0) luaL_argerror(L, idx, "ttl must not be negative");
  return (uint64_t)(t * 1000 + 0.5);
}

static void to_value(lua_State *L, int idx, mg_shvalue *v) {
  switch (lua_type(L, idx)) {
    case LUA_TNIL: case LUA_TNONE: v->type = MG_SHV_NONE; break;
    case LUA_TNUMBER: v->type = MG_SHV_NUMBER; v->number = lua_tonumber(L, idx); break;
    case LUA_TBOOLEAN: v->type = MG_SHV_BOOLEAN; v->number = lua_toboolean(L, idx); break;
    case LUA_TSTRING: v->type = MG_SHV_STRING; v->str = lua_tolstring(L, idx, &v->len); break;
    default: luaL_argerror(L, idx, "value must be a string, number, boolean or nil");
  }
}

static int l_get(lua_State *L) {
  mg_shdict *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  mg_shvalue v;
  char *buf = NULL;                 /* string values are copied out under the lock */
  size_t cap = 0;
  if (!mg_shdict_get(d, key, klen, &v, &buf, &cap)) return 0;
  switch (v.type) {
    case MG_SHV_NUMBER: lua_pushnumber(L, v.number); break;
    case MG_SHV_BOOLEAN: lua_pushboolean(L, v.number != 0); break;
    default: lua_pushlstring(L, v.str, v.len);
  }
  free(buf);
  return 1;
}

static int store(lua_State *L, int only_if_absent) {
  mg_shdict *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  mg_shvalue v = {0};
  to_value(L, 3, &v);
  int rc = mg_shdict_set(d, key, klen, &v, opt_ttl(L, 4), only_if_absent);
  if (rc == 0) { lua_pushboolean(L, 1); return 1; }
  lua_pushnil(L);
  lua_pushstring(L, rc == -2 ? "exists" : "too large");
  return 2;
}

static int l_set(lua_State *L) { return store(L, 0); }
static int l_add(lua_State *L) { return store(L, 1); }

static int l_incr(lua_State *L) {
  mg_shdict *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  double delta = luaL_checknumber(L, 3);
  int has_init = !lua_isnoneornil(L, 4);
  double init = has_init ? luaL_checknumber(L, 4) : 0;
  double result;
  int rc = mg_shdict_incr(d, key, klen, delta, has_init, init, opt_ttl(L, 5), &result);
  if (rc == 0) { lua_pushnumber(L, result); return 1; }
  lua_pushnil(L);
  lua_pushstring(L, rc == -2 ? "not found" : rc == -3 ? "not a number" : "too large");
  return 2;
}

static int l_cas(lua_State *L) {
  mg_shdict *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  int has_expected = !lua_isnil(L, 3);
  double expected = has_expected ? luaL_checknumber(L, 3) : 0;
  double value = luaL_checknumber(L, 4);
  int rc = mg_shdict_cas(d, key, klen, has_expected, expected, value, opt_ttl(L, 5));
  if (rc == 0) { lua_pushboolean(L, 1); return 1; }
  lua_pushnil(L);
  lua_pushstring(L, rc == -2 ? "changed" : "too large");
  return 2;
}

static int l_delete(lua_State *L) {
  mg_shdict *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  mg_shdict_delete(d, key, klen);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_ttl(lua_State *L) {
  mg_shdict *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  int64_t ms = mg_shdict_ttl(d, key, klen);
  if (ms == -2) return 0;
  lua_pushnumber(L, ms < 0 ? -1 : (double)ms / 1000.0);
  return 1;
}

static int l_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mg_shdict_count(check_dict(L)));
  return 1;
}

static int l_open(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  double cap = luaL_checknumber(L, 2);
  mg_shdict *d = mg_shdict_open(name, cap > 0 ? (size_t)cap : 0);
  if (!d) luaL_error(L, "shared dictionary %s: capacity must be at least 8k", name);
  mg_shdict **u = mg_lua_newudata(L, sizeof *u, &shdict_mt_key);
  *u = d;
  lua_pushnumber(L, (double)mg_shdict_capacity(d));   /* the one in force */
  return 2;
}

void mg_lua_open_shdict(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"get", l_get}, {"set", l_set}, {"add", l_add}, {"incr", l_incr},
    {"delete", l_delete}, {"cas", l_cas}, {"ttl", l_ttl}, {"count", l_count}, {NULL, NULL}};
  mg_lua_newmetatable(L, &shdict_mt_key, SHDICT_MT);
  lua_newtable(L);
  luaL_register(L, NULL, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "shdict");    /* into the core table on the stack */
}
