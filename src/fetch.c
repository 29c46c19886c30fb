/* Transfers: the engine dispatcher, the ready queue, and the libcurl engine
 * (multi-socket on the worker's libuv loop). See include/moongate/fetch.h;
 * the native engine is h1client.c.
 *
 * curl tells us which sockets to watch (socket_cb) and when to call it back
 * (timer_cb); libuv tells us when a socket is ready. Every path into curl
 * ends with after_curl(), which collects finished transfers and resumes the
 * coroutines whose transfer has something for them. */
#include "moongate/fetch.h"
#include "moongate/app.h"
#include "moongate/h1client.h"
#include "moongate/log.h"
#include "moongate/worker.h"

#include <lua.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef struct curl_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  mg_worker *w;
} curl_sock;

static void after_curl(mg_worker *w);
static void idle_cb(uv_idle_t *h);

void mg_fetch_notify(mg_fetch *f) {
  if (f->ready || !f->waiter) return;
  int news = f->done || (f->wait == MG_FETCH_WAIT_HEAD && f->head_done) ||
             (f->wait == MG_FETCH_WAIT_BODY && f->body.len > f->body_off);
  if (!news) return;
  mg_worker *w = f->w;
  f->ready = 1;
  f->next_ready = w->fetch_ready;
  w->fetch_ready = f;
  if (!uv_is_active((uv_handle_t *)&w->fetch_idle)) uv_idle_start(&w->fetch_idle, idle_cb);
}

/* ---- socket and timer plumbing ------------------------------------------ */

static void poll_cb(uv_poll_t *p, int status, int events) {
  curl_sock *cs = p->data;
  mg_worker *w = cs->w;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(w->curl_multi, cs->fd, flags, &running);
  after_curl(w);
}

static void sock_close_cb(uv_handle_t *h) { free(h->data); }

/* A socket's poll handle lives as long as the socket: curl says REMOVE when
 * a connection goes back to its cache, and we only stop watching; the
 * handle is closed when curl closes the socket (close_socket_cb). This saves
 * an allocation and a handle per proxied request on a kept-alive connection. */
static curl_sock *sock_lookup(mg_worker *w, curl_socket_t s) {
  return s >= 0 && s < w->nsocks ? w->socks[s] : NULL;
}

static int close_socket_cb(void *clientp, curl_socket_t s) {
  mg_worker *w = clientp;
  curl_sock *cs = sock_lookup(w, s);
  if (cs) {
    w->socks[s] = NULL;
    uv_poll_stop(&cs->poll);
    uv_close((uv_handle_t *)&cs->poll, sock_close_cb);
  }
  return close(s);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  mg_worker *w = userp;
  curl_sock *cs = sock_lookup(w, s);
  if (what == CURL_POLL_REMOVE) {
    if (cs) uv_poll_stop(&cs->poll);
    return 0;
  }
  if (!cs) {
    if (s >= w->nsocks) {
      int n = w->nsocks ? w->nsocks : 64;
      while (n <= s) n *= 2;
      w->socks = mg_xrealloc(w->socks, (size_t)n * sizeof *w->socks);
      memset(w->socks + w->nsocks, 0, (size_t)(n - w->nsocks) * sizeof *w->socks);
      w->nsocks = n;
    }
    cs = mg_xcalloc(1, sizeof *cs);
    cs->fd = s;
    cs->w = w;
    if (uv_poll_init_socket(&w->loop, &cs->poll, s) != 0) { free(cs); return -1; }
    cs->poll.data = cs;
    w->socks[s] = cs;
  }
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  uv_poll_start(&cs->poll, events, poll_cb);
  return 0;
}

static void curl_timer_cb(uv_timer_t *t) {
  mg_worker *w = t->data;
  int running;
  curl_multi_socket_action(w->curl_multi, CURL_SOCKET_TIMEOUT, 0, &running);
  after_curl(w);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  mg_worker *w = userp;
  if (timeout_ms < 0) uv_timer_stop(&w->curl_timer);
  else uv_timer_start(&w->curl_timer, curl_timer_cb, (uint64_t)timeout_ms, 0);
  return 0;
}

/* The ready queue is also run from here for transfers that ended outside
 * an engine callback (mg_fetch_abort). */
static void idle_cb(uv_idle_t *h) {
  uv_idle_stop(h);
  after_curl(h->data);
}

/* ---- transfer callbacks ------------------------------------------------- */

static size_t header_cb(char *data, size_t size, size_t n, void *ud) {
  mg_fetch *f = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A status line: a new (possibly final) response head begins. */
    f->head.len = 0;
    f->head_done = 0;
    const char *sp = memchr(data, ' ', len);
    f->status = sp ? atoi(sp + 1) : 0;
    return len;
  }
  if (len <= 2 && (data[0] == '\r' || data[0] == '\n')) {
    if (f->status >= 200) {                  /* 1xx heads are not final */
      f->head_done = 1;
      mg_fetch_notify(f);
    }
    return len;
  }
  mg_buf_append(&f->head, data, len);
  return len;
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud) {
  mg_fetch *f = ud;
  size_t len = size * n;
  if (f->body.len - f->body_off > f->max_buffer) {
    f->paused = 1;                           /* the reader is behind: wait for it */
    return CURL_WRITEFUNC_PAUSE;
  }
  mg_fetch_body_append(f, data, len);
  return len;
}

void mg_fetch_body_append(mg_fetch *f, const char *data, size_t len) {
  if (f->body_off > 0 && f->body_off == f->body.len) { f->body.len = 0; f->body_off = 0; }
  mg_buf_append(&f->body, data, len);
  mg_fetch_notify(f);
}

/* ---- lifecycle ---------------------------------------------------------- */

int mg_fetch_init(mg_worker *w) {
  if (w->curl_multi) return 0;
  w->curl_multi = curl_multi_init();
  if (!w->curl_multi) return -1;
  curl_multi_setopt(w->curl_multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(w->curl_multi, CURLMOPT_SOCKETDATA, w);
  curl_multi_setopt(w->curl_multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(w->curl_multi, CURLMOPT_TIMERDATA, w);
  curl_multi_setopt(w->curl_multi, CURLMOPT_MAXCONNECTS, (long)w->fetch_pool_size);
  uv_timer_init(&w->loop, &w->curl_timer);
  w->curl_timer.data = w;
  uv_idle_init(&w->loop, &w->fetch_idle);
  w->fetch_idle.data = w;
  /* The native client keeps as many idle connections as curl's cache. */
  w->h1pool = mg_h1_pool_new(w, w->fetch_pool_size);
  return 0;
}

/* Only this file creates poll handles; at shutdown close what curl left. */
static void close_poll(uv_handle_t *h, void *arg) {
  if (h->type == UV_POLL && !uv_is_closing(h)) uv_close(h, sock_close_cb);
}

void mg_fetch_shutdown(mg_worker *w) {
  if (!w->curl_multi) return;
  /* Transfers still running belong to coroutines that will never resume. */
  while (w->fetch_all) {
    mg_fetch *f = w->fetch_all;
    f->lua_owned = 0;                      /* their Lua states are gone */
    mg_fetch_cancel(f);
  }
  mg_h1_pool_free(w->h1pool);             /* closes idle native connections */
  w->h1pool = NULL;
  while (w->easy_pool_n > 0) curl_easy_cleanup(w->easy_pool[--w->easy_pool_n]);
  curl_multi_cleanup(w->curl_multi);      /* closes cached connections */
  w->curl_multi = NULL;
  while (w->fetch_free) {
    mg_fetch *f = w->fetch_free;
    mg_pool_unpoison(f, sizeof *f, &f->head, &f->body);
    w->fetch_free = f->next_all;
    mg_buf_free(&f->head);
    mg_buf_free(&f->body);
    free(f);
  }
  w->nfetch_free = 0;
  uv_walk(&w->loop, close_poll, NULL);
  free(w->socks);
  w->socks = NULL;
  w->nsocks = 0;
  uv_close((uv_handle_t *)&w->curl_timer, NULL);
  uv_close((uv_handle_t *)&w->fetch_idle, NULL);
}

/* Easy handles are pooled per worker: creating one costs several
 * allocations, and a reset handle keeps nothing of the previous transfer
 * (connections live in the multi handle's cache either way). */
#define EASY_POOL_MAX 64

static CURL *easy_get(mg_worker *w) {
  if (w->easy_pool_n > 0) return w->easy_pool[--w->easy_pool_n];
  return curl_easy_init();
}

static void easy_put(mg_worker *w, CURL *easy) {
  if (w->curl_multi && w->easy_pool_n < EASY_POOL_MAX) {
    curl_easy_reset(easy);
    w->easy_pool[w->easy_pool_n++] = easy;
  } else {
    curl_easy_cleanup(easy);
  }
}

/* Finished transfers are kept per worker with their buffers (one proxied
 * request would otherwise cost half a dozen allocations). */
#define FETCH_FREE_MAX 64
#define FETCH_KEEP_BUF 16384

static mg_fetch *fetch_new(mg_worker *w) {
  mg_fetch *f = w->fetch_free;
  if (f) {
    mg_pool_unpoison(f, sizeof *f, &f->head, &f->body);
    w->fetch_free = f->next_all;
    w->nfetch_free--;
    mg_buf head = f->head, body = f->body;
    memset(f, 0, sizeof *f);
    head.len = body.len = 0;
    f->head = head;
    f->body = body;
  } else {
    f = mg_xcalloc(1, sizeof *f);
  }
  f->w = w;
  f->max_buffer = 256 * 1024;
  f->next_all = w->fetch_all;
  if (w->fetch_all) w->fetch_all->prev_all = f;
  w->fetch_all = f;
  return f;
}

/* The curl engine: the options that reproduce what the Lua side asked for.
 * curl adds none of its own headers that we do not override: Expect and
 * Accept are blanked unless given. */
static int curl_start(mg_fetch *f, const mg_fetch_spec *spec) {
  mg_worker *w = f->w;
  CURL *e = f->easy = easy_get(w);
  if (!e) return -1;
  curl_easy_setopt(e, CURLOPT_PRIVATE, f);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, w);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  /* We relay what the upstream sends: no decoding, no redirects. */
  curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  curl_easy_setopt(e, CURLOPT_HTTP_TRANSFER_DECODING, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");

  char *url = mg_xmalloc(spec->url_len + 1);
  memcpy(url, spec->url, spec->url_len);
  url[spec->url_len] = '\0';
  curl_easy_setopt(e, CURLOPT_URL, url);          /* curl copies it */
  free(url);
  if (spec->body) {
    f->req_body_len = spec->body_len;
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->req_body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)spec->body_len);
  }
  if (strcmp(spec->method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (strcmp(spec->method, "GET") != 0 || spec->body)
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, spec->method);

  int has_expect = 0, has_accept = 0;
  char line[8192];
  for (int i = 0; i < spec->nheaders; i++) {
    const mg_fetch_line *h = &spec->headers[i];
    if (h->len >= 7 && strncasecmp(h->p, "expect:", 7) == 0) has_expect = 1;
    if (h->len >= 7 && strncasecmp(h->p, "accept:", 7) == 0) has_accept = 1;
    if (h->len < sizeof line) {
      memcpy(line, h->p, h->len);
      line[h->len] = '\0';
      f->req_headers = curl_slist_append(f->req_headers, line);
    } else {
      char *big = mg_xmalloc(h->len + 1);
      memcpy(big, h->p, h->len);
      big[h->len] = '\0';
      f->req_headers = curl_slist_append(f->req_headers, big);
      free(big);
    }
  }
  if (!has_expect) f->req_headers = curl_slist_append(f->req_headers, "Expect:");
  if (!has_accept) f->req_headers = curl_slist_append(f->req_headers, "Accept:");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->req_headers);

  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, spec->connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, spec->timeout_ms);
  if (spec->read_timeout_ms > 0) {
    /* curl's idle-read guard: under 1 byte/s for N whole seconds. */
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (spec->read_timeout_ms + 999) / 1000);
  }
  if (!spec->verify_tls) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (curl_multi_add_handle(w->curl_multi, e) != CURLM_OK) return -1;
  f->running = 1;
  return 0;
}

mg_fetch *mg_fetch_start(mg_worker *w, const mg_fetch_spec *spec, char *err, size_t errlen) {
  if (!w->curl_multi) {
    snprintf(err, errlen, "outgoing HTTP is not available in this worker");
    return NULL;
  }
  mg_fetch *f = fetch_new(w);
  if (spec->body) {                 /* both engines send it from here */
    f->req_body = mg_xmalloc(spec->body_len + 1);
    memcpy(f->req_body, spec->body, spec->body_len);
    f->req_body_len = spec->body_len;
  }
  int rc = mg_h1_start(f, spec);
  if (rc == MG_H1_DECLINED) {
    rc = curl_start(f, spec);
    if (rc != 0) snprintf(err, errlen, "could not start the transfer");
  }
  if (rc != 0) {
    mg_fetch_free(f);
    return NULL;
  }
  return f;
}

static void unready(mg_fetch *f) {
  if (!f->ready) return;
  mg_fetch **pp = &f->w->fetch_ready;
  while (*pp && *pp != f) pp = &(*pp)->next_ready;
  if (*pp) *pp = f->next_ready;
  f->ready = 0;
}

/* Stops whichever engine carries the transfer; it stays for info(). */
static void engine_stop(mg_fetch *f) {
  if (f->h1) mg_h1_stop(f);
  else if (f->running) curl_multi_remove_handle(f->w->curl_multi, f->easy);
  f->running = 0;
}

void mg_fetch_free(mg_fetch *f) {
  mg_worker *w = f->w;
  unready(f);
  engine_stop(f);
  mg_h1_free(f);
  if (f->easy) easy_put(w, f->easy);
  curl_slist_free_all(f->req_headers);
  free(f->req_body);
  if (f->prev_all) f->prev_all->next_all = f->next_all;
  else w->fetch_all = f->next_all;
  if (f->next_all) f->next_all->prev_all = f->prev_all;
  if (f->head.cap > FETCH_KEEP_BUF) mg_buf_free(&f->head);
  if (f->body.cap > FETCH_KEEP_BUF) mg_buf_free(&f->body);
  if (w->nfetch_free < FETCH_FREE_MAX && w->curl_multi) {
    f->next_all = w->fetch_free;           /* reset by fetch_new */
    w->fetch_free = f;
    w->nfetch_free++;
    mg_pool_poison(f, sizeof *f, &f->head, &f->body);
    return;
  }
  mg_buf_free(&f->head);
  mg_buf_free(&f->body);
  free(f);
}

void mg_fetch_cancel(mg_fetch *f) {
  engine_stop(f);
  f->waiter = NULL;
  f->on_wake = NULL;
  unready(f);
  if (!f->done) { f->done = 1; f->error = "closed"; }
  if (!f->lua_owned) mg_fetch_free(f);
}

void mg_fetch_abort(mg_fetch *f) {
  engine_stop(f);
  if (!f->done) {
    f->done = 1;
    f->error = "closed";
    snprintf(f->errbuf, sizeof f->errbuf, "the client closed the connection");
  }
  mg_fetch_notify(f);           /* resumed from the idle callback */
}

void mg_fetch_finish(mg_fetch *f, const char *error, const char *fmt, ...) {
  if (f->done) return;
  f->done = 1;
  f->running = 0;
  f->error = error;
  if (error) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->errbuf, sizeof f->errbuf, fmt, ap);
    va_end(ap);
  }
  mg_fetch_notify(f);
}

void mg_fetch_consumed(mg_fetch *f) {
  if (f->h1) { mg_h1_consumed(f); return; }
  if (f->paused && f->running && f->body.len - f->body_off <= f->max_buffer / 2) {
    f->paused = 0;
    /* May deliver the held-back data through write_cb right here. */
    curl_easy_pause(f->easy, CURLPAUSE_CONT);
  }
}

void mg_fetch_get_info(mg_fetch *f, mg_fetch_info *out) {
  if (f->h1) { mg_h1_info(f, out); return; }
  curl_off_t connect = 0, first = 0, total = 0;
  long conns = 0;
  char *ip = NULL;
  curl_easy_getinfo(f->easy, CURLINFO_CONNECT_TIME_T, &connect);
  curl_easy_getinfo(f->easy, CURLINFO_STARTTRANSFER_TIME_T, &first);
  curl_easy_getinfo(f->easy, CURLINFO_TOTAL_TIME_T, &total);
  curl_easy_getinfo(f->easy, CURLINFO_NUM_CONNECTS, &conns);
  curl_easy_getinfo(f->easy, CURLINFO_PRIMARY_IP, &ip);
  out->connect_ms = (double)connect / 1000.0;
  out->first_byte_ms = (double)first / 1000.0;
  out->total_ms = (double)total / 1000.0;
  out->ip = ip ? ip : "";
  out->reused = conns == 0;
}

const char *mg_fetch_error_kind(CURLcode rc) {
  switch (rc) {
    case CURLE_OK: return NULL;
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_ABORTED_BY_CALLBACK: return "closed";
    case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_RESOLVE_PROXY: return "dns";
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_GOT_NOTHING: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE: case CURLE_WEIRD_SERVER_REPLY: return "reset";
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE:
      return "tls";
    default: return "error";
  }
}

void mg_fetch_run_ready(mg_worker *w) {
  while (w->fetch_ready) {
    mg_fetch *f = w->fetch_ready;
    w->fetch_ready = f->next_ready;
    f->ready = 0;
    mg_coctx *cx = f->waiter;
    if (!cx) continue;
    f->waiter = NULL;
    f->wait = MG_FETCH_WAIT_NONE;
    cx->waiting = MG_WAIT_NONE;
    cx->fetch = NULL;
    /* The parked call's results, when its binding can give them now (one
     * Lua-to-C call per wait instead of two); else the Lua side asks again. */
    int nargs = f->on_wake ? f->on_wake(cx->co, f) : 0;
    f->on_wake = NULL;
    mg_coctx_resume(cx, nargs < 0 ? 0 : nargs);
  }
  /* Nothing left for the idle callback: do not let it spin the loop once
   * more with a zero poll timeout. */
  if (!w->fetch_ready && uv_is_active((uv_handle_t *)&w->fetch_idle))
    uv_idle_stop(&w->fetch_idle);
}

/* Collects finished curl transfers, then resumes every coroutine with news. */
static void after_curl(mg_worker *w) {
  CURLMsg *msg;
  int left;
  while (w->curl_multi && (msg = curl_multi_info_read(w->curl_multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    mg_fetch *f = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
    CURLcode rc = msg->data.result;
    f->running = 0;
    curl_multi_remove_handle(w->curl_multi, f->easy);
    if (!f->done) {
      f->done = 1;
      f->error = mg_fetch_error_kind(rc);
      if (f->error && !f->errbuf[0])
        snprintf(f->errbuf, sizeof f->errbuf, "%s", curl_easy_strerror(rc));
    }
    if (f->waiter) mg_fetch_notify(f);
    else if (!f->lua_owned) mg_fetch_free(f);
  }
  mg_fetch_run_ready(w);
}
