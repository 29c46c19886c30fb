/* PostgreSQL for Lua: libpq's asynchronous API on the worker's libuv loop,
 * a pool of connections per application generation.
 *
 *   core.pg_query(sql, params, pinned) -> result | nil, message, sqlstate
 *       result = { columns = {...}, types = {...oids}, rows = {{...}, ...},
 *                  affected = n }   values are strings, NULL is core.null;
 *       lua/moongate/postgres.lua converts them by type.
 *   core.pg_query(sql, params, nil, true) also pins the connection it ran on
 *       (for a transaction) and sets result.conn; later queries pass that id;
 *   core.pg_unpin(id) gives it back.
 *   nil, "retry" means "a connection may be free now: call again" (the Lua
 *   side loops on it).
 *
 * Waiting for a free connection is bounded (wait_timeout); a query is bounded
 * by the server's statement_timeout (set on connect) and by our own timer,
 * which drops the connection if the server does not answer. Lost connections
 * are reopened on next use, with backoff. libpq resolves host names when it
 * connects: use IP addresses or localhost. */
#include "moongate/app.h"
#include "moongate/log.h"
#include "moongate/lua_api.h"
#include "moongate/worker.h"

#include <libpq-fe.h>
#include <lua.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_MAX_POOL 64
#define RECONNECT_BACKOFF_MS 250

enum { PC_DEAD, PC_CONNECTING, PC_IDLE, PC_BUSY };

typedef struct pgconn {
  struct mg_pg *pool;
  int index;
  PGconn *pg;
  uv_poll_t *poll;
  int sock;
  int state;
  int pinned;                  /* held by a transaction between queries */
  int pin_after;               /* pin once the running query succeeds */
  mg_coctx *waiter;            /* the coroutine whose query runs here */
  uint32_t serial;
  uv_timer_t *timer;           /* query deadline */
  PGresult *result;            /* the result to hand over */
} pgconn;

typedef struct waiting {
  mg_coctx *cx;
  uint32_t serial;
  struct waiting *next;
  uint64_t deadline;
} waiting;

typedef struct mg_pg {
  mg_app *app;
  pgconn conns[PG_MAX_POOL];
  int n;
  uint64_t last_failure;
  waiting *queue, *queue_tail;
  uv_timer_t queue_timer;
} mg_pg;

static void poll_cb(uv_poll_t *p, int status, int events);
static void dispatch_queue(mg_pg *pool);

static void handle_closed(uv_handle_t *h) { free(h); }
static void pool_closed(uv_handle_t *h) { free(h->data); }

static void watch(pgconn *c, int events) {
  int sock = PQsocket(c->pg);
  if (c->poll && c->sock != sock) {           /* libpq may switch sockets while connecting */
    uv_close((uv_handle_t *)c->poll, handle_closed);
    c->poll = NULL;
  }
  if (!c->poll) {
    c->poll = mg_xmalloc(sizeof *c->poll);
    uv_poll_init_socket(&c->pool->app->w->loop, c->poll, sock);
    c->poll->data = c;
    c->sock = sock;
  }
  uv_poll_start(c->poll, events, poll_cb);
}

static void drop(pgconn *c, const char *why) {
  if (why) mg_log(MG_LOG_WARN, NULL, "postgres: connection %d closed: %s", c->index, why);
  if (c->poll) { uv_close((uv_handle_t *)c->poll, handle_closed); c->poll = NULL; }
  if (c->timer) { uv_close((uv_handle_t *)c->timer, handle_closed); c->timer = NULL; }
  if (c->pg) { PQfinish(c->pg); c->pg = NULL; }
  if (c->result) { PQclear(c->result); c->result = NULL; }
  c->state = PC_DEAD;
  c->pinned = 0;
  c->pool->last_failure = uv_now(&c->pool->app->w->loop);
}

/* Hands the outcome to the waiting coroutine: nresults values on its stack. */
static void resume_waiter(pgconn *c, int nresults) {
  mg_coctx *cx = c->waiter;
  c->waiter = NULL;
  if (c->timer) uv_timer_stop(c->timer);
  if (!cx || cx->serial != c->serial || cx->waiting != MG_WAIT_PG) return;
  cx->waiting = MG_WAIT_NONE;
  mg_coctx_resume(cx, nresults);
}

static void fail_waiter(pgconn *c, const char *msg, const char *state) {
  if (!c->waiter) return;
  lua_State *co = c->waiter->co;
  lua_settop(co, 0);
  lua_pushnil(co);
  lua_pushstring(co, msg);
  if (state) lua_pushstring(co, state); else lua_pushnil(co);
  resume_waiter(c, 3);
}

static void push_result(lua_State *co, PGresult *r) {
  int nf = PQnfields(r), nt = PQntuples(r);
  lua_createtable(co, 0, 4);
  lua_createtable(co, nf, 0);
  lua_createtable(co, nf, 0);
  for (int j = 0; j < nf; j++) {
    lua_pushstring(co, PQfname(r, j));
    lua_rawseti(co, -3, j + 1);
    lua_pushnumber(co, (lua_Number)PQftype(r, j));
    lua_rawseti(co, -2, j + 1);
  }
  lua_setfield(co, -3, "types");
  lua_setfield(co, -2, "columns");
  lua_createtable(co, nt, 0);
  for (int i = 0; i < nt; i++) {
    lua_createtable(co, nf, 0);
    for (int j = 0; j < nf; j++) {
      if (PQgetisnull(r, i, j)) lua_pushlightuserdata(co, NULL);
      else lua_pushlstring(co, PQgetvalue(r, i, j), (size_t)PQgetlength(r, i, j));
      lua_rawseti(co, -2, j + 1);
    }
    lua_rawseti(co, -2, i + 1);
  }
  lua_setfield(co, -2, "rows");
  const char *aff = PQcmdTuples(r);
  lua_pushnumber(co, aff && *aff ? atof(aff) : 0);
  lua_setfield(co, -2, "affected");
}

static void finish_query(pgconn *c) {
  PGresult *r = c->result;
  c->result = NULL;
  c->state = PC_IDLE;
  if (c->poll) uv_poll_start(c->poll, UV_READABLE, poll_cb);   /* notice a server close */
  if (c->waiter) {
    lua_State *co = c->waiter->co;
    lua_settop(co, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
      push_result(co, r);
      if (c->pin_after) {
        c->pinned = 1;
        lua_pushinteger(co, c->index);
        lua_setfield(co, -2, "conn");
      }
      c->pin_after = 0;
      PQclear(r);
      resume_waiter(c, 1);
    } else {
      char msg[1024];
      const char *m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
      snprintf(msg, sizeof msg, "%s", m ? m : PQerrorMessage(c->pg));
      char state[8] = "";
      const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
      if (s) snprintf(state, sizeof state, "%s", s);
      if (r) PQclear(r);
      c->pin_after = 0;
      fail_waiter(c, msg, state[0] ? state : NULL);
    }
  } else if (r) {
    PQclear(r);
  }
  if (!c->pinned) dispatch_queue(c->pool);
}

static void poll_cb(uv_poll_t *p, int status, int events) {
  pgconn *c = p->data;
  if (c->state == PC_CONNECTING) {
    PostgresPollingStatusType ps = PQconnectPoll(c->pg);
    if (ps == PGRES_POLLING_READING) { watch(c, UV_READABLE); return; }
    if (ps == PGRES_POLLING_WRITING) { watch(c, UV_WRITABLE); return; }
    if (ps == PGRES_POLLING_FAILED) {
      char msg[512];
      snprintf(msg, sizeof msg, "database unavailable: %s", PQerrorMessage(c->pg));
      for (char *q = msg; *q; q++) if (*q == '\n') *q = ' ';
      fail_waiter(c, msg, "08001");
      drop(c, msg);
      dispatch_queue(c->pool);
      return;
    }
    /* Connected: the coroutine that opened it retries its query here. */
    PQsetnonblocking(c->pg, 1);
    c->state = PC_IDLE;
    if (c->timer) uv_timer_stop(c->timer);
    watch(c, UV_READABLE);
    if (c->waiter) {
      lua_State *co = c->waiter->co;
      lua_settop(co, 0);
      lua_pushnil(co);
      lua_pushliteral(co, "retry");
      resume_waiter(c, 2);
    }
    dispatch_queue(c->pool);
    return;
  }
  if (c->state == PC_BUSY) {
    if (events & UV_WRITABLE) {
      int f = PQflush(c->pg);
      if (f < 0) { fail_waiter(c, PQerrorMessage(c->pg), NULL); drop(c, "write failed"); return; }
      if (f == 0) watch(c, UV_READABLE);
    }
    if (!PQconsumeInput(c->pg)) {
      fail_waiter(c, "connection to the database lost", "08006");
      drop(c, "read failed");
      dispatch_queue(c->pool);
      return;
    }
    while (!PQisBusy(c->pg)) {
      PGresult *r = PQgetResult(c->pg);
      if (!r) { finish_query(c); return; }
      /* Keep the last result, or the first error. */
      if (c->result && PQresultStatus(c->result) == PGRES_FATAL_ERROR) PQclear(r);
      else { if (c->result) PQclear(c->result); c->result = r; }
    }
    return;
  }
  /* Idle: the only news can be a closed connection. */
  if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD) drop(c, "server closed it");
}

static void query_timeout(uv_timer_t *t) {
  pgconn *c = t->data;
  if (c->state != PC_BUSY && c->state != PC_CONNECTING) return;
  fail_waiter(c, "timeout", "57014");
  drop(c, "query timed out");
  dispatch_queue(c->pool);
}

/* ---- the pool ---------------------------------------------------------- */

static int start_connect(pgconn *c) {
  const mg_settings *s = &c->pool->app->settings;
  /* The DSN is expanded as dbname; statement_timeout rides along. */
  const char *keys[] = {"dbname", "options", NULL};
  char opts[64];
  snprintf(opts, sizeof opts, "-c statement_timeout=%llu", (unsigned long long)s->pg_timeout_ms);
  const char *vals[] = {s->pg_dsn, opts, NULL};
  c->pg = PQconnectStartParams(keys, vals, 1);   /* expand_dbname: the DSN */
  if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
    if (c->pg) { PQfinish(c->pg); c->pg = NULL; }
    c->pool->last_failure = uv_now(&c->pool->app->w->loop);
    return -1;
  }
  c->state = PC_CONNECTING;
  watch(c, UV_WRITABLE);
  if (!c->timer) {
    c->timer = mg_xmalloc(sizeof *c->timer);
    uv_timer_init(&c->pool->app->w->loop, c->timer);
    c->timer->data = c;
  }
  uv_timer_start(c->timer, query_timeout, s->pg_timeout_ms, 0);   /* connect bound */
  return 0;
}

static void query_timeout(uv_timer_t *t);

static int send_query(lua_State *L, pgconn *c, mg_coctx *cx, int sql_idx, int params_idx) {
  const char *sql = lua_tostring(L, sql_idx);
  int n = lua_istable(L, params_idx) ? (int)lua_objlen(L, params_idx) : 0;
  if (n > 256) luaL_error(L, "postgres: at most 256 parameters");
  const char *values[256];
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, params_idx, i + 1);
    if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1)) values[i] = NULL;  /* null */
    else if (lua_isboolean(L, -1)) values[i] = lua_toboolean(L, -1) ? "t" : "f";
    else {
      values[i] = lua_tostring(L, -1);
      if (!values[i]) luaL_error(L, "postgres: parameter $%d must be a string, number, boolean or null", i + 1);
    }
    lua_pop(L, 1);                          /* the string stays alive in the table */
  }
  c->waiter = cx;
  c->serial = cx->serial;
  c->pin_after = lua_toboolean(L, 4);
  if (!PQsendQueryParams(c->pg, sql, n, NULL, values, NULL, NULL, 0)) {
    c->waiter = NULL;
    lua_pushnil(L);
    lua_pushstring(L, PQerrorMessage(c->pg));
    drop(c, "send failed");
    return 2;
  }
  c->state = PC_BUSY;
  watch(c, UV_READABLE | UV_WRITABLE);
  if (!c->timer) {
    c->timer = mg_xmalloc(sizeof *c->timer);
    uv_timer_init(&c->pool->app->w->loop, c->timer);
    c->timer->data = c;
  }
  /* Our bound is the statement timeout plus a grace for the server's answer. */
  uv_timer_start(c->timer, query_timeout, c->pool->app->settings.pg_timeout_ms + 1000, 0);
  cx->waiting = MG_WAIT_PG;
  return -1;
}

static mg_pg *get_pool(lua_State *L, mg_coctx *cx) {
  mg_app *app = cx->app;
  if (!app->settings.pg_dsn[0]) luaL_error(L, "postgres: no database configured (config field postgres.dsn)");
  if (!app->pg) {
    mg_pg *pool = mg_xcalloc(1, sizeof *pool);
    pool->app = app;
    pool->n = app->settings.pg_pool < 1 ? 1 : app->settings.pg_pool > PG_MAX_POOL ? PG_MAX_POOL : app->settings.pg_pool;
    for (int i = 0; i < pool->n; i++) { pool->conns[i].pool = pool; pool->conns[i].index = i; }
    uv_timer_init(&app->w->loop, &pool->queue_timer);
    pool->queue_timer.data = pool;
    app->pg = pool;
  }
  return app->pg;
}

/* Finds a connection for a new query: an idle one, or a fresh one. */
static pgconn *acquire(mg_pg *pool, int *connecting_failed) {
  for (int i = 0; i < pool->n; i++)
    if (pool->conns[i].state == PC_IDLE && !pool->conns[i].pinned) return &pool->conns[i];
  uint64_t now = uv_now(&pool->app->w->loop);
  for (int i = 0; i < pool->n; i++) {
    pgconn *c = &pool->conns[i];
    if (c->state != PC_DEAD) continue;
    if (pool->last_failure && now - pool->last_failure < RECONNECT_BACKOFF_MS) {
      *connecting_failed = 1;
      return NULL;
    }
    if (start_connect(c) != 0) { *connecting_failed = 1; return NULL; }
    return c;
  }
  return NULL;                               /* all busy: wait in the queue */
}

/* Wakes queued coroutines: they retry acquiring (Lua loops on "retry"). */
static void dispatch_queue(mg_pg *pool) {
  while (pool->queue) {
    int have = 0;
    for (int i = 0; i < pool->n; i++)
      if ((pool->conns[i].state == PC_IDLE || pool->conns[i].state == PC_DEAD) && !pool->conns[i].pinned) have = 1;
    if (!have) return;
    waiting *wt = pool->queue;
    pool->queue = wt->next;
    if (!pool->queue) pool->queue_tail = NULL;
    mg_coctx *cx = wt->cx;
    int ok = cx->serial == wt->serial && cx->waiting == MG_WAIT_PG;
    free(wt);
    if (!ok) continue;
    cx->waiting = MG_WAIT_NONE;
    lua_settop(cx->co, 0);
    lua_pushnil(cx->co);
    lua_pushliteral(cx->co, "retry");
    mg_coctx_resume(cx, 2);
  }
}

static void queue_timeout(uv_timer_t *t) {
  mg_pg *pool = t->data;
  uint64_t now = uv_now(&pool->app->w->loop);
  waiting **pp = &pool->queue, *last = NULL;
  while (*pp) {
    waiting *wt = *pp;
    if (wt->deadline <= now) {
      *pp = wt->next;
      mg_coctx *cx = wt->cx;
      int ok = cx->serial == wt->serial && cx->waiting == MG_WAIT_PG;
      free(wt);
      if (ok) {
        cx->waiting = MG_WAIT_NONE;
        lua_settop(cx->co, 0);
        lua_pushnil(cx->co);
        lua_pushliteral(cx->co, "timeout waiting for a database connection");
        mg_coctx_resume(cx, 2);
      }
      continue;
    }
    last = wt;
    pp = &wt->next;
  }
  pool->queue_tail = last;
  if (pool->queue) uv_timer_start(&pool->queue_timer, queue_timeout, 50, 0);
}

/* core.pg_query(sql, params [, pinned_id]) */
static int l_pg_query(lua_State *L) {
  luaL_checkstring(L, 1);
  mg_coctx *cx = mg_waitable(L, "postgres");
  mg_pg *pool = get_pool(L, cx);
  pgconn *c;
  if (!lua_isnoneornil(L, 3)) {
    int id = (int)luaL_checkinteger(L, 3);
    if (id < 0 || id >= pool->n || !pool->conns[id].pinned) luaL_error(L, "postgres: transaction connection is gone");
    c = &pool->conns[id];
    if (c->state != PC_IDLE) { lua_pushnil(L); lua_pushliteral(L, "connection to the database lost"); lua_pushliteral(L, "08006"); return 3; }
  } else {
    int failed = 0;
    c = acquire(pool, &failed);
    if (!c) {
      if (failed) { lua_pushnil(L); lua_pushliteral(L, "database unavailable"); lua_pushliteral(L, "08001"); return 3; }
      waiting *wt = mg_xcalloc(1, sizeof *wt);
      wt->cx = cx;
      wt->serial = cx->serial;
      wt->deadline = uv_now(&pool->app->w->loop) + pool->app->settings.pg_wait_ms;
      if (pool->queue_tail) pool->queue_tail->next = wt; else pool->queue = wt;
      pool->queue_tail = wt;
      if (!uv_is_active((uv_handle_t *)&pool->queue_timer)) uv_timer_start(&pool->queue_timer, queue_timeout, 50, 0);
      cx->waiting = MG_WAIT_PG;
      return lua_yield(L, 0);               /* resumed with nil, "retry" or a timeout */
    }
  }
  if (c->state == PC_CONNECTING) {
    /* Park until connected; then Lua retries (the connection is idle then). */
    c->waiter = cx;
    c->serial = cx->serial;
    cx->waiting = MG_WAIT_PG;
    return lua_yield(L, 0);
  }
  int rc = send_query(L, c, cx, 1, 2);
  if (rc >= 0) return rc;
  return lua_yield(L, 0);
}

static int l_pg_unpin(lua_State *L) {
  mg_coctx *cx = mg_waitable(L, "postgres");
  mg_pg *pool = get_pool(L, cx);
  int id = (int)luaL_checkinteger(L, 1);
  if (id >= 0 && id < pool->n) {
    pool->conns[id].pinned = 0;
    dispatch_queue(pool);
  }
  return 0;
}

void mg_pg_free(mg_pg *pool) {
  if (!pool) return;
  for (int i = 0; i < pool->n; i++) {
    pgconn *c = &pool->conns[i];
    c->waiter = NULL;
    if (c->pg || c->poll || c->timer) { c->pool->last_failure = 0; drop(c, NULL); }
  }
  while (pool->queue) { waiting *w = pool->queue; pool->queue = w->next; free(w); }
  uv_close((uv_handle_t *)&pool->queue_timer, pool_closed);
}

void mg_lua_open_pg(lua_State *L) {
  lua_pushcfunction(L, l_pg_query);
  lua_setfield(L, -2, "pg_query");
  lua_pushcfunction(L, l_pg_unpin);
  lua_setfield(L, -2, "pg_unpin");
}
