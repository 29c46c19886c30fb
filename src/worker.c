/* Worker threads. See include/moongate/worker.h.
 *
 * Timeouts: a connection is on at most one timeout list (reading a head,
 * reading a body, idle keep-alive, sending, lingering). Within a list every
 * entry got the same duration, so appending on (re)arm keeps the list sorted
 * by deadline and one periodic tick only looks at list heads. */
#include "moongate/worker.h"
#include "moongate/h1client.h"
#include "moongate/log.h"

#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 100
#define MAX_FREE_REQUESTS 256

/* ---- timeout lists ------------------------------------------------------ */

void mg_worker_set_timeout(mg_worker *w, mg_conn *c, int list, uint64_t ms) {
  if (c->tl != MG_TL_NONE) {
    if (c->tl_prev) c->tl_prev->tl_next = c->tl_next;
    else w->tl_head[c->tl] = c->tl_next;
    if (c->tl_next) c->tl_next->tl_prev = c->tl_prev;
    else w->tl_tail[c->tl] = c->tl_prev;
    c->tl_prev = c->tl_next = NULL;
    c->tl = MG_TL_NONE;
  }
  if (list == MG_TL_NONE || ms == 0) return;
  c->tl = (uint8_t)list;
  c->deadline = uv_now(&w->loop) + ms;
  c->tl_prev = w->tl_tail[list];
  if (w->tl_tail[list]) w->tl_tail[list]->tl_next = c;
  else w->tl_head[list] = c;
  w->tl_tail[list] = c;
}

void mg_worker_conn_added(mg_worker *w, mg_conn *c) {
  c->all_next = w->conns;
  if (w->conns) w->conns->all_prev = c;
  w->conns = c;
  w->nconns++;
}

void mg_worker_conn_removed(mg_worker *w, mg_conn *c) {
  if (c->all_prev) c->all_prev->all_next = c->all_next;
  else w->conns = c->all_next;
  if (c->all_next) c->all_next->all_prev = c->all_prev;
  c->all_prev = c->all_next = NULL;
  w->nconns--;
}

static int apps_busy(mg_worker *w) {
  if (w->app && w->app->inflight) return 1;
  return w->retired != NULL;
}

static void finish_stop(mg_worker *w);

static void on_tick(uv_timer_t *t) {
  mg_worker *w = t->data;
  uint64_t now = uv_now(&w->loop);
  for (int l = 1; l < MG_TL_COUNT; l++) {
    while (w->tl_head[l] && w->tl_head[l]->deadline <= now) {
      mg_conn *c = w->tl_head[l];
      mg_worker_set_timeout(w, c, MG_TL_NONE, 0);
      c->tl = (uint8_t)l;                /* tell the handler which one fired */
      mg_conn_timeout(c);
      if (c->tl == l && !c->closing) c->tl = MG_TL_NONE;
    }
  }
  mg_h1_tick(w);                         /* upstream timeouts, idle upstream connections */
  if (w->stopping) {
    if ((w->nconns == 0 && !apps_busy(w)) || now >= w->stop_deadline) finish_stop(w);
  }
}

/* ---- requests ----------------------------------------------------------- */

mg_request *mg_worker_request_alloc(mg_worker *w) {
  mg_request *req = w->free_req;
  if (req) {
    w->free_req = req->next_free;
    w->nfree_req--;
  } else {
    req = mg_xcalloc(1, sizeof *req);
  }
  req->w = w;
  return req;
}

void mg_worker_request_release(mg_worker *w, mg_request *req) {
  mg_app *app = req->app;
  /* Keep the buffers for the next request unless one grew large. */
  mg_buf head = req->head, body = req->body;
  mg_buf_free(&req->log_extra);
  mg_header *hdr = req->hdr;
  int hdr_cap = req->hdr_cap;
  if (head.cap > 16384) { mg_buf_free(&head); }
  if (body.cap > 65536) { mg_buf_free(&body); }
  if (hdr_cap > 64) { free(hdr); hdr = NULL; hdr_cap = 0; }
  if (w->nfree_req >= MAX_FREE_REQUESTS) {
    mg_buf_free(&head);
    mg_buf_free(&body);
    free(hdr);
    free(req);
  } else {
    memset(req, 0, sizeof *req);
    head.len = 0;
    body.len = 0;
    req->head = head;
    req->body = body;
    req->hdr = hdr;
    req->hdr_cap = hdr_cap;
    req->next_free = w->free_req;
    w->free_req = req;
    w->nfree_req++;
  }
  if (app && --app->inflight == 0 && app->retired && !app->freeing)
    mg_worker_app_idle(w, app);
}

void mg_worker_access_log(mg_worker *w, mg_request *req, const char *route) {
  mg_buf *b = &w->access_log;
  mg_buf_appends(b, "{\"time\":\"");
  mg_log_time(b);
  mg_buf_appends(b, "\",\"request_id\":\"");
  mg_buf_json_escape(b, req->id, strlen(req->id));
  mg_buf_appends(b, "\",\"remote_ip\":\"");
  mg_buf_appends(b, req->remote_ip);
  mg_buf_appends(b, "\",\"method\":\"");
  if (req->method) mg_buf_appends(b, req->method);
  mg_buf_appends(b, "\",\"uri\":\"");
  mg_buf_json_escape(b, req->head.data ? req->head.data : "", req->url_len);
  uint64_t end = req->done_ns ? req->done_ns : uv_hrtime();
  mg_buf_appends(b, "\",\"status\":");
  mg_buf_append_uint(b, (uint64_t)(req->status > 0 ? req->status : 0));
  mg_buf_appends(b, ",\"bytes\":");
  mg_buf_append_uint(b, req->bytes_sent);
  mg_buf_appends(b, ",\"latency_ms\":");
  mg_buf_append_ms(b, req->start_ns ? end - req->start_ns : 0);   /* 0: the log was off when it began */
  mg_buf_appends(b, ",\"route\":\"");
  mg_buf_json_escape(b, route, strlen(route));
  mg_buf_appends(b, "\",\"worker\":");
  mg_buf_append_uint(b, (uint64_t)w->id);
  if (req->log_extra.len) mg_buf_append(b, req->log_extra.data, req->log_extra.len);
  mg_buf_append(b, "}\n", 2);
  if (b->len > 64 * 1024) {
    mg_log_write(1, b->data, b->len);
    b->len = 0;
  }
}

void mg_request_finish(mg_request *req) {
  mg_worker *w = req->w;
  if (!req->resp_started && req->conn) {
    /* Safety net: the Lua side ended without answering. */
    static const char body[] = "{\"message\":\"internal server error\"}";
    mg_response_send(req, 500, "Content-Type: application/json\r\n", 32, body,
                     sizeof body - 1);
  } else if (req->resp_started && !req->resp_done && req->conn) {
    /* A stream that was never ended (an error mid-stream): close without
     * the final chunk, so the client cannot take it for a whole body. */
    mg_conn_close(req->conn);
  }
  mg_app *app = req->app;
  if (app && app->settings.access_log && !app->freeing) {
    const char *route = "";
    if (req->match.status == 0 && req->match.route >= 0 && req->match.route < app->nroutes)
      route = app->routes[req->match.route].name;
    mg_worker_access_log(w, req, route);
  }
  mg_worker_request_release(w, req);
}

void mg_worker_app_idle(mg_worker *w, mg_app *app) {
  mg_app **pp = &w->retired;
  while (*pp && *pp != app) pp = &(*pp)->next_retired;
  if (*pp) *pp = app->next_retired;
  app->freeing = 1;
  mg_app_free(app);
}

const char *mg_worker_date(mg_worker *w) {
  time_t now = time(NULL);
  if ((uint64_t)now != w->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(w->date, sizeof w->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    w->date_sec = (uint64_t)now;
  }
  return w->date;
}

/* 32 hex digits: a random per-worker prefix and a counter. */
void mg_worker_new_request_id(mg_worker *w, char *out, size_t outlen) {
  static const char hex[] = "0123456789abcdef";
  if (outlen < 33) { out[0] = '\0'; return; }
  memcpy(out, w->id_prefix, 16);
  uint64_t n = ++w->id_counter;
  for (int i = 31; i >= 16; i--) { out[i] = hex[n & 15]; n >>= 4; }
  out[32] = '\0';
}

/* ---- loop callbacks ------------------------------------------------------ */

/* The loop turn's upstream requests and Redis commands go out together, and
 * then the worker yields the CPU once. An upstream (or Redis) that shares
 * the core with the worker has just been handed a batch; without the
 * yield, the scheduler (EEVDF) lets it preempt the worker for only part of
 * the batch, and the rest waits until the worker has worked through the
 * next turn's new requests: those answers come a turn late, a few hundred
 * microseconds (S3 of the bench, upstream on the gateway's core: p99 1.42
 * -> 1.23 ms, for ~0.9 us of context switches per request). With nothing
 * else runnable on the core the call returns at once. */
static void on_flush(uv_prepare_t *p) {
  mg_worker *w = p->data;
  if (mg_h1_flush(w) + mg_redis_flush(w) > 0) sched_yield();
  if (w->access_log.len) {
    mg_log_write(1, w->access_log.data, w->access_log.len);
    w->access_log.len = 0;
  }
}

static void on_connection(uv_stream_t *server, int status) {
  mg_worker *w = server->data;
  if (status < 0 || w->stopping) return;
  mg_http_accept(w, server);
}

static void worker_reload(mg_worker *w) {
  char err[4096];
  mg_app *app = mg_app_load(&w->opts, w, err, sizeof err);
  if (!app) {
    char extra[64];
    snprintf(extra, sizeof extra, "\"worker\":%d", w->id);
    mg_log(MG_LOG_ERROR, extra, "reload failed, keeping the running configuration: %s", err);
    return;
  }
  uv_update_time(&w->loop);
  mg_app *old = w->app;
  w->app = app;
  old->retired = 1;
  mg_timers_stop(old);                 /* the new generation runs its own */
  if (old->inflight > 0) mg_app_run_hooks(old, "_run_retire_hooks");
  if (old->inflight == 0) {
    old->freeing = 1;
    mg_app_free(old);
  } else {
    old->next_retired = w->retired;
    w->retired = old;
  }
}

static void begin_stop(mg_worker *w) {
  if (w->stopping) return;
  w->stopping = 1;
  w->stop_deadline = uv_now(&w->loop) + w->app->settings.shutdown_timeout_ms;
  uv_close((uv_handle_t *)&w->listener, NULL);
  /* Idle connections go now; the others close after their response. */
  mg_conn *c = w->conns;
  while (c) {
    mg_conn *next = c->all_next;
    if (!c->dispatched && c->write_queued == 0 && (!c->req || c->head_bytes == 0))
      mg_conn_close(c);
    c = next;
  }
  on_tick(&w->tick);
}

static void on_wakeup(uv_async_t *a) {
  mg_worker *w = a->data;
  if (atomic_exchange(&w->stop_requested, 0)) begin_stop(w);
  if (atomic_exchange(&w->reload_requested, 0) && !w->stopping) worker_reload(w);
}

static void close_any(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) {
    if (h->type == UV_TCP && h->data && h != arg) mg_conn_close(h->data);
    else uv_close(h, NULL);
  }
}

static void finish_stop(mg_worker *w) {
  if (w->stopping == 2) return;
  w->stopping = 2;
  while (w->conns) mg_conn_close(w->conns);
  /* Free the generations first: their coroutine timers are loop handles. */
  mg_app *a = w->retired;
  while (a) { mg_app *n = a->next_retired; a->freeing = 1; mg_app_free(a); a = n; }
  w->retired = NULL;
  if (w->app) { w->app->freeing = 1; mg_app_free(w->app); w->app = NULL; }
  mg_fetch_shutdown(w);
  uv_close((uv_handle_t *)&w->tick, NULL);
  uv_close((uv_handle_t *)&w->wakeup, NULL);
  uv_close((uv_handle_t *)&w->flush, NULL);
  uv_walk(&w->loop, close_any, &w->listener);
}

static void worker_main(void *arg) {
  mg_worker *w = arg;
  char err[4096];
  w->app = mg_app_load(&w->opts, w, err, sizeof err);
  if (!w->app) {
    mg_log(MG_LOG_ERROR, NULL, "worker %d: %s", w->id, err);
    w->ready = -1;
    uv_sem_post(w->ready_sem);
    uv_loop_close(&w->loop);
    return;
  }
  w->fetch_pool_size = w->app->settings.upstream_pool;
  if (mg_fetch_init(w) != 0) mg_log(MG_LOG_ERROR, NULL, "worker %d: curl_multi_init failed", w->id);
  uv_async_init(&w->loop, &w->wakeup, on_wakeup);
  w->wakeup.data = w;
  uv_timer_init(&w->loop, &w->tick);
  w->tick.data = w;
  uv_timer_start(&w->tick, on_tick, TICK_MS, TICK_MS);
  uv_prepare_init(&w->loop, &w->flush);
  w->flush.data = w;
  uv_prepare_start(&w->flush, on_flush);
  uv_tcp_init(&w->loop, &w->listener);
  w->listener.data = w;
  int rc = uv_tcp_open(&w->listener, w->listen_fd);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&w->listener, 511, on_connection);
  if (rc != 0) {
    mg_log(MG_LOG_ERROR, NULL, "worker %d: listen: %s", w->id, uv_strerror(rc));
    w->ready = -1;
    uv_sem_post(w->ready_sem);
    w->stopping = 1;
    finish_stop(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    return;
  }
  w->ready = 1;
  uv_sem_post(w->ready_sem);
  uv_update_time(&w->loop);      /* loading Lua took a while: deadlines start now */
  mg_clock_use_loop(&w->loop);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  on_flush(&w->flush);
  /* Anything still open (a stop that came before the loop ran) closes here. */
  if (w->stopping != 2) { w->stopping = 1; finish_stop(w); uv_run(&w->loop, UV_RUN_DEFAULT); }
  while (w->free_req) {
    mg_request *r = w->free_req;
    w->free_req = r->next_free;
    mg_buf_free(&r->head);
    mg_buf_free(&r->body);
    free(r->hdr);
    free(r);
  }
  mg_buf_free(&w->access_log);
  mg_buf_free(&w->scratch);
  mg_buf_free(&w->hdrbuf);
  mg_buf_free(&w->fwdbuf);
  mg_buf_free(&w->urlbuf);
  mg_clock_use_loop(NULL);
  if (uv_loop_close(&w->loop) != 0)
    mg_log(MG_LOG_WARN, NULL, "worker %d: loop closed with open handles", w->id);
}

int mg_worker_start(mg_worker *w) {
  unsigned char rnd[8];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, rnd, sizeof rnd) != (ssize_t)sizeof rnd) {
    uint64_t t = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)w->id;
    memcpy(rnd, &t, sizeof rnd);
  }
  if (fd >= 0) close(fd);
  for (int i = 0; i < 8; i++) snprintf(w->id_prefix + 2 * i, 3, "%02x", rnd[i]);
  if (uv_loop_init(&w->loop) != 0) return -1;
  return uv_thread_create(&w->thread, worker_main, w);
}
