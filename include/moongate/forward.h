/* What one proxy hop does to headers (RFC 9110 7.6.1), in C because it runs
 * for every proxied request: the head an upstream gets from the client's,
 * and the head the client gets from the upstream's. lua/moongate/proxy.lua
 * decides *what* to forward (overrides, removals); this file does the
 * per-header work. */
#ifndef MG_FORWARD_H
#define MG_FORWARD_H

#include <stddef.h>
#include "http.h"
#include "util.h"

/* Names (lower-case) the caller takes out of the forwarded head: removed
 * from the client's headers and from the forwarding ones added here. */
typedef struct {
  const char *const *names;
  const size_t *lens;
  int n;
} mg_forward_drop;

/* Appends the request head lines for the upstream to `out`, each as
 * "Name: value\n": the client's headers minus hop-by-hop ones (and those its
 * Connection header names, Host, Content-Length, Expect), then
 * X-Forwarded-For (the client's chain plus its address), X-Forwarded-Proto,
 * X-Forwarded-Host, X-Request-ID and traceparent. Returns how many lines. */
int mg_forward_request_lines(mg_request *req, const mg_forward_drop *drop, mg_buf *out);

/* The W3C traceparent this hop sends upstream ("00-<trace>-<span>-01"):
 * the client's trace id when it sent a valid one, else a new one; a new
 * span id. Made once per request, kept in the request. */
const char *mg_forward_traceparent(mg_request *req);

/* Whether a response header line `name` goes on to the client: not a
 * hop-by-hop one, not one the upstream's Connection header names (`conn`,
 * its value, may be NULL), not Date (ours is sent), and Content-Length only
 * when keep_length (the answer to HEAD states the length it does not send). */
int mg_forward_response_keeps(const char *name, size_t nlen, const char *conn,
                              size_t connlen, int keep_length);

/* Appends the lines of an upstream's response head ("Name: value\r\n"
 * each) that go on to the client, as mg_forward_response_keeps decides with
 * the head's own Connection header, minus the `drop` names (headers the
 * gateway sets itself; NULL for none). Returns 1 if a Content-Length was kept. */
int mg_forward_response_lines(const char *head, size_t len, int keep_length,
                              const mg_forward_drop *drop, mg_buf *out);

/* Finds the value of the first `name` line in a "Name: value\r\n" block. */
const char *mg_forward_find(const char *head, size_t len, const char *name,
                            size_t nlen, size_t *vlen);

#endif
