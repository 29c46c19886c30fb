/* The native HTTP/1.1 client: the engine fetch.c uses for plain http://
 * URLs (https:// and anything this file declines stay with libcurl).
 *
 * One exchange (mg_h1_exchange) is one request/response carried for one
 * mg_fetch; fetch.c's mg_fetch owns it and frees it with the transfer.
 * Connections (libuv TCP, an llhttp parser in response mode each) belong to
 * the worker's pool while idle and to one exchange while busy:
 *   - idle connections are kept per worker, keyed by "host:port", most
 *     recently used first, at most `max_idle` of them (the config's
 *     upstream_pool), each closed after H1_IDLE_TIMEOUT_MS;
 *   - an idle connection keeps a read callback: the peer closing it (or
 *     sending anything) closes it at once, so a stale one is rarely picked;
 *   - if a reused connection turns out dead before any byte of the answer
 *     came (the peer closed it while we were sending), the exchange is
 *     retried once on a new connection, as nginx and libcurl do;
 *   - a connection goes back to the pool only after a complete response
 *     that allows keep-alive, with nothing unexpected after it.
 * Timeouts (connect, total, read silence) are checked by the worker's
 * periodic tick (mg_h1_tick), so they fire up to one tick late. The body is
 * delivered into the mg_fetch buffer; above its max_buffer the connection
 * stops reading until Lua has read the buffer down (mg_h1_consumed), so a
 * slow client never makes the gateway buffer more than that plus one read. */
#ifndef MG_H1CLIENT_H
#define MG_H1CLIENT_H

#include <stdint.h>
#include "fetch.h"

typedef struct mg_h1_pool mg_h1_pool;
typedef struct mg_h1_exchange mg_h1_exchange;

/* The worker's pool; max_idle may be 0 (no keep-alive). */
mg_h1_pool *mg_h1_pool_new(mg_worker *w, int max_idle);
/* Closes idle connections and abandons pending lookups. Running exchanges
 * must have been cancelled first (mg_fetch_shutdown does). */
void mg_h1_pool_free(mg_h1_pool *pool);

/* Starts f's exchange: 0 (a failure to connect or send is reported through
 * f later), or MG_H1_DECLINED (nothing done) when the native client does not
 * carry this request -- not an http:// URL it can parse, or something it
 * would send differently from libcurl -- and libcurl should. The URL is
 * parsed once, here. */
#define MG_H1_DECLINED 1
int mg_h1_start(mg_fetch *f, const mg_fetch_spec *spec);
/* Stops f's exchange if it still runs (its connection is closed: a
 * half-read answer cannot be reused) and frees it. */
void mg_h1_free(mg_fetch *f);
/* Stops the exchange, keeps it for info(). */
void mg_h1_stop(mg_fetch *f);
/* Lua read the buffer down: read on if the connection was holding back. */
void mg_h1_consumed(mg_fetch *f);
void mg_h1_info(mg_fetch *f, mg_fetch_info *out);
/* Writes the requests queued during this loop turn; from the worker's
 * prepare phase, before the loop polls. Returns how many it wrote. */
int mg_h1_flush(mg_worker *w);
/* Timeouts of running exchanges and idle connections; from the worker tick. */
void mg_h1_tick(mg_worker *w);

#endif
