/* An application generation: one LuaJIT state with the config, routes,
 * policies and handlers loaded, plus the C router built from it and a pool of
 * reusable coroutines. Each worker owns its current generation; on reload it
 * loads a new one and retires the old one, which is closed once its last
 * in-flight request is done. The main thread loads a generation only to
 * validate (mg_app_load with w == NULL) and closes it right away. */
#ifndef MG_APP_H
#define MG_APP_H

#include <uv.h>
#include "settings.h"
#include "router.h"

struct lua_State;
typedef struct mg_worker mg_worker;
typedef struct mg_request mg_request;

typedef struct {
  const char *config_path;
  int port_override;        /* 0 = none */
  int workers_override;     /* 0 = none */
  const char *home;         /* directory holding lua/ and policies/ */
} mg_load_opts;

typedef struct mg_coctx {
  struct lua_State *co;
  int ref;                  /* registry anchor of the coroutine */
  struct mg_app *app;
  mg_request *req;          /* NULL between requests */
  uint32_t serial;          /* bumps every request; guards stale req objects */
  uv_timer_t *timer;        /* created on first sleep */
  int waiting;              /* MG_WAIT_* */
  struct mg_coctx *next_free;
  struct mg_coctx *next_all;
  int detached;             /* a timer run: not pooled, ends by returning */
  struct mg_fetch *fetch;   /* the transfer it is parked on (MG_WAIT_FETCH) */
  struct mg_ltimer *owner_timer;
} mg_coctx;

enum { MG_WAIT_NONE, MG_WAIT_SLEEP, MG_WAIT_DRAIN, MG_WAIT_FETCH, MG_WAIT_REDIS,
       MG_WAIT_PG };

typedef struct {
  char *name;
  size_t max_body;
} mg_route_info;

typedef struct mg_app {
  struct lua_State *L;
  mg_worker *w;
  mg_settings settings;
  mg_router *router;
  mg_route_info *routes;
  int nroutes;
  int body_ref;             /* the coroutine body function (runtime.serve loop) */
  mg_coctx *free_co;
  mg_coctx *all_co;          /* every coroutine context, for teardown */
  int freeing;
  int closing;              /* close hooks are running: no new timers */
  int inflight;             /* coroutines currently serving a request */
  int retired;              /* replaced by a newer generation */
  struct mg_app *next_retired;
  struct mg_ltimer *timers;  /* core.timer timers of this generation */
  struct mg_redis *redis;    /* its Redis connections (redis.c), on first use */
  struct mg_pg *pg;          /* its PostgreSQL connections (pg.c), on first use */
} mg_app;

/* Loads and validates a generation. Returns NULL and a message naming the
 * file and field on failure. */
mg_app *mg_app_load(const mg_load_opts *opts, mg_worker *w, char *err,
                    size_t errlen);
void mg_app_free(mg_app *app);
/* Runs a request that was fully received (or is an error) in a coroutine. */
void mg_app_dispatch(mg_app *app, mg_request *req);
/* Resumes a parked coroutine with `nargs` values already on its stack. */
void mg_coctx_resume(mg_coctx *cx, int nargs);
/* A coroutine for background work (timers), outside the request pool. */
mg_coctx *mg_coctx_new_detached(mg_app *app);

/* redis.c */
void mg_redis_free(struct mg_redis *pool);
/* Writes the Redis commands Lua queued this loop turn (worker prepare phase);
 * returns on how many connections. */
int mg_redis_flush(struct mg_worker *w);
void mg_lua_open_redis(struct lua_State *L);

/* pg.c */
void mg_pg_free(struct mg_pg *pool);
void mg_lua_open_pg(struct lua_State *L);

/* lua_timer.c */
void mg_lua_open_timer(struct lua_State *L, mg_app *app);
/* Runs a generation's Lua hooks, synchronously, errors logged:
 * "_run_close_hooks" (timer.on_close) from mg_app_free before lua_close,
 * "_run_retire_hooks" (timer.on_retire) when a reload retires a generation
 * that still has requests in flight. */
void mg_app_run_hooks(mg_app *app, const char *runner);
void mg_timers_stop(mg_app *app);
void mg_timer_run_ended(mg_coctx *cx);

#endif
