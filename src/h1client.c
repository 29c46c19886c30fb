/* The native HTTP/1.1 upstream client. See include/moongate/h1client.h.
 *
 * Flow of one exchange:
 *   mg_h1_start: parse the URL, build the request head; take an idle pooled
 *     connection for "host:port", or resolve (numeric hosts and "localhost"
 *     without DNS; names with uv_getaddrinfo) and connect;
 *   send_request: head + body in one writev (uv_try_write; uv_write for what
 *     the socket did not take);
 *   conn_read_cb: llhttp (HTTP_RESPONSE) fills the mg_fetch's head and body;
 *     on_message_complete pauses the parser; the exchange ends and the
 *     connection goes back to the pool or is closed;
 *   every path that changed a transfer ends with mg_fetch_run_ready, which
 *     resumes the waiting coroutines once this file's state is consistent.
 * Ownership: the exchange belongs to its mg_fetch; a connection points to
 * the exchange it serves (conn->x) and back (x->conn) only while busy. A
 * connection's memory is freed in its close callback, after libuv has
 * cancelled its pending connect/write requests (embedded in it). A pending
 * uv_getaddrinfo request is freed by its own callback; an exchange that
 * gives up on it just clears gai->data. */
#include "moongate/h1client.h"
#include "moongate/log.h"
#include "moongate/worker.h"

#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define H1_IDLE_TIMEOUT_MS 60000    /* as nginx's upstream keepalive_timeout */
#define H1_MAX_HEAD (64 * 1024)     /* response head limit */
#define H1_MAX_ADDRS 8
#define H1_KEY_MAX 280              /* "host:port": a DNS name is at most 253 */

typedef struct h1_conn h1_conn;

typedef union {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
} h1_addr;

enum { X_RESOLVING, X_CONNECTING, X_EXCHANGING, X_DONE };

struct mg_h1_exchange {
  mg_fetch *f;
  mg_h1_pool *pool;
  h1_conn *conn;                 /* while connecting or exchanging */
  uv_getaddrinfo_t *gai;         /* a lookup in flight */
  int state;                     /* X_* */
  char key[H1_KEY_MAX];          /* pool key: "host:port", host lower-case */
  char host[256];                /* without brackets */
  int port;
  h1_addr addrs[H1_MAX_ADDRS];
  int naddrs, next_addr;
  mg_buf out;                    /* the request head */
  uint8_t is_head;               /* HEAD: the answer has no body */
  uint8_t close_after;           /* we asked for Connection: close */
  uint8_t retried;               /* the stale-connection retry was used */
  uint8_t reused;                /* runs on a pooled connection */
  uint64_t deadline_ms;          /* total timeout */
  uint64_t connect_timeout_ms;
  uint64_t connect_deadline_ms;  /* while resolving/connecting */
  uint64_t read_timeout_ms, last_io_ms;
  uint64_t t_start, t_connect, t_first, t_end;   /* uv_hrtime() */
  char ip[64];
  mg_h1_exchange *run_prev, *run_next;   /* the pool's running exchanges */
  mg_h1_exchange *send_next;     /* queued for mg_h1_flush */
  uint8_t send_queued;
};

struct h1_conn {
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_write_t write_req;
  llhttp_t parser;
  mg_h1_pool *pool;
  mg_h1_exchange *x;             /* the exchange it serves; NULL while idle */
  char key[H1_KEY_MAX];
  char ip[64];
  uint8_t closing, connected, reading, writing;
  uint8_t got_bytes;             /* a byte of the current answer arrived */
  uint8_t complete;              /* the current answer is complete */
  uint8_t keep_alive;            /* the complete answer allows reuse */
  uint8_t in_pool;
  uint64_t idle_deadline_ms;
  h1_conn *idle_prev, *idle_next;
};

struct mg_h1_pool {
  mg_worker *w;
  int max_idle, nidle;
  h1_conn *idle_head, *idle_tail;         /* most recently used first */
  mg_h1_exchange *running;
  mg_h1_exchange *send_head, **send_tail;   /* requests waiting for mg_h1_flush */
  mg_h1_exchange *free_x;                   /* finished exchanges kept for reuse */
  int nfree_x;
};

static const llhttp_settings_t *response_settings(void);
static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void begin_connect(mg_h1_exchange *x);
static void connect_next(mg_h1_exchange *x);
static void send_request(mg_h1_exchange *x);

static uint64_t now_ms(mg_h1_pool *pool) { return uv_now(&pool->w->loop); }

/* ---- pool and connections ----------------------------------------------- */

mg_h1_pool *mg_h1_pool_new(mg_worker *w, int max_idle) {
  mg_h1_pool *pool = mg_xcalloc(1, sizeof *pool);
  pool->w = w;
  pool->max_idle = max_idle > 0 ? max_idle : 0;
  return pool;
}

static void idle_unlink(h1_conn *c) {
  mg_h1_pool *pool = c->pool;
  if (c->idle_prev) c->idle_prev->idle_next = c->idle_next;
  else pool->idle_head = c->idle_next;
  if (c->idle_next) c->idle_next->idle_prev = c->idle_prev;
  else pool->idle_tail = c->idle_prev;
  c->idle_prev = c->idle_next = NULL;
  c->in_pool = 0;
  pool->nidle--;
}

static void conn_free_cb(uv_handle_t *h) { free(h->data); }

/* Closes a connection, whatever it was doing. Its exchange (if any) must
 * already have let go of it. */
static void conn_close(h1_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  if (c->in_pool) idle_unlink(c);
  if (c->x) { c->x->conn = NULL; c->x = NULL; }
  uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  h1_conn *c = h->data;
  /* The worker's read buffer: conn_read_cb consumes all of it at once, and
   * no read callback runs inside another. */
  buf->base = c->pool->w->readbuf;
  buf->len = sizeof c->pool->w->readbuf;
}

static void conn_start_reading(h1_conn *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, conn_read_cb) == 0) c->reading = 1;
}

static void conn_stop_reading(h1_conn *c) {
  if (!c->reading) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

/* A connection whose answer is complete: back to the pool, or closed. */
static void conn_release(h1_conn *c, int reusable) {
  mg_h1_pool *pool = c->pool;
  if (c->x) { c->x->conn = NULL; c->x = NULL; }
  if (!reusable || c->writing || pool->max_idle == 0 || pool->w->stopping) {
    conn_close(c);
    return;
  }
  if (pool->nidle >= pool->max_idle) conn_close(pool->idle_tail);   /* the least recently used */
  c->idle_prev = NULL;
  c->idle_next = pool->idle_head;
  if (pool->idle_head) pool->idle_head->idle_prev = c;
  else pool->idle_tail = c;
  pool->idle_head = c;
  c->in_pool = 1;
  pool->nidle++;
  c->idle_deadline_ms = now_ms(pool) + H1_IDLE_TIMEOUT_MS;
  /* Keep reading: an idle connection that hears anything (EOF above all)
   * is closed in conn_read_cb. */
  conn_start_reading(c);
}

static h1_conn *pool_take(mg_h1_pool *pool, const char *key) {
  for (h1_conn *c = pool->idle_head; c; c = c->idle_next) {
    if (strcmp(c->key, key) == 0) {
      idle_unlink(c);
      return c;
    }
  }
  return NULL;
}

void mg_h1_pool_free(mg_h1_pool *pool) {
  if (!pool) return;
  while (pool->running) {               /* should not happen: fetch.c cancels first */
    mg_h1_exchange *x = pool->running;
    mg_h1_stop(x->f);
  }
  while (pool->idle_head) conn_close(pool->idle_head);
  while (pool->free_x) {
    mg_h1_exchange *x = pool->free_x;
    mg_pool_unpoison(x, sizeof *x, &x->out, NULL);
    pool->free_x = x->run_next;
    mg_buf_free(&x->out);
    free(x);
  }
  free(pool);
}

/* ---- exchange bookkeeping ----------------------------------------------- */

static void running_add(mg_h1_exchange *x) {
  mg_h1_pool *pool = x->pool;
  x->run_prev = NULL;
  x->run_next = pool->running;
  if (pool->running) pool->running->run_prev = x;
  pool->running = x;
}

static void running_remove(mg_h1_exchange *x) {
  mg_h1_pool *pool = x->pool;
  if (x->run_prev) x->run_prev->run_next = x->run_next;
  else if (pool->running == x) pool->running = x->run_next;
  if (x->run_next) x->run_next->run_prev = x->run_prev;
  x->run_prev = x->run_next = NULL;
}

static void abandon_lookup(mg_h1_exchange *x) {
  if (!x->gai) return;
  x->gai->data = NULL;             /* its callback frees it */
  uv_cancel((uv_req_t *)x->gai);
  x->gai = NULL;
}

/* Ends the exchange with an error; its connection (if any) is closed. */
static void fail(mg_h1_exchange *x, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(mg_h1_exchange *x, const char *kind, const char *fmt, ...) {
  if (x->state == X_DONE) return;
  mg_fetch *f = x->f;
  abandon_lookup(x);
  if (x->conn) conn_close(x->conn);
  x->state = X_DONE;
  x->t_end = uv_hrtime();
  running_remove(x);
  va_list ap;
  va_start(ap, fmt);
  char msg[CURL_ERROR_SIZE];
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mg_fetch_finish(f, kind, "%s", msg);
}

/* The answer is complete: the exchange ends well. */
static void succeed(mg_h1_exchange *x, int reusable) {
  if (x->state == X_DONE) return;
  h1_conn *c = x->conn;
  x->state = X_DONE;
  x->t_end = uv_hrtime();
  running_remove(x);
  if (c) conn_release(c, reusable);
  mg_fetch_finish(x->f, NULL, "%s", "");
}

static uint64_t elapsed_ms(mg_h1_exchange *x) { return (uv_hrtime() - x->t_start) / 1000000; }

/* A reused connection died before any byte of the answer: the peer closed
 * it while it sat in the pool. Try once more on a new connection. */
static int retry_stale(mg_h1_exchange *x) {
  h1_conn *c = x->conn;
  if (!c || !x->reused || x->retried || c->got_bytes) return 0;
  x->retried = 1;
  x->reused = 0;
  conn_close(c);
  begin_connect(x);
  return 1;
}

/* ---- response parsing --------------------------------------------------- */

#define CONN_OF(p) ((h1_conn *)(p)->data)

static int on_message_begin(llhttp_t *p) {
  h1_conn *c = CONN_OF(p);
  mg_fetch *f = c->x->f;
  f->head.len = 0;          /* a 1xx head before this one is forgotten */
  return 0;
}

static int head_add(llhttp_t *p, const char *at, size_t len) {
  mg_fetch *f = CONN_OF(p)->x->f;
  if (f->head.len + len > H1_MAX_HEAD) {
    llhttp_set_error_reason(p, "response head too large");
    return HPE_USER;
  }
  mg_buf_append(&f->head, at, len);
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  return head_add(p, at, len);
}

static int on_header_field_complete(llhttp_t *p) { return head_add(p, ": ", 2); }

static int on_header_value_complete(llhttp_t *p) { return head_add(p, "\r\n", 2); }

static int on_headers_complete(llhttp_t *p) {
  h1_conn *c = CONN_OF(p);
  mg_h1_exchange *x = c->x;
  mg_fetch *f = x->f;
  f->status = p->status_code;
  if (f->status < 100 || f->status > 999) {
    llhttp_set_error_reason(p, "invalid status code");
    return HPE_USER;
  }
  /* 1 = no body. llhttp would read a body a 204/304 announces with a
   * Content-Length (legal for 304), so say it here, as for HEAD. */
  int no_body = x->is_head || f->status < 200 || f->status == 204 || f->status == 304;
  if (f->status < 200 && f->status != 101) return 1;   /* interim: the final head follows */
  f->head_done = 1;
  if (!x->t_first) x->t_first = uv_hrtime();
  mg_fetch_notify(f);
  return no_body;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  mg_fetch *f = CONN_OF(p)->x->f;
  mg_fetch_body_append(f, at, len);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  h1_conn *c = CONN_OF(p);
  if (c->x->f->status < 200 && c->x->f->status != 101) return 0;   /* go on to the final answer */
  c->complete = 1;
  /* Now, while the flags still describe this message. */
  c->keep_alive = (uint8_t)llhttp_should_keep_alive(p) && c->x->f->status != 101;
  return HPE_PAUSED;
}

static const llhttp_settings_t *response_settings(void) {
  static llhttp_settings_t s;
  static int done;
  if (!done) {                     /* idempotent: the same values every time */
    llhttp_settings_init(&s);
    s.on_message_begin = on_message_begin;
    s.on_header_field = on_header_field;
    s.on_header_field_complete = on_header_field_complete;
    s.on_header_value = head_add;
    s.on_header_value_complete = on_header_value_complete;
    s.on_headers_complete = on_headers_complete;
    s.on_body = on_body;
    s.on_message_complete = on_message_complete;
    done = 1;
  }
  return &s;
}

/* The end of the stream while an exchange reads: a close-delimited body
 * ends here; anything else is a broken answer (or a stale connection). */
static void conn_eof(h1_conn *c, ssize_t nread) {
  mg_h1_exchange *x = c->x;
  if (retry_stale(x)) return;
  if (c->got_bytes && nread == UV_EOF) {
    llhttp_errno_t e = llhttp_finish(&c->parser);
    if (e == HPE_OK || e == HPE_PAUSED) {
      if (c->complete) { succeed(x, 0); return; }
    }
  }
  if (!c->got_bytes)
    fail(x, "reset", nread == UV_EOF ? "Empty reply from server"
                                     : "Recv failure: %s", uv_strerror((int)nread));
  else if (x->f->head_done)
    fail(x, "reset", "transfer closed with outstanding read data remaining");
  else
    fail(x, "reset", "upstream closed the connection in the response head");
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  h1_conn *c = s->data;
  if (nread == 0 || c->closing) return;
  mg_h1_exchange *x = c->x;
  if (!x) {                      /* idle in the pool: EOF, error or stray bytes */
    conn_close(c);
    return;
  }
  mg_worker *w = c->pool->w;
  if (nread < 0) {
    conn_eof(c, nread);
    mg_fetch_run_ready(w);
    return;
  }
  c->got_bytes = 1;
  x->last_io_ms = now_ms(c->pool);
  if (!x->t_first) x->t_first = uv_hrtime();
  llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
    /* Complete. Reuse only a keep-alive connection with nothing after the
     * answer (an upstream that sends more is out of step with us). */
    size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - buf->base);
    int reusable = e == HPE_PAUSED && used == (size_t)nread && c->keep_alive &&
                   !x->close_after;
    succeed(x, reusable);
  } else if (e != HPE_OK) {
    const char *why = llhttp_get_error_reason(&c->parser);
    fail(x, "reset", "malformed response from upstream: %s", why ? why : llhttp_errno_name(e));
  } else if (x->f->body.len - x->f->body_off > x->f->max_buffer) {
    /* The reader is behind: hold back until it catches up (mg_h1_consumed). */
    x->f->paused = 1;
    conn_stop_reading(c);
  }
  mg_fetch_run_ready(w);
}

/* ---- connecting and sending --------------------------------------------- */

static void write_cb(uv_write_t *wr, int status) {
  h1_conn *c = wr->data;
  c->writing = 0;
  if (status == UV_ECANCELED || c->closing) return;
  mg_h1_exchange *x = c->x;
  if (!x) {                      /* the answer came before the request was out */
    if (status < 0) conn_close(c);
    return;
  }
  if (status < 0 && !c->got_bytes) {
    /* If the upstream answered early, the read side has it; else it died. */
    if (!retry_stale(x)) fail(x, "reset", "Send failure: %s", uv_strerror(status));
    mg_fetch_run_ready(c->pool->w);
  }
}

/* Requests are written once per loop turn (mg_h1_flush, from the worker's
 * prepare phase), not when Lua asks: the upstream then wakes once for the
 * whole batch instead of once per request, which on one core saves a
 * context switch per request. */
static void queue_send(mg_h1_exchange *x) {
  mg_h1_pool *pool = x->pool;
  x->state = X_EXCHANGING;
  x->last_io_ms = now_ms(pool);
  x->send_queued = 1;
  x->send_next = NULL;
  if (!pool->send_tail) pool->send_tail = &pool->send_head;
  *pool->send_tail = x;
  pool->send_tail = &x->send_next;
}

static void unqueue_send(mg_h1_exchange *x) {
  if (!x->send_queued) return;
  mg_h1_pool *pool = x->pool;
  mg_h1_exchange **pp = &pool->send_head;
  while (*pp && *pp != x) pp = &(*pp)->send_next;
  if (*pp) *pp = x->send_next;
  if (pool->send_tail == &x->send_next) pool->send_tail = pp;
  x->send_queued = 0;
}

int mg_h1_flush(mg_worker *w) {
  mg_h1_pool *pool = w->h1pool;
  int n = 0;
  /* Coroutines resumed here (a failed send) may queue new requests: they
   * go out in this same pass, since the loop is about to poll. */
  while (pool && pool->send_head) {
    mg_h1_exchange *x = pool->send_head;
    pool->send_head = NULL;
    pool->send_tail = &pool->send_head;
    while (x) {
      mg_h1_exchange *next = x->send_next;
      x->send_queued = 0;
      send_request(x);
      n++;
      x = next;
    }
    mg_fetch_run_ready(w);
  }
  return n;
}

static void send_request(mg_h1_exchange *x) {
  h1_conn *c = x->conn;
  mg_fetch *f = x->f;
  uv_buf_t bufs[2];
  unsigned nbufs = 0;
  bufs[nbufs++] = uv_buf_init(x->out.data, (unsigned)x->out.len);
  if (f->req_body_len) bufs[nbufs++] = uv_buf_init(f->req_body, (unsigned)f->req_body_len);
  size_t total = x->out.len + f->req_body_len;
  x->state = X_EXCHANGING;
  x->last_io_ms = now_ms(x->pool);
  c->got_bytes = 0;
  c->complete = 0;
  llhttp_init(&c->parser, HTTP_RESPONSE, response_settings());
  c->parser.data = c;
  conn_start_reading(c);
  int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
  if (n == (int)total) return;
  if (n < 0 && n != UV_EAGAIN) {
    if (!retry_stale(x)) fail(x, "reset", "Send failure: %s", uv_strerror(n));
    return;
  }
  size_t skip = n > 0 ? (size_t)n : 0;
  unsigned first = 0;
  while (first < nbufs && skip >= bufs[first].len) skip -= bufs[first++].len;
  bufs[first].base += skip;
  bufs[first].len -= skip;
  /* The bytes stay valid: the head is x->out, the body f->req_body, and both
   * outlive the connection's use by this exchange (a cancelled write is
   * only reported, never performed, once the handle closes). */
  c->write_req.data = c;
  int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs + first, nbufs - first, write_cb);
  if (rc != 0) {
    if (!retry_stale(x)) fail(x, "reset", "Send failure: %s", uv_strerror(rc));
    return;
  }
  c->writing = 1;
}

static void connect_cb(uv_connect_t *req, int status) {
  h1_conn *c = req->data;
  if (status == UV_ECANCELED || c->closing) return;
  mg_h1_exchange *x = c->x;
  mg_worker *w = c->pool->w;
  if (status < 0) {
    conn_close(c);
    if (x->next_addr < x->naddrs) connect_next(x);
    else fail(x, "connect", "Failed to connect to %s port %d: %s", x->host, x->port,
              uv_strerror(status));
    mg_fetch_run_ready(w);
    return;
  }
  c->connected = 1;
  x->t_connect = uv_hrtime();
  x->connect_deadline_ms = 0;
  send_request(x);
  mg_fetch_run_ready(w);
}

static void format_addr(const h1_addr *a, char *out, size_t outlen) {
  if (a->sa.sa_family == AF_INET) uv_ip4_name(&a->v4, out, outlen);
  else uv_ip6_name(&a->v6, out, outlen);
}

/* Connects to the next address of the exchange. */
static void connect_next(mg_h1_exchange *x) {
  mg_h1_pool *pool = x->pool;
  while (x->next_addr < x->naddrs) {
    const h1_addr *a = &x->addrs[x->next_addr++];
    h1_conn *c = mg_xcalloc(1, sizeof *c);
    c->pool = pool;
    memcpy(c->key, x->key, sizeof c->key);
    format_addr(a, c->ip, sizeof c->ip);
    memcpy(x->ip, c->ip, sizeof x->ip);
    uv_tcp_init(&pool->w->loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 60);
    c->x = x;
    x->conn = c;
    x->state = X_CONNECTING;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, &a->sa, connect_cb);
    if (rc == 0) return;
    conn_close(c);
    if (x->next_addr >= x->naddrs) {
      fail(x, "connect", "Failed to connect to %s port %d: %s", x->host, x->port, uv_strerror(rc));
      return;
    }
  }
  fail(x, "connect", "Failed to connect to %s port %d", x->host, x->port);
}

static void resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  mg_h1_exchange *x = req->data;
  if (!x) {                      /* abandoned */
    if (res) uv_freeaddrinfo(res);
    free(req);
    return;
  }
  x->gai = NULL;
  free(req);
  mg_worker *w = x->pool->w;
  x->naddrs = x->next_addr = 0;
  for (struct addrinfo *ai = res; ai && x->naddrs < H1_MAX_ADDRS; ai = ai->ai_next) {
    if (ai->ai_family == AF_INET && ai->ai_addrlen >= sizeof(struct sockaddr_in))
      memcpy(&x->addrs[x->naddrs++].v4, ai->ai_addr, sizeof(struct sockaddr_in));
    else if (ai->ai_family == AF_INET6 && ai->ai_addrlen >= sizeof(struct sockaddr_in6))
      memcpy(&x->addrs[x->naddrs++].v6, ai->ai_addr, sizeof(struct sockaddr_in6));
  }
  if (res) uv_freeaddrinfo(res);
  if (status < 0 || x->naddrs == 0)
    fail(x, "dns", "Could not resolve host: %s", x->host);
  else
    connect_next(x);
  mg_fetch_run_ready(w);
}

/* Numeric hosts and "localhost" need no lookup (libcurl answers localhost
 * itself too); names go to the threadpool through uv_getaddrinfo. */
static void begin_connect(mg_h1_exchange *x) {
  mg_h1_pool *pool = x->pool;
  x->connect_deadline_ms = x->connect_timeout_ms ? now_ms(pool) + x->connect_timeout_ms : 0;
  x->naddrs = x->next_addr = 0;
  if (uv_ip4_addr(x->host, x->port, &x->addrs[0].v4) == 0) {
    x->naddrs = 1;
  } else if (strchr(x->host, ':') && uv_ip6_addr(x->host, x->port, &x->addrs[0].v6) == 0) {
    x->naddrs = 1;
  } else if (strcasecmp(x->host, "localhost") == 0) {
    uv_ip4_addr("127.0.0.1", x->port, &x->addrs[0].v4);
    uv_ip6_addr("::1", x->port, &x->addrs[1].v6);
    x->naddrs = 2;
  }
  if (x->naddrs) {
    connect_next(x);
    return;
  }
  x->state = X_RESOLVING;
  uv_getaddrinfo_t *req = mg_xcalloc(1, sizeof *req);
  req->data = x;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  char port[8];
  snprintf(port, sizeof port, "%d", x->port);
  int rc = uv_getaddrinfo(&pool->w->loop, req, resolved_cb, x->host, port, &hints);
  if (rc != 0) {
    free(req);
    fail(x, "dns", "Could not resolve host: %s (%s)", x->host, uv_strerror(rc));
    return;
  }
  x->gai = req;
}

/* ---- URL and request head ----------------------------------------------- */

typedef struct {
  const char *host; size_t host_len;   /* without brackets */
  int bracketed;
  int port;
  const char *path; size_t path_len;   /* from '/' or '?', before '#'; may be empty */
} h1_url;

static int host_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '-' || ch == '.' || ch == '_';
}

/* http://host[:port][/path][?query][#fragment]; 0 on success. Anything
 * else (userinfo, odd bytes) is left to libcurl. */
static int parse_url(const char *url, size_t len, h1_url *u) {
  if (len < 8 || strncasecmp(url, "http://", 7) != 0) return -1;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)url[i];
    if (ch <= 0x20 || ch >= 0x7f) return -1;
  }
  const char *p = url + 7, *end = url + len;
  const char *auth_end = p;
  while (auth_end < end && *auth_end != '/' && *auth_end != '?' && *auth_end != '#') auth_end++;
  if (memchr(p, '@', (size_t)(auth_end - p))) return -1;
  const char *port_start = NULL;
  u->bracketed = 0;
  if (p < auth_end && *p == '[') {
    const char *rb = memchr(p, ']', (size_t)(auth_end - p));
    if (!rb) return -1;
    u->host = p + 1;
    u->host_len = (size_t)(rb - p - 1);
    u->bracketed = 1;
    for (size_t i = 0; i < u->host_len; i++) {
      char ch = u->host[i];
      if (!(ch == ':' || ch == '.' || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
            (ch >= 'A' && ch <= 'F'))) return -1;
    }
    if (rb + 1 < auth_end) {
      if (rb[1] != ':') return -1;
      port_start = rb + 2;
    }
  } else {
    const char *colon = memchr(p, ':', (size_t)(auth_end - p));
    u->host = p;
    u->host_len = (size_t)((colon ? colon : auth_end) - p);
    for (size_t i = 0; i < u->host_len; i++) if (!host_char(u->host[i])) return -1;
    if (colon) port_start = colon + 1;
  }
  if (u->host_len == 0 || u->host_len > 253) return -1;
  u->port = 80;
  if (port_start) {
    if (port_start == auth_end || auth_end - port_start > 5) return -1;
    int port = 0;
    for (const char *q = port_start; q < auth_end; q++) {
      if (*q < '0' || *q > '9') return -1;
      port = port * 10 + (*q - '0');
    }
    if (port < 1 || port > 65535) return -1;
    u->port = port;
  }
  const char *hash = memchr(auth_end, '#', (size_t)(end - auth_end));
  u->path = auth_end;
  u->path_len = (size_t)((hash ? hash : end) - auth_end);
  return 0;
}

static int line_is(const mg_fetch_line *l, const char *name, size_t nlen) {
  return l->len > nlen && l->p[nlen] == ':' && strncasecmp(l->p, name, nlen) == 0;
}

/* The value of a "Name: value" line, trimmed; NULL if it has no colon. */
static const char *line_value(const mg_fetch_line *l, size_t *vlen) {
  const char *colon = memchr(l->p, ':', l->len);
  if (!colon) return NULL;
  const char *v = colon + 1, *e = l->p + l->len;
  while (v < e && (*v == ' ' || *v == '\t')) v++;
  while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
  *vlen = (size_t)(e - v);
  return v;
}

/* Whether the native client carries this request; its URL parsed into u. */
static int accepts(const mg_fetch_spec *spec, h1_url *u) {
  if (parse_url(spec->url, spec->url_len, u) != 0) return 0;
  for (const char *m = spec->method; *m; m++)
    if (!((*m >= 'A' && *m <= 'Z') || *m == '-' || *m == '_')) return 0;
  if (!spec->method[0] || strcmp(spec->method, "CONNECT") == 0) return 0;
  for (int i = 0; i < spec->nheaders; i++) {
    /* A caller-chosen framing or an upgrade is what libcurl handles (or
     * refuses) its own way: leave those to it. */
    if (line_is(&spec->headers[i], "transfer-encoding", 17) ||
        line_is(&spec->headers[i], "upgrade", 7))
      return 0;
  }
  return 1;
}

/* Builds the request head the way libcurl would send it for the same
 * options (see lua_fetch.c): "Host" unless given, the caller's headers (a
 * "Name:" line without a value sends nothing, "Name;" sends an empty one),
 * Content-Length when there is a body, no Accept/Expect/User-Agent of our
 * own. */
static void build_head(mg_h1_exchange *x, const mg_fetch_spec *spec, const h1_url *u) {
  mg_buf *b = &x->out;
  mg_buf_appends(b, spec->method);
  mg_buf_append(b, " ", 1);
  if (u->path_len == 0 || u->path[0] == '?') mg_buf_append(b, "/", 1);
  mg_buf_append(b, u->path, u->path_len);
  mg_buf_append(b, " HTTP/1.1\r\n", 11);
  int has_host = 0, has_length = 0;
  for (int i = 0; i < spec->nheaders; i++) {
    const mg_fetch_line *l = &spec->headers[i];
    if (line_is(l, "host", 4)) has_host = 1;
    else if (line_is(l, "content-length", 14)) has_length = 1;
  }
  if (!has_host) {
    mg_buf_append(b, "Host: ", 6);
    if (u->bracketed) mg_buf_append(b, "[", 1);
    mg_buf_append(b, u->host, u->host_len);
    if (u->bracketed) mg_buf_append(b, "]", 1);
    if (u->port != 80) {
      mg_buf_append(b, ":", 1);
      mg_buf_append_uint(b, (uint64_t)u->port);
    }
    mg_buf_append(b, "\r\n", 2);
  }
  for (int i = 0; i < spec->nheaders; i++) {
    const mg_fetch_line *l = &spec->headers[i];
    size_t vlen;
    const char *v = line_value(l, &vlen);
    if (!v) {
      const char *semi = memchr(l->p, ';', l->len);
      if (semi && (size_t)(semi - l->p) + 1 == l->len) {   /* "Name;": empty value */
        mg_buf_append(b, l->p, (size_t)(semi - l->p));
        mg_buf_append(b, ":\r\n", 3);
      }
      continue;
    }
    if (vlen == 0) continue;
    if (line_is(l, "connection", 10)) {
      for (size_t k = 0; k + 5 <= vlen; k++)
        if (strncasecmp(v + k, "close", 5) == 0) x->close_after = 1;
    }
    mg_buf_append(b, l->p, l->len);
    mg_buf_append(b, "\r\n", 2);
  }
  if (spec->body && !has_length) {
    mg_buf_append(b, "Content-Length: ", 16);
    mg_buf_append_uint(b, spec->body_len);
    mg_buf_append(b, "\r\n", 2);
  }
  mg_buf_append(b, "\r\n", 2);
}

/* ---- the engine interface (fetch.c) ------------------------------------- */

int mg_h1_start(mg_fetch *f, const mg_fetch_spec *spec) {
  mg_worker *w = f->w;
  h1_url u;
  if (!w->h1pool || !accepts(spec, &u)) return MG_H1_DECLINED;
  mg_h1_pool *pool = w->h1pool;
  mg_h1_exchange *x = pool->free_x;
  if (x) {                       /* reused with its head buffer */
    mg_pool_unpoison(x, sizeof *x, &x->out, NULL);
    pool->free_x = x->run_next;
    pool->nfree_x--;
    mg_buf out = x->out;
    memset(x, 0, sizeof *x);
    out.len = 0;
    x->out = out;
  } else {
    x = mg_xcalloc(1, sizeof *x);
  }
  x->f = f;
  x->pool = pool;
  f->h1 = x;
  memcpy(x->host, u.host, u.host_len);
  x->host[u.host_len] = '\0';
  x->port = u.port;
  size_t k = 0;
  for (size_t i = 0; i < u.host_len; i++) {
    char ch = u.host[i];
    x->key[k++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
  }
  /* ":port" without printf: this runs per request. */
  char digits[8];
  int nd = 0;
  for (int port = u.port; port > 0; port /= 10) digits[nd++] = (char)('0' + port % 10);
  x->key[k++] = ':';
  while (nd > 0) x->key[k++] = digits[--nd];
  x->key[k] = '\0';
  x->is_head = strcmp(spec->method, "HEAD") == 0;
  build_head(x, spec, &u);
  uint64_t now = now_ms(x->pool);
  x->t_start = uv_hrtime();
  x->deadline_ms = spec->timeout_ms > 0 ? now + (uint64_t)spec->timeout_ms : 0;
  x->read_timeout_ms = spec->read_timeout_ms > 0 ? (uint64_t)spec->read_timeout_ms : 0;
  x->connect_timeout_ms = spec->connect_timeout_ms > 0 ? (uint64_t)spec->connect_timeout_ms : 0;
  f->running = 1;
  running_add(x);
  h1_conn *c = pool_take(x->pool, x->key);
  if (c) {
    c->x = x;
    x->conn = c;
    x->reused = 1;
    memcpy(x->ip, c->ip, sizeof x->ip);
    x->t_connect = x->t_start;
    queue_send(x);
  } else {
    begin_connect(x);
  }
  /* A failure right here (refused synchronously...) is reported through the
   * transfer like any other: mg_fetch_notify has queued nothing yet, since
   * nobody waits before core.fetch returns. */
  return 0;
}

void mg_h1_stop(mg_fetch *f) {
  mg_h1_exchange *x = f->h1;
  if (!x || x->state == X_DONE) return;
  unqueue_send(x);
  abandon_lookup(x);
  if (x->conn) conn_close(x->conn);   /* mid-answer: cannot be reused */
  x->state = X_DONE;
  x->t_end = uv_hrtime();
  running_remove(x);
  f->running = 0;
}

void mg_h1_free(mg_fetch *f) {
  mg_h1_exchange *x = f->h1;
  if (!x) return;
  mg_h1_stop(f);
  f->h1 = NULL;
  mg_h1_pool *pool = x->pool;
  if (pool->nfree_x < 64 && x->out.cap <= 16384) {
    x->run_next = pool->free_x;            /* reset by mg_h1_start */
    pool->free_x = x;
    pool->nfree_x++;
    mg_pool_poison(x, sizeof *x, &x->out, NULL);
    return;
  }
  mg_buf_free(&x->out);
  free(x);
}

void mg_h1_consumed(mg_fetch *f) {
  mg_h1_exchange *x = f->h1;
  if (!x || !f->paused || f->body.len - f->body_off > f->max_buffer / 2) return;
  f->paused = 0;
  if (x->conn && x->state == X_EXCHANGING) {
    x->last_io_ms = now_ms(x->pool);
    conn_start_reading(x->conn);
  }
}

void mg_h1_info(mg_fetch *f, mg_fetch_info *out) {
  mg_h1_exchange *x = f->h1;
  uint64_t end = x->t_end ? x->t_end : uv_hrtime();
  out->connect_ms = x->t_connect ? (double)(x->t_connect - x->t_start) / 1e6 : 0;
  out->first_byte_ms = x->t_first ? (double)(x->t_first - x->t_start) / 1e6 : 0;
  out->total_ms = (double)(end - x->t_start) / 1e6;
  out->ip = x->ip;
  out->reused = x->reused;
}

void mg_h1_tick(mg_worker *w) {
  mg_h1_pool *pool = w->h1pool;
  if (!pool) return;
  uint64_t now = now_ms(pool);
  int fired = 0;
  mg_h1_exchange *x = pool->running;
  while (x) {
    mg_h1_exchange *next = x->run_next;     /* fail() unlinks x */
    if (x->deadline_ms && now >= x->deadline_ms) {
      fail(x, "timeout", "Operation timed out after %llu milliseconds with %zu bytes received",
           (unsigned long long)elapsed_ms(x), x->f->body.len);
      fired = 1;
    } else if (x->connect_deadline_ms && now >= x->connect_deadline_ms &&
               (x->state == X_RESOLVING || x->state == X_CONNECTING)) {
      fail(x, "timeout", "Connection timed out after %llu milliseconds",
           (unsigned long long)elapsed_ms(x));
      fired = 1;
    } else if (x->read_timeout_ms && x->state == X_EXCHANGING && !x->f->paused &&
               now - x->last_io_ms >= x->read_timeout_ms) {
      fail(x, "timeout", "Operation too slow: nothing received for %llu milliseconds",
           (unsigned long long)(now - x->last_io_ms));
      fired = 1;
    }
    x = next;
  }
  while (pool->idle_tail && pool->idle_tail->idle_deadline_ms <= now) conn_close(pool->idle_tail);
  if (fired) mg_fetch_run_ready(w);
}
