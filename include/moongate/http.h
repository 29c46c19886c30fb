/* The HTTP/1.1 server side: connections, request parsing with llhttp and
 * response writing. A connection owns at most one request at a time; further
 * pipelined bytes wait in `pending` until the current response is complete.
 *
 * Ownership: a request is created by its connection when a message begins.
 * Once dispatched to Lua it belongs to its coroutine context (mg_coctx) until
 * the Lua side is done; the connection may go away first, in which case
 * `req->conn` becomes NULL and writes report "closed". */
#ifndef MG_HTTP_H
#define MG_HTTP_H

#include <uv.h>
#include <llhttp.h>
#include "util.h"
#include "router.h"

typedef struct mg_worker mg_worker;
typedef struct mg_app mg_app;
typedef struct mg_conn mg_conn;
typedef struct mg_coctx mg_coctx;

typedef struct {
  uint32_t name, name_len, value, value_len;   /* offsets into req->head */
} mg_header;

typedef struct mg_request {
  mg_conn *conn;
  mg_worker *w;
  mg_app *app;                 /* the generation serving this request */
  mg_coctx *co;
  struct mg_request *next_free;

  mg_buf head;                 /* url, then header names/values, each NUL-terminated */
  mg_header *hdr;
  int nhdr, hdr_cap;
  uint32_t url_len, path_len;  /* path_len: url up to '?' */
  int in_header_value;         /* parser state for fragmented headers */
  mg_buf body;
  uint64_t content_length;     /* declared, or 0 */
  unsigned method_bit;
  const char *method;          /* static string from llhttp */
  uint8_t http_major, http_minor;
  uint8_t keep_alive;
  uint8_t expect_continue;
  uint8_t is_head;
  uint8_t has_host;
  uint8_t head_length_given;   /* HEAD: the handler stated Content-Length */

  mg_route_match match;
  int error_status;            /* set when the request is dispatched as an error */
  size_t max_body;

  /* Response. */
  int status;
  uint8_t resp_started, resp_done, chunked, close_after;
  uint64_t bytes_sent;
  uint64_t start_ns, done_ns;    /* uv_hrtime() */
  mg_buf log_extra;            /* extra access-log members from Lua */
  char id[72];
  char traceparent[56];        /* made on first use (forward.c); "" until then */
  char remote_ip[64];
  int remote_port;
} mg_request;

/* Timeout lists a connection can be on (see worker.c). */
enum { MG_TL_NONE, MG_TL_HEAD, MG_TL_BODY, MG_TL_IDLE, MG_TL_SEND, MG_TL_LINGER,
       MG_TL_COUNT };

struct mg_conn {
  uv_tcp_t tcp;
  llhttp_t parser;
  mg_worker *w;
  mg_request *req;             /* being parsed or waiting for its response */
  char *pending;               /* unparsed bytes (pipelining) */
  uint32_t pending_len;
  uint32_t write_queued;       /* bytes handed to uv_write, not yet written */
  uint32_t head_bytes;         /* bytes of the current request's head */
  int fail_status;             /* set by a parser callback that rejects */
  mg_conn *tl_prev, *tl_next;
  uint64_t deadline;
  uint8_t tl;                  /* which MG_TL_* list */
  uint8_t closing, reading, dispatched, in_feed;
  uint8_t peer_eof;            /* 1: client sent EOF; 2: we are ending */
  uint8_t head_paused;         /* parser paused at the end of a head */
  uint8_t scan_head;           /* the current head is being scanned */
  char prev_byte;              /* last byte of the previous read */
  const char *scan_from;       /* where the head starts in this read */
  mg_conn *all_prev, *all_next;
  union {                      /* the client's address, read once at accept */
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
  } peer;
};

/* Accepts one connection from the worker's listener. */
void mg_http_accept(mg_worker *w, uv_stream_t *listener);
/* Closes a connection at once (timeouts, shutdown). */
void mg_conn_close(mg_conn *c);
/* Called on timeout of the list the connection is on. */
void mg_conn_timeout(mg_conn *c);

/* Response writing, used by the Lua API. Headers are already serialized
 * lines ("Name: value\r\n"). Returns 0, or -1 if the client is gone. */
int mg_response_send(mg_request *req, int status, const char *headers,
                     size_t hlen, const char *body, size_t blen);
int mg_response_stream_start(mg_request *req, int status, const char *headers,
                             size_t hlen);
int mg_response_stream_write(mg_request *req, const char *data, size_t len);
int mg_response_stream_end(mg_request *req);
/* True when a streaming writer should wait for the queue to drain. */
int mg_response_should_wait(const mg_request *req);

/* Header lookup (case-insensitive); returns the first value or NULL. */
const char *mg_request_header(const mg_request *req, const char *name,
                              size_t len, size_t *vlen);
static inline const char *mg_req_str(const mg_request *req, uint32_t off) {
  return req->head.data + off;
}

/* Called by the Lua side when the coroutine finished with this request. */
void mg_request_finish(mg_request *req);
const char *mg_status_reason(int status);

#endif
