/* The C functions Lua code reaches as `require "moongate.core"`. Request
 * functions take the request's (cx, serial) pair that the runtime keeps inside
 * each req object, so a stale req object raises an error instead of touching
 * freed memory. Misuse raises; operational failure returns nil, err. */
#ifndef MG_LUA_API_H
#define MG_LUA_API_H

#include <stddef.h>

struct lua_State;

int mg_luaopen_core(struct lua_State *L);
/* Adds core.fetch and the fetch handle type (lua_fetch.c). */
void mg_lua_open_fetch(struct lua_State *L);
/* The transfer behind a fetch handle at idx (raises if it is not one). */
struct mg_fetch *mg_lua_check_fetch(struct lua_State *L, int idx);
/* The whole answer a fetch handle at idx holds (h:hold() returned true);
 * raises if it is not complete. */
const char *mg_lua_fetch_held(struct lua_State *L, int idx, size_t *len);
/* core.json_members' results for `text`, the keys at key_idx..top. */
int mg_lua_push_json_members(struct lua_State *L, const char *text, size_t n, int key_idx);
/* Userdata types. Each metatable is kept in the registry under its name (as
 * luaL_newmetatable does) and under `key`, the address of a static in the
 * type's file. mg_lua_newmetatable leaves the new metatable on the stack.
 * mg_lua_newudata pushes a new userdata of `size` bytes with that type's
 * metatable and a hidden header naming the type; mg_lua_checkudata returns
 * the payload of the one at idx, or raises a type error naming `tname`.
 * (So a check is a header compare, not a metatable fetch per call.) */
void mg_lua_newmetatable(struct lua_State *L, const void *key, const char *tname);
void *mg_lua_newudata(struct lua_State *L, size_t size, const void *key);
void *mg_lua_checkudata(struct lua_State *L, int idx, const void *key, const char *tname);
/* Adds core.shdict and the shared dictionary type (lua_shdict.c). */
void mg_lua_open_shdict(struct lua_State *L);
/* Creates a Lua state with the standard libraries, cjson and moongate.core
 * preloaded, and package.path set to home/lua and config_dir. */
struct lua_State *mg_lua_newstate(const char *home, const char *config_dir);
/* The runtime coroutine that may wait here, or a Lua error: waiting from a
 * coroutine a handler made itself would hand our yield to its resume. */
struct mg_coctx *mg_waitable(struct lua_State *L, const char *what);

#endif
