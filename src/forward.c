/* Header work of a proxy hop. See include/moongate/forward.h. */
#include "moongate/forward.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Hop-by-hop (RFC 9110 7.6.1) and what the client side of the hop computes
 * itself (Host from the target URL, Content-Length from the body). */
static const struct { const char *name; size_t len; } request_hop[] = {
  {"connection", 10}, {"keep-alive", 10}, {"proxy-connection", 16}, {"te", 2},
  {"trailer", 7}, {"transfer-encoding", 17}, {"upgrade", 7}, {"content-length", 14},
  {"host", 4}, {"expect", 6},
  /* set below from the facts of this hop */
  {"x-forwarded-for", 15}, {"x-forwarded-proto", 17}, {"x-forwarded-host", 16},
  {"x-request-id", 12}, {"traceparent", 11},
};

static const struct { const char *name; size_t len; } response_hop[] = {
  {"connection", 10}, {"keep-alive", 10}, {"proxy-connection", 16}, {"te", 2},
  {"trailer", 7}, {"transfer-encoding", 17}, {"upgrade", 7}, {"date", 4},
};

/* Whether `name` is one of the comma-separated tokens of a Connection value. */
static int connection_names(const char *conn, size_t connlen, const char *name, size_t nlen) {
  const char *p = conn, *end = conn + connlen;
  while (p < end) {
    while (p < end && (*p == ',' || *p == ' ' || *p == '\t')) p++;
    const char *tok = p;
    while (p < end && *p != ',' && *p != ' ' && *p != '\t') p++;
    if (p > tok && mg_strcaseeq(tok, (size_t)(p - tok), name, nlen)) return 1;
  }
  return 0;
}

static int dropped(const mg_forward_drop *drop, const char *name, size_t nlen) {
  if (!drop) return 0;
  for (int i = 0; i < drop->n; i++)
    if (mg_strcaseeq(drop->names[i], drop->lens[i], name, nlen)) return 1;
  return 0;
}

static void line(mg_buf *out, const char *name, size_t nlen, const char *v, size_t vlen) {
  mg_buf_reserve(out, nlen + vlen + 3);
  memcpy(out->data + out->len, name, nlen);
  out->data[out->len + nlen] = ':';
  out->data[out->len + nlen + 1] = ' ';
  memcpy(out->data + out->len + nlen + 2, v, vlen);
  out->data[out->len + nlen + 2 + vlen] = '\n';
  out->len += nlen + vlen + 3;
  out->data[out->len] = '\0';                /* mg_buf's invariant (reserve keeps room) */
}

int mg_forward_request_lines(mg_request *req, const mg_forward_drop *drop, mg_buf *out) {
  size_t connlen = 0, hostlen = 0;
  int n = 0;
  const char *conn = mg_request_header(req, "connection", 10, &connlen);
  const char *host = mg_request_header(req, "host", 4, &hostlen);
  for (int i = 0; i < req->nhdr; i++) {
    const mg_header *h = &req->hdr[i];
    const char *name = req->head.data + h->name;
    int skip = 0;
    for (size_t k = 0; k < sizeof request_hop / sizeof *request_hop && !skip; k++)
      skip = mg_strcaseeq(name, h->name_len, request_hop[k].name, request_hop[k].len);
    if (skip || (conn && connection_names(conn, connlen, name, h->name_len)) ||
        dropped(drop, name, h->name_len))
      continue;
    line(out, name, h->name_len, req->head.data + h->value, h->value_len);
    n++;
  }
  if (!dropped(drop, "x-forwarded-for", 15)) {
    /* The chain the client sent (every such header, in order), then it. */
    mg_buf_append(out, "X-Forwarded-For: ", 17);
    for (int i = 0; i < req->nhdr; i++) {
      const mg_header *h = &req->hdr[i];
      if (!mg_strcaseeq(req->head.data + h->name, h->name_len, "x-forwarded-for", 15)) continue;
      mg_buf_append(out, req->head.data + h->value, h->value_len);
      mg_buf_append(out, ", ", 2);
    }
    mg_buf_appends(out, req->remote_ip);
    mg_buf_append(out, "\n", 1);
    n++;
  }
  if (!dropped(drop, "x-forwarded-proto", 17)) { line(out, "X-Forwarded-Proto", 17, "http", 4); n++; }
  if (host && !dropped(drop, "x-forwarded-host", 16)) { line(out, "X-Forwarded-Host", 16, host, hostlen); n++; }
  if (!dropped(drop, "x-request-id", 12)) { line(out, "X-Request-ID", 12, req->id, strlen(req->id)); n++; }
  if (!dropped(drop, "traceparent", 11)) { line(out, "traceparent", 11, mg_forward_traceparent(req), 55); n++; }
  return n;
}

static int is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return 0;
  }
  return 1;
}

const char *mg_forward_traceparent(mg_request *req) {
  char *tp = req->traceparent;
  if (tp[0]) return tp;
  size_t vlen = 0;
  const char *in = mg_request_header(req, "traceparent", 11, &vlen);
  /* "00-<32 hex trace id>-<hex parent id>-<2 hex flags>", trace id not all zero */
  int valid = in && vlen >= 3 + 32 + 1 + 1 + 1 + 2 && memcmp(in, "00-", 3) == 0 &&
              is_hex(in + 3, 32) && in[35] == '-' && in[vlen - 3] == '-' &&
              is_hex(in + vlen - 2, 2) && vlen - 3 > 36 && is_hex(in + 36, vlen - 3 - 36);
  if (valid) {
    valid = 0;
    for (int i = 3; i < 35; i++) if (in[i] != '0') valid = 1;
  }
  memcpy(tp, "00-", 3);
  if (valid) {
    for (int i = 0; i < 32; i++) {
      char c = in[3 + i];
      tp[3 + i] = (c >= 'A' && c <= 'F') ? (char)(c + 32) : c;
    }
  } else {
    mg_random_hex(tp + 3, 32);
  }
  tp[35] = '-';
  mg_random_hex(tp + 36, 16);
  memcpy(tp + 52, "-01", 4);   /* with the NUL */
  return tp;
}

int mg_forward_response_keeps(const char *name, size_t nlen, const char *conn,
                              size_t connlen, int keep_length) {
  for (size_t k = 0; k < sizeof response_hop / sizeof *response_hop; k++)
    if (mg_strcaseeq(name, nlen, response_hop[k].name, response_hop[k].len)) return 0;
  if (!keep_length && mg_strcaseeq(name, nlen, "content-length", 14)) return 0;
  if (conn && connection_names(conn, connlen, name, nlen)) return 0;
  return 1;
}

/* One "Name: value\r\n" line of [p, end): returns where the next starts;
 * *nlen is the name's length, SIZE_MAX for a line without a colon. */
static const char *split_line(const char *p, const char *end, size_t *nlen) {
  const char *eol = memchr(p, '\n', (size_t)(end - p));
  eol = eol ? eol + 1 : end;
  const char *colon = memchr(p, ':', (size_t)(eol - p));
  *nlen = colon ? (size_t)(colon - p) : SIZE_MAX;
  return eol;
}

/* The value of the line [p, eol) whose name is nlen long, without the
 * blanks around it and the line end. */
static const char *line_value(const char *p, size_t nlen, const char *eol, size_t *vlen) {
  const char *v = p + nlen + 1, *ve = eol;
  while (v < ve && (*v == ' ' || *v == '\t')) v++;
  while (ve > v && (ve[-1] == '\n' || ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
  *vlen = (size_t)(ve - v);
  return v;
}

/* Whether a Connection value names a header: one made only of keep-alive
 * (hop-by-hop anyway) and close -- what upstreams send -- names none, and
 * then no line needs to be checked against it. */
static int names_a_header(const char *conn, size_t connlen) {
  const char *p = conn, *end = conn + connlen;
  while (p < end) {
    while (p < end && (*p == ',' || *p == ' ' || *p == '\t')) p++;
    const char *tok = p;
    while (p < end && *p != ',' && *p != ' ' && *p != '\t') p++;
    size_t n = (size_t)(p - tok);
    if (n && !mg_strcaseeq(tok, n, "keep-alive", 10) && !mg_strcaseeq(tok, n, "close", 5))
      return 1;
  }
  return 0;
}

int mg_forward_response_lines(const char *head, size_t len, int keep_length,
                              const mg_forward_drop *drop, mg_buf *out) {
  /* The first pass splits the lines, remembering up to 32 of them (an
   * upstream's head has a handful), and finds the Connection value, which
   * may come after the lines it names; the second decides each line. */
  enum { REMEMBERED = 32 };
  struct { size_t nlen; const char *next; } lines[REMEMBERED];   /* each starts where one ends */
  int n = 0;
  const char *p = head, *end = head + len, *conn = NULL;
  size_t connlen = 0;
  while (p < end) {
    size_t nlen;
    const char *next = split_line(p, end, &nlen);
    if (!conn && nlen != SIZE_MAX && mg_strcaseeq(p, nlen, "connection", 10))
      conn = line_value(p, nlen, next, &connlen);
    if (n < REMEMBERED) {
      lines[n].nlen = nlen;
      lines[n].next = next;
      n++;
    }
    p = next;
  }
  if (conn && !names_a_header(conn, connlen)) conn = NULL;
  int kept_length = 0;
  p = head;
  for (int i = 0; p < end; i++) {
    const char *lp = p, *next;
    size_t nlen;
    if (i < n) next = lines[i].next, nlen = lines[i].nlen;
    else next = split_line(p, end, &nlen);           /* past the remembered lines */
    p = next;
    if (nlen == SIZE_MAX || !mg_forward_response_keeps(lp, nlen, conn, connlen, keep_length) ||
        dropped(drop, lp, nlen))
      continue;
    if (keep_length && mg_strcaseeq(lp, nlen, "content-length", 14)) kept_length = 1;
    mg_buf_append(out, lp, (size_t)(next - lp));
  }
  return kept_length;
}

const char *mg_forward_find(const char *head, size_t len, const char *name,
                            size_t nlen, size_t *vlen) {
  const char *p = head, *end = head + len;
  while (p < end) {
    size_t l;
    const char *next = split_line(p, end, &l);
    if (l != SIZE_MAX && mg_strcaseeq(p, l, name, nlen)) return line_value(p, l, next, vlen);
    p = next;
  }
  return NULL;
}
