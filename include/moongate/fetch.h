/* Outgoing HTTP: libcurl's multi-socket API driven by the worker's libuv
 * loop. One mg_fetch is one transfer (one attempt; retries and balancing are
 * the Lua side's business, lua/moongate/upstream.lua). Connections are kept
 * alive and reused across transfers by the worker's curl multi handle.
 *
 * A coroutine waits on a transfer for its response head, then for body
 * chunks. Curl callbacks never resume Lua directly (curl forbids re-entering
 * it from its callbacks): they mark the transfer ready, and the worker
 * resumes ready coroutines once curl has returned. */
#ifndef MG_FETCH_H
#define MG_FETCH_H

#include <curl/curl.h>
#include "util.h"

typedef struct mg_worker mg_worker;
typedef struct mg_coctx mg_coctx;

enum { MG_FETCH_WAIT_NONE, MG_FETCH_WAIT_HEAD, MG_FETCH_WAIT_BODY };

typedef struct mg_fetch {
  CURL *easy;
  mg_worker *w;
  mg_coctx *waiter;            /* the coroutine parked on this transfer */
  int wait;                    /* MG_FETCH_WAIT_* */
  struct curl_slist *req_headers;
  char *req_body;
  size_t req_body_len;

  int status;
  mg_buf head;                 /* response header lines of the final response */
  int head_done;
  mg_buf body;                 /* received, not yet read by Lua */
  size_t body_off;
  size_t max_buffer;           /* pause the transfer above this */
  int paused;
  int running;                 /* added to the multi handle */
  int done;
  CURLcode result;
  char errbuf[CURL_ERROR_SIZE];
  int lua_owned;               /* a Lua userdata points here */
  int ready;                   /* queued for a resume */
  struct mg_fetch *next_ready;
  struct mg_fetch *next_all, *prev_all;   /* every transfer of the worker */
} mg_fetch;

/* Per-worker curl state: created when the worker starts. */
int mg_fetch_init(mg_worker *w);
void mg_fetch_shutdown(mg_worker *w);

/* Starts a transfer. The caller has set the easy options it wants (URL,
 * method, timeouts); this adds the callbacks and hands it to the multi. */
mg_fetch *mg_fetch_new(mg_worker *w);
int mg_fetch_start(mg_fetch *f);
/* Stops a transfer (if running) and frees it, unless Lua still holds it. */
void mg_fetch_cancel(mg_fetch *f);
void mg_fetch_free(mg_fetch *f);
/* Stops a transfer because the client it serves went away; its waiter is
 * resumed (on the next loop turn) and sees nil, "closed". */
void mg_fetch_abort(mg_fetch *f);
/* Lets a paused transfer go on once Lua has read the buffer down. */
void mg_fetch_consumed(mg_fetch *f);
/* "connect", "timeout", "reset", "tls", "dns" or "error" for a result. */
const char *mg_fetch_error_kind(CURLcode rc);

#endif
