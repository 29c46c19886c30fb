/* `moongate.core`: the C functions behind the Lua request API, sleep and
 * logging. The Lua side (lua/moongate/request.lua) wraps them in the req
 * object operators use; nothing here is meant to be called by operators
 * directly. See include/moongate/lua_api.h for the calling conventions. */
#include "moongate/lua_api.h"
#include "moongate/app.h"
#include "moongate/fetch.h"
#include "moongate/forward.h"
#include "moongate/http.h"
#include "moongate/json_scan.h"
#include "moongate/log.h"
#include "moongate/worker.h"

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <lua-cjson.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

/* The value a pooled coroutine yields when its request is done. */
char mg_done_key;

/* Returns the request behind (cx, serial) at args 1-2, or raises. */
static mg_request *check_req(lua_State *L) {
  mg_coctx *cx = lua_touserdata(L, 1);
  lua_Integer sn = luaL_checkinteger(L, 2);
  if (!cx || !cx->req || cx->serial != (uint32_t)sn)
    luaL_error(L, "request object used after its request finished");
  return cx->req;
}

static int l_req_header(lua_State *L) {
  mg_request *req = check_req(L);
  size_t nlen;
  const char *name = luaL_checklstring(L, 3, &nlen);
  /* Repeated headers read as one comma-joined value (RFC 9110 5.3); the
   * usual single one is pushed as it is, without a buffer. */
  int first = -1;
  for (int i = 0; i < req->nhdr; i++) {
    const mg_header *h = &req->hdr[i];
    if (!mg_strcaseeq(req->head.data + h->name, h->name_len, name, nlen)) continue;
    if (first >= 0) { first = -2; break; }
    first = i;
  }
  if (first == -1) return 0;
  if (first >= 0) {
    const mg_header *h = &req->hdr[first];
    lua_pushlstring(L, req->head.data + h->value, h->value_len);
    return 1;
  }
  luaL_Buffer b;
  int found = 0;
  for (int i = 0; i < req->nhdr; i++) {
    const mg_header *h = &req->hdr[i];
    if (!mg_strcaseeq(req->head.data + h->name, h->name_len, name, nlen)) continue;
    if (found == 0) luaL_buffinit(L, &b);
    else luaL_addlstring(&b, ", ", 2);
    luaL_addlstring(&b, req->head.data + h->value, h->value_len);
    found++;
  }
  if (!found) return 0;
  luaL_pushresult(&b);
  return 1;
}

/* core.req_peer(cx, sn) -> ip, port: the client's address (req.remote_addr,
 * req.remote_port). Read when asked, not passed with every request. */
static int l_req_peer(lua_State *L) {
  mg_request *req = check_req(L);
  lua_pushstring(L, req->remote_ip);
  lua_pushinteger(L, req->remote_port);
  return 2;
}

/* core.req_params(cx, sn) -> table: the route's path parameters (req.params). */
static int l_req_params(lua_State *L) {
  mg_request *req = check_req(L);
  const mg_route_match *m = &req->match;
  lua_createtable(L, 0, m->nparams);
  for (int i = 0; i < m->nparams; i++) {
    lua_pushlstring(L, m->params[i].name, m->params[i].name_len);
    lua_pushlstring(L, req->head.data + m->params[i].off, m->params[i].len);
    lua_rawset(L, -3);
  }
  return 1;
}

static int l_req_headers(lua_State *L) {
  mg_request *req = check_req(L);
  lua_createtable(L, 0, req->nhdr);
  char name[256];
  for (int i = 0; i < req->nhdr; i++) {
    const mg_header *h = &req->hdr[i];
    size_t n = h->name_len < sizeof name ? h->name_len : sizeof name - 1;
    for (size_t j = 0; j < n; j++) {
      char ch = req->head.data[h->name + j];
      name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    lua_pushlstring(L, name, n);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isstring(L, -1)) {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, req->head.data + h->value, h->value_len);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, req->head.data + h->value, h->value_len);
    }
    lua_rawset(L, -3);
  }
  return 1;
}

static int l_req_body(lua_State *L) {
  mg_request *req = check_req(L);
  lua_pushlstring(L, req->body.data ? req->body.data : "", req->body.len);
  return 1;
}

static int l_set_id(lua_State *L) {
  mg_request *req = check_req(L);
  size_t len;
  const char *id = luaL_checklstring(L, 3, &len);
  if (len >= sizeof req->id) len = sizeof req->id - 1;
  memcpy(req->id, id, len);
  req->id[len] = '\0';
  return 0;
}

/* Appends `,"key":value` (already JSON-encoded by the caller) to the
 * request's access-log line. */
static int l_log_extra(lua_State *L) {
  mg_request *req = check_req(L);
  size_t len;
  const char *frag = luaL_checklstring(L, 3, &len);
  mg_buf_append(&req->log_extra, ",", 1);
  mg_buf_append(&req->log_extra, frag, len);
  return 0;
}

/* Ends the client connection at once: used when a relayed body broke off,
 * so the client cannot take the cut body for a complete one. */
static int l_abort(lua_State *L) {
  mg_request *req = check_req(L);
  if (req->conn) mg_conn_close(req->conn);
  return 0;
}

void mg_lua_newmetatable(lua_State *L, const void *key, const char *tname) {
  luaL_newmetatable(L, tname);
  lua_pushlightuserdata(L, (void *)key);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

static void set_metatable(lua_State *L, const void *key) {   /* on the value at the top */
  lua_pushlightuserdata(L, (void *)key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, -2);
}

/* Our userdata carry their type's key in a header word before the payload:
 * the check on every method call reads it (two API calls) instead of
 * fetching the metatable from the registry and comparing (six: a third of a
 * relayed request's API calls). Only C code writes a full userdata's bytes,
 * so Lua code cannot forge the header. */
typedef union { const void *key; void *align_ptr; double align_num; } udata_header;

void *mg_lua_newudata(lua_State *L, size_t size, const void *key) {
  udata_header *h = lua_newuserdata(L, sizeof *h + size);
  h->key = key;
  set_metatable(L, key);
  return h + 1;
}

void *mg_lua_checkudata(lua_State *L, int idx, const void *key, const char *tname) {
  /* The size first: another library's userdata may be smaller than a header. */
  if (lua_type(L, idx) == LUA_TUSERDATA && lua_objlen(L, idx) >= sizeof(udata_header)) {
    udata_header *h = lua_touserdata(L, idx);
    if (h->key == key) return h + 1;
  }
  luaL_typerror(L, idx, tname);
  return NULL;
}

static int l_traceparent(lua_State *L) {
  lua_pushstring(L, mg_forward_traceparent(check_req(L)));
  return 1;
}

static int l_random_hex(lua_State *L) {
  int n = (int)luaL_checkinteger(L, 1);
  if (n < 1 || n > 64) luaL_argerror(L, 1, "1-64 digits");
  char out[64];
  mg_random_hex(out, n);
  lua_pushlstring(L, out, (size_t)n);
  return 1;
}

/* core.clean_utf8(s): s itself when it is valid UTF-8 without NUL (no copy),
 * else a copy with every byte that is not part of a valid character
 * replaced by "?". For text bound for stores that refuse the bad bytes. */
static int l_clean_utf8(lua_State *L) {
  size_t n, i = 0, len = 0;
  luaL_checktype(L, 1, LUA_TSTRING);
  const char *s = lua_tolstring(L, 1, &n);
  const unsigned char *u = (const unsigned char *)s;
  /* Plain ASCII without NUL, eight bytes at a time: what nearly every value
   * is (the AI relay cleans each log row's request id this way). */
  while (n - i >= 8) {
    uint64_t v;
    memcpy(&v, u + i, 8);
    if ((v | ((v - 0x0101010101010101ULL) & ~v)) & 0x8080808080808080ULL) break;
    i += 8;
  }
  while (i < n && (len = mg_utf8_char_len(u + i, n - i)) > 0) i += len;
  if (i == n) {
    lua_settop(L, 1);
    return 1;
  }
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  luaL_addlstring(&B, s, i);
  while (i < n) {
    len = mg_utf8_char_len(u + i, n - i);
    if (len) {
      luaL_addlstring(&B, s + i, len);
      i += len;
    } else {
      luaL_addchar(&B, '?');
      i++;
    }
  }
  luaL_pushresult(&B);
  return 1;
}

/* core.json_members(text, key, ...) -> one value per key: the JSON text of
 * that top-level member (false when absent), or nil, err when text is not a
 * JSON object. See moongate/json_scan.h. */
int mg_lua_push_json_members(lua_State *L, const char *text, size_t n, int key_idx) {
  int nwant = lua_gettop(L) - key_idx + 1;
  if (nwant < 1 || nwant > 8) return luaL_error(L, "json_members: expected 1 to 8 keys");
  mg_json_member want[8];
  for (int k = 0; k < nwant; k++) {
    luaL_checktype(L, key_idx + k, LUA_TSTRING);
    want[k].key = lua_tolstring(L, key_idx + k, &want[k].key_len);
  }
  const char *err = NULL;
  if (mg_json_scan_members(text, n, want, nwant, &err) < 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  for (int k = 0; k < nwant; k++) {
    if (want[k].len) lua_pushlstring(L, text + want[k].start, want[k].len);
    else lua_pushboolean(L, 0);
  }
  return nwant;
}

static int l_json_members(lua_State *L) {
  size_t n;
  luaL_checktype(L, 1, LUA_TSTRING);
  const char *text = lua_tolstring(L, 1, &n);
  return mg_lua_push_json_members(L, text, n, 2);
}

/* Whether s[0..n) is an RFC 9110 token (a header name): visible ASCII
 * but the separators "(),/:;<=>?@[\\]{} and the double quote. By a bit
 * table, bit c set for an allowed byte c: every answer's header names pass
 * here. */
static int valid_token(const char *s, size_t n) {
  static const uint64_t tchar[2] = {0x03ff6cfa00000000ULL, 0x57ffffffc7fffffeULL};
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 128 || !(tchar[c >> 6] >> (c & 63) & 1)) return 0;
  }
  return 1;
}

/* One header line per value. Set-Cookie is the exception to joining
 * repeated headers with ", " (RFC 9110 5.3): fetched heads hold repeated
 * Set-Cookie values joined with "\n", so here a "\n" in a Set-Cookie value
 * separates lines again -- each one a Set-Cookie, never another header. */
static void add_header(lua_State *L, mg_buf *out, const char *name, size_t nlen,
                       int vidx) {
  size_t vlen;
  const char *v = lua_tolstring(L, vidx, &vlen);
  if (!v) luaL_error(L, "header '%s': value must be a string or number", name);
  int cookie = mg_strcaseeq(name, nlen, "set-cookie", 10);
  for (size_t i = 0; i < vlen; i++) {
    unsigned char c = (unsigned char)v[i];
    if (c <= '\r' && (c == '\r' || (c == '\n' && !cookie) || c == '\0'))   /* one compare per byte */
      luaL_error(L, "header '%s': value contains CR, LF or NUL", name);
  }
  const char *end = v + vlen;
  do {
    const char *eol = cookie ? memchr(v, '\n', (size_t)(end - v)) : NULL;
    if (!eol) eol = end;
    mg_buf_append(out, name, nlen);
    mg_buf_append(out, ": ", 2);
    mg_buf_append(out, v, (size_t)(eol - v));
    mg_buf_append(out, "\r\n", 2);
    v = eol + 1;
  } while (v < end);
}

/* Serializes the headers table at `idx` into w->hdrbuf. Framing headers are
 * the server's business and are dropped -- except a Content-Length on the
 * answer to HEAD, which states the length of the body not sent (a proxied
 * HEAD keeps the upstream's). */
static void serialize_headers(lua_State *L, int idx, mg_buf *out, mg_request *req) {
  out->len = 0;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "header names must be strings");
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (!valid_token(name, nlen)) luaL_error(L, "invalid header name '%s'", name);
    if (req->is_head && mg_strcaseeq(name, nlen, "content-length", 14) &&
        lua_type(L, -1) == LUA_TSTRING) {
      req->head_length_given = 1;
      add_header(L, out, name, nlen, lua_gettop(L));
      lua_pop(L, 1);
      continue;
    }
    if (mg_strcaseeq(name, nlen, "content-length", 14) ||
        mg_strcaseeq(name, nlen, "transfer-encoding", 17) ||
        mg_strcaseeq(name, nlen, "connection", 10) ||
        mg_strcaseeq(name, nlen, "date", 4)) {
      lua_pop(L, 1);
      continue;
    }
    if (lua_istable(L, -1)) {
      int n = (int)lua_objlen(L, -1);
      for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        add_header(L, out, name, nlen, lua_gettop(L));
        lua_pop(L, 1);
      }
    } else {
      add_header(L, out, name, nlen, lua_gettop(L));
    }
    lua_pop(L, 1);
  }
}

static int check_status(lua_State *L, int idx) {
  lua_Integer st = luaL_checkinteger(L, idx);
  if (st < 100 || st > 599) luaL_error(L, "invalid HTTP status %d", (int)st);
  return (int)st;
}

/* A proxied answer whose headers Lua never looked at: the upstream's head
 * goes on as it came, minus what a hop removes (forward.c) and minus the
 * headers of the table at `set_idx` (0: none), which the caller has
 * serialized already: those the gateway sets itself replace the upstream's. */
#define MAX_SET_HEADERS 32
static void relay_head(lua_State *L, int idx, int set_idx, mg_buf *out, mg_request *req) {
  mg_fetch *f = mg_lua_check_fetch(L, idx);
  const char *names[MAX_SET_HEADERS];
  size_t lens[MAX_SET_HEADERS];
  mg_forward_drop drop = { names, lens, 0 };
  if (set_idx) {
    lua_pushnil(L);
    while (lua_next(L, set_idx)) {
      if (drop.n == MAX_SET_HEADERS) luaL_error(L, "at most %d headers over a relayed head", MAX_SET_HEADERS);
      names[drop.n] = lua_tolstring(L, -2, &lens[drop.n]);   /* a string key: checked by serialize_headers */
      drop.n++;
      lua_pop(L, 1);
    }
  }
  if (mg_forward_response_lines(f->head.data ? f->head.data : "", f->head.len, req->is_head,
                                &drop, out))
    req->head_length_given = 1;
}

static int l_respond(lua_State *L) {
  mg_request *req = check_req(L);
  if (req->resp_started) luaL_error(L, "response already sent");
  int status = check_status(L, 3);
  size_t blen = 0;
  const char *body = lua_isnoneornil(L, 5)                ? ""
                     : lua_type(L, 5) == LUA_TUSERDATA   ? mg_lua_fetch_held(L, 5, &blen)
                                                          : luaL_checklstring(L, 5, &blen);
  mg_buf *hb = &req->w->hdrbuf;
  serialize_headers(L, 4, hb, req);
  if (!lua_isnoneornil(L, 6)) relay_head(L, 6, lua_isnoneornil(L, 4) ? 0 : 4, hb, req);
  if (mg_response_send(req, status, hb->data ? hb->data : "", hb->len, body, blen) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_stream_start(lua_State *L) {
  mg_request *req = check_req(L);
  if (req->resp_started) luaL_error(L, "response already sent");
  int status = check_status(L, 3);
  mg_buf *hb = &req->w->hdrbuf;
  serialize_headers(L, 4, hb, req);
  if (!lua_isnoneornil(L, 5)) relay_head(L, 5, lua_isnoneornil(L, 4) ? 0 : 4, hb, req);
  if (mg_response_stream_start(req, status, hb->data ? hb->data : "", hb->len) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_stream_write(lua_State *L) {
  mg_request *req = check_req(L);
  if (!req->resp_started || req->resp_done) luaL_error(L, "no streaming response in progress");
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  if (mg_response_stream_write(req, data, len) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (mg_response_should_wait(req) && req->co && req->co->co == L) {
    /* Backpressure: park until the client has read enough (write_cb resumes
     * with true, or with nil, "closed" if the client leaves). */
    req->co->waiting = MG_WAIT_DRAIN;
    return lua_yield(L, 0);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_stream_end(lua_State *L) {
  mg_request *req = check_req(L);
  if (!req->resp_started) luaL_error(L, "no streaming response in progress");
  if (req->resp_done) return 0;
  mg_response_stream_end(req);
  return 0;
}

static int l_response_started(lua_State *L) {
  mg_request *req = check_req(L);
  lua_pushboolean(L, req->resp_started);
  return 1;
}

/* ---- sleep ------------------------------------------------------------- */

mg_coctx *mg_waitable(lua_State *L, const char *what) {
  mg_coctx *cx = lua_getexdata(L);
  if (!cx || !cx->app->w) luaL_error(L, "%s: not inside a request or timer", what);
  if (cx->co != L)
    luaL_error(L, "%s: cannot wait inside a coroutine created by Lua code; "
               "call it from the handler itself", what);
  return cx;
}

static void sleep_done(uv_timer_t *t) {
  mg_coctx *cx = t->data;
  cx->waiting = MG_WAIT_NONE;
  mg_coctx_resume(cx, 0);
}

static int l_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (s < 0) luaL_argerror(L, 1, "must not be negative");
  mg_coctx *cx = mg_waitable(L, "sleep");
  if (!cx->timer) {
    cx->timer = mg_xmalloc(sizeof *cx->timer);
    uv_timer_init(&cx->app->w->loop, cx->timer);
    cx->timer->data = cx;
  }
  cx->waiting = MG_WAIT_SLEEP;
  uv_timer_start(cx->timer, sleep_done, (uint64_t)(s * 1000 + 0.5), 0);
  return lua_yield(L, 0);
}

/* ---- misc ------------------------------------------------------------- */

static int l_log(lua_State *L) {
  static const char *levels[] = {"debug", "info", "warn", "error", NULL};
  int level = luaL_checkoption(L, 1, NULL, levels);
  const char *msg = luaL_checkstring(L, 2);
  const char *extra = luaL_optstring(L, 3, NULL);    /* pre-encoded JSON members */
  mg_log(level, extra, "%s", msg);
  return 0;
}

/* core.now(): unix seconds, as of the worker loop's current turn (read at
 * most once per millisecond of it, like ngx.now()); outside a worker (a
 * config check, `moongate test`) the clock as called. */
static int l_now(lua_State *L) {
  lua_pushnumber(L, mg_wall_time());
  return 1;
}

static int l_parse_size(lua_State *L) {
  int64_t v = mg_parse_size(luaL_checkstring(L, 1));
  if (v < 0) return 0;
  lua_pushnumber(L, (lua_Number)v);
  return 1;
}

static int l_parse_duration(lua_State *L) {
  int64_t v = mg_parse_duration_ms(luaL_checkstring(L, 1));
  if (v < 0) return 0;
  lua_pushnumber(L, (lua_Number)v);
  return 1;
}

static int l_parse_listen(lua_State *L) {
  char host[256];
  int port;
  const char *err;
  if (mg_parse_listen(luaL_checkstring(L, 1), host, sizeof host, &port, &err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}

static int l_method_bit(lua_State *L) {
  size_t len;
  const char *m = luaL_checklstring(L, 1, &len);
  lua_pushinteger(L, mg_method_bit(m, len));
  return 1;
}

/* ---- files (lua/moongate/batch.lua's spool) ------------------------------ */

/* core.listdir(path) -> { names } (without "." and ".."), or nil, err. */
static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  return 1;
}

/* core.mkdir(path [, mode]) -> true, or nil, err: creates the directory and
 * its missing parents (mkdir -p); an existing directory is fine. */
static int l_mkdir(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  mode_t mode = (mode_t)luaL_optinteger(L, 2, 0700);
  if (len == 0 || len >= 4096) luaL_argerror(L, 1, "bad path");
  char buf[4096];
  memcpy(buf, path, len + 1);
  for (size_t i = 1; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char c = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, mode) != 0 && errno != EEXIST) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s: %s", buf, strerror(errno));
      return 2;
    }
    buf[i] = c;
  }
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: not a directory", path);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

int mg_luaopen_core(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"req_header", l_req_header}, {"req_headers", l_req_headers},
    {"req_body", l_req_body}, {"req_peer", l_req_peer}, {"req_params", l_req_params},
    {"set_id", l_set_id},
    {"respond", l_respond}, {"stream_start", l_stream_start},
    {"stream_write", l_stream_write}, {"stream_end", l_stream_end},
    {"response_started", l_response_started}, {"log_extra", l_log_extra},
    {"abort", l_abort}, {"random_hex", l_random_hex},
    {"clean_utf8", l_clean_utf8}, {"json_members", l_json_members},
    {"traceparent", l_traceparent},
    {"sleep", l_sleep}, {"log", l_log}, {"now", l_now},
    {"parse_size", l_parse_size}, {"parse_duration", l_parse_duration},
    {"parse_listen", l_parse_listen}, {"method_bit", l_method_bit},
    {"listdir", l_listdir}, {"mkdir", l_mkdir},
    {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_pushlightuserdata(L, &mg_done_key);
  lua_setfield(L, -2, "DONE");
  lua_pushliteral(L, MG_VERSION);
  lua_setfield(L, -2, "version");
  mg_lua_open_fetch(L);
  mg_lua_open_shdict(L);
  mg_lua_open_redis(L);
  mg_lua_open_pg(L);
  return 1;
}

#ifdef MG_SYSALLOC
/* Sanitizer builds: the whole Lua heap goes through malloc so ASan and LSan
 * see it (GC64 LuaJIT allows a custom allocator). */
static void *sys_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  if (nsize == 0) { free(ptr); return NULL; }
  return realloc(ptr, nsize);
}
#endif

lua_State *mg_lua_newstate(const char *home, const char *config_dir) {
#ifdef MG_SYSALLOC
  lua_State *L = lua_newstate(sys_alloc, NULL);
#else
  lua_State *L = luaL_newstate();
#endif
  if (!L) return NULL;
  luaL_openlibs(L);
  /* package.preload: cjson (linked statically) and moongate.core. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_cjson);
  lua_setfield(L, -2, "cjson");
  lua_pushcfunction(L, mg_luaopen_core);
  lua_setfield(L, -2, "moongate.core");
  lua_pop(L, 1);
  /* require finds the runtime's lua/, then the config's own directory. */
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;%s/?/init.lua;",
                  home, home, config_dir, config_dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  return L;
}
