/* Outgoing HTTP: one mg_fetch is one transfer (one attempt; retries and
 * balancing are the Lua side's business, lua/moongate/upstream.lua).
 *
 * Two engines carry a transfer, chosen per URL by mg_fetch_start():
 *  - the native HTTP/1.1 client (h1client.c) for plain http:// URLs it can
 *    handle: libuv TCP + llhttp + a per-worker keep-alive pool. It is the
 *    fast path: no extra poll() and no libcurl state machine per request.
 *  - libcurl's multi-socket API on the worker's libuv loop (this file) for
 *    https:// and whatever the native client declines (userinfo in the URL,
 *    a caller-supplied Transfer-Encoding, odd bytes in the URL...).
 * Both fill the same fields below (status, head, body, done, error), so the
 * Lua handle (lua_fetch.c) does not know which one ran.
 *
 * A coroutine waits on a transfer for its response head, then for body
 * chunks. Engines never resume Lua from inside their callbacks (curl forbids
 * re-entering it; llhttp is mid-parse): they mark the transfer ready
 * (mg_fetch_notify), and ready coroutines are resumed once the engine's
 * callback is done with its state (mg_fetch_run_ready). */
#ifndef MG_FETCH_H
#define MG_FETCH_H

#include <curl/curl.h>
#include "util.h"

typedef struct mg_worker mg_worker;
typedef struct mg_coctx mg_coctx;
struct mg_h1_exchange;

enum { MG_FETCH_WAIT_NONE, MG_FETCH_WAIT_HEAD, MG_FETCH_WAIT_BODY, MG_FETCH_WAIT_DONE };

/* What to send: built by lua_fetch.c from the Lua options. Strings are only
 * borrowed for the duration of mg_fetch_start (engines copy them). */
typedef struct {
  const char *p;
  size_t len;
} mg_fetch_line;

typedef struct {
  const char *url;
  size_t url_len;
  const char *method;          /* "GET", "HEAD", "POST", ... */
  const mg_fetch_line *headers;/* "Name: value" lines, no CR/LF (checked by the caller) */
  int nheaders;
  const char *body;            /* NULL: no body (not the same as "") */
  size_t body_len;
  long connect_timeout_ms, timeout_ms;
  long read_timeout_ms;        /* longest silence while reading; 0 = none */
  int verify_tls;
} mg_fetch_spec;

typedef struct {
  double connect_ms, first_byte_ms, total_ms;
  const char *ip;              /* "" when unknown */
  int reused;                  /* ran on a kept-alive connection */
} mg_fetch_info;

struct lua_State;

typedef struct mg_fetch {
  mg_worker *w;
  CURL *easy;                  /* curl engine, or NULL */
  struct mg_h1_exchange *h1;   /* native engine (h1client.c owns it), or NULL */
  mg_coctx *waiter;            /* the coroutine parked on this transfer */
  int wait;                    /* MG_FETCH_WAIT_* */
  /* Pushes, onto the waiter's stack as it is resumed, what the parked call
   * returns now that it has news (so the Lua side need not call again), or
   * returns -1 to push nothing. Set by the Lua binding when it parks (NULL:
   * resumed with nothing, the caller asks again). */
  int (*on_wake)(struct lua_State *co, struct mg_fetch *f);
  struct curl_slist *req_headers;
  char *req_body;
  size_t req_body_len;

  int status;
  mg_buf head;                 /* response header lines ("Name: value\r\n") of the final response */
  int head_done;
  mg_buf body;                 /* received, not yet read by Lua */
  size_t body_off;
  size_t max_buffer;           /* the engine stops reading above this */
  int paused;                  /* the engine holds back because of max_buffer */
  int running;                 /* the engine is still working on it */
  int done;
  const char *error;           /* once done: NULL, or the error kind (see mg_fetch_error_kind) */
  char errbuf[CURL_ERROR_SIZE];/* the message that goes with `error` */
  int lua_owned;               /* a Lua userdata points here */
  int ready;                   /* queued for a resume */
  struct mg_fetch *next_ready;
  struct mg_fetch *next_all, *prev_all;   /* every transfer of the worker */
} mg_fetch;

/* Per-worker state of both engines: created when the worker starts. */
int mg_fetch_init(mg_worker *w);
void mg_fetch_shutdown(mg_worker *w);

/* Starts a transfer with the engine that fits the URL. Returns NULL (and a
 * message in err) if it could not even start; failures after that (refused,
 * DNS, timeout...) are reported through the transfer. */
mg_fetch *mg_fetch_start(mg_worker *w, const mg_fetch_spec *spec, char *err, size_t errlen);
/* Stops a transfer (if running) and frees it, unless Lua still holds it. */
void mg_fetch_cancel(mg_fetch *f);
void mg_fetch_free(mg_fetch *f);
/* Stops a transfer because the client it serves went away; its waiter is
 * resumed (on the next loop turn) and sees nil, "closed". */
void mg_fetch_abort(mg_fetch *f);
/* Lets a paused transfer go on once Lua has read the buffer down. */
void mg_fetch_consumed(mg_fetch *f);
void mg_fetch_get_info(mg_fetch *f, mg_fetch_info *out);
/* "connect", "timeout", "reset", "tls", "dns", "closed" or "error" for a curl result. */
const char *mg_fetch_error_kind(CURLcode rc);

/* ---- for the engines ---- */
/* Ends a transfer: error NULL for success, else a kind and a message. */
void mg_fetch_finish(mg_fetch *f, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Appends response body bytes (unbounded: the engine checks max_buffer). */
void mg_fetch_body_append(mg_fetch *f, const char *data, size_t len);
/* The transfer may have news for its waiter: queue it for a resume. */
void mg_fetch_notify(mg_fetch *f);
/* Resumes every queued waiter. Call from a loop callback, after the engine
 * has put its own state in order (a resumed coroutine may close or start
 * transfers). */
void mg_fetch_run_ready(mg_worker *w);

#endif
