/* Application generations and the coroutine pool. See include/moongate/app.h.
 *
 * Loading: a fresh Lua state runs lua/moongate/runtime.lua's load(), which
 * validates the operator's config and returns a plain table:
 *   { settings = {...normalized numbers...},
 *     routes = { {methods=, host=, path=, name=, max_body=}, ... },
 *     body = function(...) -- the pooled coroutine body }
 * C builds the router from `routes` and keeps `body` to start coroutines.
 *
 * Per request a pooled coroutine is resumed with the request's fields; it
 * yields core.DONE when the request is finished and waits for the next one,
 * so coroutines (and their stacks) are reused, never created per request. */
#include "moongate/app.h"
#include "moongate/http.h"
#include "moongate/log.h"
#include "moongate/lua_api.h"
#include "moongate/worker.h"

#include <lua.h>
#include <lauxlib.h>
#include <limits.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char mg_done_key;

static int read_routes(mg_app *app, lua_State *L, int idx, char *err, size_t errlen) {
  lua_getfield(L, idx, "routes");
  int n = (int)lua_objlen(L, -1);
  app->router = mg_router_new();
  app->routes = mg_xcalloc((size_t)n + 1, sizeof(mg_route_info));
  app->nroutes = n;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lua_getfield(L, -1, "methods");
    unsigned methods = (unsigned)lua_tointeger(L, -1);
    lua_getfield(L, -2, "host");
    const char *host = lua_tostring(L, -1);
    lua_getfield(L, -3, "path");
    const char *path = lua_tostring(L, -1);
    lua_getfield(L, -4, "name");
    lua_getfield(L, -5, "max_body");
    mg_route_info *ri = &app->routes[i - 1];
    ri->name = mg_xstrdup(lua_isstring(L, -2) ? lua_tostring(L, -2) : "");
    ri->max_body = lua_isnumber(L, -1) ? (size_t)lua_tonumber(L, -1) : app->settings.max_body;
    const char *rerr;
    if (mg_router_add(app->router, i - 1, methods, host, path ? path : "", &rerr) != 0) {
      lua_getfield(L, -6, "where");
      snprintf(err, errlen, "%s: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : ri->name, rerr);
      lua_pop(L, 8);
      return -1;
    }
    lua_pop(L, 6);
  }
  lua_pop(L, 1);
  mg_router_finish(app->router);
  return 0;
}

mg_app *mg_app_load(const mg_load_opts *o, mg_worker *w, char *err, size_t errlen) {
  char real[PATH_MAX], dir[PATH_MAX];
  if (!realpath(o->config_path, real)) {
    snprintf(err, errlen, "%s: cannot open config file", o->config_path);
    return NULL;
  }
  snprintf(dir, sizeof dir, "%s", real);
  dirname(dir);

  mg_app *app = mg_xcalloc(1, sizeof *app);
  app->w = w;
  app->body_ref = LUA_NOREF;
  lua_State *L = mg_lua_newstate(o->home, dir);
  if (!L) { snprintf(err, errlen, "cannot create a Lua state"); free(app); return NULL; }
  app->L = L;

  lua_getglobal(L, "require");
  lua_pushliteral(L, "moongate.runtime");
  if (lua_pcall(L, 1, 1, 0) != 0) goto lua_fail;
  mg_lua_open_timer(L, app);
  lua_getfield(L, -1, "load");
  lua_pushstring(L, o->config_path);
  lua_createtable(L, 0, 4);
  if (o->port_override) { lua_pushinteger(L, o->port_override); lua_setfield(L, -2, "port"); }
  if (o->workers_override) { lua_pushinteger(L, o->workers_override); lua_setfield(L, -2, "workers"); }
  lua_pushinteger(L, w ? w->id : -1);
  lua_setfield(L, -2, "worker_id");
  lua_pushstring(L, o->home);
  lua_setfield(L, -2, "home");
  lua_pushstring(L, dir);
  lua_setfield(L, -2, "config_dir");
  if (lua_pcall(L, 2, 1, 0) != 0) goto lua_fail;
  int t = lua_gettop(L);
  lua_getfield(L, t, "settings");
  if (mg_settings_from_lua(L, -1, &app->settings, err, errlen) != 0) goto fail;
  lua_pop(L, 1);
  if (read_routes(app, L, t, err, errlen) != 0) goto fail;
  lua_getfield(L, t, "body");
  if (!lua_isfunction(L, -1)) { snprintf(err, errlen, "runtime: load() returned no body"); goto fail; }
  app->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return app;

lua_fail:
  snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "unknown Lua error");
fail:
  mg_app_free(app);
  return NULL;
}

static void timer_close_cb(uv_handle_t *h) { free(h); }

void mg_app_free(mg_app *app) {
  if (!app) return;
  mg_timers_stop(app);
  /* Lua's last word (timer.on_close), while everything is still in place:
   * e.g. moongate.batch writes its unsent rows to its spool here. */
  if (app->L) {
    app->closing = 1;                  /* no new timers from here on */
    mg_app_run_hooks(app, "_run_close_hooks");
  }
  mg_redis_free(app->redis);           /* before the coroutines they point to */
  app->redis = NULL;
  mg_pg_free(app->pg);
  app->pg = NULL;
  mg_coctx *cx = app->all_co;
  while (cx) {
    mg_coctx *next = cx->next_all;
    if (cx->timer) uv_close((uv_handle_t *)cx->timer, timer_close_cb);
    if (cx->req) {                     /* shutdown with work still parked */
      cx->req->co = NULL;
      mg_request_finish(cx->req);
    }
    free(cx);
    cx = next;
  }
  if (app->L) lua_close(app->L);
  for (int i = 0; i < app->nroutes; i++) free(app->routes[i].name);
  free(app->routes);
  mg_router_free(app->router);
  free(app);
}

static mg_coctx *coctx_acquire(mg_app *app) {
  mg_coctx *cx = app->free_co;
  if (cx) {
    app->free_co = cx->next_free;
    return cx;
  }
  cx = mg_xcalloc(1, sizeof *cx);
  cx->app = app;
  lua_State *L = app->L;
  cx->co = lua_newthread(L);
  cx->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_setexdata(cx->co, cx);
  lua_rawgeti(cx->co, LUA_REGISTRYINDEX, app->body_ref);   /* not started yet */
  cx->next_all = app->all_co;
  app->all_co = cx;
  return cx;
}

mg_coctx *mg_coctx_new_detached(mg_app *app) {
  mg_coctx *cx = mg_xcalloc(1, sizeof *cx);
  cx->app = app;
  cx->detached = 1;
  cx->co = lua_newthread(app->L);
  cx->ref = luaL_ref(app->L, LUA_REGISTRYINDEX);
  lua_setexdata(cx->co, cx);
  cx->next_all = app->all_co;
  app->all_co = cx;
  return cx;
}

static void coctx_discard(mg_coctx *cx) {
  mg_app *app = cx->app;
  mg_coctx **pp = &app->all_co;
  while (*pp && *pp != cx) pp = &(*pp)->next_all;
  if (*pp) *pp = cx->next_all;
  luaL_unref(app->L, LUA_REGISTRYINDEX, cx->ref);
  if (cx->timer) uv_close((uv_handle_t *)cx->timer, timer_close_cb);
  free(cx);
}

void mg_app_dispatch(mg_app *app, mg_request *req) {
  mg_coctx *cx = coctx_acquire(app);
  cx->req = req;
  cx->serial++;
  req->co = cx;
  lua_State *co = cx->co;
  const mg_route_match *m = &req->match;
  /* serve(cx, serial, route, method, path, query, id, error_status, allow);
   * the rest (client address, path parameters, headers) Lua asks for. */
  lua_pushlightuserdata(co, cx);
  lua_pushinteger(co, cx->serial);
  lua_pushinteger(co, m->status == 0 ? m->route + 1 : 0);
  lua_pushstring(co, req->method);
  lua_pushlstring(co, req->head.data, req->path_len);
  if (req->url_len > req->path_len)
    lua_pushlstring(co, req->head.data + req->path_len + 1, req->url_len - req->path_len - 1);
  else
    lua_pushliteral(co, "");
  lua_pushstring(co, req->id);
  lua_pushinteger(co, req->error_status ? req->error_status : m->status);
  if (m->status == 405) {
    char allow[128];
    mg_methods_string(m->allow, allow, sizeof allow);
    lua_pushstring(co, allow);
  } else {
    lua_pushnil(co);
  }
  mg_coctx_resume(cx, 9);
}

void mg_coctx_resume(mg_coctx *cx, int nargs) {
  lua_State *co = cx->co;
  int st = lua_resume(co, nargs);
  if (st == LUA_YIELD) {
    if (lua_gettop(co) == 1 && lua_touserdata(co, 1) == &mg_done_key) {
      lua_settop(co, 0);
      mg_request *req = cx->req;
      mg_app *app = cx->app;
      cx->req = NULL;
      cx->next_free = app->free_co;
      app->free_co = cx;
      if (req) { req->co = NULL; mg_request_finish(req); }
    }
    return;                            /* parked on I/O, a timer, a drain */
  }
  if (cx->detached) {                  /* a timer run ended */
    if (st != 0)
      mg_log(MG_LOG_ERROR, NULL, "timer: %s",
             lua_isstring(co, -1) ? lua_tostring(co, -1) : "(error without a message)");
    mg_timer_run_ended(cx);
    coctx_discard(cx);
    return;
  }
  /* The body never returns and catches every error itself; getting here
   * means a bug in the runtime. Keep serving: drop this coroutine. */
  mg_request *req = cx->req;
  mg_log(MG_LOG_ERROR, NULL, "runtime coroutine ended: %s",
         lua_isstring(co, -1) ? lua_tostring(co, -1) : "(no message)");
  cx->req = NULL;
  coctx_discard(cx);
  if (req) { req->co = NULL; mg_request_finish(req); }
}
