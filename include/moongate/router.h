/* The router: maps (method, host, path) to a route index. Routes are matched
 * by specificity, not by declaration order: exact paths beat paths with named
 * parameters, which beat prefix wildcards (longer prefix first); a route with
 * a host beats one without. Ties keep declaration order. */
#ifndef MG_ROUTER_H
#define MG_ROUTER_H

#include <stddef.h>
#include <stdint.h>

/* Method bits. */
enum {
  MG_M_GET = 1 << 0, MG_M_HEAD = 1 << 1, MG_M_POST = 1 << 2, MG_M_PUT = 1 << 3,
  MG_M_DELETE = 1 << 4, MG_M_PATCH = 1 << 5, MG_M_OPTIONS = 1 << 6,
  MG_M_TRACE = 1 << 7, MG_M_CONNECT = 1 << 8, MG_M_OTHER = 1 << 9,
  MG_M_ANY = (1 << 10) - 1
};

#define MG_ROUTE_MAX_PARAMS 16

/* Returns the bit for a method name ("GET"), or 0 when unknown. */
unsigned mg_method_bit(const char *name, size_t len);
/* Writes "GET, HEAD, POST" for a mask into buf. */
void mg_methods_string(unsigned mask, char *buf, size_t buflen);

typedef struct mg_router mg_router;

typedef struct {
  int route;                     /* index given to mg_router_add, or -1 */
  int status;                    /* 0 on match; 404 or 405 otherwise */
  unsigned allow;                /* on 405: the methods the path accepts */
  int nparams;
  struct { const char *name; size_t name_len; size_t off, len; } params[MG_ROUTE_MAX_PARAMS];
} mg_route_match;

mg_router *mg_router_new(void);
void mg_router_free(mg_router *r);
/* Adds a route. `path` is an exact path ("/hello"), has named parameters
 * ("/users/:id") or ends in a wildcard segment ("/v1/" followed by a star);
 * host is NULL for any host, "example.com" or "*.example.com".
 * Returns 0, or -1 and an error. */
int mg_router_add(mg_router *r, int index, unsigned methods, const char *host,
                  const char *path, const char **err);
/* Sorts the routes by specificity: call once after the last add. */
void mg_router_finish(mg_router *r);
void mg_router_match(const mg_router *r, unsigned method, const char *host,
                     size_t host_len, const char *path, size_t path_len,
                     mg_route_match *m);

#endif
