/* A worker thread: one libuv loop, one current application generation, and
 * the connections it accepted. The main thread talks to workers only through
 * `wakeup` (uv_async) and the atomic request flags below. */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include <uv.h>
#include <stdatomic.h>
#include "app.h"
#include "http.h"
#include "fetch.h"

struct mg_worker {
  int id;
  uv_thread_t thread;
  uv_loop_t loop;
  uv_tcp_t listener;
  int listen_fd;
  uv_async_t wakeup;
  uv_timer_t tick;
  uv_prepare_t flush;
  mg_load_opts opts;
  mg_app *app;
  mg_app *retired;
  atomic_int reload_requested;
  atomic_int stop_requested;
  int stopping;
  uint64_t stop_deadline;
  int ready;                      /* 1 loaded, -1 failed (start-up) */
  uv_sem_t *ready_sem;            /* posted once `ready` is set */

  mg_conn *tl_head[MG_TL_COUNT], *tl_tail[MG_TL_COUNT];
  mg_conn *conns;                 /* every open connection */
  int nconns;
  mg_request *free_req;
  int nfree_req;

  struct mg_h1_pool *h1pool;      /* native HTTP/1.1 upstream connections (h1client.c) */
  struct redis_io *redis_dirty;   /* Redis connections with commands to write (redis.c) */
  CURLM *curl_multi;              /* outgoing HTTP through libcurl (fetch.c) */
  uv_timer_t curl_timer;
  uv_idle_t fetch_idle;
  mg_fetch *fetch_ready, *fetch_all;
  mg_fetch *fetch_free;           /* finished transfers kept for reuse (fetch.c) */
  int nfetch_free;
  int fetch_pool_size;
  struct curl_sock **socks;       /* by fd: poll handles of curl's sockets */
  int nsocks;
  void *easy_pool[64];            /* idle curl easy handles (fetch.c) */
  int easy_pool_n;

  mg_buf access_log;
  mg_buf scratch;                 /* response serialization, reused */
  mg_buf hdrbuf;                  /* headers from Lua, reused */
  mg_buf fwdbuf;                  /* forwarded request lines (lua_fetch.c), reused */
  mg_buf urlbuf;                  /* a fetch's base + path (lua_fetch.c), reused */
  char date[64];
  uint64_t date_sec;
  char id_prefix[17];
  uint64_t id_counter;
  char readbuf[64 * 1024];
};

int mg_worker_start(mg_worker *w);
/* Puts a connection on a timeout list with deadline now + ms (0 = off). */
void mg_worker_set_timeout(mg_worker *w, mg_conn *c, int list, uint64_t ms);
void mg_worker_conn_added(mg_worker *w, mg_conn *c);
void mg_worker_conn_removed(mg_worker *w, mg_conn *c);
/* The "Date:" value for this second. */
const char *mg_worker_date(mg_worker *w);
void mg_worker_new_request_id(mg_worker *w, char *out, size_t outlen);
/* Called when an app generation has no more in-flight requests. */
void mg_worker_app_idle(mg_worker *w, mg_app *app);
void mg_worker_access_log(mg_worker *w, mg_request *req, const char *route);
mg_request *mg_worker_request_alloc(mg_worker *w);
void mg_worker_request_release(mg_worker *w, mg_request *req);

#endif
