/* Route matching. See include/moongate/router.h for the precedence rules.
 *
 * A path pattern is split into segments once, at load time. Matching walks
 * the segments against the request path without allocating: named parameters
 * are returned as offsets into the path. Route tables are small (tens of
 * routes), so a sorted array scanned in order is both simple and fast. */
#include "moongate/router.h"
#include "moongate/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { SEG_LITERAL, SEG_PARAM };

typedef struct {
  int kind;
  char *text;                 /* literal text, or the parameter name */
  size_t len;
} segment;

typedef struct {
  int index;
  int order;                  /* declaration order, for stable ties */
  unsigned methods;
  char *host;                 /* NULL = any */
  int host_wildcard;          /* "*.example.com": host holds ".example.com" */
  segment *segs;
  int nsegs;
  int wildcard;               /* pattern ends in "/{*}" */
  int nparams;
  int rank;                   /* 0 exact, 1 params, 2 wildcard */
  size_t literal_len;         /* total literal length, longer wins */
} route;

struct mg_router {
  route *routes;
  int n, cap;
};

static const struct { const char *name; unsigned bit; } methods[] = {
  {"GET", MG_M_GET}, {"HEAD", MG_M_HEAD}, {"POST", MG_M_POST},
  {"PUT", MG_M_PUT}, {"DELETE", MG_M_DELETE}, {"PATCH", MG_M_PATCH},
  {"OPTIONS", MG_M_OPTIONS}, {"TRACE", MG_M_TRACE}, {"CONNECT", MG_M_CONNECT},
};

unsigned mg_method_bit(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
    if (strlen(methods[i].name) == len && memcmp(methods[i].name, name, len) == 0)
      return methods[i].bit;
  return 0;
}

void mg_methods_string(unsigned mask, char *buf, size_t buflen) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    if (!(mask & methods[i].bit)) continue;
    int n = snprintf(buf + used, buflen - used, "%s%s", used ? ", " : "",
                     methods[i].name);
    if (n < 0 || (size_t)n >= buflen - used) break;
    used += (size_t)n;
  }
}

mg_router *mg_router_new(void) { return mg_xcalloc(1, sizeof(mg_router)); }

void mg_router_free(mg_router *r) {
  if (!r) return;
  for (int i = 0; i < r->n; i++) {
    route *rt = &r->routes[i];
    for (int j = 0; j < rt->nsegs; j++) free(rt->segs[j].text);
    free(rt->segs);
    free(rt->host);
  }
  free(r->routes);
  free(r);
}

static int valid_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_';
}

int mg_router_add(mg_router *r, int index, unsigned methods_mask,
                  const char *host, const char *path, const char **err) {
  if (!path || path[0] != '/') { *err = "path must start with '/'"; return -1; }
  if (!methods_mask) { *err = "no method"; return -1; }
  route rt = {0};
  rt.index = index;
  rt.order = r->n;
  rt.methods = methods_mask;
  if (host && *host) {
    if (host[0] == '*' && host[1] == '.') { rt.host = mg_xstrdup(host + 1); rt.host_wildcard = 1; }
    else rt.host = mg_xstrdup(host);
  }
  /* Split "/a/:b/{*}" into segments; "/" alone has zero segments. */
  const char *p = path + 1;
  int cap = 0;
  while (*p) {
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 1 && p[0] == '*' && !end) { rt.wildcard = 1; break; }
    if (memchr(p, '*', len)) { *err = "'*' is only allowed as the last segment: /prefix/*"; goto fail; }
    if (rt.nsegs == cap) {
      cap = cap ? cap * 2 : 4;
      rt.segs = mg_xrealloc(rt.segs, (size_t)cap * sizeof(segment));
    }
    segment *s = &rt.segs[rt.nsegs++];
    if (p[0] == ':') {
      if (len < 2) { *err = "a parameter needs a name: /:id"; rt.nsegs--; goto fail; }
      for (size_t i = 1; i < len; i++)
        if (!valid_name_char(p[i])) { *err = "a parameter name may hold only letters, digits and '_'"; rt.nsegs--; goto fail; }
      s->kind = SEG_PARAM;
      s->text = strndup(p + 1, len - 1);
      s->len = len - 1;
      if (++rt.nparams > MG_ROUTE_MAX_PARAMS) { *err = "too many parameters"; goto fail; }
    } else {
      s->kind = SEG_LITERAL;
      s->text = strndup(p, len);
      s->len = len;
      rt.literal_len += len + 1;
    }
    if (!end) break;
    p = end + 1;
    if (!*p) {                         /* trailing slash: an empty last segment */
      if (rt.nsegs == cap) { cap = cap * 2; rt.segs = mg_xrealloc(rt.segs, (size_t)cap * sizeof(segment)); }
      segment *e = &rt.segs[rt.nsegs++];
      e->kind = SEG_LITERAL; e->text = mg_xstrdup(""); e->len = 0;
      rt.literal_len += 1;
    }
  }
  if (rt.wildcard && rt.nparams + 1 > MG_ROUTE_MAX_PARAMS) {
    *err = "too many parameters";          /* the wildcard's "*" is one too */
    goto fail;
  }
  rt.rank = rt.wildcard ? 2 : rt.nparams ? 1 : 0;
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 8;
    r->routes = mg_xrealloc(r->routes, (size_t)r->cap * sizeof(route));
  }
  r->routes[r->n++] = rt;
  return 0;
fail:
  for (int j = 0; j < rt.nsegs; j++) free(rt.segs[j].text);
  free(rt.segs);
  free(rt.host);
  return -1;
}

static int route_cmp(const void *a, const void *b) {
  const route *x = a, *y = b;
  if ((x->host != NULL) != (y->host != NULL)) return x->host ? -1 : 1;
  if (x->rank != y->rank) return x->rank - y->rank;
  if (x->literal_len != y->literal_len) return x->literal_len > y->literal_len ? -1 : 1;
  return x->order - y->order;
}

void mg_router_finish(mg_router *r) {
  if (r->n > 1) qsort(r->routes, (size_t)r->n, sizeof(route), route_cmp);
}

static int host_matches(const route *rt, const char *host, size_t host_len) {
  if (!rt->host) return 1;
  /* Ignore a ":port" suffix on the Host header. */
  const char *colon = memchr(host, ':', host_len);
  if (colon && host[0] != '[') host_len = (size_t)(colon - host);
  size_t hl = strlen(rt->host);
  if (rt->host_wildcard)
    return host_len > hl && strncasecmp(host + host_len - hl, rt->host, hl) == 0;
  return host_len == hl && strncasecmp(host, rt->host, hl) == 0;
}

/* Matches the path against the route's segments; fills params on success. */
static int path_matches(const route *rt, const char *path, size_t len,
                        mg_route_match *m) {
  size_t pos = 1;                      /* skip the leading '/' */
  int np = 0;
  if (len == 0 || path[0] != '/') return 0;
  if (rt->nsegs == 0 && !rt->wildcard) {   /* the root route "/" */
    m->nparams = 0;
    return len == 1;
  }
  for (int i = 0; i < rt->nsegs; i++) {
    if (pos > len) return 0;
    const char *start = path + pos;
    const char *slash = memchr(start, '/', len - pos);
    size_t slen = slash ? (size_t)(slash - start) : len - pos;
    const segment *s = &rt->segs[i];
    if (s->kind == SEG_LITERAL) {
      if (slen != s->len || memcmp(start, s->text, slen) != 0) return 0;
    } else {
      if (slen == 0) return 0;         /* a parameter is never empty */
      m->params[np].name = s->text;
      m->params[np].name_len = s->len;
      m->params[np].off = pos;
      m->params[np].len = slen;
      np++;
    }
    pos += slen + 1;                   /* past the segment and its '/' */
  }
  if (rt->wildcard) {
    /* "/v1/{*}" matches "/v1" and "/v1/anything"; the rest is param "*". */
    if (pos <= len) {
      m->params[np].name = "*";
      m->params[np].name_len = 1;
      m->params[np].off = pos;
      m->params[np].len = len - pos;
      np++;
    } else if (pos != len + 1) return 0;
    m->nparams = np;
    return 1;
  }
  /* Every path byte must be used: pos == len + 1 means we ended exactly. */
  if (pos != len + 1) return 0;
  m->nparams = np;
  return 1;
}

void mg_router_match(const mg_router *r, unsigned method, const char *host,
                     size_t host_len, const char *path, size_t path_len,
                     mg_route_match *m) {
  m->route = -1;
  m->status = 404;
  m->allow = 0;
  m->nparams = 0;
  mg_route_match tmp;
  for (int i = 0; i < r->n; i++) {
    const route *rt = &r->routes[i];
    if (!host_matches(rt, host, host_len)) continue;
    tmp.nparams = 0;
    if (!path_matches(rt, path, path_len, &tmp)) continue;
    unsigned want = method;
    /* HEAD is served by GET routes, as every HTTP server does. */
    if ((rt->methods & want) || (want == MG_M_HEAD && (rt->methods & MG_M_GET))) {
      *m = tmp;
      m->route = rt->index;
      m->status = 0;
      m->allow = 0;
      return;
    }
    m->allow |= rt->methods;
    if (rt->methods & MG_M_GET) m->allow |= MG_M_HEAD;
    m->status = 405;
  }
}
