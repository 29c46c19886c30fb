/* Redis for Lua: hiredis's async API on the worker's libuv loop, a small pool
 * of connections per application generation, command timeouts of our own
 * (hiredis 0.14 has none) and reconnection with backoff.
 *
 *   core.redis(argv)           -> value | nil (nil reply) | nil, err
 *   core.redis_pipeline(list)  -> { value-or-null, ... } | nil, err
 * Values: integers and strings as Lua values, arrays as tables (a nil
 * element is core.null == cjson.null), status replies as strings; an error reply is
 * nil, "<message>" (in a pipeline: { err = "<message>" }).
 *
 * Replies are written onto the waiting coroutine's stack in the hiredis
 * callback; the resume itself happens on the next loop turn (uv_idle), never
 * inside hiredis, so Lua may freely send more commands or drop the pool.
 *
 * hiredis is driven by an event adapter of our own (redis_io below) rather
 * than hiredis's libuv one: commands queued during a loop turn are written
 * once, from the worker's prepare phase (mg_redis_flush, like upstream
 * requests), and the socket is watched for writability only when the kernel
 * would not take everything. hiredis's libuv adapter re-armed its poll
 * handle around every write (on the AI relay: an epoll_ctl per request,
 * nearly all failing with EEXIST) and spent a loop turn learning that the
 * socket was writable. */
#include "moongate/app.h"
#include "moongate/log.h"
#include "moongate/lua_api.h"
#include "moongate/worker.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <lua.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_MAX_POOL 64
#define RECONNECT_BACKOFF_MS 250

/* core.null, a nil inside an array: lightuserdata NULL, the same value as
 * cjson.null, so it encodes to JSON null. */
#define NULL_VALUE NULL

typedef struct rconn {
  redisAsyncContext *ac;
  int connected;
  struct mg_redis *pool;
} rconn;

/* The event side of one hiredis connection: its poll handle and whether it
 * has output waiting for mg_redis_flush. Owned by hiredis's context (freed
 * through the cleanup hook when hiredis lets the connection go). */
typedef struct redis_io {
  uv_poll_t poll;
  redisAsyncContext *ac;
  mg_worker *w;
  int events;                      /* UV_READABLE / UV_WRITABLE being watched */
  int in_write;                    /* inside redisAsyncHandleWrite */
  int queued;                      /* on w->redis_dirty */
  struct redis_io *next_dirty;
} redis_io;

typedef struct mg_redis {
  mg_app *app;
  rconn conns[REDIS_MAX_POOL];
  int n, next;
  uint64_t last_failure;
  uv_idle_t idle;
  struct pending *ready;            /* replies waiting for their resume */
  mg_buf resp;                      /* scratch: the command being formatted */
} mg_redis;

typedef struct pending {
  mg_redis *pool;
  mg_coctx *cx;
  uint32_t serial;                  /* the coroutine's use this was for */
  int expected, got, nresults;      /* replies expected (pipeline) */
  int done, abandoned;
  uv_timer_t timer;
  int timer_on;
  struct pending *next_ready;
} pending;

static void push_reply(lua_State *co, redisReply *r, int nested) {
  switch (r->type) {
    case REDIS_REPLY_STRING: case REDIS_REPLY_STATUS:
      lua_pushlstring(co, r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      lua_pushnumber(co, (lua_Number)r->integer);
      break;
    case REDIS_REPLY_NIL:
      if (nested) lua_pushlightuserdata(co, NULL_VALUE);
      else lua_pushnil(co);
      break;
    case REDIS_REPLY_ARRAY:
      lua_createtable(co, (int)r->elements, 0);
      for (size_t i = 0; i < r->elements; i++) {
        push_reply(co, r->element[i], 1);
        lua_rawseti(co, -2, (int)i + 1);
      }
      break;
    case REDIS_REPLY_ERROR:
      if (nested) {
        lua_createtable(co, 0, 1);
        lua_pushlstring(co, r->str, r->len);
        lua_setfield(co, -2, "err");
      } else {
        lua_pushnil(co);
        lua_pushlstring(co, r->str, r->len);
      }
      break;
    default:
      lua_pushnil(co);
  }
}

/* ---- the event adapter ---------------------------------------------------- */

static void io_poll_cb(uv_poll_t *h, int status, int events) {
  redis_io *io = h->data;
  redisAsyncContext *ac = io->ac;
  if (status < 0) events = io->events;   /* let hiredis find the error */
  if (events & UV_WRITABLE) {
    io->in_write = 1;
    redisAsyncHandleWrite(ac);           /* may free ac: io_cleanup clears io->ac */
    if (io->ac) io->in_write = 0;
    else return;
  }
  if ((events & UV_READABLE) && io->ac) redisAsyncHandleRead(ac);
}

static void io_start(redis_io *io, int events) {
  if (events == io->events) return;
  io->events = events;
  if (events) uv_poll_start(&io->poll, events, io_poll_cb);
  else uv_poll_stop(&io->poll);
}

static void io_add_read(void *d) { redis_io *io = d; io_start(io, io->events | UV_READABLE); }
static void io_del_read(void *d) { redis_io *io = d; io_start(io, io->events & ~UV_READABLE); }
static void io_del_write(void *d) { redis_io *io = d; io_start(io, io->events & ~UV_WRITABLE); }

/* hiredis has output. A connected socket is written in the prepare phase;
 * while connecting, or when a write left data behind, wait for writability. */
static void io_add_write(void *d) {
  redis_io *io = d;
  if (!(io->ac->c.flags & REDIS_CONNECTED) || io->in_write) {
    io_start(io, io->events | UV_WRITABLE);
    return;
  }
  if (io->queued) return;
  io->queued = 1;
  io->next_dirty = io->w->redis_dirty;
  io->w->redis_dirty = io;
}

static void io_closed(uv_handle_t *h) { free(h->data); }

static void io_cleanup(void *d) {
  redis_io *io = d;
  io->ac = NULL;
  if (io->queued) {                      /* off the flush list */
    redis_io **pp = &io->w->redis_dirty;
    while (*pp && *pp != io) pp = &(*pp)->next_dirty;
    if (*pp) *pp = io->next_dirty;
    io->queued = 0;
  }
  uv_close((uv_handle_t *)&io->poll, io_closed);
}

static int io_attach(redisAsyncContext *ac, mg_worker *w) {
  redis_io *io = mg_xcalloc(1, sizeof *io);
  if (uv_poll_init_socket(&w->loop, &io->poll, ac->c.fd) != 0) { free(io); return -1; }
  io->poll.data = io;
  io->ac = ac;
  io->w = w;
  ac->ev.data = io;
  ac->ev.addRead = io_add_read;
  ac->ev.delRead = io_del_read;
  ac->ev.addWrite = io_add_write;
  ac->ev.delWrite = io_del_write;
  ac->ev.cleanup = io_cleanup;
  return 0;
}

int mg_redis_flush(mg_worker *w) {
  int n = 0;
  while (w->redis_dirty) {
    n++;
    redis_io *io = w->redis_dirty;
    w->redis_dirty = io->next_dirty;
    io->queued = 0;
    io->in_write = 1;
    redisAsyncHandleWrite(io->ac);       /* may free ac: io_cleanup clears io->ac */
    if (io->ac) io->in_write = 0;
  }
  return n;
}

static void idle_cb(uv_idle_t *h);

static void timer_closed(uv_handle_t *h) { free(h->data); }

static void release(pending *p) {
  if (p->timer_on) {
    p->timer_on = 0;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, timer_closed);   /* frees p */
  } else {
    free(p);
  }
}

/* The coroutine gets its values on the next loop turn. */
static void schedule(pending *p) {
  mg_redis *pool = p->pool;
  p->done = 1;
  p->next_ready = pool->ready;
  pool->ready = p;
  if (!uv_is_active((uv_handle_t *)&pool->idle)) uv_idle_start(&pool->idle, idle_cb);
}

static void fail_pending(pending *p, const char *err) {
  lua_State *co = p->cx->co;
  lua_settop(co, 0);
  lua_pushnil(co);
  lua_pushstring(co, err);
  p->nresults = 2;
  schedule(p);
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata) {
  pending *p = privdata;
  redisReply *r = reply;
  p->got++;
  if (p->abandoned || p->done) {     /* timed out, or an earlier reply failed */
    if (p->got == p->expected && p->abandoned) release(p);
    return;
  }
  if (!r) { fail_pending(p, ac->errstr[0] ? ac->errstr : "connection lost"); return; }
  lua_State *co = p->cx->co;
  if (p->expected == 1) {
    push_reply(co, r, 0);
    p->nresults = lua_gettop(co);
  } else {
    if (lua_gettop(co) == 0) lua_createtable(co, p->expected, 0);   /* the results */
    push_reply(co, r, 1);
    lua_rawseti(co, 1, p->got);
    p->nresults = 1;
  }
  if (p->got == p->expected) schedule(p);
}

static void timeout_cb(uv_timer_t *t) {
  pending *p = t->data;
  if (p->done) return;
  p->abandoned = 1;                  /* hiredis still owns p until its replies come */
  fail_pending(p, "timeout");
}

static void idle_cb(uv_idle_t *h) {
  mg_redis *pool = h->data;
  uv_idle_stop(h);
  while (pool->ready) {
    pending *p = pool->ready;
    pool->ready = p->next_ready;
    mg_coctx *cx = p->cx;
    int n = p->nresults;
    int ok = cx->serial == p->serial && cx->waiting == MG_WAIT_REDIS;
    if (!p->abandoned) {
      if (p->timer_on) { p->timer_on = 0; uv_timer_stop(&p->timer); uv_close((uv_handle_t *)&p->timer, timer_closed); }
      else free(p);
    }
    if (!ok) continue;
    cx->waiting = MG_WAIT_NONE;
    mg_coctx_resume(cx, n);
  }
}

static void connect_cb(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (status != REDIS_OK) {
    mg_log(MG_LOG_WARN, NULL, "redis: connect failed: %s", ac->errstr);
    c->ac = NULL;                    /* hiredis frees the context itself */
    c->connected = 0;
    c->pool->last_failure = uv_now(&c->pool->app->w->loop);
    return;
  }
  c->connected = 1;
}

static void disconnect_cb(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (!c) return;
  if (status != REDIS_OK) {
    mg_log(MG_LOG_WARN, NULL, "redis: connection lost: %s", ac->errstr);
    c->pool->last_failure = uv_now(&c->pool->app->w->loop);
  }
  c->ac = NULL;
  c->connected = 0;
}

static void setup_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  redisReply *r = reply;
  if (r && r->type == REDIS_REPLY_ERROR)
    mg_log(MG_LOG_ERROR, NULL, "redis: %s failed: %s", (const char *)privdata, r->str);
}

static rconn *pick(mg_redis *pool, const char **err) {
  const mg_settings *s = &pool->app->settings;
  for (int i = 0; i < pool->n; i++) {       /* a live connection, round-robin */
    rconn *c = &pool->conns[(pool->next + i) % pool->n];
    if (c->ac) { pool->next = (pool->next + i + 1) % pool->n; return c; }
  }
  uint64_t now = uv_now(&pool->app->w->loop);
  if (pool->last_failure && now - pool->last_failure < RECONNECT_BACKOFF_MS) {
    *err = "redis unavailable";      /* fail fast while the server is down */
    return NULL;
  }
  rconn *c = &pool->conns[pool->next];
  pool->next = (pool->next + 1) % pool->n;
  c->pool = pool;
  c->ac = redisAsyncConnect(s->redis_host, s->redis_port);
  if (!c->ac || c->ac->err) {
    *err = c->ac && c->ac->errstr[0] ? c->ac->errstr : "redis connect failed";
    if (c->ac) redisAsyncFree(c->ac);
    c->ac = NULL;
    pool->last_failure = now;
    return NULL;
  }
  c->ac->data = c;
  if (io_attach(c->ac, pool->app->w) != 0) {
    redisAsyncFree(c->ac);
    c->ac = NULL;
    *err = "redis: cannot watch the socket";
    pool->last_failure = now;
    return NULL;
  }
  redisAsyncSetConnectCallback(c->ac, connect_cb);
  redisAsyncSetDisconnectCallback(c->ac, disconnect_cb);
  /* Queued before any user command: hiredis sends in order. */
  if (s->redis_password[0]) {
    const char *argv[] = {"AUTH", s->redis_password};
    redisAsyncCommandArgv(c->ac, setup_reply, "AUTH", 2, argv, NULL);
  }
  if (s->redis_db) {
    char db[16];
    snprintf(db, sizeof db, "%d", s->redis_db);
    const char *argv[] = {"SELECT", db};
    redisAsyncCommandArgv(c->ac, setup_reply, "SELECT", 2, argv, NULL);
  }
  return c;
}

static mg_redis *get_pool(lua_State *L, mg_coctx *cx) {
  mg_app *app = cx->app;
  if (!app->settings.redis_host[0]) luaL_error(L, "redis: no redis configured (config field redis.url)");
  if (!app->redis) {
    mg_redis *pool = mg_xcalloc(1, sizeof *pool);
    pool->app = app;
    pool->n = app->settings.redis_pool < 1 ? 1 : app->settings.redis_pool > REDIS_MAX_POOL ? REDIS_MAX_POOL : app->settings.redis_pool;
    uv_idle_init(&app->w->loop, &pool->idle);
    pool->idle.data = pool;
    app->redis = pool;
  }
  return app->redis;
}

/* RESP for one command, written by hand into `out`: hiredis's own
 * formatting (redisFormatSdsCommandArgv, through sdscatfmt) cost more
 * than the rest of a Redis call on the AI relay's path. */
static void append_resp_len(mg_buf *out, char kind, size_t n) {
  mg_buf_append(out, &kind, 1);
  mg_buf_append_uint(out, n);
  mg_buf_append(out, "\r\n", 2);
}

static void format_command(mg_buf *out, int argc, const char **argv, const size_t *lens) {
  out->len = 0;
  append_resp_len(out, '*', (size_t)argc);
  for (int j = 0; j < argc; j++) {
    append_resp_len(out, '$', lens[j]);
    mg_buf_append(out, argv[j], lens[j]);
    mg_buf_append(out, "\r\n", 2);
  }
}

/* Sends `count` commands (each a table of strings) and parks. */
static int send_commands(lua_State *L, int list_idx, int count) {
  mg_coctx *cx = mg_waitable(L, "redis");
  mg_redis *pool = get_pool(L, cx);
  const char *err = NULL;
  rconn *c = pick(pool, &err);
  if (!c) { lua_pushnil(L); lua_pushstring(L, err); return 2; }
  pending *p = mg_xcalloc(1, sizeof *p);
  p->pool = pool;
  p->cx = cx;
  p->serial = cx->serial;
  p->expected = count;
  /* argv of every command, checked before anything is sent. */
  for (int i = 1; i <= count; i++) {
    lua_rawgeti(L, list_idx, i);
    if (!lua_istable(L, -1)) { free(p); luaL_error(L, "redis: command %d must be a table of strings", i); }
    int argc = (int)lua_objlen(L, -1);
    if (argc < 1 || argc > 1024) { free(p); luaL_error(L, "redis: command %d is empty", i); }
    const char *argv[1024];
    size_t lens[1024];
    for (int j = 1; j <= argc; j++) {
      lua_rawgeti(L, -1, j);
      argv[j - 1] = lua_tolstring(L, -1, &lens[j - 1]);
      if (!argv[j - 1]) { free(p); luaL_error(L, "redis: command %d, argument %d: expected a string or number", i, j); }
      lua_pop(L, 1);
    }
    /* lua_tolstring converted numbers in place, so the strings stay alive
     * in the table until the command is formatted; hiredis copies the
     * formatted command into its output buffer right here. */
    format_command(&pool->resp, argc, argv, lens);
    redisAsyncFormattedCommand(c->ac, reply_cb, p, pool->resp.data, pool->resp.len);
    lua_pop(L, 1);
  }
  uint64_t tmo = pool->app->settings.redis_timeout_ms;
  if (tmo) {
    uv_timer_init(&pool->app->w->loop, &p->timer);
    p->timer.data = p;
    p->timer_on = 1;
    uv_timer_start(&p->timer, timeout_cb, tmo, 0);
  }
  cx->waiting = MG_WAIT_REDIS;
  return lua_yield(L, 0);
}

static int l_redis(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  return send_commands(L, lua_gettop(L), 1);
}

static int l_redis_pipeline(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  if (n < 1) luaL_error(L, "redis_pipeline: expected a list of commands");
  return send_commands(L, 1, n);
}

void mg_redis_free(mg_redis *pool) {
  if (!pool) return;
  for (int i = 0; i < pool->n; i++) {
    rconn *c = &pool->conns[i];
    if (c->ac) {
      redisAsyncContext *ac = c->ac;
      ac->data = NULL;               /* disconnect_cb: nothing to update */
      c->ac = NULL;
      redisAsyncFree(ac);            /* pending callbacks get NULL replies */
    }
  }
  /* Commands cut short above, and answers not yet delivered: their
   * coroutines go with the app. */
  while (pool->ready) {
    pending *p = pool->ready;
    pool->ready = p->next_ready;
    if (!p->abandoned) release(p);
  }
  mg_buf_free(&pool->resp);
  uv_close((uv_handle_t *)&pool->idle, timer_closed);
}

void mg_lua_open_redis(lua_State *L) {
  lua_pushcfunction(L, l_redis);
  lua_setfield(L, -2, "redis");
  lua_pushcfunction(L, l_redis_pipeline);
  lua_setfield(L, -2, "redis_pipeline");
  lua_pushlightuserdata(L, NULL_VALUE);
  lua_setfield(L, -2, "null");
}
