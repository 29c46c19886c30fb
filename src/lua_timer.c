/* Background Lua: `core.timer(delay, fn [, every])` runs fn(premature) in its
 * own coroutine after `delay` seconds, then every `every` seconds if given.
 * The coroutine may wait (sleep, fetch) like a handler. A run that is still
 * going when the next tick comes makes that tick skip, so runs never pile up.
 *
 * Timers belong to an application generation: a reload stops the old
 * generation's timers at once (the new one starts its own when it loads),
 * so work is never done twice. In the main thread's validation state there
 * is no loop: core.timer then does nothing and returns false. */
#include "moongate/app.h"
#include "moongate/log.h"
#include "moongate/worker.h"

#include <lua.h>
#include <lauxlib.h>
#include <stdlib.h>

typedef struct mg_ltimer {
  uv_timer_t handle;
  mg_app *app;
  int fn_ref;
  uint64_t every_ms;
  mg_coctx *run;              /* the run in progress, if any */
  struct mg_ltimer *next;
} mg_ltimer;

static void timer_closed(uv_handle_t *h) { free(h->data); }

static void timer_fire(uv_timer_t *t) {
  mg_ltimer *lt = t->data;
  mg_app *app = lt->app;
  if (lt->run) return;                          /* previous run still going */
  mg_coctx *cx = mg_coctx_new_detached(app);
  if (!cx) return;
  lt->run = cx;
  cx->owner_timer = lt;
  lua_rawgeti(cx->co, LUA_REGISTRYINDEX, lt->fn_ref);
  lua_pushboolean(cx->co, 0);                   /* premature = false */
  mg_coctx_resume(cx, 1);
}

/* Called by app.c when a detached (timer) coroutine ends. */
void mg_timer_run_ended(mg_coctx *cx) {
  mg_ltimer *lt = cx->owner_timer;
  if (lt && lt->run == cx) lt->run = NULL;
}

static int l_timer(lua_State *L) {
  double delay = luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  double every = luaL_optnumber(L, 3, 0);
  if (delay < 0 || every < 0) luaL_error(L, "timer: delays must not be negative");
  mg_app *app = lua_touserdata(L, lua_upvalueindex(1));
  if (!app || !app->w || app->closing || app->retired) { lua_pushboolean(L, 0); return 1; }
  mg_ltimer *lt = mg_xcalloc(1, sizeof *lt);
  lt->app = app;
  lua_pushvalue(L, 2);
  lt->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lt->every_ms = (uint64_t)(every * 1000 + 0.5);
  uv_timer_init(&app->w->loop, &lt->handle);
  lt->handle.data = lt;
  uv_timer_start(&lt->handle, timer_fire, (uint64_t)(delay * 1000 + 0.5), lt->every_ms);
  lt->next = app->timers;
  app->timers = lt;
  lua_pushboolean(L, 1);
  return 1;
}

/* Stops every timer of a generation (reload or shutdown). Runs in progress
 * finish on their own; they are no longer tied to their timer. */
void mg_timers_stop(mg_app *app) {
  mg_ltimer *lt = app->timers;
  app->timers = NULL;
  while (lt) {
    mg_ltimer *next = lt->next;
    if (lt->run) lt->run->owner_timer = NULL;
    uv_timer_stop(&lt->handle);
    uv_close((uv_handle_t *)&lt->handle, timer_closed);
    lt = next;
  }
}

/* Hooks: lua/moongate/timer.lua keeps the functions registered with
 * timer.on_close / timer.on_retire and exposes _run_close_hooks /
 * _run_retire_hooks, which call each one in a protected call and log its
 * error. They run here on the main Lua thread, where nothing may wait
 * (sleep, fetch, pg and redis raise "not inside a request or timer"). A
 * failure of the runner itself is logged. */
void mg_app_run_hooks(mg_app *app, const char *runner) {
  lua_State *L = app->L;
  int top = lua_gettop(L);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "loaded");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "moongate.timer");
      if (lua_istable(L, -1)) {
        lua_getfield(L, -1, runner);
        if (lua_isfunction(L, -1) && lua_pcall(L, 0, 0, 0) != 0) {
          mg_log(MG_LOG_ERROR, NULL, "%s: %s", runner,
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "(error without a message)");
        }
      }
    }
  }
  lua_settop(L, top);
}

/* core.timer needs to know its generation: registered with it as upvalue. */
void mg_lua_open_timer(lua_State *L, mg_app *app) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_getfield(L, -1, "moongate.core");
  if (lua_istable(L, -1)) {
    lua_pushlightuserdata(L, app);
    lua_pushcclosure(L, l_timer, 1);
    lua_setfield(L, -2, "timer");
  }
  lua_pop(L, 3);
}
