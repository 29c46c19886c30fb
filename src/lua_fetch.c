/* The Lua face of fetch.c: `core.fetch(opts)` starts one transfer and
 * returns a handle; the handle's methods wait without blocking the worker.
 * Which engine carries it (native HTTP/1.1 for http://, libcurl otherwise)
 * is fetch.c's choice and invisible here.
 * lua/moongate/upstream.lua builds req:fetch() and req:proxy() on them.
 *
 *   h = core.fetch{ url =, path =, method =,
 *                   headers = { "Name: value", ..., Name = value | { values } },
 *                   trace = true, body =, connect_timeout =, timeout =, read_timeout = (ms),
 *                   verify = true,
 *                   forward = true, drop = { "lower-case-name", ... } }
 *              path: appended to url (url is then a base like "http://h:80")
 *              headers: ready lines (the list part) and name = value
 *              pairs (a string, number or boolean, or a list of them: a
 *              line each); CR/LF anywhere raises.
 *              forward: the current request's headers go first, as a proxy
 *              hop forwards them (forward.c); drop: names left out of them.
 *              With forward, a name = value pair replaces the client's
 *              header of that name (any case) and a false value removes it:
 *              req:proxy() passes a request's one set of rewrites as it is.
 *              trace: the current request's X-Request-ID and traceparent
 *              follow the headers (forward includes them already).
 *   h = core.fetch_args(url, path, method, body, forward, drop, headers, trace,
 *                       connect_timeout, timeout, read_timeout, verify)
 *              the same, the options as arguments (no table per call)
 *   h:head()   -> status, headers | nil, kind, message, waiting for the head
 *                 if need be (or nothing: call again -- callers loop, so a
 *                 wake-up without news costs nothing but a second call)
 *   h:status() -> like head() without building the headers table
 *   h:headers() -> the headers table head() returns; also after close()
 *   h:relay_headers(keep_length) -> the response headers a proxy passes on
 *                 (hop-by-hop ones and Date left out; Content-Length only
 *                 with keep_length)
 *   h:read()   -> chunk | false (end) | nil, kind, message | nothing (waited)
 *   h:rest()   -> the whole remaining body if the transfer is complete, else nil
 *   h:complete() -> whether the whole answer is in (without taking it)
 *   h:hold()   -> true once the whole answer is in, kept on the C side (no
 *                 Lua string: a handler may answer with it, core.respond) |
 *                 nil, kind, message, waiting if need be (or nothing, as head())
 *   h:members(key, ...) -> like core.json_members on the held answer
 *   h:info()   -> { connect_ms, first_byte_ms, total_ms, ip, reused }
 *   h:close()  -> stops the transfer (headers() still answers)
 *   h:release() -> close() and forget the head too: no method works after it
 * Error kinds: "connect", "dns", "timeout", "reset", "tls", "error". */
#include "moongate/app.h"
#include "moongate/fetch.h"
#include "moongate/forward.h"
#include "moongate/lua_api.h"
#include "moongate/worker.h"

#include <lua.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define FETCH_MT "moongate.fetch"
static const char fetch_mt_key;   /* its address: the metatable's registry key */
static const char released_mt_key;   /* the same methods, no __gc: see l_release */

/* The head outlives close(): it moves here, so a caller that read the body
 * (which closes) can still look at the headers; freed with the userdata. */
typedef struct { mg_fetch *f; mg_buf head; int released; } fetch_ud;

mg_fetch *mg_lua_check_fetch(lua_State *L, int idx) {
  fetch_ud *u = mg_lua_checkudata(L, idx, &fetch_mt_key, FETCH_MT);
  if (!u->f) luaL_error(L, "fetch handle used after close");
  return u->f;
}

/* core.fetch's option names, in its upvalues: looked up in the options
 * table without interning the name on every call (lua_getfield would). */
enum { OPT_URL = 1, OPT_PATH, OPT_METHOD, OPT_BODY, OPT_FORWARD, OPT_DROP, OPT_HEADERS,
       OPT_TRACE, OPT_CONNECT_TIMEOUT, OPT_TIMEOUT, OPT_READ_TIMEOUT, OPT_VERIFY,
       OPT_COUNT = OPT_VERIFY };
static const char *const opt_names[OPT_COUNT] = {
  "url", "path", "method", "body", "forward", "drop", "headers", "trace",
  "connect_timeout", "timeout", "read_timeout", "verify"};

/* The options, whichever way they came, sit on the stack in OPT order from
 * FIRST_OPT on (core.fetch reads them out of its table first): OPT_AT(opt)
 * is one's stack slot, read in place (no push and pop per option). */
#define FIRST_OPT 2
#define OPT_AT(opt) (FIRST_OPT + (opt) - 1)

static mg_fetch *check_fetch(lua_State *L) { return mg_lua_check_fetch(L, 1); }

/* trace = true: the request's X-Request-ID and W3C traceparent (the one
 * req:proxy sends too, made once per request), "Name: value\n" each, in
 * the worker's scratch buffer; returns how many. Made here rather than in
 * Lua: two fresh strings per call, one of them interned into a hash chain
 * that every answer id shares. */
static int trace_lines(mg_request *req, mg_buf *out) {
  mg_buf_append(out, "X-Request-ID: ", 14);
  mg_buf_appends(out, req->id);
  mg_buf_append(out, "\ntraceparent: ", 14);
  mg_buf_append(out, mg_forward_traceparent(req), 55);
  mg_buf_append(out, "\n", 1);
  return 2;
}

/* Points lines[] at the "Name: value\n" lines of [p, p + len); returns how many. */
static int split_lines(const char *p, size_t len, mg_fetch_line *lines) {
  int n = 0;
  for (const char *end = p + len; p < end; n++) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    lines[n].p = p;
    lines[n].len = (size_t)(eol - p);
    p = eol + 1;
  }
  return n;
}

/* One "name: value\n" line for the value at idx (a string, a number or a
 * boolean) into out. */
static void pair_line(lua_State *L, mg_buf *out, const char *name, size_t nlen, int idx) {
  size_t vlen;
  const char *v;
  if (lua_type(L, idx) == LUA_TBOOLEAN) {
    v = lua_toboolean(L, idx) ? "true" : "false";
    vlen = strlen(v);
  } else if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
    v = lua_tolstring(L, idx, &vlen);       /* a number converts in place: idx is a value slot */
  } else {
    luaL_error(L, "fetch: header %s: value must be a string, a number, a boolean or a list of them", name);
    return;
  }
  if (memchr(name, '\r', nlen) || memchr(name, '\n', nlen) || memchr(name, ':', nlen) ||
      memchr(v, '\r', vlen) || memchr(v, '\n', vlen))
    luaL_error(L, "fetch: header %s: CR, LF (or a colon in the name) not allowed", name);
  mg_buf_append(out, name, nlen);
  mg_buf_append(out, ": ", 2);
  mg_buf_append(out, v, vlen);
  mg_buf_append(out, "\n", 1);
}

/* The name = value pairs of the headers table at t (a list value gives one
 * line per element), into out; returns how many lines. Integer keys are the
 * table's list of ready lines, read separately. */
static int pair_lines(lua_State *L, int t, int forward, mg_buf *out) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    /* forward: false removes the header (forward_lines left it out) */
    int removed = forward && lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    if (!removed && lua_type(L, -2) == LUA_TSTRING) {
      size_t nlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      if (lua_istable(L, -1)) {
        int k = (int)lua_objlen(L, -1);
        for (int i = 1; i <= k; i++) {
          lua_rawgeti(L, -1, i);
          pair_line(L, out, name, nlen, lua_gettop(L));
          lua_pop(L, 1);
          n++;
        }
      } else {
        pair_line(L, out, name, nlen, lua_gettop(L));
        n++;
      }
    }
    lua_pop(L, 1);
  }
  return n;
}

/* The forwarded lines (forward = true), "Name: value\n" each, in the
 * worker's scratch buffer; returns how many. */
static int forward_lines(lua_State *L, mg_coctx *cx, mg_buf *out) {
  if (!cx->req) luaL_error(L, "fetch: forward = true needs a request being served");
  const char *names[32];
  size_t lens[32];
  mg_forward_drop drop = { names, lens, 0 };
  if (lua_istable(L, OPT_AT(OPT_DROP))) {
    int n = (int)lua_objlen(L, OPT_AT(OPT_DROP));
    if (n > 32) luaL_error(L, "fetch: at most 32 names in drop");
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, OPT_AT(OPT_DROP), i);
      names[i - 1] = luaL_checklstring(L, -1, &lens[i - 1]);   /* kept alive by the table */
      lua_pop(L, 1);
    }
    drop.n = n;
  }
  /* The headers table's names replace (or, false, remove) the client's. */
  if (lua_istable(L, OPT_AT(OPT_HEADERS))) {
    lua_pushnil(L);
    while (lua_next(L, OPT_AT(OPT_HEADERS))) {
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING) continue;
      if (drop.n == 32) luaL_error(L, "fetch: at most 32 header names to replace");
      names[drop.n] = lua_tolstring(L, -1, &lens[drop.n]);      /* kept alive by the table */
      drop.n++;
    }
  }
  return mg_forward_request_lines(cx->req, &drop, out);
}

static long opt_ms(lua_State *L, int opt, long dflt) {
  return lua_isnumber(L, OPT_AT(opt)) ? (long)lua_tonumber(L, OPT_AT(opt)) : dflt;
}

/* Starts the transfer described by the options at FIRST_OPT.. (see OPT_AT). */
static int start_fetch(lua_State *L) {
  mg_coctx *cx = lua_getexdata(L);
  if (!cx || !cx->app->w) luaL_error(L, "fetch: not inside a request or timer");
  mg_worker *w = cx->app->w;   /* starting is fine anywhere; waiting is checked in park() */
  mg_fetch_spec spec;
  memset(&spec, 0, sizeof spec);
  spec.url = luaL_checklstring(L, OPT_AT(OPT_URL), &spec.url_len);
  if (strncmp(spec.url, "http://", 7) != 0 && strncmp(spec.url, "https://", 8) != 0)
    luaL_error(L, "fetch: url must start with http:// or https://");
  if (!lua_isnoneornil(L, OPT_AT(OPT_PATH))) {
    /* base .. path without a Lua string: the URL is only needed until
     * mg_fetch_start has copied what it uses. */
    size_t plen;
    const char *path = luaL_checklstring(L, OPT_AT(OPT_PATH), &plen);
    mg_buf *u = &w->urlbuf;
    u->len = 0;
    mg_buf_append(u, spec.url, spec.url_len);
    mg_buf_append(u, path, plen);
    mg_buf_append(u, "", 1);
    spec.url = u->data;
    spec.url_len = u->len - 1;
  }
  spec.method = luaL_optstring(L, OPT_AT(OPT_METHOD), "GET");
  if (lua_isstring(L, OPT_AT(OPT_BODY)))
    spec.body = lua_tolstring(L, OPT_AT(OPT_BODY), &spec.body_len);
  /* url, method and body are kept alive by their stack slots until
   * mg_fetch_start has copied them. */

  /* Headers, in this order: the forwarded ones (forward = true), the
   * table's list of "Name: value" lines, its name = value pairs, the trace
   * lines. Forwarded, pair and trace lines are made in the worker's scratch
   * buffer; pointers into it are taken once it has stopped growing. All is
   * checked before anything starts. */
  mg_fetch_line stack_lines[48], *lines = stack_lines;
  mg_buf *fwd = &w->fwdbuf;
  fwd->len = 0;
  int nfwd = 0, nlist = 0, nmade = 0;
  int forward = lua_toboolean(L, OPT_AT(OPT_FORWARD));
  if (forward) nfwd = forward_lines(L, cx, fwd);   /* trace's two lines among them, unless dropped */
  size_t fwd_end = fwd->len;
  int tbl = OPT_AT(OPT_HEADERS);
  if (lua_istable(L, tbl)) {
    nlist = (int)lua_objlen(L, tbl);
    nmade = pair_lines(L, tbl, forward, fwd);
  }
  if (lua_toboolean(L, OPT_AT(OPT_TRACE)) && !forward && cx->req) nmade += trace_lines(cx->req, fwd);
  int n = nfwd + nlist + nmade;
  if (n > (int)(sizeof stack_lines / sizeof *stack_lines))
    lines = lua_newuserdata(L, (size_t)n * sizeof *lines);   /* on the stack until the call ends */
  luaL_checkstack(L, nlist + 8, "fetch: too many headers");
  spec.nheaders += split_lines(fwd->data, fwd_end, lines + spec.nheaders);
  for (int i = 1; i <= nlist; i++) {
    lua_rawgeti(L, tbl, i);   /* left on the stack: keeps a converted number alive */
    size_t hl;
    const char *h = lua_tolstring(L, -1, &hl);
    if (!h || memchr(h, '\r', hl) || memchr(h, '\n', hl))
      luaL_error(L, "fetch: headers[%d] must be a \"Name: value\" string without CR/LF", i);
    lines[spec.nheaders].p = h;
    lines[spec.nheaders].len = hl;
    spec.nheaders++;
  }
  spec.nheaders += split_lines(fwd->data + fwd_end, fwd->len - fwd_end, lines + spec.nheaders);
  spec.headers = lines;
  spec.connect_timeout_ms = opt_ms(L, OPT_CONNECT_TIMEOUT, 5000);
  spec.timeout_ms = opt_ms(L, OPT_TIMEOUT, 60000);
  spec.read_timeout_ms = opt_ms(L, OPT_READ_TIMEOUT, 0);
  spec.verify_tls = !(lua_isboolean(L, OPT_AT(OPT_VERIFY)) && !lua_toboolean(L, OPT_AT(OPT_VERIFY)));

  char err[256];
  mg_fetch *f = mg_fetch_start(w, &spec, err, sizeof err);
  if (!f) {
    lua_pushnil(L);
    lua_pushliteral(L, "error");
    lua_pushstring(L, err);
    return 3;
  }
  fetch_ud *u = mg_lua_newudata(L, sizeof *u, &fetch_mt_key);
  u->f = f;
  u->head = (mg_buf){0};
  u->released = 0;
  f->lua_owned = 1;
  return 1;
}

/* core.fetch(opts): the options out of the table (by the names in the
 * upvalues: no name interned per call), onto the stack in OPT order. */
static int l_fetch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_checkstack(L, OPT_COUNT + 16, "fetch");
  for (int opt = 1; opt <= OPT_COUNT; opt++) {
    lua_pushvalue(L, lua_upvalueindex(opt));
    lua_rawget(L, 1);
  }
  return start_fetch(L);
}

/* core.fetch_args(url, path, method, body, forward, drop, headers, trace,
 * connect_timeout, timeout, read_timeout, verify): core.fetch with its
 * options as arguments, in that order (OPT order) -- no table to fill and
 * read back on every upstream attempt (up:request). */
static int l_fetch_args(lua_State *L) {
  lua_settop(L, OPT_COUNT);
  lua_pushnil(L);
  lua_insert(L, 1);              /* the options at FIRST_OPT.., as core.fetch has them */
  luaL_checkstack(L, 16, "fetch");
  return start_fetch(L);
}

static int push_failure(lua_State *L, mg_fetch *f) {
  lua_pushnil(L);
  lua_pushstring(L, f->error ? f->error : "error");
  lua_pushstring(L, f->errbuf[0] ? f->errbuf : "upstream request failed");
  return 3;
}

/* Parks the calling coroutine until the transfer has news for `what`.
 * `result` (or NULL) gives the call's results at the wake-up (see on_wake in
 * fetch.h): the same function the call tried first, so a method returns
 * the same things whether or not it waited. */
static int park(lua_State *L, mg_fetch *f, int what, int (*result)(lua_State *, mg_fetch *)) {
  mg_coctx *cx = mg_waitable(L, "fetch");
  if (f->waiter && f->waiter != cx) luaL_error(L, "fetch handle is already being waited on");
  f->waiter = cx;
  f->wait = what;
  f->on_wake = result;
  cx->waiting = MG_WAIT_FETCH;
  cx->fetch = f;
  return lua_yield(L, 0);
}

/* Pushes the response headers as { name = value } with lower-case names;
 * repeated headers are joined with ", " (set-cookie with "\n"). */
static void push_headers_filtered(lua_State *L, const mg_buf *head, const char *conn,
                                  size_t connlen, int keep_length) {
  const char *p = head->data ? head->data : "";
  const char *end = p + head->len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && (keep_length < 0 ||
                  mg_forward_response_keeps(p, (size_t)(colon - p), conn, connlen, keep_length))) {
      char name[128];
      size_t nl = (size_t)(colon - p);
      if (nl >= sizeof name) nl = sizeof name - 1;
      for (size_t i = 0; i < nl; i++) name[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]);
      const char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushlstring(L, name, nl);
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) {
        lua_pushstring(L, nl == 10 && memcmp(name, "set-cookie", 10) == 0 ? "\n" : ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = eol + 1;
  }
}

static void push_headers(lua_State *L, mg_fetch *f) {
  lua_newtable(L);
  push_headers_filtered(L, &f->head, NULL, 0, -1);
}

/* head(), status() and hold() results once there is news, or -1 (none yet). */
static int head_failure(lua_State *L, mg_fetch *f) {
  if (!f->error) {                   /* ended without a final head */
    f->error = "reset";
    snprintf(f->errbuf, sizeof f->errbuf, "no response head");
  }
  return push_failure(L, f);
}

static int head_result(lua_State *L, mg_fetch *f) {
  if (f->head_done) {
    lua_pushinteger(L, f->status);
    push_headers(L, f);
    return 2;
  }
  return f->done ? head_failure(L, f) : -1;
}

static int status_result(lua_State *L, mg_fetch *f) {
  if (f->head_done) {
    lua_pushinteger(L, f->status);
    return 1;
  }
  return f->done ? head_failure(L, f) : -1;
}

static int hold_result(lua_State *L, mg_fetch *f) {
  if (!f->done) return -1;
  if (f->error) return push_failure(L, f);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_head(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  int n = head_result(L, f);
  return n >= 0 ? n : park(L, f, MG_FETCH_WAIT_HEAD, head_result);
}

static int l_status(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  int n = status_result(L, f);
  return n >= 0 ? n : park(L, f, MG_FETCH_WAIT_HEAD, status_result);
}

static int l_headers(lua_State *L) {
  fetch_ud *u = mg_lua_checkudata(L, 1, &fetch_mt_key, FETCH_MT);
  if (u->released) luaL_error(L, "fetch handle used after release");
  if (u->f && !u->f->head_done) luaL_error(L, "headers: the response head has not arrived");
  lua_newtable(L);
  push_headers_filtered(L, u->f ? &u->f->head : &u->head, NULL, 0, -1);
  return 1;
}

static int l_relay_headers(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  if (!f->head_done) luaL_error(L, "relay_headers: the response head has not arrived");
  int keep_length = lua_toboolean(L, 2);
  const char *head = f->head.data ? f->head.data : "";
  size_t connlen = 0;
  const char *conn = mg_forward_find(head, f->head.len, "connection", 10, &connlen);
  lua_newtable(L);
  push_headers_filtered(L, &f->head, conn, connlen, keep_length);
  return 1;
}

static int l_read(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  size_t avail = f->body.len - f->body_off;
  if (avail > 0) {
    lua_pushlstring(L, f->body.data + f->body_off, avail);
    f->body.len = f->body_off = 0;
    mg_fetch_consumed(f);
    return 1;
  }
  if (f->done) {
    if (f->error) return push_failure(L, f);
    lua_pushboolean(L, 0);
    return 1;
  }
  return park(L, f, MG_FETCH_WAIT_BODY, NULL);   /* read() may hand over a part: asked again */
}

static int l_rest(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  if (!f->done || f->error) return 0;
  lua_pushlstring(L, f->body.data ? f->body.data + f->body_off : "", f->body.len - f->body_off);
  f->body.len = f->body_off = 0;
  return 1;
}

/* Holding keeps the whole answer in f->body, however long: the engine no
 * longer pauses at max_buffer (read_all in Lua buffers it all too, as
 * strings). Why hold: a Lua string of every answer is hashed and interned,
 * and LuaJIT hashes a long string by a few sampled bytes only -- answers
 * of one length that differ elsewhere (an id, a timestamp) all land in one
 * hash chain and every new one is compared with the others. */
static int l_hold(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  int n = hold_result(L, f);
  if (n >= 0) return n;
  f->max_buffer = (size_t)-1;
  mg_fetch_consumed(f);              /* a paused transfer goes on */
  return park(L, f, MG_FETCH_WAIT_DONE, hold_result);
}

const char *mg_lua_fetch_held(lua_State *L, int idx, size_t *len) {
  mg_fetch *f = mg_lua_check_fetch(L, idx);
  if (!f->done || f->error) luaL_error(L, "the fetched answer is not complete (hold() it first)");
  *len = f->body.len - f->body_off;
  return f->body.data ? f->body.data + f->body_off : "";
}

static int l_members(lua_State *L) {
  size_t n;
  const char *text = mg_lua_fetch_held(L, 1, &n);
  return mg_lua_push_json_members(L, text, n, 2);
}

static int l_complete(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  lua_pushboolean(L, f->done && !f->error);
  return 1;
}

static int l_info(lua_State *L) {
  mg_fetch *f = check_fetch(L);
  mg_fetch_info info;
  mg_fetch_get_info(f, &info);
  lua_createtable(L, 0, 5);
  lua_pushnumber(L, info.connect_ms);
  lua_setfield(L, -2, "connect_ms");
  lua_pushnumber(L, info.first_byte_ms);
  lua_setfield(L, -2, "first_byte_ms");
  lua_pushnumber(L, info.total_ms);
  lua_setfield(L, -2, "total_ms");
  lua_pushstring(L, info.ip);
  lua_setfield(L, -2, "ip");
  lua_pushboolean(L, info.reused);
  lua_setfield(L, -2, "reused");
  return 1;
}

static int l_close(lua_State *L) {
  fetch_ud *u = mg_lua_checkudata(L, 1, &fetch_mt_key, FETCH_MT);
  if (u->f) {
    mg_fetch *f = u->f;
    u->f = NULL;
    if (f->head_done) {                /* kept for headers() */
      u->head = f->head;
      f->head = (mg_buf){0};
    }
    f->lua_owned = 0;
    mg_fetch_cancel(f);
  }
  return 0;
}

static int l_gc(lua_State *L) {
  l_close(L);
  fetch_ud *u = mg_lua_checkudata(L, 1, &fetch_mt_key, FETCH_MT);
  mg_buf_free(&u->head);
  return 0;
}

/* h:release(): close() and free the kept head; the handle is of no more
 * use. With nothing left to free, it gets a metatable without __gc: the
 * collector then has no finalizer to call for it -- ~600 instructions per
 * proxied request, whose handle the runtime releases at the request's end. */
static int l_release(lua_State *L) {
  l_gc(L);
  fetch_ud *u = mg_lua_checkudata(L, 1, &fetch_mt_key, FETCH_MT);
  u->released = 1;
  lua_pushlightuserdata(L, (void *)&released_mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, 1);
  return 0;
}

void mg_lua_open_fetch(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"head", l_head}, {"status", l_status}, {"relay_headers", l_relay_headers},
    {"read", l_read}, {"rest", l_rest}, {"info", l_info},
    {"hold", l_hold}, {"members", l_members}, {"headers", l_headers},
    {"complete", l_complete},
    {"close", l_close}, {"release", l_release}, {NULL, NULL}};
  mg_lua_newmetatable(L, &fetch_mt_key, FETCH_MT);
  lua_newtable(L);
  luaL_register(L, NULL, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -3, "__gc");
  mg_lua_newmetatable(L, &released_mt_key, FETCH_MT " (released)");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 3);
  for (int i = 0; i < OPT_COUNT; i++) lua_pushstring(L, opt_names[i]);
  lua_pushcclosure(L, l_fetch, OPT_COUNT);
  lua_setfield(L, -2, "fetch");   /* into the core table on the stack */
  lua_pushcfunction(L, l_fetch_args);
  lua_setfield(L, -2, "fetch_args");
}
