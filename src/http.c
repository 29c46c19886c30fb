/* HTTP/1.1 connections: reading, parsing with llhttp, dispatching requests to
 * the application, and writing responses. See include/moongate/http.h.
 *
 * Flow of one connection:
 *   read_cb -> conn_feed -> llhttp callbacks build c->req
 *   on_message_complete pauses the parser; conn_feed dispatches the request
 *   the Lua side answers through mg_response_* ; response_complete detaches
 *   the request and the connection goes on with the pipelined bytes, waits
 *   idle for the next request, or closes.
 * Bytes that arrive while a request is being served are kept in c->pending
 * (bounded), so pipelining works and a client's EOF is still noticed. */
#include "moongate/http.h"
#include "moongate/app.h"
#include "moongate/fetch.h"
#include "moongate/log.h"
#include "moongate/worker.h"

#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRITE_HIGH_WATER (256 * 1024)
#define WRITE_LOW_WATER (64 * 1024)
#define LINGER_MS 2000

typedef struct {
  uv_write_t req;
  mg_conn *conn;
  uint32_t len;
  char data[];
} write_req;

static const llhttp_settings_t *parser_settings(void);
static void conn_feed(mg_conn *c, const char *data, size_t len);
static void conn_resume(mg_conn *c);
static void conn_end(mg_conn *c);
static void format_peer(mg_conn *c, mg_request *req);

const char *mg_status_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

/* ---- connection lifetime ------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  mg_conn *c = h->data;
  /* One buffer per worker: read_cb consumes or copies everything it gets. */
  buf->base = c->w->readbuf;
  buf->len = sizeof c->w->readbuf;
}

static void close_cb(uv_handle_t *h) {
  mg_conn *c = h->data;
  free(c->pending);
  free(c);
}

/* Forgets the current request: a dispatched one lives on with its coroutine,
 * a half-parsed one is released. */
static void conn_drop_request(mg_conn *c) {
  mg_request *req = c->req;
  if (!req) return;
  c->req = NULL;
  req->conn = NULL;
  if (!c->dispatched) mg_worker_request_release(c->w, req);
  else if (req->co && req->co->waiting == MG_WAIT_DRAIN) {
    /* A streaming writer waits for the queue to drain: tell it the client left. */
    lua_State *co = req->co->co;
    req->co->waiting = MG_WAIT_NONE;
    lua_pushnil(co);
    lua_pushliteral(co, "closed");
    mg_coctx_resume(req->co, 2);
  } else if (req->co && req->co->waiting == MG_WAIT_FETCH && req->co->fetch) {
    /* Waiting on an upstream for a client that left: stop the transfer. */
    mg_fetch_abort(req->co->fetch);
  }
}

void mg_conn_close(mg_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  mg_worker_set_timeout(c->w, c, MG_TL_NONE, 0);
  mg_worker_conn_removed(c->w, c);
  conn_drop_request(c);
  uv_close((uv_handle_t *)&c->tcp, close_cb);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void start_reading(mg_conn *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0) c->reading = 1;
}

static void stop_reading(mg_conn *c) {
  if (!c->reading) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

void mg_http_accept(mg_worker *w, uv_stream_t *listener) {
  mg_conn *c = mg_xcalloc(1, sizeof *c);
  c->w = w;
  uv_tcp_init(&w->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    /* Another worker took it first (shared listener): not an error. */
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, close_cb);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  int sl = sizeof c->peer;
  if (uv_tcp_getpeername(&c->tcp, &c->peer.sa, &sl) != 0) c->peer.sa.sa_family = AF_UNSPEC;
  llhttp_init(&c->parser, HTTP_REQUEST, parser_settings());
  c->parser.data = c;
  mg_worker_conn_added(w, c);
  mg_worker_set_timeout(w, c, MG_TL_HEAD, w->app->settings.header_timeout_ms);
  start_reading(c);
}

/* ---- writing ------------------------------------------------------------ */

static void linger_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) mg_conn_close(s->data);   /* the client closed too: done */
}

static void shutdown_cb(uv_shutdown_t *sr, int status) {
  mg_conn *c = sr->data;
  free(sr);
  if (c->closing) return;
  if (status != 0) { mg_conn_close(c); return; }
  /* Keep reading (and dropping) what the client still sends for a moment, so
   * the kernel does not answer it with a reset that destroys our response. */
  stop_reading(c);
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, linger_read_cb) == 0) c->reading = 1;
  mg_worker_set_timeout(c->w, c, MG_TL_LINGER, LINGER_MS);
}

/* Closes after the queued bytes are written: shut down our side, linger. */
static void conn_end(mg_conn *c) {
  if (c->closing || c->peer_eof == 2) return;
  c->peer_eof = 2;                     /* 2: ending, no more requests */
  conn_drop_request(c);
  if (c->write_queued > 0) return;     /* write_cb comes back here */
  uv_shutdown_t *sr = mg_xmalloc(sizeof *sr);
  sr->data = c;
  if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
    free(sr);
    mg_conn_close(c);
  }
}

static void write_cb(uv_write_t *wr, int status) {
  write_req *r = (write_req *)wr;
  mg_conn *c = r->conn;
  c->write_queued -= r->len;
  free(r);
  if (c->closing) return;
  if (status != 0) { mg_conn_close(c); return; }
  if (c->write_queued) {
    mg_worker_set_timeout(c->w, c, MG_TL_SEND, c->w->app->settings.send_timeout_ms);
  } else if (c->tl == MG_TL_SEND) {
    /* Sent: back to the timeout of whatever the connection does now. */
    const mg_settings *s = &c->w->app->settings;
    if (c->dispatched) mg_worker_set_timeout(c->w, c, MG_TL_NONE, 0);
    else if (c->req) mg_worker_set_timeout(c->w, c, MG_TL_HEAD, s->header_timeout_ms);
    else if (c->w->stopping && c->peer_eof != 2) { conn_end(c); return; }   /* idle now */
    else mg_worker_set_timeout(c->w, c, MG_TL_IDLE, s->keepalive_timeout_ms);
  }
  if (c->peer_eof == 2 && c->write_queued == 0) {
    c->peer_eof = 1;
    conn_end(c);
    return;
  }
  mg_request *req = c->req;
  if (req && req->co && req->co->waiting == MG_WAIT_DRAIN &&
      c->write_queued <= WRITE_LOW_WATER) {
    req->co->waiting = MG_WAIT_NONE;
    lua_pushboolean(req->co->co, 1);
    mg_coctx_resume(req->co, 1);
  }
}

/* Writes bytes, trying the socket directly first; copies what is left. */
static int conn_write(mg_conn *c, const char *data, size_t len) {
  if (c->closing || c->peer_eof == 2) return -1;
  if (c->write_queued == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len) return 0;
    if (n < 0 && n != UV_EAGAIN) { mg_conn_close(c); return -1; }
    if (n > 0) { data += n; len -= (size_t)n; }
  }
  write_req *r = mg_xmalloc(sizeof *r + len);
  memcpy(r->data, data, len);
  r->conn = c;
  r->len = (uint32_t)len;
  uv_buf_t b = uv_buf_init(r->data, (unsigned)len);
  if (uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
    free(r);
    mg_conn_close(c);
    return -1;
  }
  c->write_queued += (uint32_t)len;
  mg_worker_set_timeout(c->w, c, MG_TL_SEND, c->w->app->settings.send_timeout_ms);
  return 0;
}

static void head_begin(mg_buf *out, mg_request *req, int status) {
  out->len = 0;
  mg_buf_append(out, "HTTP/1.1 ", 9);
  mg_buf_append_uint(out, (uint64_t)status);
  mg_buf_append(out, " ", 1);
  mg_buf_appends(out, mg_status_reason(status));
  mg_buf_append(out, "\r\nDate: ", 8);
  mg_buf_appends(out, mg_worker_date(req->w));
  mg_buf_append(out, "\r\n", 2);
}

static int must_close(const mg_request *req) {
  const mg_conn *c = req->conn;
  return !req->keep_alive || req->close_after || !c || c->peer_eof ||
         c->w->stopping;
}

static void head_end(mg_buf *out, mg_request *req) {
  if (must_close(req)) mg_buf_appends(out, "Connection: close\r\n");
  else if (req->http_minor == 0) mg_buf_appends(out, "Connection: keep-alive\r\n");
  mg_buf_append(out, "\r\n", 2);
}

/* The response is complete: the connection goes on without this request. */
static void response_complete(mg_request *req) {
  mg_conn *c = req->conn;
  req->resp_done = 1;
  if (req->start_ns) req->done_ns = uv_hrtime();
  if (!c) return;
  int closing = must_close(req);
  c->req = NULL;
  req->conn = NULL;
  c->dispatched = 0;
  if (closing) { conn_end(c); return; }
  llhttp_resume(&c->parser);
  conn_resume(c);
}

static int no_body_status(int status) {
  return status < 200 || status == 204 || status == 304;
}

int mg_response_send(mg_request *req, int status, const char *headers,
                     size_t hlen, const char *body, size_t blen) {
  mg_conn *c = req->conn;
  req->status = status;
  req->resp_started = 1;
  if (!c) { req->resp_done = 1; return -1; }
  mg_buf *out = &req->w->scratch;
  head_begin(out, req, status);
  mg_buf_append(out, headers, hlen);
  if (no_body_status(status)) blen = 0;
  else if (!req->head_length_given) {
    mg_buf_append(out, "Content-Length: ", 16);
    mg_buf_append_uint(out, blen);
    mg_buf_append(out, "\r\n", 2);
  }
  head_end(out, req);
  if (!req->is_head && blen) mg_buf_append(out, body, blen);
  req->bytes_sent += out->len;
  int rc = conn_write(c, out->data, out->len);
  response_complete(req);
  return rc;
}

int mg_response_stream_start(mg_request *req, int status, const char *headers,
                             size_t hlen) {
  mg_conn *c = req->conn;
  req->status = status;
  req->resp_started = 1;
  if (!c) return -1;
  mg_buf *out = &req->w->scratch;
  head_begin(out, req, status);
  mg_buf_append(out, headers, hlen);
  /* HTTP/1.0 has no chunked encoding: the end of the body is the close. */
  if (no_body_status(status) || req->is_head) {
    req->chunked = 0;
  } else if (req->http_minor >= 1) {
    req->chunked = 1;
    mg_buf_appends(out, "Transfer-Encoding: chunked\r\n");
  } else {
    req->close_after = 1;
  }
  head_end(out, req);
  req->bytes_sent += out->len;
  return conn_write(c, out->data, out->len);
}

int mg_response_stream_write(mg_request *req, const char *data, size_t len) {
  mg_conn *c = req->conn;
  if (!c) return -1;
  if (len == 0 || req->is_head || no_body_status(req->status)) return 0;
  mg_buf *out = &req->w->scratch;
  out->len = 0;
  if (req->chunked) {
    mg_buf_append_hex(out, len);
    mg_buf_append(out, "\r\n", 2);
  }
  mg_buf_append(out, data, len);
  if (req->chunked) mg_buf_append(out, "\r\n", 2);
  req->bytes_sent += out->len;
  return conn_write(c, out->data, out->len);
}

int mg_response_stream_end(mg_request *req) {
  mg_conn *c = req->conn;
  if (!c) { req->resp_done = 1; return -1; }
  int rc = 0;
  if (req->chunked) {
    rc = conn_write(c, "0\r\n\r\n", 5);
    req->bytes_sent += 5;
  }
  if (req->conn) response_complete(req);
  return rc;
}

int mg_response_should_wait(const mg_request *req) {
  return req->conn && req->conn->write_queued > WRITE_HIGH_WATER;
}

/* An error answered by the C layer itself, before a request exists for Lua
 * (malformed, too large or too slow heads). Always closes. */
static void conn_error(mg_conn *c, int status, const char *message) {
  mg_buf out = {0};
  mg_buf_printf(&out, "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: application/json\r\n",
                status, mg_status_reason(status), mg_worker_date(c->w));
  mg_buf body = {0};
  mg_buf_appends(&body, "{\"message\":\"");
  mg_buf_json_escape(&body, message, strlen(message));
  mg_buf_appends(&body, "\"}");
  mg_buf_printf(&out, "Content-Length: %zu\r\nConnection: close\r\n\r\n", body.len);
  mg_buf_append(&out, body.data, body.len);
  /* Log it like any request (access line, plus the reason on stderr). */
  if (c->w->app->settings.access_log) {
    mg_request tmp = {0}, *r = c->req ? c->req : &tmp;
    if (!c->req) tmp.start_ns = uv_hrtime();
    r->status = status;
    r->bytes_sent = out.len;
    r->done_ns = uv_hrtime();
    format_peer(c, r);
    if (!r->id[0]) mg_worker_new_request_id(c->w, r->id, sizeof r->id);
    mg_worker_access_log(c->w, r, "");
  }
  mg_log(MG_LOG_INFO, NULL, "refused request: %d %s", status, message);
  conn_drop_request(c);
  conn_write(c, out.data, out.len);
  mg_buf_free(&out);
  mg_buf_free(&body);
  stop_reading(c);
  conn_end(c);
}

void mg_conn_timeout(mg_conn *c) {
  switch (c->tl) {
    case MG_TL_HEAD:
      /* Nothing of a request yet: close quietly, as nginx and HAProxy do. */
      if (c->req && c->head_bytes > 0) conn_error(c, 408, "request headers not received in time");
      else mg_conn_close(c);
      break;
    case MG_TL_BODY:
      conn_error(c, 408, "request body not received in time");
      break;
    default:
      mg_conn_close(c);
  }
}

/* ---- reading and parsing ------------------------------------------------ */

static void save_pending(mg_conn *c, const char *data, size_t len) {
  if (!len) return;
  c->pending = mg_xrealloc(c->pending, c->pending_len + len);
  memcpy(c->pending + c->pending_len, data, len);
  c->pending_len += (uint32_t)len;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  mg_conn *c = s->data;
  if (nread == 0) return;
  if (nread < 0) {
    stop_reading(c);
    if (c->dispatched) {               /* answer the request, then close */
      c->peer_eof = 1;
      return;
    }
    if (c->req && c->head_bytes > 0 && nread == UV_EOF) {
      /* EOF in the middle of a message: let llhttp say whether it was complete
       * (a close-delimited message is not possible in a request). */
      if (llhttp_finish(&c->parser) != HPE_OK) {
        mg_conn_close(c);
        return;
      }
    }
    mg_conn_close(c);
    return;
  }
  if (c->dispatched || c->pending_len) {
    save_pending(c, buf->base, (size_t)nread);
    /* Bounded: a client pipelining a lot waits until we catch up. */
    if (c->pending_len > c->w->app->settings.max_head + 65536) stop_reading(c);
    if (!c->dispatched) conn_resume(c);
    return;
  }
  conn_feed(c, buf->base, (size_t)nread);
}

/* Feeds the saved bytes once the previous response is complete. */
static void conn_resume(mg_conn *c) {
  if (c->in_feed || c->closing) return;
  while (c->pending_len && !c->dispatched && !c->closing && c->peer_eof != 2) {
    char *p = c->pending;
    uint32_t n = c->pending_len;
    c->pending = NULL;
    c->pending_len = 0;
    conn_feed(c, p, n);
    free(p);
  }
  if (c->closing || c->peer_eof == 2 || c->dispatched) return;
  if (c->peer_eof) { conn_end(c); return; }
  if (!c->req) mg_worker_set_timeout(c->w, c, MG_TL_IDLE, c->w->app->settings.keepalive_timeout_ms);
  start_reading(c);
}

static void dispatch(mg_conn *c);

static void parser_failed(mg_conn *c, llhttp_errno_t e) {
  int status = c->fail_status ? c->fail_status : 400;
  mg_request *req = c->req;
  if (status == 413 && req && req->app && req->match.status == 0) {
    /* The route is known: let its policies shape the answer. */
    req->error_status = 413;
    req->close_after = 1;
    stop_reading(c);
    dispatch(c);
    return;
  }
  const char *msg;
  char buf[256];
  switch (status) {
    case 413: msg = "request body too large"; break;
    case 414: msg = "request line too long"; break;
    case 431: msg = "request headers too large"; break;
    case 417: msg = "unsupported Expect header"; break;
    default:
      if (c->fail_status) msg = llhttp_get_error_reason(&c->parser);
      else {
        snprintf(buf, sizeof buf, "malformed request: %s",
                 llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser) : llhttp_errno_name(e));
        msg = buf;
      }
  }
  conn_error(c, status, msg ? msg : "bad request");
}

/* Line ends in a head are CRLF and nothing else. RFC 9112 lets a recipient
 * accept a bare LF (2.2) or unfold obs-fold (5.2), and llhttp does both in
 * places; we refuse them, so no later hop can read the head differently.
 * Scans [from, end), remembering the last byte across reads. Returns the
 * reason for a 400, or NULL. */
static const char *head_line_end_error(mg_conn *c, const char *from, const char *end) {
  if (from < end && c->prev_byte == '\n' && (*from == ' ' || *from == '\t'))
    return "obsolete line folding in the request head";
  const char *q = from;
  while (q < end && (q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
    char prev = q > from ? q[-1] : c->prev_byte;
    if (prev != '\r') return "bare LF in the request head";
    if (q + 1 < end && (q[1] == ' ' || q[1] == '\t'))
      return "obsolete line folding in the request head";
    q++;
  }
  if (end > from) c->prev_byte = end[-1];
  return NULL;
}

static void conn_feed(mg_conn *c, const char *data, size_t len) {
  int run = len > 0;
  c->in_feed = 1;
  while (run && !c->closing && c->peer_eof != 2) {
    if (c->dispatched) { save_pending(c, data, len); break; }
    llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
    size_t used = e == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&c->parser) - data);
    if (c->scan_head && (e == HPE_OK || e == HPE_PAUSED)) {
      const char *from = c->scan_from ? c->scan_from : data;
      c->scan_from = NULL;
      const char *why = head_line_end_error(c, from, data + used);
      if (why) {
        c->fail_status = 400;
        llhttp_set_error_reason(&c->parser, why);
        parser_failed(c, HPE_USER);
        break;
      }
    }
    data += used;
    len -= used;
    run = len > 0;
    if (e == HPE_OK) break;
    if (e != HPE_PAUSED) { parser_failed(c, e); break; }
    llhttp_resume(&c->parser);
    if (c->head_paused) {
      /* End of a head: run the parser on, even with no bytes left, so a
       * message without a body completes. A 413 is answered right away. */
      c->head_paused = 0;
      c->scan_head = 0;
      run = 1;
      if (c->req && c->req->error_status) dispatch(c);
      continue;
    }
    dispatch(c);   /* may complete synchronously; the loop goes on then */
  }
  c->in_feed = 0;
  if (!c->closing && !c->dispatched && c->peer_eof != 2 && !c->req)
    mg_worker_set_timeout(c->w, c, MG_TL_IDLE, c->w->app->settings.keepalive_timeout_ms);
}

#define CONN(p) ((mg_conn *)(p)->data)

static int fail(llhttp_t *p, int status, const char *reason) {
  CONN(p)->fail_status = status;
  llhttp_set_error_reason(p, reason);
  return HPE_USER;
}

static int on_message_begin(llhttp_t *p) {
  mg_conn *c = CONN(p);
  mg_request *req = mg_worker_request_alloc(c->w);
  req->conn = c;
  /* For the access line only: without it, no clock reads per request. */
  req->start_ns = c->w->app->settings.access_log ? uv_hrtime() : 0;
  c->req = req;
  c->head_bytes = 0;
  c->fail_status = 0;
  if (c->tl != MG_TL_HEAD)
    mg_worker_set_timeout(c->w, c, MG_TL_HEAD, c->w->app->settings.header_timeout_ms);
  return 0;
}

static int count_head(llhttp_t *p, size_t len);

static int on_method(llhttp_t *p, const char *at, size_t len) {
  mg_conn *c = CONN(p);
  if (!c->scan_head) {            /* the head starts here: scan it for bare LFs */
    c->scan_head = 1;
    c->scan_from = at;
    c->prev_byte = 0;
  }
  return count_head(p, len);
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  mg_conn *c = CONN(p);
  mg_request *req = c->req;
  c->head_bytes += (uint32_t)len;
  if (c->head_bytes > c->w->app->settings.max_head)
    return fail(p, 414, "request line too long");
  mg_buf_append(&req->head, at, len);
  return 0;
}

static int on_url_complete(llhttp_t *p) {
  mg_request *req = CONN(p)->req;
  req->url_len = (uint32_t)req->head.len;
  const char *q = memchr(req->head.data ? req->head.data : "", '?', req->url_len);
  req->path_len = q ? (uint32_t)(q - req->head.data) : req->url_len;
  mg_buf_append(&req->head, "", 1);           /* NUL after the URL */
  return 0;
}

static int count_head(llhttp_t *p, size_t len) {
  mg_conn *c = CONN(p);
  c->head_bytes += (uint32_t)len;
  if (c->head_bytes > c->w->app->settings.max_head)
    return fail(p, 431, "request headers too large");
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  mg_request *req = CONN(p)->req;
  if (count_head(p, len)) return HPE_USER;
  if (!req->in_header_value && (req->nhdr == 0 || req->hdr[req->nhdr - 1].name_len != UINT32_MAX)) {
    /* The first fragment of a new header name. */
    if (req->nhdr == req->hdr_cap) {
      req->hdr_cap = req->hdr_cap ? req->hdr_cap * 2 : 16;
      req->hdr = mg_xrealloc(req->hdr, (size_t)req->hdr_cap * sizeof(mg_header));
    }
    mg_header *h = &req->hdr[req->nhdr++];
    h->name = (uint32_t)req->head.len;
    h->name_len = UINT32_MAX;                  /* in progress */
  }
  mg_buf_append(&req->head, at, len);
  return 0;
}

static int on_header_field_complete(llhttp_t *p) {
  mg_request *req = CONN(p)->req;
  mg_header *h = &req->hdr[req->nhdr - 1];
  h->name_len = (uint32_t)req->head.len - h->name;
  mg_buf_append(&req->head, "", 1);
  h->value = (uint32_t)req->head.len;
  h->value_len = 0;
  req->in_header_value = 1;
  return count_head(p, 4);                     /* ": " and CRLF */
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  mg_request *req = CONN(p)->req;
  if (count_head(p, len)) return HPE_USER;
  mg_buf_append(&req->head, at, len);
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  mg_request *req = CONN(p)->req;
  mg_header *h = &req->hdr[req->nhdr - 1];
  h->value_len = (uint32_t)req->head.len - h->value;
  mg_buf_append(&req->head, "", 1);
  req->in_header_value = 0;
  const char *name = req->head.data + h->name;
  const char *value = req->head.data + h->value;
  /* RFC 9112 5.1: no whitespace between name and colon; 5.2: obs-fold is
   * refused rather than guessed at. */
  for (uint32_t i = 0; i < h->name_len; i++)
    if (name[i] == ' ' || name[i] == '\t') return fail(p, 400, "whitespace in a header name");
  if (memchr(value, '\r', h->value_len) || memchr(value, '\n', h->value_len))
    return fail(p, 400, "obsolete line folding in a header");
  if (mg_strcaseeq(name, h->name_len, "host", 4)) {
    if (req->has_host) return fail(p, 400, "more than one Host header");
    req->has_host = 1;
  } else if (mg_strcaseeq(name, h->name_len, "expect", 6)) {
    if (mg_strcaseeq(value, h->value_len, "100-continue", 12)) req->expect_continue = 1;
    else return fail(p, 417, "unsupported Expect header");
  }
  return 0;
}

/* Refuses paths that a later hop could read differently from our router. */
static int path_is_clean(const char *path, size_t len) {
  if (len == 0) return 0;
  if (path[0] != '/') return len == 1 && path[0] == '*';   /* OPTIONS * */
  for (size_t i = 0; i < len; i++) {
    if (path[i] != '/') continue;
    size_t rest = len - i - 1;
    const char *s = path + i + 1;
    if ((rest >= 1 && s[0] == '.' && (rest == 1 || s[1] == '/')) ||
        (rest >= 2 && s[0] == '.' && s[1] == '.' && (rest == 2 || s[2] == '/')))
      return 0;
  }
  return 1;
}

static int on_headers_complete(llhttp_t *p) {
  mg_conn *c = CONN(p);
  mg_request *req = c->req;
  mg_worker *w = c->w;
  if (req->nhdr && req->hdr[req->nhdr - 1].name_len == UINT32_MAX)
    return fail(p, 400, "malformed header");
  req->method = llhttp_method_name(llhttp_get_method(p));
  req->method_bit = mg_method_bit(req->method, strlen(req->method));
  if (!req->method_bit) req->method_bit = MG_M_OTHER;
  req->http_major = llhttp_get_http_major(p);
  req->http_minor = llhttp_get_http_minor(p);
  req->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
  req->is_head = req->method_bit == MG_M_HEAD;
  if (req->http_major != 1) return fail(p, 400, "unsupported HTTP version");
  if (req->http_minor >= 1 && !req->has_host) return fail(p, 400, "missing Host header");
  if (!path_is_clean(req->head.data, req->path_len))
    return fail(p, 400, "path with dot segments or not absolute");
  if (req->expect_continue && req->http_minor == 0) req->expect_continue = 0;
  if (p->flags & F_CONTENT_LENGTH) req->content_length = p->content_length;

  /* Route now, so the body limit and error shape are the route's. The
   * generation is pinned here: a reload during the body does not matter. */
  mg_app *app = w->app;
  req->app = app;
  app->inflight++;
  size_t hlen = 0;
  const char *host = mg_request_header(req, "host", 4, &hlen);
  mg_router_match(app->router, req->method_bit, host ? host : "", hlen,
                  req->head.data, req->path_len, &req->match);
  req->max_body = req->match.status == 0 ? app->routes[req->match.route].max_body
                                         : app->settings.max_body;

  int has_body = (p->flags & F_CHUNKED) || req->content_length > 0;
  /* Pause so conn_feed can check how the head ended (and dispatch a 413). */
  c->head_paused = 1;
  if (req->content_length > req->max_body) {
    /* Refuse before reading: the route answers 413 and we close. */
    c->fail_status = 413;
    req->error_status = 413;
    req->close_after = 1;
    req->expect_continue = 0;
    return HPE_PAUSED;
  }
  if (req->expect_continue && has_body)
    conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  mg_worker_set_timeout(w, c, has_body ? MG_TL_BODY : MG_TL_NONE,
                        app->settings.body_timeout_ms);
  return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  mg_conn *c = CONN(p);
  mg_request *req = c->req;
  if (req->body.len + len > req->max_body) return fail(p, 413, "request body too large");
  mg_buf_append(&req->body, at, len);
  mg_worker_set_timeout(c->w, c, MG_TL_BODY, c->w->app->settings.body_timeout_ms);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  mg_conn *c = CONN(p);
  mg_worker_set_timeout(c->w, c, MG_TL_NONE, 0);
  return HPE_PAUSED;
}

static const llhttp_settings_t *parser_settings(void) {
  static llhttp_settings_t s;
  static int done;
  if (!done) {                         /* idempotent: same values every time */
    llhttp_settings_init(&s);
    s.on_message_begin = on_message_begin;
    s.on_method = on_method;
    s.on_url = on_url;
    s.on_url_complete = on_url_complete;
    s.on_header_field = on_header_field;
    s.on_header_field_complete = on_header_field_complete;
    s.on_header_value = on_header_value;
    s.on_header_value_complete = on_header_value_complete;
    s.on_headers_complete = on_headers_complete;
    s.on_body = on_body;
    s.on_message_complete = on_message_complete;
    done = 1;
  }
  return &s;
}

const char *mg_request_header(const mg_request *req, const char *name,
                              size_t len, size_t *vlen) {
  for (int i = 0; i < req->nhdr; i++) {
    const mg_header *h = &req->hdr[i];
    if (mg_strcaseeq(req->head.data + h->name, h->name_len, name, len)) {
      if (vlen) *vlen = h->value_len;
      return req->head.data + h->value;
    }
  }
  return NULL;
}

/* ---- dispatch ------------------------------------------------------------ */

static void health_answer(mg_request *req) {
  static const char body[] = "{\"status\":\"ok\"}";
  req->status = 200;
  mg_response_send(req, 200, "Content-Type: application/json\r\n", 32, body,
                   sizeof body - 1);
}

/* a.b.c.d without printf (inet_ntop uses it): this runs per request. */
static void format_ipv4(const unsigned char *a, char *out) {
  for (int i = 0; i < 4; i++) {
    unsigned v = a[i];
    if (v >= 100) *out++ = (char)('0' + v / 100);
    if (v >= 10) *out++ = (char)('0' + v / 10 % 10);
    *out++ = (char)('0' + v % 10);
    *out++ = i < 3 ? '.' : '\0';
  }
}

static void format_peer(mg_conn *c, mg_request *req) {
  static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (c->peer.sa.sa_family == AF_INET) {
    format_ipv4((const unsigned char *)&c->peer.v4.sin_addr, req->remote_ip);
    req->remote_port = ntohs(c->peer.v4.sin_port);
  } else if (c->peer.sa.sa_family == AF_INET6) {
    const unsigned char *a = c->peer.v6.sin6_addr.s6_addr;
    /* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d. */
    if (memcmp(a, v4mapped, 12) == 0) format_ipv4(a + 12, req->remote_ip);
    else uv_ip6_name(&c->peer.v6, req->remote_ip, sizeof req->remote_ip);
    req->remote_port = ntohs(c->peer.v6.sin6_port);
  } else {
    strcpy(req->remote_ip, "unknown");
  }
}

static void dispatch(mg_conn *c) {
  mg_request *req = c->req;
  c->dispatched = 1;
  mg_worker_set_timeout(c->w, c, MG_TL_NONE, 0);
  format_peer(c, req);
  mg_worker_new_request_id(c->w, req->id, sizeof req->id);
  const char *hp = req->app->settings.health_path;
  if (!req->error_status && hp[0] && (req->method_bit & (MG_M_GET | MG_M_HEAD)) &&
      strlen(hp) == req->path_len && memcmp(hp, req->head.data, req->path_len) == 0) {
    health_answer(req);
    mg_request_finish(req);
    return;
  }
  mg_app_dispatch(req->app, req);
}
